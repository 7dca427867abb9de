//! The controller's plan publisher against the API test server: one plan
//! ConfigMap per node with zones from the Node labels, only changed plans
//! rewritten, a burst of pod changes coalesced by `min_interval`, plans of
//! departed nodes deleted, and a new leader rewriting nothing that is
//! already current.

use kubepulse_testkit::apiserver;

use std::collections::BTreeMap;
use std::time::Duration;

use apiserver::{ApiServer, Verb};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kubepulse::config::PlanSettings;
use kubepulse::controller::plan_publisher::PlanPublisher;
use kubepulse::plan::config_map::{config_map_name, PLAN_LABEL};
use kubepulse::plan::NodePlan;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub(crate) const NS: &str = "kubepulse";
const DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn node(name: &str, zone: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("node json")
}

pub(crate) fn pod(name: &str, node: &str, ip: &str, host: bool) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "kubepulse", "app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "agent"}]},
        "status": {"phase": "Running", "podIP": ip, "hostIP": "192.168.0.1", "conditions": [
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"}]}
    }))
    .expect("pod json")
}

pub(crate) fn node_name(i: usize) -> String {
    format!("n{i:03}")
}

/// `n` nodes in `zones` zones, each with a pod and a host agent.
pub(crate) fn cluster(server: &ApiServer, n: usize, zones: usize) {
    for i in 0..n {
        let name = node_name(i);
        server.apply(&node(&name, &format!("z{}", i % zones)));
        server.apply(&pod(
            &format!("pod-{name}"),
            &name,
            &format!("10.1.{i}.1"),
            false,
        ));
        server.apply(&pod(
            &format!("host-{name}"),
            &name,
            &format!("192.168.{i}.1"),
            true,
        ));
    }
}

/// ConfigMap name → plan, as stored.
pub(crate) fn plans(server: &ApiServer) -> BTreeMap<String, NodePlan> {
    server
        .objects::<ConfigMap>(NS)
        .into_iter()
        .filter(|cm| cm["metadata"]["labels"][PLAN_LABEL] == "node")
        .map(|cm| {
            let name = cm["metadata"]["name"].as_str().expect("name").to_string();
            let data: BTreeMap<String, String> =
                serde_json::from_value(cm["data"].clone()).expect("data");
            let (plan, bad) = NodePlan::from_data(&data).expect("plan");
            assert!(bad.is_none(), "{name}: unreadable lifecycle");
            (name, plan)
        })
        .collect()
}

pub(crate) async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn settings(min_interval: Duration) -> PlanSettings {
    PlanSettings {
        min_interval,
        ..PlanSettings::default()
    }
}

pub(crate) struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(crate) async fn stop(self) {
        self.token.cancel();
        self.task.await.expect("publisher stopped");
    }
}

fn start(server: &ApiServer, s: PlanSettings) -> Running {
    run(PlanPublisher::new(server.client(), NS, s))
}

/// Runs `publisher` until stopped.
pub(crate) fn run(publisher: PlanPublisher) -> Running {
    let token = CancellationToken::new();
    let task = tokio::spawn(publisher.run(token.clone()));
    Running { token, task }
}

fn patches(server: &ApiServer) -> usize {
    server.count(Verb::Patch, "configmaps")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_one_plan_per_node_and_only_changes() {
    let server = ApiServer::start().await;
    let n = 40;
    cluster(&server, n, 3);
    let p = start(&server, settings(Duration::from_millis(100)));
    wait_for("a plan per node", || plans(&server).len() == n).await;
    let first = plans(&server);
    for (name, plan) in &first {
        assert_eq!(name, &config_map_name(&plan.node));
        assert!(plan.probers >= 3, "{name}: {} probers", plan.probers);
        assert!(plan.zone.starts_with('z'), "zone from the Node label");
        // Both agents of its own node and of every target node.
        assert_eq!(plan.peers.len(), 2 * (1 + plan.target_nodes.len()));
        assert!(!plan.target_nodes.contains(&plan.node));
    }
    assert_eq!(patches(&server), n, "each plan written once");

    // One pod gets a new IP: only the plans naming it change.
    let before = patches(&server);
    server.apply(&pod("pod-n007", "n007", "10.9.9.9", false));
    let naming = |plans: &BTreeMap<String, NodePlan>| {
        plans
            .values()
            .filter(|p| p.peers.iter().any(|x| x.address.to_string() == "10.9.9.9"))
            .count()
    };
    wait_for("the new IP in the plans", || {
        naming(&plans(&server))
            == first
                .values()
                .filter(|p| p.node == "n007" || p.target_nodes.contains(&"n007".to_string()))
                .count()
    })
    .await;
    let after = plans(&server);
    let changed = first
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .count();
    assert_eq!(
        patches(&server) - before,
        changed,
        "only changed plans written"
    );
    assert!(changed < n / 2, "{changed} of {n} plans rewritten");

    // A node leaves (agents and Node object): its plan is deleted.
    assert!(server.delete::<Pod>(NS, "pod-n011"));
    assert!(server.delete::<Pod>(NS, "host-n011"));
    assert!(server.delete::<Node>("", "n011"));
    wait_for("n011's plan deleted", || {
        !plans(&server).contains_key(&config_map_name("n011"))
    })
    .await;
    wait_for("nobody probes n011", || {
        plans(&server)
            .values()
            .all(|p| !p.target_nodes.contains(&"n011".to_string()))
    })
    .await;
    p.stop().await;
    assert_calls_are_granted(&server);

    // A new leader finds every plan current and writes nothing.
    let before = patches(&server);
    let lists = server.count(Verb::List, "configmaps");
    let p = start(&server, settings(Duration::from_millis(100)));
    wait_for("the new leader's list of plans", || {
        server.count(Verb::List, "configmaps") > lists
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(patches(&server), before, "nothing rewritten");
    p.stop().await;
}

/// Every call the publisher made is granted by `controller::rbac::RULES` (which
/// `tests/in_process/controller_rbac.rs` compares with the manifests).
fn assert_calls_are_granted(server: &ApiServer) {
    use kubepulse::controller::rbac::{grants, Place};
    let granted = grants();
    for r in server.requests().into_iter().filter(|r| r.actor.is_none()) {
        let verb = match r.verb {
            Some(Verb::List) => "list",
            Some(Verb::Watch) => "watch",
            Some(Verb::Get) => "get",
            Some(Verb::Create) => "create",
            Some(Verb::Update) => "update",
            Some(Verb::Patch) => "patch",
            Some(Verb::Delete) => "delete",
            None => panic!("not an API call: {}", r.uri),
        };
        let place = if r.uri.contains("/namespaces/default/") {
            Place::DefaultNamespace
        } else if r.uri.contains("/namespaces/") {
            Place::OwnNamespace
        } else {
            Place::Cluster
        };
        let group = if r.uri.starts_with("/apis/discovery.k8s.io/") {
            "discovery.k8s.io"
        } else {
            ""
        };
        let ok = granted.iter().any(|(p, g, res, names, v)| {
            *p == place && g == group && *res == r.resource && names.is_empty() && v == verb
        });
        assert!(ok, "{verb} {} ({place:?}) is not granted", r.uri);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_is_coalesced() {
    let server = ApiServer::start().await;
    let n = 12;
    cluster(&server, n, 1);
    let min_interval = Duration::from_secs(1);
    let p = start(&server, settings(min_interval));
    wait_for("a plan per node", || plans(&server).len() == n).await;
    let before = patches(&server);
    // Every pod agent replaced (delete, then a new pod with a new IP), as a
    // DaemonSet rollout does.
    let t0 = tokio::time::Instant::now();
    for i in 0..n {
        let name = node_name(i);
        assert!(server.delete::<Pod>(NS, &format!("pod-{name}")));
        server.apply(&pod(
            &format!("pod2-{name}"),
            &name,
            &format!("10.2.{i}.1"),
            false,
        ));
    }
    wait_for("every new pod in every plan", || {
        plans(&server).values().all(|p| {
            p.peers
                .iter()
                .filter(|x| x.name.starts_with("pod2-"))
                .count()
                == 1 + p.target_nodes.len()
        })
    })
    .await;
    let elapsed = t0.elapsed();
    let written = patches(&server) - before;
    // Without debouncing, each of the 2n pod events would rewrite up to n
    // plans; with it, at most one publication per interval (plus the one
    // the first event triggers at once).
    let publications = 2 + (elapsed.as_secs_f64() / min_interval.as_secs_f64()) as usize;
    eprintln!(
        "{written} plan writes in {elapsed:?} for {} pod events",
        2 * n
    );
    assert!(
        written <= n * publications,
        "{written} writes > {n} x {publications}"
    );
    assert!(written < 2 * n * n / 2, "{written} writes: not coalesced");
    p.stop().await;
}

/// The `default/kubernetes` EndpointSlice's ready endpoints land in every
/// node's plan (the agents probe them directly), and follow its changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_endpoints_are_in_every_plan() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let server = ApiServer::start().await;
    cluster(&server, 3, 1);
    let slice = |ready_second: bool| -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["192.0.2.10"], "conditions": {"ready": true}},
                {"addresses": ["192.0.2.11"], "conditions": {"ready": ready_second}},
            ],
        }))
        .expect("slice json")
    };
    server.apply(&slice(true));
    let p = start(&server, settings(Duration::from_millis(100)));
    let want = |v: &[&str]| -> Vec<std::net::SocketAddr> {
        v.iter().map(|s| s.parse().expect("addr")).collect()
    };
    let both = want(&["192.0.2.10:6443", "192.0.2.11:6443"]);
    wait_for("both endpoints in every plan", || {
        let ps = plans(&server);
        ps.len() == 3 && ps.values().all(|p| p.apiserver == both)
    })
    .await;
    server.apply(&slice(false));
    let one = want(&["192.0.2.10:6443"]);
    wait_for("the unready endpoint gone from every plan", || {
        let ps = plans(&server);
        ps.len() == 3 && ps.values().all(|p| p.apiserver == one)
    })
    .await;
    assert_calls_are_granted(&server);
    p.stop().await;
}

/// A series' value in `registry`; `None` when the series is missing (never
/// read as 0).
pub(crate) fn series(
    registry: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let mf = registry.gather().into_iter().find(|mf| mf.name() == name)?;
    let m = mf.get_metric().iter().find(|m| {
        labels.iter().all(|(k, v)| {
            m.get_label()
                .iter()
                .any(|l| l.name() == *k && l.value() == *v)
        })
    })?;
    let v = match mf.get_field_type() {
        prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
        prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
        prometheus::proto::MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
        _ => return None,
    };
    Some(v)
}

/// The `kubepulse_plan_*` metrics move: writes counted by outcome, a write
/// failing with 500 counted and left pending while the others are recorded
/// as written, and retried alone at the next publication; the computation
/// timed and what it planned exported. Concurrent writes (a pool of 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_metrics_count_writes_and_a_failed_write_is_retried_alone() {
    use apiserver::{Fault, Rule};
    use kubepulse::controller::metrics::ControllerMetrics;
    let server = ApiServer::start().await;
    let n = 7;
    cluster(&server, n, 1);
    let failing = config_map_name("n002");
    server.inject(
        Rule::new(Fault::Status(500))
            .verb(Verb::Patch)
            .path(format!("/{failing}?"))
            .always(),
    );
    let registry = prometheus::Registry::new();
    let metrics = ControllerMetrics::new(registry.clone()).expect("metrics");
    let s = PlanSettings {
        write_concurrency: 3,
        ..settings(Duration::from_millis(200))
    };
    let token = CancellationToken::new();
    let task = tokio::spawn(
        PlanPublisher::new(server.client(), NS, s)
            .with_metrics(metrics)
            .run(token.clone()),
    );
    let p = Running { token, task };
    let get = |name: &str, labels: &[(&str, &str)]| series(&registry, name, labels);
    let writes = |outcome: &str| {
        get(
            "kubepulse_plan_writes_total",
            &[("op", "apply"), ("outcome", outcome)],
        )
    };
    wait_for("the failed write counted and retried", || {
        writes("error").is_some_and(|e| e >= 2.0)
    })
    .await;
    assert_eq!(
        plans(&server).len(),
        n - 1,
        "every plan but the failing one"
    );
    assert!(!plans(&server).contains_key(&failing));
    assert_eq!(writes("ok"), Some((n - 1) as f64));
    assert_eq!(get("kubepulse_plan_pending", &[]), Some(1.0));
    // Only the failing plan is retried: the others were recorded.
    let others = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.verb == Some(Verb::Patch) && !r.uri.contains(&failing))
            .count()
    };
    assert_eq!(
        others(&server),
        n - 1,
        "the written plans are not rewritten"
    );
    assert_eq!(get("kubepulse_plan_nodes", &[]), Some(n as f64));
    assert_eq!(get("kubepulse_plan_min_probers", &[]), Some((n - 1) as f64));
    assert_eq!(
        get("kubepulse_plan_max_peer_nodes", &[]),
        Some((n - 1) as f64)
    );
    assert!(get("kubepulse_plan_last_compute_duration_seconds", &[]).is_some_and(|s| s > 0.0));
    assert_eq!(
        get(
            "kubepulse_plan_writes_total",
            &[("op", "delete"), ("outcome", "ok")]
        ),
        Some(0.0)
    );

    // The apiserver recovers: the plan is written at the next pass.
    server.clear_faults();
    wait_for("the retried plan", || plans(&server).contains_key(&failing)).await;
    wait_for("nothing pending", || {
        get("kubepulse_plan_pending", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(writes("ok"), Some(n as f64));
    assert_eq!(others(&server), n - 1);

    // A node leaves: its plan's delete is counted.
    assert!(server.delete::<Pod>(NS, "pod-n006"));
    assert!(server.delete::<Pod>(NS, "host-n006"));
    assert!(server.delete::<Node>("", "n006"));
    wait_for("the delete counted", || {
        get(
            "kubepulse_plan_writes_total",
            &[("op", "delete"), ("outcome", "ok")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(get("kubepulse_plan_nodes", &[]), Some((n - 1) as f64));
    p.stop().await;
}

/// A new leader that cannot list the existing plans writes nothing, and
/// says so: every plan is pending until the list succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_wait_while_the_existing_ones_cannot_be_listed() {
    use apiserver::{Fault, Rule};
    use kubepulse::controller::metrics::ControllerMetrics;
    let server = ApiServer::start().await;
    let n = 5;
    cluster(&server, n, 1);
    server.inject(
        Rule::new(Fault::Status(500))
            .verb(Verb::List)
            .path("/configmaps?")
            .always(),
    );
    let registry = prometheus::Registry::new();
    let metrics = ControllerMetrics::new(registry.clone()).expect("metrics");
    let token = CancellationToken::new();
    let task = tokio::spawn(
        PlanPublisher::new(server.client(), NS, settings(Duration::from_millis(200)))
            .with_metrics(metrics)
            .run(token.clone()),
    );
    let p = Running { token, task };
    let pending = || series(&registry, "kubepulse_plan_pending", &[]);
    wait_for("every plan pending", || pending() == Some(n as f64)).await;
    assert!(plans(&server).is_empty(), "nothing written before the list");
    assert_eq!(patches(&server), 0);

    server.clear_faults();
    wait_for("the plans written", || plans(&server).len() == n).await;
    wait_for("nothing pending", || pending() == Some(0.0)).await;
    p.stop().await;
}
