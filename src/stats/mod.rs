//! Pure statistics: RFC 3550 jitter, loss accounting of probes in flight,
//! windowed minimum, NTP-style clock offset.

pub mod inflight;
pub mod jitter;
pub mod offset;
pub mod rtt;
pub mod window_min;

pub use inflight::{InFlight, Match};
pub use jitter::Jitter;
pub use offset::{clock_offset, OffsetEstimate};
pub use rtt::{kernel_rtt, ClockStep};
pub use window_min::WindowedMin;
