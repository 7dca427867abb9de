//! Pure: from the watched Nodes, agent Pods and Service to every node's
//! published plan (ConfigMap name → its data). No IO, unit-tested.
//!
//! Only agents that are Ready are probed (or, on a node that is not Ready,
//! those whose containers are: `facts::Readiness::probed`); the others are
//! listed in the plans' lifecycle as not Ready, beside every node that is
//! not `ready` (`super::node_lifecycle`). The agents' Service is probed
//! once it has a backend, a probed agent its selector picks
//! ([`service_served`]): until then kube-proxy refuses every probe through
//! it (no endpoints), which would read as loss on every node at install.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};

use super::node_lifecycle::NodeLifecycle;
use crate::discovery::kubernetes::facts;
use crate::peer::{AgentKind, NodeState};
use crate::peer::{Identity, Peer, ProbePorts};
use crate::plan::config_map::config_map_name;
use crate::plan::{
    self, node_plan, ClusterLifecycle, FanOut, NodePlan, NotReadyAgent, PlanConfig, PlanNode,
};
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
    /// Each plan node's lifecycle (`node_lifecycle::lifecycle`); a node
    /// missing here counts as ready.
    pub lifecycle: &'a BTreeMap<String, NodeLifecycle>,
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
    /// Agent pods on planned nodes that are not probed: not Ready, not
    /// running, or terminating.
    pub agents_not_ready: usize,
    /// Planned nodes by lifecycle state.
    pub states: BTreeMap<NodeState, usize>,
}

/// Computes every node's plan.
pub fn compute(i: &Inputs<'_>) -> Computed {
    let fan = plan::fanout::fan_out(i.nodes, i.fan_out);
    let bw = plan::bandwidth::schedule(&fan, i.slots);
    let node_ready = |n: &str| i.lifecycle.get(n).is_none_or(|l| l.ready);
    let mut agents: Vec<Peer> = Vec::new();
    let mut probed: Vec<&Pod> = Vec::new();
    let mut not_ready: Vec<NotReadyAgent> = Vec::new();
    let mut host_ips: BTreeMap<String, IpAddr> = BTreeMap::new();
    for pod in i.pods {
        let facts = facts::pod_facts(pod, ProbePorts::default());
        if let Some(f) = &facts {
            if let Some(ip) = f.host_ip {
                host_ips.insert(f.peer.node.clone(), ip);
            }
        }
        match facts {
            Some(f) if f.readiness.probed(node_ready(&f.peer.node)) => {
                agents.push(f.peer);
                probed.push(pod);
            }
            _ => not_ready.extend(facts::agent_identity(pod).map(|a| NotReadyAgent {
                name: a.name,
                node: a.node,
                kind: a.kind,
            })),
        }
    }
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    agents.dedup_by(|a, b| a.name == b.name);
    not_ready.sort();
    not_ready.dedup();
    let cluster = ClusterLifecycle::new(
        i.lifecycle.iter().map(|(n, l)| (n.as_str(), l.state)),
        &not_ready,
    );
    let mut states: BTreeMap<NodeState, usize> = BTreeMap::new();
    for n in i.nodes {
        let s = i
            .lifecycle
            .get(&n.name)
            .map_or(NodeState::Ready, |l| l.state);
        *states.entry(s).or_default() += 1;
    }
    let service = i.service.filter(|svc| service_served(svc, &probed));
    let plans = node_plan::node_plans(&fan, &bw, &agents, &cluster, i.slots, |node, targets| {
        let Some(svc) = service else {
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
    Computed {
        fan,
        plans,
        agents_not_ready: not_ready.len(),
        states,
    }
}

/// Whether `svc` has a backend among the `probed` agent pods: one its
/// selector matches. A Service without a selector (its endpoints managed
/// by hand) counts as served.
pub fn service_served(svc: &Service, probed: &[&Pod]) -> bool {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return true;
    };
    probed.iter().any(|p| {
        let labels = p.metadata.labels.as_ref();
        selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    })
}

/// ConfigMap name → data of every plan ([`NodePlan::to_data`]).
pub fn documents(plans: &BTreeMap<String, NodePlan>) -> BTreeMap<String, BTreeMap<String, String>> {
    plans
        .iter()
        .map(|(node, p)| (config_map_name(node), p.to_data()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::node_lifecycle;
    use crate::discovery::kubernetes::facts::tests::{pod, with_conditions};
    use serde_json::json;

    fn node(name: &str, zone: Option<&str>) -> Node {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("node json");
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

    /// The plans of `nodes` running `pods`, lifecycle from the Node objects.
    fn computed(nodes: &[Node], pods: &[Pod]) -> Computed {
        computed_with(nodes, pods, None)
    }

    /// [`computed`] with the agents' Service.
    fn computed_with(nodes: &[Node], pods: &[Pod], service: Option<&Service>) -> Computed {
        let refs: Vec<&Pod> = pods.iter().collect();
        let planned = plan_nodes(nodes.iter(), pods.iter(), &BTreeSet::new());
        let lifecycle =
            node_lifecycle::lifecycle(nodes.iter(), planned.iter().map(|n| n.name.as_str()));
        compute(&Inputs {
            nodes: &planned,
            lifecycle: &lifecycle,
            pods: &refs,
            service,
            fan_out: &PlanConfig::default(),
            slots: &SlotConfig::default(),
        })
    }

    fn names(p: &NodePlan) -> BTreeSet<&str> {
        p.peers.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn plans_name_pods_and_services_per_node() {
        let pods = [
            pod("pa", "a", "10.0.0.1", false),
            pod("ha", "a", "192.168.0.1", true),
            pod("pb", "b", "10.0.0.2", false),
            pod("hb", "b", "192.168.0.2", true),
        ];
        let c = computed(&[node("a", None), node("b", None)], &pods);
        let a = &c.plans["a"];
        assert_eq!(a.target_nodes, vec!["b".to_string()]);
        assert_eq!(names(a), ["ha", "hb", "pa", "pb"].into());
        assert!(a.lifecycle.is_empty(), "all ready");
        assert_eq!(c.agents_not_ready, 0);
        assert_eq!(c.states, BTreeMap::from([(NodeState::Ready, 2)]));
        let docs = documents(&c.plans);
        let (b, bad) = NodePlan::from_data(&docs["kubepulse-plan-b"]).expect("data");
        assert!(bad.is_none());
        assert_eq!(b.node, "b");
    }

    /// The Service is probed once a Ready pod agent backs it: before, every
    /// probe through it is refused and would read as loss.
    #[test]
    fn the_service_is_probed_once_it_has_a_ready_backend() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "kubepulse-agent"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.100",
                "selector": {"kubepulse.io/network": "pod"},
                "ports": [{"name": "udp-echo", "port": 9478, "protocol": "UDP"}]}
        }))
        .expect("service json");
        let labelled = |mut p: Pod, network: &str| {
            p.metadata.labels =
                Some([("kubepulse.io/network".to_string(), network.to_string())].into());
            p
        };
        let nodes = [node("a", None), node("b", None)];
        let services = |c: &Computed| -> BTreeSet<String> {
            c.plans["a"]
                .peers
                .iter()
                .filter(|p| p.path.is_some())
                .map(|p| p.name.clone())
                .collect()
        };
        // The host agents are Ready, the pod agents (the backends) not yet.
        let mut pods = vec![
            labelled(
                with_conditions(pod("pa", "a", "10.0.0.1", false), false, false),
                "pod",
            ),
            labelled(
                with_conditions(pod("pb", "b", "10.0.0.2", false), false, false),
                "pod",
            ),
            labelled(pod("ha", "a", "192.168.0.1", true), "host"),
            labelled(pod("hb", "b", "192.168.0.2", true), "host"),
        ];
        let c = computed_with(&nodes, &pods, Some(&svc));
        assert!(services(&c).is_empty(), "{:?}", services(&c));
        // One backend Ready: the Service is probed.
        pods[1] = labelled(pod("pb", "b", "10.0.0.2", false), "pod");
        let c = computed_with(&nodes, &pods, Some(&svc));
        assert_eq!(
            services(&c),
            ["service-clusterip/kubepulse-agent".to_string()].into()
        );
        // Without a selector the endpoints are someone else's: probed.
        let mut manual = svc.clone();
        if let Some(s) = manual.spec.as_mut() {
            s.selector = None;
        }
        assert!(service_served(&manual, &[]));
        assert!(!service_served(&svc, &[]));
    }

    #[test]
    fn only_ready_agents_are_probed_and_the_rest_are_listed() {
        let pods = [
            pod("pa", "a", "10.0.0.1", false),
            // Failing its readiness probe.
            with_conditions(pod("pb", "b", "10.0.0.2", false), false, false),
            pod("hb", "b", "192.168.0.2", true),
            // Terminating, though still Ready.
            {
                let mut p = pod("pc", "c", "10.0.0.3", false);
                p.metadata.deletion_timestamp =
                    serde_json::from_value(json!("2026-01-01T00:00:00Z")).ok();
                p
            },
            // Pending, no address yet.
            {
                let mut p = pod("hc", "c", "192.168.0.3", true);
                if let Some(s) = p.status.as_mut() {
                    s.phase = Some("Pending".into());
                    s.pod_ip = None;
                    s.conditions = None;
                }
                p
            },
        ];
        let nodes = [node("a", None), node("b", None), node("c", None)];
        let c = computed(&nodes, &pods);
        let a = &c.plans["a"];
        assert_eq!(a.target_nodes, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(names(a), ["hb", "pa"].into());
        let left_out: Vec<(&str, &str, AgentKind)> = a
            .lifecycle
            .not_ready
            .iter()
            .map(|x| (x.name.as_str(), x.node.as_str(), x.kind))
            .collect();
        assert_eq!(
            left_out,
            [
                ("hc", "c", AgentKind::Host),
                ("pb", "b", AgentKind::Pod),
                ("pc", "c", AgentKind::Pod),
            ]
        );
        assert_eq!(c.agents_not_ready, 3);
        // Ready again: probed again, no longer listed.
        let mut pods = pods;
        pods[1] = pod("pb", "b", "10.0.0.2", false);
        let c = computed(&nodes, &pods);
        assert!(names(&c.plans["a"]).contains("pb"));
        assert!(!c.plans["a"]
            .lifecycle
            .not_ready
            .iter()
            .any(|x| x.name == "pb"));
    }

    #[test]
    fn departing_and_not_ready_nodes_are_marked_and_still_probed() {
        let mut cordoned = node("b", None);
        if let Some(s) = cordoned.spec.as_mut() {
            s.unschedulable = Some(true);
        } else {
            cordoned.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
                unschedulable: Some(true),
                ..Default::default()
            });
        }
        let mut not_ready = node("c", None);
        not_ready.status =
            serde_json::from_value(json!({"conditions": [{"type": "Ready", "status": "Unknown"}]}))
                .ok();
        let pods = [
            pod("pa", "a", "10.0.0.1", false),
            pod("pb", "b", "10.0.0.2", false),
            // Marked not Ready by the node lifecycle controller: still probed.
            with_conditions(pod("pc", "c", "10.0.0.3", false), false, true),
            // Its own containers not ready: not probed, NotReady node or not.
            with_conditions(pod("hc", "c", "192.168.0.3", true), false, false),
            // On a node whose Node object is gone.
            pod("pd", "d", "10.0.0.4", false),
        ];
        let c = computed(&[node("a", None), cordoned, not_ready], &pods);
        let a = &c.plans["a"];
        assert_eq!(names(a), ["pa", "pb", "pc", "pd"].into());
        assert_eq!(
            a.lifecycle.nodes,
            BTreeMap::from([
                ("b".to_string(), NodeState::Cordoned),
                ("c".to_string(), NodeState::NotReady),
                ("d".to_string(), NodeState::Gone),
            ])
        );
        assert_eq!(a.lifecycle.not_ready.len(), 1);
        assert_eq!(a.lifecycle.not_ready[0].name, "hc");
        // A node's own plan says its own state too.
        assert_eq!(c.plans["b"].lifecycle.nodes["b"], NodeState::Cordoned);
        assert_eq!(
            c.states,
            BTreeMap::from([
                (NodeState::Ready, 1),
                (NodeState::NotReady, 1),
                (NodeState::Cordoned, 1),
                (NodeState::Gone, 1),
            ])
        );
        // The ContainersReady exception is for NotReady nodes only.
        let mut pods = pods;
        pods[1] = with_conditions(pod("pb", "b", "10.0.0.2", false), false, true);
        let nodes = [node("a", None), node("b", None)];
        let c = computed(&nodes, &pods[..2]);
        assert_eq!(names(&c.plans["a"]), ["pa"].into());
    }
}
