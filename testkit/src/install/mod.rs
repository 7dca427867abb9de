//! The install lab: what kubepulse ships to a cluster (a [`Rendering`] of
//! the chart or the kustomizations), applied to an emulated cluster on the
//! network lab ([`cluster::Cluster`]) and run as shipped: the image CI
//! builds from `deploy/Dockerfile`, run by the lab kubelet with every pod
//! field either honoured or refused by name ([`fields::HONOURED`]).

pub mod cluster;
pub mod events;
pub mod fields;
pub mod ksm;
mod kubelet;
pub mod pod;
pub mod prometheus;
pub mod proxy;
pub mod rendering;
pub mod scheduling;
pub mod volumes;
mod workloads;

pub use cluster::{Cluster, ClusterSpec};
pub use rendering::Rendering;

use serde_json::json;

use crate::apiserver::ApiServer;
use k8s_openapi::api::core::v1::Pod;

/// Now as a `metav1.Time` (1 s resolution).
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Deletes a pod as the API does for a pod bound to a node: marked
/// terminating with its grace period (its kubelet stops it and removes the
/// object); an unbound pod goes at once.
pub fn delete_pod(server: &ApiServer, namespace: &str, name: &str) {
    let Some(p) = server.get::<Pod>(namespace, name) else {
        return;
    };
    if p["spec"]["nodeName"].is_null() {
        server.delete::<Pod>(namespace, name);
        return;
    }
    let grace = p["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    server.modify::<Pod>(namespace, name, |p| {
        if p["metadata"]["deletionTimestamp"].is_null() {
            p["metadata"]["deletionTimestamp"] = json!(now());
            p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
    });
}

/// The burst-key Secret the operator creates (`kubepulse-burst-key` in
/// `kubepulse`, key `burst.key`: one random 32-byte key in hex), until the
/// chart creates it.
pub fn burst_key_secret() -> serde_json::Value {
    use base64::Engine;
    let key: [u8; 32] = rand::random();
    let text = format!("{}\n", hex::encode(key));
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "kubepulse-burst-key", "namespace": "kubepulse"},
        "type": "Opaque",
        "data": {"burst.key": base64::engine::general_purpose::STANDARD.encode(text)}})
}
