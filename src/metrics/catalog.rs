//! The catalog of every metric kubepulse exports: name, type, labels, help.
//! `docs/metrics.md` must list exactly these (a test checks it), and the
//! registry is built from them, so code and docs cannot drift apart.

/// Prometheus metric type of a catalog entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Monotonic counter (`_total`).
    Counter,
    /// Gauge.
    Gauge,
    /// Classic histogram.
    Histogram,
}

impl MetricType {
    /// The name used in the exposition `# TYPE` line and in the docs table.
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Full metric name.
    pub name: &'static str,
    /// Its type.
    pub kind: MetricType,
    /// Its label names, in order.
    pub labels: &'static [&'static str],
    /// HELP text.
    pub help: &'static str,
}

macro_rules! def {
    ($const:ident, $name:literal, $kind:ident, [$($l:literal),*], $help:literal) => {
        #[doc = $help]
        pub const $const: MetricDef = MetricDef {
            name: $name,
            kind: MetricType::$kind,
            labels: &[$($l),*],
            help: $help,
        };
    };
}

def!(
    PROBE_RTT,
    "kubepulse_probe_rtt_seconds",
    Histogram,
    ["protocol", "path"],
    "Full round-trip time of request/response probes (never RTT/2)."
);
def!(
    PROBE_SENT,
    "kubepulse_probe_sent_total",
    Counter,
    ["protocol", "path", "peer_node"],
    "Probes sent, counted once answered or lost; probes the burst guard excluded are not counted."
);
def!(
    PROBE_LOST,
    "kubepulse_probe_lost_total",
    Counter,
    ["protocol", "path", "peer_node"],
    "Probes that got no reply within the timeout."
);
def!(PROBE_REPLY_RTT, "kubepulse_probe_reply_rtt_seconds_total", Counter, ["protocol", "path", "peer_node"],
    "Sum of the round-trip times of answered UDP probes; divide by the increase of sent minus lost for the per-peer mean.");
def!(PROBE_ERRORS, "kubepulse_probe_errors_total", Counter, ["protocol", "path", "reason"],
    "Probe errors that are not losses: failed sends, bad or late replies, samples dropped across clock steps.");
def!(PROBE_EXCLUDED, "kubepulse_probe_excluded_total", Counter, ["protocol", "path", "reason"],
    "Probe outcomes kept out of the statistics (sent, lost, RTT, jitter) because kubepulse's own traffic could have distorted them.");
def!(
    PROBE_JITTER,
    "kubepulse_probe_jitter_seconds",
    Gauge,
    ["protocol", "path", "peer_node"],
    "RFC 3550 interarrival jitter estimate of UDP round-trip times to the peer."
);
def!(PROBE_RTT_MIN, "kubepulse_probe_rtt_min_seconds", Gauge, ["protocol", "path", "peer_node"],
    "Smallest round-trip time to the peer over the last window (propagation plus fixed stack cost).");
def!(
    PEER_CLOCK_OFFSET,
    "kubepulse_peer_clock_offset_seconds",
    Gauge,
    ["path", "peer_node"],
    "Peer's wall clock minus this agent's, NTP-style from the UDP echo exchange with the smallest round trip in the last window; true within half that round trip."
);
def!(
    PROBE_SEND_LATE,
    "kubepulse_probe_send_late_total",
    Counter,
    ["protocol"],
    "Probe sends that left more than a millisecond after their scheduled time (prober overloaded), except those the burst guard excludes from every statistic."
);
def!(
    TCP_CONNECT,
    "kubepulse_tcp_connect_duration_seconds",
    Histogram,
    ["path"],
    "Duration of TCP connect() to the peer's responder (SYN to SYN/ACK)."
);
def!(
    HTTP_PHASE,
    "kubepulse_http_probe_duration_seconds",
    Histogram,
    ["path", "phase"],
    "Duration of each phase of an HTTP GET on a fresh connection: first_byte, transfer, and total (connect to last byte, the whole request)."
);
def!(
    PATH_MTU,
    "kubepulse_path_mtu_bytes",
    Gauge,
    ["path", "peer_node"],
    "Largest IP packet delivered to the peer with DF set, from the last path MTU search."
);
def!(
    INTERFACE_MTU,
    "kubepulse_interface_mtu_bytes",
    Gauge,
    ["path", "peer_node"],
    "MTU of the local route towards the peer: the upper bound of the path MTU search."
);
def!(BANDWIDTH, "kubepulse_bandwidth_bytes_per_second", Gauge, ["path", "peer_node", "direction"],
    "TCP goodput of the last bandwidth burst, measured over its second half (cached between bursts).");
def!(
    BANDWIDTH_RETRANS,
    "kubepulse_bandwidth_retransmitted_segments_total",
    Counter,
    ["path", "peer_node"],
    "TCP segments retransmitted during send-direction bandwidth bursts."
);
def!(
    BANDWIDTH_BURSTS,
    "kubepulse_bandwidth_bursts_total",
    Counter,
    ["path", "direction", "outcome"],
    "Bandwidth bursts attempted, by outcome."
);
def!(
    BANDWIDTH_LAST,
    "kubepulse_bandwidth_last_burst_timestamp_seconds",
    Gauge,
    ["path", "peer_node", "direction"],
    "Unix time of the last successful bandwidth burst to the peer."
);
def!(
    RESPONDER_REQUESTS,
    "kubepulse_responder_requests_total",
    Counter,
    ["responder"],
    "Requests (datagrams, messages, connections) answered by the probe responders."
);
def!(
    RESPONDER_REJECTED,
    "kubepulse_responder_rejected_total",
    Counter,
    ["responder", "reason"],
    "Requests the probe responders rejected."
);
def!(
    RESPONDER_CONNECTIONS,
    "kubepulse_responder_connections",
    Gauge,
    ["responder"],
    "Open connections of the TCP probe responders."
);
def!(
    ICMP_SOCKET,
    "kubepulse_icmp_socket_info",
    Gauge,
    ["mode"],
    "The kind of ICMP socket the agent could open (dgram, raw or unavailable); value 1."
);
def!(
    BURST_KEY_STATE,
    "kubepulse_burst_key_state",
    Gauge,
    ["state"],
    "State of the agent's bandwidth burst key (agent.burst_key_file): 1 for the current state (loaded, missing or invalid), 0 for the others. Without a loaded key the agent runs no bursts and refuses those of other agents."
);
def!(
    PEERS,
    "kubepulse_peers",
    Gauge,
    ["path"],
    "Peers currently probed, by path kind."
);
def!(
    PEERS_NOT_READY,
    "kubepulse_peers_not_ready",
    Gauge,
    [],
    "Peer agents this agent would probe that the plan leaves out because they are not Ready (starting, failing readiness, not running, terminating), counted once per node and kind without a Ready agent."
);
def!(
    PEER_EXPECTED_DOWN,
    "kubepulse_peer_expected_down",
    Gauge,
    ["peer_node", "reason"],
    "1 for each peer node of this agent's targets that the per-peer network alerts must leave alone, with why: a planned departure (cordoned, deletion_taint, deleting, gone) or a NotReady node (not_ready: one node-level alert judges it); absent otherwise."
);
def!(
    TARGETS_OVER_BUDGET,
    "kubepulse_targets_over_budget",
    Gauge,
    [],
    "Probe targets not probed because their series would exceed the agent's series budget (metrics.max_series)."
);
def!(
    DNS_LOOKUP_DURATION,
    "kubepulse_dns_lookup_duration_seconds",
    Histogram,
    ["network"],
    "Cluster DNS lookups answered with an address: query sent to reply received, over every configured nameserver; network is the agent's (pod or host)."
);
def!(
    DNS_LOOKUPS,
    "kubepulse_dns_lookups_total",
    Counter,
    ["network", "nameserver", "outcome"],
    "Cluster DNS lookups by nameserver (from the resolver configuration, at most 3) and outcome (rcode or failure kind)."
);
def!(
    APISERVER_PROBE_DURATION,
    "kubepulse_apiserver_probe_duration_seconds",
    Histogram,
    ["network", "target", "phase"],
    "Phases of kube-apiserver reachability probes from this node (connect, tls_handshake, livez), for completed phases; target is service (the kubernetes Service ClusterIP) or direct (each endpoint)."
);
def!(
    APISERVER_PROBES,
    "kubepulse_apiserver_probes_total",
    Counter,
    ["network", "target", "outcome"],
    "kube-apiserver reachability probes from this node by target (service or direct) and outcome (ok or the first failed phase)."
);
def!(
    BUILD_INFO,
    "kubepulse_build_info",
    Gauge,
    ["version", "revision"],
    "Build information; value 1."
);

def!(
    DISCOVERY_UP,
    "kubepulse_discovery_up",
    Gauge,
    [],
    "1 while peer discovery is in sync with the Kubernetes API; 0 while it is not (the last known peers are still probed)."
);
def!(
    DISCOVERY_LAST_SYNC,
    "kubepulse_discovery_last_sync_timestamp_seconds",
    Gauge,
    [],
    "Unix time of the last successful exchange with the Kubernetes API (list, watch event or health check)."
);

/// Every metric family every agent exports (process_* families come from the
/// prometheus crate's process collector and are listed separately in the docs).
pub const ALL: &[MetricDef] = &[
    PROBE_RTT,
    PROBE_SENT,
    PROBE_LOST,
    PROBE_REPLY_RTT,
    PROBE_ERRORS,
    PROBE_EXCLUDED,
    PROBE_JITTER,
    PROBE_RTT_MIN,
    PEER_CLOCK_OFFSET,
    PROBE_SEND_LATE,
    TCP_CONNECT,
    HTTP_PHASE,
    PATH_MTU,
    INTERFACE_MTU,
    BANDWIDTH,
    BANDWIDTH_RETRANS,
    BANDWIDTH_BURSTS,
    BANDWIDTH_LAST,
    RESPONDER_REQUESTS,
    RESPONDER_REJECTED,
    RESPONDER_CONNECTIONS,
    ICMP_SOCKET,
    BURST_KEY_STATE,
    PEERS,
    PEERS_NOT_READY,
    TARGETS_OVER_BUDGET,
    BUILD_INFO,
];

/// Metrics an agent exports while its cluster DNS or apiserver probe runs:
/// in a cluster by default; in local mode only towards explicitly
/// configured servers.
pub const CLUSTER_REACH: &[MetricDef] = &[
    DNS_LOOKUP_DURATION,
    DNS_LOOKUPS,
    APISERVER_PROBE_DURATION,
    APISERVER_PROBES,
];

// Controller metrics (`kubepulse controller`). Node-level series use
// `target_node` for the node they are about.
def!(
    POD_STARTUP_DURATION,
    "kubepulse_pod_startup_duration_seconds",
    Histogram,
    ["phase"],
    "Pod startup probe phases on the controller's monotonic clock (ok probes only, except create and delete)."
);
def!(
    POD_STARTUP_PROBES,
    "kubepulse_pod_startup_probes_total",
    Counter,
    ["outcome"],
    "Pod startup probes by outcome."
);
def!(
    POD_STARTUP_LAST,
    "kubepulse_pod_startup_last_duration_seconds",
    Gauge,
    ["target_node"],
    "pod_startup of the last ok probe on each node."
);
def!(
    PROBE_OBJECTS_SWEPT,
    "kubepulse_probe_objects_swept_total",
    Counter,
    ["resource", "reason"],
    "Leftover probe objects the sweeper deleted."
);
def!(
    APISERVER_REQUEST_DURATION,
    "kubepulse_apiserver_request_duration_seconds",
    Histogram,
    ["verb", "resource", "scope", "code"],
    "Client-side apiserver request latency, timed after the client rate limiter."
);
def!(
    APISERVER_WATCH_EVENT_LATENCY,
    "kubepulse_apiserver_watch_event_latency_seconds",
    Histogram,
    ["event"],
    "Write request sent to its event on an already open watch."
);
def!(
    APISERVER_THROTTLED,
    "kubepulse_apiserver_throttled_total",
    Counter,
    [],
    "Responses with status 429 (API Priority and Fairness rejections); never retried."
);
def!(
    APISERVER_CONFLICTS,
    "kubepulse_apiserver_conflicts_total",
    Counter,
    ["resource"],
    "Responses with status 409 Conflict."
);
def!(
    APISERVER_CLIENT_WAIT,
    "kubepulse_apiserver_client_wait_seconds_total",
    Counter,
    [],
    "Time the sampler waited in its own rate limiter (excluded from request latency)."
);
def!(
    APISERVER_FLOWCONTROL_INFO,
    "kubepulse_apiserver_flowcontrol_info",
    Gauge,
    ["flow_schema_uid", "priority_level_uid"],
    "The APF flow schema and priority level of the latest response; value 1, one series."
);
def!(
    NODE_READY,
    "kubepulse_node_ready",
    Gauge,
    ["target_node"],
    "1 if the node's Ready condition is True, else 0."
);
def!(
    NODE_READY_TRANSITIONS,
    "kubepulse_node_ready_transitions_total",
    Counter,
    ["target_node"],
    "Changes of the node's Ready condition status seen by the watch."
);
def!(
    NODE_LEASE_AGE,
    "kubepulse_node_lease_age_seconds",
    Gauge,
    ["target_node"],
    "Time since the controller saw the node Lease's renewTime change, at scrape time (controller clock)."
);
def!(
    NODE_LEASE_RENEW_INTERVAL,
    "kubepulse_node_lease_renew_interval_seconds",
    Histogram,
    [],
    "Gaps between consecutive observed node Lease renewals (controller clock)."
);
def!(
    NODE_LEASE_RENEW_REGRESSIONS,
    "kubepulse_node_lease_renew_time_regressions_total",
    Counter,
    ["target_node"],
    "Node Lease renewTime went backwards (node clock stepped back)."
);
def!(
    NODE_LEASE_CLOCK_OFFSET,
    "kubepulse_node_lease_clock_offset_seconds",
    Gauge,
    ["target_node"],
    "Node clock minus controller clock from Lease renewals, min-delay filtered (a lower bound)."
);
def!(
    CONTROL_PLANE_LEADER_CHANGES,
    "kubepulse_control_plane_leader_changes_total",
    Counter,
    ["component"],
    "Holder changes of the kube-controller-manager and kube-scheduler Leases."
);
def!(
    CONTROLLER_LEADER,
    "kubepulse_controller_leader",
    Gauge,
    [],
    "1 while this replica holds the controller Lease and measures."
);
def!(
    CONTROLLER_LEADER_ACQUISITIONS,
    "kubepulse_controller_leader_acquisitions_total",
    Counter,
    [],
    "Times this replica acquired the controller Lease."
);
def!(
    CONTROLLER_LEADER_ERRORS,
    "kubepulse_controller_leader_errors_total",
    Counter,
    ["reason"],
    "Failed leader-election calls on the controller Lease, by named reason."
);
def!(
    CONTROLLER_WATCH_RESTARTS,
    "kubepulse_controller_watch_restarts_total",
    Counter,
    ["watch"],
    "Long-lived watches that ended or failed and were re-established."
);
def!(
    PLAN_WRITES,
    "kubepulse_plan_writes_total",
    Counter,
    ["op", "outcome"],
    "Probe plan ConfigMap writes (apply) and deletes by the leader, by outcome."
);
def!(
    PLAN_PENDING,
    "kubepulse_plan_pending",
    Gauge,
    [],
    "Plan writes and deletes that failed in the last publication and await a retry (every plan, when the existing plans could not even be listed)."
);
def!(
    PLAN_COMPUTE_LAST,
    "kubepulse_plan_last_compute_duration_seconds",
    Gauge,
    [],
    "Time the last computation of every node's probe plan took (fan-out, bandwidth cycle, documents)."
);
def!(
    PLAN_NODES,
    "kubepulse_plan_nodes",
    Gauge,
    [],
    "Nodes in the last computed probe plan."
);
def!(
    PLAN_NODES_BY_STATE,
    "kubepulse_plan_nodes_by_state",
    Gauge,
    ["state"],
    "Nodes in the last computed probe plan by lifecycle state (ready, not_ready, cordoned, deletion_taint, deleting, gone)."
);
def!(
    PLAN_AGENTS_NOT_READY,
    "kubepulse_plan_agents_not_ready",
    Gauge,
    [],
    "Agent pods on planned nodes that the last computed plan leaves out: not Ready, not running, or terminating."
);
def!(
    PLAN_MIN_PROBERS,
    "kubepulse_plan_min_probers",
    Gauge,
    [],
    "Probers of the least-probed node in the last computed plan (its smallest in-degree)."
);
def!(
    PLAN_MAX_PEER_NODES,
    "kubepulse_plan_max_peer_nodes",
    Gauge,
    [],
    "Peer nodes of the node probing the most in the last computed plan (its largest out-degree)."
);

/// Every metric family of the `kubepulse controller` role.
pub const CONTROLLER: &[MetricDef] = &[
    POD_STARTUP_DURATION,
    POD_STARTUP_PROBES,
    POD_STARTUP_LAST,
    PROBE_OBJECTS_SWEPT,
    APISERVER_REQUEST_DURATION,
    APISERVER_WATCH_EVENT_LATENCY,
    APISERVER_THROTTLED,
    APISERVER_CONFLICTS,
    APISERVER_CLIENT_WAIT,
    APISERVER_FLOWCONTROL_INFO,
    NODE_READY,
    NODE_READY_TRANSITIONS,
    NODE_LEASE_AGE,
    NODE_LEASE_RENEW_INTERVAL,
    NODE_LEASE_RENEW_REGRESSIONS,
    NODE_LEASE_CLOCK_OFFSET,
    CONTROL_PLANE_LEADER_CHANGES,
    CONTROLLER_LEADER,
    CONTROLLER_LEADER_ACQUISITIONS,
    CONTROLLER_LEADER_ERRORS,
    CONTROLLER_WATCH_RESTARTS,
    PLAN_WRITES,
    PLAN_PENDING,
    PLAN_COMPUTE_LAST,
    PLAN_NODES,
    PLAN_NODES_BY_STATE,
    PLAN_AGENTS_NOT_READY,
    PLAN_MIN_PROBERS,
    PLAN_MAX_PEER_NODES,
];

/// Metrics an agent exports only with `discovery.mode: kubernetes`.
pub const KUBERNETES_DISCOVERY: &[MetricDef] = &[DISCOVERY_UP, DISCOVERY_LAST_SYNC];

/// Metrics an agent exports only while its plan says a peer node is
/// expected down (`discovery.mode: kubernetes`).
pub const PEER_LIFECYCLE: &[MetricDef] = &[PEER_EXPECTED_DOWN];

/// Every metric family, by the `docs/metrics.md` section that lists it.
pub const SECTIONS: &[(&str, &[MetricDef])] = &[
    ("Agent metrics", ALL),
    ("Cluster reachability metrics", CLUSTER_REACH),
    ("Kubernetes discovery metrics", KUBERNETES_DISCOVERY),
    ("Peer lifecycle metrics", PEER_LIFECYCLE),
    ("Controller metrics", CONTROLLER),
];

/// Labels that must never appear: they are target labels set by the scrape.
pub const FORBIDDEN_LABELS: &[&str] = &["job", "instance", "pod", "node", "namespace", "cluster"];

/// Buckets of [`rtt_buckets`].
pub const RTT_BUCKETS: usize = 17;
/// Buckets of [`coarse_buckets`].
pub const COARSE_BUCKETS: usize = 9;

/// Latency buckets: 25 us doubling 17 times to about 1.64 s.
pub fn rtt_buckets() -> Vec<f64> {
    (0..RTT_BUCKETS as i32)
        .map(|i| 25e-6 * f64::powi(2.0, i))
        .collect()
}

/// Coarse latency buckets, for probes sampled every few seconds (the
/// apiserver probe): 25 us quadrupling to about 1.64 s, every edge also an
/// edge of [`rtt_buckets`], so the two layouts aggregate together.
pub fn coarse_buckets() -> Vec<f64> {
    (0..COARSE_BUCKETS as i32)
        .map(|i| 25e-6 * f64::powi(4.0, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_follow_conventions() {
        let mut seen = HashSet::new();
        for d in SECTIONS.iter().flat_map(|(_, defs)| defs.iter()) {
            assert!(seen.insert(d.name), "duplicate {}", d.name);
            assert!(d.name.starts_with("kubepulse_"), "{}", d.name);
            match d.kind {
                MetricType::Counter => assert!(d.name.ends_with("_total"), "{}", d.name),
                _ => assert!(!d.name.ends_with("_total"), "{}", d.name),
            }
            for l in d.labels {
                assert!(!FORBIDDEN_LABELS.contains(l), "{} has {l}", d.name);
            }
            if d.kind == MetricType::Histogram {
                assert!(
                    !d.labels.contains(&"peer_node"),
                    "{}: per-peer histogram",
                    d.name
                );
            }
        }
    }

    #[test]
    fn buckets_span_25us_to_1_6s() {
        let b = rtt_buckets();
        assert_eq!(b.len(), 17);
        assert!((b[0] - 25e-6).abs() < 1e-12);
        assert!((b[16] - 1.6384).abs() < 1e-9);
    }

    #[test]
    fn coarse_buckets_are_edges_of_the_fine_ones() {
        let fine = rtt_buckets();
        let coarse = coarse_buckets();
        assert_eq!(coarse.len(), COARSE_BUCKETS);
        for c in &coarse {
            assert!(fine.iter().any(|f| (f - c).abs() < 1e-12), "{c}");
        }
        assert!((coarse[COARSE_BUCKETS - 1] - fine[RTT_BUCKETS - 1]).abs() < 1e-12);
    }
}
