//! `kubepulse agent` processes whose burst key file is missing or malformed
//! (the Secret not created yet, or created wrong): each starts, becomes
//! ready, runs its latency probes and no bursts, warns once with the remedy
//! and exports `kubepulse_burst_key_state`; once the file holds a key it
//! bursts without a restart and says so once.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubepulse_testkit::process::{Kubepulse, Logs};
use kubepulse_testkit::scrape::{self, Scrape};
use serde_json::Value;

use super::agent_process::{agent_config, kept, temp, write};

/// What the warning tells an operator to run (the Secret the manifests in
/// deploy/ mount, its data key the file name).
const CREATE: &str = "kubectl -n kubepulse create secret generic kubepulse-burst-key \
                      --from-literal=burst.key=$(openssl rand -hex 32)";
const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Only the burst key code logs at info; everything else at warn.
const LOG_FILTER: (&str, &str) = ("RUST_LOG", "warn,kubepulse::auth=info");

/// The bandwidth slot: with 2 s the burst guard leaves about half of the
/// latency samples (with 1 s its windows, from the slot's start and its
/// middle, would cover nearly all).
const SLOT_SECS: u64 = 2;

/// An agent's config with a burst in every slot, the key file `key` and
/// JSON logs (one object per line, no colour codes).
fn config(name: &str, node: &str, ip: &str, peers: &[(&str, &str, &str)], key: &Path) -> String {
    let slots = format!(
        "  bandwidth: {{enabled: true, schedule: slots, duration: 100ms, \
         slots: {{slot: {SLOT_SECS}s, max_pairs: 1, duty_budget: 1.0}}}}\n"
    );
    let key_line = format!(
        "  burst_key_file: {}\nprobes:\n",
        key.to_str().expect("path")
    );
    let cfg = agent_config(name, node, ip, peers)
        .replace("  bandwidth: {enabled: false}\n", &slots)
        .replacen("probes:\n", &key_line, 1);
    format!("{cfg}log:\n  format: json\n")
}

fn start(cfg: &tempfile::NamedTempFile) -> (Kubepulse, Logs) {
    let path = cfg.path().to_str().expect("path");
    Kubepulse::start_logged(&["agent", "--config", path], &[LOG_FILTER])
}

/// Replaces the key file in one step, as the kubelet swaps a Secret's files.
fn put_key(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write key");
    std::fs::rename(&tmp, path).expect("move key into place");
}

/// Messages of the log lines at `level` that speak of bursts (the key's
/// warning and info, and any per-burst complaint that must not be there).
fn burst_lines(logs: &Logs, level: &str) -> Vec<String> {
    logs.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == level)
        .filter_map(|v| v["message"].as_str().map(str::to_string))
        .filter(|m| m.to_lowercase().contains("burst"))
        .collect()
}

/// The state whose `kubepulse_burst_key_state` series is 1, when exactly
/// one is and the other two are there at 0.
fn key_state(sc: &Scrape) -> Option<&'static str> {
    let mut on = None;
    for state in ["loaded", "missing", "invalid"] {
        match sc.try_sum("kubepulse_burst_key_state", &[("state", state)])? {
            1.0 if on.is_none() => on = Some(state),
            0.0 => {}
            _ => return None,
        }
    }
    on
}

fn assert_ready(kp: &Kubepulse) {
    let (status, body) = scrape::http_get(kp.metrics, "/readyz").expect("GET /readyz");
    assert_eq!(status, 200, "/readyz: {body}");
}

/// Polls `logs` until it has `n` burst lines at `level`; returns them.
fn wait_lines(logs: &Logs, level: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = burst_lines(logs, level);
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bursts the slot schedule gives `me` among `peers` in slots
/// `from..=to` (the schedule every agent follows).
fn scheduled(me: (&str, &str), peers: &[(&str, &str, &str)], from: u64, to: u64) -> usize {
    use kubepulse::peer::{AgentKind, Identity, Peer, ProbePorts};
    use kubepulse::schedule::slots::{my_bursts, SlotConfig};
    let cfg = SlotConfig {
        slot: Duration::from_secs(SLOT_SECS),
        max_pairs: 1,
        duty_budget: 1.0,
    };
    let me = Identity {
        name: me.0.into(),
        node: me.1.into(),
        kind: AgentKind::Pod,
    };
    let peers: Vec<Peer> = peers
        .iter()
        .map(|(name, node, ip)| Peer {
            name: (*name).into(),
            address: ip.parse().expect("ip"),
            node: (*node).into(),
            kind: AgentKind::Pod,
            ports: ProbePorts::default(),
            path: None,
        })
        .collect();
    (from..=to)
        .filter(|s| !my_bursts(*s, &me, &peers, &cfg).is_empty())
        .count()
}

/// The current slot.
fn slot_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / SLOT_SECS
}

#[test]
fn agents_without_a_key_file_probe_latency_and_burst_once_it_appears() {
    let (a_ip, b_ip) = ("127.0.0.37", "127.0.0.38");
    let dir = tempfile::tempdir().expect("tempdir");
    // Where the kubelet would mount the Secret: nothing there yet.
    let key = dir.path().join("burst.key");
    let a_peers = [("b", "node-b", b_ip)];
    let b_peers = [("a", "node-a", a_ip)];
    let mut a_cfg = temp();
    write(&mut a_cfg, &config("a", "node-a", a_ip, &a_peers, &key));
    let mut b_cfg = temp();
    write(&mut b_cfg, &config("b", "node-b", b_ip, &b_peers, &key));
    let (a, a_log) = start(&a_cfg);
    let (b, b_log) = start(&b_cfg);
    let agents = [(&a, &a_log, "node-b"), (&b, &b_log, "node-a")];
    for (kp, _, _) in agents {
        assert_ready(kp);
    }

    // A window in which the schedule gives each agent bursts, while the
    // latency probes keep answering.
    let s0 = slot_now();
    let deadline = Duration::from_secs(30);
    for (kp, _, peer) in agents {
        let (sc, ok) = scrape::scrape_until(kp.metrics, deadline, |sc| {
            let s1 = slot_now();
            let due = scheduled(("a", "node-a"), &a_peers, s0 + 1, s1.saturating_sub(1)).min(
                scheduled(("b", "node-b"), &b_peers, s0 + 1, s1.saturating_sub(1)),
            );
            let icmp = sc.try_sum("kubepulse_icmp_socket_info", &[("mode", "unavailable")]);
            let latency = ["udp", "tcp", "icmp"].iter().all(|p| {
                // ICMP only where the agent could open a socket.
                (*p == "icmp" && icmp == Some(1.0))
                    || kept(sc, &[("protocol", p), ("peer_node", peer)]) >= Some(20.0)
            });
            due >= 2 && latency && key_state(sc) == Some("missing")
        });
        assert!(ok, "no latency or no missing key state:\n{}", sc.body);
        // No burst ran or failed, and none was even asked for.
        assert_eq!(sc.sum("kubepulse_bandwidth_bursts_total", &[]), 0.0);
        assert_eq!(
            sc.sum(
                "kubepulse_responder_rejected_total",
                &[("responder", "bandwidth")]
            ),
            0.0
        );
    }
    for (_, log, _) in agents {
        let warns = wait_lines(log, "WARN", 1);
        assert_eq!(warns.len(), 1, "one warning, not one per slot: {warns:#?}");
        let want = format!(
            "No burst key: burst key file {} does not exist.",
            key.display()
        );
        assert!(warns[0].starts_with(&want), "{}", warns[0]);
        assert!(
            warns[0].contains(&format!("create the Secret: {CREATE} (")),
            "{}",
            warns[0]
        );
        assert!(burst_lines(log, "INFO").is_empty());
    }

    // The Secret arrives: both agents take it up and burst, no restart.
    put_key(&key, &format!("{KEY_A}\n"));
    for (kp, log, _) in agents {
        let ok_sends = [("direction", "send"), ("outcome", "ok")];
        let (sc, ok) = scrape::scrape_until(kp.metrics, deadline, |sc| {
            key_state(sc) == Some("loaded")
                && sc.try_sum("kubepulse_bandwidth_bursts_total", &ok_sends) >= Some(1.0)
        });
        assert!(ok, "no bursts after the key appeared:\n{}", sc.body);
        // Both ends read the same file: no burst was refused.
        assert_eq!(
            sc.sum("kubepulse_bandwidth_bursts_total", &[("outcome", "error")]),
            0.0
        );
        let infos = wait_lines(log, "INFO", 1);
        assert_eq!(infos.len(), 1, "{infos:#?}");
        let want = format!(
            "Burst key loaded from {}: bandwidth bursts resume",
            key.display()
        );
        assert_eq!(infos[0], want);
        assert_eq!(burst_lines(log, "WARN").len(), 1);
    }
}

#[test]
fn an_agent_with_a_malformed_key_file_warns_once_per_problem() {
    let ip = "127.0.0.39";
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("burst.key");
    // A rotation gone wrong: the second key is not hex.
    put_key(&key, &format!("# rotating\n{KEY_A}\nzz\n"));
    let mut cfg = temp();
    write(&mut cfg, &config("c", "node-c", ip, &[], &key));
    let (c, log) = start(&cfg);
    assert_ready(&c);
    let deadline = Duration::from_secs(20);
    let (sc, ok) = scrape::scrape_until(c.metrics, deadline, |sc| key_state(sc) == Some("invalid"));
    assert!(ok, "{}", sc.body);
    let warns = wait_lines(&log, "WARN", 1);
    assert_eq!(warns.len(), 1, "{warns:#?}");
    assert!(
        warns[0].starts_with(&format!(
            "No burst key: burst key file {}, line 3: not hex.",
            key.display()
        )),
        "{}",
        warns[0]
    );
    assert!(
        warns[0].contains(&format!(
            "replace the Secret: {CREATE} --dry-run=client -o yaml | kubectl replace -f -"
        )),
        "{}",
        warns[0]
    );

    // Fixed: loaded, one info line.
    put_key(&key, &format!("{KEY_A}\n"));
    let (sc, ok) = scrape::scrape_until(c.metrics, deadline, |sc| key_state(sc) == Some("loaded"));
    assert!(ok, "{}", sc.body);
    assert_eq!(wait_lines(&log, "INFO", 1).len(), 1);

    // Broken again, another way: a second warning, for the new problem.
    put_key(&key, "0011\n");
    let (sc, ok) = scrape::scrape_until(c.metrics, deadline, |sc| key_state(sc) == Some("invalid"));
    assert!(ok, "{}", sc.body);
    let warns = wait_lines(&log, "WARN", 2);
    assert_eq!(warns.len(), 2, "{warns:#?}");
    assert!(
        warns[1].contains("line 1: shorter than 32 bytes (64 hex digits)."),
        "{}",
        warns[1]
    );
    assert_eq!(burst_lines(&log, "INFO").len(), 1);
}
