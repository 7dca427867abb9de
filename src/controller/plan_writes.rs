//! What a plan publication writes, and what it may then record as written:
//! pure bookkeeping, separate from the ConfigMap IO in
//! [`super::plan_publisher`]. Only a write that succeeded is recorded, so a
//! failed one is found different again, and retried, at the next pass.

use std::collections::BTreeMap;

use super::metrics::PlanOp;

/// One ConfigMap operation of a publication; `D` is what a ConfigMap
/// holds (its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlanWrite<D> {
    /// Apply this plan under this ConfigMap name.
    Apply {
        /// ConfigMap name.
        name: String,
        /// What the ConfigMap holds.
        data: D,
    },
    /// Delete the plan of a node that left.
    Delete {
        /// ConfigMap name.
        name: String,
    },
}

impl<D> PlanWrite<D> {
    /// Its `op` label.
    pub(crate) fn op(&self) -> PlanOp {
        match self {
            PlanWrite::Apply { .. } => PlanOp::Apply,
            PlanWrite::Delete { .. } => PlanOp::Delete,
        }
    }

    /// The ConfigMap it acts on.
    pub(crate) fn name(&self) -> &str {
        match self {
            PlanWrite::Apply { name, .. } | PlanWrite::Delete { name } => name,
        }
    }
}

/// The writes that turn `written` into `want`: applies of new or changed
/// plans, then deletes of plans no longer wanted.
pub(crate) fn writes<D: Clone + PartialEq>(
    want: &BTreeMap<String, D>,
    written: &BTreeMap<String, D>,
) -> Vec<PlanWrite<D>> {
    let applies = want
        .iter()
        .filter(|(name, data)| written.get(*name) != Some(*data))
        .map(|(name, data)| PlanWrite::Apply {
            name: name.clone(),
            data: data.clone(),
        });
    let deletes = written
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|name| PlanWrite::Delete { name: name.clone() });
    applies.chain(deletes).collect()
}

/// Records a write that succeeded.
pub(crate) fn record<D>(written: &mut BTreeMap<String, D>, done: PlanWrite<D>) {
    match done {
        PlanWrite::Apply { name, data } => {
            written.insert(name, data);
        }
        PlanWrite::Delete { name } => {
            written.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_differences_are_written() {
        let written = map(&[("a", "1"), ("b", "1"), ("gone", "1")]);
        let want = map(&[("a", "1"), ("b", "2"), ("new", "1")]);
        let w = writes(&want, &written);
        let names: Vec<(&str, PlanOp)> = w.iter().map(|w| (w.name(), w.op())).collect();
        assert_eq!(
            names,
            [
                ("b", PlanOp::Apply),
                ("new", PlanOp::Apply),
                ("gone", PlanOp::Delete)
            ]
        );
        assert!(writes(&want, &want).is_empty());
    }

    #[test]
    fn a_failed_write_is_retried_and_the_others_stand() {
        let mut written = map(&[("gone", "1")]);
        let want = map(&[("a", "1"), ("b", "1")]);
        // "a" and the delete succeed; "b" fails and is not recorded.
        for w in writes(&want, &written) {
            if w.name() != "b" {
                record(&mut written, w);
            }
        }
        assert_eq!(written, map(&[("a", "1")]));
        let again = writes(&want, &written);
        assert_eq!(
            again,
            [PlanWrite::Apply {
                name: "b".into(),
                data: "1".into()
            }]
        );
        for w in again {
            record(&mut written, w);
        }
        assert_eq!(written, want);
    }
}
