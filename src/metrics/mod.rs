//! Prometheus metrics: the catalog of names ([`catalog`]), the agent's typed
//! handles ([`AgentMetrics`]) and exposition ([`encode`]).
//!
//! Label values are passed as enums from [`labels`], never free
//! strings, except `peer_node` which comes from discovery and is bounded by
//! the peer set.

pub mod budget;
pub mod catalog;
mod discovery;
pub mod labels;

pub use discovery::DiscoveryMetrics;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use self::labels::{
    ApiserverOutcome, ApiserverPhase, ApiserverTarget, BurstOutcome, Direction, DnsOutcome,
    ExcludeReason, HttpPhase, IcmpMode, ProbeErrorReason, Protocol, RejectReason, ResponderKind,
};

use crate::auth::KeyState;
use crate::peer::{AgentKind, NodeState, PathKind};
use catalog::{MetricDef, MetricType};

/// Errors from building or encoding metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Registration failed (duplicate name, bad label set).
    #[error("metric registration failed: {0}")]
    Register(#[from] prometheus::Error),
    /// The text encoder produced invalid UTF-8 (never expected).
    #[error("metric encoding produced invalid UTF-8")]
    Utf8,
}

fn opts(d: &MetricDef) -> Opts {
    Opts::new(d.name, d.help)
}

fn counter(r: &Registry, d: &MetricDef) -> Result<IntCounterVec, MetricsError> {
    debug_assert_eq!(d.kind, MetricType::Counter);
    let v = IntCounterVec::new(opts(d), d.labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn float_counter(r: &Registry, d: &MetricDef) -> Result<CounterVec, MetricsError> {
    debug_assert_eq!(d.kind, MetricType::Counter);
    let v = CounterVec::new(opts(d), d.labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn gauge(r: &Registry, d: &MetricDef) -> Result<GaugeVec, MetricsError> {
    debug_assert_eq!(d.kind, MetricType::Gauge);
    let v = GaugeVec::new(opts(d), d.labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn int_gauge(r: &Registry, d: &MetricDef) -> Result<IntGaugeVec, MetricsError> {
    debug_assert_eq!(d.kind, MetricType::Gauge);
    let v = IntGaugeVec::new(opts(d), d.labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram(r: &Registry, d: &MetricDef) -> Result<HistogramVec, MetricsError> {
    histogram_with(r, d, catalog::rtt_buckets())
}

fn histogram_with(
    r: &Registry,
    d: &MetricDef,
    buckets: Vec<f64>,
) -> Result<HistogramVec, MetricsError> {
    debug_assert_eq!(d.kind, MetricType::Histogram);
    let v = HistogramVec::new(
        HistogramOpts::new(d.name, d.help).buckets(buckets),
        d.labels,
    )?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

/// Handles for one (protocol, path, peer_node) latency stream, resolved once
/// so the prober's hot path does no label lookups. Handles of a key that is
/// not (or no longer) probed are detached: writing them exports nothing.
#[derive(Clone)]
pub struct LatencySeries {
    /// RTT histogram shared by all peers of this (protocol, path).
    pub rtt: prometheus::Histogram,
    /// Probes sent whose outcome was booked (kept replies plus losses).
    pub sent: prometheus::IntCounter,
    /// Probes lost.
    pub lost: prometheus::IntCounter,
    /// Windowed minimum RTT, seconds.
    pub rtt_min: prometheus::Gauge,
    /// Sum of reply RTTs and jitter: UDP only (the node x node RTT matrix);
    /// TCP and ICMP keep their distribution in the per-path histogram.
    pub detail: Option<PeerDetail>,
}

/// The per-peer RTT detail kept for one protocol (UDP).
#[derive(Clone)]
pub struct PeerDetail {
    /// Sum of RTTs of answered probes, seconds.
    pub reply_rtt: prometheus::Counter,
    /// RFC 3550 jitter, seconds.
    pub jitter: prometheus::Gauge,
}

impl LatencySeries {
    /// Records one kept, answered probe.
    pub fn observe_reply(&self, rtt: Duration, jitter: Duration, rtt_min: Duration) {
        let s = rtt.as_secs_f64();
        self.rtt.observe(s);
        self.sent.inc();
        self.rtt_min.set(rtt_min.as_secs_f64());
        if let Some(d) = &self.detail {
            d.reply_rtt.inc_by(s);
            d.jitter.set(jitter.as_secs_f64());
        }
    }

    /// Records one kept, lost probe.
    pub fn observe_loss(&self) {
        self.sent.inc();
        self.lost.inc();
    }
}

/// Whether `protocol` keeps per-peer RTT sum and jitter series.
pub fn has_peer_detail(protocol: Protocol) -> bool {
    protocol == Protocol::Udp
}

/// Whether the clock offset towards a peer is exported on `path`: only on
/// the cross-node paths. The other paths measure the same node clocks again
/// (pod_to_host, host_to_pod), the own node (same node) or whichever backend
/// a Service picked.
pub fn has_clock_offset(path: PathKind) -> bool {
    matches!(path, PathKind::PodCrossNode | PathKind::HostCrossNode)
}

type LiveKeys = Arc<Mutex<HashSet<(PathKind, String)>>>;

/// All metrics of an agent, registered in one [`Registry`].
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    rtt: HistogramVec,
    sent: IntCounterVec,
    lost: IntCounterVec,
    reply_rtt: CounterVec,
    errors: IntCounterVec,
    excluded: IntCounterVec,
    jitter: GaugeVec,
    rtt_min: GaugeVec,
    clock_offset: GaugeVec,
    send_late: IntCounterVec,
    tcp_connect: HistogramVec,
    http_phase: HistogramVec,
    path_mtu: GaugeVec,
    interface_mtu: GaugeVec,
    bandwidth: GaugeVec,
    bandwidth_retrans: IntCounterVec,
    bandwidth_bursts: IntCounterVec,
    bandwidth_last: GaugeVec,
    responder_requests: IntCounterVec,
    responder_rejected: IntCounterVec,
    responder_connections: IntGaugeVec,
    icmp_socket: IntGaugeVec,
    burst_key: IntGaugeVec,
    peers: IntGaugeVec,
    peers_not_ready: IntGaugeVec,
    expected_down: IntGaugeVec,
    /// The `kubepulse_peer_expected_down` series that exist: peer node to
    /// its reason.
    expected_down_now: Arc<Mutex<BTreeMap<String, NodeState>>>,
    over_budget: IntGaugeVec,
    dns_duration: HistogramVec,
    dns_lookups: IntCounterVec,
    apiserver_duration: HistogramVec,
    apiserver_probes: IntCounterVec,
    /// The (path, peer_node) keys whose per-peer series may exist. Every
    /// writer of a per-peer series checks it under this lock, and
    /// `remove_peer` clears a key under it, so no writer that is still
    /// running for a departed peer can create its series again.
    live: LiveKeys,
}

/// Latency protocols that have per-peer series.
pub const LATENCY_PROTOCOLS: &[Protocol] = &[Protocol::Udp, Protocol::Tcp, Protocol::Icmp];

impl AgentMetrics {
    /// Registers every agent metric in `registry` and pre-creates the series
    /// whose label values are all known up front.
    pub fn new(registry: Registry) -> Result<Self, MetricsError> {
        use catalog::*;
        let r = &registry;
        let m = Self {
            rtt: histogram(r, &PROBE_RTT)?,
            sent: counter(r, &PROBE_SENT)?,
            lost: counter(r, &PROBE_LOST)?,
            reply_rtt: float_counter(r, &PROBE_REPLY_RTT)?,
            errors: counter(r, &PROBE_ERRORS)?,
            excluded: counter(r, &PROBE_EXCLUDED)?,
            jitter: gauge(r, &PROBE_JITTER)?,
            rtt_min: gauge(r, &PROBE_RTT_MIN)?,
            clock_offset: gauge(r, &PEER_CLOCK_OFFSET)?,
            send_late: counter(r, &PROBE_SEND_LATE)?,
            tcp_connect: histogram(r, &TCP_CONNECT)?,
            http_phase: histogram(r, &HTTP_PHASE)?,
            path_mtu: gauge(r, &PATH_MTU)?,
            interface_mtu: gauge(r, &INTERFACE_MTU)?,
            bandwidth: gauge(r, &BANDWIDTH)?,
            bandwidth_retrans: counter(r, &BANDWIDTH_RETRANS)?,
            bandwidth_bursts: counter(r, &BANDWIDTH_BURSTS)?,
            bandwidth_last: gauge(r, &BANDWIDTH_LAST)?,
            responder_requests: counter(r, &RESPONDER_REQUESTS)?,
            responder_rejected: counter(r, &RESPONDER_REJECTED)?,
            responder_connections: int_gauge(r, &RESPONDER_CONNECTIONS)?,
            icmp_socket: int_gauge(r, &ICMP_SOCKET)?,
            burst_key: int_gauge(r, &BURST_KEY_STATE)?,
            peers: int_gauge(r, &PEERS)?,
            peers_not_ready: int_gauge(r, &PEERS_NOT_READY)?,
            expected_down: int_gauge(r, &PEER_EXPECTED_DOWN)?,
            expected_down_now: Arc::default(),
            over_budget: int_gauge(r, &TARGETS_OVER_BUDGET)?,
            dns_duration: histogram(r, &DNS_LOOKUP_DURATION)?,
            dns_lookups: counter(r, &DNS_LOOKUPS)?,
            // One probe every few seconds per target: quadrupling buckets
            // keep its 6 histograms within the series budget.
            apiserver_duration: histogram_with(
                r,
                &APISERVER_PROBE_DURATION,
                catalog::coarse_buckets(),
            )?,
            apiserver_probes: counter(r, &APISERVER_PROBES)?,
            live: LiveKeys::default(),
            registry,
        };
        for p in LATENCY_PROTOCOLS {
            m.send_late.with_label_values(&[p.as_str()]);
        }
        for k in ResponderKind::ALL {
            m.responder_requests.with_label_values(&[k.as_str()]);
            for reason in RejectReason::ALL {
                m.responder_rejected
                    .with_label_values(&[k.as_str(), reason.as_str()]);
            }
        }
        for k in [
            ResponderKind::TcpEcho,
            ResponderKind::Bandwidth,
            ResponderKind::Http,
        ] {
            m.responder_connections.with_label_values(&[k.as_str()]);
        }
        for path in PathKind::ALL {
            m.peers.with_label_values(&[path.as_str()]);
        }
        m.over_budget.with_label_values(&[] as &[&str]);
        m.peers_not_ready.with_label_values(&[] as &[&str]);
        Ok(m)
    }

    /// The registry these metrics live in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn live(&self) -> MutexGuard<'_, HashSet<(PathKind, String)>> {
        // A panic elsewhere cannot leave the set inconsistent: keep using it.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_live(live: &HashSet<(PathKind, String)>, path: PathKind, peer_node: &str) -> bool {
        // Borrowed lookup without allocating: few keys share a path.
        live.iter().any(|(p, n)| *p == path && n == peer_node)
    }

    /// Resolves the latency series of one peer stream (creating them at zero
    /// if the key is live; detached handles otherwise, so a prober that has
    /// not caught up with a departure cannot bring its series back).
    pub fn latency(&self, protocol: Protocol, path: PathKind, peer_node: &str) -> LatencySeries {
        let live = self.live();
        let rtt = self
            .rtt
            .with_label_values(&[protocol.as_str(), path.as_str()]);
        if Self::is_live(&live, path, peer_node) {
            self.latency_series(rtt, protocol, path, peer_node)
        } else {
            detached_latency(rtt, protocol)
        }
    }

    fn latency_series(
        &self,
        rtt: prometheus::Histogram,
        protocol: Protocol,
        path: PathKind,
        peer_node: &str,
    ) -> LatencySeries {
        let l = [protocol.as_str(), path.as_str(), peer_node];
        LatencySeries {
            rtt,
            sent: self.sent.with_label_values(&l),
            lost: self.lost.with_label_values(&l),
            rtt_min: self.rtt_min.with_label_values(&l),
            detail: has_peer_detail(protocol).then(|| PeerDetail {
                reply_rtt: self.reply_rtt.with_label_values(&l),
                jitter: self.jitter.with_label_values(&l),
            }),
        }
    }

    /// The clock offset gauge of a peer, if it is exported on `path` and
    /// the key is live. Not pre-created: zero would read as "in sync"
    /// before anything was measured, so the prober resolves it at its first
    /// estimate.
    pub fn clock_offset(&self, path: PathKind, peer_node: &str) -> Option<prometheus::Gauge> {
        if !has_clock_offset(path) {
            return None;
        }
        let live = self.live();
        Self::is_live(&live, path, peer_node).then(|| {
            self.clock_offset
                .with_label_values(&[path.as_str(), peer_node])
        })
    }

    /// Creates every series a probe of `path` to `peer_node` will use, at
    /// zero, so a new peer is visible before its first result.
    pub fn precreate_peer(&self, path: PathKind, peer_node: &str, protocols: &[Protocol]) {
        let mut live = self.live();
        if !Self::is_live(&live, path, peer_node) {
            live.insert((path, peer_node.to_string()));
        }
        // ICMP never probes a Service path: none of its series exist there.
        for p in protocols
            .iter()
            .filter(|p| **p != Protocol::Icmp || path.probed_with_icmp())
        {
            if LATENCY_PROTOCOLS.contains(p) {
                let rtt = self.rtt.with_label_values(&[p.as_str(), path.as_str()]);
                self.latency_series(rtt, *p, path, peer_node);
            }
            for reason in ProbeErrorReason::ALL {
                self.errors
                    .with_label_values(&[p.as_str(), path.as_str(), reason.as_str()]);
            }
            for reason in ExcludeReason::ALL {
                self.excluded
                    .with_label_values(&[p.as_str(), path.as_str(), reason.as_str()]);
            }
        }
        self.tcp_connect.with_label_values(&[path.as_str()]);
        for phase in HttpPhase::ALL {
            self.http_phase
                .with_label_values(&[path.as_str(), phase.as_str()]);
        }
        for d in Direction::ALL {
            for o in BurstOutcome::ALL {
                self.bandwidth_bursts
                    .with_label_values(&[path.as_str(), d.as_str(), o.as_str()]);
            }
        }
    }

    /// Removes every per-peer series of (`path`, `peer_node`), the one owner
    /// of their removal. Writers still running for the key (a PMTU search,
    /// a burst, a latency stream) find it gone and create nothing after
    /// this. Aggregate series (histograms, error counters by reason) stay.
    pub fn remove_peer(&self, path: PathKind, peer_node: &str) {
        let mut live = self.live();
        live.retain(|(p, n)| !(*p == path && n == peer_node));
        for p in LATENCY_PROTOCOLS {
            let l = [p.as_str(), path.as_str(), peer_node];
            // A series may never have been created; absence is fine.
            let _ = self.sent.remove_label_values(&l);
            let _ = self.lost.remove_label_values(&l);
            let _ = self.reply_rtt.remove_label_values(&l);
            let _ = self.jitter.remove_label_values(&l);
            let _ = self.rtt_min.remove_label_values(&l);
        }
        let l = [path.as_str(), peer_node];
        let _ = self.clock_offset.remove_label_values(&l);
        let _ = self.path_mtu.remove_label_values(&l);
        let _ = self.interface_mtu.remove_label_values(&l);
        let _ = self.bandwidth_retrans.remove_label_values(&l);
        for d in Direction::ALL {
            let l = [path.as_str(), peer_node, d.as_str()];
            let _ = self.bandwidth.remove_label_values(&l);
            let _ = self.bandwidth_last.remove_label_values(&l);
        }
    }

    /// Sets how many peer agents are not probed because not Ready.
    pub fn set_peers_not_ready(&self, n: usize) {
        self.peers_not_ready
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Makes `kubepulse_peer_expected_down` say exactly `nodes` (peer node
    /// to why; only expected-down states are exported). The one place its
    /// series are created and removed: a node no longer expected down, or
    /// now down for another reason, loses its old series here.
    pub fn set_expected_down(&self, nodes: &BTreeMap<String, NodeState>) {
        let mut now = self
            .expected_down_now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let want: BTreeMap<&String, NodeState> = nodes
            .iter()
            .filter(|(_, s)| s.is_expected_down())
            .map(|(n, s)| (n, *s))
            .collect();
        for (node, reason) in now.iter() {
            if want.get(node) != Some(reason) {
                // Created below when it was set; absence is fine.
                let _ = self
                    .expected_down
                    .remove_label_values(&[node.as_str(), reason.as_str()]);
            }
        }
        for (node, reason) in &want {
            self.expected_down
                .with_label_values(&[node.as_str(), reason.as_str()])
                .set(1);
        }
        *now = want.into_iter().map(|(n, s)| (n.clone(), s)).collect();
    }

    /// Sets how many targets the series budget keeps from being probed.
    pub fn set_targets_over_budget(&self, n: usize) {
        self.over_budget
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a probe error that is not a loss.
    pub fn probe_error(&self, protocol: Protocol, path: PathKind, reason: ProbeErrorReason) {
        self.errors
            .with_label_values(&[protocol.as_str(), path.as_str(), reason.as_str()])
            .inc();
    }

    /// Counts a probe outcome kept out of the statistics.
    pub fn probe_excluded(&self, protocol: Protocol, path: PathKind, reason: ExcludeReason) {
        self.excluded
            .with_label_values(&[protocol.as_str(), path.as_str(), reason.as_str()])
            .inc();
    }

    /// Counts a send that left late.
    pub fn send_late(&self, protocol: Protocol) {
        self.send_late.with_label_values(&[protocol.as_str()]).inc();
    }

    /// Records a TCP connect duration.
    pub fn observe_tcp_connect(&self, path: PathKind, d: Duration) {
        self.tcp_connect
            .with_label_values(&[path.as_str()])
            .observe(d.as_secs_f64());
    }

    /// Records one HTTP probe phase.
    pub fn observe_http_phase(&self, path: PathKind, phase: HttpPhase, d: Duration) {
        self.http_phase
            .with_label_values(&[path.as_str(), phase.as_str()])
            .observe(d.as_secs_f64());
    }

    /// Sets the result of a path MTU search.
    pub fn set_path_mtu(&self, path: PathKind, peer_node: &str, path_mtu: u32, interface_mtu: u32) {
        let live = self.live();
        if !Self::is_live(&live, path, peer_node) {
            return;
        }
        self.path_mtu
            .with_label_values(&[path.as_str(), peer_node])
            .set(f64::from(path_mtu));
        self.interface_mtu
            .with_label_values(&[path.as_str(), peer_node])
            .set(f64::from(interface_mtu));
    }

    /// Records a finished bandwidth burst.
    pub fn record_burst(
        &self,
        path: PathKind,
        peer_node: &str,
        direction: Direction,
        bytes_per_second: f64,
        retransmits: u64,
        unix_time: f64,
    ) {
        self.burst_outcome(path, direction, BurstOutcome::Ok);
        let live = self.live();
        if !Self::is_live(&live, path, peer_node) {
            return;
        }
        let l = [path.as_str(), peer_node, direction.as_str()];
        self.bandwidth.with_label_values(&l).set(bytes_per_second);
        self.bandwidth_last.with_label_values(&l).set(unix_time);
        if direction == Direction::Send {
            self.bandwidth_retrans
                .with_label_values(&[path.as_str(), peer_node])
                .inc_by(retransmits);
        }
    }

    /// Counts a burst outcome (`record_burst` counts `Ok` itself).
    pub fn burst_outcome(&self, path: PathKind, direction: Direction, outcome: BurstOutcome) {
        self.bandwidth_bursts
            .with_label_values(&[path.as_str(), direction.as_str(), outcome.as_str()])
            .inc();
    }

    /// Counts a request answered by a responder.
    pub fn responder_request(&self, kind: ResponderKind) {
        self.responder_requests
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// Counts a request a responder rejected.
    pub fn responder_rejected(&self, kind: ResponderKind, reason: RejectReason) {
        self.responder_rejected
            .with_label_values(&[kind.as_str(), reason.as_str()])
            .inc();
    }

    /// The open-connections gauge of a TCP responder.
    pub fn responder_connections(&self, kind: ResponderKind) -> prometheus::IntGauge {
        self.responder_connections
            .with_label_values(&[kind.as_str()])
    }

    /// Exports which ICMP socket mode is in use.
    pub fn set_icmp_mode(&self, mode: IcmpMode) {
        for m in IcmpMode::ALL {
            self.icmp_socket
                .with_label_values(&[m.as_str()])
                .set(i64::from(*m == mode));
        }
    }

    /// Exports the burst key state: 1 for `state`, 0 for the others. The
    /// one writer is the agent's key watch, which sets it at start-up,
    /// before the agent reports ready, and after every look at the file.
    pub fn set_burst_key_state(&self, state: KeyState) {
        for s in KeyState::ALL {
            self.burst_key
                .with_label_values(&[s.as_str()])
                .set(i64::from(*s == state));
        }
    }

    /// Sets the number of peers probed per path kind.
    pub fn set_peer_counts(&self, counts: &[(PathKind, usize)]) {
        for path in PathKind::ALL {
            let n = counts
                .iter()
                .filter(|(p, _)| p == path)
                .map(|(_, n)| *n)
                .sum::<usize>();
            self.peers
                .with_label_values(&[path.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

impl AgentMetrics {
    /// Creates the DNS series of `network` at zero for `nameservers` (the
    /// DNS probe's, at its start: it owns them and they live as long as
    /// the agent, since the resolver configuration is read once).
    pub fn precreate_dns(&self, network: AgentKind, nameservers: &[String]) {
        self.dns_duration.with_label_values(&[network.as_str()]);
        for ns in nameservers {
            for o in DnsOutcome::ALL {
                self.dns_lookups
                    .with_label_values(&[network.as_str(), ns, o.as_str()]);
            }
        }
    }

    /// Books one DNS lookup: its outcome, and its time when it was
    /// answered with an address.
    pub fn observe_dns(
        &self,
        network: AgentKind,
        nameserver: &str,
        outcome: DnsOutcome,
        rtt: Option<Duration>,
    ) {
        self.dns_lookups
            .with_label_values(&[network.as_str(), nameserver, outcome.as_str()])
            .inc();
        if let (DnsOutcome::Ok, Some(rtt)) = (outcome, rtt) {
            self.dns_duration
                .with_label_values(&[network.as_str()])
                .observe(rtt.as_secs_f64());
        }
    }

    /// Creates every apiserver probe series of `network` at zero (the
    /// apiserver probe's, at its start).
    pub fn precreate_apiserver(&self, network: AgentKind) {
        for t in ApiserverTarget::ALL {
            for p in ApiserverPhase::ALL {
                self.apiserver_duration.with_label_values(&[
                    network.as_str(),
                    t.as_str(),
                    p.as_str(),
                ]);
            }
            for o in ApiserverOutcome::ALL {
                self.apiserver_probes.with_label_values(&[
                    network.as_str(),
                    t.as_str(),
                    o.as_str(),
                ]);
            }
        }
    }

    /// Records one completed phase of an apiserver probe.
    pub fn observe_apiserver_phase(
        &self,
        network: AgentKind,
        target: ApiserverTarget,
        phase: ApiserverPhase,
        d: Duration,
    ) {
        self.apiserver_duration
            .with_label_values(&[network.as_str(), target.as_str(), phase.as_str()])
            .observe(d.as_secs_f64());
    }

    /// Counts one apiserver probe by outcome.
    pub fn apiserver_probe(
        &self,
        network: AgentKind,
        target: ApiserverTarget,
        outcome: ApiserverOutcome,
    ) {
        self.apiserver_probes
            .with_label_values(&[network.as_str(), target.as_str(), outcome.as_str()])
            .inc();
    }
}

/// Unregistered handles of the same kinds: what a prober writes for a key
/// that is not live.
fn detached_latency(rtt: prometheus::Histogram, protocol: Protocol) -> LatencySeries {
    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::with_opts(Opts::new("detached", "detached"))
            .unwrap_or_else(|_| unreachable!("a constant valid name"))
    }
    fn gauge() -> prometheus::Gauge {
        prometheus::Gauge::with_opts(Opts::new("detached", "detached"))
            .unwrap_or_else(|_| unreachable!("a constant valid name"))
    }
    LatencySeries {
        rtt,
        sent: counter(),
        lost: counter(),
        rtt_min: gauge(),
        detail: has_peer_detail(protocol).then(|| PeerDetail {
            reply_rtt: prometheus::Counter::with_opts(Opts::new("detached", "detached"))
                .unwrap_or_else(|_| unreachable!("a constant valid name")),
            jitter: gauge(),
        }),
    }
}

/// Registers the process-wide collectors (build info, process_*) that a
/// scrape endpoint exports once, whatever number of agents it serves.
pub fn register_process_metrics(registry: &Registry) -> Result<(), MetricsError> {
    let info = int_gauge(registry, &catalog::BUILD_INFO)?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::build_revision()])
        .set(1);
    let pc = prometheus::process_collector::ProcessCollector::for_self();
    registry.register(Box::new(pc))?;
    Ok(())
}

/// Encodes the union of `registries` in the Prometheus text format. Families
/// with the same name (local mode: one registry per agent, each with its own
/// const labels) are merged so each name has one HELP/TYPE header.
pub fn encode(registries: &[&Registry]) -> Result<String, MetricsError> {
    let mut families: Vec<prometheus::proto::MetricFamily> = Vec::new();
    for r in registries {
        for fam in r.gather() {
            match families.iter_mut().find(|f| f.name() == fam.name()) {
                Some(existing) => {
                    existing
                        .mut_metric()
                        .extend(fam.get_metric().iter().cloned());
                }
                None => families.push(fam),
            }
        }
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut buf = Vec::new();
    TextEncoder::new().encode(&families, &mut buf)?;
    String::from_utf8(buf).map_err(|_| MetricsError::Utf8)
}

/// Content type of [`encode`]'s output.
pub const TEXT_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Number of series (sample lines) a collector currently exports; used by
/// tests and the cardinality budget.
pub fn series_count(c: &dyn Collector) -> usize {
    c.collect()
        .iter()
        .map(|f| {
            let per_metric = |m: &prometheus::proto::Metric| {
                if f.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
                    // buckets + the implicit +Inf bucket + _sum + _count
                    m.get_histogram().get_bucket().len() + 3
                } else {
                    1
                }
            };
            f.get_metric().iter().map(per_metric).sum::<usize>()
        })
        .sum()
}
