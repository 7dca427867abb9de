//! Settings types. Every struct denies unknown fields, and every duration is
//! a humantime string with units (`"500ms"`, `"10m"`): a bare number is an
//! error, never silently seconds or milliseconds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::peer::AgentKind;
use crate::peer::{Peer, ProbePorts};
use crate::schedule::slots::SlotConfig;

/// Default address of the metrics endpoint.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 9477);

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Who this agent is and where it listens.
    pub agent: AgentSettings,
    /// Probe schedules.
    pub probes: ProbeSettings,
    /// Responder limits.
    pub responder: ResponderSettings,
    /// Where peers come from.
    pub discovery: DiscoverySettings,
    /// Logging.
    pub log: LogSettings,
    /// The `kubepulse controller` role.
    pub controller: ControllerSettings,
    /// What the agent exports.
    pub metrics: MetricsSettings,
}

/// Limits on what the agent exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Hard series budget of one agent: targets whose series would exceed
    /// it are not probed (counted in `kubepulse_targets_over_budget`). See
    /// `crate::metrics::budget` for the formula.
    pub max_series: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            max_series: crate::metrics::budget::DEFAULT_MAX_SERIES,
        }
    }
}

/// Identity and listen addresses of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Unique agent name (in a cluster: the pod name from the downward API).
    pub name: String,
    /// Node name (in a cluster: spec.nodeName from the downward API).
    pub node: String,
    /// Pod network or host network.
    pub kind: AgentKind,
    /// Address the responders bind to and probes are sent from.
    pub bind_address: IpAddr,
    /// Responder ports.
    pub ports: ProbePorts,
    /// Address of the `/metrics` endpoint.
    pub metrics_listen: SocketAddr,
    /// File with the bandwidth burst key(s), mounted from a Secret: one key
    /// per line (hex, at least 32 bytes); the first signs, every one is
    /// accepted (rotation). Missing or invalid: the agent runs without
    /// bursts, warns once and takes the keys up when the file holds them.
    /// Unset: a random key for this process (local mode; agents in other
    /// processes cannot burst to it).
    pub burst_key_file: Option<PathBuf>,
    /// With Kubernetes discovery: how long the responders keep answering
    /// after SIGTERM while the agent no longer probes. Peers drop a pod once
    /// its deletion reaches them through the API server; until then their
    /// probes still come, and a responder that stopped at once would have
    /// them booked as loss on a rollout. Keep it below the pod's
    /// `terminationGracePeriodSeconds`. Static peers are never told, so
    /// there it is unused.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            name: "kubepulse".into(),
            node: "localhost".into(),
            kind: AgentKind::Pod,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: ProbePorts::default(),
            metrics_listen: DEFAULT_METRICS_LISTEN,
            burst_key_file: None,
            shutdown_grace: Duration::from_secs(6),
        }
    }
}

/// A periodic probe: whether it runs, how often, and how long a reply may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeCadence {
    /// Whether the probe runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time between two probes to the same peer.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A reply later than this is a loss.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

fn yes() -> bool {
    true
}

impl ProbeCadence {
    const fn every(interval: Duration, timeout: Duration) -> Self {
        Self {
            enabled: true,
            interval,
            timeout,
        }
    }
}

/// Schedules of every probe kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSettings {
    /// UDP echo RTT, loss and jitter.
    pub udp: ProbeCadence,
    /// TCP request/response echo on a persistent connection.
    pub tcp: ProbeCadence,
    /// ICMP echo.
    pub icmp: ProbeCadence,
    /// TCP connect time.
    pub tcp_connect: ProbeCadence,
    /// HTTP GET by phase.
    pub http: ProbeCadence,
    /// Path MTU search.
    pub pmtu: PmtuSettings,
    /// Bandwidth bursts.
    pub bandwidth: BandwidthSettings,
    /// Cluster DNS lookups from this node.
    pub dns: super::reach::DnsSettings,
    /// kube-apiserver reachability from this node.
    pub apiserver: super::reach::ApiserverSettings,
    /// Window over which the minimum RTT is taken.
    #[serde(with = "humantime_serde")]
    pub rtt_min_window: Duration,
    /// Run the latency prober thread at SCHED_FIFO priority 1 when allowed
    /// (CAP_SYS_NICE), so CPU load is not measured as latency.
    pub realtime_priority: bool,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            udp: ProbeCadence::every(s(1), s(1)),
            tcp: ProbeCadence::every(s(1), s(1)),
            icmp: ProbeCadence::every(s(1), s(1)),
            tcp_connect: ProbeCadence::every(s(10), s(2)),
            http: ProbeCadence::every(s(30), s(5)),
            pmtu: PmtuSettings::default(),
            bandwidth: BandwidthSettings::default(),
            dns: super::reach::DnsSettings::default(),
            apiserver: super::reach::ApiserverSettings::default(),
            rtt_min_window: s(60),
            realtime_priority: true,
        }
    }
}

/// Path MTU search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PmtuSettings {
    /// Whether the search runs.
    pub enabled: bool,
    /// Time between searches to the same peer.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time to wait for each probe's echo.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Smallest IP packet size searched (bytes).
    pub min_bytes: u32,
    /// Tries per size before a size counts as not delivered.
    pub tries: u32,
}

impl Default for PmtuSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(600),
            timeout: Duration::from_millis(300),
            min_bytes: 1200,
            tries: 3,
        }
    }
}

/// Bandwidth bursts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BandwidthSettings {
    /// Whether bursts run (off by default in local mode).
    pub enabled: bool,
    /// How bursts are scheduled.
    pub schedule: BandwidthSchedule,
    /// The cluster-wide slot schedule (`schedule: slots`).
    pub slots: SlotConfig,
    /// Time between two bursts to the same peer (`schedule: interval`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long each burst (each direction) runs: bursts are bounded by
    /// time, so fast links get as long to reach speed as slow ones.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Safety limit: a burst never moves more than
    /// `duration × max_rate_bits_per_second / 8` bytes.
    pub max_rate_bits_per_second: u64,
    /// How long after a burst's last byte the queues it filled may still
    /// delay latency probes (and how far node clocks may differ): the
    /// sample guard's drain margin.
    #[serde(with = "humantime_serde")]
    pub guard_drain: Duration,
}

impl BandwidthSettings {
    /// The byte cap of one burst: `duration × max_rate_bits_per_second / 8`.
    pub fn byte_cap(&self) -> u64 {
        let bits = u128::from(self.max_rate_bits_per_second) * self.duration.as_nanos();
        u64::try_from(bits / 8 / 1_000_000_000)
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The longest time one agent's bursts of a slot half take: a forward
    /// and a reverse burst, each its duration plus a handshake and the
    /// responder's grace.
    pub fn slot_span(&self) -> Duration {
        (self.duration + BURST_OVERHEAD).saturating_mul(2)
    }
}

/// Highest burst rate a prober may ask for: 100 Gbit/s.
pub const MAX_RATE_BITS_PER_SECOND: u64 = 100_000_000_000;
/// Longest burst a prober may ask for and a responder accepts.
pub const MAX_BURST_DURATION: Duration = Duration::from_secs(1);
/// Largest burst a prober may ask for and a responder accepts: the longest
/// burst at the highest rate (12.5 GB).
pub const MAX_BURST_BYTES: u64 = MAX_RATE_BITS_PER_SECOND / 8;
/// Time a burst takes beyond its duration: connect and handshake (a few
/// RTTs) and the last bytes in flight.
pub const BURST_OVERHEAD: Duration = Duration::from_millis(50);

/// How bandwidth bursts are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BandwidthSchedule {
    /// Cluster-wide slots every agent computes from the same peer list: no
    /// node in two bursts at once, a bounded number of pairs at once, a
    /// bounded duty cycle (`crate::schedule::slots`).
    #[default]
    Slots,
    /// Every peer once per `interval` at a random phase; only this agent's
    /// bursts are serialised. For local mode and small static setups.
    Interval,
}

impl Default for BandwidthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: BandwidthSchedule::Slots,
            slots: SlotConfig::default(),
            interval: Duration::from_secs(3600),
            duration: Duration::from_millis(250),
            max_rate_bits_per_second: MAX_RATE_BITS_PER_SECOND,
            guard_drain: Duration::from_millis(100),
        }
    }
}

/// Limits that keep responders safe to expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponderSettings {
    /// Open connections per TCP responder.
    pub max_connections: usize,
    /// Largest burst served or accepted.
    pub max_burst_bytes: u64,
    /// Longest burst served or accepted.
    #[serde(with = "humantime_serde")]
    pub max_burst_duration: Duration,
    /// Body size of the HTTP responder (612 = the nginx welcome page).
    pub http_body_bytes: usize,
    /// Idle time after which a TCP responder connection is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Run the UDP and TCP echo threads at SCHED_FIFO priority 1 when
    /// allowed (CAP_SYS_NICE): their turnaround is part of every RTT.
    pub realtime_priority: bool,
    /// UDP echo requests answered per second per source address (an IPv6
    /// /64 counts as one source); up to one second's worth at once.
    pub udp_packets_per_second_per_source: u32,
    /// New TCP connections accepted per second per source, per TCP
    /// responder; up to one second's worth at once.
    pub tcp_connections_per_second_per_source: u32,
    /// Connections one source may hold open on one TCP responder, so a
    /// single source cannot take every slot of `max_connections`.
    pub max_connections_per_source: usize,
    /// Bandwidth burst bytes served per minute per source (charged at
    /// the request, whatever the burst then moves).
    pub bandwidth_bytes_per_minute_per_source: u64,
}

impl Default for ResponderSettings {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_burst_bytes: MAX_BURST_BYTES,
            max_burst_duration: MAX_BURST_DURATION,
            http_body_bytes: 612,
            idle_timeout: Duration::from_secs(120),
            realtime_priority: true,
            // Well above the probe plan: a peer sends a few echo requests
            // a second, opens a TCP connection every few seconds and runs a
            // few bursts of at most 32 MiB per minute. UDP has the most
            // room: Service probes SNATed by kube-proxy arrive from one
            // node address for many agents.
            udp_packets_per_second_per_source: 5000,
            tcp_connections_per_second_per_source: 100,
            max_connections_per_source: 32,
            // Twelve of the largest bursts a minute: far above the slot
            // schedule's one pair per node per round, bounded all the same.
            bandwidth_bytes_per_minute_per_source: 12 * MAX_BURST_BYTES,
        }
    }
}

/// Where peers come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    /// The discovery source.
    pub mode: DiscoveryMode,
    /// Peers for `mode: static`.
    pub peers: Vec<Peer>,
    /// Settings of `mode: kubernetes`.
    pub kubernetes: KubernetesDiscoverySettings,
}

/// Peer discovery through the Kubernetes API (`mode: kubernetes`): the
/// agent reads only its node's probe plan, published by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesDiscoverySettings {
    /// Namespace of the plans; empty means the agent's own namespace
    /// (`KUBEPULSE_NAMESPACE` from the downward API).
    pub namespace: String,
    /// Name of the plan ConfigMap; empty means the controller's name for
    /// this node (`kubepulse-plan-<node>`).
    pub plan_config_map: String,
}

/// Discovery sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryMode {
    /// The `peers` list of the config file.
    #[default]
    Static,
    /// The node's probe plan, published by the controller.
    Kubernetes,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `kubepulse=debug`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Default address of the controller's metrics endpoint.
pub const DEFAULT_CONTROLLER_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 9478);

/// The pause image, pinned by digest so `IfNotPresent` never pulls a moved tag.
pub const DEFAULT_PROBE_IMAGE: &str = "registry.k8s.io/pause:3.10@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a";

/// The `kubepulse controller` role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSettings {
    /// This replica's name (in a cluster: the pod name), the leader identity.
    pub name: String,
    /// Namespace of the controller itself (its leader Lease lives there).
    pub namespace: String,
    /// Dedicated namespace of probe pods and sampler ConfigMaps.
    pub probe_namespace: String,
    /// apiserver URL; empty means kubeconfig, else in-cluster.
    pub api_url: String,
    /// Address of the `/metrics` endpoint.
    pub metrics_listen: SocketAddr,
    /// Pod startup probe.
    pub pod_startup: PodStartupSettings,
    /// apiserver latency sampler.
    pub sampler: SamplerSettings,
    /// Node readiness, lease heartbeats and control-plane leases.
    pub nodes: NodeHealthSettings,
    /// Leader election.
    pub leader: LeaderSettings,
    /// The probe plan published to the agents.
    pub plan: PlanSettings,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            name: "kubepulse-controller".into(),
            namespace: "kubepulse".into(),
            probe_namespace: "kubepulse-probes".into(),
            api_url: String::new(),
            metrics_listen: DEFAULT_CONTROLLER_METRICS_LISTEN,
            pod_startup: PodStartupSettings::default(),
            sampler: SamplerSettings::default(),
            nodes: NodeHealthSettings::default(),
            leader: LeaderSettings::default(),
            plan: PlanSettings::default(),
        }
    }
}

/// The probe plan the controller computes and publishes, one ConfigMap per
/// node (the controller's plan publisher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSettings {
    /// Whether plans are published (agents in `discovery.mode: kubernetes`
    /// need them).
    pub enabled: bool,
    /// Namespace of the agent pods, their Service and the plans; empty
    /// means the controller's own namespace.
    pub agent_namespace: String,
    /// Label selector matching the agent pods of both DaemonSets.
    pub label_selector: String,
    /// The agents' Service, added to every plan as the `service_clusterip`
    /// and `service_nodeport` targets; empty disables them.
    pub service_name: String,
    /// Least time between two publications: a rollout of N agents is
    /// coalesced into few plan updates.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Plan ConfigMap writes and deletes in flight at once (1 to 64): a
    /// rollout in a 5,000-node cluster rewrites thousands of plans, which
    /// one at a time take a round trip each; more would crowd the
    /// controller's API Priority and Fairness share.
    pub write_concurrency: usize,
    /// Who probes whom.
    pub fan_out: crate::plan::PlanConfig,
    /// The bandwidth slot schedule; must equal the agents'
    /// `probes.bandwidth.slots`.
    pub bandwidth: SlotConfig,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            agent_namespace: String::new(),
            label_selector: "app.kubernetes.io/name=kubepulse,app.kubernetes.io/component=agent"
                .into(),
            service_name: "kubepulse-agent".into(),
            min_interval: Duration::from_secs(5),
            write_concurrency: 8,
            fan_out: crate::plan::PlanConfig::default(),
            bandwidth: SlotConfig::default(),
        }
    }
}

/// Pod startup probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodStartupSettings {
    /// Whether probes run.
    pub enabled: bool,
    /// Time between two probe pods, cluster-wide.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A pod not started and Ready by then is a `timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long to wait for the DELETED event.
    #[serde(with = "humantime_serde")]
    pub delete_timeout: Duration,
    /// How long to keep reading events after Ready, to catch a late `Pulling`.
    #[serde(with = "humantime_serde")]
    pub event_grace: Duration,
    /// Probe image (pin it by digest).
    pub image: String,
    /// Time between sweeps of leftover probe objects (one also runs at leader start).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Objects of earlier runs younger than this are left alone.
    #[serde(with = "humantime_serde")]
    pub sweep_min_age: Duration,
}

impl Default for PodStartupSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            delete_timeout: Duration::from_secs(60),
            event_grace: Duration::from_secs(1),
            image: DEFAULT_PROBE_IMAGE.into(),
            sweep_interval: Duration::from_secs(300),
            sweep_min_age: Duration::from_secs(60),
        }
    }
}

/// apiserver latency sampler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerSettings {
    /// Whether the sampler runs.
    pub enabled: bool,
    /// Time between two cycles.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Upper bound on the sampler's request rate (requests per second).
    pub max_qps: f64,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            max_qps: 5.0,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Node readiness, lease heartbeats and control-plane leader changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeHealthSettings {
    /// Whether the watches run (the pod probe needs them to pick targets).
    pub enabled: bool,
    /// Renewals kept by the clock offset min-delay filter.
    pub offset_samples: usize,
}

impl Default for NodeHealthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            offset_samples: 10,
        }
    }
}

/// The default `controller.leader.lease_name`, as `deploy/` grants it (the
/// controller's RBAC rules name it).
pub const DEFAULT_LEASE_NAME: &str = "kubepulse-controller";

/// Leader election on a Lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderSettings {
    /// Lease name in the controller's namespace.
    pub lease_name: String,
    /// A holder that has not renewed for this long (on our clock) is gone.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// The leader steps down if it could not renew for this long.
    #[serde(with = "humantime_serde")]
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    #[serde(with = "humantime_serde")]
    pub retry_period: Duration,
}

impl Default for LeaderSettings {
    fn default() -> Self {
        Self {
            lease_name: DEFAULT_LEASE_NAME.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}
