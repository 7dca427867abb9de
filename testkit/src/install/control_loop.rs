//! The loops of the control plane and the lab kubelet: every 250 ms the
//! ServiceAccount, DaemonSet and Deployment controllers, the scheduler, a
//! worker per new pod on a lab node, node heartbeats and kube-proxy's
//! rules.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::cluster::PROBE_NAMESPACE;
use super::kubelet::{self, Ctx};
use super::seed::heartbeat;
use super::{proxy, workloads};
use crate::apiserver::ApiServer;

/// The loops of the control plane and the kubelet, every 250 ms until the
/// cluster stops; then every pod worker is joined (containers stopped).
pub(super) fn main_loop(ctx: Arc<Ctx>) {
    let mut workers: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    let mut done: std::collections::BTreeSet<String> = Default::default();
    let mut last_beat = Instant::now();
    let mut last_rules = String::new();
    let mut applied: Vec<proxy::Rule> = Vec::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        let server = &ctx.server;
        service_accounts(server);
        workloads::daemonsets(server);
        workloads::deployments(server);
        workloads::schedule(server, &[PROBE_NAMESPACE]);
        for p in server.all_objects::<Pod>() {
            let ns = p["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if ns == PROBE_NAMESPACE {
                continue;
            }
            let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let Some(node) = p["spec"]["nodeName"].as_str().map(String::from) else {
                continue;
            };
            if !ctx.nodes.contains_key(&node) {
                // No kubelet of ours there: a deleted pod is just removed.
                if !p["metadata"]["deletionTimestamp"].is_null() {
                    server.delete::<Pod>(&ns, &name);
                }
                continue;
            }
            if workers.contains_key(&uid) || done.contains(&uid) {
                continue;
            }
            let c = ctx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pod-{name}"))
                .spawn(move || kubelet::run_pod(c, ns, name, uid.clone(), node))
                .expect("spawn a pod worker");
            workers.insert(
                p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                handle,
            );
        }
        let finished: Vec<String> = workers
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(u, _)| u.clone())
            .collect();
        for u in finished {
            if let Some(h) = workers.remove(&u) {
                if h.join().is_err() {
                    ctx.fault(format!("the worker of pod uid {u} panicked"));
                }
            }
            done.insert(u);
        }
        if last_beat.elapsed() >= Duration::from_secs(10) {
            last_beat = Instant::now();
            heartbeat(server);
        }
        let wanted = proxy::rules(
            &server.all_objects::<Service>(),
            &server.all_objects::<Pod>(),
            &server.all_objects::<EndpointSlice>(),
        );
        let rules = proxy::ruleset(&wanted);
        if rules != last_rules {
            let stale = proxy::stale_udp_flows(&applied, &wanted);
            let ok = (0..ctx.nodes.len()).all(|i| {
                let ns = ctx.lab.host(i);
                match apply_nft(&ns, &rules) {
                    Ok(()) => {
                        // After the new rules: the next packet is NATed anew.
                        for f in &stale {
                            if let Err(e) = clear_conntrack(&ns, f) {
                                ctx.fault(format!("kube-proxy on node {i}: {e}"));
                            }
                        }
                        true
                    }
                    Err(e) => {
                        ctx.fault(format!("kube-proxy rules on node {i}: {e}\n{rules}"));
                        false
                    }
                }
            });
            if ok {
                last_rules = rules;
                applied = wanted;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (_, h) in workers {
        let _ = h.join();
    }
}

/// The ServiceAccount controller: a `default` ServiceAccount in every
/// namespace.
pub(super) fn service_accounts(server: &ApiServer) {
    for ns in server.all_objects::<Namespace>() {
        let name = ns["metadata"]["name"].as_str().unwrap_or("");
        if server.get::<ServiceAccount>(name, "default").is_none() {
            server.apply_json::<ServiceAccount>(
                json!({"metadata": {"name": "default", "namespace": name}}),
            );
        }
    }
}

/// Deletes the conntrack entries of `flow` in namespace `ns` (none there is
/// fine: `conntrack -D` then exits 1 saying so).
fn clear_conntrack(ns: &str, flow: &proxy::StaleFlow) -> Result<(), String> {
    let args = flow.conntrack_args();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "conntrack"])
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run conntrack ({e}): the install lab's kube-proxy needs it (.ci/run installs it)"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.contains(" 0 flow entries") {
        Ok(())
    } else {
        Err(format!("conntrack {args:?}: {err}"))
    }
}

pub(super) fn apply_nft(ns: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
