//! Kubernetes discovery through the real kube-rs client and watcher against
//! the API test server: the agent reads only its node's plan ConfigMap (by
//! name), follows changes to it, ignores every other plan, keeps the last
//! plan while the API is down (`kubepulse_discovery_up` 0 then 1), through
//! broken watches (dropped connection, 410 Expired), list failures (500,
//! 429) and unreadable plans, and never touches pods or Services.

use kubepulse_testkit::apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use apiserver::{ApiServer, Fault, Verb};
use k8s_openapi::api::core::v1::ConfigMap;
use kubepulse::config::KubernetesDiscoverySettings;
use kubepulse::discovery::kubernetes::{KubernetesDiscovery, KubernetesOptions};
use kubepulse::discovery::Discovery;
use kubepulse::metrics::DiscoveryMetrics;
use kubepulse::peer::AgentKind;
use kubepulse::peer::{Identity, Peer, PeerSet, ProbePorts};
use kubepulse::plan::config_map::{config_map_name, DATA_KEY, LIFECYCLE_KEY};
use kubepulse::plan::node_plan::FORMAT_VERSION;
use kubepulse::plan::{NodePlan, PlanWatch, PlannedBurst};
use kubepulse::schedule::busy::BusyNodes;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NS: &str = "kubepulse";
const DEADLINE: Duration = Duration::from_secs(60);

fn peer(name: &str, node: &str, ip: &str, kind: AgentKind) -> Peer {
    Peer {
        name: name.into(),
        address: ip.parse().expect("ip"),
        node: node.into(),
        kind,
        ports: ProbePorts::default(),
        path: None,
    }
}

/// A plan for `node` probing `targets` (a pod agent each), with one burst
/// towards the first target in slot 7 of a 100-slot cycle.
fn plan(node: &str, targets: &[&str]) -> NodePlan {
    let mut peers = vec![peer(
        &format!("agent-pod-{node}"),
        node,
        "10.1.0.1",
        AgentKind::Pod,
    )];
    for (i, t) in targets.iter().enumerate() {
        peers.push(peer(
            &format!("agent-pod-{t}"),
            t,
            &format!("10.1.{}.1", i + 1),
            AgentKind::Pod,
        ));
    }
    let mut busy = BTreeMap::new();
    busy.insert(node.to_string(), vec![7]);
    if let Some(t) = targets.first() {
        busy.insert(t.to_string(), vec![7]);
    }
    NodePlan {
        version: FORMAT_VERSION,
        node: node.into(),
        zone: String::new(),
        target_nodes: targets.iter().map(|t| t.to_string()).collect(),
        probers: targets.len(),
        peers,
        slot_ms: 5000,
        cycle_slots: 100,
        bursts: targets
            .first()
            .map(|t| PlannedBurst {
                slot: 7,
                peer_node: t.to_string(),
            })
            .into_iter()
            .collect(),
        busy,
        apiserver: vec![],
        lifecycle: Default::default(),
    }
}

fn publish(server: &ApiServer, node: &str, data: &str) {
    server.apply_json::<ConfigMap>(json!({
        "metadata": {"name": config_map_name(node), "namespace": NS},
        "data": {DATA_KEY: data},
    }));
}

struct Harness {
    server: ApiServer,
    _disc: KubernetesDiscovery,
    rx: watch::Receiver<PeerSet>,
    plan: watch::Receiver<PlanWatch>,
    registry: prometheus::Registry,
    token: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn start(server: ApiServer) -> Harness {
    let registry = prometheus::Registry::new();
    let metrics = DiscoveryMetrics::new(&registry).expect("metrics");
    let token = CancellationToken::new();
    let opts = KubernetesOptions {
        identity: Identity {
            name: "agent-pod-n1".into(),
            node: "n1".into(),
            kind: AgentKind::Pod,
        },
        namespace: NS.into(),
        settings: KubernetesDiscoverySettings::default(),
        default_ports: ProbePorts::default(),
    };
    let disc = KubernetesDiscovery::start(server.client(), opts, metrics, token.clone())
        .expect("start discovery");
    let rx = disc.subscribe();
    let plan = disc.subscribe_plan();
    Harness {
        server,
        _disc: disc,
        rx,
        plan,
        registry,
        token,
    }
}

fn names(set: &PeerSet) -> BTreeSet<String> {
    set.iter().map(|p| p.name.clone()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Waits until `pred` holds for the published peer set, or fails naming `what`.
async fn wait_peers(h: &mut Harness, what: &str, pred: impl Fn(&PeerSet) -> bool) -> PeerSet {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let cur = h.rx.borrow_and_update().clone();
        if pred(&cur) {
            return cur;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, h.rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("timed out waiting for {what}; peers now: {:?}", names(&cur)),
        }
    }
}

fn metric(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    let text = kubepulse::metrics::encode(&[registry]).expect("encode");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls a metric until it equals `want`.
async fn wait_metric(registry: &prometheus::Registry, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric(registry, name) != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {want}: {:?}",
            metric(registry, name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every request of the code under test touched only ConfigMaps, and every
/// list and watch selected the agent's own plan by name.
fn assert_only_own_plan(server: &ApiServer) {
    let own = format!("metadata.name%3D{}", config_map_name("n1"));
    let mine: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.actor.is_none())
        .collect();
    assert!(!mine.is_empty());
    for r in mine {
        assert_eq!(r.resource, "configmaps", "{}", r.uri);
        match r.verb {
            Some(Verb::List | Verb::Watch) => assert!(r.uri.contains(&own), "{}", r.uri),
            Some(Verb::Get) => assert!(r.uri.contains(&config_map_name("n1")), "{}", r.uri),
            other => panic!("unexpected {other:?}: {}", r.uri),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_its_own_plan_only() {
    let server = ApiServer::start().await;
    let mut h = start(server);
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;
    assert!(h.rx.borrow().is_empty(), "no plan yet: nothing to probe");
    assert!(h.plan.borrow().is_none());

    publish(&h.server, "n1", &plan("n1", &["n2", "n3"]).to_json());
    wait_peers(&mut h, "the first plan", |p| {
        names(p) == set(&["agent-pod-n1", "agent-pod-n2", "agent-pod-n3"])
    })
    .await;
    let got = h.plan.borrow().clone().expect("plan published");
    assert_eq!(got.burst_in(107), Some("n2"));
    assert!(got.busy(207, "n2") && !got.busy(208, "n2"));

    // Another node's plan is not this agent's business.
    publish(&h.server, "n2", &plan("n2", &["n9"]).to_json());
    // A change to its own plan arrives.
    publish(&h.server, "n1", &plan("n1", &["n3", "n4"]).to_json());
    wait_peers(&mut h, "the changed plan", |p| {
        names(p) == set(&["agent-pod-n1", "agent-pod-n3", "agent-pod-n4"])
    })
    .await;
    assert!(!names(&h.rx.borrow()).contains("agent-pod-n9"));
    assert_only_own_plan(&h.server);
}

/// Waits until the published plan satisfies `pred`.
async fn wait_plan(h: &mut Harness, what: &str, pred: impl Fn(&NodePlan) -> bool) -> NodePlan {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(p) = h.plan.borrow_and_update().as_deref() {
            if pred(p) {
                return p.clone();
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, h.plan.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("timed out waiting for {what}"),
        }
    }
}

fn publish_data(server: &ApiServer, node: &str, data: &BTreeMap<String, String>) {
    server.apply_json::<ConfigMap>(json!({
        "metadata": {"name": config_map_name(node), "namespace": NS},
        "data": data,
    }));
}

/// The lifecycle beside the plan reaches the agent with it; a plan without
/// one (a previous controller's) reads as all ready; an unreadable one is
/// left out while the plan is still followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_lifecycle_beside_the_plan() {
    use kubepulse::peer::NodeState;
    use kubepulse::plan::NotReadyAgent;
    let server = ApiServer::start().await;
    let mut h = start(server);
    let mut p = plan("n1", &["n2", "n3"]);
    p.lifecycle
        .nodes
        .insert("n2".into(), NodeState::DeletionTaint);
    p.lifecycle.not_ready.push(NotReadyAgent {
        name: "agent-host-n3".into(),
        node: "n3".into(),
        kind: AgentKind::Host,
    });
    publish_data(&h.server, "n1", &p.to_data());
    let got = wait_plan(&mut h, "the plan with its lifecycle", |x| {
        !x.lifecycle.is_empty()
    })
    .await;
    assert_eq!(got, p);
    // A previous controller's plan: only the plan key.
    publish(&h.server, "n1", &plan("n1", &["n4"]).to_json());
    let got = wait_plan(&mut h, "the plan without a lifecycle", |x| {
        x.target_nodes == ["n4"]
    })
    .await;
    assert!(got.lifecycle.is_empty());
    // An unreadable lifecycle: the plan is still followed, without it.
    let mut data = plan("n1", &["n5"]).to_data();
    data.insert(LIFECYCLE_KEY.into(), "{broken".into());
    publish_data(&h.server, "n1", &data);
    wait_peers(&mut h, "the plan beside a broken lifecycle", |x| {
        names(x).contains("agent-pod-n5")
    })
    .await;
    let got = h.plan.borrow().clone().expect("plan");
    assert_eq!(got.target_nodes, ["n5"]);
    assert!(got.lifecycle.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_or_deleted_plans_keep_the_last_one() {
    let server = ApiServer::start().await;
    publish(&server, "n1", &plan("n1", &["n2"]).to_json());
    let mut h = start(server);
    let before = wait_peers(&mut h, "the plan", |p| p.len() == 2).await;
    publish(&h.server, "n1", "{not json");
    let mut future = plan("n1", &["n5"]);
    future.version = FORMAT_VERSION + 1;
    publish(&h.server, "n1", &future.to_json());
    assert!(h.server.delete::<ConfigMap>(NS, &config_map_name("n1")));
    // A marker plan proves the bad ones above were all processed.
    publish(&h.server, "n1", &plan("n1", &["n6"]).to_json());
    let after = wait_peers(&mut h, "the marker plan", |p| {
        names(p).contains("agent-pod-n6")
    })
    .await;
    assert_ne!(before, after);
    assert!(
        !names(&after).contains("agent-pod-n5"),
        "future format rejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_breaks_and_resumes() {
    let server = ApiServer::start().await;
    publish(&server, "n1", &plan("n1", &[]).to_json());
    let mut h = start(server);
    wait_peers(&mut h, "self", |p| p.len() == 1).await;
    let lists = h.server.count(Verb::List, "configmaps");

    // A dropped connection: the watcher re-watches from its resourceVersion.
    h.server.drop_connections();
    publish(&h.server, "n1", &plan("n1", &["n2"]).to_json());
    wait_peers(&mut h, "n2 after the drop", |p| p.len() == 2).await;

    // 410 Expired on the next watch: the watcher must re-list.
    h.server.fail_next(Some(Verb::Watch), Fault::Expired);
    h.server.drop_connections();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while h.server.count(Verb::List, "configmaps") == lists {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-list after 410"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&h.server, "n1", &plan("n1", &["n2", "n3"]).to_json());
    wait_peers(&mut h, "n3 after the re-list", |p| p.len() == 3).await;

    // A change made while disconnected and compacted away: the resumed
    // watch gets 410 and the re-list brings the plan up to date.
    h.server.set_down(true);
    publish(&h.server, "n1", &plan("n1", &["n4"]).to_json());
    h.server.compact();
    h.server.set_down(false);
    wait_peers(&mut h, "the plan after compaction", |p| {
        names(p) == set(&["agent-pod-n1", "agent-pod-n4"])
    })
    .await;
    h.server.bookmark();
    publish(&h.server, "n1", &plan("n1", &["n5"]).to_json());
    wait_peers(&mut h, "n5 after a bookmark", |p| {
        names(p).contains("agent-pod-n5")
    })
    .await;
    assert_only_own_plan(&h.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_keeps_last_plan() {
    let server = ApiServer::start().await;
    publish(&server, "n1", &plan("n1", &["n2"]).to_json());
    let mut h = start(server);
    let before = wait_peers(&mut h, "the plan", |p| p.len() == 2).await;
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;

    h.server.set_down(true);
    wait_metric(&h.registry, "kubepulse_discovery_up", 0.0).await;
    assert_eq!(*h.rx.borrow(), before, "the last plan is kept");
    assert!(h.plan.borrow().is_some());
    // A change while down shows up once the API is back.
    publish(&h.server, "n1", &plan("n1", &[]).to_json());
    h.server.set_down(false);
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;
    wait_peers(&mut h, "n2 gone after recovery", |p| p.len() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_failures_are_retried() {
    let server = ApiServer::start().await;
    publish(&server, "n1", &plan("n1", &[]).to_json());
    // First list: 500 (the watcher backs off and retries); second: 429 with
    // Retry-After (kube's client retries it itself); third succeeds.
    server.fail_next(Some(Verb::List), Fault::Status(500));
    server.fail_next(Some(Verb::List), Fault::TooManyRequests { retry_after: 1 });
    let mut h = start(server);
    wait_peers(&mut h, "self after the failures", |p| p.len() == 1).await;
    assert!(h.server.count(Verb::List, "configmaps") >= 3);
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;
}
