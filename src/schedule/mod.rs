//! Pure scheduling: absolute-deadline periodic schedules with a random
//! phase per peer, and reconnect backoff.

pub mod backoff;
pub mod periodic;

pub use backoff::Backoff;
pub use periodic::{Fire, Periodic};
