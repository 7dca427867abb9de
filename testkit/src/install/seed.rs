//! The objects a fresh cluster holds before anything is installed
//! (namespaces, the `kubernetes` and `kube-dns` Services and their
//! EndpointSlices, the Nodes) and the heartbeats the nodes' kubelets and
//! the control plane keep renewing (Leases).

use std::net::Ipv4Addr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::cluster::{APISERVER, CLUSTER_DNS, DECOY_NODE, KUBERNETES_SERVICE};
use crate::apiserver::ApiServer;
use crate::lab::netlab::Lab;

/// The objects a fresh cluster has before anything is installed.
pub(super) fn seed(server: &ApiServer, lab: &Lab, nodes: &[String]) {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        server.apply_json::<Namespace>(json!({"metadata": {"name": ns,
            "labels": {"kubernetes.io/metadata.name": ns}}}));
    }
    let (kip, kport) = KUBERNETES_SERVICE;
    let (aip, aport) = APISERVER;
    server.apply_json::<Service>(
        json!({"metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": kip.to_string(), "clusterIPs": [kip.to_string()],
            "ports": [{"name": "https", "port": kport, "protocol": "TCP", "targetPort": aport}]}}),
    );
    server.apply_json::<EndpointSlice>(
        json!({"metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [aip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": aport, "protocol": "TCP"}]}),
    );
    server.apply_json::<Service>(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system",
        "labels": {"k8s-app": "kube-dns"}},
        "spec": {"type": "ClusterIP", "clusterIP": CLUSTER_DNS.to_string(), "clusterIPs": [CLUSTER_DNS.to_string()],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}));
    server.apply_json::<EndpointSlice>(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system",
        "labels": {"kubernetes.io/service-name": "kube-dns"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [aip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}));
    for (i, n) in nodes.iter().enumerate() {
        register_node(server, lab, i, n);
    }
    server.apply_json::<Node>(node_json(
        DECOY_NODE,
        json!({"kubernetes.io/hostname": DECOY_NODE, "kubernetes.io/os": "windows", "kubernetes.io/arch": "amd64"}),
        json!([{"key": "os", "value": "windows", "effect": "NoSchedule"}]),
        Ipv4Addr::new(10, 200, 0, 200),
        None,
    ));
    heartbeat(server);
}

/// The Node of lab machine `i`, named `name`: node 0 the control plane
/// (tainted), the others workers.
pub(super) fn register_node(server: &ApiServer, lab: &Lab, i: usize, name: &str) {
    let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64"});
    let mut taints = json!([]);
    if i == 0 {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        taints = json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
    }
    server.apply_json::<Node>(node_json(name, labels, taints, lab.host_ip(i), Some(i)));
}

pub(super) fn node_json(
    name: &str,
    labels: Value,
    taints: Value,
    ip: Ipv4Addr,
    pod_cidr: Option<usize>,
) -> Value {
    let mut spec = json!({"taints": taints});
    if let Some(i) = pod_cidr {
        spec["podCIDR"] = json!(format!("10.244.{i}.0/24"));
        spec["podCIDRs"] = json!([format!("10.244.{i}.0/24")]);
    }
    json!({"metadata": {"name": name, "labels": labels}, "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": super::now(),
                "lastTransitionTime": super::now()}],
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "v1.33.0", "containerRuntimeVersion": "podman://4.3.1",
                "operatingSystem": labels["kubernetes.io/os"], "architecture": "amd64",
                "osImage": "kubepulse lab", "kernelVersion": "", "kubeProxyVersion": "v1.33.0",
                "machineID": "", "systemUUID": "", "bootID": ""}}})
}

/// Renews every node's Lease (as each kubelet does every 10 s) and the
/// control-plane components' leader Leases.
pub(super) fn heartbeat(server: &ApiServer) {
    let now = micro_now();
    for n in server.all_objects::<Node>() {
        let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
        lease(server, "kube-node-lease", &name, &name, 40, &now);
    }
    for c in ["kube-scheduler", "kube-controller-manager"] {
        lease(server, "kube-system", c, &format!("node0_{c}"), 15, &now);
    }
}

pub(super) fn lease(server: &ApiServer, ns: &str, name: &str, holder: &str, secs: u64, now: &str) {
    let spec = json!({"holderIdentity": holder, "leaseDurationSeconds": secs, "renewTime": now});
    if server.get::<Lease>(ns, name).is_some() {
        server.modify::<Lease>(ns, name, |l| l["spec"] = spec);
    } else {
        server.apply_json::<Lease>(
            json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
    }
}

/// Now as a `metav1.MicroTime`.
pub(super) fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}
