//! The objects the controller creates (pure builders and checks).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, Container, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::label_keys::*;

/// Probe kind label value of startup pods.
pub(crate) const POD_STARTUP: &str = "pod-startup";
/// Probe kind label value of sampler ConfigMaps.
pub(crate) const SAMPLER: &str = "sampler";
/// The probe pod's only container.
pub(crate) const CONTAINER: &str = "pause";

/// Labels of a kubepulse object of `probe` kind created by run `run`.
pub(crate) fn labels(probe: &str, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (PROBE.to_string(), probe.to_string()),
        (RUN.to_string(), run.to_string()),
    ])
}

/// Label selector of everything kubepulse created.
pub(crate) fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}

/// A bare probe pod aimed at `target_node` through the scheduler: a
/// required node affinity on `kubernetes.io/hostname`, never `spec.nodeName`.
pub(crate) fn probe_pod(
    name: &str,
    run: &str,
    image: &str,
    target_node: &str,
    active_deadline: i64,
) -> Pod {
    let mut l = labels(POD_STARTUP, run);
    l.insert(PROBE_ID.to_string(), name.to_string());
    let tiny = BTreeMap::from([
        ("cpu".to_string(), Quantity("1m".into())),
        ("memory".to_string(), Quantity("8Mi".into())),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(l),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(image.to_string()),
                image_pull_policy: Some("IfNotPresent".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(tiny.clone()),
                    limits: Some(tiny),
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    run_as_user: Some(65535),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(active_deadline),
            termination_grace_period_seconds: Some(5),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec![target_node.to_string()]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether admission changed what the SLI assumes: one container with our
/// image and no init containers.
pub(crate) fn is_mutated(sent: &Pod, created: &Pod) -> bool {
    let (Some(a), Some(b)) = (&sent.spec, &created.spec) else {
        return true;
    };
    let images = |s: &PodSpec| {
        s.containers
            .iter()
            .map(|c| c.image.clone())
            .collect::<Vec<_>>()
    };
    images(a) != images(b) || b.init_containers.as_ref().is_some_and(|i| !i.is_empty())
}

/// The sampler's ConfigMap carrying write sequence number `seq`.
pub(crate) fn sampler_config_map(name: &str, run: &str, seq: u64) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels(SAMPLER, run)),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("seq".to_string(), seq.to_string())])),
        ..Default::default()
    }
}

/// The write sequence number a sampler ConfigMap carries.
pub(crate) fn sampler_seq(cm: &ConfigMap) -> Option<u64> {
    cm.data.as_ref()?.get("seq")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_pod_goes_through_the_scheduler() {
        let p = probe_pod(
            "kubepulse-startup-x-1",
            "run1",
            "img@sha256:0",
            "node-a",
            120,
        );
        let spec = p.spec.as_ref().expect("spec");
        assert!(spec.node_name.is_none());
        assert_eq!(spec.containers.len(), 1);
        assert!(spec.init_containers.is_none() && spec.volumes.is_none());
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let json = serde_json::to_value(&p).expect("json");
        let req = &json["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchExpressions"][0];
        assert_eq!(req["key"], "kubernetes.io/hostname");
        assert_eq!(req["values"][0], "node-a");
        let l = p.metadata.labels.as_ref().expect("labels");
        assert_eq!(l.get(RUN).map(String::as_str), Some("run1"));
        assert_eq!(
            l.get(PROBE_ID).map(String::as_str),
            Some("kubepulse-startup-x-1")
        );
    }

    #[test]
    fn mutation_is_detected() {
        let p = probe_pod("a", "r", "img", "n", 1);
        assert!(!is_mutated(&p, &p.clone()));
        let mut sidecar = p.clone();
        if let Some(s) = sidecar.spec.as_mut() {
            s.containers.push(Container {
                name: "proxy".into(),
                image: Some("proxy".into()),
                ..Default::default()
            });
        }
        assert!(is_mutated(&p, &sidecar));
        let mut init = p.clone();
        if let Some(s) = init.spec.as_mut() {
            s.init_containers = Some(vec![Container::default()]);
        }
        assert!(is_mutated(&p, &init));
    }

    #[test]
    fn sampler_seq_round_trips() {
        let cm = sampler_config_map("s", "r", 42);
        assert_eq!(sampler_seq(&cm), Some(42));
    }
}
