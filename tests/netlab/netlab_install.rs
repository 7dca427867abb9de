//! The rendered install runs: what kubepulse ships (the chart's rendering,
//! or the kustomizations of `deploy/`) applied to an emulated 3-node
//! cluster on the network lab and run as shipped by the lab kubelet
//! (`kubepulse_testkit::install`), scraped by a real Prometheus that
//! discovers the pods through the API test server with the scrape job of
//! docs/deploy.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kubepulse_testkit::install::cluster::DECOY_NODE;
use kubepulse_testkit::install::{burst_key_secret, prometheus, Cluster, ClusterSpec, Rendering};
use kubepulse_testkit::lab::{self, netlab::Flavour, prometheus::Prom};
use serde_json::Value;

/// The rendering under test: today the kustomizations of `deploy/` (the
/// agents and the controller, as docs/deploy.md applies them).
pub(crate) fn rendering() -> Rendering {
    Rendering::kustomize(&["deploy", "deploy/controller"])
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

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The 3-node overlay cluster with `rendering` installed (and the burst
/// key Secret when `key`), once every agent and controller pod is Ready.
fn installed(rendering: &Rendering, key: bool) -> Cluster {
    let cluster = Cluster::start(
        ClusterSpec {
            nodes: 3,
            flavour: Flavour::Overlay,
        },
        kubepulse_testkit::image::image(),
    );
    cluster.install(rendering);
    if key {
        cluster.create(&burst_key_secret());
    }
    cluster
}

/// Waits until both agent DaemonSets run a Ready pod on each lab node and
/// the controller Deployment's replicas are Ready; returns the agent pods
/// placed on any other node (the Windows node must get none).
fn wait_ready(cluster: &Cluster, controllers: usize) -> Vec<String> {
    cluster.wait_for(
        "every agent and controller Ready",
        Duration::from_secs(120),
        |c| {
            let pods = c.pods("kubepulse", &[]);
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
        .pods("kubepulse", &[])
        .iter()
        .filter(|p| p["spec"]["nodeName"] == DECOY_NODE)
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Polls `prom` until `f` holds, or panics after `timeout` with `what`.
fn wait_prom<T>(
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
            "timed out after {timeout:?} waiting for {what}; firing: {:?}",
            prom.firing()
        ),
    }
}

/// Values of `label` over the series of `expr`.
fn label_values(prom: &Prom, expr: &str, label: &str) -> BTreeSet<String> {
    prom.query(expr)
        .into_iter()
        .filter_map(|(l, _)| l.get(label).and_then(Value::as_str).map(String::from))
        .collect()
}

/// Every panel query of every dashboard, with the Grafana variables set to
/// "All" (or the first value of a single-value variable).
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let dir = kubepulse_testkit::repo_root().join("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards")
        .filter_map(|e| e.ok().map(|e| e.path()))
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

/// Item 3 of issue 23: the chart's defaults (burst key created) on the
/// 3-node overlay lab are quiet for 3 minutes after every agent is Ready,
/// complete (every path kind scraped, the published plans probed, bursts
/// run) and every dashboard panel that should have data has some.
#[test]
#[ignore = "fails on today's deploy/ (KubepulseAgentMissing, KubepulseControllerAbsent, DaemonSet pods on the Windows node): runs once the chart is the rendering"]
fn a_healthy_install_is_quiet_and_complete() {
    if !lab::require_root() {
        return;
    }
    healthy(&rendering());
}

/// Item 5: the same for the kustomize rendering of the generated
/// `deploy/` (plain Prometheus).
#[test]
#[ignore = "fails on today's deploy/ (see a_healthy_install_is_quiet_and_complete)"]
fn the_kustomize_install_is_quiet_and_complete() {
    if !lab::require_root() {
        return;
    }
    healthy(&Rendering::kustomize(&["deploy", "deploy/controller"]));
}

fn healthy(rendering: &Rendering) {
    let cluster = installed(rendering, true);
    let (prom, _scraper) = prometheus::start(&cluster, "2s");
    let on_decoy = wait_ready(&cluster, 2);
    let ready_at = Instant::now();
    // Every agent is discovered and scraped through the API.
    wait_prom(&prom, "every agent scraped", Duration::from_secs(60), |p| {
        let up = p.query("up{job=~\".*kubepulse.*\"} == 1");
        (up.len() >= 2 * cluster.nodes.len()).then_some(())
    });
    // Quiet: nothing fires, checked every 5 s for 3 minutes after Ready.
    let mut fired = BTreeSet::new();
    while ready_at.elapsed() < Duration::from_secs(180) {
        fired.extend(prom.firing());
        std::thread::sleep(Duration::from_secs(5));
    }
    fired.extend(prom.firing());
    // Every finding is gathered, so one run shows all of them.
    let mut problems = Vec::new();
    if !on_decoy.is_empty() {
        problems.push(format!(
            "agent pods placed on the Windows node {DECOY_NODE}: {on_decoy:?}"
        ));
    }
    if !fired.is_empty() {
        problems.push(format!("alerts fired in a healthy install: {fired:#?}"));
    }
    // Complete: every path kind of the lab.
    let paths = label_values(&prom, "sum by (path) (kubepulse_probe_sent_total)", "path");
    let want: BTreeSet<String> = LAB_PATHS.iter().map(|s| s.to_string()).collect();
    if paths != want {
        problems.push(format!("path kinds scraped: {paths:?}, want {want:?}"));
    }
    // The plans the controller published are what the agents probe.
    for node in &cluster.nodes {
        let cm = cluster
            .server
            .get::<k8s_openapi::api::core::v1::ConfigMap>(
                "kubepulse",
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
        let probed = label_values(&prom, &format!("sum by (peer_node) (kubepulse_probe_sent_total{{node=\"{node}\",path=~\"pod_cross_node|host_cross_node\"}})"), "peer_node");
        if probed != targets {
            problems.push(format!(
                "{node} probes {probed:?}, its plan says {targets:?}"
            ));
        }
    }
    // Bursts ran: at the default duty budget (1 % of 5 s slots) a node
    // starts one about every 500 s, so the first may still be minutes away
    // (measured: one run had bursts within 3 minutes, the next none).
    let burst = lab::netlab::poll(Duration::from_secs(540), Duration::from_secs(5), || {
        (!prom
            .query("kubepulse_bandwidth_bytes_per_second > 0")
            .is_empty())
        .then_some(())
    });
    if burst.is_none() {
        problems.push("no bandwidth burst ran within 9 minutes".into());
    }
    // Every dashboard panel that should have data has some.
    let empty_by_design: BTreeSet<&str> = BTreeSet::new();
    let mut empty = Vec::new();
    for (file, title, expr) in panel_queries() {
        if prom.query(&expr).is_empty() && !empty_by_design.contains(title.as_str()) {
            empty.push(format!("{file}: {title}: {expr}"));
        }
    }
    if !empty.is_empty() {
        problems.push(format!(
            "panels without data in a healthy cluster:\n{}",
            empty.join("\n")
        ));
    }
    cluster.check();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Item 4: without the burst-key Secret (the static path) the agents become
/// Ready, probe, run no bursts, and only the key warning fires.
#[test]
#[ignore = "today's DaemonSets mount the Secret without optional: true, so the agents stay in ContainerCreating (as a kubelet keeps them); runs once the chart and the agent's missing-key warning land"]
fn without_the_burst_key_agents_probe_without_bursts() {
    if !lab::require_root() {
        return;
    }
    let cluster = installed(&rendering(), false);
    let (prom, _scraper) = prometheus::start(&cluster, "2s");
    let on_decoy = wait_ready(&cluster, 2);
    assert!(
        on_decoy.is_empty(),
        "agent pods on the Windows node: {on_decoy:?}"
    );
    wait_prom(&prom, "probes running", Duration::from_secs(90), |p| {
        (!p.query("sum by (node) (rate(kubepulse_probe_sent_total[30s])) > 0")
            .is_empty())
        .then_some(())
    });
    let firing = wait_prom(
        &prom,
        "the key warning alone",
        Duration::from_secs(120),
        |p| {
            let f = p.firing();
            (!f.is_empty() && f.iter().all(|a| a.contains("BurstKey"))).then_some(f)
        },
    );
    eprintln!("firing without the key: {firing:?}");
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
#[ignore = "fails on today's deploy/: KubepulseAgentMissing fires beside KubepulseControllerAbsent (the documented scrape job sets no pod label); runs once the chart is the rendering"]
fn without_the_controller_agents_say_why_and_the_alert_fires() {
    if !lab::require_root() {
        return;
    }
    let r = rendering();
    let no_controller =
        r.without(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "kubepulse-controller");
    let cluster = installed(&no_controller, true);
    let (prom, _scraper) = prometheus::start(&cluster, "2s");
    let on_decoy = wait_ready(&cluster, 0);
    assert!(
        on_decoy.is_empty(),
        "agent pods on the Windows node: {on_decoy:?}"
    );
    for p in cluster.pods("kubepulse", &[("app.kubernetes.io/component", "agent")]) {
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        if p["spec"]["nodeName"] == DECOY_NODE {
            continue;
        }
        cluster.wait_for(
            &format!("{name} says why it probes nothing"),
            Duration::from_secs(60),
            |c| {
                c.logs("kubepulse", &name)
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
        Duration::from_secs(10),
        &["up", "kube_daemonset_status_desired_number_scheduled"],
    );
    cluster.check();
}

/// Item 4: a values file with a typo is refused by the chart's schema
/// before anything is applied.
#[test]
#[ignore = "needs the Helm chart (charts/kubepulse, issue 22)"]
fn a_values_typo_is_refused_by_the_chart_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("typo.yaml");
    // `tolerations` misspelt, as a user would.
    std::fs::write(&values, "agent:\n  tolerationz:\n    - operator: Exists\n")
        .expect("write values");
    let err = Rendering::helm("charts/kubepulse", "kubepulse", "kubepulse", Some(&values))
        .expect_err("the schema must refuse an unknown key");
    assert!(
        err.stderr.contains("tolerationz"),
        "the refusal names the key: {err}"
    );
    let ok = Rendering::helm("charts/kubepulse", "kubepulse", "kubepulse", None)
        .expect("the defaults render");
    assert!(ok.find("DaemonSet", "kubepulse-agent-pod").is_some());
}
