//! `kubepulse agent` processes with static peers: a peer that goes away
//! shows up as loss, and its series disappear once it is removed from the
//! config (SIGHUP reload).

use std::io::Write;
use std::time::Duration;

use kubepulse_testkit::process::{free_port, Kubepulse};
use kubepulse_testkit::scrape;

pub(super) fn agent_config(
    name: &str,
    node: &str,
    addr: &str,
    peers: &[(&str, &str, &str)],
) -> String {
    let mut s = format!(
        "agent:\n  name: {name}\n  node: {node}\n  kind: pod\n  bind_address: {addr}\n  metrics_listen: 127.0.0.1:{port}\n\
         probes:\n  udp: {{interval: 50ms, timeout: 300ms}}\n  tcp: {{interval: 50ms, timeout: 300ms}}\n  icmp: {{interval: 50ms, timeout: 300ms}}\n\
         \x20 pmtu: {{enabled: false}}\n  bandwidth: {{enabled: false}}\n\
         discovery:\n  peers:\n",
        port = free_port()
    );
    for (n, node, a) in peers {
        s.push_str(&format!(
            "    - {{name: {n}, node: {node}, kind: pod, address: {a}}}\n"
        ));
    }
    if peers.is_empty() {
        s = s.replace("  peers:\n", "  peers: []\n");
    }
    s
}

pub(super) fn write(f: &mut tempfile::NamedTempFile, text: &str) {
    let file = f.as_file_mut();
    file.set_len(0).expect("truncate");
    std::io::Seek::seek(file, std::io::SeekFrom::Start(0)).expect("seek");
    file.write_all(text.as_bytes()).expect("write");
    file.sync_all().expect("sync");
}

pub(super) fn temp() -> tempfile::NamedTempFile {
    tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp")
}

#[test]
fn departed_peer_shows_loss_then_its_series_are_removed() {
    let (a_ip, b_ip) = ("127.0.0.31", "127.0.0.32");
    let mut a_cfg = temp();
    write(
        &mut a_cfg,
        &agent_config("a", "node-a", a_ip, &[("b", "node-b", b_ip)]),
    );
    let mut b_cfg = temp();
    write(
        &mut b_cfg,
        &agent_config("b", "node-b", b_ip, &[("a", "node-a", a_ip)]),
    );
    let mut a = Kubepulse::start(&["agent", "--config", a_cfg.path().to_str().expect("path")]);
    let mut b = Kubepulse::start(&["agent", "--config", b_cfg.path().to_str().expect("path")]);

    let udp_b = [("protocol", "udp"), ("peer_node", "node-b")];
    let (sc, ok) = scrape::scrape_until(a.metrics, Duration::from_secs(30), |sc| {
        kept(sc, &udp_b) >= Some(5.0)
    });
    assert!(ok, "a never got replies from b:\n{}", sc.body);
    let lost_before = sc.sum("kubepulse_probe_lost_total", &udp_b);

    // b disappears without a goodbye.
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5)).expect("b killed");
    let (sc, ok) = scrape::scrape_until(a.metrics, Duration::from_secs(30), |sc| {
        sc.try_sum("kubepulse_probe_lost_total", &udp_b) >= Some(lost_before + 5.0)
    });
    assert!(ok, "loss to the dead peer was not counted:\n{}", sc.body);

    // Remove b from a's config and reload: every series naming node-b goes.
    write(&mut a_cfg, &agent_config("a", "node-a", a_ip, &[]));
    a.signal("HUP");
    let (sc, ok) = scrape::scrape_until(a.metrics, Duration::from_secs(30), |sc| {
        sc.samples
            .iter()
            .all(|s| s.labels.get("peer_node").map(String::as_str) != Some("node-b"))
    });
    assert!(ok, "series of the removed peer remain:\n{}", sc.body);
    assert_eq!(
        sc.sum("kubepulse_peers", &[("path", "pod_cross_node")]),
        0.0
    );

    a.signal("TERM");
    let status = a
        .wait_exit(Duration::from_secs(10))
        .expect("a exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// The responder of agent b reports a wall clock 5 s ahead (a test hook
/// of the `testkit` build): a's NTP-style estimate of b's offset must be within the RTT/2
/// bound of 5 s, and b's estimate of a's clock must be within RTT/2 of 0.
#[test]
fn clock_offset_estimate_is_within_half_rtt_of_the_injected_offset() {
    let (a_ip, b_ip) = ("127.0.0.33", "127.0.0.34");
    let mut a_cfg = temp();
    write(
        &mut a_cfg,
        &agent_config("a", "node-a", a_ip, &[("b", "node-b", b_ip)]),
    );
    let mut b_cfg = temp();
    write(
        &mut b_cfg,
        &agent_config("b", "node-b", b_ip, &[("a", "node-a", a_ip)]),
    );
    let a = Kubepulse::start(&["agent", "--config", a_cfg.path().to_str().expect("path")]);
    // The test kit builds kubepulse with its `testkit` hooks: b's echo
    // responders report a clock 5 s ahead.
    let b = Kubepulse::start_with_env(
        &["agent", "--config", b_cfg.path().to_str().expect("path")],
        &[("KUBEPULSE_TEST_CLOCK_OFFSET", "5s")],
    );

    for (kp, peer, injected) in [(&a, "node-b", 5.0), (&b, "node-a", 0.0)] {
        let m = [("peer_node", peer)];
        let udp = [("protocol", "udp"), ("peer_node", peer)];
        let (sc, ok) = scrape::scrape_until(kp.metrics, Duration::from_secs(30), |sc| {
            !sc.select("kubepulse_peer_clock_offset_seconds", &m)
                .is_empty()
                && kept(sc, &udp) >= Some(5.0)
        });
        assert!(ok, "no clock offset estimate for {peer}:\n{}", sc.body);
        let offset = sc.sum("kubepulse_peer_clock_offset_seconds", &m);
        let rtt_min = sc.sum(
            "kubepulse_probe_rtt_min_seconds",
            &[("protocol", "udp"), ("peer_node", peer)],
        );
        assert!(rtt_min > 0.0, "rtt_min {rtt_min}");
        assert!(
            (offset - injected).abs() <= rtt_min / 2.0 + 1e-6,
            "{peer}: estimated {offset} s, injected {injected} s, bound rtt_min/2 = {} s",
            rtt_min / 2.0
        );
    }
}

/// Bandwidth on the slot schedule: each agent initiates bursts exactly in
/// the slots the shared schedule gives it (1 s slots, every slot a round).
#[test]
fn bandwidth_bursts_follow_the_slot_schedule() {
    use kubepulse::peer::AgentKind;
    use kubepulse::peer::{Identity, Peer, ProbePorts};
    use kubepulse::schedule::slots::{my_bursts, SlotConfig};
    use std::time::{SystemTime, UNIX_EPOCH};

    let (a_ip, b_ip) = ("127.0.0.35", "127.0.0.36");
    let slots = "  bandwidth: {enabled: true, schedule: slots, duration: 100ms, \
                 slots: {slot: 1s, max_pairs: 1, duty_budget: 1.0}}\n";
    // Both agents share this run's burst key, as a Secret would give them.
    let mut key = temp();
    write(
        &mut key,
        &format!("{}\n", hex::encode(rand::random::<[u8; 32]>())),
    );
    let key_line = format!(
        "  burst_key_file: {}\nprobes:\n",
        key.path().to_str().expect("path")
    );
    let with_slots = |cfg: String| {
        cfg.replace("  bandwidth: {enabled: false}\n", slots)
            .replacen("probes:\n", &key_line, 1)
    };
    let mut a_cfg = temp();
    write(
        &mut a_cfg,
        &with_slots(agent_config("a", "node-a", a_ip, &[("b", "node-b", b_ip)])),
    );
    let mut b_cfg = temp();
    write(
        &mut b_cfg,
        &with_slots(agent_config("b", "node-b", b_ip, &[("a", "node-a", a_ip)])),
    );
    let a = Kubepulse::start(&["agent", "--config", a_cfg.path().to_str().expect("path")]);
    let b = Kubepulse::start(&["agent", "--config", b_cfg.path().to_str().expect("path")]);

    let cfg = SlotConfig {
        slot: Duration::from_secs(1),
        max_pairs: 1,
        duty_budget: 1.0,
    };
    let slot_now = || cfg.slot_at(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock"));
    let peer = |name: &str, node: &str, ip: &str| Peer {
        name: name.into(),
        address: ip.parse().expect("ip"),
        node: node.into(),
        kind: AgentKind::Pod,
        ports: ProbePorts::default(),
        path: None,
    };
    let me = |name: &str, node: &str| Identity {
        name: name.into(),
        node: node.into(),
        kind: AgentKind::Pod,
    };
    let sends = |kp: &Kubepulse| {
        let (sc, _) = scrape::scrape_until(kp.metrics, Duration::from_secs(5), |_| true);
        sc.sum(
            "kubepulse_bandwidth_bursts_total",
            &[("direction", "send"), ("outcome", "ok")],
        )
    };
    // Let both agents settle, then count bursts over whole slots.
    std::thread::sleep(Duration::from_millis(1500));
    let (a0, b0, s0) = (sends(&a), sends(&b), slot_now());
    std::thread::sleep(Duration::from_secs(8));
    let (a1, b1, s1) = (sends(&a), sends(&b), slot_now());

    let count = |who: &Identity, peers: &[Peer], from: u64, to: u64| {
        (from..=to)
            .filter(|s| !my_bursts(*s, who, peers, &cfg).is_empty())
            .count() as f64
    };
    let a_peers = [peer("b", "node-b", b_ip)];
    let b_peers = [peer("a", "node-a", a_ip)];
    for (who, peers, got) in [
        (me("a", "node-a"), &a_peers, a1 - a0),
        (me("b", "node-b"), &b_peers, b1 - b0),
    ] {
        // Slots wholly inside the window must have run; slots at its edges
        // may or may not be counted.
        let at_least = count(&who, peers, s0 + 1, s1.saturating_sub(1));
        let at_most = count(&who, peers, s0, s1);
        assert!(
            got >= at_least && got <= at_most,
            "{}: {got} bursts, schedule says {at_least}..={at_most} in slots {s0}..={s1}",
            who.name
        );
    }
    // With 2 nodes and 1 pair per slot, exactly one node initiates per slot.
    assert!(
        a1 - a0 + b1 - b0 >= 5.0,
        "too few bursts: a {} b {}",
        a1 - a0,
        b1 - b0
    );
}

/// Probes answered: sent minus lost, `None` until both series exist.
pub(super) fn kept(sc: &scrape::Scrape, m: &[(&str, &str)]) -> Option<f64> {
    Some(
        sc.try_sum("kubepulse_probe_sent_total", m)?
            - sc.try_sum("kubepulse_probe_lost_total", m)?,
    )
}
