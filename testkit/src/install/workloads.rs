//! The control-plane loops of the lab that turn workloads into bound pods,
//! acting on the API test server as kube-controller-manager and
//! kube-scheduler do: the DaemonSet controller (one pod per admitted node,
//! status counts), the Deployment controller (a ReplicaSet and its
//! replicas, status), the ServiceAccount and Priority admission checks (a
//! pod naming a missing ServiceAccount or PriorityClass is not created: a
//! `FailedCreate` event says why),
//! and the scheduler (nodeSelector, node affinity, taints, pod
//! anti-affinity).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use serde_json::{json, Value};

use super::scheduling::{anti_affinity_forbids, daemonset_pod_spec, misfit, score};
use super::{events, now};
use crate::apiserver::ApiServer;

/// Characters of generated name suffixes (Kubernetes' safe alphabet).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A random name suffix of `n` characters.
pub(super) fn suffix(n: usize) -> String {
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A stable suffix for `text` (a pod template hash).
fn stable_suffix(text: &str, n: usize) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    let mut x = h.finish();
    (0..n)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn ns_of(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or("")
}

/// Whether `pod` is controlled by the object with `uid`.
fn owned_by(pod: &Value, uid: &str) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["uid"] == uid && o["controller"] == true)
}

/// Whether `pod` is Ready.
pub(super) fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn terminating(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_null()
}

/// Whether `pod` has ended (phase Succeeded or Failed).
fn terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// A new pod from `template` (a pod template) owned by `owner`, with the
/// defaults the apiserver fills in.
fn pod_from_template(
    template: &Value,
    name: &str,
    namespace: &str,
    owner: (&str, &str, &str),
    spec: Value,
    extra_labels: &[(&str, String)],
) -> Value {
    let (kind, owner_name, uid) = owner;
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": template["metadata"]["labels"].clone(),
            "annotations": template["metadata"]["annotations"].clone(),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner_name,
                "uid": uid, "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    });
    for (k, v) in extra_labels {
        pod["metadata"]["labels"][*k] = json!(v);
    }
    for k in ["labels", "annotations"] {
        if pod["metadata"][k].is_null() {
            pod["metadata"].as_object_mut().map(|m| m.remove(k));
        }
    }
    let spec = &mut pod["spec"];
    if spec["serviceAccountName"].is_null() {
        spec["serviceAccountName"] = spec["serviceAccount"]
            .as_str()
            .map_or(json!("default"), |s| json!(s));
    }
    pod
}

/// The ServiceAccount admission check: `Err` with the apiserver's message
/// when the pod's ServiceAccount does not exist.
fn service_account_admits(server: &ApiServer, pod: &Value) -> Result<(), String> {
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let ns = ns_of(pod);
    if server.get::<ServiceAccount>(ns, sa).is_some() {
        return Ok(());
    }
    Err(format!(
        "pods \"{}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found",
        name_of(pod)
    ))
}

/// The Priority admission plugin: a pod's `priorityClassName` must name
/// a built-in class or a PriorityClass; its value becomes `spec.priority`.
fn priority_admits(server: &ApiServer, pod: &mut Value) -> Result<(), String> {
    let Some(name) = pod["spec"]["priorityClassName"].as_str().map(String::from) else {
        return Ok(());
    };
    let value = match name.as_str() {
        "system-node-critical" => 2_000_001_000,
        "system-cluster-critical" => 2_000_000_000,
        _ => server
            .get::<k8s_openapi::api::scheduling::v1::PriorityClass>("", &name)
            .and_then(|c| c["value"].as_i64())
            .ok_or_else(|| {
                format!(
                    "pods \"{}\" is forbidden: no PriorityClass with name {name} was found",
                    name_of(pod)
                )
            })?,
    };
    pod["spec"]["priority"] = json!(value);
    Ok(())
}

/// Creates `pod` unless admission refuses it (then a `FailedCreate` event
/// on `owner`).
fn create_pod(server: &ApiServer, mut pod: Value, owner: &Value) {
    match service_account_admits(server, &pod).and_then(|()| priority_admits(server, &mut pod)) {
        Ok(()) => {
            server.apply_value("pods", true, pod);
        }
        Err(msg) => events::warn(
            server,
            owner,
            "FailedCreate",
            &format!("Error creating: {msg}"),
        ),
    }
}

/// One pass of the DaemonSet controller over every DaemonSet: a pod on
/// each node the template admits, none elsewhere; status counts.
pub(super) fn daemonsets(server: &ApiServer) {
    let nodes = server.all_objects::<Node>();
    let pods = server.all_objects::<Pod>();
    for ds in server.all_objects::<DaemonSet>() {
        let (ns, name) = (ns_of(&ds).to_string(), name_of(&ds).to_string());
        let uid = ds["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let template = &ds["spec"]["template"];
        let mine: Vec<&Value> = pods.iter().filter(|p| owned_by(p, &uid)).collect();
        let mut desired = 0;
        let (mut current, mut ready, mut misscheduled) = (0, 0, 0);
        let mut wanted = BTreeSet::new();
        for node in &nodes {
            let node_name = name_of(node);
            let spec = daemonset_pod_spec(&template["spec"], node_name);
            if misfit(&spec, node).is_some() {
                continue;
            }
            desired += 1;
            wanted.insert(node_name.to_string());
            let on_node: Vec<&&Value> = mine
                .iter()
                .filter(|p| p["spec"]["nodeName"] == node_name && !terminating(p))
                .collect();
            // As the DaemonSet controller does (`getNodesToDaemonPods`
            // skips only terminal pods being deleted): a pod that is still
            // terminating keeps its node's place, so its replacement waits
            // until it is gone. A hostNetwork replacement started beside it
            // would find its ports taken.
            let leaving = mine
                .iter()
                .any(|p| p["spec"]["nodeName"] == node_name && terminating(p) && !terminal(p));
            if on_node.is_empty() && !leaving {
                let pod_name = format!("{name}-{}", suffix(5));
                let pod = pod_from_template(
                    template,
                    &pod_name,
                    &ns,
                    ("DaemonSet", &name, &uid),
                    spec,
                    &[("pod-template-generation", "1".into())],
                );
                create_pod(server, pod, &ds);
            } else {
                current += 1;
                if on_node.iter().any(|p| is_ready(p)) {
                    ready += 1;
                }
            }
        }
        // Pods on nodes the template no longer admits go away.
        for p in &mine {
            let node = p["spec"]["nodeName"].as_str().unwrap_or("");
            if !node.is_empty() && !wanted.contains(node) && !terminating(p) {
                misscheduled += 1;
                super::delete_pod(server, ns_of(p), name_of(p));
            }
        }
        let status = json!({
            "currentNumberScheduled": current, "desiredNumberScheduled": desired,
            "numberMisscheduled": misscheduled, "numberReady": ready,
            "numberAvailable": ready, "numberUnavailable": desired - ready,
            "updatedNumberScheduled": current, "observedGeneration": 1,
        });
        server.modify::<DaemonSet>(&ns, &name, |d| d["status"] = status);
    }
}

/// One pass of the Deployment controller: a ReplicaSet per Deployment
/// (named by its template's hash) and its replicas; status counts.
pub(super) fn deployments(server: &ApiServer) {
    let pods = server.all_objects::<Pod>();
    for d in server.all_objects::<Deployment>() {
        let (ns, name) = (ns_of(&d).to_string(), name_of(&d).to_string());
        let template = &d["spec"]["template"];
        let hash = stable_suffix(&template.to_string(), 10);
        let rs_name = format!("{name}-{hash}");
        let rs_uid = match server.get::<ReplicaSet>(&ns, &rs_name) {
            Some(rs) => rs["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            None => {
                let mut t = template.clone();
                t["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = d["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let rs = server.apply_value(
                    "replicasets",
                    true,
                    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "metadata": {"name": rs_name, "namespace": ns,
                            "labels": t["metadata"]["labels"].clone(),
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                "uid": d["metadata"]["uid"].clone(), "controller": true, "blockOwnerDeletion": true}]},
                        "spec": {"replicas": d["spec"]["replicas"].clone(), "selector": selector, "template": t}}),
                );
                rs["metadata"]["uid"].as_str().unwrap_or("").to_string()
            }
        };
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let live: Vec<&Value> = pods
            .iter()
            .filter(|p| owned_by(p, &rs_uid) && !terminating(p))
            .collect();
        let rs = server.get::<ReplicaSet>(&ns, &rs_name).unwrap_or_default();
        for _ in live.len()..replicas {
            let pod_name = format!("{rs_name}-{}", suffix(5));
            let pod = pod_from_template(
                template,
                &pod_name,
                &ns,
                ("ReplicaSet", &rs_name, &rs_uid),
                template["spec"].clone(),
                &[("pod-template-hash", hash.clone())],
            );
            create_pod(server, pod, &rs);
        }
        for p in live.iter().skip(replicas) {
            super::delete_pod(server, ns_of(p), name_of(p));
        }
        let ready = live.iter().filter(|p| is_ready(p)).count();
        let status = json!({
            "replicas": live.len(), "readyReplicas": ready, "availableReplicas": ready,
            "updatedReplicas": live.len(), "observedGeneration": 1,
        });
        server.modify::<ReplicaSet>(&ns, &rs_name, |r| r["status"] = status.clone());
        server.modify::<Deployment>(&ns, &name, |r| r["status"] = status);
    }
}

/// One pass of the scheduler: binds every pending pod of the namespaces
/// it serves (all but `skip`) to its best fitting node, or records why
/// none fits (`PodScheduled=False`, `Unschedulable`).
pub(super) fn schedule(server: &ApiServer, skip: &[&str]) {
    let nodes = server.all_objects::<Node>();
    let pods = server.all_objects::<Pod>();
    for pod in &pods {
        if !pod["spec"]["nodeName"].is_null()
            || terminating(pod)
            || skip.contains(&ns_of(pod))
            || pod["spec"]["schedulerName"]
                .as_str()
                .is_some_and(|s| s != "default-scheduler")
        {
            continue;
        }
        let spec = &pod["spec"];
        let on = |node: &str| -> Vec<&Value> {
            pods.iter()
                .filter(|p| p["spec"]["nodeName"] == node && !terminating(p))
                .collect()
        };
        let mut best: Option<(i64, usize, &str)> = None;
        let mut why = Vec::new();
        for node in &nodes {
            let n = name_of(node);
            let here = on(n);
            if let Some(m) = misfit(spec, node) {
                why.push(m);
                continue;
            }
            if anti_affinity_forbids(spec, &here) {
                why.push("node(s) didn't match pod anti-affinity rules".into());
                continue;
            }
            let s = score(spec, node, &here);
            // Higher score, then fewer pods, then the name: deterministic.
            let cand = (s, usize::MAX - here.len(), n);
            if best.is_none_or(|b| (cand.0, cand.1) > (b.0, b.1)) {
                best = Some(cand);
            }
        }
        let (ns, name) = (ns_of(pod), name_of(pod));
        match best {
            Some((_, _, node)) => {
                server.modify::<Pod>(ns, name, |p| {
                    p["spec"]["nodeName"] = json!(node);
                    set_condition(p, "PodScheduled", "True", None);
                });
            }
            None => {
                let msg = format!("0/{} nodes are available: {}", nodes.len(), why.join(", "));
                server.modify::<Pod>(ns, name, |p| {
                    set_condition(p, "PodScheduled", "False", Some(("Unschedulable", &msg)));
                });
            }
        }
    }
}

/// Sets a pod condition, keeping its transition time while the status
/// stays the same.
pub(super) fn set_condition(pod: &mut Value, ty: &str, status: &str, reason: Option<(&str, &str)>) {
    let conds = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let old = conds.iter().find(|c| c["type"] == ty).cloned();
    let mut c = json!({"type": ty, "status": status, "lastProbeTime": null,
        "lastTransitionTime": old.as_ref().filter(|o| o["status"] == status)
            .map_or(json!(now()), |o| o["lastTransitionTime"].clone())});
    if let Some((r, m)) = reason {
        c["reason"] = json!(r);
        c["message"] = json!(m);
    }
    let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != ty).collect();
    conds.push(c);
    conds.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));
    pod["status"]["conditions"] = json!(conds);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminating DaemonSet pod keeps its node's place until it is
    /// gone, as the DaemonSet controller has it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_daemonset_replaces_a_pod_once_it_is_gone_not_while_it_terminates() {
        let server = ApiServer::start().await;
        server.apply_json::<Node>(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
        server.apply_json::<DaemonSet>(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "ds", "namespace": "ns"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}}));
        server.apply_json::<ServiceAccount>(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": "ns"}}));
        let pods = || server.objects::<Pod>("ns");
        daemonsets(&server);
        let first = pods();
        assert_eq!(first.len(), 1, "one pod on the one node");
        let name = name_of(&first[0]).to_string();
        // Bound, as the scheduler does.
        server.modify::<Pod>("ns", &name, |p| p["spec"]["nodeName"] = json!("n1"));
        // A graceful delete: the kubelet stops it within its grace.
        super::super::delete_pod(&server, "ns", &name);
        daemonsets(&server);
        assert_eq!(pods().len(), 1, "no replacement beside a terminating pod");
        assert!(server.delete::<Pod>("ns", &name));
        daemonsets(&server);
        let now_pods = pods();
        assert!(
            now_pods.len() == 1 && name_of(&now_pods[0]) != name,
            "replaced once gone: {now_pods:?}"
        );
    }

    #[test]
    fn suffixes_use_the_safe_alphabet() {
        let s = suffix(5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| ALPHABET.contains(&b)));
        assert_eq!(stable_suffix("t", 10), stable_suffix("t", 10));
        assert_ne!(stable_suffix("t", 10), stable_suffix("u", 10));
    }
}
