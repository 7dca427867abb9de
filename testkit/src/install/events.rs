//! Events the lab's kubelet and controllers record, aggregated as the
//! apiserver's event correlator does: one Event per object, reason and
//! message, whose count grows (its timestamp refreshed at most every 10 s,
//! so a loop repeating a failure does not churn the store).

use k8s_openapi::api::core::v1::Event;
use serde_json::{json, Value};

use super::now;
use crate::apiserver::ApiServer;

/// Records a `Warning` event about `object`.
pub fn warn(server: &ApiServer, object: &Value, reason: &str, message: &str) {
    record(server, object, "Warning", reason, message);
}

/// Records a `Normal` event about `object`.
pub fn normal(server: &ApiServer, object: &Value, reason: &str, message: &str) {
    record(server, object, "Normal", reason, message);
}

fn record(server: &ApiServer, object: &Value, ty: &str, reason: &str, message: &str) {
    use std::hash::{Hash, Hasher};
    let meta = &object["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or("");
    let mut h = std::hash::DefaultHasher::new();
    (reason, message).hash(&mut h);
    let event_name = format!("{name}.{:012x}", h.finish() & 0xffff_ffff_ffff);
    let ts = now();
    if let Some(old) = server.get::<Event>(ns, &event_name) {
        let last = old["lastTimestamp"].as_str().unwrap_or("");
        if stale_by_10s(last, &ts) {
            server.modify::<Event>(ns, &event_name, |e| {
                e["count"] = json!(e["count"].as_u64().unwrap_or(1) + 1);
                e["lastTimestamp"] = json!(ts);
            });
        }
        return;
    }
    server.apply_value(
        "events",
        true,
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": {"apiVersion": object["apiVersion"], "kind": object["kind"],
                "name": name, "namespace": ns, "uid": meta["uid"]},
            "reason": reason, "message": message, "type": ty, "count": 1,
            "firstTimestamp": ts, "lastTimestamp": ts,
            "source": {"component": "kubepulse-lab"},
        }),
    );
}

/// Whether RFC 3339 second-resolution time `a` is at least 10 s before `b`.
fn stale_by_10s(a: &str, b: &str) -> bool {
    let parse = |s: &str| s.parse::<k8s_openapi::jiff::Timestamp>().ok();
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => b.as_second() - a.as_second() >= 10,
        _ => true,
    }
}

/// Every event about objects named `name` in `namespace`, as
/// `reason: message (xcount)` lines (for failure messages).
pub fn about(server: &ApiServer, namespace: &str, name: &str) -> Vec<String> {
    server
        .objects::<Event>(namespace)
        .iter()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| {
            format!(
                "{} {}: {} (x{})",
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(""),
                e["count"]
            )
        })
        .collect()
}
