//! Pure scheduling: absolute-deadline periodic schedules with a random
//! phase per peer.
