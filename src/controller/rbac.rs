//! The one list of API permissions the controller uses. The chart's
//! `controller-rbac*.yaml` templates must grant exactly these (a test
//! compares them).

use crate::config::DEFAULT_LEASE_NAME;

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
    /// default, where the `kubernetes` Service lives (Role).
    DefaultNamespace,
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
        names: &[DEFAULT_LEASE_NAME],
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
    // The apiserver endpoints copied into every plan (the probe plan
    // publisher watches the `kubernetes` Service's EndpointSlices).
    Rule {
        place: Place::DefaultNamespace,
        group: "discovery.k8s.io",
        resource: "endpointslices",
        names: &[],
        verbs: &["list", "watch"],
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

/// [`grants`] for a controller whose Lease is named `lease_name`: the
/// name-restricted leader rule follows a renamed `leader.lease_name`.
pub fn grants_for(lease_name: &str) -> std::collections::BTreeSet<Grant> {
    grants()
        .into_iter()
        .map(|mut g| {
            if g.0 == Place::OwnNamespace && g.2 == "leases" && g.3 == [DEFAULT_LEASE_NAME] {
                g.3 = vec![lease_name.to_string()];
            }
            g
        })
        .collect()
}

/// One flattened grant: (place, group, resource, names, verb).
pub type Grant = (Place, String, String, Vec<String>, String);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_rule_follows_a_renamed_lease() {
        let renamed = grants_for("my-lease");
        let names = |g: &std::collections::BTreeSet<Grant>, verb: &str| -> Vec<Vec<String>> {
            g.iter()
                .filter(|x| x.0 == Place::OwnNamespace && x.2 == "leases" && x.4 == verb)
                .map(|x| x.3.clone())
                .collect()
        };
        assert_eq!(names(&renamed, "get"), vec![vec!["my-lease".to_string()]]);
        assert_eq!(
            names(&renamed, "update"),
            vec![vec!["my-lease".to_string()]]
        );
        // Create cannot be limited by name, so it is unchanged.
        assert_eq!(names(&renamed, "create"), vec![Vec::<String>::new()]);
        assert_eq!(grants_for(DEFAULT_LEASE_NAME), grants());
        assert_eq!(renamed.len(), grants().len());
    }
}
