//! The rendered install runs: what kubepulse ships (the chart's rendering,
//! or the kustomizations of `deploy/`) applied to an emulated 3-node
//! cluster on the network lab and run as shipped by the lab kubelet
//! (`kubepulse_testkit::install`), scraped by a real Prometheus that
//! discovers the pods through the API test server with the scrape job of
//! docs/deploy.md (Kubernetes discovery, unchanged relabelings).
//!
//! The one setting the lab changes is the bandwidth duty budget
//! ([`lab_bandwidth`]): at the default (1 % of 5 s slots) a 3-node cluster
//! bursts once every 500 s, so the first burst after install may be 8
//! minutes away; the lab's budget of 10 % runs one every 50 s. Everything
//! else is the chart's defaults (or the generated `deploy/`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kubepulse_testkit::install::cluster::DECOY_NODE;
use kubepulse_testkit::install::{burst_key_secret, prometheus, Cluster, ClusterSpec, Rendering};
use kubepulse_testkit::lab::{self, netlab::Flavour, prometheus::Prom};
use serde_json::{json, Value};

/// The release and namespace of the chart's rendering (`helm install
/// kubepulse charts/kubepulse -n kubepulse --create-namespace`).
pub(super) const NAMESPACE: &str = "kubepulse";

/// The lab's bandwidth duty budget: 10 slots of 5 s per round, so with 3
/// nodes (3 pairs, one per round) some pair bursts every 50 s.
const LAB_DUTY_BUDGET: f64 = 0.1;

/// How long a healthy install must stay quiet after every agent is Ready.
const QUIET: Duration = Duration::from_secs(180);

/// The chart's rendering with its default values (the chart creates the
/// burst key), as `helm install` applies it.
pub(super) fn rendering() -> Rendering {
    Rendering::helm("charts/kubepulse", "kubepulse", NAMESPACE, None)
        .unwrap_or_else(|e| panic!("the chart's defaults render: {e}"))
}

/// The chart's rendering with `values` (YAML) over its defaults.
fn rendering_with(values: &str) -> Rendering {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).expect("write values");
    Rendering::helm("charts/kubepulse", "kubepulse", NAMESPACE, Some(&file))
        .unwrap_or_else(|e| panic!("the chart renders with {values}: {e}"))
}

/// The plain-Prometheus kustomization of the generated `deploy/`, as
/// docs/deploy.md applies it (`kubectl apply -k deploy/plain-prometheus`).
fn kustomize_rendering() -> Rendering {
    Rendering::kustomize(&["deploy/plain-prometheus"])
}

/// `r` with the lab's bandwidth duty budget, set where a user would (an
/// overlay's patch, or the chart's `agents.config` and
/// `controller.extraEnv`): the agents' `probes.bandwidth.slots` and the
/// controller's `controller.plan.bandwidth`, which must agree.
pub(super) fn lab_bandwidth(r: &Rendering) -> Rendering {
    r.with("lab duty budget", |o| {
        if o["kind"] == "ConfigMap" && o["metadata"]["name"] == "kubepulse-agent" {
            for key in ["pod.yaml", "host.yaml"] {
                let Some(text) = o["data"][key].as_str() else {
                    continue;
                };
                let mut cfg: Value = serde_yaml::from_str(text).expect("agent config YAML");
                cfg["probes"]["bandwidth"]["slots"]["duty_budget"] = json!(LAB_DUTY_BUDGET);
                o["data"][key] = json!(serde_yaml::to_string(&cfg).expect("YAML"));
            }
        }
        if o["kind"] == "Deployment" && o["metadata"]["name"] == "kubepulse-controller" {
            for c in o["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                let env = c["env"].as_array_mut().expect("controller env");
                env.push(
                    json!({"name": "KUBEPULSE__CONTROLLER__PLAN__BANDWIDTH__DUTY_BUDGET",
                    "value": LAB_DUTY_BUDGET.to_string()}),
                );
            }
        }
    })
}

/// The agent DaemonSets of the rendering.
const AGENT_DAEMONSETS: [&str; 2] = ["kubepulse-agent-pod", "kubepulse-agent-host"];

/// Every path kind a 3-node lab with one pod agent per node has (no
/// `pod_same_node`: that needs two pod agents on one node).
const LAB_PATHS: [&str; 6] = [
    "pod_cross_node",
    "host_cross_node",
    "pod_to_host",
    "host_to_pod",
    "service_clusterip",
    "service_nodeport",
];

pub(super) fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Who makes the burst key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    /// The rendering holds it (the chart's default).
    Rendered,
    /// The operator creates it (`kubectl create secret`, the static path).
    Operator,
    /// Nobody.
    Missing,
}

/// The 3-node overlay cluster with `rendering` installed (its namespace
/// created first when the rendering has none, as `--create-namespace`
/// does), and the burst key as `key` says.
pub(super) fn installed(rendering: &Rendering, key: Key) -> Cluster {
    installed_on(3, rendering, key)
}

/// [`installed`] on an overlay lab of `machines` machines, of which the
/// first 3 are Nodes ([`Cluster::join`] registers the others).
pub(super) fn installed_on(machines: usize, rendering: &Rendering, key: Key) -> Cluster {
    let cluster = Cluster::start(
        ClusterSpec {
            nodes: machines,
            joined: 3,
            flavour: Flavour::Overlay,
        },
        kubepulse_testkit::image::image(),
    );
    if rendering.find("Namespace", NAMESPACE).is_none() {
        cluster.create(&json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}}));
    }
    let has_key = rendering.find("Secret", "kubepulse-burst-key").is_some();
    assert_eq!(
        has_key,
        key == Key::Rendered,
        "{}: the burst key Secret is {}rendered",
        rendering.source,
        if has_key { "" } else { "not " }
    );
    cluster.install(rendering);
    if key == Key::Operator {
        cluster.create(&burst_key_secret());
    }
    cluster
}

/// Waits until both agent DaemonSets run a Ready pod on each lab node and
/// `controllers` controller replicas are Ready; returns the agent pods
/// placed on any other node (the Windows node must get none).
pub(super) fn wait_ready(cluster: &Cluster, controllers: usize) -> Vec<String> {
    cluster.wait_for(
        "every agent and controller Ready",
        Duration::from_secs(120),
        |c| {
            let pods = c.pods(NAMESPACE, &[]);
            let agents_ok = AGENT_DAEMONSETS.iter().all(|ds| {
                let mine: Vec<&Value> = pods
                    .iter()
                    .filter(|p| {
                        p["metadata"]["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(&format!("{ds}-")))
                    })
                    .filter(|p| p["spec"]["nodeName"] != DECOY_NODE)
                    .collect();
                let nodes: BTreeSet<&str> = mine
                    .iter()
                    .filter_map(|p| p["spec"]["nodeName"].as_str())
                    .collect();
                mine.len() == c.nodes.len()
                    && mine.iter().all(|p| ready(p))
                    && nodes == c.nodes.iter().map(String::as_str).collect()
            });
            let ctrl = pods
                .iter()
                .filter(|p| {
                    p["metadata"]["labels"]["app.kubernetes.io/component"] == "controller"
                        && ready(p)
                })
                .count();
            (agents_ok && ctrl == controllers).then_some(())
        },
    );
    cluster
        .pods(NAMESPACE, &[])
        .iter()
        .filter(|p| p["spec"]["nodeName"] == DECOY_NODE)
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Polls `prom` until `f` holds, or panics after `timeout` with `what`.
pub(super) fn wait_prom<T>(
    prom: &Prom,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut(&Prom) -> Option<T>,
) -> T {
    let t0 = Instant::now();
    let got = lab::netlab::poll(timeout, Duration::from_secs(2), || f(prom));
    match got {
        Some(v) => {
            eprintln!("{what}: after {:.1?}", t0.elapsed());
            v
        }
        None => panic!(
            "timed out after {timeout:?} waiting for {what}; firing: {:?}; targets: {:?}",
            prom.firing(),
            prometheus::targets(prom)
        ),
    }
}

/// Waits until Prometheus scrapes every agent and `controllers` controller
/// replicas through discovery, with the labels the rules read.
pub(super) fn wait_scraped(prom: &Prom, cluster: &Cluster, controllers: usize) {
    let want = AGENT_DAEMONSETS.len() * cluster.nodes.len() + controllers;
    wait_prom(
        prom,
        "every agent and controller discovered and scraped",
        Duration::from_secs(90),
        |p| {
            let up = p.query("up{job=~\".*kubepulse.*\", namespace=\"kubepulse\", pod!=\"\"} == 1");
            (up.len() == want).then_some(())
        },
    );
}

/// Values of `label` over the series of `expr`.
pub(super) fn label_values(prom: &Prom, expr: &str, label: &str) -> BTreeSet<String> {
    prom.query(expr)
        .into_iter()
        .filter_map(|(l, _)| l.get(label).and_then(Value::as_str).map(String::from))
        .collect()
}

/// Every alert that fired in the last `window` (`ALERTS` is written at
/// every evaluation, so one that fired and resolved in between counts),
/// with the first and last second of the window it was firing in.
pub(super) fn fired_within(prom: &Prom, window: Duration) -> BTreeMap<String, (f64, f64)> {
    let secs = window.as_secs().max(1);
    let expr = format!("ALERTS{{alertstate=\"firing\"}}[{secs}s]");
    let v = prom.get_json(&format!(
        "/api/v1/query?query={}",
        kubepulse_testkit::http::percent_encode(&expr)
    ));
    let end = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p[0].as_f64())
        .fold(f64::MIN, f64::max);
    let start = end - secs as f64;
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let mut labels: Vec<String> = s["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !["alertstate", "__name__"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            labels.sort();
            let times: Vec<f64> = s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[0].as_f64())
                .collect();
            let first = times.iter().copied().fold(f64::MAX, f64::min) - start;
            let last = times.iter().copied().fold(f64::MIN, f64::max) - start;
            (labels.join(","), (first, last))
        })
        .collect()
}

/// The whole machine's CPU use between two readings of /proc/stat.
struct MachineLoad {
    busy: u64,
    total: u64,
}

impl MachineLoad {
    fn read() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        // idle and iowait.
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        (total - idle, total)
    }

    fn start() -> MachineLoad {
        let (busy, total) = Self::read();
        MachineLoad { busy, total }
    }

    /// CPUs busy on average since `start`, and the load averages now.
    fn end(&self) -> (f64, String) {
        let (busy, total) = Self::read();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let frac = (busy - self.busy) as f64 / (total - self.total).max(1) as f64;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        (frac * cpus, load.trim().to_string())
    }
}

/// CPU seconds this process (the test, its lab kubelet and API server)
/// has used.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // `rest` starts at the state (field 3): utime is index 11.
    (field(11) + field(12)) / 100.0
}

/// Iterations of every rule group so far (Prometheus's own counter).
fn rule_iterations(prom: &Prom) -> BTreeMap<String, f64> {
    prom.own_metrics()
        .select("prometheus_rule_group_iterations_total", &[])
        .into_iter()
        .map(|s| {
            (
                s.labels.get("rule_group").cloned().unwrap_or_default(),
                s.value,
            )
        })
        .collect()
}

/// The requests Prometheus's Kubernetes discovery sent the API, each kind
/// once (resourceVersion and timeout values elided), with its Accept.
fn discovery_requests(cluster: &Cluster) -> Vec<String> {
    let mut seen = BTreeSet::new();
    for r in cluster.server.requests() {
        let ua = r.user_agent.clone().unwrap_or_default();
        if !ua.to_lowercase().contains("prometheus") {
            continue;
        }
        let (path, query) = r.uri.split_once('?').unwrap_or((r.uri.as_str(), ""));
        let mut q: Vec<String> = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if ["resourceVersion", "timeoutSeconds"].contains(&k) => {
                    format!("{k}=N")
                }
                _ => kv.to_string(),
            })
            .collect();
        q.sort();
        seen.insert(format!(
            "{} {path}?{} (Accept: {}; {ua})",
            r.method,
            q.join("&"),
            r.accept.clone().unwrap_or_default()
        ));
    }
    seen.into_iter().collect()
}

/// Every panel query of every dashboard, with the Grafana variables set to
/// "All" (or the first value of a single-value variable).
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let dir = kubepulse_testkit::repo_root().join("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&f).expect("read"))
            .expect("dashboard JSON");
        let file = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut vars = BTreeMap::new();
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("").to_string();
            let value = if v["includeAll"] == true {
                ".*".to_string()
            } else {
                v["query"]
                    .as_str()
                    .and_then(|q| q.split(',').next())
                    .unwrap_or(".*")
                    .to_string()
            };
            vars.insert(name, value);
        }
        fn walk<'a>(p: &'a Value, out: &mut Vec<&'a Value>) {
            for x in p["panels"].as_array().into_iter().flatten() {
                out.push(x);
                walk(x, out);
            }
        }
        let mut panels = Vec::new();
        walk(&d, &mut panels);
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                let mut e = expr
                    .replace("$__rate_interval", "1m")
                    .replace("${__rate_interval}", "1m");
                for (k, v) in &vars {
                    e = e
                        .replace(&format!("${{{k}}}"), v)
                        .replace(&format!("${k}"), v);
                }
                out.push((
                    file.clone(),
                    p["title"].as_str().unwrap_or("").to_string(),
                    e,
                ));
            }
        }
    }
    out
}

/// Prints, for the window just ended, when each agent's late sends,
/// refusals, probe errors, losses, exclusions and bursts happened (seconds
/// after its start, 2 s steps): what a failure of the quiet check needs.
pub(super) fn print_timeline(prom: &Prom, window: Duration) {
    let end = prom.query("vector(time())").first().map_or(0.0, |x| x.1);
    let start = end - window.as_secs_f64();
    for expr in [
        "sum by (pod, protocol) (increase(kubepulse_probe_send_late_total[3s])) > 2",
        "sum by (pod, responder, reason) (increase(kubepulse_responder_rejected_total[3s])) > 0",
        "sum by (pod, path, protocol, reason) (increase(kubepulse_probe_errors_total[3s])) > 0",
        "sum by (pod, path, protocol) (increase(kubepulse_probe_lost_total[3s])) > 0",
        "sum by (pod, path, protocol) (increase(kubepulse_probe_excluded_total[3s])) > 0",
        "sum by (pod, path, peer_node, direction) (increase(kubepulse_bandwidth_bursts_total[3s])) > 0",
    ] {
        let v = prom.get_json(&format!(
            "/api/v1/query_range?query={}&start={start}&end={end}&step=2",
            kubepulse_testkit::http::percent_encode(expr)
        ));
        for r in v["data"]["result"].as_array().into_iter().flatten() {
            let at: Vec<String> = r["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[0].as_f64())
                .map(|t| format!("{:.0}", t - start))
                .collect();
            eprintln!("{expr}: {} at {at:?}", r["metric"]);
        }
    }
}

/// Panels that have no data in a healthy 3-node lab by design, and why.
const EMPTY_BY_DESIGN: &[(&str, &str)] = &[
    (
        "Leader election errors per hour",
        "only errors of the controllers' Lease calls, none in a healthy cluster (`> 0` keeps zero rows out)",
    ),
    (
        "Nodes expected down by reason",
        "only nodes cordoned, tainted for deletion, being deleted, gone or NotReady: none in a healthy cluster",
    ),
    (
        "Nodes expected down and why",
        "the same list by node (overview and nodes dashboards)",
    ),
];

/// Item 3 of issue 23: the chart's defaults (burst key created by the
/// chart) on the 3-node overlay lab are quiet for 3 minutes after every
/// agent is Ready, complete (every path kind scraped, the published plans
/// probed, bursts run) and every dashboard panel that should have data has
/// some.
#[test]
fn a_healthy_install_is_quiet_and_complete() {
    if !lab::require_root() {
        return;
    }
    healthy(&lab_bandwidth(&rendering()), Key::Rendered);
}

/// Item 5: the same for the kustomize rendering of the generated
/// `deploy/` (plain Prometheus), with the burst key created as
/// docs/deploy.md says.
#[test]
fn the_kustomize_install_is_quiet_and_complete() {
    if !lab::require_root() {
        return;
    }
    healthy(&lab_bandwidth(&kustomize_rendering()), Key::Operator);
}

fn healthy(rendering: &Rendering, key: Key) {
    let t0 = Instant::now();
    let cluster = installed(rendering, key);
    let prom = prometheus::start(&cluster, "2s");
    let on_decoy = wait_ready(&cluster, 2);
    let ready_at = Instant::now();
    eprintln!("every agent Ready {:.1?} after the start", t0.elapsed());
    wait_scraped(&prom, &cluster, 2);
    let iterations_before = rule_iterations(&prom);
    let machine = MachineLoad::start();
    let prom_cpu = prom
        .own_metrics()
        .one("process_cpu_seconds_total", &[])
        .unwrap_or(0.0);
    let own_cpu = own_cpu_seconds();
    // Bursts run (the first within one round of the lab's duty budget).
    let burst = wait_prom(
        &prom,
        "bandwidth bursts on the pod and the host path",
        QUIET,
        |p| {
            let paths = label_values(p, "kubepulse_bandwidth_bytes_per_second > 0", "path");
            (paths.contains("pod_cross_node") && paths.contains("host_cross_node")).then_some(paths)
        },
    );
    eprintln!("burst paths: {burst:?}");
    // The quiet window: 3 minutes after Ready, with data flowing through
    // the rules all along (checked below before judging the alerts).
    let mut data_polls = 0;
    let mut polls = 0;
    while ready_at.elapsed() < QUIET {
        polls += 1;
        if !prom
            .query("node_path_protocol:kubepulse_probe_sent:rate5m > 0")
            .is_empty()
        {
            data_polls += 1;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let window = ready_at.elapsed();
    let iterations_after = rule_iterations(&prom);
    let mut problems = Vec::new();
    // A positive sign first: every rule group ran about once a second over
    // the window with probe data present, so "nothing fired" means
    // something.
    let least = iterations_after
        .iter()
        .map(|(g, n)| n - iterations_before.get(g).copied().unwrap_or(0.0))
        .fold(f64::INFINITY, f64::min);
    eprintln!(
        "rule groups: {} evaluated at least {least} times; probe data in {data_polls} of {polls} polls",
        iterations_after.len()
    );
    assert!(
        iterations_after.len() >= 8 && least >= 100.0,
        "rules not evaluated over the quiet window: {iterations_before:?} -> {iterations_after:?}"
    );
    assert_eq!(
        data_polls, polls,
        "probe data missing from the rules in some polls"
    );
    let fired = fired_within(&prom, window);
    // Measured for the record: late sends and agent CPU over the window.
    for (l, v) in prom.query(&format!(
        "sum by (pod) (increase(kubepulse_probe_send_late_total[{0}s])) / sum by (pod) (increase(kubepulse_probe_sent_total[{0}s]))",
        window.as_secs()
    )) {
        eprintln!("late sends {:?}: {:.4}", l.get("pod"), v);
    }
    for (l, v) in prom.query(&format!(
        "rate(process_cpu_seconds_total{{job=~\".*kubepulse.*\"}}[{}s])",
        window.as_secs()
    )) {
        eprintln!("CPU {:?}: {v:.3} cores", l.get("pod"));
    }
    let prom_cpu = prom
        .own_metrics()
        .one("process_cpu_seconds_total", &[])
        .unwrap_or(0.0)
        - prom_cpu;
    let own_cpu = own_cpu_seconds() - own_cpu;
    eprintln!(
        "CPU over the window: Prometheus {:.3} cores, the test process (lab kubelet, API server) {:.3} cores",
        prom_cpu / window.as_secs_f64(),
        own_cpu / window.as_secs_f64()
    );
    for (l, v) in
        prom.query("node_peer_node_direction:kubepulse_bandwidth_bytes_per_second:pod_host_ratio")
    {
        eprintln!(
            "pod/host bandwidth {:?} -> {:?} {:?}: {v:.2}",
            l.get("node"),
            l.get("peer_node"),
            l.get("direction")
        );
    }
    let (busy, load) = machine.end();
    eprintln!(
        "machine over the window: {busy:.2} of {} CPUs busy, load average {load}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !on_decoy.is_empty() {
        problems.push(format!(
            "agent pods placed on the Windows node {DECOY_NODE}: {on_decoy:?}"
        ));
    }
    // Nothing restarted: a healthy install runs its pods once.
    let restarted: Vec<String> = cluster
        .pods(NAMESPACE, &[])
        .iter()
        .filter(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["restartCount"].as_u64().unwrap_or(0) > 0)
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    if !restarted.is_empty() {
        problems.push(format!(
            "containers restarted: {restarted:?}\n{}",
            cluster.dump()
        ));
    }
    if !fired.is_empty() {
        print_timeline(&prom, window);
        let list: Vec<String> = fired
            .iter()
            .map(|(a, (first, last))| {
                format!("  {a} (firing {first:.0} s to {last:.0} s after Ready)")
            })
            .collect();
        problems.push(format!(
            "alerts fired in a healthy install within {window:.0?} after Ready:\n{}",
            list.join("\n")
        ));
    }
    // Complete: every path kind of the lab.
    let paths = label_values(&prom, "sum by (path) (kubepulse_probe_sent_total)", "path");
    let want: BTreeSet<String> = LAB_PATHS.iter().map(|s| s.to_string()).collect();
    if paths != want {
        problems.push(format!("path kinds scraped: {paths:?}, want {want:?}"));
    }
    // A path MTU for every probed key: a search that finds nothing leaves
    // its key without one (as it did from pod agents to host agents).
    let keys = |expr: &str| -> BTreeSet<String> {
        prom.query(expr)
            .into_iter()
            .map(|(l, _)| {
                let get = |k: &str| l.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                format!("{} {} -> {}", get("pod"), get("path"), get("peer_node"))
            })
            .collect()
    };
    let probed_keys = keys("kubepulse_probe_sent_total{protocol=\"udp\"}");
    let mtu_keys = keys("kubepulse_path_mtu_bytes");
    let without: Vec<&String> = probed_keys.difference(&mtu_keys).collect();
    if !without.is_empty() {
        problems.push(format!("no path MTU for {without:#?}"));
    }
    // The plans the controller published are what the agents probe.
    for node in &cluster.nodes {
        let cm = cluster
            .server
            .get::<k8s_openapi::api::core::v1::ConfigMap>(
                NAMESPACE,
                &kubepulse::plan::config_map::config_map_name(node),
            )
            .unwrap_or_else(|| panic!("no plan for {node}"));
        let plan: Value = serde_json::from_str(
            cm["data"][kubepulse::plan::config_map::DATA_KEY]
                .as_str()
                .unwrap_or(""),
        )
        .expect("plan JSON");
        let targets: BTreeSet<String> = plan["target_nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        for path in ["pod_cross_node", "host_cross_node"] {
            let probed = label_values(
                &prom,
                &format!("sum by (peer_node) (rate(kubepulse_probe_sent_total{{node=\"{node}\",path=\"{path}\"}}[30s]) > 0)"),
                "peer_node",
            );
            if probed != targets {
                problems.push(format!(
                    "{node} probes {probed:?} on {path}, its plan says {targets:?}"
                ));
            }
        }
    }
    // Every dashboard panel that should have data has some.
    let by_design: BTreeSet<&str> = EMPTY_BY_DESIGN.iter().map(|(t, _)| *t).collect();
    let mut empty = Vec::new();
    let mut with_data = 0;
    let queries = panel_queries();
    for (file, title, expr) in &queries {
        let has = !prom.query(expr).is_empty();
        with_data += usize::from(has);
        match (has, by_design.contains(title.as_str())) {
            (false, false) => empty.push(format!("{file}: {title}: {expr}")),
            (true, true) => problems.push(format!(
                "{file}: {title} is listed as empty by design but has data: {expr}"
            )),
            _ => {}
        }
    }
    eprintln!(
        "panel queries: {} run, {with_data} with data, {} empty by design",
        queries.len(),
        by_design.len()
    );
    if !empty.is_empty() {
        problems.push(format!(
            "panels without data in a healthy cluster:\n{}",
            empty.join("\n")
        ));
    }
    // What Prometheus's discovery (client-go) asked the API test server.
    let asked = discovery_requests(&cluster);
    eprintln!("Prometheus's discovery asked:\n{}", asked.join("\n"));
    if !asked.iter().any(|r| r.contains("watch=true")) {
        problems.push(format!("Prometheus never watched the pods: {asked:?}"));
    }
    cluster.check();
    eprintln!("healthy run took {:.1?}", t0.elapsed());
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Item 4: without the burst-key Secret (the static path, no `kubectl
/// create secret`) the agents become Ready, probe, run no bursts, and only
/// the key warning fires.
#[test]
fn without_the_burst_key_agents_probe_without_bursts() {
    if !lab::require_root() {
        return;
    }
    let cluster = installed(&lab_bandwidth(&kustomize_rendering()), Key::Missing);
    let prom = prometheus::start(&cluster, "2s");
    let on_decoy = wait_ready(&cluster, 2);
    assert!(
        on_decoy.is_empty(),
        "agent pods on the Windows node: {on_decoy:?}"
    );
    wait_scraped(&prom, &cluster, 2);
    wait_prom(
        &prom,
        "probes running on every node",
        Duration::from_secs(90),
        |p| {
            let nodes = label_values(
                p,
                "sum by (node) (rate(kubepulse_probe_sent_total[30s])) > 0",
                "node",
            );
            (nodes.len() == cluster.nodes.len()).then_some(())
        },
    );
    // Bursts were due: the plans give every node a slot within one round
    // (50 s at the lab's budget); two rounds pass before judging.
    let want: BTreeSet<String> = ["KubepulseBurstKeyMissing{severity=warning}".to_string()].into();
    prom.expect_firing(
        "no burst key",
        &want,
        Duration::from_secs(120),
        Duration::from_secs(100),
        &[
            "kubepulse_burst_key_state == 1",
            "up",
            "kubepulse_path_mtu_bytes{path=~\"service.*\"}",
            "min by (path) (kubepulse_interface_mtu_bytes)",
        ],
    );
    let key_states = label_values(&prom, "kubepulse_burst_key_state == 1", "state");
    assert_eq!(key_states, ["missing".to_string()].into(), "key state");
    assert!(
        prom.query("kubepulse_bandwidth_bytes_per_second")
            .is_empty(),
        "bursts ran without a key"
    );
    cluster.check();
}

/// Item 4: with the controller disabled the agents say why they probe
/// nothing, and the documented alert fires.
#[test]
fn without_the_controller_agents_say_why_and_the_alert_fires() {
    if !lab::require_root() {
        return;
    }
    let r = rendering_with("controller:\n  enabled: false\n");
    assert!(r.find("Deployment", "kubepulse-controller").is_none());
    let cluster = installed(&r, Key::Rendered);
    let prom = prometheus::start(&cluster, "2s");
    let on_decoy = wait_ready(&cluster, 0);
    assert!(
        on_decoy.is_empty(),
        "agent pods on the Windows node: {on_decoy:?}"
    );
    wait_scraped(&prom, &cluster, 0);
    for p in cluster.pods(NAMESPACE, &[("app.kubernetes.io/component", "agent")]) {
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        if p["spec"]["nodeName"] == DECOY_NODE {
            continue;
        }
        cluster.wait_for(
            &format!("{name} says why it probes nothing"),
            Duration::from_secs(60),
            |c| {
                c.logs(NAMESPACE, &name)
                    .contains("No probe plan yet")
                    .then_some(())
            },
        );
    }
    let want: BTreeSet<String> = ["KubepulseControllerAbsent{severity=warning}".to_string()].into();
    prom.expect_firing(
        "controller disabled",
        &want,
        Duration::from_secs(120),
        Duration::from_secs(30),
        &["up", "kube_daemonset_status_desired_number_scheduled"],
    );
    assert!(
        prom.query("kubepulse_probe_sent_total").is_empty(),
        "agents probe without a plan"
    );
    cluster.check();
}

/// Item 4: a values file with a typo is refused by the chart's schema
/// before anything is applied.
#[test]
fn a_values_typo_is_refused_by_the_chart_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("typo.yaml");
    // `tolerations` misspelt, as a user would.
    std::fs::write(
        &values,
        "agents:\n  pod:\n    tolerationz:\n      - operator: Exists\n",
    )
    .expect("write values");
    let err = Rendering::helm("charts/kubepulse", "kubepulse", NAMESPACE, Some(&values))
        .expect_err("the schema must refuse an unknown key");
    assert!(
        err.stderr.contains("tolerationz"),
        "the refusal names the key: {err}"
    );
    let ok = rendering();
    assert!(ok.find("DaemonSet", "kubepulse-agent-pod").is_some());
}
