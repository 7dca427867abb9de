//! A controller that says why it is stuck, and exact pod startup outcomes
//! under cancellation, on the API test server:
//! - leadership lost in the middle of a pod startup probe: the probe is not
//!   counted (never as a timeout) and its pod is still deleted;
//! - leader-election failures are counted by named reason, logged at
//!   `warn` with the status and what failed, and the replica tells whether
//!   it reaches the API at all.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kubepulse::config::ControllerSettings;
use kubepulse::controller::client::Clients;
use kubepulse::controller::metrics::ControllerMetrics;
use kubepulse::roles::controller::{self, Running};
use kubepulse_testkit::apiserver::{ApiServer, Fault, Rule, Verb};
use kubepulse_testkit::kubelet::{Delays, Kubelet, Mode};
use kubepulse_testkit::scrape::parse;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PROBE_NS: &str = "kubepulse-probes";
const PODS: &str = "/api/v1/namespaces/kubepulse-probes/pods";
const LEASE: &str = "/namespaces/kubepulse/leases/kubepulse-controller";

/// Every log line of this test binary, at `warn` and above.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines(containing: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().expect("log buffer")).into_owned();
    text.lines()
        .filter(|l| containing.iter().all(|c| l.contains(c)))
        .map(str::to_string)
        .collect()
}

fn settings(name: &str, measure: bool) -> ControllerSettings {
    let mut s = ControllerSettings {
        name: name.into(),
        ..Default::default()
    };
    s.leader.lease_duration = Duration::from_secs(2);
    s.leader.renew_deadline = Duration::from_millis(1500);
    s.leader.retry_period = Duration::from_millis(200);
    s.pod_startup.enabled = measure;
    s.pod_startup.interval = Duration::from_millis(200);
    // Far longer than the test: a timeout can only come from the bug.
    s.pod_startup.timeout = Duration::from_secs(60);
    s.pod_startup.sweep_min_age = Duration::ZERO;
    s.sampler.enabled = false;
    s.nodes.enabled = true;
    s
}

fn start_with(
    config: kube::Config,
    s: &ControllerSettings,
) -> (Running, ControllerMetrics, CancellationToken) {
    logs();
    let clients = Clients::new(&config).expect("clients");
    let m = ControllerMetrics::new(prometheus::Registry::new()).expect("metrics");
    let token = CancellationToken::new();
    let r = controller::start(s, clients, m.clone(), token.clone()).expect("start");
    (r, m, token)
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = tokio::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what} not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn scrape(m: &ControllerMetrics) -> kubepulse_testkit::scrape::Scrape {
    parse(&kubepulse::metrics::encode(&[m.registry()]).expect("encode"))
}

/// The value of one series that must exist.
fn value(m: &ControllerMetrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sc = scrape(m);
    let s = sc.select(name, labels);
    assert_eq!(s.len(), 1, "{name}{labels:?} missing or ambiguous");
    s[0].value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_lost_mid_probe_is_not_a_timeout_and_the_pod_is_deleted() {
    let server =
        ApiServer::with_namespaces(&["kubepulse", PROBE_NS, "kube-node-lease", "kube-system"])
            .await;
    server.apply_json::<Node>(json!({"metadata": {"name": "node-a"}, "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    // Pods are bound but never start: the probe is in flight when leadership goes.
    let _kubelet = Kubelet::start(&server, PROBE_NS, Mode::Hang, Delays::default());
    let (a, m, token) = start_with(server.config(), &settings("a", true));
    wait_for("a leads", Duration::from_secs(5), || *a.leading.borrow()).await;
    wait_for("a probe pod", Duration::from_secs(10), || {
        !server.objects::<Pod>(PROBE_NS).is_empty()
    })
    .await;
    let pod = server.objects::<Pod>(PROBE_NS)[0]["metadata"]["name"]
        .as_str()
        .expect("pod name")
        .to_string();
    // Leadership is lost: every Lease update fails from now on.
    server.inject(
        Rule::new(Fault::Status(500))
            .verb(Verb::Update)
            .path(LEASE)
            .always(),
    );
    wait_for("step down", Duration::from_secs(5), || !*a.leading.borrow()).await;
    // The interrupted probe still deletes its pod...
    wait_for("the probe pod deleted", Duration::from_secs(10), || {
        server.objects::<Pod>(PROBE_NS).is_empty()
    })
    .await;
    let deletes = server
        .requests()
        .iter()
        .filter(|s| {
            s.actor.is_none()
                && s.verb == Some(Verb::Delete)
                && s.uri.starts_with(&format!("{PODS}/{pod}"))
        })
        .count();
    assert_eq!(deletes, 1, "the controller deletes its own probe pod once");
    // ...and is counted under no outcome at all: not timeout, nothing.
    let sc = scrape(&m);
    let outcomes = sc.select("kubepulse_pod_startup_probes_total", &[]);
    assert!(!outcomes.is_empty(), "outcome series are pre-created");
    for s in &outcomes {
        assert_eq!(s.value, 0.0, "counted: {:?}", s.labels);
    }
    assert_eq!(
        value(
            &m,
            "kubepulse_pod_startup_probes_total",
            &[("outcome", "timeout")]
        ),
        0.0
    );
    // The failed renewals were counted and said why.
    assert!(
        value(
            &m,
            "kubepulse_controller_leader_errors_total",
            &[("reason", "server_error")]
        ) >= 1.0
    );
    assert!(
        !log_lines(&["WARN", "HTTP 500", "update", "leases.coordination.k8s.io"]).is_empty(),
        "no warning names the failed Lease update"
    );
    token.cancel();
    a.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_cannot_lead_says_why() {
    let server = ApiServer::with_namespaces(&["kubepulse", PROBE_NS]).await;
    // 403 on the Lease GET: RBAC does not allow it.
    server.inject(
        Rule::new(Fault::Status(403))
            .verb(Verb::Get)
            .path(LEASE)
            .always(),
    );
    let (a, m, token) = start_with(server.config(), &settings("forbidden", false));
    wait_for("a counted 403", Duration::from_secs(5), || {
        scrape(&m)
            .select(
                "kubepulse_controller_leader_errors_total",
                &[("reason", "forbidden")],
            )
            .first()
            .is_some_and(|s| s.value >= 1.0)
    })
    .await;
    assert!(!*a.leading.borrow());
    let warned = log_lines(&[
        "WARN",
        "forbidden",
        "verb \"get\"",
        "leases.coordination.k8s.io",
    ]);
    assert!(!warned.is_empty(), "no warning names verb and resource");
    assert!(warned.iter().all(|l| !l.contains("unreachable")));
    // The API answered, so it is reachable (the problem is RBAC).
    assert_eq!(a.api.get(), Some(Ok(())));
    // Rate-limited: one warning for many failures in the first 30 s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let failures = value(
        &m,
        "kubepulse_controller_leader_errors_total",
        &[("reason", "forbidden")],
    );
    assert!(failures >= 2.0, "{failures}");
    assert_eq!(
        log_lines(&["WARN", "Leader election failed", "forbidden"]).len(),
        1
    );
    token.cancel();
    a.join().await;
    server.clear_faults();

    // An unusual 404 on the GET while the Lease exists: the create that
    // follows conflicts. Never leading, and it says so.
    server.apply_json::<Lease>(
        json!({"metadata": {"name": "kubepulse-controller", "namespace": "kubepulse"},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 2}}),
    );
    server.inject(
        Rule::new(Fault::Status(404))
            .verb(Verb::Get)
            .path(LEASE)
            .always(),
    );
    let (b, mb, tb) = start_with(server.config(), &settings("lost", false));
    wait_for("a counted create conflict", Duration::from_secs(5), || {
        scrape(&mb)
            .select(
                "kubepulse_controller_leader_errors_total",
                &[("reason", "conflict")],
            )
            .first()
            .is_some_and(|s| s.value >= 1.0)
    })
    .await;
    assert!(!*b.leading.borrow());
    assert!(
        !log_lines(&["WARN", "conflict", "create", "kubepulse-controller"]).is_empty(),
        "the create conflict is warned"
    );
    tb.cancel();
    b.join().await;
}

/// A leader whose Lease calls hang (the API server's packets dropped, so
/// no error ever comes back) steps down by its renew deadline instead of
/// leading until its client gives up, counts the calls as timeouts, and
/// leads again once the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_calls_hang_steps_down() {
    let server = ApiServer::with_namespaces(&["kubepulse", PROBE_NS]).await;
    let (a, m, token) = start_with(server.config(), &settings("hung", false));
    wait_for("a leads", Duration::from_secs(5), || *a.leading.borrow()).await;
    // Far longer than the wait below: only the round's deadline ends a call.
    server.inject(
        Rule::new(Fault::Delay(Duration::from_secs(300)))
            .path(LEASE)
            .always(),
    );
    wait_for("step down", Duration::from_secs(10), || {
        !*a.leading.borrow()
    })
    .await;
    assert!(
        value(
            &m,
            "kubepulse_controller_leader_errors_total",
            &[("reason", "timeout")]
        ) >= 1.0,
        "the hung call is not counted as a timeout"
    );
    server.clear_faults();
    wait_for("leads again", Duration::from_secs(10), || {
        *a.leading.borrow()
    })
    .await;
    token.cancel();
    a.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_refuses_connections_is_named_and_not_ready() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (a, m, token) = start_with(
        kube::Config::new(url.parse().expect("uri")),
        &settings("refused", false),
    );
    wait_for(
        "a refused connection counted",
        Duration::from_secs(10),
        || {
            scrape(&m)
                .select(
                    "kubepulse_controller_leader_errors_total",
                    &[("reason", "connection_refused")],
                )
                .first()
                .is_some_and(|s| s.value >= 1.0)
        },
    )
    .await;
    match a.api.get() {
        Some(Err(why)) => assert!(why.contains("connection refused"), "{why}"),
        other => panic!("reachability: {other:?}"),
    }
    assert!(!log_lines(&["WARN", "connection refused"]).is_empty());
    token.cancel();
    a.join().await;

    // TLS to a plain-HTTP apiserver: a TLS failure, named as such.
    let server = ApiServer::with_namespaces(&["kubepulse"]).await;
    let tls_url = server.url().replacen("http://", "https://", 1);
    let (b, mb, tb) = start_with(
        kube::Config::new(tls_url.parse().expect("uri")),
        &settings("tls", false),
    );
    wait_for("a TLS failure counted", Duration::from_secs(10), || {
        scrape(&mb)
            .select(
                "kubepulse_controller_leader_errors_total",
                &[("reason", "tls")],
            )
            .first()
            .is_some_and(|s| s.value >= 1.0)
    })
    .await;
    match b.api.get() {
        Some(Err(why)) => assert!(why.starts_with("TLS failure"), "{why}"),
        other => panic!("reachability: {other:?}"),
    }
    tb.cancel();
    b.join().await;
}

/// `/readyz` of the real binary: 503 with the reason while the API refuses
/// connections, 200 once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_whether_the_api_is_reachable() {
    use kubepulse_testkit::process::{free_port, Kubepulse};
    use kubepulse_testkit::scrape::http_get;
    let write_config = |url: &str| {
        let mut f = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("temp");
        write!(
            f,
            "controller:\n  api_url: {url}\n  name: readyz\n  pod_startup:\n    enabled: false\n  \
             sampler:\n    enabled: false\n  leader:\n    lease_duration: 2s\n    \
             renew_deadline: 1500ms\n    retry_period: 200ms\n"
        )
        .expect("write");
        f
    };
    let readyz = |p: &Kubepulse| {
        let addr = p.metrics;
        move || http_get(addr, "/readyz").expect("GET /readyz")
    };
    // Polls until /readyz answers `want` with a body that is past the
    // start ("no Kubernetes API call has completed yet" is a 503 too).
    let poll = |get: &dyn Fn() -> (u16, String), want: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = get();
            if code == want && !body.contains("no Kubernetes API call has completed yet") {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz stayed {code}: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let closed = write_config(&format!("http://127.0.0.1:{}", free_port()));
    let path = closed.path().to_str().expect("path").to_string();
    let p = Kubepulse::start(&["controller", "--config", &path, "--listen", "127.0.0.1:0"]);
    let get = readyz(&p);
    let body = tokio::task::spawn_blocking(move || poll(&get, 503))
        .await
        .expect("poll");
    assert!(
        body.contains("cannot reach the Kubernetes API") && body.contains("connection refused"),
        "{body}"
    );
    drop(p);

    let server = ApiServer::with_namespaces(&["kubepulse"]).await;
    let open = write_config(&server.url());
    let path = open.path().to_str().expect("path").to_string();
    let p = Kubepulse::start(&["controller", "--config", &path, "--listen", "127.0.0.1:0"]);
    let get = readyz(&p);
    let body = tokio::task::spawn_blocking(move || poll(&get, 200))
        .await
        .expect("poll");
    assert!(body.contains("Kubernetes API reachable"), "{body}");
}
