//! Cluster DNS lookups from this node, through the nameservers the node's
//! pods use: resolver configuration ([`resolv_conf`], pure), query and
//! reply classification ([`message`], pure), the timed UDP exchange
//! ([`exchange`], IO) and the schedule that books the results ([`run`]).

pub mod exchange;
pub mod message;
pub mod resolv_conf;
mod run;

pub use run::start;
