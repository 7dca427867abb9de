//! What a report holds. Field names are stable (the JSON format is
//! documented in `docs/report.md`); every value is in base units (seconds,
//! bytes per second, bytes, ratios) and `null` where nothing was measured.

use serde::Serialize;

/// Round-trip times of one protocol on one path kind, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rtt {
    /// Smallest windowed per-peer minimum.
    pub min: Option<f64>,
    /// Median over the window.
    pub p50: Option<f64>,
    /// 99th percentile over the window.
    pub p99: Option<f64>,
}

/// One path kind: the row a person would otherwise build from ping, qperf,
/// iperf3 and ab by hand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathRow {
    /// The `path` label value.
    pub path: &'static str,
    /// UDP echo RTT.
    pub udp: Rtt,
    /// Mean UDP RTT of the answered probes (exact: sum over count), seconds.
    pub udp_mean: Option<f64>,
    /// TCP request/response RTT.
    pub tcp: Rtt,
    /// ICMP echo RTT.
    pub icmp: Rtt,
    /// Latency probes sent in the window (UDP, TCP and ICMP).
    pub probes: Option<f64>,
    /// Lost / sent over the same probes.
    pub loss_ratio: Option<f64>,
    /// Mean of the per-peer UDP jitter estimates, seconds.
    pub jitter: Option<f64>,
    /// TCP connect p99, seconds.
    pub tcp_connect_p99: Option<f64>,
    /// HTTP GET on a fresh connection, whole request, p50, seconds.
    pub http_p50: Option<f64>,
    /// HTTP GET p99, seconds.
    pub http_p99: Option<f64>,
    /// Mean send-direction goodput of the last bursts, bytes per second.
    pub bandwidth_send: Option<f64>,
    /// Mean receive-direction goodput, bytes per second.
    pub bandwidth_receive: Option<f64>,
    /// Smallest path MTU seen, bytes.
    pub path_mtu: Option<f64>,
    /// Mean UDP RTT against `host_cross_node`: this / host − 1.
    pub rtt_overhead: Option<f64>,
    /// Send goodput lost against `host_cross_node`: 1 − this / host.
    pub bandwidth_overhead: Option<f64>,
}

/// One probed pair of the node × node matrix (UDP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatrixCell {
    /// The probing node (the `node` target label; the `agent` label in
    /// local mode).
    pub source: String,
    /// The probed node.
    pub peer_node: String,
    /// Path kind.
    pub path: &'static str,
    /// UDP probes sent in the window.
    pub sent: f64,
    /// Lost / sent.
    pub loss_ratio: Option<f64>,
    /// Mean RTT of the answered probes, seconds.
    pub rtt_mean: Option<f64>,
}

/// Quantiles of one latency distribution, seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quantiles {
    /// Observations in the window.
    pub count: f64,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// One pod startup phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseRow {
    /// The `phase` label value.
    pub phase: String,
    /// Its quantiles.
    #[serde(flatten)]
    pub q: Quantiles,
    /// The SLO (5 s, for `pod_startup` only).
    pub slo_seconds: Option<f64>,
}

/// One apiserver call kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiRow {
    /// HTTP verb as the label has it (GET, LIST, ...).
    pub verb: String,
    /// Resource.
    pub resource: String,
    /// `resource`, `namespace` or `cluster`.
    pub scope: String,
    /// Its quantiles.
    #[serde(flatten)]
    pub q: Quantiles,
    /// The SIG Scalability SLO for the p99: 1 s for single objects, 30 s
    /// for namespace and cluster LISTs.
    pub slo_seconds: f64,
}

/// The control plane, from the controller's metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlPlane {
    /// Pod startup phases.
    pub pod_startup: Vec<PhaseRow>,
    /// apiserver calls.
    pub apiserver: Vec<ApiRow>,
    /// 429 responses in the window.
    pub throttled: Option<f64>,
    /// The node with the largest |Lease-based clock offset|.
    pub clock_offset_node: Option<String>,
    /// Its offset, seconds.
    pub clock_offset_max: Option<f64>,
    /// Ready condition changes in the window, all nodes.
    pub not_ready_transitions: Option<f64>,
}

/// Cluster DNS and apiserver reachability from one agent (a node's pod
/// or host network).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReachRow {
    /// The probing node (or local agent).
    pub source: String,
    /// `pod` or `host`.
    pub network: String,
    /// DNS lookups in the window.
    pub dns_lookups: f64,
    /// Share of them that did not return an address.
    pub dns_failure_ratio: Option<f64>,
    /// Median lookup time (answered lookups).
    pub dns_p50: Option<f64>,
    /// Share of apiserver probes through the Service that failed.
    pub service_failure_ratio: Option<f64>,
    /// Share of direct apiserver probes that failed.
    pub direct_failure_ratio: Option<f64>,
    /// Median `/livez` time through the Service.
    pub service_livez_p50: Option<f64>,
}

/// A peer node expected down, as one probing agent's plan says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ExpectedDown {
    /// The peer node.
    pub peer_node: String,
    /// Why (`cordoned`, `deletion_taint`, `deleting`, `gone`, `not_ready`).
    pub reason: String,
}

/// What the plan's lifecycle means for one probing node (or local agent):
/// peers it does not probe because they are not Ready, and peer nodes it
/// still probes that the per-peer alerts leave alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifecycleRow {
    /// The probing node (or local agent).
    pub source: String,
    /// `kubepulse_peers_not_ready` at the end of the window, over the
    /// source's agents.
    pub peers_not_ready: f64,
    /// Its peer nodes expected down, sorted.
    pub expected_down: Vec<ExpectedDown>,
}

/// A whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Where the numbers came from.
    pub source: String,
    /// Window length, seconds (0: since the counters were created).
    pub window_seconds: f64,
    /// One row per path kind that has data, `host_cross_node` first.
    pub paths: Vec<PathRow>,
    /// Probed pairs.
    pub matrix: Vec<MatrixCell>,
    /// Present when controller metrics were found.
    pub control_plane: Option<ControlPlane>,
    /// Cluster DNS and apiserver reachability, per agent (none without
    /// those probes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reach: Vec<ReachRow>,
    /// Sources with peers not Ready or peer nodes expected down (none
    /// when every planned peer is probed and judged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<LifecycleRow>,
}
