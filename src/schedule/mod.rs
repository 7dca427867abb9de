//! Pure scheduling: absolute-deadline periodic schedules with a random
//! phase per peer, reconnect backoff, rendezvous peer choice and the
//! bandwidth slot schedule.

pub mod backoff;
pub mod busy;
pub mod computed;
pub mod periodic;
pub mod rendezvous;
pub mod slots;

pub use backoff::Backoff;
pub use periodic::{Fire, Periodic};
