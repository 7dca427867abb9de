//! Kubernetes discovery through the real kube-rs client and watcher against
//! the API test server: peers join and leave, a pod changes IP, the watch
//! breaks (dropped connection, 410 Expired) and resumes, the API goes down
//! for a while (peers kept, `kubepulse_discovery_up` 0 then 1), list
//! failures (500, 429 with Retry-After), Service targets and the fan-out.

#[path = "common/apiserver.rs"]
mod apiserver;

use std::collections::BTreeSet;
use std::time::Duration;

use apiserver::{ApiServer, Fault, Verb};
use k8s_openapi::api::core::v1::{Pod, Service};
use kubepulse::config::KubernetesDiscoverySettings;
use kubepulse::discovery::kubernetes::{DiscoveryMetrics, KubernetesDiscovery, KubernetesOptions};
use kubepulse::discovery::{Discovery, Identity, PeerSet, ProbePorts};
use kubepulse::labels::{AgentKind, PathKind};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NS: &str = "kubepulse";
const DEADLINE: Duration = Duration::from_secs(60);

fn pod(name: &str, node: &str, ip: &str, host: bool) -> Pod {
    let host_ip = format!("10.0.0.{}", node.trim_start_matches('n'));
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "kubepulse", "app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "agent"}]},
        "status": {"phase": "Running", "podIP": ip, "hostIP": host_ip}
    }))
    .expect("pod json")
}

struct Harness {
    server: ApiServer,
    disc: KubernetesDiscovery,
    rx: watch::Receiver<PeerSet>,
    registry: prometheus::Registry,
    token: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn start(server: ApiServer, tweak: impl FnOnce(&mut KubernetesDiscoverySettings)) -> Harness {
    let mut settings = KubernetesDiscoverySettings::default();
    tweak(&mut settings);
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
        settings,
        default_ports: ProbePorts::default(),
    };
    let disc = KubernetesDiscovery::start(server.client(), opts, metrics, token.clone())
        .expect("start discovery");
    let rx = disc.subscribe();
    Harness {
        server,
        disc,
        rx,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_join_leave_and_change_ip() {
    let server = ApiServer::start().await;
    server.apply(&pod("agent-pod-n1", "n1", "10.1.1.1", false));
    server.apply(&pod("agent-host-n1", "n1", "10.0.0.1", true));
    server.apply(&pod("agent-pod-n2", "n2", "10.1.2.1", false));
    // Not agents, or not ready: never peers.
    let mut other = pod("web", "n1", "10.1.1.9", false);
    other.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    server.apply(&other);
    let mut pending = pod("agent-pod-n3", "n3", "10.1.3.1", false);
    if let Some(s) = pending.status.as_mut() {
        s.phase = Some("Pending".into());
        s.pod_ip = None;
    }
    server.apply(&pending);

    let mut h = start(server, |s| s.service_name.clear());
    let peers = wait_peers(&mut h, "the initial agents", |p| {
        names(p) == set(&["agent-host-n1", "agent-pod-n1", "agent-pod-n2"])
    })
    .await;
    let host = peers
        .iter()
        .find(|p| p.name == "agent-host-n1")
        .expect("host");
    assert_eq!((host.kind, host.node.as_str()), (AgentKind::Host, "n1"));
    let me = Identity {
        name: "agent-pod-n1".into(),
        node: "n1".into(),
        kind: AgentKind::Pod,
    };
    assert_eq!(host.path_from(&me), Some(PathKind::PodToHost));
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;
    assert!(
        metric(
            &h.registry,
            "kubepulse_discovery_last_sync_timestamp_seconds"
        ) > Some(1e9)
    );

    // The pending pod starts: it joins.
    h.server
        .apply(&pod("agent-pod-n3", "n3", "10.1.3.1", false));
    wait_peers(&mut h, "n3 to join", |p| names(p).contains("agent-pod-n3")).await;
    // n2's agent leaves.
    assert!(h.server.delete::<Pod>(NS, "agent-pod-n2"));
    wait_peers(&mut h, "n2 to leave", |p| {
        !names(p).contains("agent-pod-n2")
    })
    .await;
    // n3's pod is recreated with a new IP under the same name.
    h.server
        .apply(&pod("agent-pod-n3", "n3", "10.1.3.77", false));
    let peers = wait_peers(&mut h, "the new IP", |p| {
        p.iter()
            .any(|x| x.name == "agent-pod-n3" && x.address.to_string() == "10.1.3.77")
    })
    .await;
    assert_eq!(peers.len(), 3);
    // A terminating pod leaves at once (before its object is gone).
    let mut dying = pod("agent-pod-n3", "n3", "10.1.3.77", false);
    dying.metadata.deletion_timestamp =
        serde_json::from_value(json!("2026-01-01T00:00:00Z")).expect("time");
    h.server.apply(&dying);
    wait_peers(&mut h, "the terminating pod to leave", |p| {
        !names(p).contains("agent-pod-n3")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_breaks_and_resumes() {
    let server = ApiServer::start().await;
    server.apply(&pod("agent-pod-n1", "n1", "10.1.1.1", false));
    let mut h = start(server, |s| s.service_name.clear());
    wait_peers(&mut h, "self", |p| p.len() == 1).await;
    let lists = h.server.count(Verb::List, "pods");

    // A dropped connection: the watcher re-watches from its resourceVersion
    // (no re-list needed) and sees a change made afterwards.
    h.server.drop_connections();
    h.server
        .apply(&pod("agent-pod-n2", "n2", "10.1.2.1", false));
    wait_peers(&mut h, "n2 after the drop", |p| p.len() == 2).await;

    // 410 Expired on the next watch: the watcher must re-list.
    h.server.fail_next(Some(Verb::Watch), Fault::Expired);
    h.server.drop_connections();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while h.server.count(Verb::List, "pods") == lists {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-list after 410"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.server
        .apply(&pod("agent-pod-n3", "n3", "10.1.3.1", false));
    wait_peers(&mut h, "n3 after the re-list", |p| p.len() == 3).await;

    // Changes made while disconnected and then compacted away: the resumed
    // watch gets 410 and the re-list brings the store up to date.
    h.server.set_down(true);
    assert!(h.server.delete::<Pod>(NS, "agent-pod-n2"));
    h.server
        .apply(&pod("agent-pod-n4", "n4", "10.1.4.1", false));
    h.server.compact();
    h.server.set_down(false);
    wait_peers(&mut h, "the state after compaction", |p| {
        names(p) == set(&["agent-pod-n1", "agent-pod-n3", "agent-pod-n4"])
    })
    .await;
    // Bookmarks are accepted silently; a later change still arrives.
    h.server.bookmark();
    h.server
        .apply(&pod("agent-pod-n5", "n5", "10.1.5.1", false));
    wait_peers(&mut h, "n5 after a bookmark", |p| p.len() == 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_keeps_last_peers() {
    let server = ApiServer::start().await;
    server.apply(&pod("agent-pod-n1", "n1", "10.1.1.1", false));
    server.apply(&pod("agent-pod-n2", "n2", "10.1.2.1", false));
    let mut h = start(server, |_| {});
    let before = wait_peers(&mut h, "both agents", |p| p.len() == 2).await;
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;

    h.server.set_down(true);
    wait_metric(&h.registry, "kubepulse_discovery_up", 0.0).await;
    assert_eq!(*h.rx.borrow(), before, "the last known peers are kept");
    // A change while down shows up once the API is back.
    assert!(h.server.delete::<Pod>(NS, "agent-pod-n2"));
    h.server.set_down(false);
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;
    wait_peers(&mut h, "n2 gone after recovery", |p| p.len() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_failures_are_retried() {
    let server = ApiServer::start().await;
    server.apply(&pod("agent-pod-n1", "n1", "10.1.1.1", false));
    // First list: 500 (the watcher backs off and retries); second: 429 with
    // Retry-After (kube's client retries it itself); third succeeds.
    server.fail_next(Some(Verb::List), Fault::Status(500));
    server.fail_next(Some(Verb::List), Fault::TooManyRequests { retry_after: 1 });
    let mut h = start(server, |s| s.service_name.clear());
    wait_peers(&mut h, "self after the failures", |p| p.len() == 1).await;
    assert!(h.server.count(Verb::List, "pods") >= 3);
    wait_metric(&h.registry, "kubepulse_discovery_up", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_targets_follow_the_service() {
    let server = ApiServer::start().await;
    server.apply(&pod("agent-pod-n1", "n1", "10.1.1.1", false));
    server.apply(&pod("agent-pod-n2", "n2", "10.1.2.1", false));
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubepulse-agent", "namespace": NS},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [
            {"name": "udp-echo", "port": 9478, "protocol": "UDP", "nodePort": 30478},
            {"name": "tcp-echo", "port": 9478, "protocol": "TCP", "nodePort": 30479},
            {"name": "bandwidth", "port": 9479, "nodePort": 30480},
            {"name": "http", "port": 9480, "nodePort": 30481}]}
    }))
    .expect("svc");
    server.apply(&svc);
    // Another Service in the namespace must not matter.
    let mut other = svc.clone();
    other.metadata.name = Some("something-else".into());
    server.apply(&other);
    let mut h = start(server, |_| {});
    let peers = wait_peers(&mut h, "the service targets", |p| p.len() == 4).await;
    let cip = peers
        .iter()
        .find(|p| p.path == Some(PathKind::ServiceClusterip))
        .expect("clusterip peer");
    assert_eq!(cip.address.to_string(), "10.96.0.10");
    let np = peers
        .iter()
        .find(|p| p.path == Some(PathKind::ServiceNodeport))
        .expect("nodeport peer");
    assert_eq!(
        (np.node.as_str(), np.address.to_string()),
        ("n2", "10.0.0.2".into())
    );
    assert_eq!(np.ports.udp_echo, 30478);
    // The Service goes away: so do its targets.
    assert!(h.server.delete::<Service>(NS, "kubepulse-agent"));
    wait_peers(&mut h, "service targets gone", |p| p.len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_is_bounded_above_max_peers() {
    let server = ApiServer::start().await;
    for i in 1..=30 {
        server.apply(&pod(
            &format!("agent-pod-n{i}"),
            &format!("n{i}"),
            &format!("10.1.{i}.1"),
            false,
        ));
        server.apply(&pod(
            &format!("agent-host-n{i}"),
            &format!("n{i}"),
            &format!("10.0.0.{i}"),
            true,
        ));
    }
    let mut h = start(server, |s| {
        s.service_name.clear();
        s.max_peers = 5;
    });
    let peers = wait_peers(&mut h, "the fanned-out set", |p| !p.is_empty()).await;
    let nodes: BTreeSet<&str> = peers.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes.len(), 6, "own node plus 5: {nodes:?}");
    assert!(nodes.contains("n1"));
    assert_eq!(peers.len(), 12, "pod and host agent of each chosen node");
    let mut all = h.disc.subscribe_all();
    let all = all.borrow_and_update().clone();
    assert_eq!(all.len(), 60, "the schedule sees every agent");
}
