//! The DNS probe's schedule and bookkeeping: every round, each configured
//! name on each nameserver, each lookup on its own blocking thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::rr::Name;
use tokio::task::{JoinHandle, JoinSet};

use super::exchange::lookup;
use super::resolv_conf::ResolvConf;
use crate::config::DnsSettings;
use crate::probe::{rounds, ProbeContext};
use crate::proto::dns::query_name;

/// What to ask whom, resolved once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DnsPlan {
    /// Nameservers, in resolver order.
    pub nameservers: Vec<IpAddr>,
    /// Names, fully qualified.
    pub names: Vec<Name>,
}

/// Why the DNS probe does not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum DnsOff {
    /// `probes.dns.enabled: false`.
    #[error("disabled in the configuration")]
    Disabled,
    /// No nameserver configured or in the resolver configuration.
    #[error("no nameserver in probes.dns.nameservers or {0}")]
    NoNameserver(String),
    /// No names configured and no cluster domain to derive the default.
    #[error(
        "no probes.dns.names and no svc.<cluster domain> search entry in {0} (not in a cluster?)"
    )]
    NoNames(String),
}

/// Decides what the probe asks (pure): configured nameservers and names
/// win over the resolver configuration `conf` (read from `source`).
pub(super) fn dns_plan(
    s: &DnsSettings,
    conf: &ResolvConf,
    source: &str,
) -> Result<DnsPlan, DnsOff> {
    if !s.enabled {
        return Err(DnsOff::Disabled);
    }
    let nameservers = if s.nameservers.is_empty() {
        conf.nameservers.clone()
    } else {
        s.nameservers.clone()
    };
    if nameservers.is_empty() {
        return Err(DnsOff::NoNameserver(source.into()));
    }
    let names = if s.names.is_empty() {
        conf.default_names()
    } else {
        s.names.clone()
    };
    // Names were validated with the configuration; the default is built
    // from a search entry, so a bad one is skipped, not fatal.
    let names: Vec<Name> = names
        .iter()
        .filter_map(|n| match query_name(n) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "DNS probe name skipped");
                None
            }
        })
        .collect();
    if names.is_empty() {
        return Err(DnsOff::NoNames(source.into()));
    }
    Ok(DnsPlan { nameservers, names })
}

/// Starts the DNS probe, or explains in the log why it does not run.
pub(crate) fn start(ctx: &ProbeContext) -> Option<JoinHandle<()>> {
    let s = &ctx.settings.dns;
    let source = s.resolv_conf.display().to_string();
    let conf = match std::fs::read_to_string(&s.resolv_conf) {
        Ok(text) => ResolvConf::parse(&text),
        Err(e) => {
            tracing::debug!(file = %source, error = %e, "Cannot read the resolver configuration");
            ResolvConf::parse("")
        }
    };
    let plan = match dns_plan(s, &conf, &source) {
        Ok(p) => p,
        Err(DnsOff::Disabled) => return None,
        Err(e) => {
            tracing::info!(reason = %e, "Cluster DNS probe off");
            return None;
        }
    };
    let network = ctx.identity.kind;
    let labels: Vec<String> = plan.nameservers.iter().map(|ip| ip.to_string()).collect();
    ctx.metrics.precreate_dns(network, &labels);
    tracing::info!(nameservers = ?labels, names = ?plan.names.iter().map(|n| n.to_ascii()).collect::<Vec<_>>(),
        interval = ?s.interval, "Cluster DNS probe started");
    let plan = Arc::new(plan);
    let ctx = ctx.clone();
    Some(tokio::spawn(async move {
        let (interval, timeout, port) = (
            ctx.settings.dns.interval,
            ctx.settings.dns.timeout,
            ctx.settings.dns.port,
        );
        let shutdown = ctx.shutdown.clone();
        rounds::every(interval, shutdown, || {
            let plan = plan.clone();
            let ctx = ctx.clone();
            async move {
                let mut jobs = JoinSet::new();
                for ns in &plan.nameservers {
                    for name in &plan.names {
                        let (ns, name, ctx) = (*ns, name.clone(), ctx.clone());
                        jobs.spawn_blocking(move || {
                            let l = lookup(SocketAddr::new(ns, port), ctx.bind, &name, timeout);
                            if l.outcome != crate::metrics::labels::DnsOutcome::Ok {
                                tracing::debug!(nameserver = %ns, name = %name, outcome = %l.outcome, "DNS lookup failed");
                            }
                            ctx.metrics.observe_dns(ctx.identity.kind, &ns.to_string(), l.outcome, l.rtt);
                        });
                    }
                }
                while jobs.join_next().await.is_some() {}
            }
        })
        .await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ResolvConf {
        ResolvConf::parse("search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\nnameserver 10.96.0.11\n")
    }

    #[test]
    fn defaults_come_from_the_resolver_configuration() {
        let p = dns_plan(&DnsSettings::default(), &conf(), "f").expect("plan");
        assert_eq!(p.nameservers.len(), 2);
        assert_eq!(p.names.len(), 1);
        assert_eq!(
            p.names[0].to_ascii(),
            "kubernetes.default.svc.cluster.local."
        );
    }

    #[test]
    fn configuration_wins_and_missing_parts_turn_the_probe_off() {
        let s = DnsSettings {
            names: vec!["a.example".into(), "b.example.".into()],
            nameservers: vec!["192.0.2.53".parse().expect("ip")],
            ..DnsSettings::default()
        };
        let p = dns_plan(&s, &conf(), "f").expect("plan");
        assert_eq!(p.nameservers, s.nameservers);
        assert_eq!(p.names.len(), 2);
        let host = ResolvConf::parse("nameserver 127.0.0.53\n");
        assert_eq!(
            dns_plan(&DnsSettings::default(), &host, "f"),
            Err(DnsOff::NoNames("f".into()))
        );
        assert_eq!(
            dns_plan(&DnsSettings::default(), &ResolvConf::parse(""), "f"),
            Err(DnsOff::NoNameserver("f".into()))
        );
        let off = DnsSettings {
            enabled: false,
            ..DnsSettings::default()
        };
        assert_eq!(dns_plan(&off, &conf(), "f"), Err(DnsOff::Disabled));
    }
}
