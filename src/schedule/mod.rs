//! Pure scheduling: absolute-deadline periodic schedules with a random
//! phase per peer.

pub mod rendezvous;
pub mod slots;
