//! `kubepulse report` and the live page: the comparison tables the seed
//! reports built by hand (ping, qperf, iperf3 and ab per path kind, with
//! the overhead against the host-to-host baseline; kubemark's Perc50/90/99
//! per apiserver call; pod startup against its SLO), computed from two
//! snapshots of `/metrics`, from Prometheus, or in-process.
//!
//! Pure parts: [`exposition`] (text format parser), [`snapshot`] (windows of
//! samples), [`quantile`], [`build`] and [`format`](mod@format); IO lives in [`source`].

pub(crate) mod build;
pub mod exposition;
pub mod format;
pub(crate) mod model;
pub mod page;
pub mod quantile;
pub mod snapshot;
pub mod source;

pub use build::build;
pub use format::{render, Format};
pub use model::Report;
