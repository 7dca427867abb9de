//! Settings of the cluster reachability probes: cluster DNS and the
//! kube-apiserver, measured from every agent's node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::dns::{query_name, MAX_NAMESERVERS};

/// Cluster DNS lookups (`probes.dns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Whether lookups run. Outside `discovery.mode: kubernetes` they run
    /// only with `names` set (`explicit_only`); in a
    /// cluster, with no `names` and no cluster domain in the resolver
    /// configuration there is nothing to resolve and the probe stays off.
    pub enabled: bool,
    /// Time between two rounds (every name on every nameserver).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A lookup without a reply by then is a `timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Names to resolve, each queried as a fully qualified name (no search
    /// list walk). Empty: `kubernetes.default.svc.<cluster domain>`, the
    /// cluster domain taken from the `svc.<domain>` search entry.
    pub names: Vec<String>,
    /// The resolver configuration the agent's pods use.
    pub resolv_conf: PathBuf,
    /// Nameservers to query instead of those of `resolv_conf` (at most 3).
    pub nameservers: Vec<std::net::IpAddr>,
    /// Port of the nameservers.
    pub port: u16,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            names: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            nameservers: Vec::new(),
            port: 53,
        }
    }
}

/// kube-apiserver reachability (`probes.apiserver`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiserverSettings {
    /// Whether probes run. Outside `discovery.mode: kubernetes` they run
    /// only with `service` or `endpoints` set (`explicit_only`); in a
    /// cluster, without a Service address (no `KUBERNETES_SERVICE_HOST`)
    /// and no endpoints the probe stays off.
    pub enabled: bool,
    /// Time between two rounds (the Service and every endpoint).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A phase not finished by then is a `timeout` (per phase).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Path of the health request; `/livez` is open to unauthenticated
    /// clients through the default `system:public-info-viewer` role.
    pub livez_path: String,
    /// CA bundle (PEM) the apiserver certificate must chain to.
    pub ca_file: PathBuf,
    /// Name the certificate is checked against, for the Service and the
    /// direct endpoints alike (the apiserver's serving certificate always
    /// carries `kubernetes.default.svc`).
    pub server_name: String,
    /// The `kubernetes` Service address; unset: `KUBERNETES_SERVICE_HOST`
    /// and `KUBERNETES_SERVICE_PORT` from the pod environment.
    pub service: Option<SocketAddr>,
    /// Apiserver endpoints probed directly in addition to the plan's
    /// (from the `default/kubernetes` EndpointSlice).
    pub endpoints: Vec<SocketAddr>,
}

impl Default for ApiserverSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            livez_path: "/livez".into(),
            ca_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
            server_name: "kubernetes.default.svc".into(),
            service: None,
            endpoints: Vec::new(),
        }
    }
}

/// Turns off whichever of the two probes has no server named in the
/// configuration. Their defaults (the resolver configuration, the
/// `KUBERNETES_SERVICE_*` environment) describe a pod in a cluster; outside
/// `discovery.mode: kubernetes` (local mode, static setups, the lab) they
/// would describe whatever machine the agent runs on, so there both probes
/// run only where the configuration says what to ask: DNS with `names`
/// (through `nameservers`, or those of `resolv_conf`), the apiserver with
/// `service` or `endpoints`.
pub(crate) fn explicit_only(dns: &mut DnsSettings, apiserver: &mut ApiserverSettings) {
    if dns.names.is_empty() {
        dns.enabled = false;
    }
    if apiserver.service.is_none() && apiserver.endpoints.is_empty() {
        apiserver.enabled = false;
    }
}

/// Shortest interval of either probe (tests and labs; the defaults are
/// 10 s: every agent of the cluster asks CoreDNS and the apiserver).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

fn check_schedule(
    key: &'static str,
    interval: Duration,
    timeout: Duration,
) -> Result<(), (String, String)> {
    if interval < MIN_INTERVAL {
        return Err((format!("{key}.interval"), "must be at least 100ms".into()));
    }
    if timeout.is_zero() || timeout > interval {
        return Err((
            format!("{key}.timeout"),
            "must be positive and at most the interval".into(),
        ));
    }
    Ok(())
}

impl DnsSettings {
    /// Semantic checks: (dotted key, reason) of the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        check_schedule("probes.dns", self.interval, self.timeout)?;
        for (i, n) in self.names.iter().enumerate() {
            if let Err(e) = query_name(n) {
                return Err((format!("probes.dns.names[{i}]"), e.to_string()));
            }
        }
        if self.nameservers.len() > MAX_NAMESERVERS {
            return Err((
                "probes.dns.nameservers".into(),
                format!("at most {MAX_NAMESERVERS} (a pod's resolver uses no more)"),
            ));
        }
        if self.port == 0 {
            return Err(("probes.dns.port".into(), "must not be 0".into()));
        }
        Ok(())
    }
}

impl ApiserverSettings {
    /// Semantic checks: (dotted key, reason) of the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        check_schedule("probes.apiserver", self.interval, self.timeout)?;
        if !self.livez_path.starts_with('/')
            || self
                .livez_path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err((
                "probes.apiserver.livez_path".into(),
                "must start with / and contain no whitespace".into(),
            ));
        }
        if pki_types::ServerName::try_from(self.server_name.as_str()).is_err() {
            return Err((
                "probes.apiserver.server_name".into(),
                "must be a DNS name or an IP address".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(DnsSettings::default().check(), Ok(()));
        assert_eq!(ApiserverSettings::default().check(), Ok(()));
    }

    #[test]
    fn outside_a_cluster_only_named_servers_are_probed() {
        let (mut d, mut a) = (DnsSettings::default(), ApiserverSettings::default());
        explicit_only(&mut d, &mut a);
        assert!(!d.enabled && !a.enabled);
        let mut d = DnsSettings {
            nameservers: vec!["127.0.0.1".parse().expect("ip")],
            names: vec!["a.example".into()],
            ..DnsSettings::default()
        };
        let mut a = ApiserverSettings {
            endpoints: vec!["127.0.0.1:6443".parse().expect("addr")],
            ..ApiserverSettings::default()
        };
        explicit_only(&mut d, &mut a);
        assert!(d.enabled && a.enabled);
        // Nameservers without names: nothing to ask.
        let mut d = DnsSettings {
            nameservers: vec!["127.0.0.1".parse().expect("ip")],
            ..DnsSettings::default()
        };
        explicit_only(&mut d, &mut ApiserverSettings::default());
        assert!(!d.enabled);
        // Names alone: asked through the resolver configuration's servers.
        let mut d = DnsSettings {
            names: vec!["a.example".into()],
            ..DnsSettings::default()
        };
        explicit_only(&mut d, &mut ApiserverSettings::default());
        assert!(d.enabled);
    }

    #[test]
    fn bad_values_name_their_key() {
        let d = DnsSettings {
            names: vec!["ok.example".into(), "bad..name".into()],
            ..DnsSettings::default()
        };
        assert_eq!(
            d.check().map_err(|e| e.0),
            Err("probes.dns.names[1]".into())
        );
        let d = DnsSettings {
            timeout: Duration::from_secs(20),
            ..DnsSettings::default()
        };
        assert_eq!(d.check().map_err(|e| e.0), Err("probes.dns.timeout".into()));
        let d = DnsSettings {
            nameservers: vec!["10.0.0.1".parse().expect("ip"); 4],
            ..DnsSettings::default()
        };
        assert_eq!(
            d.check().map_err(|e| e.0),
            Err("probes.dns.nameservers".into())
        );
        let a = ApiserverSettings {
            livez_path: "livez".into(),
            ..ApiserverSettings::default()
        };
        assert_eq!(
            a.check().map_err(|e| e.0),
            Err("probes.apiserver.livez_path".into())
        );
        let a = ApiserverSettings {
            server_name: "not a name".into(),
            ..ApiserverSettings::default()
        };
        assert_eq!(
            a.check().map_err(|e| e.0),
            Err("probes.apiserver.server_name".into())
        );
        // Off: nothing is checked.
        let a = ApiserverSettings {
            enabled: false,
            livez_path: String::new(),
            ..ApiserverSettings::default()
        };
        assert_eq!(a.check(), Ok(()));
    }
}
