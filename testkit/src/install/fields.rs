//! Which fields of a pod the lab kubelet honours: an allowlist of field
//! paths, checked against every pod before it runs. A field outside it is
//! refused by its path (`spec.containers[0].lifecycle`), never ignored.
//! Values the kubelet cannot honour (an exec probe, a Localhost seccomp
//! profile) are refused where they are read (`super::pod`).

use serde_json::Value;

/// The pod fields the lab kubelet acts on (or that only inform, like
/// `ports`), as paths: `[]` marks array elements, a trailing `*` admits
/// everything below (maps of user data such as labels).
pub const HONOURED: &[&str] = &[
    // Metadata: identity, ownership, user data.
    "apiVersion",
    "kind",
    "metadata.name",
    "metadata.generateName",
    "metadata.namespace",
    "metadata.uid",
    "metadata.resourceVersion",
    "metadata.creationTimestamp",
    "metadata.deletionTimestamp",
    "metadata.deletionGracePeriodSeconds",
    "metadata.generation",
    "metadata.labels.*",
    "metadata.annotations.*",
    "metadata.ownerReferences[].*",
    // Placement.
    "spec.nodeName",
    "spec.nodeSelector.*",
    "spec.schedulerName",
    "spec.tolerations[].key",
    "spec.tolerations[].operator",
    "spec.tolerations[].value",
    "spec.tolerations[].effect",
    "spec.tolerations[].tolerationSeconds",
    "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[].matchExpressions[].*",
    "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[].matchFields[].*",
    "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[].weight",
    "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[].preference.matchExpressions[].*",
    "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[].weight",
    "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[].podAffinityTerm.topologyKey",
    "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[].podAffinityTerm.labelSelector.matchLabels.*",
    "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[].podAffinityTerm.labelSelector.matchExpressions[].*",
    "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[].topologyKey",
    "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[].labelSelector.matchLabels.*",
    "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[].labelSelector.matchExpressions[].*",
    "spec.priorityClassName",
    "spec.priority",
    // Identity and API access.
    "spec.serviceAccountName",
    "spec.serviceAccount",
    "spec.automountServiceAccountToken",
    // Network.
    "spec.hostNetwork",
    "spec.dnsPolicy",
    "spec.enableServiceLinks",
    // Lifecycle.
    "spec.restartPolicy",
    "spec.terminationGracePeriodSeconds",
    // Pod security.
    "spec.securityContext.runAsNonRoot",
    "spec.securityContext.runAsUser",
    "spec.securityContext.runAsGroup",
    "spec.securityContext.fsGroup",
    "spec.securityContext.supplementalGroups[]",
    "spec.securityContext.seccompProfile.type",
    "spec.securityContext.sysctls[].name",
    "spec.securityContext.sysctls[].value",
    // Volumes.
    "spec.volumes[].name",
    "spec.volumes[].configMap.name",
    "spec.volumes[].configMap.optional",
    "spec.volumes[].configMap.defaultMode",
    "spec.volumes[].configMap.items[].key",
    "spec.volumes[].configMap.items[].path",
    "spec.volumes[].configMap.items[].mode",
    "spec.volumes[].secret.secretName",
    "spec.volumes[].secret.optional",
    "spec.volumes[].secret.defaultMode",
    "spec.volumes[].secret.items[].key",
    "spec.volumes[].secret.items[].path",
    "spec.volumes[].secret.items[].mode",
    "spec.volumes[].emptyDir.medium",
    "spec.volumes[].emptyDir.sizeLimit",
    "spec.volumes[].emptyDir",
    // Containers.
    "spec.containers[].name",
    "spec.containers[].image",
    "spec.containers[].imagePullPolicy",
    "spec.containers[].command[]",
    "spec.containers[].args[]",
    "spec.containers[].workingDir",
    "spec.containers[].env[].name",
    "spec.containers[].env[].value",
    "spec.containers[].env[].valueFrom.fieldRef.fieldPath",
    "spec.containers[].env[].valueFrom.fieldRef.apiVersion",
    "spec.containers[].env[].valueFrom.configMapKeyRef.name",
    "spec.containers[].env[].valueFrom.configMapKeyRef.key",
    "spec.containers[].env[].valueFrom.configMapKeyRef.optional",
    "spec.containers[].env[].valueFrom.secretKeyRef.name",
    "spec.containers[].env[].valueFrom.secretKeyRef.key",
    "spec.containers[].env[].valueFrom.secretKeyRef.optional",
    "spec.containers[].ports[].name",
    "spec.containers[].ports[].containerPort",
    "spec.containers[].ports[].protocol",
    "spec.containers[].ports[].hostPort",
    "spec.containers[].readinessProbe.*",
    "spec.containers[].livenessProbe.*",
    "spec.containers[].startupProbe.*",
    "spec.containers[].resources.requests.cpu",
    "spec.containers[].resources.requests.memory",
    "spec.containers[].resources.limits.cpu",
    "spec.containers[].resources.limits.memory",
    "spec.containers[].securityContext.allowPrivilegeEscalation",
    "spec.containers[].securityContext.readOnlyRootFilesystem",
    "spec.containers[].securityContext.runAsNonRoot",
    "spec.containers[].securityContext.runAsUser",
    "spec.containers[].securityContext.runAsGroup",
    "spec.containers[].securityContext.privileged",
    "spec.containers[].securityContext.capabilities.drop[]",
    "spec.containers[].securityContext.capabilities.add[]",
    "spec.containers[].securityContext.seccompProfile.type",
    "spec.containers[].volumeMounts[].name",
    "spec.containers[].volumeMounts[].mountPath",
    "spec.containers[].volumeMounts[].readOnly",
    "spec.containers[].terminationMessagePath",
    "spec.containers[].terminationMessagePolicy",
    // Status is the kubelet's own to write.
    "status.*",
];

/// Every field of `pod` outside [`HONOURED`], by its path with indices
/// (`spec.containers[0].lifecycle.preStop.exec.command[0]`).
pub fn refused(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(pod, "", "", &mut out);
    out
}

fn walk(v: &Value, norm: &str, real: &str, out: &mut Vec<String>) {
    if !norm.is_empty() && admitted_below(norm) {
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let join = |p: &str| {
                    if p.is_empty() {
                        k.clone()
                    } else {
                        format!("{p}.{k}")
                    }
                };
                walk(child, &join(norm), &join(real), out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, child) in a.iter().enumerate() {
                walk(child, &format!("{norm}[]"), &format!("{real}[{i}]"), out);
            }
        }
        // An empty list asks for nothing.
        Value::Array(_) => {}
        // A leaf, or an empty object (`emptyDir: {}`).
        _ => {
            if !HONOURED.contains(&norm) && !HONOURED.iter().any(|h| prefix_of(norm, h)) {
                out.push(real.to_string());
            }
        }
    }
}

/// Whether a `*` pattern admits everything below `norm`.
fn admitted_below(norm: &str) -> bool {
    HONOURED
        .iter()
        .filter_map(|h| h.strip_suffix(".*"))
        .any(|h| h == norm)
}

/// Whether `norm` (an empty object or array) leads to honoured fields.
fn prefix_of(norm: &str, pattern: &str) -> bool {
    pattern.len() > norm.len()
        && pattern.starts_with(norm)
        && matches!(pattern.as_bytes()[norm.len()], b'.' | b'[')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn honoured_fields_pass_and_others_are_named_with_their_indices() {
        let pod = json!({
            "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {
                "hostNetwork": true,
                "volumes": [{"name": "tmp", "emptyDir": {}}],
                "containers": [{
                    "name": "c", "image": "i", "args": ["agent"],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
                    "securityContext": {"capabilities": {"drop": ["ALL"]}},
                    "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
                }],
                "initContainers": [],
                "hostPID": true,
                "securityContext": {},
            },
            "status": {"phase": "Pending"},
        });
        assert_eq!(
            refused(&pod),
            vec![
                "spec.containers[0].lifecycle.preStop.exec.command[0]",
                "spec.containers[0].lifecycle.preStop.exec.command[1]",
                "spec.hostPID",
            ]
        );
    }
}
