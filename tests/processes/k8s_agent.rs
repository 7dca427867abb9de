//! The `kubepulse agent` binary in Kubernetes mode, end to end against the
//! API test server with the controller's plan publisher running in the test:
//! the agent reads its identity from the downward-API variables, finds its
//! client through a kubeconfig, turns its node's published plan into probe
//! targets (`kubepulse_peers`, per-peer series), exports the plan's
//! lifecycle (a cordoned peer node in `kubepulse_peer_expected_down`, a peer
//! agent that is not Ready in `kubepulse_peers_not_ready`), removes the
//! series of departed peers, keeps its last plan while the controller is
//! gone, and reports the API going down. It never reads pods. Loopback only.

use kubepulse_testkit::apiserver;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Verb};
use k8s_openapi::api::core::v1::{Node, Pod};
use kubepulse::config::PlanSettings;
use kubepulse::controller::plan_publisher::PlanPublisher;
use kubepulse_testkit::process::Kubepulse;
use kubepulse_testkit::scrape::{parse, Scrape};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NS: &str = "kubepulse";
const DEADLINE: Duration = Duration::from_secs(60);

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn pod(name: &str, node: &str, host: bool, port: u16) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "kubepulse", "app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "agent", "ports": [
            {"name": "udp-echo", "containerPort": port, "protocol": "UDP"},
            {"name": "tcp-echo", "containerPort": port},
            {"name": "bandwidth", "containerPort": port + 1},
            {"name": "http", "containerPort": port + 2}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1", "conditions": [
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"}]}
    }))
    .expect("pod json")
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("node json")
}

/// Sets a pod's `Ready` and `ContainersReady` conditions.
fn set_ready(server: &ApiServer, name: &str, ready: bool) {
    let word = if ready { "True" } else { "False" };
    server.edit::<Pod>(NS, name, |v| {
        v["status"]["conditions"] = json!([{"type": "ContainersReady", "status": word},
            {"type": "Ready", "status": word}]);
    });
}

fn scrape(port: u16) -> Option<Scrape> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    kubepulse_testkit::http::get_ok(addr, "/metrics")
        .ok()
        .map(|body| parse(&body))
}

/// Polls the agent's /metrics until `pred` holds.
async fn wait_scrape(port: u16, what: &str, pred: impl Fn(&Scrape) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = tokio::task::spawn_blocking(move || scrape(port))
            .await
            .expect("join")
            .unwrap_or_default();
        if pred(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{}",
            text.body
                .lines()
                .filter(|l| l.starts_with("kubepulse_peers") || l.starts_with("kubepulse_disc"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The environment of `agent-pod-n1` on `n1` in Kubernetes mode, its
/// responders on `port` (UDP and TCP echo), `port + 1` and `port + 2`.
fn agent_env(kubeconfig: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "KUBECONFIG",
            kubeconfig.to_str().expect("utf-8 path").into(),
        ),
        ("KUBEPULSE_POD_NAME", "agent-pod-n1".into()),
        ("KUBEPULSE_NODE_NAME", "n1".into()),
        ("KUBEPULSE_NAMESPACE", NS.into()),
        ("KUBEPULSE__DISCOVERY__MODE", "kubernetes".into()),
        ("KUBEPULSE__AGENT__BIND_ADDRESS", "127.0.0.1".into()),
        ("KUBEPULSE__AGENT__PORTS__UDP_ECHO", port.to_string()),
        ("KUBEPULSE__AGENT__PORTS__TCP_ECHO", port.to_string()),
        ("KUBEPULSE__AGENT__PORTS__BANDWIDTH", (port + 1).to_string()),
        ("KUBEPULSE__AGENT__PORTS__HTTP", (port + 2).to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_follows_the_api() {
    let server = ApiServer::start().await;
    let (p1, p2, metrics) = (free_port(), free_port(), free_port());
    for n in ["n1", "n2", "n3"] {
        server.apply(&node(n));
    }
    server.apply(&pod("agent-pod-n1", "n1", false, p1));
    server.apply(&pod("agent-pod-n2", "n2", false, p2));
    server.apply(&pod("agent-host-n2", "n2", true, p2 + 10));

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.write_kubeconfig(dir.path());
    let child = Command::new(env!("CARGO_BIN_EXE_kubepulse"))
        .args(["agent", "--listen", &format!("127.0.0.1:{metrics}")])
        .envs(agent_env(&kubeconfig, p1))
        .env("RUST_LOG", "kubepulse=info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubepulse");
    let _agent = Agent(child);
    let publisher_token = CancellationToken::new();
    let settings = PlanSettings {
        min_interval: Duration::from_millis(200),
        ..PlanSettings::default()
    };
    let publisher = tokio::spawn(
        PlanPublisher::new(server.actor_client("controller"), NS, settings.clone())
            .run(publisher_token.clone()),
    );

    wait_scrape(metrics, "both peers discovered", |t| {
        t.try_sum("kubepulse_discovery_up", &[]) == Some(1.0)
            && t.one("kubepulse_peers", &[("path", "pod_cross_node")]) == Some(1.0)
            && t.one("kubepulse_peers", &[("path", "pod_to_host")]) == Some(1.0)
            && t.body.contains("peer_node=\"n2\"")
    })
    .await;

    // n2 is cordoned (a drain begins): still probed, and expected down for
    // the per-peer alerts.
    server.edit::<Node>("", "n2", |v| v["spec"]["unschedulable"] = json!(true));
    wait_scrape(metrics, "n2 expected down", |t| {
        t.one(
            "kubepulse_peer_expected_down",
            &[("peer_node", "n2"), ("reason", "cordoned")],
        ) == Some(1.0)
            && t.one("kubepulse_peers", &[("path", "pod_cross_node")]) == Some(1.0)
    })
    .await;
    // n2's host agent stops being Ready: no longer probed, counted.
    set_ready(&server, "agent-host-n2", false);
    wait_scrape(metrics, "n2's host agent not ready", |t| {
        t.one("kubepulse_peers_not_ready", &[]) == Some(1.0)
            && t.one("kubepulse_peers", &[("path", "pod_to_host")]) == Some(0.0)
    })
    .await;
    assert!(
        scrape(metrics)
            .expect("scrape")
            .is_absent("kubepulse_probe_sent_total", &[("path", "pod_to_host")]),
        "the not-Ready peer's series are removed with it"
    );
    // Ready again and uncordoned: probed and judged again.
    set_ready(&server, "agent-host-n2", true);
    server.edit::<Node>("", "n2", |v| v["spec"]["unschedulable"] = json!(false));
    wait_scrape(metrics, "n2 back", |t| {
        t.one("kubepulse_peers_not_ready", &[]) == Some(0.0)
            && t.one("kubepulse_peers", &[("path", "pod_to_host")]) == Some(1.0)
            && t.is_absent("kubepulse_peer_expected_down", &[])
    })
    .await;

    // n2's agents leave: their targets and per-peer series go.
    assert!(server.delete::<Pod>(NS, "agent-pod-n2"));
    assert!(server.delete::<Pod>(NS, "agent-host-n2"));
    wait_scrape(metrics, "n2's series removed", |t| {
        t.one("kubepulse_peers", &[("path", "pod_cross_node")]) == Some(0.0)
            && !t.body.contains("peer_node=\"n2\"")
    })
    .await;

    // A new node while the API is up.
    server.apply(&pod("agent-pod-n3", "n3", false, p2));
    wait_scrape(metrics, "n3 discovered", |t| {
        t.body.contains("peer_node=\"n3\"")
    })
    .await;

    // The controller goes away: the agent keeps probing its last plan even
    // though n3's agent is gone meanwhile.
    publisher_token.cancel();
    publisher.await.expect("publisher stopped");
    assert!(server.delete::<Pod>(NS, "agent-pod-n3"));
    tokio::time::sleep(settings.min_interval * 5).await;
    let t = scrape(metrics).expect("scrape");
    assert!(
        t.body.contains("peer_node=\"n3\""),
        "last plan kept without a controller"
    );

    // Then the API goes down: the peer is kept and the outage is reported.
    server.set_down(true);
    wait_scrape(metrics, "discovery down", |t| {
        t.try_sum("kubepulse_discovery_up", &[]) == Some(0.0) && t.body.contains("peer_node=\"n3\"")
    })
    .await;
    server.set_down(false);
    wait_scrape(metrics, "discovery back up", |t| {
        t.try_sum("kubepulse_discovery_up", &[]) == Some(1.0)
    })
    .await;
    // The agent's only reads were of its plan, never pods.
    let agent: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.actor.is_none())
        .collect();
    assert!(agent.iter().any(|r| r.verb == Some(Verb::Watch)));
    for r in agent {
        assert_eq!(r.resource, "configmaps", "{}", r.uri);
        assert!(r.uri.contains("kubepulse-plan-n1"), "{}", r.uri);
    }
}

/// On SIGTERM a Kubernetes-mode agent stops probing but its responders
/// answer for `agent.shutdown_grace` (peers learn of a terminating pod only
/// through the next plan), then it exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_the_responders_answer_for_the_grace_then_the_agent_exits() {
    const GRACE: Duration = Duration::from_secs(2);
    let server = ApiServer::start().await;
    let port = free_port();
    server.apply(&node("n1"));
    server.apply(&pod("agent-pod-n1", "n1", false, port));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.write_kubeconfig(dir.path());
    let mut env = agent_env(&kubeconfig, port);
    env.push((
        "KUBEPULSE__AGENT__SHUTDOWN_GRACE",
        format!("{}s", GRACE.as_secs()),
    ));
    let mut agent = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Kubepulse::start_with_env(&["agent", "--listen", "127.0.0.1:0"], &env)
    })
    .await
    .expect("join");
    let echo = SocketAddr::from(([127, 0, 0, 1], port));
    let answers = || TcpStream::connect_timeout(&echo, Duration::from_secs(1)).is_ok();
    assert!(answers(), "the TCP echo responder answers before SIGTERM");

    let term = Instant::now();
    agent.signal("TERM");
    // Half the grace in: still answering (a lower bound the agent's own
    // timer guarantees).
    tokio::time::sleep(GRACE / 2).await;
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent exited before its grace was over"
    );
    assert!(
        answers(),
        "the responders stopped before the grace was over"
    );
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(GRACE + DEADLINE))
        .await
        .expect("join")
        .expect("the agent exits after its grace");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    assert!(
        term.elapsed() >= GRACE,
        "exited {:?} after SIGTERM, before its {GRACE:?} grace",
        term.elapsed()
    );
    assert!(!answers(), "nothing answers once the agent has exited");
}
