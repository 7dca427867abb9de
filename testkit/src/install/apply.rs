//! Applying a rendering's objects through the API, as `kubectl apply`
//! creates them (admission and defaulting run): the kinds a rendering may
//! hold, by plural and scope.

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::Value;

/// The kind → (plural, namespaced) of every kind a rendering may hold;
/// anything else is refused by name.
pub(super) fn resource(kind: &str) -> (&'static str, bool) {
    match kind {
        "Namespace" => ("namespaces", false),
        "Node" => ("nodes", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "NetworkPolicy" => ("networkpolicies", true),
        "DaemonSet" => ("daemonsets", true),
        "Deployment" => ("deployments", true),
        "ResourceQuota" => ("resourcequotas", true),
        "LimitRange" => ("limitranges", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "PriorityClass" => ("priorityclasses", false),
        "PriorityLevelConfiguration" => ("prioritylevelconfigurations", false),
        "FlowSchema" => ("flowschemas", false),
        "PodMonitor" => ("podmonitors", true),
        "ServiceMonitor" => ("servicemonitors", true),
        "PrometheusRule" => ("prometheusrules", true),
        other => panic!(
            "the install lab does not know kind {other}: add it to install::cluster::resource"
        ),
    }
}

pub(super) fn namespaced(kind: &str) -> bool {
    resource(kind).1
}

pub(super) fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        plural: resource(kind).0.to_string(),
    }
}

pub(super) async fn create(client: &kube::Client, obj: &Value) {
    let kind = obj["kind"].as_str().unwrap_or("");
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let ar = api_resource(api_version, kind);
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let api: Api<DynamicObject> = if namespaced(kind) {
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let d: DynamicObject = serde_json::from_value(obj.clone())
        .unwrap_or_else(|e| panic!("{kind} is not an object: {e}"));
    api.create(&PostParams::default(), &d)
        .await
        .unwrap_or_else(|e| panic!("create {kind} {}: {e}", obj["metadata"]["name"]));
}
