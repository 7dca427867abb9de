//! Following the target set: which targets to drop and which to add.

use std::collections::HashSet;

use crate::peer::Target;

/// Targets to drop and to add to go from `current` to `new`.
pub(super) fn diff<'a>(
    current: impl Iterator<Item = &'a Target>,
    new: &[Target],
) -> (Vec<Target>, Vec<Target>) {
    let want: HashSet<&Target> = new.iter().collect();
    let have: HashSet<&Target> = current.collect();
    let removed = have
        .iter()
        .filter(|t| !want.contains(*t))
        .map(|t| (*t).clone())
        .collect();
    let mut seen = HashSet::new();
    let added = new
        .iter()
        .filter(|t| !have.contains(t) && seen.insert(*t))
        .cloned()
        .collect();
    (removed, added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{AgentKind, PathKind};
    use crate::peer::{Peer, ProbePorts};

    fn t(name: &str, port: u16) -> Target {
        Target {
            peer: Peer {
                name: name.into(),
                address: "127.0.0.1".parse().expect("ip"),
                node: name.into(),
                kind: AgentKind::Pod,
                ports: ProbePorts {
                    udp_echo: port,
                    ..ProbePorts::default()
                },
                path: None,
            },
            path: PathKind::PodCrossNode,
        }
    }

    #[test]
    fn diff_adds_removes_and_dedups() {
        let cur = [t("a", 1), t("b", 2)];
        // b moved to another port: a different target.
        let new = vec![t("a", 1), t("b", 3), t("c", 4), t("c", 4)];
        let (removed, added) = diff(cur.iter(), &new);
        assert_eq!(removed, vec![t("b", 2)]);
        assert_eq!(added, vec![t("b", 3), t("c", 4)]);
        let (removed, added) = diff(cur.iter(), &cur);
        assert!(removed.is_empty() && added.is_empty());
    }
}
