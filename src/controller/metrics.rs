//! Typed handles of the controller's metrics. Node-level state
//! (`kubepulse_node_*`, leader changes) is exported by the collector in
//! [`super::nodes`], computed at scrape time.

use std::time::Duration;

use prometheus::{
    Counter, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::metric_labels::{
    CodeClass, Outcome, Phase, Resource, Scope, SweepReason, Verb, WatchEvent, WatchName,
};
use super::{buckets, scope};
use crate::api_error::ApiFailureReason;
use crate::metrics::catalog::{self, MetricDef};
use crate::metrics::MetricsError;
use crate::peer::NodeState;

fn reg<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: C,
) -> Result<C, MetricsError> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn opts(d: &MetricDef) -> Opts {
    Opts::new(d.name, d.help)
}

fn hist(r: &Registry, d: &MetricDef, buckets: Vec<f64>) -> Result<HistogramVec, MetricsError> {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new(d.name, d.help).buckets(buckets),
            d.labels,
        )?,
    )
}

/// The controller's metrics that are updated as measurements happen.
#[derive(Clone)]
pub struct ControllerMetrics {
    registry: Registry,
    startup: HistogramVec,
    probes: IntCounterVec,
    last: GaugeVec,
    swept: IntCounterVec,
    request: HistogramVec,
    watch_event: HistogramVec,
    throttled: IntCounter,
    conflicts: IntCounterVec,
    client_wait: Counter,
    flowcontrol: GaugeVec,
    leader: IntGauge,
    acquisitions: IntCounter,
    leader_errors: IntCounterVec,
    watch_restarts: IntCounterVec,
    lease_gap: HistogramVec,
    plan_writes: IntCounterVec,
    plan_pending: IntGauge,
    plan_compute_last: Gauge,
    plan_nodes: IntGauge,
    plan_nodes_by_state: IntGaugeVec,
    plan_agents_not_ready: IntGauge,
    plan_min_probers: IntGauge,
    plan_max_peer_nodes: IntGauge,
}

/// A plan ConfigMap operation, the `op` label of `kubepulse_plan_writes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanOp {
    /// Server-side apply of a changed plan.
    Apply,
    /// Delete of the plan of a node that left.
    Delete,
}

impl PlanOp {
    /// Every value.
    pub const ALL: [PlanOp; 2] = [PlanOp::Apply, PlanOp::Delete];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanOp::Apply => "apply",
            PlanOp::Delete => "delete",
        }
    }
}

/// What one plan computation found, for the plan gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanShape {
    /// Nodes planned.
    pub nodes: usize,
    /// Smallest in-degree.
    pub min_probers: usize,
    /// Largest out-degree.
    pub max_peer_nodes: usize,
}

impl ControllerMetrics {
    /// Registers the controller's metrics in `registry` and creates every
    /// series with closed label values at zero.
    pub fn new(registry: Registry) -> Result<Self, MetricsError> {
        use catalog::*;
        let r = &registry;
        let m = Self {
            startup: hist(r, &POD_STARTUP_DURATION, buckets::pod_startup_buckets())?,
            probes: reg(
                r,
                IntCounterVec::new(opts(&POD_STARTUP_PROBES), POD_STARTUP_PROBES.labels)?,
            )?,
            last: reg(
                r,
                GaugeVec::new(opts(&POD_STARTUP_LAST), POD_STARTUP_LAST.labels)?,
            )?,
            swept: reg(
                r,
                IntCounterVec::new(opts(&PROBE_OBJECTS_SWEPT), PROBE_OBJECTS_SWEPT.labels)?,
            )?,
            request: hist(r, &APISERVER_REQUEST_DURATION, buckets::apiserver_buckets())?,
            watch_event: hist(
                r,
                &APISERVER_WATCH_EVENT_LATENCY,
                buckets::apiserver_buckets(),
            )?,
            throttled: reg(r, IntCounter::with_opts(opts(&APISERVER_THROTTLED))?)?,
            conflicts: reg(
                r,
                IntCounterVec::new(opts(&APISERVER_CONFLICTS), APISERVER_CONFLICTS.labels)?,
            )?,
            client_wait: reg(r, Counter::with_opts(opts(&APISERVER_CLIENT_WAIT))?)?,
            flowcontrol: reg(
                r,
                GaugeVec::new(
                    opts(&APISERVER_FLOWCONTROL_INFO),
                    APISERVER_FLOWCONTROL_INFO.labels,
                )?,
            )?,
            leader: reg(r, IntGauge::with_opts(opts(&CONTROLLER_LEADER))?)?,
            acquisitions: reg(
                r,
                IntCounter::with_opts(opts(&CONTROLLER_LEADER_ACQUISITIONS))?,
            )?,
            leader_errors: reg(
                r,
                IntCounterVec::new(
                    opts(&CONTROLLER_LEADER_ERRORS),
                    CONTROLLER_LEADER_ERRORS.labels,
                )?,
            )?,
            watch_restarts: reg(
                r,
                IntCounterVec::new(
                    opts(&CONTROLLER_WATCH_RESTARTS),
                    CONTROLLER_WATCH_RESTARTS.labels,
                )?,
            )?,
            lease_gap: hist(r, &NODE_LEASE_RENEW_INTERVAL, buckets::lease_gap_buckets())?,
            plan_writes: reg(
                r,
                IntCounterVec::new(opts(&PLAN_WRITES), PLAN_WRITES.labels)?,
            )?,
            plan_pending: reg(r, IntGauge::with_opts(opts(&PLAN_PENDING))?)?,
            plan_compute_last: reg(r, Gauge::with_opts(opts(&PLAN_COMPUTE_LAST))?)?,
            plan_nodes: reg(r, IntGauge::with_opts(opts(&PLAN_NODES))?)?,
            plan_nodes_by_state: reg(
                r,
                IntGaugeVec::new(opts(&PLAN_NODES_BY_STATE), PLAN_NODES_BY_STATE.labels)?,
            )?,
            plan_agents_not_ready: reg(r, IntGauge::with_opts(opts(&PLAN_AGENTS_NOT_READY))?)?,
            plan_min_probers: reg(r, IntGauge::with_opts(opts(&PLAN_MIN_PROBERS))?)?,
            plan_max_peer_nodes: reg(r, IntGauge::with_opts(opts(&PLAN_MAX_PEER_NODES))?)?,
            registry,
        };
        for reason in ApiFailureReason::ALL {
            m.leader_errors.with_label_values(&[reason.as_str()]);
        }
        for o in Outcome::ALL {
            m.probes.with_label_values(&[o.as_str()]);
        }
        for p in Phase::ALL {
            m.startup.with_label_values(&[p.as_str()]);
        }
        for res in [Resource::Pods, Resource::ConfigMaps] {
            m.conflicts.with_label_values(&[res.as_str()]);
            for reason in SweepReason::ALL {
                m.swept.with_label_values(&[res.as_str(), reason.as_str()]);
            }
        }
        for e in WatchEvent::ALL {
            m.watch_event.with_label_values(&[e.as_str()]);
        }
        for w in WatchName::ALL {
            m.watch_restarts.with_label_values(&[w.as_str()]);
        }
        m.lease_gap.with_label_values::<&str>(&[]);
        for s in NodeState::CLASSIFIED {
            m.plan_nodes_by_state.with_label_values(&[s.as_str()]);
        }
        for op in PlanOp::ALL {
            for outcome in ["ok", "error"] {
                m.plan_writes.with_label_values(&[op.as_str(), outcome]);
            }
        }
        Ok(m)
    }

    /// The registry these metrics live in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one timed apiserver request.
    pub fn observe_request(
        &self,
        verb: Verb,
        resource: Resource,
        scope: Scope,
        status: Option<u16>,
        d: Duration,
    ) {
        let code: CodeClass = scope::code_class(status);
        self.request
            .with_label_values(&[
                verb.as_str(),
                resource.as_str(),
                scope.as_str(),
                code.as_str(),
            ])
            .observe(d.as_secs_f64());
        match status {
            Some(429) => self.throttled.inc(),
            Some(409) => self.conflicts.with_label_values(&[resource.as_str()]).inc(),
            _ => {}
        }
    }

    /// Exports the APF classification of the latest response (one series).
    pub fn set_flowcontrol(&self, flow_schema_uid: &str, priority_level_uid: &str) {
        let l = [flow_schema_uid, priority_level_uid];
        if self
            .flowcontrol
            .get_metric_with_label_values(&l)
            .is_ok_and(|g| g.get() == 1.0)
        {
            return;
        }
        self.flowcontrol.reset();
        self.flowcontrol.with_label_values(&l).set(1.0);
    }

    /// Adds time spent waiting in the sampler's rate limiter.
    pub fn client_wait(&self, d: Duration) {
        self.client_wait.inc_by(d.as_secs_f64());
    }

    /// Records a write-to-watch-event latency.
    pub fn observe_watch_event(&self, e: WatchEvent, d: Duration) {
        self.watch_event
            .with_label_values(&[e.as_str()])
            .observe(d.as_secs_f64());
    }

    /// Records one pod startup phase.
    pub fn observe_phase(&self, p: Phase, d: Duration) {
        self.startup
            .with_label_values(&[p.as_str()])
            .observe(d.as_secs_f64());
    }

    /// Counts a finished probe.
    pub fn probe_outcome(&self, o: Outcome) {
        self.probes.with_label_values(&[o.as_str()]).inc();
    }

    /// Sets the last ok pod_startup of `target_node`.
    pub fn set_last_startup(&self, target_node: &str, d: Duration) {
        self.last
            .with_label_values(&[target_node])
            .set(d.as_secs_f64());
    }

    /// Drops the per-node series of a node that left.
    pub fn remove_node(&self, target_node: &str) {
        // Absent series are fine.
        let _ = self.last.remove_label_values(&[target_node]);
    }

    /// Counts a swept object.
    pub fn swept(&self, resource: Resource, reason: SweepReason) {
        self.swept
            .with_label_values(&[resource.as_str(), reason.as_str()])
            .inc();
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        if leading {
            self.acquisitions.inc();
        }
    }

    /// Counts a failed leader-election call by its named reason.
    pub fn leader_error(&self, reason: ApiFailureReason) {
        self.leader_errors
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts a watch restart.
    pub fn watch_restart(&self, w: WatchName) {
        self.watch_restarts.with_label_values(&[w.as_str()]).inc();
    }

    /// Records a gap between two observed node Lease renewals.
    pub fn observe_lease_gap(&self, d: Duration) {
        self.lease_gap
            .with_label_values::<&str>(&[])
            .observe(d.as_secs_f64());
    }

    /// Counts one plan ConfigMap write or delete.
    pub fn plan_write(&self, op: PlanOp, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.plan_writes
            .with_label_values(&[op.as_str(), outcome])
            .inc();
    }

    /// Sets the writes and deletes awaiting a retry.
    pub fn set_plan_pending(&self, n: usize) {
        self.plan_pending.set(gauge_int(n));
    }

    /// Records one plan computation: its duration and what it planned.
    pub fn observe_plan(&self, d: Duration, shape: PlanShape) {
        self.plan_compute_last.set(d.as_secs_f64());
        self.plan_nodes.set(gauge_int(shape.nodes));
        self.plan_min_probers.set(gauge_int(shape.min_probers));
        self.plan_max_peer_nodes
            .set(gauge_int(shape.max_peer_nodes));
    }

    /// Records the lifecycle of one plan computation: its nodes by state
    /// (every state the controller assigns, 0 included) and the agents it
    /// left out.
    pub fn observe_plan_lifecycle(
        &self,
        states: &std::collections::BTreeMap<NodeState, usize>,
        agents_not_ready: usize,
    ) {
        for s in NodeState::CLASSIFIED {
            self.plan_nodes_by_state
                .with_label_values(&[s.as_str()])
                .set(gauge_int(states.get(&s).copied().unwrap_or(0)));
        }
        self.plan_agents_not_ready.set(gauge_int(agents_not_ready));
    }
}

fn gauge_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
