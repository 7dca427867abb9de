//! The controller role end to end on the fake apiserver: leader failover
//! between two replicas, and a crash mid-probe cleaned up by the next
//! leader's sweeper.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kubepulse::config::ControllerSettings;
use kubepulse::controller::client::Clients;
use kubepulse::controller::metrics::ControllerMetrics;
use kubepulse::roles::controller::{self, Running};
use kubepulse_testkit::apiserver::{ApiServer, Verb};
use kubepulse_testkit::kubelet::{Delays, Kubelet, Mode};
use kubepulse_testkit::scrape::parse;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PROBE_NS: &str = "kubepulse-probes";
const PODS: &str = "/api/v1/namespaces/kubepulse-probes/pods";

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
    s.pod_startup.timeout = Duration::from_secs(30);
    s.pod_startup.sweep_min_age = Duration::ZERO;
    s.sampler.enabled = false;
    s
}

fn start(
    server: &ApiServer,
    s: &ControllerSettings,
) -> (Running, ControllerMetrics, CancellationToken) {
    let clients = Clients::new(&server.config()).expect("clients");
    let m = ControllerMetrics::new(prometheus::Registry::new()).expect("metrics");
    let token = CancellationToken::new();
    let r = controller::start(s, clients, m.clone(), token.clone()).expect("start");
    (r, m, token)
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = tokio::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what} not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_fails_over_within_one_lease_duration() {
    let server = ApiServer::with_namespaces(&["kubepulse", PROBE_NS]).await;
    let (a, ma, _ta) = start(&server, &settings("a", false));
    let (b, mb, tb) = start(&server, &settings("b", false));
    wait_for("a leader", Duration::from_secs(5), || {
        *a.leading.borrow() || *b.leading.borrow()
    })
    .await;
    // Exactly one leads, and stays alone for a while.
    for _ in 0..10 {
        assert!(
            *a.leading.borrow() ^ *b.leading.borrow(),
            "split brain or no leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, follower, fm, ftoken) = if *a.leading.borrow() {
        (a, b, mb, tb)
    } else {
        (b, a, ma, _ta)
    };
    // Crash the leader: no release, the Lease just stops being renewed.
    leader.abort();
    let took = wait_for("failover", Duration::from_secs(6), || {
        *follower.leading.borrow()
    })
    .await;
    // One lease duration (2 s) after the last renewal, plus one retry period
    // to notice, plus scheduling slack on a loaded machine.
    assert!(
        took <= Duration::from_millis(2000 + 200 + 500),
        "failover took {took:?}"
    );
    println!("failover after {took:?} (lease duration 2s, retry 200ms)");
    let sc = parse(&kubepulse::metrics::encode(&[fm.registry()]).expect("encode"));
    assert_eq!(sc.sum("kubepulse_controller_leader", &[]), 1.0);

    // A graceful stop releases the Lease: a new replica takes over at once.
    let (c, _mc, _tc) = start(&server, &settings("c", false));
    ftoken.cancel();
    let took = wait_for("handover", Duration::from_secs(3), || *c.leading.borrow()).await;
    assert!(took < Duration::from_millis(1500), "handover took {took:?}");
    follower.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down() {
    use kubepulse_testkit::apiserver::{Fault, Rule};
    let server = ApiServer::with_namespaces(&["kubepulse", PROBE_NS]).await;
    let (a, _ma, ta) = start(&server, &settings("a", false));
    wait_for("a leads", Duration::from_secs(5), || *a.leading.borrow()).await;
    // Every Lease update fails from now on (apiserver trouble).
    server.inject(
        Rule::new(Fault::Status(500))
            .verb(Verb::Update)
            .path("/leases/kubepulse-controller")
            .always(),
    );
    let took = wait_for("step down", Duration::from_secs(4), || !*a.leading.borrow()).await;
    // renew_deadline (1.5 s) after the last renewal, plus a retry period
    // and slack: before the 2 s lease could expire for anyone else.
    assert!(
        took <= Duration::from_millis(1500 + 200 + 300),
        "stepped down after {took:?}"
    );
    server.clear_faults();
    wait_for("leads again", Duration::from_secs(5), || {
        *a.leading.borrow()
    })
    .await;
    ta.cancel();
    a.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_probe_is_swept_by_the_next_leader() {
    let server =
        ApiServer::with_namespaces(&["kubepulse", PROBE_NS, "kube-node-lease", "kube-system"])
            .await;
    server.apply_json::<Node>(json!({"metadata": {"name": "node-a"}, "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    // Pods are bound but never start: the probe is in flight when we crash.
    let _kubelet = Kubelet::start(&server, PROBE_NS, Mode::Hang, Delays::default());
    let (a, ma, _ta) = start(&server, &settings("a", true));
    let run_a = a.run.clone();
    wait_for("a probe pod", Duration::from_secs(10), || {
        !server.objects::<Pod>(PROBE_NS).is_empty()
    })
    .await;
    a.abort();
    // A leftover sampler ConfigMap of the crashed run, too.
    server.apply_json::<ConfigMap>(json!({"metadata": {"name": "kubepulse-sampler-old", "namespace": PROBE_NS,
        "labels": {"app.kubernetes.io/managed-by": "kubepulse", "kubepulse.io/probe": "sampler", "kubepulse.io/run": run_a}}}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = server.objects::<Pod>(PROBE_NS);
    assert_eq!(
        left.len(),
        1,
        "{left:?} {:?}\n{}",
        server.requests().iter().collect::<Vec<_>>(),
        kubepulse::metrics::encode(&[ma.registry()])
            .expect("e")
            .lines()
            .filter(|l| l.contains("probes_total") || l.contains("leader"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        left[0]["metadata"]["labels"]["kubepulse.io/run"],
        json!(run_a)
    );

    // The next leader (measuring off, so only the sweeper acts) cleans up.
    let (b, mb, tb) = start(&server, &settings("b", false));
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        while !(server.objects::<Pod>(PROBE_NS).is_empty()
            && server.objects::<ConfigMap>(PROBE_NS).is_empty())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let brief = |v: Vec<serde_json::Value>| {
        v.iter()
            .map(|o| {
                (
                    o["metadata"]["name"].clone(),
                    o["spec"]["nodeName"].clone(),
                    o["metadata"]["deletionTimestamp"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        ok.is_ok(),
        "not swept: leading={} pods={:?} cms={:?} requests={:?}\nA:{}\nB:{}",
        *b.leading.borrow(),
        brief(server.objects::<Pod>(PROBE_NS)),
        brief(server.objects::<ConfigMap>(PROBE_NS)),
        server
            .requests()
            .iter()
            .filter(|s| s.uri.contains("/pods"))
            .collect::<Vec<_>>(),
        kubepulse::metrics::encode(&[ma.registry()])
            .expect("e")
            .lines()
            .filter(|l| l.contains("probes_total") || l.contains("swept"))
            .collect::<Vec<_>>()
            .join("\n"),
        kubepulse::metrics::encode(&[mb.registry()])
            .expect("e")
            .lines()
            .filter(|l| l.contains("swept"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let sc = parse(&kubepulse::metrics::encode(&[mb.registry()]).expect("encode"));
    assert_eq!(
        sc.sum(
            "kubepulse_probe_objects_swept_total",
            &[("resource", "pods"), ("reason", "earlier_run")]
        ),
        1.0
    );
    assert_eq!(
        sc.sum(
            "kubepulse_probe_objects_swept_total",
            &[("resource", "configmaps"), ("reason", "earlier_run")]
        ),
        1.0
    );
    // The crashed replica sent nothing after its crash: one probe pod ever.
    let posts = server
        .requests()
        .iter()
        .filter(|s| s.verb == Some(Verb::Create) && s.uri.starts_with(PODS))
        .count();
    assert_eq!(posts, 1);
    // Deleted gracefully: the kubelet finished it, no grace-0 from the sweeper.
    let forced = server
        .requests()
        .iter()
        .filter(|s| s.verb == Some(Verb::Delete) && s.uri.starts_with(PODS))
        .count();
    assert!(
        forced >= 2,
        "sweeper DELETE then kubelet's final DELETE, got {forced}"
    );
    tb.cancel();
    b.join().await;
}
