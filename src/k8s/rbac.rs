//! The one list of API permissions the controller uses. `deploy/controller/
//! rbac.yaml` must grant exactly these (a test compares them).

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// The probe namespace (Role).
    ProbeNamespace,
    /// The controller's own namespace (Role).
    OwnNamespace,
    /// kube-node-lease (Role).
    NodeLease,
    /// kube-system (Role).
    KubeSystem,
    /// Cluster-wide (ClusterRole).
    Cluster,
}

/// One RBAC rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Where.
    pub place: Place,
    /// API group ("" is core).
    pub group: &'static str,
    /// Resource.
    pub resource: &'static str,
    /// Restricting object names (empty: any).
    pub names: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// Every permission, and why.
pub const RULES: &[Rule] = &[
    // Probe pods: watch before create, create, delete; the sweeper lists.
    Rule {
        place: Place::ProbeNamespace,
        group: "",
        resource: "pods",
        names: &[],
        verbs: &["create", "delete", "list", "watch"],
    },
    // Sampler cycle on its ConfigMap, plus its watch and the sweeper.
    Rule {
        place: Place::ProbeNamespace,
        group: "",
        resource: "configmaps",
        names: &[],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
    },
    // Pulling/Pulled events of probe pods.
    Rule {
        place: Place::ProbeNamespace,
        group: "",
        resource: "events",
        names: &[],
        verbs: &["list", "watch"],
    },
    // Leader election: create cannot be limited by name.
    Rule {
        place: Place::OwnNamespace,
        group: "coordination.k8s.io",
        resource: "leases",
        names: &[],
        verbs: &["create"],
    },
    Rule {
        place: Place::OwnNamespace,
        group: "coordination.k8s.io",
        resource: "leases",
        names: &["kubepulse-controller"],
        verbs: &["get", "update"],
    },
    // Probe plan publisher (agent namespace = own namespace): watches the
    // agent pods and their Service, applies one ConfigMap per node (an
    // apply that creates needs create too), lists them at leader start and
    // deletes those of departed nodes.
    Rule {
        place: Place::OwnNamespace,
        group: "",
        resource: "pods",
        names: &[],
        verbs: &["list", "watch"],
    },
    Rule {
        place: Place::OwnNamespace,
        group: "",
        resource: "services",
        names: &[],
        verbs: &["list", "watch"],
    },
    Rule {
        place: Place::OwnNamespace,
        group: "",
        resource: "configmaps",
        names: &[],
        verbs: &["create", "delete", "list", "patch"],
    },
    // Node heartbeats.
    Rule {
        place: Place::NodeLease,
        group: "coordination.k8s.io",
        resource: "leases",
        names: &[],
        verbs: &["list", "watch"],
    },
    // Control-plane leader Leases.
    Rule {
        place: Place::KubeSystem,
        group: "coordination.k8s.io",
        resource: "leases",
        names: &[],
        verbs: &["list", "watch"],
    },
    // Node readiness, probe targets and the plan's nodes and zones.
    Rule {
        place: Place::Cluster,
        group: "",
        resource: "nodes",
        names: &[],
        verbs: &["list", "watch"],
    },
    // The sampler's cluster-scope LIST.
    Rule {
        place: Place::Cluster,
        group: "",
        resource: "namespaces",
        names: &[],
        verbs: &["list"],
    },
];

/// Flattened (place, group, resource, names, verb) tuples, for comparisons.
pub fn grants() -> std::collections::BTreeSet<(Place, String, String, Vec<String>, String)> {
    RULES
        .iter()
        .flat_map(|r| {
            r.verbs.iter().map(move |v| {
                (
                    r.place,
                    r.group.to_string(),
                    r.resource.to_string(),
                    r.names.iter().map(|s| s.to_string()).collect(),
                    v.to_string(),
                )
            })
        })
        .collect()
}
