//! Cluster DNS lookups from this node, through the nameservers the node's
//! pods use: resolver configuration ([`resolv_conf`], pure), query and
//! reply classification ([`message`], pure), the timed UDP exchange
//! ([`exchange`], IO) and the schedule that books the results ([`run`]).

pub(crate) mod exchange;
pub(crate) mod message;
pub(crate) mod resolv_conf;
mod run;

pub(crate) use run::start;
