//! A real Prometheus inside a lab namespace, scraping lab agents and
//! evaluating the REAL alerts/kubepulse-rules.yaml with test-time windows
//! ([`RuleTime`]: by default every `for:` 2s, `[5m]`/`[10m]` rate windows
//! 10s; thresholds and logic untouched), for the lab's alert tests; the firing set is keyed by every
//! label the alerts carry.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::http::percent_encode;
use crate::lab::agents::AgentSpec;
use crate::lab::netlab::{in_ns, poll, Lab};

/// Test-only `for:` of every alert.
const FOR: &str = "2s";
/// Test-only rate window replacing `[5m]` and `[10m]`.
const WINDOW: &str = "[10s]";
const PROM_PORT: u16 = 9090;
/// Labels that identify a firing alert in [`Prom::firing`].
const KEYS: &[&str] = &[
    "severity",
    "node",
    "peer_node",
    "path",
    "protocol",
    "network",
    "target",
];

/// Alerts about the machine an agent runs on rather than the network: the
/// lab's nodes (and a second lab beside them) share one 2-core machine, and
/// its agents run without CAP_SYS_NICE as the chart installs them, so their
/// sends run late whenever the machine is busy. Under
/// [`RuleTime::Scaled`] they keep production's `for:` and windows, which a
/// scenario of minutes cannot reach: the lab does not judge its own
/// machine (the rules' unit tests in `alerts/tests/` judge these alerts).
/// Seen: `KubepulseProbeSendsLate` firing in a 2-minute API server outage
/// at a thirtieth of its 30m `for:` on a busy machine.
pub const MACHINE_ALERTS: &[&str] = &["KubepulseProbeSendsLate"];

/// How the shipped rules' time is shortened for a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleTime {
    /// Every `for:` 2s, `[5m]` and `[10m]` windows 10s: an alert fires
    /// within seconds of its condition, for tests that inject a fault.
    Fast,
    /// Every `for:` and the `[5m]`/`[10m]` windows divided by this factor
    /// (`for:` and windows at least 2s and 10s): each
    /// alert keeps its design's tolerance relative to the others (a
    /// `for: 30m` still outlasts a blip a `for: 5m` pages on), for tests
    /// that judge a healthy cluster quiet. [`MACHINE_ALERTS`] keep
    /// production time.
    Scaled(u32),
    /// [`RuleTime::Scaled`], except the named alerts, which keep
    /// production's `for:` and windows: for a scenario that lasts a
    /// production duration (an agent crash-looping for 3 minutes), the
    /// alerts whose subject is that outage judge it at production time,
    /// while every other alert (the network's) judges its side effects at
    /// the shortened time, where they would show sooner.
    ScaledExcept(u32, &'static [&'static str]),
}

impl RuleTime {
    /// Whether `alert` (None in a recording rule) keeps production time.
    fn keeps(self, alert: Option<&str>) -> bool {
        match (self, alert) {
            (RuleTime::Fast, _) | (_, None) => false,
            (RuleTime::Scaled(_), Some(a)) => MACHINE_ALERTS.contains(&a),
            (RuleTime::ScaledExcept(_, kept), Some(a)) => {
                kept.contains(&a) || MACHINE_ALERTS.contains(&a)
            }
        }
    }

    /// The factor production time is divided by (None: [`RuleTime::Fast`]).
    fn factor(self) -> Option<u32> {
        match self {
            RuleTime::Fast => None,
            RuleTime::Scaled(k) | RuleTime::ScaledExcept(k, _) => Some(k),
        }
    }

    /// `for:` duration of `alert` replacing `prod`, e.g. "15m".
    fn for_of(self, alert: Option<&str>, prod: &str) -> String {
        if self.keeps(alert) {
            return prod.to_string();
        }
        match self.factor() {
            None => FOR.to_string(),
            Some(k) => {
                let secs = humantime::parse_duration(prod)
                    .unwrap_or_else(|e| panic!("for: {prod}: {e}"))
                    .as_secs();
                format!("{}s", (secs / u64::from(k)).max(2))
            }
        }
    }

    /// The rounds a pair must have sent before its loss is judged,
    /// replacing production's 360 (60 rounds of warm-up and a 5m window at
    /// one round a second): the same share of the shortened window.
    fn settle_rounds(self, prod: u32) -> u32 {
        match self.factor() {
            None => prod,
            Some(k) => (prod / k).max(1),
        }
    }

    /// Rate window of `alert` replacing `[5m]` or `[10m]`.
    fn window_of(self, alert: Option<&str>, minutes: u64) -> String {
        if self.keeps(alert) {
            return format!("[{minutes}m]");
        }
        match self.factor() {
            None => WINDOW.to_string(),
            Some(k) => format!("[{}s]", (minutes * 60 / u64::from(k)).max(10)),
        }
    }
}

/// The rules file with test-only `for:` and rate windows ([`RuleTime::Fast`]).
pub fn test_rules() -> String {
    rules_with(RuleTime::Fast)
}

/// The rules file with its time shortened as `time` says.
pub fn rules_with(time: RuleTime) -> String {
    let path = crate::repo_root().join("alerts/kubepulse-rules.yaml");
    let text = std::fs::read_to_string(path).expect("read alerts/kubepulse-rules.yaml");
    let mut fors = 0;
    let mut settles = 0;
    // The rule each line belongs to: an alert's name, None in a recording rule.
    let mut alert: Option<String> = None;
    let mut kept = BTreeSet::new();
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if let Some(name) = t.strip_prefix("- alert: ") {
                alert = Some(name.trim().to_string());
            } else if t.starts_with("- record: ") {
                alert = None;
            }
            let a = alert.as_deref();
            if time.keeps(a) {
                kept.insert(a.unwrap_or_default().to_string());
            }
            if let Some((head, rounds)) = t
                .strip_prefix(
                    "max by (cluster, node, peer_node, path) (kubepulse_probe_sent_total) >= ",
                )
                .map(|r| (&l[..l.len() - r.len()], r))
            {
                settles += 1;
                let prod: u32 = rounds.trim().parse().expect("settle rounds");
                format!("{head}{}", time.settle_rounds(prod))
            } else if let Some(prod) = t.strip_prefix("for: ") {
                fors += 1;
                format!(
                    "{}for: {}",
                    &l[..l.len() - t.len()],
                    time.for_of(a, prod.trim())
                )
            } else {
                l.replace("[5m]", &time.window_of(a, 5))
                    .replace("[10m]", &time.window_of(a, 10))
            }
        })
        .collect();
    // A kept alert that is not in the file (renamed) would be judged at
    // the shortened time unnoticed.
    let named: &[&str] = match time {
        RuleTime::ScaledExcept(_, names) => names,
        _ => &[],
    };
    if time.factor().is_some() {
        let missing: Vec<&&str> = named
            .iter()
            .chain(MACHINE_ALERTS)
            .filter(|n| !kept.contains(**n))
            .collect();
        assert!(
            missing.is_empty(),
            "no such alerts in the rules: {missing:?}"
        );
    }
    // A rules file whose `for:` lines moved (another indentation, a
    // template) would silently keep production delays.
    assert!(fors > 20, "expected every alert to have a for: ({fors})");
    // Nor may the settled-pairs rule keep production's rounds unnoticed.
    assert_eq!(
        settles, 1,
        "the settled-pairs rule (kubepulse_probe_sent_total >= N) moved"
    );
    out.join("\n") + "\n"
}

/// A Prometheus process inside a lab namespace.
pub struct Prom {
    ns: String,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prom {
    /// Starts Prometheus in node 0's host namespace, scraping every agent
    /// with the target labels the PodMonitor would set (`node`, `cluster`).
    pub fn start(lab: &Lab, agents: &[AgentSpec]) -> Prom {
        let mut targets = String::new();
        for a in agents {
            targets.push_str(&format!(
                "      - targets: ['{}']\n        labels: {{node: '{}', cluster: lab, pod: '{}'}}\n",
                a.metrics_addr(),
                a.node,
                a.name
            ));
        }
        let jobs = format!("  - job_name: kubepulse-agent\n    static_configs:\n{targets}");
        Self::start_with(lab, &jobs, "1s", &[])
    }

    /// Starts Prometheus in node 0's host namespace with the test rules,
    /// `scrape_configs` (YAML: the list's items, or `  []`), the global
    /// `scrape_interval` and `extra_args` on its command line.
    pub fn start_with(
        lab: &Lab,
        scrape_configs: &str,
        scrape_interval: &str,
        extra_args: &[&str],
    ) -> Prom {
        let bin = std::env::var("KUBEPULSE_PROMETHEUS").unwrap_or("/usr/bin/prometheus".into());
        Self::start_bin(
            lab,
            &bin,
            RuleTime::Fast,
            scrape_configs,
            scrape_interval,
            extra_args,
        )
    }

    /// [`Prom::start_with`] running the Prometheus binary `bin`, with the
    /// rules' time shortened as `time` says.
    pub fn start_bin(
        lab: &Lab,
        bin: &str,
        time: RuleTime,
        scrape_configs: &str,
        scrape_interval: &str,
        extra_args: &[&str],
    ) -> Prom {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("rules.yaml");
        std::fs::write(&rules, rules_with(time)).expect("write rules");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: {scrape_interval}\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n{scrape_configs}",
                rules.display()
            ),
        )
        .expect("write prometheus config");
        let ns = lab.host(0);
        let addr = SocketAddr::new(IpAddr::V4(lab.host_ip(0)), PROM_PORT);
        let args = [
            bin.to_string(),
            format!("--config.file={}", cfg.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".into(),
        ];
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra_args);
        let log = dir.path().join("prometheus.log");
        let pid = lab.spawn(&ns, &args, Some(&log));
        let prom = Prom { ns, addr, dir };
        let ready = poll(Duration::from_secs(30), Duration::from_millis(200), || {
            assert!(lab.alive(pid), "prometheus exited: {}", prom.log());
            prom.get("/-/ready").ok()
        });
        assert!(ready.is_some(), "prometheus not ready: {}", prom.log());
        // The transformed rules loaded.
        let rules = prom.get("/api/v1/rules").expect("rules API");
        assert!(
            rules.contains("KubepulsePathMTUBelowInterfaceMTU"),
            "rules not loaded: {}",
            prom.log()
        );
        prom
    }

    /// Every rule of the transformed file evaluated without error.
    pub fn assert_rules_healthy(&self) {
        let body = self.get("/api/v1/rules").expect("rules API");
        let v: serde_json::Value = serde_json::from_str(&body).expect("rules JSON");
        let mut bad = Vec::new();
        let mut n = 0;
        for g in v["data"]["groups"].as_array().expect("rule groups") {
            for r in g["rules"].as_array().expect("rules") {
                n += 1;
                if r["health"] != "ok" {
                    bad.push(format!("{} {}: {}", r["name"], r["health"], r["lastError"]));
                }
            }
        }
        assert!(n > 50, "only {n} rules loaded");
        assert!(bad.is_empty(), "rules not healthy: {bad:#?}");
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Where it listens (in node 0's namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn get(&self, target: &str) -> std::io::Result<String> {
        let addr = self.addr;
        let target = target.to_string();
        in_ns(&self.ns, move || crate::lab::prom::http_get(addr, &target))
    }

    /// A GET of Prometheus's API (`/api/v1/targets`, ...) as JSON.
    pub fn get_json(&self, target: &str) -> serde_json::Value {
        let body = self
            .get(target)
            .unwrap_or_else(|e| panic!("GET {target}: {e}\n{}", self.log()));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {target}: {e}: {body}"))
    }

    /// Prometheus's own metrics (`/metrics`: rule group iterations, ...).
    pub fn own_metrics(&self) -> crate::scrape::Scrape {
        let body = self
            .get("/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.log()));
        crate::scrape::parse(&body)
    }

    /// Instant query: every series as (labels, value).
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
        let body = self
            .get(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .unwrap_or_else(|e| panic!("query {expr}: {e}\n{}", self.log()));
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(v["status"], "success", "{expr}: {body}");
        v["data"]["result"]
            .as_array()
            .expect("vector result")
            .iter()
            .map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let val = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, val)
            })
            .collect()
    }

    /// Firing alerts as `Name{severity=..,node=..,...}` (the `KEYS`
    /// present, in that order).
    pub fn firing(&self) -> BTreeSet<String> {
        self.query("ALERTS{alertstate=\"firing\"}")
            .into_iter()
            .map(|(l, _)| {
                let get = |k: &str| l.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let keys: Vec<String> = KEYS
                    .iter()
                    .filter_map(|k| get(k).map(|v| format!("{k}={v}")))
                    .collect();
                format!(
                    "{}{{{}}}",
                    get("alertname").unwrap_or_default(),
                    keys.join(",")
                )
            })
            .collect()
    }

    /// Polls until the firing set is exactly `want` (panics with the last
    /// set and `debug`'s queries after `timeout`), then checks it holds for
    /// `hold`. Returns how long it took.
    pub fn expect_firing(
        &self,
        what: &str,
        want: &BTreeSet<String>,
        timeout: Duration,
        hold: Duration,
        debug: &[&str],
    ) -> Duration {
        let t0 = Instant::now();
        let mut last = BTreeSet::new();
        let got = poll(timeout, Duration::from_millis(500), || {
            last = self.firing();
            (last == *want).then_some(())
        });
        if got.is_none() {
            let dumps: Vec<String> = debug
                .iter()
                .map(|q| format!("{q}: {:?}", self.query(q)))
                .collect();
            panic!(
                "{what}: firing alerts never became exactly the expected set after {timeout:?}\n\
                 want: {want:#?}\nlast: {last:#?}\n{}",
                dumps.join("\n")
            );
        }
        let took = t0.elapsed();
        let end = Instant::now() + hold;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.firing();
            if &now != want {
                let dumps: Vec<String> = debug
                    .iter()
                    .map(|q| format!("{q}: {:?}", self.query(q)))
                    .collect();
                panic!(
                    "{what}: firing set changed during the hold\nwant: {want:#?}\nnow: {now:#?}\n{}",
                    dumps.join("\n")
                );
            }
        }
        eprintln!("{what}: exactly {want:?} firing after {took:.1?}, held {hold:?}");
        took
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of the rule named `alert` in `rules` (to the next rule).
    fn rule<'a>(rules: &'a str, alert: &str) -> Vec<&'a str> {
        let mut lines = rules
            .lines()
            .skip_while(|l| l.trim() != format!("- alert: {alert}"));
        let first = lines.next().unwrap_or_else(|| panic!("no alert {alert}"));
        std::iter::once(first)
            .chain(lines.take_while(|l| {
                let t = l.trim_start();
                !t.starts_with("- alert: ") && !t.starts_with("- record: ")
            }))
            .collect()
    }

    fn for_of(rules: &str, alert: &str) -> String {
        rule(rules, alert)
            .iter()
            .find_map(|l| l.trim().strip_prefix("for: ").map(str::to_string))
            .unwrap_or_else(|| panic!("no for: in {alert}"))
    }

    #[test]
    fn machine_alerts_keep_production_time_when_scaled_only() {
        for a in MACHINE_ALERTS {
            assert_eq!(for_of(&rules_with(RuleTime::Scaled(30)), a), "30m");
            assert_eq!(for_of(&rules_with(RuleTime::Fast), a), FOR);
        }
        assert_eq!(
            for_of(&rules_with(RuleTime::Scaled(30)), "KubepulseAgentDown"),
            "30s"
        );
    }

    #[test]
    fn kept_alerts_keep_production_time_and_the_others_are_scaled() {
        // The machine alert (KubepulseProbeSendsLate) is kept without
        // being named.
        const KEPT: &[&str] = &["KubepulseAgentDown"];
        let r = rules_with(RuleTime::ScaledExcept(30, KEPT));
        assert_eq!(for_of(&r, "KubepulseAgentDown"), "15m");
        assert_eq!(for_of(&r, "KubepulseProbeSendsLate"), "30m");
        assert!(
            rule(&r, "KubepulseProbeSendsLate")
                .iter()
                .any(|l| l.contains("[5m]") || l.contains("[10m]")),
            "the kept alert's own window is production's"
        );
        // Everything else at a thirtieth, recording rules included.
        assert_eq!(for_of(&r, "KubepulseAgentMissing"), "30s");
        assert_eq!(for_of(&r, "KubepulseNodeUnreachable"), "10s");
        let scaled = r
            .lines()
            .filter(|l| l.contains("[5m]") || l.contains("[10m]"))
            .count();
        let in_kept = rule(&r, "KubepulseProbeSendsLate")
            .iter()
            .filter(|l| l.contains("[5m]") || l.contains("[10m]"))
            .count();
        assert_eq!(
            scaled, in_kept,
            "a production window outside the kept alert"
        );
    }

    #[test]
    #[should_panic(expected = "no such alerts in the rules")]
    fn a_kept_alert_that_does_not_exist_is_refused() {
        rules_with(RuleTime::ScaledExcept(30, &["KubepulseNoSuchAlert"]));
    }
}
