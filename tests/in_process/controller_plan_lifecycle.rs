//! The plan publisher through a cluster's life, against the API test
//! server: a cordoned node, a node tainted for deletion by the autoscaler,
//! a Node object deleted while its agents remain, and a NotReady node are
//! marked in the plans of every node that probes them (and in their own),
//! and still probed; an agent pod that stops being Ready leaves every plan's
//! peers for the not-Ready list, and comes back when Ready again. Every
//! "no longer there" is read from the plan that shows the change's positive
//! side (the agent in the not-Ready list, the state gone from the lifecycle
//! the publisher rewrote), never after a fixed sleep.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kubepulse::controller::metrics::ControllerMetrics;
use kubepulse::controller::plan_publisher::PlanPublisher;
use kubepulse::peer::NodeState;
use kubepulse::plan::config_map::config_map_name;
use kubepulse::plan::NodePlan;
use kubepulse_testkit::apiserver::ApiServer;
use serde_json::{json, Value};

use super::controller_plan::{cluster, plans, run, series, settings, wait_for, NS};

/// Nodes in one zone: each probes 10 of the 11 others.
const NODES: usize = 12;

/// The plans that probe `node`, and its own.
fn concerning<'a>(plans: &'a BTreeMap<String, NodePlan>, node: &str) -> Vec<&'a NodePlan> {
    plans
        .values()
        .filter(|p| p.node == node || p.target_nodes.iter().any(|t| t == node))
        .collect()
}

/// Every plan that probes `node` (and its own, when it has one) satisfies
/// `ok`, and there are at least 3 probers.
fn all_concerning(server: &ApiServer, node: &str, ok: impl Fn(&NodePlan) -> bool) -> bool {
    let all = plans(server);
    let c = concerning(&all, node);
    c.iter().filter(|p| p.node != node).count() >= 3 && c.into_iter().all(ok)
}

fn state(p: &NodePlan, node: &str) -> Option<NodeState> {
    p.lifecycle.nodes.get(node).copied()
}

fn probes(p: &NodePlan, agent: &str) -> bool {
    p.peers.iter().any(|x| x.name == agent)
}

fn listed_not_ready(p: &NodePlan, agent: &str) -> bool {
    p.lifecycle.not_ready.iter().any(|x| x.name == agent)
}

fn set_conditions(v: &mut Value, conditions: Value) {
    v["status"]["conditions"] = conditions;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departures_and_unready_agents_are_marked_not_lost() {
    let server = ApiServer::start().await;
    cluster(&server, NODES, 1);
    let registry = prometheus::Registry::new();
    let metrics = ControllerMetrics::new(registry.clone()).expect("metrics");
    let p = run(
        PlanPublisher::new(server.client(), NS, settings(Duration::from_millis(100)))
            .with_metrics(metrics),
    );
    let gauge = |name: &str, labels: &[(&str, &str)]| series(&registry, name, labels);
    wait_for("a plan per node", || plans(&server).len() == NODES).await;
    for (name, plan) in plans(&server) {
        assert!(plan.lifecycle.is_empty(), "{name}: all ready");
        assert_eq!(plan.peers.len(), 2 * (1 + plan.target_nodes.len()));
    }
    assert_eq!(
        gauge("kubepulse_plan_nodes_by_state", &[("state", "ready")]),
        Some(NODES as f64)
    );
    assert_eq!(gauge("kubepulse_plan_agents_not_ready", &[]), Some(0.0));

    // Cordoned (a drain starts): marked in every plan that probes it, and
    // its agents still probed.
    server.edit::<Node>("", "n003", |v| v["spec"]["unschedulable"] = json!(true));
    wait_for("n003 cordoned in its probers' plans", || {
        all_concerning(&server, "n003", |p| {
            state(p, "n003") == Some(NodeState::Cordoned)
                && (p.node == "n003" || probes(p, "pod-n003") && probes(p, "host-n003"))
        })
    })
    .await;
    assert_eq!(
        gauge("kubepulse_plan_nodes_by_state", &[("state", "cordoned")]),
        Some(1.0)
    );

    // Tainted for deletion by the cluster autoscaler.
    server.edit::<Node>("", "n005", |v| {
        v["spec"]["taints"] = json!([{"key": "ToBeDeletedByClusterAutoscaler",
            "value": "1767225600", "effect": "NoSchedule"}]);
    });
    wait_for("n005 tainted for deletion in its probers' plans", || {
        all_concerning(&server, "n005", |p| {
            state(p, "n005") == Some(NodeState::DeletionTaint)
        })
    })
    .await;

    // The Node object goes while its agents remain: gone, still probed;
    // then the agents go too and the node leaves every plan.
    assert!(server.delete::<Node>("", "n007"));
    wait_for("n007 gone in its probers' plans", || {
        all_concerning(&server, "n007", |p| {
            state(p, "n007") == Some(NodeState::Gone) && (p.node == "n007" || probes(p, "pod-n007"))
        })
    })
    .await;
    assert!(server.delete::<Pod>(NS, "pod-n007"));
    assert!(server.delete::<Pod>(NS, "host-n007"));
    wait_for("n007 out of every plan", || {
        let all = plans(&server);
        !all.contains_key(&config_map_name("n007"))
            && all
                .values()
                .all(|p| !p.target_nodes.iter().any(|t| t == "n007") && state(p, "n007").is_none())
    })
    .await;

    // An agent stops being Ready: out of every plan's peers, listed and
    // counted as not Ready; the other agent of its node stays probed.
    server.edit::<Pod>(NS, "pod-n009", |v| {
        set_conditions(
            v,
            json!([{"type": "ContainersReady", "status": "False"},
            {"type": "Ready", "status": "False"}]),
        );
    });
    wait_for("pod-n009 listed as not Ready", || {
        all_concerning(&server, "n009", |p| listed_not_ready(p, "pod-n009"))
    })
    .await;
    for p in concerning(&plans(&server), "n009") {
        assert!(!probes(p, "pod-n009"), "{}: not Ready but probed", p.node);
        assert!(probes(p, "host-n009"), "{}: host agent dropped", p.node);
        assert_eq!(state(p, "n009"), None, "the node itself is fine");
    }
    wait_for("the controller counts it", || {
        gauge("kubepulse_plan_agents_not_ready", &[]) == Some(1.0)
    })
    .await;
    // Ready again: back in, off the list.
    server.edit::<Pod>(NS, "pod-n009", |v| {
        set_conditions(
            v,
            json!([{"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"}]),
        );
    });
    wait_for("pod-n009 probed again", || {
        all_concerning(&server, "n009", |p| {
            (p.node == "n009" || probes(p, "pod-n009")) && !listed_not_ready(p, "pod-n009")
        })
    })
    .await;

    // A NotReady node: the node lifecycle controller marks its pods not
    // Ready but their containers stay ready; they are still probed (do its
    // probers still reach it?) and the node is marked not_ready.
    server.edit::<Node>("", "n010", |v| {
        set_conditions(v, json!([{"type": "Ready", "status": "Unknown"}]));
    });
    for agent in ["pod-n010", "host-n010"] {
        server.edit::<Pod>(NS, agent, |v| {
            set_conditions(
                v,
                json!([{"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "False"}]),
            );
        });
    }
    wait_for("n010 not ready, still probed", || {
        all_concerning(&server, "n010", |p| {
            state(p, "n010") == Some(NodeState::NotReady)
                && (p.node == "n010" || probes(p, "pod-n010") && probes(p, "host-n010"))
                && !listed_not_ready(p, "pod-n010")
        })
    })
    .await;

    // Uncordoned: n003 is ready again everywhere, the others unchanged.
    server.edit::<Node>("", "n003", |v| v["spec"]["unschedulable"] = json!(false));
    wait_for("n003 ready again", || {
        plans(&server).values().all(|p| state(p, "n003").is_none())
    })
    .await;
    for p in concerning(&plans(&server), "n005") {
        assert_eq!(state(p, "n005"), Some(NodeState::DeletionTaint));
    }
    wait_for("the states counted", || {
        let by = |s: &str| gauge("kubepulse_plan_nodes_by_state", &[("state", s)]);
        by("ready") == Some((NODES - 3) as f64)
            && by("cordoned") == Some(0.0)
            && by("deletion_taint") == Some(1.0)
            && by("not_ready") == Some(1.0)
            && by("gone") == Some(0.0)
    })
    .await;
    p.stop().await;
}

/// A terminating agent (deletionTimestamp set, still Ready) leaves the
/// targets at once, and its replacement joins them only once Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_agent_is_probed_only_while_ready() {
    let server = ApiServer::start().await;
    cluster(&server, 6, 1);
    let p = run(PlanPublisher::new(
        server.client(),
        NS,
        settings(Duration::from_millis(100)),
    ));
    wait_for("a plan per node", || plans(&server).len() == 6).await;
    server.edit::<Pod>(NS, "pod-n002", |v| {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    });
    // Its replacement, created and starting (Running, not Ready yet).
    let mut new = serde_json::to_value(super::controller_plan::pod(
        "pod2-n002",
        "n002",
        "10.2.2.1",
        false,
    ))
    .expect("pod json");
    set_conditions(&mut new, json!([{"type": "Ready", "status": "False"}]));
    server.apply_json::<Pod>(new);
    wait_for("both listed as not Ready", || {
        all_concerning(&server, "n002", |p| {
            listed_not_ready(p, "pod-n002") && listed_not_ready(p, "pod2-n002")
        })
    })
    .await;
    for p in concerning(&plans(&server), "n002") {
        assert!(
            !probes(p, "pod-n002") && !probes(p, "pod2-n002"),
            "{}",
            p.node
        );
    }
    server.edit::<Pod>(NS, "pod2-n002", |v| {
        set_conditions(v, json!([{"type": "Ready", "status": "True"}]));
    });
    assert!(server.delete::<Pod>(NS, "pod-n002"));
    wait_for("the replacement probed", || {
        all_concerning(&server, "n002", |p| {
            (p.node == "n002" || probes(p, "pod2-n002")) && p.lifecycle.not_ready.is_empty()
        })
    })
    .await;
    p.stop().await;
}
