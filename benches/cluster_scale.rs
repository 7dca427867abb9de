//! Issue 11, item 4: the probe plan at cluster scale, and the apiserver
//! load of the plan design against the old one (every agent watching every
//! agent pod), in one run.
//!
//! For 100, 1,000 and 5,000 nodes in 1, 3 and 10 zones:
//! 1. the plan computation alone (fan-out, bandwidth cycle, every node's
//!    plan): time, the largest agent's peer nodes, targets and series
//!    bound, min/max in-degree, the largest plan;
//! 2. through the API test server: the controller's plan publisher and one
//!    real `kubepulse agent` process (node `n00000`, loopback addresses
//!    only), then a rolling restart of every agent pod in
//!    `ROLLOUT_STEPS` steps. Measured: plan writes, the events and bytes
//!    the real agent's watch received, and the events and bytes one watcher
//!    of all agent pods (what every agent ran before) received. Totals over
//!    all agents: new = 2 agents per node × every plan write; old = 2N
//!    watchers × what one watcher received.
//!
//! Run: `cargo bench --bench cluster_scale` (release; a few minutes).
//! `CLUSTER_SCALE_SIZES=100,1000` limits the sizes; `CLUSTER_SCALE_API=0`
//! runs the plan computation only.

use kubepulse_testkit::apiserver;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Verb};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use kubepulse::config::PlanSettings;
use kubepulse::controller::node_lifecycle;
use kubepulse::controller::plan_inputs::{self, Inputs};
use kubepulse::controller::plan_publisher::PlanPublisher;
use kubepulse::plan::{self, PlanConfig};
use kubepulse::schedule::slots::SlotConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NS: &str = "kubepulse";
/// Rollout steps (a DaemonSet's maxUnavailable of 5 %).
const ROLLOUT_STEPS: usize = 20;
/// The publisher's debounce in the simulation (one rollout step each).
const MIN_INTERVAL: Duration = Duration::from_millis(300);

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn node_name(i: usize) -> String {
    format!("n{i:05}")
}

/// A loopback address per agent: the real agent may probe it, and nothing
/// leaves the machine.
fn ip(i: usize, host: bool) -> String {
    format!("127.{}.{}.{}", 1 + usize::from(host), i / 256, i % 256)
}

fn node_obj(i: usize, zones: usize) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name(i), "labels": {
            "topology.kubernetes.io/zone": format!("zone-{}", i % zones),
            "kubernetes.io/hostname": node_name(i)}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("node")
}

fn pod_obj(name: &str, i: usize, host: bool, gen: u32) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "kubepulse", "app.kubernetes.io/component": "agent",
            "controller-revision-hash": format!("rev{gen}")}},
        "spec": {"nodeName": node_name(i), "hostNetwork": host, "containers": [{
            "name": "agent", "image": "ghcr.io/kubepulse/kubepulse:0.1.0",
            "ports": [
                {"name": "metrics", "containerPort": 9477},
                {"name": "udp-echo", "containerPort": 9478, "protocol": "UDP"},
                {"name": "tcp-echo", "containerPort": 9478},
                {"name": "bandwidth", "containerPort": 9479},
                {"name": "http", "containerPort": 9480}]}]},
        "status": {"phase": "Running", "podIP": ip(i, host), "hostIP": ip(i, true),
            "conditions": [{"type": "ContainersReady", "status": "True"},
                           {"type": "Ready", "status": "True"}]}
    }))
    .expect("pod")
}

fn pod_name(i: usize, host: bool, gen: u32) -> String {
    let kind = if host { "host" } else { "pod" };
    format!("agent-{kind}-{}-g{gen}", node_name(i))
}

/// Part 1: the pure plan.
struct PlanRow {
    compute: Duration,
    max_peer_nodes: usize,
    max_targets: usize,
    series: usize,
    min_in: usize,
    max_in: usize,
    max_plan_bytes: usize,
    /// Plan writes if every pod replacement were published on its own.
    uncoalesced_writes: usize,
}

fn plan_row(n: usize, zones: usize) -> PlanRow {
    let nodes: Vec<Node> = (0..n).map(|i| node_obj(i, zones)).collect();
    let pods: Vec<Pod> = (0..n)
        .flat_map(|i| [false, true].map(|h| pod_obj(&pod_name(i, h, 0), i, h, 0)))
        .collect();
    let pod_refs: Vec<&Pod> = pods.iter().collect();
    let cfg = PlanConfig::default();
    let slots = SlotConfig::default();
    let t0 = Instant::now();
    let pn = plan_inputs::plan_nodes(nodes.iter(), pods.iter(), &BTreeSet::new());
    let lifecycle = node_lifecycle::lifecycle(nodes.iter(), pn.iter().map(|n| n.name.as_str()));
    let computed = plan_inputs::compute(&Inputs {
        nodes: &pn,
        lifecycle: &lifecycle,
        pods: &pod_refs,
        service: None,
        fan_out: &cfg,
        slots: &slots,
    });
    let docs = plan_inputs::documents(&computed.plans);
    let compute = t0.elapsed();
    let indeg = computed.fan.in_degree();
    let max_peer_nodes = computed.fan.max_out_degree();
    PlanRow {
        compute,
        max_peer_nodes,
        // The other agent on its own node, both agents of every peer node,
        // the two Service targets.
        max_targets: 1 + 2 * max_peer_nodes + 2,
        series: plan::agent_series_bound(max_peer_nodes),
        min_in: indeg.values().copied().min().unwrap_or(0),
        max_in: indeg.values().copied().max().unwrap_or(0),
        max_plan_bytes: docs
            .values()
            .map(|d| d.values().map(String::len).sum::<usize>())
            .max()
            .unwrap_or(0),
        // A replaced pod changes its own node's plan and its probers'.
        uncoalesced_writes: indeg.values().map(|d| 2 * (1 + d)).sum(),
    }
}

/// Part 2: through the API test server.
struct ApiRow {
    writes: usize,
    agent_events: u64,
    agent_bytes: u64,
    agent_series: usize,
    new_events: u64,
    new_bytes: u64,
    old_events: u64,
    old_bytes: u64,
    /// The rollout, from the first replaced pod to the last plan written.
    rollout: Duration,
    /// LISTs of the old-design watcher after its first (a watch that fell
    /// behind and resumed too late re-lists; its events are then missed).
    old_relists: usize,
}

fn scrape(port: u16) -> Option<String> {
    kubepulse_testkit::http::get_ok(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        "/metrics",
    )
    .ok()
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn plan_count(server: &ApiServer) -> usize {
    let mut n = 0;
    server.for_each_object::<ConfigMap>(NS, |c| {
        n += usize::from(
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kubepulse-plan-")),
        );
    });
    n
}

fn plan_sizes(server: &ApiServer) -> u64 {
    // The size of a watch event carrying each stored plan.
    let mut sum = 0;
    server.for_each_object::<ConfigMap>(NS, |c| {
        sum += json!({"type": "MODIFIED", "object": c}).to_string().len() as u64 + 1;
    });
    sum
}

/// Whether some plan still names a replaced pod (generation 0 of the first
/// `replaced` nodes; the real agent, `agent-pod-n00000`, keeps its pod).
fn plans_stale(server: &ApiServer, replaced: usize) -> bool {
    let mut stale = false;
    server.for_each_object::<ConfigMap>(NS, |c| {
        let text = c["data"]["plan.json"].as_str().unwrap_or("");
        stale |= text.match_indices("-g0\"").any(|(p, _)| {
            // The quoted pod name ending here, e.g. `agent-host-n00012-g0`.
            let name = text[..p].rfind('"').map_or("", |q| &text[q + 1..p]);
            let idx: usize = name
                .rsplit_once("-n")
                .and_then(|(_, d)| d.parse().ok())
                .unwrap_or(usize::MAX);
            idx < replaced && name != "agent-pod-n00000"
        });
    });
    stale
}

async fn api_row(n: usize, zones: usize) -> ApiRow {
    let server = ApiServer::start().await;
    for i in 0..n {
        server.apply(&node_obj(i, zones));
        for h in [false, true] {
            server.apply(&pod_obj(&pod_name(i, h, 0), i, h, 0));
        }
    }
    let token = CancellationToken::new();
    let settings = PlanSettings {
        min_interval: MIN_INTERVAL,
        service_name: String::new(),
        ..PlanSettings::default()
    };
    let publisher = tokio::spawn(
        PlanPublisher::new(server.actor_client("controller"), NS, settings).run(token.clone()),
    );
    wait_for("every plan", Duration::from_secs(600), || {
        plan_count(&server) == n
    })
    .await;

    // One watcher of every agent pod: what each agent ran in the old design.
    let old_api: Api<Pod> = Api::namespaced(server.actor_client("old-agent"), NS);
    let old_cfg = watcher::Config::default().labels("app.kubernetes.io/component=agent");
    // With a backoff, as in src/: a watcher retrying an error at once never
    // yields to the runtime (see tests/in_process/k8s_apiserver.rs).
    let old_task = tokio::spawn(
        watcher(old_api, old_cfg)
            .default_backoff()
            .for_each(|_| async {}),
    );

    // One real agent process on node 0, reading its plan.
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.write_kubeconfig(dir.path());
    let (metrics, p) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_kubepulse"))
        .args(["agent", "--listen", &format!("127.0.0.1:{metrics}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBEPULSE_POD_NAME", pod_name(0, false, 0))
        .env("KUBEPULSE_NODE_NAME", node_name(0))
        .env("KUBEPULSE_NAMESPACE", NS)
        .env("KUBEPULSE__DISCOVERY__MODE", "kubernetes")
        .env("KUBEPULSE__AGENT__BIND_ADDRESS", "127.0.0.1")
        .env("KUBEPULSE__AGENT__PORTS__UDP_ECHO", p.to_string())
        .env("KUBEPULSE__AGENT__PORTS__TCP_ECHO", p.to_string())
        .env(
            "KUBEPULSE__AGENT__PORTS__BANDWIDTH",
            free_port().to_string(),
        )
        .env("KUBEPULSE__AGENT__PORTS__HTTP", free_port().to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubepulse (cargo bench builds it)");
    let _agent = Proc(child);
    wait_for("the agent's first plan", Duration::from_secs(120), || {
        scrape(metrics).is_some_and(|t| t.contains("peer_node=\""))
    })
    .await;
    wait_for(
        "the old-design watcher's watch",
        Duration::from_secs(120),
        || {
            server
                .requests()
                .iter()
                .any(|r| r.actor.as_deref() == Some("old-agent") && r.verb == Some(Verb::Watch))
        },
    )
    .await;

    let writes0 =
        server.count(Verb::Patch, "configmaps") + server.count(Verb::Delete, "configmaps");
    let agent0 = server.watch_delivered("configmaps", None);
    let old0 = server.watch_delivered("pods", Some("old-agent"));
    let mut bytes_written: u64 = 0;
    let mut last_writes = writes0;
    let mut count_bytes = |server: &ApiServer| {
        // Plan bytes: the new writes times the average plan size.
        let w = server.count(Verb::Patch, "configmaps");
        if w != last_writes {
            let avg = plan_sizes(server) / n.max(1) as u64;
            bytes_written += (w - last_writes) as u64 * avg;
            last_writes = w;
        }
    };
    // The rollout: every agent replaced, 5 % at a time. A step starts when
    // the publisher has published the previous one (and at least
    // `MIN_INTERVAL` later): a DaemonSet step (pods stopping, pulling,
    // starting) takes longer than a publication, which at 5,000 nodes takes
    // seconds here.
    let all: Vec<(usize, bool)> = (0..n).flat_map(|i| [(i, false), (i, true)]).collect();
    let step = all.len().div_ceil(ROLLOUT_STEPS);
    let t0 = Instant::now();
    let mut replaced = 0;
    for chunk in all.chunks(step) {
        for &(i, h) in chunk {
            if i == 0 && !h {
                continue; // the real agent keeps its pod
            }
            assert!(server.delete::<Pod>(NS, &pod_name(i, h, 0)));
            server.apply(&pod_obj(&pod_name(i, h, 1), i, h, 1));
        }
        // Chunks hold both agents of a node (`step` is even).
        replaced = chunk.last().map_or(replaced, |&(i, _)| i + 1);
        tokio::time::sleep(MIN_INTERVAL).await;
        // Until the publisher has caught up: no plan names a replaced pod.
        while plans_stale(&server, replaced) {
            count_bytes(&server);
            assert!(
                t0.elapsed() < Duration::from_secs(900),
                "publisher never caught up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        count_bytes(&server);
    }
    // Writes in flight when the last stale plan was replaced.
    tokio::time::sleep(MIN_INTERVAL * 2).await;
    count_bytes(&server);
    let rollout = t0.elapsed();
    let writes = server.count(Verb::Patch, "configmaps") + server.count(Verb::Delete, "configmaps")
        - writes0;
    let agent = server.watch_delivered("configmaps", None);
    let old = server.watch_delivered("pods", Some("old-agent"));
    let agent_series = scrape(metrics)
        .map(|t| {
            t.lines()
                .filter(|l| l.starts_with("kubepulse_") || l.starts_with("process_"))
                .count()
        })
        .unwrap_or(0);
    token.cancel();
    let _ = publisher.await;
    old_task.abort();
    let watchers = 2 * n as u64;
    let old_lists = server
        .requests()
        .iter()
        .filter(|r| r.actor.as_deref() == Some("old-agent") && r.verb == Some(Verb::List))
        .count();
    ApiRow {
        rollout,
        old_relists: old_lists.saturating_sub(1),
        writes,
        agent_events: agent.0 - agent0.0,
        agent_bytes: agent.1 - agent0.1,
        agent_series,
        new_events: 2 * writes as u64,
        new_bytes: 2 * bytes_written,
        old_events: watchers * (old.0 - old0.0),
        old_bytes: watchers * (old.1 - old0.1),
    }
}

/// The bench process's peak resident set (API test server, publisher and
/// the old-design watcher's cache), from /proc.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn human(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` also runs bench targets; only measure when
    // started by `cargo bench` (which passes --bench).
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster_scale: skipped (run with cargo bench)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("CLUSTER_SCALE_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1000, 5000]);
    let with_api = std::env::var("CLUSTER_SCALE_API").map_or(true, |v| v != "0");
    let cfg = PlanConfig::default();
    println!(
        "plan: k_zone={} k_cross={} min_probers={} max_peer_nodes={}; rollout in {ROLLOUT_STEPS} steps, min_interval {MIN_INTERVAL:?}",
        cfg.k_zone, cfg.k_cross, cfg.min_probers, cfg.max_peer_nodes
    );
    println!();
    println!("| nodes | zones | plan time | peer nodes (max) | targets (max) | series (max, bound) | in-degree min/max | largest plan | plan writes (rollout) | uncoalesced bound | real agent: events / bytes / series | new: events / bytes | old: events / bytes | ratio events / bytes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for zones in [1, 3, 10] {
            let p = plan_row(n, zones);
            if !with_api {
                println!(
                    "| {n} | {zones} | {:.0} ms | {} | {} | {} | {}/{} | {} | — | {} | — | — | — | — |",
                    p.compute.as_secs_f64() * 1e3,
                    p.max_peer_nodes,
                    p.max_targets,
                    p.series,
                    p.min_in,
                    p.max_in,
                    human(p.max_plan_bytes as u64),
                    p.uncoalesced_writes,
                );
                continue;
            }
            let started = Instant::now();
            let a = api_row(n, zones).await;
            eprintln!(
                "{n} nodes, {zones} zones: rollout {:.1} s, old-design watcher re-lists {}, row {:.0} s, bench peak RSS {}",
                a.rollout.as_secs_f64(),
                a.old_relists,
                started.elapsed().as_secs_f64(),
                peak_rss()
            );
            println!(
                "| {n} | {zones} | {:.0} ms | {} | {} | {} | {}/{} | {} | {} | {} | {} / {} / {} | {} / {} | {} / {} | {:.0}× / {:.0}× |",
                p.compute.as_secs_f64() * 1e3,
                p.max_peer_nodes,
                p.max_targets,
                p.series,
                p.min_in,
                p.max_in,
                human(p.max_plan_bytes as u64),
                a.writes,
                p.uncoalesced_writes,
                a.agent_events,
                human(a.agent_bytes),
                a.agent_series,
                a.new_events,
                human(a.new_bytes),
                a.old_events,
                human(a.old_bytes),
                a.old_events as f64 / a.new_events.max(1) as f64,
                a.old_bytes as f64 / a.new_bytes.max(1) as f64,
            );
        }
    }
}
