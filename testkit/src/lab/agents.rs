//! Runs `kubepulse agent` processes inside lab namespaces with static peers
//! and scrapes their metrics from inside those namespaces.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::netlab::{poll, Lab};
use super::prom::{self, Scrape};

/// The log target of the agents' per-sample trace events.
pub use kubepulse::probe::latency::RTT_SAMPLES_TARGET as RTT_SAMPLES;

/// Port of every agent's `/metrics` (each agent has its own address).
pub const METRICS_PORT: u16 = 9477;

/// One agent of the lab.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Unique name.
    pub name: String,
    /// Netns it runs in.
    pub ns: String,
    /// Node name.
    pub node: String,
    /// "pod" or "host".
    pub kind: &'static str,
    /// Address it binds and is probed at.
    pub address: IpAddr,
}

impl AgentSpec {
    /// The hostNetwork agent of node `i`.
    pub fn host(lab: &Lab, i: usize) -> Self {
        Self {
            name: format!("host{i}"),
            ns: lab.host(i),
            node: lab.node_name(i),
            kind: "host",
            address: IpAddr::V4(lab.host_ip(i)),
        }
    }

    /// The agent of pod `j` on node `i`.
    pub fn pod(lab: &Lab, i: usize, j: usize) -> Self {
        Self {
            name: format!("pod{i}{j}"),
            ns: lab.pod(i, j),
            node: lab.node_name(i),
            kind: "pod",
            address: IpAddr::V4(lab.pod_ip(i, j)),
        }
    }

    /// Every agent of the lab: one per host, one per pod.
    pub fn all(lab: &Lab) -> Vec<Self> {
        let mut v = Vec::new();
        for i in 0..lab.spec.nodes {
            v.push(Self::host(lab, i));
            for j in 0..lab.spec.pods_per_node {
                v.push(Self::pod(lab, i, j));
            }
        }
        v
    }

    /// Where its `/metrics` listens.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, METRICS_PORT)
    }

    fn peer_json(&self) -> Value {
        json!({
            "name": self.name,
            "address": self.address.to_string(),
            "node": self.node,
            "kind": self.kind,
        })
    }
}

/// Probe settings for lab runs: fast latency probes, everything scheduled
/// off. Tests switch on what they assert.
pub fn fast_probes() -> Value {
    json!({
        "udp": {"interval": "20ms", "timeout": "500ms"},
        "tcp": {"interval": "20ms", "timeout": "500ms"},
        "icmp": {"interval": "20ms", "timeout": "500ms"},
        "tcp_connect": {"interval": "500ms", "timeout": "1s"},
        "http": {"interval": "1s", "timeout": "2s"},
        "pmtu": {"enabled": false},
        "bandwidth": {"enabled": false},
        "rtt_min_window": "2s",
    })
}

/// The kubepulse binary under test (`KUBEPULSE_BIN` overrides, to run the
/// lab against another build).
pub fn binary() -> PathBuf {
    crate::kubepulse_bin()
}

/// This run's bandwidth burst key, shared by every agent the test binary
/// starts (as a cluster's Secret is): one hex key, written once.
pub fn burst_key_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = crate::target_tmpdir().join(format!("lab-burst-key-{}", std::process::id()));
        let key: [u8; 32] = rand::random();
        std::fs::write(&path, format!("{}\n", hex::encode(key))).expect("write burst key");
        path
    })
    .clone()
}

/// One kept RTT sample from an agent's trace log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttSample {
    /// When it was logged, since the Unix epoch (the agents' and the
    /// test's clock: one machine).
    pub at: Duration,
    /// The round-trip time, ns.
    pub rtt_ns: u64,
}

/// Running agents; they die with the lab.
pub struct Agents {
    /// The agents, in start order.
    pub specs: Vec<AgentSpec>,
    /// Their pids.
    pub pids: Vec<u32>,
    dir: tempfile::TempDir,
}

impl Agents {
    /// Starts `probers` (each probing every agent of `peers` but itself)
    /// with `probes` settings, and waits until each serves `/readyz`.
    pub fn start(lab: &Lab, probers: &[AgentSpec], peers: &[AgentSpec], probes: &Value) -> Agents {
        Self::start_logging(lab, probers, peers, probes, &json!({"level": "info"}))
    }

    /// [`Agents::start`] with `log` as the agents' `log` settings (for
    /// example JSON with [`RTT_SAMPLES`] at trace, read back with
    /// [`Agents::rtt_samples`]).
    pub fn start_logging(
        lab: &Lab,
        probers: &[AgentSpec],
        peers: &[AgentSpec],
        probes: &Value,
        log: &Value,
    ) -> Agents {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pids = Vec::new();
        for a in probers {
            let cfg = json!({
                "agent": {
                    "name": a.name,
                    "node": a.node,
                    "kind": a.kind,
                    "bind_address": a.address.to_string(),
                    "metrics_listen": a.metrics_addr().to_string(),
                    "burst_key_file": burst_key_file(),
                },
                "probes": probes,
                "discovery": {
                    "mode": "static",
                    "peers": peers.iter().filter(|p| p.name != a.name).map(AgentSpec::peer_json).collect::<Vec<_>>(),
                },
                "log": log,
            });
            // JSON is YAML, and the loader picks the format by extension.
            let path = dir.path().join(format!("{}.yaml", a.name));
            std::fs::write(&path, cfg.to_string()).expect("write agent config");
            let log = dir.path().join(format!("{}.log", a.name));
            let bin = binary();
            // KUBEPULSE_LAB_AGENT_WRAPPER (e.g. "chrt -f 1") prefixes the
            // agent command, to try scheduling policies without a rebuild.
            let wrapper = std::env::var("KUBEPULSE_LAB_AGENT_WRAPPER").unwrap_or_default();
            let mut args: Vec<&str> = wrapper.split_whitespace().collect();
            args.extend([
                bin.to_str().expect("utf-8 binary path"),
                "agent",
                "--config",
                path.to_str().expect("utf-8 temp path"),
            ]);
            let pid = lab.spawn(&a.ns, &args, Some(&log));
            pids.push(pid);
        }
        let agents = Agents {
            specs: probers.to_vec(),
            pids,
            dir,
        };
        for (a, pid) in agents.specs.iter().zip(&agents.pids) {
            let addr = a.metrics_addr();
            let ready = poll(Duration::from_secs(20), Duration::from_millis(100), || {
                assert!(
                    lab.alive(*pid),
                    "agent {} exited: {}",
                    a.name,
                    agents.log(&a.name)
                );
                super::netlab::in_ns(&a.ns, move || prom::http_get(addr, "/readyz").ok())
            });
            assert!(
                ready.is_some(),
                "agent {} not ready: {}",
                a.name,
                agents.log(&a.name)
            );
        }
        agents
    }

    /// Stops every agent of this set (the lab would at its end anyway).
    pub fn stop(&self, lab: &Lab) {
        for pid in &self.pids {
            lab.kill(*pid);
        }
    }

    /// The log of agent `name` so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// How many bytes agent `name` has logged so far: a mark for
    /// [`Agents::rtt_samples`].
    pub fn log_len(&self, name: &str) -> u64 {
        std::fs::metadata(self.dir.path().join(format!("{name}.log"))).map_or(0, |m| m.len())
    }

    /// The kept samples agent `name` logged between the marks `from` and
    /// `to` ([`Agents::log_len`]) whose fields match every `(field, value)`
    /// of `matchers`, each with the time it was logged (its reply's
    /// arrival, within the agent's logging delay). The agent must log JSON
    /// with [`RTT_SAMPLES`] at trace; a line of that target without
    /// `rtt_ns` or a valid `timestamp` fails the test.
    pub fn rtt_samples(
        &self,
        name: &str,
        from: u64,
        to: u64,
        matchers: &[(&str, &str)],
    ) -> Vec<RttSample> {
        let bytes = std::fs::read(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("read {name}'s log: {e}"));
        let to = usize::try_from(to).unwrap_or(usize::MAX).min(bytes.len());
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(to);
        String::from_utf8_lossy(&bytes[from..to])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == RTT_SAMPLES)
            .filter(|v| matchers.iter().all(|(k, want)| v[*k] == *want))
            .map(|v| {
                let rtt_ns = v["rtt_ns"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{name}: RTT sample without rtt_ns: {v}"));
                let at = v["timestamp"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .unwrap_or_else(|| panic!("{name}: RTT sample without a timestamp: {v}"));
                RttSample { at, rtt_ns }
            })
            .collect()
    }

    /// The spec of agent `name`.
    pub fn spec(&self, name: &str) -> &AgentSpec {
        self.specs
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// Scrapes agent `name`.
    pub fn scrape(&self, name: &str) -> Scrape {
        let a = self.spec(name);
        prom::scrape(&a.ns, a.metrics_addr())
            .unwrap_or_else(|e| panic!("scrape {name}: {e}\n{}", self.log(name)))
    }

    /// Polls agent `name` until `f` accepts a scrape, or panics after
    /// `timeout` with `what`.
    pub fn wait_for<T>(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Scrape) -> Option<T>,
    ) -> T {
        let mut last = None;
        let got = poll(timeout, Duration::from_millis(250), || {
            let s = self.scrape(name);
            let r = f(&s);
            last = Some(s);
            r
        });
        got.unwrap_or_else(|| {
            let dump: Vec<String> = last
                .map(|s| {
                    s.samples
                        .iter()
                        .filter(|x| {
                            x.name.starts_with("kubepulse_") && !x.name.ends_with("_bucket")
                        })
                        .map(|x| format!("{} {:?} {}", x.name, x.labels, x.value))
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "{name}: timed out waiting for {what}\nlast scrape:\n{}\nlog:\n{}",
                dump.join("\n"),
                self.log(name)
            )
        })
    }
}
