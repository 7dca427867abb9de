//! The API test server itself, through the real kube client, for the kinds
//! and verbs the controller (issue 6) will need beyond pod discovery:
//! create/get/replace/patch/delete with 409 and 404, server-side apply,
//! cluster-scoped kinds, Leases, label selectors on lists, watch events.

use kubepulse_testkit::apiserver;

use apiserver::{ApiServer, Fault, Verb};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::WatchStreamExt;
use serde_json::json;

fn cm(name: &str, label: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"tier": label}},
        "data": {"k": "v"}
    }))
    .expect("configmap")
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn crud_with_conflicts() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns1");
    let pp = PostParams::default();
    let created = api.create(&pp, &cm("a", "web")).await.expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        code(api.create(&pp, &cm("a", "web")).await.expect_err("dup")),
        409
    );
    api.create(&pp, &cm("b", "db")).await.expect("create b");

    // Label selectors on list.
    let web = api
        .list(&ListParams::default().labels("tier=web"))
        .await
        .expect("list");
    assert_eq!(web.items.len(), 1);
    assert!(web.metadata.resource_version.is_some());

    // Replace with the current resourceVersion works; with a stale one, 409.
    let mut next = created.clone();
    next.data = Some([("k".to_string(), "v2".to_string())].into());
    let replaced = api.replace("a", &pp, &next).await.expect("replace");
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(
        code(api.replace("a", &pp, &next).await.expect_err("stale")),
        409
    );

    // Merge patch; server-side apply creates when absent.
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "y"}})),
        )
        .await
        .expect("merge patch");
    let data = patched.data.expect("data");
    assert_eq!((data["k"].as_str(), data["x"].as_str()), ("v2", "y"));
    let ssa = PatchParams::apply("kubepulse-test").force();
    let applied = api
        .patch("c", &ssa, &Patch::Apply(cm("c", "web")))
        .await
        .expect("apply");
    assert_eq!(applied.metadata.name.as_deref(), Some("c"));

    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(code(api.get("a").await.expect_err("gone")), 404);
    assert_eq!(
        code(
            api.delete("a", &DeleteParams::default())
                .await
                .expect_err("gone")
        ),
        404
    );

    // Injected failures reach the client as API errors.
    server.fail_next(Some(Verb::Get), Fault::Status(500));
    assert_eq!(code(api.get("b").await.expect_err("500")), 500);
    server.fail_next(Some(Verb::List), Fault::Expired);
    assert_eq!(
        code(api.list(&ListParams::default()).await.expect_err("410")),
        410
    );
}

#[tokio::test]
async fn cluster_scoped_kinds_and_leases() {
    let server = ApiServer::start().await;
    let nodes: Api<Node> = Api::all(server.client());
    server.apply(
        &serde_json::from_value::<Node>(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}))
        .expect("node"),
    );
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .expect("nodes")
            .items
            .len(),
        1
    );
    let nss: Api<Namespace> = Api::all(server.client());
    let ns: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"generateName": "kp-"}}))
    .expect("ns");
    let made = nss
        .create(&PostParams::default(), &ns)
        .await
        .expect("create ns");
    assert!(made.metadata.name.expect("name").starts_with("kp-"));

    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kubepulse-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}))
    .expect("lease");
    let held = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    let mut stolen = held.clone();
    if let Some(s) = stolen.spec.as_mut() {
        s.holder_identity = Some("b".into());
    }
    leases
        .replace("kubepulse-controller", &PostParams::default(), &stolen)
        .await
        .expect("take");
    // The first holder's renewal carries its stale resourceVersion: 409.
    assert_eq!(
        code(
            leases
                .replace("kubepulse-controller", &PostParams::default(), &held)
                .await
                .expect_err("stale")
        ),
        409
    );
}

#[tokio::test]
async fn raw_watch_events() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns1");
    api.create(&PostParams::default(), &cm("a", "web"))
        .await
        .expect("a");
    let from = server.resource_version().to_string();
    let wp = WatchParams::default().labels("tier=web").timeout(30);
    let mut events = api.watch(&wp, &from).await.expect("watch").boxed();
    let mut b = cm("a", "db");
    b.metadata.resource_version = None;
    // Leaves the selection: DELETED; a new matching object: ADDED.
    api.replace("a", &PostParams::default(), &b)
        .await
        .expect("relabel");
    api.create(&PostParams::default(), &cm("c", "web"))
        .await
        .expect("c");
    server.bookmark();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let ev = events.try_next().await.expect("event").expect("open");
        kinds.push(match ev {
            WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.unwrap_or_default()),
            WatchEvent::Modified(_) => "MODIFIED".into(),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.unwrap_or_default()),
            WatchEvent::Bookmark(_) => "BOOKMARK".into(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        });
    }
    assert_eq!(kinds, ["DELETED a", "ADDED c", "BOOKMARK"]);
    // Too old after compaction.
    server.compact();
    let mut old = api.watch(&wp, &from).await.expect("watch").boxed();
    match old.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

/// The change log is a bounded window, as etcd compaction and the
/// apiserver's watch cache keep: resuming inside it replays the changes,
/// resuming before it gets 410 Expired, and kube's watcher then re-lists
/// and still converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_window() {
    let server = ApiServer::start().await;
    server.set_log_window(3);
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns1");
    let pp = PostParams::default();
    let before = server.resource_version().to_string();
    for name in ["a", "b", "c", "d", "e"] {
        api.create(&pp, &cm(name, "web")).await.expect("create");
    }
    let wp = WatchParams::default().timeout(30);
    // Inside the window (the last 3 changes: c, d, e): replayed.
    let inside = (server.resource_version() - 2).to_string();
    let mut events = api.watch(&wp, &inside).await.expect("watch").boxed();
    let mut names = Vec::new();
    while names.len() < 2 {
        match events.try_next().await.expect("event").expect("open") {
            WatchEvent::Added(o) => names.push(o.metadata.name.unwrap_or_default()),
            other => panic!("expected ADDED, got {other:?}"),
        }
    }
    assert_eq!(names, ["d", "e"]);
    // Before the window: 410.
    let mut old = api.watch(&wp, &before).await.expect("watch").boxed();
    match old.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    // kube's watcher, resuming from a compacted resourceVersion after its
    // watch ends, re-lists and sees every object. With a backoff, as every
    // watcher in src/ has: without one, an error that needs no IO (kube's
    // request buffer closed, or a refused loopback connect, both once the
    // runtime shuts down at the end of the test) is retried at once, the
    // task never yields, and the runtime's shutdown waits for it forever.
    let (store, reflector) = {
        let (reader, writer) = kube::runtime::reflector::store();
        let stream = kube::runtime::reflector(
            writer,
            kube::runtime::watcher(api.clone(), Default::default()).default_backoff(),
        );
        (reader, tokio::spawn(stream.for_each(|_| async {})))
    };
    store.wait_until_ready().await.expect("ready");
    server.set_down(true);
    for name in ["f", "g", "h", "i"] {
        server.apply_json::<ConfigMap>(json!({"metadata": {"name": name, "namespace": "ns1"}}));
    }
    server.set_down(false);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.state().len() != 9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-list after 410: {} objects",
            store.state().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    reflector.abort();
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    use k8s_openapi::api::core::v1::Service;
    let server = ApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "ns1");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
        "spec": {"type": "NodePort", "selector": {"app": "a"},
            "ports": [{"name": "u", "port": 53, "protocol": "UDP"}, {"name": "t", "port": 80, "targetPort": "http"}]}
    }))
    .expect("service");
    let created = api
        .create(&PostParams::default(), &svc)
        .await
        .expect("create");
    let spec = created.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.100"));
    let ports = spec.ports.expect("ports");
    assert_eq!(ports[0].node_port, Some(30000));
    assert_eq!(ports[1].node_port, Some(30001));
    assert_eq!(
        ports[1].protocol.as_deref(),
        Some("TCP"),
        "protocol defaulted"
    );
    let second = api
        .create(
            &PostParams::default(),
            &Service {
                metadata: kube::api::ObjectMeta {
                    name: Some("b".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create b");
    assert_eq!(
        second.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.96.0.101")
    );
}

#[tokio::test]
async fn health_version_and_discovery_documents() {
    let server = ApiServer::start().await;
    server.apply_json::<Lease>(json!({"metadata": {"name": "l", "namespace": "n"}, "spec": {}}));
    let addr: std::net::SocketAddr = server
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let get = |path: &'static str| {
        tokio::task::spawn_blocking(move || kubepulse_testkit::http::get(addr, path).expect("GET"))
    };
    assert_eq!(get("/livez").await.expect("join"), (200, "ok".to_string()));
    assert_eq!(get("/readyz").await.expect("join").0, 200);
    let version: serde_json::Value =
        serde_json::from_str(&get("/version").await.expect("join").1).expect("json");
    assert_eq!(version["gitVersion"], apiserver::GIT_VERSION);
    let api: serde_json::Value =
        serde_json::from_str(&get("/api").await.expect("join").1).expect("json");
    assert_eq!(api["versions"], json!(["v1"]));
    let apis: serde_json::Value =
        serde_json::from_str(&get("/apis").await.expect("join").1).expect("json");
    assert_eq!(apis["groups"][0]["name"], "coordination.k8s.io", "{apis}");
    assert_eq!(get("/nope").await.expect("join").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_same_api_to_clients_that_trust_the_ca() {
    use pki_types::pem::PemObject;
    let server = ApiServer::start().await;
    server.apply(&cm("seen", "web"));
    let dir = tempfile::tempdir().expect("tempdir");
    kubepulse_testkit::lab::reach::issue_certificates(dir.path(), "IP:127.0.0.1");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    server.serve_tls(
        listener,
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    );
    let ca = pki_types::CertificateDer::from_pem_file(dir.path().join("ca.crt")).expect("CA");
    let mut cfg = kube::Config::new(format!("https://{addr}").parse().expect("uri"));
    cfg.root_cert = Some(vec![ca.to_vec()]);
    let client = kube::Client::try_from(cfg).expect("client");
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list over TLS")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, vec!["seen".to_string()]);
    // A client without the CA is refused at the handshake.
    let untrusted = kube::Client::try_from(kube::Config::new(
        format!("https://{addr}").parse().expect("uri"),
    ))
    .expect("client");
    let err = Api::<ConfigMap>::default_namespaced(untrusted)
        .list(&ListParams::default())
        .await;
    assert!(
        err.is_err(),
        "a client that does not trust the CA must fail"
    );
}
