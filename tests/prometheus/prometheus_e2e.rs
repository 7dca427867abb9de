//! End to end against a real Prometheus: `kubepulse local` and a `kubepulse
//! controller` (against the API test server of `kubepulse_testkit`, with the
//! simulated kubelet creating probe pods and the test renewing node Leases)
//! are scraped every second by a `prometheus` process that loads
//! `alerts/kubepulse-rules.yaml`; then every query of every dashboard panel,
//! every recording rule and every alert expression is sent to the query API.
//! All must parse, every rule must evaluate without error, and every
//! dashboard query and recording rule must return data (exceptions are
//! listed in [`NO_DATA`] with their reasons, and must return none). One
//! control-plane alert is driven end to end: node-b stamps its Lease renewals
//! 2 s ahead, so KubepulseNodeLeaseClockSkew must go pending for node-b only.
//!
//! Needs `/usr/bin/prometheus` (Debian package `prometheus`; `PROMETHEUS`
//! overrides the path). Run with `--nocapture` to see every query's value.

use kubepulse_testkit::http::percent_encode;
use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kubepulse_testkit::apiserver::ApiServer;
use kubepulse_testkit::kubelet::{Delays, Kubelet, Mode};

const PROBE_NS: &str = "kubepulse-probes";
const NODE_LEASE_NS: &str = "kube-node-lease";
const CP_LEASE_NS: &str = "kube-system";
/// node-b's clock in its Lease renewals, ahead of everyone's.
const NODE_B_AHEAD: Duration = Duration::from_secs(2);

/// Queries expected to return nothing, by origin (`record:NAME` or
/// `DASHBOARD_UID:PANEL TITLE`), with the reason. Local mode runs with
/// bandwidth bursts and short probe schedules (see [`write_agent_config`]) and
/// the controller with short intervals against the API test server (see
/// [`write_controller_config`]), so every metric of the catalog is produced;
/// only queries that exist solely under a fault are listed. A query listed
/// here must return no data, so the list cannot go stale.
const NO_DATA: &[(&str, &str)] = &[
    (
        "record:peer_node_path:kubepulse_probe_unreachable_sources:ratio",
        "a filter: it has a series only while a node is unreachable from several probers",
    ),
    (
        "record:peer_node_reason:kubepulse_peer_expected_down:max",
        "nodes expected down come from the controller's plans; local mode has none",
    ),
    (
        "record:peer_node_reason:kubepulse_peer_expected_down:max_over_time10m",
        "nodes expected down come from the controller's plans; local mode has none",
    ),
    (
        "record:node_reason:kubepulse_peer_expected_down:max_over_time10m",
        "nodes expected down come from the controller's plans; local mode has none",
    ),
    (
        "record:node_peer_node_path:kubepulse_probe_loss:ratio_rate5m_not_ready_peer",
        "pairs to NotReady nodes only; local mode has no lifecycle",
    ),
    (
        "record:peer_node_path:kubepulse_probe_lossy_sources:sum_not_ready",
        "NotReady nodes only; local mode has no lifecycle",
    ),
    (
        "record:peer_node_path:kubepulse_probe_lossy_sources:ratio_not_ready",
        "NotReady nodes only; local mode has no lifecycle",
    ),
    (
        "kubepulse-overview:Nodes expected down and why",
        "nodes expected down come from the controller's plans; local mode has none",
    ),
    (
        "kubepulse-nodes:Nodes expected down and why",
        "nodes expected down come from the controller's plans; local mode has none",
    ),
    (
        "kubepulse-nodes:Nodes expected down by reason",
        "nodes expected down come from the controller's plans; local mode has none",
    ),
    (
        "kubepulse-pod-startup:Leader election errors per hour",
        "shows only replicas with leader election errors (> 0); a healthy run has none",
    ),
];

/// Values of Grafana's variables in the queries sent: every template
/// variable matches everything (`=~".*"`).
const RATE_INTERVAL: &str = "10s";
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
const DATA_DEADLINE: Duration = Duration::from_secs(150);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed (and reaped) when dropped, so no test failure
/// leaves Prometheus or kubepulse behind.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name, child, log }
    }

    /// Panics with the log tail if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn prometheus_bin() -> PathBuf {
    let p = std::env::var_os("PROMETHEUS")
        .map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
    assert!(
        p.is_file(),
        "{} not found: install Debian's `prometheus` package (apt-get install prometheus) \
         or set PROMETHEUS",
        p.display()
    );
    p
}

/// GET through the kit's client; errors as text.
fn http_get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    kubepulse_testkit::http::get(addr, target).map_err(|e| e.to_string())
}

/// The outcome of an instant query.
enum Answer {
    /// Result series (or one scalar), summarised.
    Data(Vec<String>),
    /// Valid, but no series.
    Empty,
}

/// Sends an instant query; `Err` carries Prometheus' error (parse errors,
/// many-to-many matching, ...).
fn query(prom: SocketAddr, expr: &str) -> Result<Answer, String> {
    let (status, body) = http_get(
        prom,
        &format!("/api/v1/query?query={}", percent_encode(expr)),
    )?;
    let v: Json = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "{}: {}",
            v["errorType"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or("?")
        ));
    }
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => Ok(Answer::Data(vec![data["result"][1].to_string()])),
        _ => {
            let series = data["result"].as_array().cloned().unwrap_or_default();
            if series.is_empty() {
                return Ok(Answer::Empty);
            }
            Ok(Answer::Data(
                series
                    .iter()
                    .map(|s| {
                        let labels: Vec<String> = s["metric"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                    .collect()
                            })
                            .unwrap_or_default();
                        format!(
                            "{{{}}} {}",
                            labels.join(","),
                            s["value"][1].as_str().unwrap_or("?")
                        )
                    })
                    .collect(),
            ))
        }
    }
}

/// The value at the end of a summarised series (`{labels} value`) or scalar.
fn value_of(summary: &str) -> &str {
    summary.rsplit(' ').next().unwrap_or("").trim_matches('"')
}

/// Whether an answer holds at least one value that is a number, not NaN.
fn has_number(series: &[String]) -> bool {
    series
        .iter()
        .any(|s| value_of(s).parse::<f64>().is_ok_and(|v| !v.is_nan()))
}

/// One expression to send.
struct Query {
    /// `record:NAME`, `alert:NAME` or `DASHBOARD_UID:PANEL TITLE`.
    origin: String,
    /// Target refId for panels with several queries.
    part: String,
    expr: String,
    /// Must return data (false: parse only).
    needs_data: bool,
}

/// Replaces Grafana's variables the way Grafana would with "All" selected.
fn substitute(expr: &str, variables: &[String]) -> String {
    let mut e = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", "2s")
        .replace("$__range", "1m");
    // Longest names first so `$path` never eats the start of `$pathx`.
    let mut vars = variables.to_vec();
    vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in vars {
        e = e
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    e
}

fn queries() -> Vec<Query> {
    let mut out = Vec::new();
    let mut groups = Vec::new();
    // The optional alerts too (alerts that duplicate kubernetes-mixin's):
    // they read the recording rules of the main file.
    for file in [
        "alerts/kubepulse-rules.yaml",
        "alerts/kubepulse-mixin-duplicates.yaml",
    ] {
        let rules: Yaml =
            serde_yaml::from_str(&fs::read_to_string(root().join(file)).expect("rules file"))
                .expect("rules parse");
        groups.extend(rules["groups"].as_sequence().expect("groups").clone());
    }
    for g in &groups {
        for r in g["rules"].as_sequence().expect("rules") {
            let expr = r["expr"].as_str().expect("expr").to_string();
            if let Some(name) = r["record"].as_str() {
                out.push(Query {
                    origin: format!("record:{name}"),
                    part: String::new(),
                    expr,
                    needs_data: true,
                });
            } else {
                let name = r["alert"].as_str().expect("alert");
                let severity = r["labels"]["severity"].as_str().unwrap_or("");
                out.push(Query {
                    origin: format!("alert:{name}"),
                    part: severity.to_string(),
                    expr,
                    needs_data: false,
                });
            }
        }
    }
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("dashboards"))
        .expect("dashboards/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let d: Json =
            serde_json::from_str(&fs::read_to_string(&f).expect("dashboard")).expect("JSON");
        let uid = d["uid"].as_str().expect("uid");
        let vars: Vec<String> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        let mut panels: Vec<&Json> = Vec::new();
        for p in d["panels"].as_array().expect("panels") {
            panels.push(p);
            panels.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    origin: format!("{uid}:{}", p["title"].as_str().unwrap_or("?")),
                    part: t["refId"].as_str().unwrap_or("").to_string(),
                    expr: substitute(t["expr"].as_str().expect("expr"), &vars),
                    needs_data: true,
                });
            }
        }
    }
    for q in &mut out {
        if NO_DATA.iter().any(|(o, _)| *o == q.origin) {
            q.needs_data = false;
        }
    }
    out
}

/// The agents' config: short schedules so every scheduled probe reports
/// within the test (the latency probes every 100 ms, so pairs reach the 360
/// rounds after which the alerts judge them,
/// `node_peer_node_path:kubepulse_probe_sent:settled`, in 36 s), and
/// responder ports picked at random so a concurrent local mode (another
/// test run on the same machine) does not clash.
fn write_agent_config(dir: &Path, reach: &Reach) -> PathBuf {
    let (echo, bandwidth, http) = (free_port(), free_port(), free_port());
    let agent = dir.join("kubepulse.yaml");
    fs::write(
        &agent,
        format!(
            "agent:\n  ports: {{udp_echo: {echo}, tcp_echo: {echo}, bandwidth: {bandwidth}, http: {http}}}\n\
             probes:\n  udp: {{interval: 100ms, timeout: 1s}}\n  tcp: {{interval: 100ms, timeout: 1s}}\n  \
             icmp: {{interval: 100ms, timeout: 1s}}\n  \
             tcp_connect: {{interval: 1s, timeout: 1s}}\n  http: {{interval: 1s, timeout: 1s}}\n  \
             pmtu: {{interval: 5s}}\n  rtt_min_window: 10s\n  \
             bandwidth: {{interval: 5s, duration: 50ms}}\n  \
             dns: {{interval: 1s, timeout: 500ms, nameservers: [127.0.0.1], port: {dns}, \
             names: [kubernetes.default.svc.cluster.local]}}\n  \
             apiserver: {{interval: 1s, timeout: 1s, service: '127.0.0.1:{tls}', ca_file: '{ca}'}}\n",
            dns = reach.dns_port,
            tls = reach.tls_port,
            ca = reach.ca.display(),
        ),
    )
    .expect("write agent config");
    agent
}

/// Cluster DNS and an apiserver for local mode, on loopback: dnsmasq
/// answering the default probe name, openssl s_server serving `/livez`
/// with a certificate for `kubernetes.default.svc` from a CA made here.
struct Reach {
    dns_port: u16,
    tls_port: u16,
    ca: PathBuf,
    _procs: [Proc; 2],
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_reach(dir: &Path) -> Reach {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=e2e-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ];
    ca.extend(ec);
    openssl(dir, &ca);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=apiserver",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ];
    csr.extend(ec);
    openssl(dir, &csr);
    fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:kubernetes.default.svc\n",
    )
    .expect("write ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "tls.crt",
        ],
    );
    fs::write(dir.join("livez"), "ok").expect("write livez");
    let (dns, dns_port) = listening(
        "dnsmasq",
        dir,
        || {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("free UDP port")
                .port()
        },
        |port| {
            let mut c = Command::new("dnsmasq");
            c.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={port}"),
                &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
                "--address=/kubernetes.default.svc.cluster.local/10.96.0.1",
            ]);
            c
        },
        dns_answers,
    );
    let (tls, tls_port) = listening(
        "s_server",
        dir,
        free_port,
        |port| {
            let mut c = Command::new("openssl");
            c.current_dir(dir)
                .args([
                    "s_server", "-quiet", "-WWW", "-cert", "tls.crt", "-key", "tls.key", "-accept",
                ])
                .arg(format!("127.0.0.1:{port}"));
            c
        },
        |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    Reach {
        dns_port,
        tls_port,
        ca: dir.join("ca.crt"),
        _procs: [dns, tls],
    }
}

/// Starts `name` on a port `free` found free, and waits until `ready` says
/// it serves there. The port is free when found, not when the process
/// binds it (another test's socket may take it between): a process that
/// exits before it is ready is started again on another port. A reach
/// process that never answered made every DNS lookup fail in one full
/// `.ci/run`, and the DNS quantile had no data.
fn listening(
    name: &'static str,
    dir: &Path,
    free: impl Fn() -> u16,
    command: impl Fn(u16) -> Command,
    ready: impl Fn(u16) -> bool,
) -> (Proc, u16) {
    for _attempt in 0..5 {
        let port = free();
        let mut p = Proc::spawn(name, &mut command(port), dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = p.child.try_wait() {
                eprintln!("{name} on port {port} exited ({status}):\n{}", p.log_tail());
                break;
            }
            if ready(port) {
                return (p, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Exited: try another port. Running but not serving is no race.
        if matches!(p.child.try_wait(), Ok(None)) {
            panic!(
                "{name} runs on port {port} but did not serve within 10 s:\n{}",
                p.log_tail()
            );
        }
    }
    panic!("{name} never served on a free port in 5 attempts");
}

/// Whether a DNS server on 127.0.0.1:`port` answers the probe's name with
/// an address (a hand-made A query).
fn dns_answers(port: u16) -> bool {
    let mut q = vec![0x4b, 0x50, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in "kubernetes.default.svc.cluster.local".split('.') {
        q.push(u8::try_from(label.len()).expect("short label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let mut buf = [0u8; 512];
    s.set_read_timeout(Some(Duration::from_millis(200))).is_ok()
        && s.send_to(&q, ("127.0.0.1", port)).is_ok()
        && s.recv(&mut buf).is_ok_and(|n| {
            // Our id, a response, rcode 0, at least one answer.
            n >= 12
                && buf[..2] == q[..2]
                && buf[2] & 0x80 != 0
                && buf[3] & 0x0f == 0
                && u16::from_be_bytes([buf[6], buf[7]]) > 0
        })
}

/// The controller's config: every measurement every few hundred ms against
/// the API test server.
fn write_controller_config(dir: &Path, api_url: &str) -> PathBuf {
    let path = dir.join("controller.yaml");
    fs::write(
        &path,
        format!(
            "controller:\n  api_url: {api_url}\n  name: e2e\n  \
             pod_startup: {{interval: 500ms, timeout: 10s, delete_timeout: 5s, event_grace: 100ms, sweep_min_age: 0s}}\n  \
             sampler: {{interval: 500ms, max_qps: 50}}\n  \
             leader: {{lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms}}\n"
        ),
    )
    .expect("write controller config");
    path
}

fn node(name: &str) -> Json {
    json!({"metadata": {"name": name}, "spec": {},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn lease(namespace: &str, name: &str, holder: &str, renew: std::time::SystemTime) -> Json {
    let t = k8s_openapi::jiff::Timestamp::try_from(renew).expect("timestamp");
    let t = k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", t).expect("format");
    json!({"metadata": {"name": name, "namespace": namespace},
           "spec": {"holderIdentity": holder, "renewTime": t, "leaseDurationSeconds": 40}})
}

/// The cluster the controller measures: two Ready nodes whose kubelets renew
/// their Leases every second (node-b's clock [`NODE_B_AHEAD`]), the
/// kube-scheduler Lease changing holder once, and the simulated kubelet
/// running the probe pods. Stops with the runtime.
fn start_cluster(rt: &tokio::runtime::Runtime) -> (ApiServer, Kubelet) {
    let server = rt.block_on(ApiServer::with_namespaces(&[
        PROBE_NS,
        "kubepulse",
        "kube-node-lease",
        "kube-system",
    ]));
    for n in ["node-a", "node-b"] {
        server.apply_json::<Node>(node(n));
    }
    let now = std::time::SystemTime::now();
    server.apply_json::<Lease>(lease(CP_LEASE_NS, "kube-scheduler", "scheduler-1", now));
    let s = server.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for i in 0u64.. {
            tick.tick().await;
            let now = std::time::SystemTime::now();
            for (n, renew) in [("node-a", now), ("node-b", now + NODE_B_AHEAD)] {
                s.apply_json::<Lease>(lease(NODE_LEASE_NS, n, n, renew));
            }
            if i == 5 {
                s.apply_json::<Lease>(lease(CP_LEASE_NS, "kube-scheduler", "scheduler-2", now));
            }
        }
    });
    let kubelet = {
        let _in_runtime = rt.enter();
        Kubelet::start(&server, PROBE_NS, Mode::Normal, Delays::default())
    };
    (server, kubelet)
}

/// Prometheus' config: scrape kubepulse local and the controller every
/// second, evaluate the rules every second.
fn write_prometheus_config(dir: &Path, kubepulse: SocketAddr, controller: SocketAddr) -> PathBuf {
    let prom = dir.join("prometheus.yml");
    let rules = root().join("alerts/kubepulse-rules.yaml");
    fs::write(
        &prom,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: kubepulse\n    static_configs:\n      - targets: ['{kubepulse}']\n  \
             - job_name: kubepulse-controller\n    static_configs:\n      - targets: ['{controller}']\n",
            rules.display()
        ),
    )
    .expect("write prometheus config");
    prom
}

/// The `/metrics` address kubepulse prints once it serves.
fn printed_address(kp: &mut Proc, deadline: Instant) -> SocketAddr {
    let addr = poll(deadline, || {
        kp.assert_running();
        let log = fs::read_to_string(&kp.log).unwrap_or_default();
        log.lines()
            .find_map(|l| l.split("metrics at http://").nth(1))
            .and_then(|rest| rest.trim_end_matches("/metrics").trim().parse().ok())
    });
    addr.unwrap_or_else(|| panic!("kubepulse printed no metrics address:\n{}", kp.log_tail()))
}

/// Polls `f` every 500 ms until it returns `Some` or `deadline` passes.
fn poll<T>(deadline: Instant, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Rules whose last evaluation failed, as "name: error".
fn rule_errors(prom: SocketAddr) -> Result<(usize, Vec<String>), String> {
    let (_, body) = http_get(prom, "/api/v1/rules")?;
    let v: Json = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let mut evaluated = 0;
    let mut errors = Vec::new();
    for g in v["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            match r["health"].as_str() {
                Some("ok") => evaluated += 1,
                Some("err") => errors.push(format!(
                    "{}: {}",
                    r["name"].as_str().unwrap_or("?"),
                    r["lastError"].as_str().unwrap_or("?")
                )),
                _ => {}
            }
        }
    }
    Ok((evaluated, errors))
}

#[test]
fn every_dashboard_and_rule_query_works_against_prometheus() {
    let prometheus = prometheus_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    let reach = start_reach(dir.path());
    let agent_cfg = write_agent_config(dir.path(), &reach);
    let startup = Instant::now() + STARTUP_DEADLINE;

    let mut kp = Proc::spawn(
        "kubepulse",
        Command::new(env!("CARGO_BIN_EXE_kubepulse"))
            .args([
                "local",
                "--bandwidth",
                "--listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&agent_cfg),
        dir.path(),
    );
    let kp_addr = printed_address(&mut kp, startup);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (server, _kubelet) = start_cluster(&rt);
    let ctl_cfg = write_controller_config(dir.path(), &server.url());
    let mut ctl = Proc::spawn(
        "controller",
        Command::new(env!("CARGO_BIN_EXE_kubepulse"))
            .args(["controller", "--listen", "127.0.0.1:0", "--config"])
            .arg(&ctl_cfg),
        dir.path(),
    );
    let ctl_addr = printed_address(&mut ctl, startup);

    let prom_cfg = write_prometheus_config(dir.path(), kp_addr, ctl_addr);
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut prom = Proc::spawn(
        "prometheus",
        Command::new(prometheus)
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn"),
        dir.path(),
    );

    // Prometheus ready and the target scraped.
    let up = poll(startup, || {
        kp.assert_running();
        prom.assert_running();
        ctl.assert_running();
        match query(
            prom_addr,
            r#"count(up{job=~"kubepulse|kubepulse-controller"} == 1) == 2"#,
        ) {
            Ok(Answer::Data(_)) => Some(()),
            _ => None,
        }
    });
    assert!(
        up.is_some(),
        "kubepulse and the controller were not scraped within {STARTUP_DEADLINE:?}\n\
         prometheus:\n{}\nkubepulse:\n{}\ncontroller:\n{}",
        prom.log_tail(),
        kp.log_tail(),
        ctl.log_tail()
    );

    let all = queries();
    // Every expression parses and evaluates (no parse error, no matching error).
    let mut problems = Vec::new();
    for q in &all {
        if let Err(e) = query(prom_addr, &q.expr) {
            problems.push(format!("{} {}: {e}\n    {}", q.origin, q.part, q.expr));
        }
    }
    assert!(
        problems.is_empty(),
        "queries rejected by Prometheus:\n  {}",
        problems.join("\n  ")
    );

    // Wait, with a deadline, until every query that should have data has it.
    let mut answers: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let data_deadline = Instant::now() + DATA_DEADLINE;
    poll(data_deadline, || {
        kp.assert_running();
        ctl.assert_running();
        prom.assert_running();
        for (i, q) in all.iter().enumerate() {
            if q.needs_data && !answers.contains_key(&i) {
                // Only-NaN answers (a quantile of an empty histogram, 0/0)
                // are not data yet.
                if let Ok(Answer::Data(d)) = query(prom_addr, &q.expr) {
                    if has_number(&d) {
                        answers.insert(i, d);
                    }
                }
            }
        }
        all.iter()
            .enumerate()
            .all(|(i, q)| !q.needs_data || answers.contains_key(&i))
            .then_some(())
    });
    // The control-plane alert driven end to end: node-b's Lease clock is
    // 2 s ahead, node-a's is not (for: 10m keeps it pending).
    let skew = r#"ALERTS{alertname="KubepulseNodeLeaseClockSkew",alertstate="pending"}"#;
    let skewed = poll(Instant::now() + DATA_DEADLINE, || {
        ctl.assert_running();
        match query(prom_addr, skew) {
            Ok(Answer::Data(d)) => Some(d),
            _ => None,
        }
    });
    let (evaluated, errors) = rule_errors(prom_addr).expect("rules API");

    // The report: every query with what Prometheus returned.
    println!("\n{:<100} | value", "query");
    for (i, q) in all.iter().enumerate() {
        let value = match answers.get(&i) {
            // The latest answer, not the first one seen.
            Some(first) => {
                let d = match query(prom_addr, &q.expr) {
                    Ok(Answer::Data(d)) if has_number(&d) => d,
                    _ => first.clone(),
                };
                let shown = d
                    .iter()
                    .find(|s| !value_of(s).eq_ignore_ascii_case("nan"))
                    .unwrap_or(&d[0]);
                format!("{} series, e.g. {shown}", d.len())
            }
            None if q.needs_data => "NO DATA".to_string(),
            None => match query(prom_addr, &q.expr) {
                Ok(Answer::Data(d)) => format!("{} series, first {}", d.len(), d[0]),
                Ok(Answer::Empty) => "no data (expected)".to_string(),
                Err(e) => format!("error {e}"),
            },
        };
        println!("{} {} | {}\n    {}", q.origin, q.part, value, q.expr);
    }

    let mut problems: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, q)| q.needs_data && !answers.contains_key(i))
        .map(|(_, q)| {
            format!(
                "{} {}: no data after {DATA_DEADLINE:?}\n    {}",
                q.origin, q.part, q.expr
            )
        })
        .collect();
    // An exception that has data is stale: local mode now produces it.
    for (origin, reason) in NO_DATA {
        let matching: Vec<&Query> = all.iter().filter(|q| q.origin == *origin).collect();
        if matching.is_empty() {
            problems.push(format!("exception {origin} matches no query"));
        }
        for q in matching {
            if let Ok(Answer::Data(_)) = query(prom_addr, &q.expr) {
                problems.push(format!(
                    "{origin} returns data although listed as \"{reason}\": remove the exception"
                ));
            }
        }
    }
    problems.extend(report_agrees_with_promql(prom_addr));
    match &skewed {
        Some(alerts) if alerts.len() == 1 && alerts[0].contains("target_node=node-b") => {
            println!("\n{skew}: {}", alerts[0]);
        }
        other => problems.push(format!(
            "{skew}: expected one alert, for node-b (Lease clock {NODE_B_AHEAD:?} ahead), got {other:?}"
        )),
    }
    problems.extend(
        errors
            .into_iter()
            .map(|e| format!("rule evaluation failed: {e}")),
    );
    if evaluated == 0 {
        problems.push("Prometheus evaluated no rule".to_string());
    }
    assert!(
        problems.is_empty(),
        "{}\nprometheus log:\n{}\nkubepulse log:\n{}\ncontroller log:\n{}",
        problems.join("\n"),
        prom.log_tail(),
        kp.log_tail(),
        ctl.log_tail()
    );
    drop(server);
}

/// One instant query at `at` (Unix seconds) that must return one number.
fn scalar_at(prom: SocketAddr, expr: &str, at: f64) -> Result<f64, String> {
    let (status, body) = http_get(
        prom,
        &format!("/api/v1/query?query={}&time={at:.3}", percent_encode(expr)),
    )?;
    let v: Json = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}"))?;
    let result = v["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("{expr}: {body}"))?;
    match result.as_slice() {
        [one] => one["value"][1]
            .as_str()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| format!("{expr}: no value in {one}")),
        other => Err(format!("{expr}: {} series, want 1", other.len())),
    }
}

/// `kubepulse report --prometheus` gives the numbers PromQL gives for the
/// same window and evaluation time. Returns the disagreements.
fn report_agrees_with_promql(prom: SocketAddr) -> Vec<String> {
    const WINDOW: &str = "60s";
    let at = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
        * 1000.0)
        .round()
        / 1000.0;
    let out = Command::new(env!("CARGO_BIN_EXE_kubepulse"))
        .args([
            "report",
            "--prometheus",
            &format!("http://{prom}"),
            "--window",
            WINDOW,
        ])
        .args(["--at", &format!("{at:.3}"), "--format", "json"])
        .output()
        .expect("run kubepulse report");
    if !out.status.success() {
        return vec![format!(
            "kubepulse report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )];
    }
    let report: Json = match serde_json::from_slice(&out.stdout) {
        Ok(j) => j,
        Err(e) => return vec![format!("report JSON: {e}")],
    };
    let mut problems = Vec::new();
    let paths = report["paths"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = paths.iter().filter_map(|p| p["path"].as_str()).collect();
    let expected = [
        "host_cross_node",
        "pod_same_node",
        "pod_cross_node",
        "pod_to_host",
        "host_to_pod",
    ];
    if names != expected {
        problems.push(format!(
            "report path rows {names:?}, want {expected:?} (host baseline first)"
        ));
    }
    let mut check = |what: &str, got: &Json, expr: String| {
        let want = scalar_at(prom, &expr, at);
        match (got.as_f64(), want) {
            (Some(g), Ok(w)) if (g - w).abs() <= 1e-9 * w.abs().max(1e-9) => {
                println!("report {what} = {g} = PromQL {expr}");
            }
            (g, w) => problems.push(format!(
                "report {what}: {g:?} but PromQL {expr} gives {w:?}"
            )),
        }
    };
    for row in &paths {
        let p = row["path"].as_str().unwrap_or_default();
        for proto in ["udp", "tcp"] {
            let sel = format!(r#"{{protocol="{proto}",path="{p}"}}"#);
            for (q, field) in [(0.5, "p50"), (0.99, "p99")] {
                check(
                    &format!("{p} {proto} {field}"),
                    &row[proto][field],
                    format!("histogram_quantile({q}, sum by (le) (increase(kubepulse_probe_rtt_seconds_bucket{sel}[{WINDOW}])))"),
                );
            }
            check(
                &format!("{p} {proto} min"),
                &row[proto]["min"],
                format!("min(kubepulse_probe_rtt_min_seconds{sel})"),
            );
        }
        let lat = format!(r#"{{path="{p}",protocol=~"udp|tcp|icmp"}}"#);
        check(
            &format!("{p} loss"),
            &row["loss_ratio"],
            format!(
                "sum(increase(kubepulse_probe_lost_total{lat}[{WINDOW}])) / sum(increase(kubepulse_probe_sent_total{lat}[{WINDOW}]))"
            ),
        );
        let udp = format!(r#"{{path="{p}",protocol="udp"}}"#);
        check(
            &format!("{p} udp mean"),
            &row["udp_mean"],
            format!(
                "sum(increase(kubepulse_probe_reply_rtt_seconds_total{udp}[{WINDOW}])) / (sum(increase(kubepulse_probe_sent_total{udp}[{WINDOW}])) - sum(increase(kubepulse_probe_lost_total{udp}[{WINDOW}])))"
            ),
        );
    }
    match report["control_plane"]["apiserver"].as_array() {
        Some(rows) if !rows.is_empty() => {
            for r in rows {
                let (v, res, sc) = (&r["verb"], &r["resource"], &r["scope"]);
                let sel = format!(r#"{{verb={v},resource={res},scope={sc}}}"#);
                check(
                    &format!("apiserver {v} {res} {sc} p99"),
                    &r["p99"],
                    format!("histogram_quantile(0.99, sum by (le) (increase(kubepulse_apiserver_request_duration_seconds_bucket{sel}[{WINDOW}])))"),
                );
            }
        }
        _ => problems
            .push("the report has no apiserver rows although the controller is scraped".into()),
    }
    problems
}

#[test]
fn substitution_and_encoding() {
    let vars = ["cluster".to_string(), "job".to_string()];
    assert_eq!(
        substitute(
            r#"rate(x{cluster=~"$cluster",job=~"${job}"}[$__rate_interval])"#,
            &vars
        ),
        format!(r#"rate(x{{cluster=~".*",job=~".*"}}[{RATE_INTERVAL}])"#)
    );
    assert_eq!(percent_encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    assert!(has_number(&["{a=b} NaN".into(), "{a=c} 0.5".into()]));
    assert!(!has_number(&["{a=b} NaN".into(), "\"NaN\"".into()]));
    assert!(has_number(&["\"1\"".into()]));
}
