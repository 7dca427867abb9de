//! Authenticated bandwidth bursts: only agents holding the cluster's burst
//! key can make a responder send or sink data.
//!
//! A request carries an HMAC-SHA256 ([`ring::hmac`]) over the request, a
//! timestamp and a nonce ([`crate::proto::bandwidth`]). The responder
//! accepts it when the MAC verifies under one of its keys (`keys`; two
//! during a rotation), the timestamp is within ±30 s of its clock and the
//! nonce was not seen before (`replay`).

pub(crate) mod keys;
pub(crate) mod replay;

pub use keys::{BurstKeys, KeyError, KeySet, KeyState};
pub use replay::{Freshness, Refusal};
