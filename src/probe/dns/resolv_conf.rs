//! resolv.conf parsing (pure): the nameservers, search list and `ndots` a
//! pod's resolver uses, and the cluster domain they imply.

use std::net::IpAddr;

use crate::proto::dns::MAX_NAMESERVERS;

/// glibc's default `ndots`.
const DEFAULT_NDOTS: u8 = 1;
/// glibc caps `ndots` at 15.
const MAX_NDOTS: u8 = 15;

/// What the probe needs of a resolver configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvConf {
    /// Nameservers in order, at most [`MAX_NAMESERVERS`] (later ones are
    /// never asked by glibc and are dropped here too).
    pub nameservers: Vec<IpAddr>,
    /// The search list of the last `search` (or `domain`) line.
    pub search: Vec<String>,
    /// `options ndots:N`.
    pub ndots: u8,
}

impl ResolvConf {
    /// Parses resolv.conf text. Unknown keywords and malformed entries are
    /// skipped, as the libc resolver skips them: the probe should ask what
    /// the pods ask, not reject what they accept.
    pub(crate) fn parse(text: &str) -> Self {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: DEFAULT_NDOTS,
        };
        for line in text.lines() {
            // Comments start with '#' or ';' anywhere on the line.
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped IPv6 address (fe80::1%eth0) keeps no scope here.
                    let addr = words.next().and_then(|w| w.split('%').next());
                    if let Some(ip) = addr.and_then(|a| a.parse::<IpAddr>().ok()) {
                        if conf.nameservers.len() < MAX_NAMESERVERS {
                            conf.nameservers.push(ip);
                        }
                    }
                }
                // The last search or domain line wins.
                Some("search") | Some("domain") => {
                    conf.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for opt in words {
                        if let Some(n) = opt.strip_prefix("ndots:") {
                            if let Ok(n) = n.parse::<u32>() {
                                conf.ndots =
                                    u8::try_from(n.min(u32::from(MAX_NDOTS))).unwrap_or(MAX_NDOTS);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// The cluster domain: the `<domain>` of the first `svc.<domain>`
    /// search entry, which the kubelet writes into every ClusterFirst pod's
    /// resolv.conf (`<ns>.svc.<domain> svc.<domain> <domain>`).
    pub(crate) fn cluster_domain(&self) -> Option<&str> {
        self.search
            .iter()
            .find_map(|s| s.strip_prefix("svc.").filter(|d| !d.is_empty()))
    }

    /// The names resolved by default: the apiserver's Service name in the
    /// cluster domain, if there is one.
    pub(crate) fn default_names(&self) -> Vec<String> {
        self.cluster_domain()
            .map(|d| vec![format!("kubernetes.default.svc.{d}")])
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str =
        "search kubepulse.svc.cluster.local svc.cluster.local cluster.local example.internal\n\
                       nameserver 10.96.0.10\n\
                       options ndots:5\n";

    #[test]
    fn pod_resolv_conf() {
        let c = ResolvConf::parse(POD);
        assert_eq!(
            c.nameservers,
            vec!["10.96.0.10".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            c.search,
            vec![
                "kubepulse.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "example.internal"
            ]
        );
        assert_eq!(c.ndots, 5);
        assert_eq!(c.cluster_domain(), Some("cluster.local"));
        assert_eq!(
            c.default_names(),
            vec!["kubernetes.default.svc.cluster.local".to_string()]
        );
    }

    #[test]
    fn several_nameservers_comments_and_junk() {
        let c = ResolvConf::parse(
            "# generated\n\
             nameserver 10.0.0.1 ; first\n\
             nameserver not-an-ip\n\
             nameserver fd00::53\n\
             nameserver fe80::1%eth0\n\
             nameserver 10.0.0.4\n\
             domain old.example\n\
             search svc.k8s.example. k8s.example\n\
             options rotate ndots:40 timeout:1\n\
             sortlist 10.0.0.0/8\n",
        );
        let want: Vec<IpAddr> = ["10.0.0.1", "fd00::53", "fe80::1"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        assert_eq!(c.nameservers, want, "first three valid ones, in order");
        assert_eq!(
            c.search,
            vec!["svc.k8s.example", "k8s.example"],
            "last line wins"
        );
        assert_eq!(c.ndots, 15, "capped as glibc caps it");
        assert_eq!(c.cluster_domain(), Some("k8s.example"));
    }

    #[test]
    fn host_resolv_conf_has_no_cluster_domain() {
        let c = ResolvConf::parse("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n");
        assert_eq!(c.ndots, 1);
        assert_eq!(c.cluster_domain(), None);
        assert!(c.default_names().is_empty());
        assert_eq!(ResolvConf::parse("").nameservers, Vec::<IpAddr>::new());
        // "svc." alone names no domain.
        assert_eq!(ResolvConf::parse("search svc.\n").cluster_domain(), None);
    }
}
