//! apiserver latency sampler against the fake apiserver: every verb is
//! sampled, 429s are seen (not retried) and counted, slow responses land in
//! the right buckets, write-to-watch-event latency is measured, and the
//! ConfigMap is cleaned up.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kubepulse::config::SamplerSettings;
use kubepulse::controller::apiserver_latency::Sampler;
use kubepulse::controller::metrics::ControllerMetrics;
use kubepulse_testkit::apiserver::{
    ApiServer, Fault, Rule, Verb, FLOW_SCHEMA_UID, PRIORITY_LEVEL_UID,
};
use kubepulse_testkit::scrape::{parse, Scrape};
use tokio_util::sync::CancellationToken;

const NS: &str = "kubepulse-probes";
const CMS: &str = "/api/v1/namespaces/kubepulse-probes/configmaps";
const M: &str = "kubepulse_apiserver_request_duration_seconds";

fn scrape(m: &ControllerMetrics) -> Scrape {
    parse(&kubepulse::metrics::encode(&[m.registry()]).expect("encode"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampler_sees_throttling_and_slow_responses() {
    let server = ApiServer::with_namespaces(&[NS, "default"]).await;
    // Two GETs throttled, one PATCH slowed by 400 ms.
    server.inject(
        Rule::new(Fault::TooManyRequests { retry_after: 1 })
            .verb(Verb::Get)
            .path(format!("{CMS}/kubepulse-sampler-"))
            .times(2),
    );
    server.inject(
        Rule::new(Fault::Delay(Duration::from_millis(400)))
            .verb(Verb::Patch)
            .path(CMS),
    );
    let m = ControllerMetrics::new(prometheus::Registry::new()).expect("metrics");
    let mut cfg = server.config();
    cfg.default_retry = false;
    let settings = SamplerSettings {
        interval: Duration::from_millis(150),
        max_qps: 50.0,
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let sampler = Sampler::new(
        kube::Client::try_from(cfg).expect("client"),
        server.client(),
        m.clone(),
        NS,
        "run1",
        settings,
    );
    let token = CancellationToken::new();
    let task = tokio::spawn(sampler.run(token.clone()));

    let verbs = [
        ("POST", "configmaps", "resource"),
        ("GET", "configmaps", "resource"),
        ("PUT", "configmaps", "resource"),
        ("PATCH", "configmaps", "resource"),
        ("LIST", "configmaps", "namespace"),
        ("LIST", "namespaces", "cluster"),
        ("WATCH", "configmaps", "namespace"),
        ("DELETE", "configmaps", "resource"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let sc = loop {
        let sc = scrape(&m);
        let all_verbs = verbs.iter().all(|(v, r, s)| {
            sc.try_sum(
                &format!("{M}_count"),
                &[("verb", v), ("resource", r), ("scope", s), ("code", "2xx")],
            ) >= Some(2.0)
        });
        let events = ["added", "modified", "deleted"].iter().all(|e| {
            sc.try_sum(
                "kubepulse_apiserver_watch_event_latency_seconds_count",
                &[("event", e)],
            ) >= Some(1.0)
        });
        if all_verbs && events {
            break sc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sampler incomplete:\n{}",
            sc.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    token.cancel();
    task.await.expect("sampler task");

    // Throttling is seen, not retried away: exactly the two injected 429s.
    assert_eq!(
        sc.sum("kubepulse_apiserver_throttled_total", &[]),
        2.0,
        "{}",
        sc.body
    );
    assert_eq!(
        sc.sum(&format!("{M}_count"), &[("verb", "GET"), ("code", "4xx")]),
        2.0
    );
    let throttled_gets = server
        .requests()
        .iter()
        .filter(|s| s.method == "GET" && s.uri.starts_with(&format!("{CMS}/")))
        .count();
    assert!(throttled_gets >= 4, "GETs sent: {throttled_gets}");
    // The slow PATCH is above the 0.4 s edge; the others are far below it.
    let patch = |le: &str| {
        sc.sum(
            &format!("{M}_bucket"),
            &[("verb", "PATCH"), ("code", "2xx"), ("le", le)],
        )
    };
    let total = sc.sum(&format!("{M}_count"), &[("verb", "PATCH"), ("code", "2xx")]);
    assert_eq!(
        total - patch("0.4"),
        1.0,
        "one PATCH slower than 0.4 s:\n{}",
        sc.body
    );
    assert!(patch("0.1") >= total - 1.0);
    // APF classification from the response headers.
    assert_eq!(
        sc.sum(
            "kubepulse_apiserver_flowcontrol_info",
            &[
                ("flow_schema_uid", FLOW_SCHEMA_UID),
                ("priority_level_uid", PRIORITY_LEVEL_UID)
            ]
        ),
        1.0
    );
    // Nothing left behind.
    assert!(
        server.objects::<ConfigMap>(NS).is_empty(),
        "left: {:?}",
        server.objects::<ConfigMap>(NS)
    );
    for line in sc.body.lines().filter(|l| {
        l.starts_with(&format!("{M}_count"))
            || l.starts_with("kubepulse_apiserver_throttled")
            || l.starts_with("kubepulse_apiserver_watch_event_latency_seconds_count")
    }) {
        println!("{line}");
    }
}
