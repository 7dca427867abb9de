//! The real `kubepulse controller` binary against the fake apiserver:
//! measures (pod probes, sampler), survives SIGKILL mid-probe with the next
//! start sweeping the leftovers, and leaves nothing behind after SIGTERM.

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kubepulse::controller::rbac::{Place, RULES};
use kubepulse_testkit::apiserver::{ApiServer, Verb};
use kubepulse_testkit::kubelet::{Delays, Kubelet, Mode};
use kubepulse_testkit::process::Kubepulse;
use kubepulse_testkit::scrape::{scrape_until, Scrape};
use serde_json::json;

const NS: &str = "kubepulse-probes";

fn config(server: &ApiServer) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp");
    write!(
        f,
        "controller:
  api_url: {url}
  name: proc
  pod_startup:
    interval: 300ms
    timeout: 10s
    delete_timeout: 5s
    event_grace: 100ms
    sweep_min_age: 0s
  sampler:
    interval: 300ms
    max_qps: 50
  leader:
    lease_duration: 2s
    renew_deadline: 1500ms
    retry_period: 200ms
",
        url = server.url()
    )
    .expect("write");
    f
}

async fn scrape(
    p: &Kubepulse,
    what: &'static str,
    ok: impl FnMut(&Scrape) -> bool + Send + 'static,
) -> Scrape {
    let addr = p.metrics;
    let (sc, good) =
        tokio::task::spawn_blocking(move || scrape_until(addr, Duration::from_secs(20), ok))
            .await
            .expect("scrape");
    assert!(good, "{what}:\n{}", sc.body);
    sc
}

fn runs(server: &ApiServer) -> Vec<String> {
    server
        .objects::<Pod>(NS)
        .iter()
        .map(|p| {
            p["metadata"]["labels"]["kubepulse.io/run"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

async fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_measures_survives_sigkill_and_cleans_up() {
    let server =
        ApiServer::with_namespaces(&[NS, "kubepulse", "kube-node-lease", "kube-system"]).await;
    for n in ["node-a", "node-b"] {
        server.apply_json::<Node>(json!({"metadata": {"name": n}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    }
    let cfg = config(&server);
    let path = cfg.path().to_str().expect("path").to_string();
    let kubelet = Kubelet::start(&server, NS, Mode::Normal, Delays::default());
    let mut first = Kubepulse::start(&[
        "controller",
        "--config",
        &path,
        "--listen",
        "127.0.0.1:0",
        "--sampler-max-qps",
        "40",
    ]);
    let sc = scrape(&first, "measuring", |s| {
        s.try_sum("kubepulse_pod_startup_probes_total", &[("outcome", "ok")]) >= Some(2.0)
            && s.try_sum(
                "kubepulse_apiserver_request_duration_seconds_count",
                &[("verb", "DELETE"), ("resource", "configmaps")],
            ) >= Some(1.0)
            && s.try_sum("kubepulse_controller_leader", &[]) == Some(1.0)
    })
    .await;
    for l in sc.body.lines().filter(|l| {
        l.starts_with("kubepulse_pod_startup_last") || l.starts_with("kubepulse_node_ready{")
    }) {
        println!("{l}");
    }
    // Round robin: both nodes were probed.
    assert_eq!(
        sc.select("kubepulse_pod_startup_last_duration_seconds", &[])
            .len(),
        2,
        "{}",
        sc.body
    );

    // The controller's page shows the control-plane tables.
    let (status, page) = kubepulse_testkit::scrape::http_get(first.metrics, "/").expect("GET /");
    assert_eq!(status, 200);
    for want in [
        "<h2>Pod startup (s; SLO: pod_startup p99 &lt;= 5 s)</h2>",
        "<tr data-row=\"pod_startup\">",
        "<h2>apiserver calls",
        "<tr data-row=\"DELETE\"><td>DELETE</td><td>configmaps</td>",
    ] {
        assert!(
            page.contains(want),
            "{want} missing from the controller page:\n{page}"
        );
    }
    assert!(
        !page.contains("Latency by path"),
        "no agent tables on the controller page"
    );

    // A node that leaves takes its per-node series with it.
    let nodes: kube::Api<Node> = kube::Api::all(server.actor_client("test"));
    nodes
        .delete("node-b", &Default::default())
        .await
        .expect("delete node-b");
    scrape(&first, "node-b series removed", |s| {
        s.select(
            "kubepulse_pod_startup_last_duration_seconds",
            &[("target_node", "node-b")],
        )
        .is_empty()
            && s.select("kubepulse_node_ready", &[("target_node", "node-b")])
                .is_empty()
            && s.select(
                "kubepulse_pod_startup_last_duration_seconds",
                &[("target_node", "node-a")],
            )
            .len()
                == 1
    })
    .await;

    // Pods now hang after binding; kill -9 while one is in flight.
    drop(kubelet);
    let _hang = Kubelet::start(&server, NS, Mode::Hang, Delays::default());
    wait("a hanging probe pod", || {
        server
            .objects::<Pod>(NS)
            .iter()
            .any(|p| p["spec"]["nodeName"].is_string())
    })
    .await;
    first.signal("KILL");
    assert!(first.wait_exit(Duration::from_secs(5)).is_some(), "SIGKILL");
    let old: Vec<String> = runs(&server);
    assert!(
        !old.is_empty(),
        "the in-flight pod is left behind by the crash"
    );

    // The next start takes the Lease after it expires and sweeps.
    let mut second =
        Kubepulse::start(&["controller", "--config", &path, "--listen", "127.0.0.1:0"]);
    wait("old run swept", || {
        runs(&server).iter().all(|r| !old.contains(r))
    })
    .await;
    let sc = scrape(&second, "sweep counted", |s| {
        s.try_sum(
            "kubepulse_probe_objects_swept_total",
            &[("resource", "pods"), ("reason", "earlier_run")],
        ) >= Some(1.0)
    })
    .await;
    assert_eq!(sc.sum("kubepulse_controller_leader", &[]), 1.0);

    // SIGTERM: in-flight probe and sampler objects are deleted before exit.
    second.signal("TERM");
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    wait("no pods after SIGTERM", || {
        server.objects::<Pod>(NS).is_empty()
    })
    .await;
    assert!(
        server.objects::<ConfigMap>(NS).is_empty(),
        "{:?}",
        server.objects::<ConfigMap>(NS)
    );

    // Least privilege, checked on the wire: every request the controller
    // made is allowed by RULES (the list the chart's RBAC is tested
    // against), and every rule was needed.
    let mut used = vec![false; RULES.len()];
    for seen in server.requests().into_iter().filter(|s| s.actor.is_none()) {
        let (method, uri) = (&seen.method, &seen.uri);
        let path = uri.split_once('?').map_or(uri.as_str(), |(p, _)| p);
        let (place, group, resource, name) = classify(path);
        let verb = match seen.verb {
            Some(Verb::Watch) => "watch",
            Some(Verb::Get) => "get",
            Some(Verb::List) => "list",
            Some(Verb::Create) => "create",
            Some(Verb::Update) => "update",
            Some(Verb::Patch) => "patch",
            Some(Verb::Delete) => "delete",
            None => panic!("unexpected method {method} {uri}"),
        };
        let i = RULES.iter().position(|r| {
            r.place == place
                && r.group == group
                && r.resource == resource
                && r.verbs.contains(&verb)
                && (r.names.is_empty() || name.as_deref().is_some_and(|n| r.names.contains(&n)))
        });
        let i = i.unwrap_or_else(|| {
            panic!("{method} {uri} ({place:?} {group}/{resource} {verb}) is not granted")
        });
        used[i] = true;
    }
    for (r, u) in RULES.iter().zip(used) {
        assert!(u, "granted but never used: {r:?}");
    }
}

/// (place, API group, resource, name) of an API path.
fn classify(path: &str) -> (Place, &'static str, String, Option<String>) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest): (&'static str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => ("coordination.k8s.io", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io", rest),
        _ => panic!("unexpected path {path}"),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        _ => (None, rest),
    };
    let place = match ns {
        None => Place::Cluster,
        Some("kubepulse-probes") => Place::ProbeNamespace,
        Some("kubepulse") => Place::OwnNamespace,
        Some("kube-node-lease") => Place::NodeLease,
        Some("kube-system") => Place::KubeSystem,
        Some("default") => Place::DefaultNamespace,
        Some(other) => panic!("request into namespace {other}"),
    };
    (
        place,
        group,
        rest[0].to_string(),
        rest.get(1).map(|s| s.to_string()),
    )
}
