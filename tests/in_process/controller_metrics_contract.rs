//! The controller's metrics: a real scrape matches docs/metrics.md
//! "Controller metrics" (that the section lists exactly
//! `catalog::CONTROLLER` is checked by tests/in_process/metrics_contract.rs).

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kubepulse::controller::metric_labels::{Phase, Resource, Scope, SweepReason, Verb, WatchEvent};
use kubepulse::controller::metrics::{ControllerMetrics, PlanOp, PlanShape};
use kubepulse::controller::nodes::{NodeCollector, NodeView};
use kubepulse::metrics::{self, catalog};
use kubepulse::peer::NodeState;
use kubepulse_testkit::scrape;

#[test]
fn a_real_controller_scrape_is_fully_documented() {
    let registry = prometheus::Registry::new();
    metrics::register_process_metrics(&registry).expect("process");
    let m = ControllerMetrics::new(registry.clone()).expect("metrics");
    let view = NodeView::new(4);
    registry
        .register(Box::new(
            NodeCollector::new(view.clone()).expect("collector"),
        ))
        .expect("register");
    // Touch every family.
    m.observe_request(
        Verb::Post,
        Resource::Pods,
        Scope::Resource,
        Some(429),
        Duration::from_millis(3),
    );
    m.set_flowcontrol("fs-uid", "pl-uid");
    m.client_wait(Duration::from_millis(1));
    m.observe_watch_event(WatchEvent::Added, Duration::from_millis(2));
    m.observe_phase(Phase::PodStartup, Duration::from_secs(1));
    m.set_last_startup("node-a", Duration::from_secs(1));
    m.swept(Resource::Pods, SweepReason::Expired);
    m.set_leader(true);
    m.plan_write(PlanOp::Apply, false);
    m.set_plan_pending(1);
    m.observe_plan(
        Duration::from_millis(40),
        PlanShape {
            nodes: 4,
            min_probers: 3,
            max_peer_nodes: 3,
        },
    );
    m.observe_plan_lifecycle(&[(NodeState::Cordoned, 1)].into(), 2);
    view.apply_node(&Node {
        metadata: ObjectMeta {
            name: Some("node-a".into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let lease = |micros: i64| Lease {
        metadata: ObjectMeta {
            name: Some("node-a".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            renew_time: k8s_openapi::jiff::Timestamp::from_microsecond(micros)
                .ok()
                .map(MicroTime),
            ..Default::default()
        }),
    };
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_micros() as i64;
    view.apply_node_lease(&lease(now_us), Instant::now(), SystemTime::now(), true, &m);

    let body = metrics::encode(&[&registry]).expect("encode");
    let sc = scrape::parse(&body);
    scrape::assert_documented(
        &sc,
        &["Controller metrics", "Process metrics", "Agent metrics"],
        &[],
        catalog::CONTROLLER,
    );
    assert_eq!(sc.sum("kubepulse_apiserver_throttled_total", &[]), 1.0);
    assert_eq!(
        sc.sum(
            "kubepulse_plan_writes_total",
            &[("op", "apply"), ("outcome", "error")]
        ),
        1.0
    );
    assert_eq!(sc.sum("kubepulse_plan_min_probers", &[]), 3.0);
    assert_eq!(
        sc.sum("kubepulse_node_ready", &[("target_node", "node-a")]),
        1.0
    );
}
