//! Per-resource behaviour the apiserver adds to plain storage: defaulting
//! and mutating admission on create (a Service gets its ClusterIP and node
//! ports allocated), and graceful deletion of bound pods.

use serde_json::{json, Value};

use super::store::now;
use super::{Inner, Route};

/// First ClusterIP handed out (10.96.0.1 is the `kubernetes` Service's and
/// 10.96.0.10 cluster DNS's by convention; tests create those with their
/// addresses set).
const FIRST_CLUSTER_IP: [u8; 4] = [10, 96, 0, 100];
/// The default NodePort range's first port.
const FIRST_NODE_PORT: u16 = 30000;

/// Defaults, then the mutating "webhooks" registered for the resource.
pub(super) fn admit_create(inner: &mut Inner, route: &Route, obj: &mut Value) {
    if route.resource == "pods" && obj["status"]["phase"].is_null() {
        obj["status"]["phase"] = json!("Pending");
    }
    if route.gv == "v1" && route.resource == "services" {
        allocate_service(inner, obj);
    }
    for (resource, mutate) in &inner.mutators {
        if *resource == route.resource {
            mutate(obj);
        }
    }
}

/// Keeps what clients cannot change by update or patch: a pending deletion.
pub(super) fn keep_deletion(obj: &mut Value, current: &Value) {
    for f in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        let v = &current["metadata"][f];
        if !v.is_null() {
            obj["metadata"][f] = v.clone();
        }
    }
}

/// For a DELETE of a pod bound to a node without `gracePeriodSeconds: 0`:
/// the object marked terminating (the kubelet removes it later with grace
/// 0), or `None` when it is already marked. Other deletions are immediate
/// (`Err`).
pub(super) fn graceful_delete(
    route: &Route,
    current: &Value,
    grace: Option<i64>,
) -> Result<Option<Value>, ()> {
    let bound = current["spec"]["nodeName"].is_string();
    if route.resource != "pods" || !bound || grace == Some(0) {
        return Err(());
    }
    if !current["metadata"]["deletionTimestamp"].is_null() {
        return Ok(None);
    }
    let grace = grace
        .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    let mut obj = current.clone();
    obj["metadata"]["deletionTimestamp"] = json!(now());
    obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    Ok(Some(obj))
}

/// A Service's ClusterIP (unless headless or set) and the node ports of a
/// NodePort or LoadBalancer Service (unless set), as the apiserver's
/// allocators hand them out: sequentially here, never reused.
fn allocate_service(inner: &mut Inner, obj: &mut Value) {
    let spec = &mut obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    spec["type"] = json!(ty);
    if ty == "ExternalName" {
        return;
    }
    if spec["clusterIP"].as_str().is_none_or(str::is_empty) {
        let [a, b, c, d] = FIRST_CLUSTER_IP;
        let ip = u32::from_be_bytes([a, b, c, d]) + inner.cluster_ips;
        inner.cluster_ips += 1;
        spec["clusterIP"] = json!(std::net::Ipv4Addr::from(ip).to_string());
    }
    let ip = spec["clusterIP"].clone();
    if ip != "None" {
        spec["clusterIPs"] = json!([ip]);
    }
    spec["ipFamilies"] = json!(["IPv4"]);
    spec["sessionAffinity"] = json!("None");
    if ty == "NodePort" || ty == "LoadBalancer" {
        for port in spec["ports"].as_array_mut().into_iter().flatten() {
            if port["nodePort"].is_null() {
                port["nodePort"] = json!(FIRST_NODE_PORT + inner.node_ports);
                inner.node_ports += 1;
            }
        }
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    for port in spec["ports"].as_array_mut().into_iter().flatten() {
        if port["protocol"].is_null() {
            port["protocol"] = json!("TCP");
        }
        if port["targetPort"].is_null() {
            port["targetPort"] = port["port"].clone();
        }
    }
}
