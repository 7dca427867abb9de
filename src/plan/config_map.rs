//! How a node's plan is published: the ConfigMap the controller writes for
//! each node and the agent on that node watches, its name, label and data
//! key. Both sides take them from here.

use crate::schedule::rendezvous::stable_hash;

/// Prefix of a node's plan ConfigMap name.
pub const CONFIG_MAP_PREFIX: &str = "kubepulse-plan-";
/// Key of the plan JSON in the ConfigMap's data.
pub const DATA_KEY: &str = "plan.json";
/// Key of the plan's lifecycle JSON (`plan::lifecycle`) in the ConfigMap's
/// data: beside the plan rather than in it, so agents of the previous
/// version, which read only [`DATA_KEY`] and reject unknown fields there,
/// still read the plan.
pub const LIFECYCLE_KEY: &str = "lifecycle.json";
/// Label marking plan ConfigMaps (value [`PLAN_LABEL_VALUE`]).
pub const PLAN_LABEL: &str = "kubepulse.io/plan";
/// Value of [`PLAN_LABEL`].
pub const PLAN_LABEL_VALUE: &str = "node";

/// The ConfigMap holding `node`'s plan; node names longer than a ConfigMap
/// name allows are hashed (agents compute the same name).
pub fn config_map_name(node: &str) -> String {
    let name = format!("{CONFIG_MAP_PREFIX}{node}");
    if name.len() <= 253 {
        name
    } else {
        let h = stable_hash(&[node.as_bytes()]);
        format!("{CONFIG_MAP_PREFIX}{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_node_names_are_hashed() {
        let long = "n".repeat(300);
        let name = config_map_name(&long);
        assert!(name.len() <= 253 && name.starts_with(CONFIG_MAP_PREFIX));
        assert_eq!(name, config_map_name(&long));
        assert_eq!(config_map_name("node-1"), "kubepulse-plan-node-1");
    }
}
