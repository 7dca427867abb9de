//! Keeps `docs/metrics.md`, the metric catalog and what the code really
//! exports in agreement.

use kubepulse_testkit::scrape;

use std::collections::{BTreeMap, BTreeSet};

use kubepulse::metrics::labels::{Direction, Protocol};

use kubepulse::metrics::{self, catalog, AgentMetrics};
use kubepulse::peer::Peer;
use kubepulse::peer::{AgentKind, NodeState, PathKind};

#[test]
fn docs_list_exactly_the_catalog() {
    let docs = scrape::doc_rows();
    for (section, defs) in catalog::SECTIONS {
        let rows = docs
            .get(*section)
            .unwrap_or_else(|| panic!("docs/metrics.md has no '{section}' section"));
        let documented: BTreeMap<_, _> = rows
            .iter()
            .map(|(n, k, l)| (n.clone(), (k.clone(), l.clone())))
            .collect();
        assert_eq!(documented.len(), rows.len(), "duplicate rows in {section}");
        for d in *defs {
            let (kind, labels) = documented.get(d.name).unwrap_or_else(|| {
                panic!(
                    "{} is exported but not in docs/metrics.md '{section}'",
                    d.name
                )
            });
            assert_eq!(kind, d.kind.as_str(), "{}: type", d.name);
            let code: Vec<String> = d.labels.iter().map(|s| s.to_string()).collect();
            assert_eq!(labels, &code, "{}: labels", d.name);
        }
        let code: BTreeSet<_> = defs.iter().map(|d| d.name.to_string()).collect();
        for name in documented.keys() {
            assert!(
                code.contains(name),
                "{name} is documented in '{section}' but not in the catalog"
            );
        }
    }
}

#[test]
fn a_real_scrape_is_fully_documented() {
    let registry = prometheus::Registry::new();
    metrics::register_process_metrics(&registry).expect("process metrics");
    let m = AgentMetrics::new(registry.clone()).expect("agent metrics");
    // Touch every family so it appears in the scrape.
    let peer = Peer {
        name: "b".into(),
        address: "127.0.0.1".parse().expect("ip"),
        node: "node-b".into(),
        kind: AgentKind::Pod,
        ports: Default::default(),
        path: None,
    };
    m.precreate_peer(PathKind::PodCrossNode, &peer.node, Protocol::ALL);
    m.set_path_mtu(PathKind::PodCrossNode, &peer.node, 1450, 1500);
    m.record_burst(
        PathKind::PodCrossNode,
        &peer.node,
        Direction::Send,
        1e8,
        0,
        1.0,
    );
    m.set_icmp_mode(kubepulse::metrics::labels::IcmpMode::Dgram);
    m.set_burst_key_state(kubepulse::auth::KeyState::Missing);
    m.clock_offset(PathKind::PodCrossNode, &peer.node)
        .expect("a live cross-node key has a clock offset")
        .set(0.001);
    m.set_expected_down(&BTreeMap::from([(peer.node.clone(), NodeState::Cordoned)]));

    let body = metrics::encode(&[&registry]).expect("encode");
    let sc = scrape::parse(&body);
    let required: Vec<_> = catalog::ALL
        .iter()
        .chain(catalog::PEER_LIFECYCLE)
        .copied()
        .collect();
    scrape::assert_documented(
        &sc,
        &["Agent metrics", "Peer lifecycle metrics", "Process metrics"],
        &[],
        &required,
    );
    let families = sc.family_labels();
    let docs = scrape::doc_rows();
    for (n, _, _) in docs.get("Process metrics").expect("section") {
        assert!(families.contains_key(n), "{n} documented but not exported");
    }
}
