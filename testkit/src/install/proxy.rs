//! The lab's kube-proxy: every Service's ClusterIP ports and node ports
//! DNATed (nftables, in each node's host namespace) to the Ready,
//! non-terminating pods its selector picks (or, for a Service without a
//! selector, its EndpointSlices' addresses), spread at random; a port
//! without endpoints rejects. NodePort traffic is masqueraded (the
//! `externalTrafficPolicy: Cluster` behaviour), as is a pod reaching
//! itself or a neighbour through a Service (hairpin).
//!
//! Like kube-proxy, it clears the conntrack entries that would pin UDP
//! flows to a stale verdict ([`stale_udp_flows`]): NAT is decided by a
//! flow's first packet, and a prober sending from one socket every second
//! keeps its flow alive forever, so a flow that started before its Service
//! port had endpoints (no DNAT) or towards an endpoint since removed would
//! never reach a backend again. TCP needs none of this (a new connection
//! is a new flow).

use std::net::Ipv4Addr;

use serde_json::Value;

use super::scheduling::selector_matches;
use super::workloads::is_ready;

/// Name of the nftables table.
pub const TABLE: &str = "kplproxy";

/// One Service port and where it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// ClusterIP.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Node port, if any.
    pub node_port: Option<u16>,
    /// Endpoints (address, port).
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The rules of every Service.
pub fn rules(services: &[Value], pods: &[Value], slices: &[Value]) -> Vec<Rule> {
    let mut out = Vec::new();
    for svc in services {
        let Some(vip) = svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("");
        let name = svc["metadata"]["name"].as_str().unwrap_or("");
        let selector = &svc["spec"]["selector"];
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_lowercase();
            let port = p["port"].as_u64().unwrap_or(0) as u16;
            let node_port = p["nodePort"].as_u64().map(|n| n as u16);
            let endpoints = if selector.is_object() {
                let wanted = selector_to_match_labels(selector);
                pods.iter()
                    .filter(|pod| {
                        pod["metadata"]["namespace"] == ns
                            && pod["metadata"]["deletionTimestamp"].is_null()
                            && is_ready(pod)
                            && selector_matches(&wanted, &pod["metadata"]["labels"])
                    })
                    .filter_map(|pod| {
                        let ip = pod["status"]["podIP"].as_str()?.parse().ok()?;
                        Some((ip, target_port(&p["targetPort"], port, pod, &proto)?))
                    })
                    .collect()
            } else {
                slices
                    .iter()
                    .filter(|s| {
                        s["metadata"]["namespace"] == ns
                            && s["metadata"]["labels"]["kubernetes.io/service-name"] == name
                    })
                    .flat_map(|s| {
                        let sport = s["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|sp| {
                                sp["name"] == p["name"]
                                    || s["ports"].as_array().map_or(0, Vec::len) == 1
                            })
                            .and_then(|sp| sp["port"].as_u64())
                            .unwrap_or(u64::from(port)) as u16;
                        s["endpoints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                            .filter_map(move |a| Some((a.as_str()?.parse().ok()?, sport)))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            out.push(Rule {
                vip,
                port,
                proto: proto.clone(),
                node_port,
                endpoints,
            });
        }
    }
    out
}

/// A Service selector (a plain label map) as a label selector.
fn selector_to_match_labels(selector: &Value) -> Value {
    serde_json::json!({"matchLabels": selector})
}

/// The port a Service port's `targetPort` means on `pod`: a number, or a
/// container port's name (with the same protocol).
fn target_port(target: &Value, port: u16, pod: &Value, proto: &str) -> Option<u16> {
    if target.is_null() {
        return Some(port);
    }
    if let Some(n) = target.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = target.as_str()?;
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .find(|p| {
            p["name"] == name
                && p["protocol"]
                    .as_str()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
        })
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// Where a DNAT sends a packet: the one endpoint, or one picked at random.
fn dnat_target(endpoints: &[(Ipv4Addr, u16)]) -> String {
    match endpoints {
        [(ip, port)] => format!("{ip}:{port}"),
        many => {
            // The target port is the same on every endpoint of a port here
            // (one DaemonSet); the map picks the address.
            let entries: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, (ip, _))| format!("{i} : {ip}"))
                .collect();
            format!(
                "numgen random mod {} map {{ {} }} : {}",
                many.len(),
                entries.join(", "),
                many[0].1
            )
        }
    }
}

/// Conntrack entries to delete after a rules change (`conntrack -D`
/// filters), as kube-proxy's conntrack cleanup does for UDP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleFlow {
    /// Flows to a ClusterIP port that had no endpoints (or no rule): they
    /// were never DNATed.
    ClusterIp {
        /// ClusterIP.
        vip: Ipv4Addr,
        /// Service port.
        port: u16,
    },
    /// Flows to a node port that had no endpoints.
    NodePort {
        /// Node port.
        port: u16,
    },
    /// Flows through a ClusterIP DNATed to an endpoint since removed.
    ClusterIpEndpoint {
        /// ClusterIP.
        vip: Ipv4Addr,
        /// The removed endpoint's address.
        endpoint: Ipv4Addr,
    },
    /// Flows through a node port DNATed to an endpoint since removed.
    NodePortEndpoint {
        /// Node port.
        port: u16,
        /// The removed endpoint's address.
        endpoint: Ipv4Addr,
    },
}

impl StaleFlow {
    /// The `conntrack -D` arguments that delete these flows.
    pub fn conntrack_args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
        let mut add = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        match self {
            StaleFlow::ClusterIp { vip, port } => {
                add("--orig-dst", vip.to_string());
                add("--orig-port-dst", port.to_string());
            }
            StaleFlow::NodePort { port } => add("--orig-port-dst", port.to_string()),
            StaleFlow::ClusterIpEndpoint { vip, endpoint } => {
                add("--orig-dst", vip.to_string());
                add("--reply-src", endpoint.to_string());
            }
            StaleFlow::NodePortEndpoint { port, endpoint } => {
                add("--orig-port-dst", port.to_string());
                add("--reply-src", endpoint.to_string());
            }
        }
        a
    }
}

/// The UDP flows a change from `old` to `new` rules leaves stale: those of
/// a port that gained its first endpoints (a rule absent before counts as
/// none), and those DNATed to an endpoint that is gone.
pub fn stale_udp_flows(old: &[Rule], new: &[Rule]) -> Vec<StaleFlow> {
    let mut out = std::collections::BTreeSet::new();
    for r in new.iter().filter(|r| r.proto == "udp") {
        let before = old
            .iter()
            .find(|o| o.proto == r.proto && o.vip == r.vip && o.port == r.port);
        let had: Vec<Ipv4Addr> = before
            .map(|o| o.endpoints.iter().map(|e| e.0).collect())
            .unwrap_or_default();
        let has: Vec<Ipv4Addr> = r.endpoints.iter().map(|e| e.0).collect();
        if had.is_empty() && !has.is_empty() {
            out.insert(StaleFlow::ClusterIp {
                vip: r.vip,
                port: r.port,
            });
            if let Some(port) = r.node_port {
                out.insert(StaleFlow::NodePort { port });
            }
        }
        for gone in had.iter().filter(|e| !has.contains(e)) {
            out.insert(StaleFlow::ClusterIpEndpoint {
                vip: r.vip,
                endpoint: *gone,
            });
            if let Some(port) = before.and_then(|o| o.node_port) {
                out.insert(StaleFlow::NodePortEndpoint {
                    port,
                    endpoint: *gone,
                });
            }
        }
    }
    // A whole Service (or port) removed: its endpoints are gone too.
    for o in old.iter().filter(|o| o.proto == "udp") {
        if new
            .iter()
            .any(|r| r.proto == o.proto && r.vip == o.vip && r.port == o.port)
        {
            continue;
        }
        for (endpoint, _) in &o.endpoints {
            out.insert(StaleFlow::ClusterIpEndpoint {
                vip: o.vip,
                endpoint: *endpoint,
            });
            if let Some(port) = o.node_port {
                out.insert(StaleFlow::NodePortEndpoint {
                    port,
                    endpoint: *endpoint,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// The nftables script that replaces the table with `rules`.
pub fn ruleset(rules: &[Rule]) -> String {
    let mut body = String::new();
    for r in rules {
        // What a matched packet gets: rejected without endpoints, else
        // DNATed (node ports also marked for masquerading).
        let (cluster_verdict, node_verdict) = match r.endpoints.as_slice() {
            [] => {
                let reject = if r.proto == "tcp" {
                    "reject with tcp reset"
                } else {
                    "reject"
                };
                (reject.to_string(), reject.to_string())
            }
            endpoints => {
                let to = dnat_target(endpoints);
                (
                    format!("dnat to {to}"),
                    format!("meta mark set 0x4000 dnat to {to}"),
                )
            }
        };
        body.push_str(&format!(
            "    ip daddr {} {} dport {} {cluster_verdict}\n",
            r.vip, r.proto, r.port
        ));
        if let Some(np) = r.node_port {
            body.push_str(&format!(
                "    fib daddr type local {} dport {np} {node_verdict}\n",
                r.proto
            ));
        }
    }
    format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  chain services {{\n{body}  }}\n\
         \x20 chain pre {{ type nat hook prerouting priority -100; jump services; }}\n\
         \x20 chain out {{ type nat hook output priority -100; jump services; }}\n\
         \x20 chain post {{ type nat hook postrouting priority 100; meta mark 0x4000 masquerade; \
         ct status dnat iifname \"cbr0\" oifname \"cbr0\" masquerade; }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_lead_to_ready_pods_by_named_port() {
        let svc = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {
            "clusterIP": "10.96.0.100", "selector": {"app": "x"},
            "ports": [{"name": "u", "port": 9478, "protocol": "UDP", "targetPort": "udp-echo", "nodePort": 30000}]}});
        let pod = |ip: &str, ready: &str| {
            json!({"metadata": {"namespace": "n", "labels": {"app": "x"}},
            "spec": {"containers": [{"ports": [{"name": "udp-echo", "containerPort": 9478, "protocol": "UDP"}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}})
        };
        let r = rules(
            &[svc],
            &[pod("10.244.0.100", "True"), pod("10.244.1.100", "False")],
            &[],
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].endpoints, vec![(Ipv4Addr::new(10, 244, 0, 100), 9478)]);
        let text = ruleset(&r);
        assert!(
            text.contains("ip daddr 10.96.0.100 udp dport 9478 dnat to 10.244.0.100:9478"),
            "{text}"
        );
        assert!(text.contains("fib daddr type local udp dport 30000 meta mark set 0x4000 dnat to 10.244.0.100:9478"), "{text}");
    }

    #[test]
    fn udp_flows_of_new_and_lost_endpoints_are_stale() {
        let rule = |proto: &str, eps: &[[u8; 4]]| Rule {
            vip: Ipv4Addr::new(10, 96, 0, 100),
            port: 9478,
            proto: proto.into(),
            node_port: Some(30000),
            endpoints: eps.iter().map(|e| (Ipv4Addr::from(*e), 9478)).collect(),
        };
        let (a, b) = ([10, 244, 0, 100], [10, 244, 1, 100]);
        let vip = Ipv4Addr::new(10, 96, 0, 100);
        // First endpoints (no rule before, or an empty one): every flow to
        // the port was never DNATed.
        let first = vec![
            StaleFlow::ClusterIp { vip, port: 9478 },
            StaleFlow::NodePort { port: 30000 },
        ];
        assert_eq!(stale_udp_flows(&[], &[rule("udp", &[a])]), first);
        assert_eq!(
            stale_udp_flows(&[rule("udp", &[])], &[rule("udp", &[a])]),
            first
        );
        // One more endpoint: nothing is stale.
        assert!(stale_udp_flows(&[rule("udp", &[a])], &[rule("udp", &[a, b])]).is_empty());
        // One gone: the flows it answered.
        let gone = Ipv4Addr::from(a);
        assert_eq!(
            stale_udp_flows(&[rule("udp", &[a, b])], &[rule("udp", &[b])]),
            vec![
                StaleFlow::ClusterIpEndpoint {
                    vip,
                    endpoint: gone
                },
                StaleFlow::NodePortEndpoint {
                    port: 30000,
                    endpoint: gone
                },
            ]
        );
        assert_eq!(stale_udp_flows(&[rule("udp", &[a])], &[]).len(), 2);
        // TCP: new connections are new flows.
        assert!(stale_udp_flows(&[], &[rule("tcp", &[a])]).is_empty());
        assert_eq!(
            first[0].conntrack_args().join(" "),
            "-D -p udp --orig-dst 10.96.0.100 --orig-port-dst 9478"
        );
    }

    #[test]
    fn selectorless_services_use_their_slices_and_empty_ones_reject() {
        let svc = json!({"metadata": {"name": "kubernetes", "namespace": "default"}, "spec": {
            "clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}});
        let slice = json!({"metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "ports": [{"name": "https", "port": 6443}], "endpoints": [{"addresses": ["10.200.0.1"]}]});
        let r = rules(std::slice::from_ref(&svc), &[], &[slice]);
        assert_eq!(r[0].endpoints, vec![(Ipv4Addr::new(10, 200, 0, 1), 6443)]);
        let none = rules(&[svc], &[], &[]);
        assert!(ruleset(&none).contains("tcp dport 443 reject with tcp reset"));
    }
}
