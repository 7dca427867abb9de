//! Pure scheduling: absolute-deadline periodic schedules, the trains that
//! place probe streams within their interval, reconnect backoff,
//! rendezvous peer choice and the bandwidth slot schedule.

pub(crate) mod backoff;
pub mod busy;
pub mod computed;
pub(crate) mod periodic;
pub(crate) mod rendezvous;
pub mod slots;
pub mod train;

pub use backoff::Backoff;
pub use periodic::{random_below, Fire, Periodic};
pub use train::{TrainSlot, Trains};
