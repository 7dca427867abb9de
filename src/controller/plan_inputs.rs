//! Pure: from the watched Nodes, agent Pods and Service to every node's
//! published plan (ConfigMap name → plan JSON). No IO, unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};

use crate::discovery::kubernetes::facts;
use crate::peer::AgentKind;
use crate::peer::{Identity, Peer, ProbePorts};
use crate::plan::config_map::config_map_name;
use crate::plan::{self, node_plan, FanOut, NodePlan, PlanConfig, PlanNode};
use crate::schedule::slots::SlotConfig;

/// The nodes of the plan: every node with an agent pod (in any phase, so a
/// pod being replaced does not drop its node) plus `sticky` (nodes that had
/// one earlier and still exist); zones from the Node objects.
pub fn plan_nodes<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    sticky: &BTreeSet<String>,
) -> Vec<PlanNode> {
    let zones: BTreeMap<&str, &str> = nodes
        .into_iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            let zone = n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(plan::ZONE_LABEL))
                .map_or(plan::DEFAULT_ZONE, String::as_str);
            Some((name, zone))
        })
        .collect();
    let with_agents: BTreeSet<&str> = pods
        .into_iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .filter(|n| !n.is_empty())
        .chain(sticky.iter().map(String::as_str))
        .collect();
    with_agents
        .into_iter()
        .map(|n| PlanNode {
            name: n.to_string(),
            zone: zones.get(n).copied().unwrap_or(plan::DEFAULT_ZONE).into(),
        })
        .collect()
}

/// Everything the plans are computed from.
pub struct Inputs<'a> {
    /// The plan's nodes ([`plan_nodes`]).
    pub nodes: &'a [PlanNode],
    /// The agent pods.
    pub pods: &'a [&'a Pod],
    /// The agents' Service, if any.
    pub service: Option<&'a Service>,
    /// Fan-out settings.
    pub fan_out: &'a PlanConfig,
    /// Bandwidth slot settings.
    pub slots: &'a SlotConfig,
}

/// The computed plans, and the fan-out they came from.
pub struct Computed {
    /// The graph (for logs and the bench).
    pub fan: FanOut,
    /// Node → its plan.
    pub plans: BTreeMap<String, NodePlan>,
}

/// Computes every node's plan.
pub fn compute(i: &Inputs<'_>) -> Computed {
    let fan = plan::fanout::fan_out(i.nodes, i.fan_out);
    let bw = plan::bandwidth::schedule(&fan, i.slots);
    let mut agents: Vec<Peer> = Vec::new();
    let mut host_ips: BTreeMap<String, IpAddr> = BTreeMap::new();
    for f in i
        .pods
        .iter()
        .filter_map(|p| facts::pod_facts(p, ProbePorts::default()))
    {
        if let Some(ip) = f.host_ip {
            host_ips.insert(f.peer.node.clone(), ip);
        }
        agents.push(f.peer);
    }
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    agents.dedup_by(|a, b| a.name == b.name);
    let plans = node_plan::node_plans(&fan, &bw, &agents, i.slots, |node, targets| {
        let Some(svc) = i.service else {
            return Vec::new();
        };
        // The NodePort target is one of this node's target nodes, so the
        // Service adds no peer node of its own.
        let ips: BTreeMap<String, IpAddr> = targets
            .iter()
            .filter_map(|t| host_ips.get(t).map(|ip| (t.clone(), *ip)))
            .collect();
        let me = Identity {
            name: String::new(),
            node: node.to_string(),
            kind: AgentKind::Pod,
        };
        facts::service_peers(svc, &me, &ips, ProbePorts::default())
    });
    Computed { fan, plans }
}

/// ConfigMap name → JSON of every plan.
pub fn documents(plans: &BTreeMap<String, NodePlan>) -> BTreeMap<String, String> {
    plans
        .iter()
        .map(|(node, p)| (config_map_name(node), p.to_json()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::kubernetes::facts::tests::pod;

    fn node(name: &str, zone: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if let Some(z) = zone {
            n.metadata.labels = Some([(plan::ZONE_LABEL.to_string(), z.to_string())].into());
        }
        n
    }

    #[test]
    fn nodes_from_pods_with_zones_and_sticky() {
        let nodes = [
            node("a", Some("z1")),
            node("b", None),
            node("c", Some("z2")),
        ];
        let pods = [
            pod("pa", "a", "10.0.0.1", false),
            pod("pb", "b", "10.0.0.2", true),
        ];
        let sticky: BTreeSet<String> = ["c".to_string()].into();
        let got = plan_nodes(nodes.iter(), pods.iter(), &sticky);
        let want: Vec<(&str, &str)> = vec![("a", "z1"), ("b", ""), ("c", "z2")];
        let got: Vec<(&str, &str)> = got
            .iter()
            .map(|n| (n.name.as_str(), n.zone.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn plans_name_pods_and_services_per_node() {
        let pods = [
            pod("pa", "a", "10.0.0.1", false),
            pod("ha", "a", "192.168.0.1", true),
            pod("pb", "b", "10.0.0.2", false),
            pod("hb", "b", "192.168.0.2", true),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let nodes = plan_nodes(std::iter::empty(), pods.iter(), &BTreeSet::new());
        let c = compute(&Inputs {
            nodes: &nodes,
            pods: &refs,
            service: None,
            fan_out: &PlanConfig::default(),
            slots: &SlotConfig::default(),
        });
        let a = &c.plans["a"];
        assert_eq!(a.target_nodes, vec!["b".to_string()]);
        let names: BTreeSet<&str> = a.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ha", "hb", "pa", "pb"].into());
        let docs = documents(&c.plans);
        assert!(docs.contains_key("kubepulse-plan-a"));
        assert_eq!(
            NodePlan::from_json(&docs["kubepulse-plan-b"])
                .expect("json")
                .node,
            "b"
        );
    }
}
