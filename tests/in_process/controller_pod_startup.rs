//! Pod startup probe against the fake apiserver and a simulated kubelet.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kubepulse::config::PodStartupSettings;
use kubepulse::controller::metric_labels::{Outcome, Phase};
use kubepulse::controller::metrics::ControllerMetrics;
use kubepulse::controller::nodes::NodeView;
use kubepulse::controller::pod_startup::PodProbe;
use kubepulse_testkit::apiserver::{ApiServer, Fault, Rule, Verb};
use kubepulse_testkit::kubelet::{Delays, Kubelet, Mode};
use serde_json::json;

const NS: &str = "kubepulse-probes";
const PODS: &str = "/api/v1/namespaces/kubepulse-probes/pods";

fn settings() -> PodStartupSettings {
    PodStartupSettings {
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(4),
        delete_timeout: Duration::from_secs(4),
        event_grace: Duration::from_millis(200),
        image: "pause@sha256:0".into(),
        ..Default::default()
    }
}

async fn setup(mode: Mode, delays: Delays) -> (ApiServer, Kubelet, PodProbe, ControllerMetrics) {
    let server = ApiServer::with_namespaces(&[NS, "kube-node-lease", "kube-system"]).await;
    let kubelet = Kubelet::start(&server, NS, mode, delays);
    let m = ControllerMetrics::new(prometheus::Registry::new()).expect("metrics");
    let nodes = NodeView::new(4);
    let mut no_retry = server.config();
    no_retry.default_retry = false;
    let probe = PodProbe::new(
        server.client(),
        kube::Client::try_from(no_retry).expect("client"),
        m.clone(),
        NS,
        "testrun",
        settings(),
        nodes,
    );
    (server, kubelet, probe, m)
}

/// Polls until the probe namespace has no pods.
async fn assert_no_pods(server: &ApiServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !server.objects::<Pod>(NS).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pods left behind: {:?}",
            server.objects::<Pod>(NS)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn phase(r: &kubepulse::controller::pod_startup::ProbeResult, p: Phase) -> Duration {
    r.phases
        .iter()
        .find(|(q, _)| *q == p)
        .map(|(_, d)| *d)
        .unwrap_or_else(|| panic!("{p} not observed: {:?}", r.phases))
}

/// Measured must be at least the injected delay (minus 20 ms: the
/// controller's and the kubelet's sightings of "created" differ by their
/// watch delivery) and at most the delay plus the stated slack (API round
/// trips on a shared, loaded 2-core machine).
fn within(name: &str, measured: Duration, injected: Duration, slack: Duration) {
    let lo = injected.saturating_sub(Duration::from_millis(20));
    assert!(
        measured >= lo && measured <= injected + slack,
        "{name}: measured {measured:?}, injected {injected:?} (+{slack:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_match_the_injected_delays() {
    let d = Delays::default();
    let (server, _k, mut probe, m) = setup(Mode::Normal, d).await;
    let slack = Duration::from_millis(300);
    for target in ["node-a", "node-b"] {
        let r = probe.probe(target).await.expect("probe");
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        within(
            "create_to_schedule",
            phase(&r, Phase::CreateToSchedule),
            d.bind,
            slack,
        );
        within(
            "schedule_to_sandbox",
            phase(&r, Phase::ScheduleToSandbox),
            d.sandbox,
            slack,
        );
        within(
            "schedule_to_run",
            phase(&r, Phase::ScheduleToRun),
            d.sandbox + d.start,
            slack,
        );
        within(
            "pod_startup",
            phase(&r, Phase::PodStartup),
            d.bind + d.sandbox + d.start,
            slack,
        );
        within(
            "started_to_ready",
            phase(&r, Phase::StartedToReady),
            d.ready,
            slack,
        );
        within("delete", phase(&r, Phase::Delete), d.delete, slack);
        assert!(phase(&r, Phase::Create) < Duration::from_millis(500));
        // The pod went to the target through the scheduler's affinity.
        let bound = server
            .requests()
            .iter()
            .filter(|s| s.verb == Some(Verb::Create) && s.uri.starts_with(PODS))
            .count();
        assert!(bound >= 1);
        assert_no_pods(&server).await;
    }
    let body = kubepulse::metrics::encode(&[m.registry()]).expect("encode");
    println!("injected delays: {d:?}");
    for line in body.lines().filter(|l| {
        (l.starts_with("kubepulse_pod_startup_duration_seconds_sum")
            || l.starts_with("kubepulse_pod_startup_duration_seconds_count")
            || l.starts_with("kubepulse_pod_startup_probes_total"))
            && !l.ends_with(" 0")
    }) {
        println!("{line}");
    }
    assert!(
        body.contains("kubepulse_pod_startup_probes_total{outcome=\"ok\"} 2"),
        "{body}"
    );
    assert!(body.contains("kubepulse_apiserver_request_duration_seconds_count{code=\"2xx\",resource=\"pods\",scope=\"resource\",verb=\"POST\"} 2"), "{body}");
}

async fn outcome_of(mode: Mode, prepare: impl FnOnce(&ApiServer)) -> (Outcome, ControllerMetrics) {
    let (server, _k, mut probe, m) = setup(mode, Delays::default()).await;
    prepare(&server);
    let r = probe.probe("node-a").await.expect("probe");
    // Startup phases are only observed for ok probes.
    if r.outcome != Outcome::Ok {
        assert!(
            r.phases
                .iter()
                .all(|(p, _)| matches!(p, Phase::Create | Phase::Delete)),
            "{r:?}"
        );
    }
    assert_no_pods(&server).await;
    (r.outcome, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pulls_are_excluded() {
    assert_eq!(
        outcome_of(Mode::PullImage(Duration::from_millis(300)), |_| {})
            .await
            .0,
        Outcome::ImagePulled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_image_pull_is_failed() {
    assert_eq!(outcome_of(Mode::PullFails, |_| {}).await.0, Outcome::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_and_timeout() {
    assert_eq!(
        outcome_of(Mode::Unschedulable, |_| {}).await.0,
        Outcome::Unschedulable
    );
    assert_eq!(
        outcome_of(Mode::NeverSchedule, |_| {}).await.0,
        Outcome::Timeout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_is_watch_restarted() {
    assert_eq!(
        outcome_of(Mode::DropWatchAfterBind, |_| {}).await.0,
        Outcome::WatchRestarted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mutation_and_create_errors() {
    assert_eq!(
        outcome_of(Mode::Normal, |s| {
            s.mutate_on_create("pods", |p| {
                p["spec"]["initContainers"] = json!([{"name": "injected", "image": "sidecar"}]);
            })
        })
        .await
        .0,
        Outcome::Mutated
    );
    let (o, m) = outcome_of(Mode::Normal, |s| {
        s.inject(
            Rule::new(Fault::TooManyRequests { retry_after: 1 })
                .verb(Verb::Create)
                .path(PODS),
        )
    })
    .await;
    assert_eq!(o, Outcome::CreateError);
    let body = kubepulse::metrics::encode(&[m.registry()]).expect("encode");
    assert!(
        body.contains("kubepulse_apiserver_throttled_total 1"),
        "{body}"
    );
}
