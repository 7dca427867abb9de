//! Peer discovery. Every source (static config, the controller's plan via
//! the Kubernetes API) publishes the current peer set on a `watch` channel; probers only
//! ever see [`PeerSet`] snapshots, so a new source changes nothing downstream.

pub mod kubernetes;
pub mod static_peers;

use std::sync::Arc;

use tokio::sync::watch;

use crate::peer::PeerSet;
use crate::plan::PlanWatch;

/// A source of peer sets. Implementations keep the channel current until the
/// receiver side is dropped.
pub trait Discovery {
    /// The channel on which peer sets are published.
    fn subscribe(&self) -> watch::Receiver<PeerSet>;

    /// Every known agent, not fanned out: the common input of the bandwidth
    /// slot schedule. Sources that do not fan out publish the same set.
    fn subscribe_all(&self) -> watch::Receiver<PeerSet> {
        self.subscribe()
    }

    /// The controller's plan (bandwidth schedule, busy slots). Sources
    /// without a controller publish `None` and the agents compute the
    /// bandwidth schedule from [`Discovery::subscribe_all`].
    fn subscribe_plan(&self) -> watch::Receiver<PlanWatch> {
        watch::channel(None).1
    }
}

/// A shared source is still a source (the agent keeps one handle, the
/// SIGHUP reloader another).
impl<D: Discovery + ?Sized> Discovery for Arc<D> {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        (**self).subscribe()
    }

    fn subscribe_all(&self) -> watch::Receiver<PeerSet> {
        (**self).subscribe_all()
    }

    fn subscribe_plan(&self) -> watch::Receiver<PlanWatch> {
        (**self).subscribe_plan()
    }
}
