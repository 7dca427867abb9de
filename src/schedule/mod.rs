//! Pure scheduling: absolute-deadline periodic schedules with a random
//! phase per peer, reconnect backoff, rendezvous peer choice and the
//! bandwidth slot schedule.

pub(crate) mod backoff;
pub mod busy;
pub mod computed;
pub(crate) mod periodic;
pub(crate) mod rendezvous;
pub mod slots;

pub use backoff::Backoff;
pub use periodic::{Fire, Periodic};
