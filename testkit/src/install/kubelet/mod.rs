//! The lab kubelet: runs the pods bound to the lab's nodes as their spec
//! says, with podman in the pod's network namespace, and writes their
//! status back.
//!
//! One worker thread per pod: it checks every field against
//! [`super::fields::HONOURED`] (a field outside it, or a value the lab
//! cannot honour, is a [`Refusal`]: the pod is not run and the test that
//! waits on it fails naming the field), makes the sandbox (the node's
//! namespace for hostNetwork pods, else a new namespace behind the node's
//! bridge), writes the volumes (a missing non-optional ConfigMap or Secret
//! keeps the pod in `ContainerCreating` with a `FailedMount` event, as a
//! kubelet does, until it appears), resolves the environment (downward
//! API, ConfigMap and Secret keys, service links, `$(VAR)` expansion),
//! starts each container, polls its probes at their declared port, path,
//! period and thresholds from the node's namespace, restarts it on exit or
//! liveness failure with the kubelet's back-off, and on deletion stops it
//! within the grace period, tears the sandbox down and removes the pod.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::pod::{self, Placement, Probe, Refusal, Source};
use super::workloads::set_condition;
use super::{events, fields, now};
use crate::apiserver::ApiServer;
use crate::container::{Container, ContainerSpec};
use crate::lab::netlab::Lab;

mod probe;
mod spec;

use probe::check;

/// What every pod worker shares.
pub(super) struct Ctx {
    pub(super) server: ApiServer,
    pub(super) lab: Arc<Lab>,
    /// Lab nodes by name: (index, address).
    pub(super) nodes: BTreeMap<String, (usize, Ipv4Addr)>,
    /// Image repositories the lab can run → the local image.
    pub(super) images: BTreeMap<String, String>,
    /// The local image's numeric USER.
    pub(super) image_user: Option<u32>,
    /// The `kubernetes` Service (ClusterIP, port).
    pub(super) kubernetes: (Ipv4Addr, u16),
    /// Cluster DNS (the kube-dns Service's ClusterIP).
    pub(super) cluster_dns: Ipv4Addr,
    /// The nodes' own resolver.
    pub(super) node_dns: Ipv4Addr,
    /// The service account CA and token files.
    pub(super) ca: PathBuf,
    pub(super) token: PathBuf,
    /// Where pod directories go.
    pub(super) dir: PathBuf,
    pub(super) stop: AtomicBool,
    /// Every refusal so far: (namespace/pod, refusal).
    pub(super) refusals: Mutex<Vec<(String, Refusal)>>,
    pub(super) stamps: AtomicU64,
    /// Failures of the lab's own machinery (kube-proxy rules, a worker's
    /// panic): the next check fails the test with them.
    pub(super) faults: Mutex<Vec<String>>,
}

impl Ctx {
    fn stamp(&self) -> u64 {
        self.stamps.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn fault(&self, what: String) {
        eprintln!("lab: {what}");
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn refuse(&self, pod: &str, r: Vec<Refusal>) {
        let mut all = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        for x in r {
            eprintln!("lab kubelet: pod {pod}: refused {x}");
            all.push((pod.to_string(), x));
        }
    }

    /// The local image for a pod's `image`, by repository (any tag).
    fn image_for(&self, image: &str) -> Option<String> {
        let repo = image.split('@').next().unwrap_or(image);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        self.images.get(repo).cloned()
    }
}

/// One container's life in the worker.
struct Ctr {
    name: String,
    spec: ContainerSpec,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    startup: Option<Probe>,
    running: Option<Container>,
    started_at: String,
    ready: bool,
    started: bool,
    restarts: u32,
    last_state: Value,
    /// Consecutive results of each probe (successes, failures) and when it
    /// runs next.
    probes: [ProbeRun; 3],
    backoff: Duration,
    restart_at: Option<Instant>,
    waiting: Option<(String, String)>,
}

#[derive(Default, Clone, Copy)]
struct ProbeRun {
    next: Option<Instant>,
    ok: u32,
    fail: u32,
}

const READINESS: usize = 0;
const LIVENESS: usize = 1;
const STARTUP: usize = 2;

/// Runs pod `namespace/name` (uid `uid`) on lab node `node` until it is
/// deleted or the kubelet stops.
pub(super) fn run_pod(ctx: Arc<Ctx>, namespace: String, name: String, uid: String, node: String) {
    let key = format!("{namespace}/{name}");
    let Some(pod) = ctx.server.get::<Pod>(&namespace, &name) else {
        return;
    };
    let mut refusals: Vec<Refusal> = fields::refused(&pod)
        .into_iter()
        .map(|f| Refusal {
            field: f,
            why: "not modelled by the lab kubelet".into(),
        })
        .collect();
    let spec = pod["spec"].clone();
    if spec["restartPolicy"]
        .as_str()
        .is_some_and(|r| r != "Always")
    {
        refusals.push(Refusal {
            field: "spec.restartPolicy".into(),
            why: "only Always is modelled".into(),
        });
    }
    let vols = match pod::volumes(&spec) {
        Ok(v) => v,
        Err(r) => {
            refusals.push(r);
            BTreeMap::new()
        }
    };
    let dns =
        pod::dns(&spec, &namespace, ctx.cluster_dns, ctx.node_dns).map_err(|r| refusals.push(r));
    let (node_index, host_ip) = ctx.nodes[&node];
    let host_network = spec["hostNetwork"] == true;
    let mut ctrs = Vec::new();
    for (i, c) in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let cname = c["name"].as_str().unwrap_or("").to_string();
        let mut cs = ContainerSpec::default();
        match c["image"].as_str().and_then(|i| ctx.image_for(i)) {
            Some(img) => cs.image = img,
            None => refusals.push(Refusal {
                field: format!("spec.containers[{i}].image"),
                why: format!("{} is not an image the lab builds", c["image"]),
            }),
        }
        if let Err(r) = pod::security(&spec, i, ctx.image_user, &mut cs) {
            refusals.extend(r);
        }
        if let Err(r) = pod::resources(&spec, i, &mut cs) {
            refusals.push(r);
        }
        if let Ok(d) = &dns {
            d.apply(&mut cs);
        }
        for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
            if !host_network && !p["hostPort"].is_null() {
                refusals.push(Refusal {
                    field: format!("spec.containers[{i}].ports[{j}].hostPort"),
                    why: "hostPort on the pod network is not modelled".into(),
                });
            }
        }
        if !c["workingDir"].is_null() {
            refusals.push(Refusal {
                field: format!("spec.containers[{i}].workingDir"),
                why: "not modelled".into(),
            });
        }
        let mut probe = |which: &str| match pod::probe(&spec, i, which) {
            Ok(p) => p,
            Err(r) => {
                refusals.push(r);
                None
            }
        };
        let (readiness, liveness, startup) = (
            probe("readinessProbe"),
            probe("livenessProbe"),
            probe("startupProbe"),
        );
        for (j, m) in c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let v = m["name"].as_str().unwrap_or("");
            if !vols.contains_key(v) {
                refusals.push(Refusal {
                    field: format!("spec.containers[{i}].volumeMounts[{j}].name"),
                    why: format!("no volume {v}"),
                });
            }
        }
        ctrs.push(Ctr {
            name: cname,
            spec: cs,
            readiness,
            liveness,
            startup,
            running: None,
            started_at: String::new(),
            ready: false,
            started: false,
            restarts: 0,
            last_state: json!({}),
            probes: [ProbeRun::default(); 3],
            backoff: Duration::from_secs(10),
            restart_at: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
        });
    }
    if !refusals.is_empty() {
        let msg: Vec<String> = refusals.iter().map(|r| r.to_string()).collect();
        ctx.server.modify::<Pod>(&namespace, &name, |p| {
            p["status"]["reason"] = json!("LabKubeletRefused");
            p["status"]["message"] = json!(msg.join("; "));
        });
        ctx.refuse(&key, refusals);
        return;
    }

    // The sandbox.
    let (netns, pod_ip, sandbox) = if host_network {
        (ctx.lab.host(node_index), host_ip, None)
    } else {
        let (ns, ip) = ctx.lab.add_sandbox(node_index);
        (ns.clone(), ip, Some(ns))
    };
    let at = Placement {
        node: node.clone(),
        pod_ip,
        host_ip,
    };
    let pod_dir = ctx.dir.join(&uid);
    let start_time = now();
    let mut w = Worker {
        ctx: ctx.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        uid,
        netns,
        node_ns: ctx.lab.host(node_index),
        at,
        pod_dir,
        start_time,
        vols,
        ctrs,
        last_status: Value::Null,
        mounted: false,
    };
    w.write_status();
    w.run();
    for c in &mut w.ctrs {
        if let Some(mut r) = c.running.take() {
            r.stop(Duration::from_secs(1));
        }
    }
    if let Some(ns) = sandbox {
        ctx.lab.remove_sandbox(&ns);
    }
    let _ = std::fs::remove_dir_all(&w.pod_dir);
}

struct Worker {
    ctx: Arc<Ctx>,
    namespace: String,
    name: String,
    uid: String,
    netns: String,
    node_ns: String,
    at: Placement,
    pod_dir: PathBuf,
    start_time: String,
    vols: BTreeMap<String, Source>,
    ctrs: Vec<Ctr>,
    last_status: Value,
    mounted: bool,
}

impl Worker {
    fn pod(&self) -> Option<Value> {
        self.ctx
            .server
            .get::<Pod>(&self.namespace, &self.name)
            .filter(|p| p["metadata"]["uid"] == self.uid.as_str())
    }

    fn run(&mut self) {
        let mut last_sync = Instant::now() - Duration::from_secs(60);
        loop {
            if self.ctx.stopping() {
                return;
            }
            let Some(pod) = self.pod() else { return };
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30);
                self.terminate(&pod, Duration::from_secs(grace));
                return;
            }
            // Volumes: written before the first start, then kept in sync.
            if !self.mounted || last_sync.elapsed() >= Duration::from_secs(2) {
                last_sync = Instant::now();
                match self.write_volumes() {
                    Ok(()) => self.mounted = true,
                    Err(msg) if !self.mounted => {
                        events::warn(&self.ctx.server, &pod, "FailedMount", &msg);
                        for c in &mut self.ctrs {
                            c.waiting = Some(("ContainerCreating".into(), msg.clone()));
                        }
                        self.write_status();
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                    // A source gone after the start: the kubelet keeps the
                    // last contents.
                    Err(_) => {}
                }
            }
            for i in 0..self.ctrs.len() {
                self.tend(i, &pod);
            }
            self.write_status();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts, probes and restarts container `i`.
    fn tend(&mut self, i: usize, pod: &Value) {
        let now_i = Instant::now();
        let exited = self.ctrs[i].running.as_mut().and_then(|r| r.exited());
        if let Some(status) = exited {
            let c = &mut self.ctrs[i];
            let log = c.running.as_ref().map(Container::log).unwrap_or_default();
            c.running = None;
            let code = status.code().unwrap_or(137);
            eprintln!(
                "lab kubelet: {}/{} container {} exited ({code}); log tail:\n{}",
                self.namespace,
                self.name,
                c.name,
                tail(&log, 20)
            );
            c.last_state = json!({"terminated": {"exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": c.started_at, "finishedAt": now(), "message": tail(&log, 5)}});
            c.restarts += 1;
            c.ready = false;
            c.started = false;
            c.restart_at = Some(now_i + c.backoff);
            c.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("back-off {:?} restarting failed container", c.backoff),
            ));
            c.backoff = (c.backoff * 2).min(Duration::from_secs(300));
            events::warn(
                &self.ctx.server,
                pod,
                "BackOff",
                "Back-off restarting failed container",
            );
        }
        if self.ctrs[i].running.is_none() {
            if self.ctrs[i].restart_at.is_some_and(|t| now_i < t) {
                return;
            }
            match self.container_spec(i, pod) {
                Ok(spec) => {
                    let log = self.pod_dir.join(format!(
                        "{}-{}.log",
                        self.ctrs[i].name, self.ctrs[i].restarts
                    ));
                    let c = &mut self.ctrs[i];
                    c.running = Some(Container::start(&spec, &log));
                    c.started_at = now();
                    c.waiting = None;
                    c.restart_at = None;
                    c.probes = [ProbeRun::default(); 3];
                    let begin = |p: &Option<Probe>| {
                        p.as_ref()
                            .map(|p| now_i + Duration::from_secs(p.initial_delay))
                    };
                    c.probes[READINESS].next = begin(&c.readiness);
                    c.probes[LIVENESS].next = begin(&c.liveness);
                    c.probes[STARTUP].next = begin(&c.startup);
                    // Without a startup probe the container counts as
                    // started at once; without a readiness probe, ready.
                    c.started = c.startup.is_none();
                    c.ready = c.readiness.is_none();
                    events::normal(
                        &self.ctx.server,
                        pod,
                        "Started",
                        &format!("Started container {}", c.name),
                    );
                }
                Err(msg) => {
                    self.ctrs[i].waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
                    events::warn(&self.ctx.server, pod, "Failed", &format!("Error: {msg}"));
                    self.ctrs[i].restart_at = Some(now_i + Duration::from_secs(1));
                }
            }
            return;
        }
        // Probes, in the kubelet's order: startup gates the others.
        let kinds: &[usize] = if self.ctrs[i].started {
            &[READINESS, LIVENESS]
        } else {
            &[STARTUP]
        };
        let grace = self.grace(pod);
        for &k in kinds {
            let c = &self.ctrs[i];
            let probe = match k {
                READINESS => &c.readiness,
                LIVENESS => &c.liveness,
                _ => &c.startup,
            };
            let Some(p) = probe.clone() else { continue };
            let run = c.probes[k];
            if run.next.is_none_or(|t| now_i < t) {
                continue;
            }
            let ok = check(&self.node_ns, self.at.pod_ip, &p);
            let c = &mut self.ctrs[i];
            let r = &mut c.probes[k];
            r.next = Some(now_i + Duration::from_secs(p.period));
            if ok {
                r.ok += 1;
                r.fail = 0;
            } else {
                r.fail += 1;
                r.ok = 0;
            }
            let (oks, fails) = (r.ok, r.fail);
            match k {
                READINESS => {
                    if oks >= p.success {
                        c.ready = true;
                    } else if fails >= p.failure {
                        if c.ready {
                            events::warn(
                                &self.ctx.server,
                                pod,
                                "Unhealthy",
                                &format!("Readiness probe failed: {:?}", p.check),
                            );
                        }
                        c.ready = false;
                    }
                }
                STARTUP if oks >= 1 => c.started = true,
                _ if fails >= p.failure => {
                    let which = if k == LIVENESS { "Liveness" } else { "Startup" };
                    events::warn(
                        &self.ctx.server,
                        pod,
                        "Unhealthy",
                        &format!("{which} probe failed: {:?}", p.check),
                    );
                    events::normal(
                        &self.ctx.server,
                        pod,
                        "Killing",
                        &format!(
                            "Container {} failed {} probe, will be restarted",
                            c.name,
                            which.to_lowercase()
                        ),
                    );
                    if let Some(mut r) = c.running.take() {
                        let status = r.stop(grace);
                        c.last_state = json!({"terminated": {"exitCode": status.and_then(|s| s.code()).unwrap_or(137),
                            "reason": "Error", "startedAt": c.started_at, "finishedAt": now()}});
                    }
                    c.restarts += 1;
                    c.ready = false;
                    c.started = false;
                    c.restart_at = None;
                    return;
                }
                _ => {}
            }
        }
    }

    fn grace(&self, pod: &Value) -> Duration {
        Duration::from_secs(
            pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        )
    }

    /// Stops every container within `grace`, then removes the pod.
    fn terminate(&mut self, pod: &Value, grace: Duration) {
        for c in &mut self.ctrs {
            if let Some(mut r) = c.running.take() {
                events::normal(
                    &self.ctx.server,
                    pod,
                    "Killing",
                    &format!("Stopping container {}", c.name),
                );
                r.stop(grace);
            }
        }
        self.ctx.server.delete::<Pod>(&self.namespace, &self.name);
    }

    /// Writes the pod's status if it changed.
    fn write_status(&mut self) {
        let statuses: Vec<Value> = self
            .ctrs
            .iter()
            .map(|c| {
                let state = match (&c.running, &c.waiting) {
                    (Some(_), _) => json!({"running": {"startedAt": c.started_at}}),
                    (None, Some((reason, msg))) => json!({"waiting": {"reason": reason, "message": msg}}),
                    (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
                };
                json!({"name": c.name, "image": c.spec.image, "imageID": c.spec.image,
                    "containerID": c.running.as_ref().map(|r| format!("podman://{}", r.name)),
                    "ready": c.ready && c.running.is_some(), "started": c.started && c.running.is_some(),
                    "restartCount": c.restarts, "state": state, "lastState": c.last_state})
            })
            .collect();
        let all_ready = self.ctrs.iter().all(|c| c.ready && c.running.is_some());
        let any_running = self.ctrs.iter().any(|c| c.running.is_some());
        let status = json!({
            "phase": if any_running || self.ctrs.iter().any(|c| c.restarts > 0) { "Running" } else { "Pending" },
            "hostIP": self.at.host_ip.to_string(), "hostIPs": [{"ip": self.at.host_ip.to_string()}],
            "podIP": self.at.pod_ip.to_string(), "podIPs": [{"ip": self.at.pod_ip.to_string()}],
            "startTime": self.start_time, "qosClass": "Burstable",
            "containerStatuses": statuses,
        });
        let conds = [
            ("PodReadyToStartContainers", true),
            ("Initialized", true),
            ("ContainersReady", all_ready),
            ("Ready", all_ready),
        ];
        if status == self.last_status {
            return;
        }
        self.last_status = status.clone();
        self.ctx
            .server
            .modify::<Pod>(&self.namespace, &self.name, |p| {
                if p["metadata"]["uid"] != self.uid.as_str() {
                    return;
                }
                let conditions = p["status"]["conditions"].clone();
                p["status"] = status;
                p["status"]["conditions"] = conditions;
                for (ty, ok) in conds {
                    set_condition(p, ty, if ok { "True" } else { "False" }, None);
                }
            });
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
