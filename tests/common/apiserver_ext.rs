//! A minimal in-process Kubernetes API server for the controller's tests
//! (written here because the shared one in tests/common/apiserver.rs had not
//! landed yet). Real wire format for what kube-rs uses: JSON objects with
//! resourceVersion, lists, watch streams (ADDED/MODIFIED/DELETED lines from
//! a resourceVersion), 404/409 Status bodies, optimistic concurrency on PUT,
//! merge PATCH, graceful pod deletion (deletionTimestamp, then removal by
//! the kubelet), equality label selectors. Faults: 429 with Retry-After,
//! slow responses, dropped watches, pod mutation by a "webhook".

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One stored change.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    key: String, // "<collection path>"
    kind: &'static str,
    object: Value,
}

/// An injected fault: requests whose method and path contain the strings match.
#[derive(Clone, Debug)]
pub struct Fault {
    /// HTTP method to match (None: any).
    pub method: Option<Method>,
    /// Substring of the path to match.
    pub path: String,
    /// Remaining matching requests to affect.
    pub count: usize,
    /// What to do.
    pub action: FaultAction,
}

/// What a fault does.
#[derive(Clone, Debug)]
pub enum FaultAction {
    /// Answer 429 with Retry-After: 1.
    Throttle,
    /// Delay the answer.
    Delay(Duration),
    /// Answer 500.
    ServerError,
}

#[derive(Default)]
struct Store {
    rv: u64,
    // collection path -> name -> object
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Change>,
    faults: Vec<Fault>,
    mutate_pods: bool,
    requests: Vec<(Method, String)>,
    /// Requests without the test-actor header: the controller's own.
    controller_requests: Vec<(Method, String)>,
}

/// The fake apiserver.
#[derive(Clone)]
pub struct FakeApiServer {
    /// Address it listens on.
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    tx: broadcast::Sender<Change>,
    watches: Arc<Mutex<CancellationToken>>,
    token: CancellationToken,
}

/// Header marking requests of test infrastructure.
pub const ACTOR_HEADER: &str = "x-kubepulse-test-actor";

/// Flow schema UID the server reports.
pub const FLOW_SCHEMA_UID: &str = "fs-0000-service-accounts";
/// Priority level UID the server reports.
pub const PRIORITY_LEVEL_UID: &str = "pl-0000-workload-low";

fn now_rfc3339() -> String {
    // metav1.Time has 1 s resolution.
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).unwrap_or_default()
}

fn status(code: u16, reason: &str, msg: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":msg,"reason":reason,"code":code})
}

fn full(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

/// Parsed request path.
struct Target {
    /// Collection path, e.g. /api/v1/namespaces/x/pods.
    collection: String,
    name: Option<String>,
    api_version: &'static str,
    kind: &'static str,
    namespace: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest, api_version) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("/api/v1".to_string(), rest.to_vec(), "v1"),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => (
            "/apis/coordination.k8s.io/v1".to_string(),
            rest.to_vec(),
            "coordination.k8s.io/v1",
        ),
        _ => return None,
    };
    let kind_of = |r: &str| -> Option<&'static str> {
        Some(match r {
            "pods" => "Pod",
            "configmaps" => "ConfigMap",
            "events" => "Event",
            "nodes" => "Node",
            "namespaces" => "Namespace",
            "leases" => "Lease",
            _ => return None,
        })
    };
    match rest.as_slice() {
        ["namespaces", ns, res] => Some(Target {
            collection: format!("{prefix}/namespaces/{ns}/{res}"),
            name: None,
            api_version,
            kind: kind_of(res)?,
            namespace: Some(ns.to_string()),
        }),
        // A `/status` subresource is served as the object itself.
        ["namespaces", ns, res, name] | ["namespaces", ns, res, name, "status"] => Some(Target {
            collection: format!("{prefix}/namespaces/{ns}/{res}"),
            name: Some(name.to_string()),
            api_version,
            kind: kind_of(res)?,
            namespace: Some(ns.to_string()),
        }),
        [res] => Some(Target {
            collection: format!("{prefix}/{res}"),
            name: None,
            api_version,
            kind: kind_of(res)?,
            namespace: None,
        }),
        [res, name] => Some(Target {
            collection: format!("{prefix}/{res}"),
            name: Some(name.to_string()),
            api_version,
            kind: kind_of(res)?,
            namespace: None,
        }),
        _ => None,
    }
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches_selector(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &obj["metadata"]["labels"];
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v),
        None => !labels[term].is_null(),
    })
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl FakeApiServer {
    /// Starts the server on 127.0.0.1 with namespaces created.
    pub async fn start(namespaces: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, _) = broadcast::channel(4096);
        let s = Self {
            addr,
            store: Arc::default(),
            tx,
            watches: Arc::new(Mutex::new(CancellationToken::new())),
            token: CancellationToken::new(),
        };
        for ns in namespaces {
            s.insert(
                "/api/v1/namespaces",
                json!({"metadata":{"name":ns}}),
                "v1",
                "Namespace",
            );
        }
        let server = s.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = server.token.cancelled() => return,
                };
                let srv = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let srv = srv.clone();
                        async move { Ok::<_, Infallible>(srv.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        s
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let cfg = kube::Config::new(self.url().parse().expect("url"));
        kube::Client::try_from(cfg).expect("client")
    }

    /// A kube client marked as test infrastructure (the simulated kubelet),
    /// so its requests are not mistaken for the controller's.
    pub fn actor_client(&self) -> kube::Client {
        let mut cfg = kube::Config::new(self.url().parse().expect("url"));
        cfg.headers.push((
            ACTOR_HEADER.parse().expect("name"),
            "kubelet".parse().expect("value"),
        ));
        kube::Client::try_from(cfg).expect("client")
    }

    /// Requests (method, path?query) that did not come from an actor client.
    pub fn controller_requests(&self) -> Vec<(Method, String)> {
        self.store.lock().expect("lock").controller_requests.clone()
    }

    /// Stops accepting connections and ends every watch.
    pub fn stop(&self) {
        self.token.cancel();
        self.drop_watches();
    }

    /// Ends every open watch stream (as a connection drop would).
    pub fn drop_watches(&self) {
        let mut w = self.watches.lock().expect("lock");
        w.cancel();
        *w = CancellationToken::new();
    }

    /// Adds a fault.
    pub fn fault(&self, f: Fault) {
        self.store.lock().expect("lock").faults.push(f);
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.store.lock().expect("lock").faults.clear();
    }

    /// Makes a "mutating webhook" add an init container to created pods.
    pub fn mutate_pods(&self, on: bool) {
        self.store.lock().expect("lock").mutate_pods = on;
    }

    /// Requests served so far (method, path).
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.store.lock().expect("lock").requests.clone()
    }

    /// Objects in a collection path.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.store
            .lock()
            .expect("lock")
            .objects
            .get(collection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Inserts or replaces an object directly (test setup), emitting the event.
    pub fn insert(&self, collection: &str, mut obj: Value, api_version: &str, kind: &str) -> Value {
        let mut st = self.store.lock().expect("lock");
        st.rv += 1;
        let rv = st.rv;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let existed = st
            .objects
            .entry(collection.to_string())
            .or_default()
            .insert(name, obj.clone())
            .is_some();
        let ch = Change {
            rv,
            key: collection.to_string(),
            kind: if existed { "MODIFIED" } else { "ADDED" },
            object: obj.clone(),
        };
        st.log.push(ch.clone());
        let _ = self.tx.send(ch);
        obj
    }

    fn remove(&self, st: &mut Store, collection: &str, name: &str) -> Option<Value> {
        let mut obj = st.objects.get_mut(collection)?.remove(name)?;
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let ch = Change {
            rv: st.rv,
            key: collection.to_string(),
            kind: "DELETED",
            object: obj.clone(),
        };
        st.log.push(ch.clone());
        let _ = self.tx.send(ch);
        Some(obj)
    }

    fn take_fault(&self, method: &Method, path: &str, actor: bool) -> Option<FaultAction> {
        let mut st = self.store.lock().expect("lock");
        st.requests.push((method.clone(), path.to_string()));
        if !actor {
            st.controller_requests
                .push((method.clone(), path.to_string()));
        }
        let f = st.faults.iter_mut().find(|f| {
            f.count > 0 && f.method.as_ref().is_none_or(|m| m == method) && path.contains(&f.path)
        })?;
        f.count -= 1;
        Some(f.action.clone())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let q = query(req.uri().query());
        let actor = req.headers().contains_key(ACTOR_HEADER);
        let mut resp = match self.take_fault(
            &method,
            &format!("{}?{}", path, req.uri().query().unwrap_or_default()),
            actor,
        ) {
            Some(FaultAction::Throttle) => {
                let mut r = full(
                    StatusCode::TOO_MANY_REQUESTS,
                    &status(429, "TooManyRequests", "too many requests"),
                );
                r.headers_mut()
                    .insert("retry-after", "1".parse().expect("header"));
                r
            }
            Some(FaultAction::ServerError) => full(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status(500, "InternalError", "injected"),
            ),
            Some(FaultAction::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.serve(method, &path, q, req).await
            }
            None => self.serve(method, &path, q, req).await,
        };
        let h = resp.headers_mut();
        h.insert(
            "x-kubernetes-pf-flowschema-uid",
            FLOW_SCHEMA_UID.parse().expect("header"),
        );
        h.insert(
            "x-kubernetes-pf-prioritylevel-uid",
            PRIORITY_LEVEL_UID.parse().expect("header"),
        );
        resp
    }

    async fn serve(
        &self,
        method: Method,
        path: &str,
        q: BTreeMap<String, String>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let Some(t) = parse_path(path) else {
            return full(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", "no such path"),
            );
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let watch = matches!(q.get("watch").map(String::as_str), Some("true") | Some("1"));
        match (method, &t.name) {
            (Method::GET, None) if watch => self.watch(&t, &q),
            (Method::GET, None) => self.list(&t, &q),
            (Method::GET, Some(n)) => match self.get(&t.collection, n) {
                Some(o) => full(StatusCode::OK, &o),
                None => full(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", &format!("{n} not found")),
                ),
            },
            (Method::POST, None) => self.create(&t, body),
            (Method::PUT, Some(n)) => self.replace(&t, n, body),
            (Method::PATCH, Some(n)) => {
                let Some(mut cur) = self.get(&t.collection, n) else {
                    return full(StatusCode::NOT_FOUND, &status(404, "NotFound", "not found"));
                };
                merge(&mut cur, &body);
                full(
                    StatusCode::OK,
                    &self.insert(&t.collection, cur, t.api_version, t.kind),
                )
            }
            (Method::DELETE, Some(n)) => self.delete(&t, n, &body),
            _ => full(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", "unsupported"),
            ),
        }
    }

    fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .expect("lock")
            .objects
            .get(collection)?
            .get(name)
            .cloned()
    }

    fn list(&self, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
        let st = self.store.lock().expect("lock");
        let items: Vec<Value> = st
            .objects
            .get(&t.collection)
            .map(|m| {
                m.values()
                    .filter(|o| matches_selector(o, q.get("labelSelector")))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        full(
            StatusCode::OK,
            &json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version,
                     "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        )
    }

    fn create(&self, t: &Target, mut obj: Value) -> Response<Body> {
        let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
            return full(
                StatusCode::UNPROCESSABLE_ENTITY,
                &status(422, "Invalid", "name required"),
            );
        };
        if self.get(&t.collection, &name).is_some() {
            return full(
                StatusCode::CONFLICT,
                &status(409, "AlreadyExists", &format!("{name} already exists")),
            );
        }
        if let Some(ns) = &t.namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if t.kind == "Pod" && self.store.lock().expect("lock").mutate_pods {
            obj["spec"]["initContainers"] = json!([{"name": "injected", "image": "sidecar"}]);
        }
        if t.kind == "Pod" && obj["status"].is_null() {
            obj["status"] = json!({"phase": "Pending"});
        }
        full(
            StatusCode::CREATED,
            &self.insert(&t.collection, obj, t.api_version, t.kind),
        )
    }

    fn replace(&self, t: &Target, name: &str, obj: Value) -> Response<Body> {
        let Some(cur) = self.get(&t.collection, name) else {
            return full(StatusCode::NOT_FOUND, &status(404, "NotFound", "not found"));
        };
        let want = obj["metadata"]["resourceVersion"].as_str();
        if want.is_some_and(|w| Some(w) != cur["metadata"]["resourceVersion"].as_str()) {
            return full(
                StatusCode::CONFLICT,
                &status(409, "Conflict", "the object has been modified"),
            );
        }
        let mut obj = obj;
        obj["metadata"]["creationTimestamp"] = cur["metadata"]["creationTimestamp"].clone();
        obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
        if !cur["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = cur["metadata"]["deletionTimestamp"].clone();
        }
        if let Some(ns) = &t.namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        full(
            StatusCode::OK,
            &self.insert(&t.collection, obj, t.api_version, t.kind),
        )
    }

    fn delete(&self, t: &Target, name: &str, opts: &Value) -> Response<Body> {
        let Some(cur) = self.get(&t.collection, name) else {
            return full(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("{name} not found")),
            );
        };
        let grace0 = opts["gracePeriodSeconds"].as_i64() == Some(0);
        let bound = cur["spec"]["nodeName"].as_str().is_some();
        // Bound pods terminate gracefully: the kubelet removes them later.
        if t.kind == "Pod" && bound && !grace0 {
            if cur["metadata"]["deletionTimestamp"].is_null() {
                let mut c = cur;
                c["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                c["metadata"]["deletionGracePeriodSeconds"] = json!(30);
                return full(
                    StatusCode::OK,
                    &self.insert(&t.collection, c, t.api_version, t.kind),
                );
            }
            return full(StatusCode::OK, &cur);
        }
        let mut st = self.store.lock().expect("lock");
        match self.remove(&mut st, &t.collection, name) {
            Some(o) => full(StatusCode::OK, &o),
            None => full(StatusCode::NOT_FOUND, &status(404, "NotFound", "not found")),
        }
    }

    fn watch(&self, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let selector = q.get("labelSelector").cloned();
        let mut rx = self.tx.subscribe();
        let (backlog, now_rv): (Vec<Change>, u64) = {
            let st = self.store.lock().expect("lock");
            if from == 0 {
                // "Any": synthetic ADDED for current objects.
                let cur = st
                    .objects
                    .get(&t.collection)
                    .map(|m| m.values().cloned().collect::<Vec<_>>())
                    .unwrap_or_default();
                (
                    cur.into_iter()
                        .map(|o| Change {
                            rv: 0,
                            key: t.collection.clone(),
                            kind: "ADDED",
                            object: o,
                        })
                        .collect(),
                    st.rv,
                )
            } else {
                (
                    st.log
                        .iter()
                        .filter(|c| c.rv > from && c.key == t.collection)
                        .cloned()
                        .collect(),
                    st.rv,
                )
            }
        };
        let key = t.collection.clone();
        let cancel = self.watches.lock().expect("lock").clone();
        let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(256);
        tokio::spawn(async move {
            let line = |c: &Change| {
                Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object})))
            };
            let deadline = async {
                match timeout {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(deadline);
            for c in &backlog {
                if matches_selector(&c.object, selector.as_ref()) && tx.send(line(c)).await.is_err()
                {
                    return;
                }
            }
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(c) if c.rv > now_rv && c.key == key && matches_selector(&c.object, selector.as_ref()) => {
                            if tx.send(line(&c)).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(_) => return,
                    },
                    _ = &mut deadline => return,
                    _ = cancel.cancelled() => return,
                }
            }
        });
        let stream = futures::stream::unfold(out, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        r
    }
}
