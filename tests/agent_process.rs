//! `kubepulse agent` processes with static peers: a peer that goes away
//! shows up as loss, and its series disappear once it is removed from the
//! config (SIGHUP reload).

mod support;

use std::io::Write;
use std::time::Duration;

use support::process::{free_port, Kubepulse};
use support::scrape;

fn agent_config(name: &str, node: &str, addr: &str, peers: &[(&str, &str, &str)]) -> String {
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

fn write(f: &mut tempfile::NamedTempFile, text: &str) {
    let file = f.as_file_mut();
    file.set_len(0).expect("truncate");
    std::io::Seek::seek(file, std::io::SeekFrom::Start(0)).expect("seek");
    file.write_all(text.as_bytes()).expect("write");
    file.sync_all().expect("sync");
}

fn temp() -> tempfile::NamedTempFile {
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
        sc.sum("kubepulse_probe_replies_total", &udp_b) >= 5.0
    });
    assert!(ok, "a never got replies from b:\n{}", sc.body);
    let lost_before = sc.sum("kubepulse_probe_lost_total", &udp_b);

    // b disappears without a goodbye.
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5)).expect("b killed");
    let (sc, ok) = scrape::scrape_until(a.metrics, Duration::from_secs(30), |sc| {
        sc.sum("kubepulse_probe_lost_total", &udp_b) >= lost_before + 5.0
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
