//! Per-resource behaviour the apiserver adds to plain storage: defaulting
//! and mutating admission on create, and graceful deletion of bound pods.

use serde_json::{json, Value};

use super::store::now;
use super::{Inner, Route};

/// Defaults, then the mutating "webhooks" registered for the resource.
pub(super) fn admit_create(inner: &Inner, route: &Route, obj: &mut Value) {
    if route.resource == "pods" && obj["status"]["phase"].is_null() {
        obj["status"]["phase"] = json!("Pending");
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
