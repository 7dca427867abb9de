//! Node readiness, Lease heartbeats, clock offset and control-plane leader
//! changes from watches on the fake apiserver.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubepulse::controller::metrics::ControllerMetrics;
use kubepulse::controller::nodes::{self, NodeCollector, NodeView};
use kubepulse_testkit::apiserver::ApiServer;
use kubepulse_testkit::scrape::{parse, Scrape};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const NODE_LEASE_NS: &str = "kube-node-lease";
const CP_LEASE_NS: &str = "kube-system";

fn node(name: &str, ready: bool) -> Value {
    json!({"metadata": {"name": name}, "spec": {},
           "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn lease(namespace: &str, name: &str, holder: &str, renew: Timestamp) -> Value {
    let t =
        k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", renew).expect("format");
    json!({"metadata": {"name": name, "namespace": namespace}, "spec": {"holderIdentity": holder, "renewTime": t, "leaseDurationSeconds": 40}})
}

fn scrape(m: &ControllerMetrics) -> Scrape {
    parse(&kubepulse::metrics::encode(&[m.registry()]).expect("encode"))
}

async fn until(m: &ControllerMetrics, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sc = scrape(m);
        if ok(&sc) {
            return sc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}:\n{}",
            sc.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_health_from_watches() {
    let server = ApiServer::with_namespaces(&["kube-node-lease", "kube-system"]).await;
    server.apply_json::<Node>(node("node-a", true));
    server.apply_json::<Node>(node("node-b", false));
    let now = Timestamp::now();
    server.apply_json::<Lease>(lease(NODE_LEASE_NS, "node-a", "node-a", now));
    server.apply_json::<Lease>(lease(CP_LEASE_NS, "kube-scheduler", "sched-1", now));

    let m = ControllerMetrics::new(prometheus::Registry::new()).expect("metrics");
    let view = NodeView::new(10);
    m.registry()
        .register(Box::new(
            NodeCollector::new(view.clone()).expect("collector"),
        ))
        .expect("register");
    let token = CancellationToken::new();
    let task = tokio::spawn(nodes::watch_all(
        server.client(),
        view.clone(),
        m.clone(),
        token.clone(),
    ));
    until(&m, "initial list", |s| {
        s.try_sum("kubepulse_node_ready", &[("target_node", "node-a")]) == Some(1.0)
            && s.select(
                "kubepulse_node_lease_age_seconds",
                &[("target_node", "node-a")],
            )
            .len()
                == 1
    })
    .await;
    assert_eq!(view.schedulable(), vec!["node-a".to_string()]);

    // node-a's clock is 3 s ahead: five renewals 100 ms apart.
    let ahead = SignedDuration::from_secs(3);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let renew = Timestamp::now().checked_add(ahead).expect("time");
        server.apply_json::<Lease>(lease(NODE_LEASE_NS, "node-a", "node-a", renew));
    }
    // Five renewals after the initial list are four gaps.
    let sc = until(&m, "renewal gaps", |s| {
        s.try_sum("kubepulse_node_lease_renew_interval_seconds_count", &[]) >= Some(4.0)
    })
    .await;
    assert_eq!(
        sc.sum("kubepulse_node_lease_renew_interval_seconds_count", &[]),
        4.0
    );
    let offset = sc.sum(
        "kubepulse_node_lease_clock_offset_seconds",
        &[("target_node", "node-a")],
    );
    // A lower bound of the true +3 s, short by the event's delivery delay.
    assert!((2.9..=3.0).contains(&offset), "offset {offset}");
    let gaps = sc.sum("kubepulse_node_lease_renew_interval_seconds_sum", &[])
        / sc.sum("kubepulse_node_lease_renew_interval_seconds_count", &[]);
    assert!((0.09..0.4).contains(&gaps), "mean gap {gaps}");

    // Age grows at scrape time while no renewal comes.
    let a1 = scrape(&m).sum(
        "kubepulse_node_lease_age_seconds",
        &[("target_node", "node-a")],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a2 = scrape(&m).sum(
        "kubepulse_node_lease_age_seconds",
        &[("target_node", "node-a")],
    );
    assert!(a2 - a1 >= 0.29, "age {a1} -> {a2}");

    // renewTime going backwards (node clock stepped back).
    server.apply_json::<Lease>(lease(NODE_LEASE_NS, "node-a", "node-a", now));
    until(&m, "regression", |s| {
        s.try_sum(
            "kubepulse_node_lease_renew_time_regressions_total",
            &[("target_node", "node-a")],
        ) == Some(1.0)
    })
    .await;

    // Ready transition and control-plane leader change.
    server.apply_json::<Node>(node("node-b", true));
    server.apply_json::<Lease>(lease(CP_LEASE_NS, "kube-scheduler", "sched-2", now));
    let sc = until(&m, "transitions", |s| {
        s.try_sum(
            "kubepulse_node_ready_transitions_total",
            &[("target_node", "node-b")],
        ) == Some(1.0)
            && s.try_sum(
                "kubepulse_control_plane_leader_changes_total",
                &[("component", "kube-scheduler")],
            ) == Some(1.0)
    })
    .await;
    assert_eq!(
        sc.sum(
            "kubepulse_control_plane_leader_changes_total",
            &[("component", "kube-controller-manager")]
        ),
        0.0
    );
    assert_eq!(
        view.schedulable(),
        vec!["node-a".to_string(), "node-b".to_string()]
    );
    for l in sc
        .body
        .lines()
        .filter(|l| l.starts_with("kubepulse_node_") || l.starts_with("kubepulse_control_plane"))
    {
        println!("{l}");
    }
    token.cancel();
    task.await.expect("watch task");
}
