//! The scrape-time collector over [`super::NodeView`]: node readiness,
//! lease age (computed when scraped), clock offset, regressions and
//! control-plane leader changes.

use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, Opts};

use super::NodeView;
use crate::controller::metric_labels::Component;
use crate::metrics::catalog::{self, MetricDef};

/// Exports node and control-plane state at scrape time.
pub struct NodeCollector {
    view: NodeView,
    descs: Vec<Desc>,
}

fn gauge_vec(d: &MetricDef) -> Option<GaugeVec> {
    GaugeVec::new(Opts::new(d.name, d.help), d.labels).ok()
}

fn counter_vec(d: &MetricDef) -> Option<IntCounterVec> {
    IntCounterVec::new(Opts::new(d.name, d.help), d.labels).ok()
}

impl NodeCollector {
    /// A collector over `view`.
    pub fn new(view: NodeView) -> Result<Self, prometheus::Error> {
        use catalog::*;
        let mut descs = Vec::new();
        for d in [NODE_READY, NODE_LEASE_AGE, NODE_LEASE_CLOCK_OFFSET] {
            descs.extend(
                GaugeVec::new(Opts::new(d.name, d.help), d.labels)?
                    .desc()
                    .into_iter()
                    .cloned(),
            );
        }
        for d in [
            NODE_READY_TRANSITIONS,
            NODE_LEASE_RENEW_REGRESSIONS,
            CONTROL_PLANE_LEADER_CHANGES,
        ] {
            descs.extend(
                IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?
                    .desc()
                    .into_iter()
                    .cloned(),
            );
        }
        Ok(Self { view, descs })
    }
}

impl Collector for NodeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use catalog::*;
        let (Some(ready), Some(age), Some(offset), Some(trans), Some(regr), Some(changes)) = (
            gauge_vec(&NODE_READY),
            gauge_vec(&NODE_LEASE_AGE),
            gauge_vec(&NODE_LEASE_CLOCK_OFFSET),
            counter_vec(&NODE_READY_TRANSITIONS),
            counter_vec(&NODE_LEASE_RENEW_REGRESSIONS),
            counter_vec(&CONTROL_PLANE_LEADER_CHANGES),
        ) else {
            return Vec::new();
        };
        let now = Instant::now();
        let st = self.view.lock();
        for (name, n) in &st.nodes {
            if let Some(r) = n.ready {
                ready
                    .with_label_values(&[name])
                    .set(if r { 1.0 } else { 0.0 });
            }
            trans.with_label_values(&[name]).inc_by(n.transitions);
        }
        for (name, l) in &st.leases {
            if l.renew_micros.is_some() {
                age.with_label_values(&[name])
                    .set(now.saturating_duration_since(l.changed_at).as_secs_f64());
            }
            if let Some(o) = l.offset.estimate() {
                offset.with_label_values(&[name]).set(o);
            }
            regr.with_label_values(&[name]).inc_by(l.regressions);
        }
        for c in Component::ALL {
            changes
                .with_label_values(&[c.as_str()])
                .inc_by(st.leader_changes.get(c).copied().unwrap_or(0));
        }
        drop(st);
        let mut out = Vec::new();
        for c in [
            &ready as &dyn Collector,
            &age,
            &offset,
            &trans,
            &regr,
            &changes,
        ] {
            out.extend(c.collect());
        }
        out
    }
}
