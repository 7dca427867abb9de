//! Static discovery: peers listed in the config file. Used by `agent` with
//! `discovery.mode: static` and by local mode.

use std::sync::Arc;

use tokio::sync::watch;

use super::Discovery;
use crate::peer::{Peer, PeerSet};

/// A fixed peer list that can still be replaced at run time (config reload,
/// tests that remove a peer).
#[derive(Debug)]
pub struct StaticDiscovery {
    tx: watch::Sender<PeerSet>,
}

impl StaticDiscovery {
    /// Starts with `peers`.
    pub fn new(peers: Vec<Peer>) -> Self {
        let (tx, _rx) = watch::channel(Arc::new(peers));
        Self { tx }
    }

    /// Replaces the peer set; subscribers see the change.
    pub fn replace(&self, peers: Vec<Peer>) {
        self.tx.send_replace(Arc::new(peers));
    }
}

impl Discovery for StaticDiscovery {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.tx.subscribe()
    }
}
