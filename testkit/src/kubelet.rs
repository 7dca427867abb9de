//! A simulated scheduler + kubelet: watches pods in one namespace and, for
//! each new pod, binds it (sets `spec.nodeName` from its required
//! `kubernetes.io/hostname` affinity), then marks the sandbox ready, starts
//! the container and marks it Ready, each after a configurable delay
//! counted from the previous step. Deleting a bound pod is finished (the
//! object removed) after `delete` delay. Modes inject failures.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use kube::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::apiserver::ApiServer;

/// How the simulated kubelet treats pods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Bind, sandbox, start, ready.
    Normal,
    /// Like Normal, with Pulling/Pulled events taking this long before start.
    PullImage(Duration),
    /// Pulling, then ErrImagePull.
    PullFails,
    /// Never bind (timeout).
    NeverSchedule,
    /// The scheduler reports Unschedulable.
    Unschedulable,
    /// After binding, every watch connection of the server drops.
    DropWatchAfterBind,
    /// Start and ready are never reached (to kill the controller mid-probe).
    Hang,
}

/// Delays of each step, from the previous step.
#[derive(Debug, Clone, Copy)]
pub struct Delays {
    /// ADDED seen -> nodeName set.
    pub bind: Duration,
    /// bound -> PodReadyToStartContainers.
    pub sandbox: Duration,
    /// sandbox -> container running.
    pub start: Duration,
    /// running -> Ready.
    pub ready: Duration,
    /// deletionTimestamp seen -> object removed.
    pub delete: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            bind: ms(300),
            sandbox: ms(200),
            start: ms(400),
            ready: ms(300),
            delete: ms(250),
        }
    }
}

/// The simulated kubelet; stops when dropped.
pub struct Kubelet {
    token: CancellationToken,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Kubelet {
    /// Starts simulating pods in `namespace` of `server`.
    pub fn start(server: &ApiServer, namespace: &str, mode: Mode, delays: Delays) -> Self {
        let token = CancellationToken::new();
        let client = server.actor_client("kubelet");
        let server = server.clone();
        let ns = namespace.to_string();
        let t = token.clone();
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let mut rv = "0".to_string();
            while !t.is_cancelled() {
                let Ok(stream) = pods.watch(&WatchParams::default().timeout(300), &rv).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut stream = stream.boxed();
                loop {
                    let ev = tokio::select! { e = stream.next() => e, _ = t.cancelled() => return };
                    let pod = match ev {
                        Some(Ok(WatchEvent::Added(p)))
                        | Some(Ok(WatchEvent::Modified(p)))
                        | Some(Ok(WatchEvent::Deleted(p))) => p,
                        Some(Ok(_)) => continue,
                        _ => break, // dropped: re-watch from the last version
                    };
                    rv = pod.metadata.resource_version.clone().unwrap_or(rv);
                    if pod.metadata.deletion_timestamp.is_some() {
                        tokio::spawn(finish_delete(pods.clone(), pod, delays.delete, t.clone()));
                    } else if pod.spec.as_ref().is_some_and(|s| s.node_name.is_none())
                        && pod
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_none()
                    {
                        tokio::spawn(lifecycle(
                            client.clone(),
                            server.clone(),
                            pod,
                            mode,
                            delays,
                            t.clone(),
                        ));
                    }
                }
            }
        });
        Self { token }
    }
}

async fn finish_delete(pods: Api<Pod>, pod: Pod, delay: Duration, t: CancellationToken) {
    tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = t.cancelled() => return }
    let Some(name) = pod.metadata.name else {
        return;
    };
    let _ = pods
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await;
}

/// GET, change, PUT, retrying on conflicts. Returns false if the pod is gone
/// or terminating.
async fn update(pods: &Api<Pod>, name: &str, f: impl Fn(&mut serde_json::Value)) -> bool {
    for _ in 0..20 {
        let Ok(Some(p)) = pods.get_opt(name).await else {
            return false;
        };
        if p.metadata.deletion_timestamp.is_some() {
            return false;
        }
        let mut v = serde_json::to_value(&p).expect("pod json");
        f(&mut v);
        let p: Pod = serde_json::from_value(v).expect("pod");
        match pods.replace(name, &PostParams::default(), &p).await {
            Ok(_) => return true,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(_) => return false,
        }
    }
    false
}

fn add_condition(v: &mut serde_json::Value, type_: &str, status: &str, reason: Option<&str>) {
    let conds = v["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conds: Vec<_> = conds.into_iter().filter(|c| c["type"] != type_).collect();
    let mut c =
        json!({"type": type_, "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    conds.push(c);
    v["status"]["conditions"] = json!(conds);
}

async fn event(client: &Client, pod: &Pod, reason: &str, message: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let e = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{}", reason.to_lowercase())),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some("Normal".into()),
        ..Default::default()
    };
    let _ = events.create(&PostParams::default(), &e).await;
}

async fn lifecycle(
    client: Client,
    server: ApiServer,
    pod: Pod,
    mode: Mode,
    d: Delays,
    t: CancellationToken,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sleep = |x: Duration| {
        let t = t.clone();
        async move {
            tokio::select! { _ = tokio::time::sleep(x) => true, _ = t.cancelled() => false }
        }
    };
    // The scheduler honours the required hostname affinity.
    let target = serde_json::to_value(&pod).expect("json")["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        ["matchExpressions"][0]["values"][0]
        .as_str()
        .map(String::from);
    match mode {
        Mode::NeverSchedule => return,
        Mode::Unschedulable => {
            if sleep(d.bind).await {
                update(&pods, &name, |v| {
                    add_condition(v, "PodScheduled", "False", Some("Unschedulable"))
                })
                .await;
            }
            return;
        }
        _ => {}
    }
    let Some(target) = target else { return };
    if !sleep(d.bind).await
        || !update(&pods, &name, |v| {
            v["spec"]["nodeName"] = json!(target);
            add_condition(v, "PodScheduled", "True", None);
        })
        .await
    {
        return;
    }
    if mode == Mode::DropWatchAfterBind {
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.end_watches();
    }
    if mode == Mode::Hang {
        return;
    }
    if !sleep(d.sandbox).await
        || !update(&pods, &name, |v| {
            add_condition(v, "PodReadyToStartContainers", "True", None)
        })
        .await
    {
        return;
    }
    match mode {
        Mode::PullImage(pull) => {
            event(&client, &pod, "Pulling", "Pulling image \"pause\"").await;
            if !sleep(pull).await {
                return;
            }
            event(
                &client,
                &pod,
                "Pulled",
                "Successfully pulled image \"pause\" in 1s (1s including waiting)",
            )
            .await;
        }
        Mode::PullFails => {
            event(&client, &pod, "Pulling", "Pulling image \"pause\"").await;
            update(&pods, &name, |v| {
                v["status"]["containerStatuses"] = json!([{"name": "pause", "image": "pause", "imageID": "", "ready": false,
                    "restartCount": 0, "started": false, "state": {"waiting": {"reason": "ErrImagePull"}}}]);
            })
            .await;
            return;
        }
        _ => {}
    }
    if !sleep(d.start).await
        || !update(&pods, &name, |v| {
            v["status"]["phase"] = json!("Running");
            v["status"]["containerStatuses"] = json!([{"name": "pause", "image": "pause", "imageID": "", "ready": false,
                "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]);
        })
        .await
    {
        return;
    }
    if sleep(d.ready).await {
        update(&pods, &name, |v| {
            v["status"]["containerStatuses"][0]["ready"] = json!(true);
            add_condition(v, "ContainersReady", "True", None);
            add_condition(v, "Ready", "True", None);
        })
        .await;
    }
}
