//! Pure placement decisions of the lab's scheduler and DaemonSet
//! controller: whether a pod fits a node (nodeSelector, required node
//! affinity, taints against tolerations, an unschedulable node), the
//! tolerations the DaemonSet controller adds, and the preference score
//! (preferred node affinity and pod anti-affinity) among fitting nodes.

use serde_json::{json, Value};

/// Why a pod does not fit a node, as the scheduler would say it.
pub fn misfit(pod_spec: &Value, node: &Value) -> Option<String> {
    let labels = &node["metadata"]["labels"];
    if let Some(sel) = pod_spec["nodeSelector"].as_object() {
        for (k, v) in sel {
            if labels[k] != *v {
                return Some(format!(
                    "node(s) didn't match Pod's node selector ({k}={v})"
                ));
            }
        }
    }
    let terms = &pod_spec["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    if let Some(terms) = terms.as_array() {
        // Terms are ORed; the requirements of one term ANDed.
        if !terms.iter().any(|t| term_matches(t, node)) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if node["spec"]["unschedulable"] == true {
        taints.push(json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}));
    }
    let tolerations = pod_spec["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in &taints {
        let effect = t["effect"].as_str().unwrap_or("");
        if effect == "PreferNoSchedule" {
            continue;
        }
        if !tolerations.iter().any(|tol| tolerates(tol, t)) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or("")
            ));
        }
    }
    None
}

/// Whether a node matches one node selector term (an empty term matches
/// nothing).
fn term_matches(term: &Value, node: &Value) -> bool {
    let exprs: Vec<&Value> = term["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let fields: Vec<&Value> = term["matchFields"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let label = |k: &Value| {
        node["metadata"]["labels"][k.as_str().unwrap_or("")]
            .as_str()
            .map(String::from)
    };
    let field = |k: &Value| match k.as_str() {
        Some("metadata.name") => node["metadata"]["name"].as_str().map(String::from),
        _ => None,
    };
    exprs.iter().all(|e| requirement(e, label(&e["key"])))
        && fields.iter().all(|e| requirement(e, field(&e["key"])))
}

/// One `matchExpressions` requirement against a label (or field) value.
pub fn requirement(e: &Value, got: Option<String>) -> bool {
    let values: Vec<&str> = e["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let num = |s: &str| s.parse::<i64>().ok();
    match (e["operator"].as_str().unwrap_or(""), got.as_deref()) {
        ("In", Some(v)) => values.contains(&v),
        ("NotIn", v) => v.is_none_or(|v| !values.contains(&v)),
        ("Exists", v) => v.is_some(),
        ("DoesNotExist", v) => v.is_none(),
        ("Gt", Some(v)) => {
            matches!((num(v), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b)
        }
        ("Lt", Some(v)) => {
            matches!((num(v), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Whether toleration `tol` tolerates `taint`.
pub fn tolerates(tol: &Value, taint: &Value) -> bool {
    let effect_ok = tol["effect"]
        .as_str()
        .is_none_or(|e| e.is_empty() || Some(e) == taint["effect"].as_str());
    let key = tol["key"].as_str().unwrap_or("");
    let exists = tol["operator"] == "Exists";
    if key.is_empty() {
        // An empty key with Exists tolerates every taint.
        return exists && effect_ok;
    }
    let key_ok = Some(key) == taint["key"].as_str();
    let value_ok =
        exists || tol["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or("");
    effect_ok && key_ok && value_ok
}

/// The pod spec a DaemonSet controller creates for `node` from `template`
/// (a pod template's spec): the template's spec with the node affinity
/// that pins it there and the tolerations every DaemonSet pod gets.
pub fn daemonset_pod_spec(template: &Value, node: &str) -> Value {
    let mut spec = template.clone();
    let pin =
        json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]});
    let req =
        &mut spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    match req["nodeSelectorTerms"].as_array_mut() {
        // The controller replaces matchFields in every term.
        Some(terms) if !terms.is_empty() => {
            for t in terms {
                t["matchFields"] = pin["matchFields"].clone();
            }
        }
        _ => req["nodeSelectorTerms"] = json!([pin]),
    }
    let mut tols = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut add = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec["hostNetwork"] == true {
        add.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in add {
        if !tols
            .iter()
            .any(|t| t["key"] == key && t["effect"] == effect)
        {
            tols.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    }
    spec["tolerations"] = json!(tols);
    spec
}

/// Preference of `node` for a pod (higher is better): preferred node
/// affinity weights, minus the weights of preferred pod anti-affinity
/// terms matched by `pods_on_node` (the pods already on that node).
pub fn score(pod_spec: &Value, node: &Value, pods_on_node: &[&Value]) -> i64 {
    let mut s = 0;
    let prefs =
        &pod_spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    for p in prefs.as_array().into_iter().flatten() {
        if term_matches(&p["preference"], node) {
            s += p["weight"].as_i64().unwrap_or(0);
        }
    }
    let anti =
        &pod_spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    for a in anti.as_array().into_iter().flatten() {
        let term = &a["podAffinityTerm"];
        // Only per-node topology is modelled (each lab node its own
        // domain); other keys are refused by the kubelet's field check.
        if term["topologyKey"] == "kubernetes.io/hostname"
            && pods_on_node
                .iter()
                .any(|p| selector_matches(&term["labelSelector"], &p["metadata"]["labels"]))
        {
            s -= a["weight"].as_i64().unwrap_or(0);
        }
    }
    s
}

/// Whether a pod's required anti-affinity forbids `node` given the pods
/// already on it.
pub fn anti_affinity_forbids(pod_spec: &Value, pods_on_node: &[&Value]) -> bool {
    let req =
        &pod_spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    req.as_array().into_iter().flatten().any(|term| {
        pods_on_node
            .iter()
            .any(|p| selector_matches(&term["labelSelector"], &p["metadata"]["labels"]))
    })
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects
/// `labels`.
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let ml = selector["matchLabels"].as_object();
    let ml_ok = ml.is_none_or(|m| m.iter().all(|(k, v)| labels[k] == *v));
    let me_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            requirement(
                e,
                labels[e["key"].as_str().unwrap_or("")]
                    .as_str()
                    .map(String::from),
            )
        });
    ml_ok && me_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn node_selector_affinity_and_taints_decide_fit() {
        let linux = node("a", json!({"kubernetes.io/os": "linux"}), json!([]));
        let windows = node("b", json!({"kubernetes.io/os": "windows"}), json!([]));
        let tainted = node(
            "c",
            json!({"kubernetes.io/os": "linux"}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        let spec = json!({"nodeSelector": {"kubernetes.io/os": "linux"}});
        assert_eq!(misfit(&spec, &linux), None);
        assert!(misfit(&spec, &windows).is_some_and(|m| m.contains("node selector")));
        assert!(misfit(&spec, &tainted).is_some_and(|m| m.contains("dedicated")));
        let tolerant = json!({"tolerations": [{"operator": "Exists"}]});
        assert_eq!(misfit(&tolerant, &tainted), None);
        let exact =
            json!({"tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]});
        assert_eq!(misfit(&exact, &tainted), None);
        let wrong = json!({"tolerations": [{"key": "dedicated", "value": "cpu"}]});
        assert!(misfit(&wrong, &tainted).is_some());
        let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]}]}]}}}});
        assert_eq!(misfit(&affinity, &linux), None);
        let virt = node("v", json!({"type": "virtual-kubelet"}), json!([]));
        assert!(misfit(&affinity, &virt).is_some());
    }

    #[test]
    fn daemonset_pods_are_pinned_and_tolerate_node_conditions() {
        let spec = daemonset_pod_spec(&json!({"hostNetwork": true}), "node1");
        let a = node("node1", json!({}), json!([]));
        let b = node("node2", json!({}), json!([]));
        assert_eq!(misfit(&spec, &a), None);
        assert!(misfit(&spec, &b).is_some());
        let tols = spec["tolerations"].as_array().map_or(0, Vec::len);
        assert_eq!(tols, 7);
        let unsched = json!({"metadata": {"name": "node1"}, "spec": {"unschedulable": true}});
        assert_eq!(misfit(&spec, &unsched), None);
    }

    #[test]
    fn preferred_anti_affinity_spreads() {
        let spec = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
              "labelSelector": {"matchLabels": {"app": "c"}}}}]}}});
        let n = node("a", json!({}), json!([]));
        let other = json!({"metadata": {"labels": {"app": "c"}}});
        assert_eq!(score(&spec, &n, &[]), 0);
        assert_eq!(score(&spec, &n, &[&other]), -100);
    }
}
