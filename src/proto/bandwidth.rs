//! The bandwidth burst handshake. The prober connects to the bandwidth
//! responder and sends an 80-byte authenticated request; the responder
//! answers with an 8-byte response. On `Ok`, a `Sink` burst has the prober
//! send `bytes` bytes which the responder discards; a `Source` burst has the
//! responder send `bytes` bytes, then close. Either side stops at
//! `max_duration`.
//!
//! ```text
//! request:  0..4 magic "KPB1"  4 version (2)  5 direction (1 sink, 2 source)
//!           6..8 reserved  8..16 bytes  16..20 max duration, ms  20..24 reserved
//!           24..32 timestamp, ms since the Unix epoch  32..48 nonce
//!           48..80 HMAC-SHA256 over bytes 0..48, keyed by the cluster's burst key
//! response: 0..4 magic "KPB1"  4 version  5 status  6..8 reserved
//! ```
//!
//! Decoding checks the framing only; the MAC, the timestamp window and the
//! nonce are checked by the responder (the `auth` module, which implements
//! [`Mac`] with the cluster's burst keys).

use std::time::Duration;

use super::DecodeError;

/// Length of a MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// Something that signs messages: the request's MAC comes from it, so the
/// wire format needs no key.
pub trait Mac {
    /// The MAC of `msg`.
    fn sign(&self, msg: &[u8]) -> [u8; MAC_LEN];
}

/// Magic number of bandwidth messages.
pub const MAGIC: [u8; 4] = *b"KPB1";
/// Current version (2: authenticated requests).
pub const VERSION: u8 = 2;
/// Request length.
pub const REQUEST_LEN: usize = SIGNED_LEN + MAC_LEN;
/// Length of the part of a request the MAC covers.
pub const SIGNED_LEN: usize = 48;
/// Length of a request nonce.
pub const NONCE_LEN: usize = 16;
/// Response length.
pub const RESPONSE_LEN: usize = 8;

/// Which way the data flows, seen from the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The prober sends; the responder discards.
    Sink = 1,
    /// The responder sends; the prober receives.
    Source = 2,
}

/// A burst request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Data direction.
    pub mode: Mode,
    /// Bytes to transfer.
    pub bytes: u64,
    /// Upper bound on the transfer time.
    pub max_duration: Duration,
}

/// What makes a request fresh and attributable: when it was made, a
/// random nonce, and the MAC over it and the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// Prober's wall clock, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Random, never reused by a prober.
    pub nonce: [u8; NONCE_LEN],
}

/// A decoded request with its seal and MAC, not yet verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedRequest {
    /// The request.
    pub request: Request,
    /// Its timestamp and nonce.
    pub seal: Seal,
    /// The bytes the MAC covers.
    pub signed: [u8; SIGNED_LEN],
    /// The MAC as received.
    pub mac: [u8; MAC_LEN],
}

/// The responder's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Go ahead.
    Ok = 0,
    /// Another burst is running on this responder.
    Busy = 1,
    /// The request exceeds the responder's limits.
    OverLimit = 2,
    /// The request did not parse.
    Malformed = 3,
    /// Bad MAC, stale timestamp or replayed nonce.
    Unauthenticated = 4,
}

fn check_header(buf: &[u8]) -> Result<(), DecodeError> {
    if buf[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(DecodeError::Version(buf[4]));
    }
    Ok(())
}

impl Request {
    /// Encodes the request with `seal`, signed by `mac`.
    pub fn encode(&self, seal: &Seal, mac: &impl Mac) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.mode as u8;
        b[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        let ms = u32::try_from(self.max_duration.as_millis()).unwrap_or(u32::MAX);
        b[16..20].copy_from_slice(&ms.to_be_bytes());
        b[24..32].copy_from_slice(&seal.timestamp_ms.to_be_bytes());
        b[32..48].copy_from_slice(&seal.nonce);
        let tag = mac.sign(&b[..SIGNED_LEN]);
        b[SIGNED_LEN..].copy_from_slice(&tag);
        b
    }

    /// Decodes a request and its seal; the MAC is not checked here.
    pub fn decode_sealed(buf: &[u8]) -> Result<SealedRequest, DecodeError> {
        let request = Self::decode(buf)?;
        let mut signed = [0u8; SIGNED_LEN];
        signed.copy_from_slice(&buf[..SIGNED_LEN]);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&buf[SIGNED_LEN..]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&buf[24..32]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[32..48]);
        Ok(SealedRequest {
            request,
            seal: Seal {
                timestamp_ms: u64::from_be_bytes(ts),
                nonce,
            },
            signed,
            mac,
        })
    }

    /// Decodes the request part of a message (framing only: no MAC check).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() != REQUEST_LEN {
            return Err(if buf.len() < REQUEST_LEN {
                DecodeError::Short(buf.len())
            } else {
                DecodeError::Oversized(buf.len())
            });
        }
        check_header(buf)?;
        let mode = match buf[5] {
            1 => Mode::Sink,
            2 => Mode::Source,
            _ => return Err(DecodeError::BadField("mode")),
        };
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&buf[8..16]);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&buf[16..20]);
        Ok(Request {
            mode,
            bytes: u64::from_be_bytes(b8),
            max_duration: Duration::from_millis(u64::from(u32::from_be_bytes(b4))),
        })
    }
}

impl Status {
    /// Encodes a response carrying this status.
    pub fn encode(self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self as u8;
        b
    }

    /// Decodes a response.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() != RESPONSE_LEN {
            return Err(DecodeError::Short(buf.len()));
        }
        check_header(buf)?;
        match buf[5] {
            0 => Ok(Status::Ok),
            1 => Ok(Status::Busy),
            2 => Ok(Status::OverLimit),
            3 => Ok(Status::Malformed),
            4 => Ok(Status::Unauthenticated),
            _ => Err(DecodeError::BadField("status")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in MAC: the first bytes of the message, repeated.
    struct TestMac;

    impl Mac for TestMac {
        fn sign(&self, msg: &[u8]) -> [u8; MAC_LEN] {
            let mut t = [0u8; MAC_LEN];
            for (i, b) in t.iter_mut().enumerate() {
                *b = msg[i % msg.len()] ^ 0x5a;
            }
            t
        }
    }

    const SEAL: Seal = Seal {
        timestamp_ms: 1_700_000_000_123,
        nonce: [9; NONCE_LEN],
    };

    #[test]
    fn round_trips() {
        let r = Request {
            mode: Mode::Source,
            bytes: 32 << 20,
            max_duration: Duration::from_secs(1),
        };
        let wire = r.encode(&SEAL, &TestMac);
        assert_eq!(Request::decode(&wire), Ok(r));
        let sealed = Request::decode_sealed(&wire).expect("decodes");
        assert_eq!(sealed.request, r);
        assert_eq!(sealed.seal, SEAL);
        assert_eq!(sealed.signed[..], wire[..SIGNED_LEN]);
        assert_eq!(sealed.mac, TestMac.sign(&wire[..SIGNED_LEN]));
        for s in [
            Status::Ok,
            Status::Busy,
            Status::OverLimit,
            Status::Malformed,
            Status::Unauthenticated,
        ] {
            assert_eq!(Status::decode(&s.encode()), Ok(s));
        }
    }

    #[test]
    fn malformed_is_rejected() {
        let r = Request {
            mode: Mode::Sink,
            bytes: 1,
            max_duration: Duration::from_millis(5),
        }
        .encode(&SEAL, &TestMac);
        assert_eq!(Request::decode(&r[..3]), Err(DecodeError::Short(3)));
        // A version 1 request (24 bytes, unauthenticated) is refused.
        assert_eq!(Request::decode(&r[..24]), Err(DecodeError::Short(24)));
        let mut v1 = r;
        v1[4] = 1;
        assert_eq!(Request::decode(&v1), Err(DecodeError::Version(1)));
        let mut bad = r;
        bad[5] = 7;
        assert_eq!(Request::decode(&bad), Err(DecodeError::BadField("mode")));
        let mut bad = r;
        bad[1] = 0;
        assert_eq!(Request::decode(&bad), Err(DecodeError::BadMagic));
        let mut s = Status::Ok.encode();
        s[5] = 200;
        assert_eq!(Status::decode(&s), Err(DecodeError::BadField("status")));
    }
}
