//! A Kubernetes API test server: hyper 1 on loopback, speaking the real wire
//! format for what kube-rs clients use, so tests drive the real client and
//! watcher code paths.
//!
//! Generic over resources: any `/api/v1/...` or `/apis/{group}/{version}/...`
//! path is a collection of JSON objects (namespaced or cluster-scoped), so
//! Pods, Services, ConfigMaps, Nodes, Namespaces and Leases all work without
//! code here. Supported:
//! - GET list (`{Kind}List` with `metadata.resourceVersion`), GET one (404);
//! - watch (`?watch=true&resourceVersion=R`): newline-delimited JSON
//!   `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` events, replayed from the
//!   change log after R (R = "0" or empty: synthetic ADDED for current
//!   objects), `ERROR` 410 `Expired` when R is older than the last
//!   [`ApiServer::compact`], objects moving in and out of a label selector as
//!   ADDED/DELETED, `timeoutSeconds`;
//! - `labelSelector` (`=`, `==`, `!=`, exists, `!key`, `in`, `notin`) and
//!   `fieldSelector` (`=`, `==`, `!=` on dotted paths such as
//!   `metadata.name` or `spec.nodeName`);
//! - POST create (409 AlreadyExists, `generateName`), PUT update (409
//!   Conflict on a stale `metadata.resourceVersion`), PATCH (merge and
//!   strategic merge as RFC 7386 merge; server-side apply as merge, creating
//!   when absent), DELETE (404); `/status` subresources act on the object;
//! - faults: [`ApiServer::fail_next`] (any status, 429 with Retry-After,
//!   dropped connection, 410 Expired), [`ApiServer::set_down`] (connections
//!   refused and open ones cut), [`ApiServer::drop_connections`].
//!
//! Not modelled: pagination (`limit` is ignored, which the API allows),
//! JSON patch, admission, finalizers and garbage collection.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

#[path = "apiserver/selectors.rs"]
mod selectors;
#[path = "apiserver/verbs.rs"]
mod verbs;

use verbs::{create, delete_one, get_one, list, patch, update, watch_stream};

type Body = BoxBody<Bytes, std::io::Error>;

/// The API verb of a request, for fault matching and request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET collection.
    List,
    /// GET collection with `watch=true`.
    Watch,
    /// GET one object.
    Get,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

/// An injected failure for the next matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Respond with this status and a `Status` body.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooManyRequests {
        /// Seconds in the Retry-After header.
        retry_after: u64,
    },
    /// Send response headers, then cut the connection.
    Drop,
    /// 410 Gone `Expired`: an `ERROR` event on a watch, the status on a list.
    Expired,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its verb.
    pub verb: Verb,
    /// Resource (plural), e.g. `pods`.
    pub resource: String,
    /// Path and query.
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    gv: String,
    resource: String,
    namespace: String,
    name: String,
}

/// A committed change: `old` is `None` on creation, `new` on deletion.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    key: Key,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Debug, Clone)]
enum Broadcast {
    Change(Arc<Change>),
    Bookmark(u64),
}

struct Inner {
    rv: u64,
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Arc<Change>>,
    kinds: BTreeMap<(String, String), String>,
    faults: VecDeque<(Option<Verb>, Fault)>,
    seen: Vec<Seen>,
    names: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Broadcast>,
    kill: watch::Sender<u64>,
    down: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the real failure behind a
        // poisoned lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running test server; stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.kill.send_modify(|g| *g += 1);
    }
}

impl ApiServer {
    /// Starts a server on an ephemeral loopback port.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (events, _) = broadcast::channel(4096);
        let (kill, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 1000,
                compacted: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                kinds: BTreeMap::new(),
                faults: VecDeque::new(),
                seen: Vec::new(),
                names: 0,
            }),
            events,
            kill,
            down: AtomicBool::new(false),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        ApiServer { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (default retry policy on, as in
    /// production).
    pub fn client(&self) -> kube::Client {
        let uri = self.url().parse().expect("uri");
        kube::Client::try_from(kube::Config::new(uri)).expect("client")
    }

    /// Creates or replaces a typed object (ADDED or MODIFIED to watchers);
    /// returns the stored JSON with its new resourceVersion.
    pub fn apply<K>(&self, obj: &K) -> Value
    where
        K: k8s_openapi::Resource + serde::Serialize,
    {
        let value = serde_json::to_value(obj).expect("serialize");
        self.apply_value(K::URL_PATH_SEGMENT, is_namespaced::<K>(), value)
    }

    /// Creates or replaces an object given as JSON (`apiVersion` and `kind`
    /// required); `resource` is the plural URL segment.
    pub fn apply_value(&self, resource: &str, namespaced: bool, mut value: Value) -> Value {
        let gv = value["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_string();
        let kind = value["kind"].as_str().expect("kind").to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let namespace = if namespaced {
            let ns = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            value["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        let key = Key {
            gv: gv.clone(),
            resource: resource.to_string(),
            namespace,
            name,
        };
        let mut inner = self.shared.lock();
        inner.kinds.insert((gv, resource.to_string()), kind);
        let old = inner.objects.get(&key).cloned();
        let created = old.as_ref().map(|o| o["metadata"].clone());
        prepare_new(&mut inner, &mut value, created.as_ref());
        commit(&mut inner, &self.shared.events, key, Some(value))
            .expect("an apply always stores an object")
    }

    /// Deletes a typed object (DELETED to watchers); returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let ns = if is_namespaced::<K>() { namespace } else { "" };
        let key = Key {
            gv: K::API_VERSION.to_string(),
            resource: K::URL_PATH_SEGMENT.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let mut inner = self.shared.lock();
        if !inner.objects.contains_key(&key) {
            return false;
        }
        commit(&mut inner, &self.shared.events, key, None);
        true
    }

    /// The stored JSON of a typed object.
    pub fn get<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> Option<Value> {
        let ns = if is_namespaced::<K>() { namespace } else { "" };
        let key = Key {
            gv: K::API_VERSION.to_string(),
            resource: K::URL_PATH_SEGMENT.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        self.shared.lock().objects.get(&key).cloned()
    }

    /// Fails the next request with `verb` (any verb when `None`).
    pub fn fail_next(&self, verb: Option<Verb>, fault: Fault) {
        self.shared.lock().faults.push_back((verb, fault));
    }

    /// Down: new connections are closed at once and open ones are cut.
    /// Up again: connections are served.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_connections();
        }
    }

    /// Cuts every open connection (watches included), as a load balancer
    /// or apiserver restart would.
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|g| *g += 1);
    }

    /// Forgets the change log: watches resuming from an older
    /// resourceVersion get `410 Expired` and must re-list.
    pub fn compact(&self) {
        let mut inner = self.shared.lock();
        inner.compacted = inner.rv;
        inner.log.clear();
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that
    /// asked for bookmarks.
    pub fn bookmark(&self) {
        let inner = self.shared.lock();
        let _ = self.shared.events.send(Broadcast::Bookmark(inner.rv));
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// How many requests with `verb` on `resource` were seen.
    pub fn count(&self, verb: Verb, resource: &str) -> usize {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| s.verb == verb && s.resource == resource)
            .count()
    }
}

fn is_namespaced<K: k8s_openapi::Resource>() -> bool {
    std::any::type_name::<K::Scope>().ends_with("NamespaceResourceScope")
}

/// Fills the server-owned metadata of a new object version.
fn prepare_new(inner: &mut Inner, value: &mut Value, old_meta: Option<&Value>) {
    let meta = &mut value["metadata"];
    match old_meta {
        Some(old) => {
            meta["uid"] = old["uid"].clone();
            meta["creationTimestamp"] = old["creationTimestamp"].clone();
        }
        None => {
            inner.names += 1;
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", inner.names));
            let now = k8s_openapi::jiff::Timestamp::now();
            meta["creationTimestamp"] = json!(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }
}

/// Stores (or deletes, when `new` is `None`) under a fresh resourceVersion,
/// logs the change and tells the watchers. Returns the stored object, or
/// the deleted one with the deletion's resourceVersion.
fn commit(
    inner: &mut Inner,
    events: &broadcast::Sender<Broadcast>,
    key: Key,
    new: Option<Value>,
) -> Option<Value> {
    inner.rv += 1;
    let rv = inner.rv;
    let old = inner.objects.remove(&key);
    let new = new.map(|mut v| {
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        v
    });
    if let Some(v) = &new {
        inner.objects.insert(key.clone(), v.clone());
    }
    let change = Arc::new(Change {
        rv,
        key,
        old: old.clone(),
        new: new.clone(),
    });
    inner.log.push(change.clone());
    // Sent under the lock, so a watch subscribing under it never misses or
    // duplicates a change.
    let _ = events.send(Broadcast::Change(change));
    new.or_else(|| {
        old.map(|mut o| {
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            o
        })
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.down.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let mut kill = shared.kill.subscribe();
        let generation = *kill.borrow_and_update();
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.wait_for(|g| *g != generation) => {}
            }
        });
    }
}

/// A parsed API path.
#[derive(Debug)]
struct Route {
    gv: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    // `/status` and other subresources act on the object itself.
    let (resource, name) = match rest {
        [r] => (r.to_string(), None),
        [r, n, ..] => (r.to_string(), Some(n.to_string())),
        _ => return None,
    };
    Some(Route {
        gv,
        resource,
        namespace,
        name,
    })
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("json"));
    let mut r = Response::new(Full::new(bytes).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    full(sc, &status_body(code, reason, message))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// A body that sends nothing and then fails, so hyper cuts the connection.
fn dropped() -> Response<Body> {
    let s = futures::stream::once(async {
        Err::<Frame<Bytes>, _>(std::io::Error::other("injected connection drop"))
    });
    Response::new(BodyExt::boxed(StreamBody::new(s)))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let Some(route) = parse_route(req.uri().path()) else {
        return status(404, "NotFound", "no such path");
    };
    let q = query(req.uri());
    let verb = match (req.method(), &route.name) {
        (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            Verb::Watch
        }
        (&Method::GET, None) => Verb::List,
        (&Method::GET, Some(_)) => Verb::Get,
        (&Method::POST, None) => Verb::Create,
        (&Method::PUT, Some(_)) => Verb::Update,
        (&Method::PATCH, Some(_)) => Verb::Patch,
        (&Method::DELETE, Some(_)) => Verb::Delete,
        _ => return status(405, "MethodNotAllowed", "unsupported method"),
    };
    let fault = {
        let mut inner = shared.lock();
        inner.seen.push(Seen {
            verb,
            resource: route.resource.clone(),
            uri: req.uri().to_string(),
        });
        let pos = inner
            .faults
            .iter()
            .position(|(v, _)| v.is_none_or(|v| v == verb));
        pos.and_then(|i| inner.faults.remove(i)).map(|(_, f)| f)
    };
    match fault {
        Some(Fault::Status(code)) => return status(code, reason_for(code), "injected failure"),
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut r = status(429, "TooManyRequests", "injected throttling");
            r.headers_mut()
                .insert("Retry-After", hyper::header::HeaderValue::from(retry_after));
            return r;
        }
        Some(Fault::Drop) => return dropped(),
        Some(Fault::Expired) if verb == Verb::Watch => {
            let ev = json!({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")});
            let line = format!("{ev}\n");
            let s = futures::stream::once(async move { Ok(Frame::data(Bytes::from(line))) });
            return Response::new(BodyExt::boxed(StreamBody::new(s)));
        }
        Some(Fault::Expired) => return status(410, "Expired", "too old resource version"),
        None => {}
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(400, "BadRequest", "unreadable body"),
    };
    match verb {
        Verb::List => list(&shared, &route, &q),
        Verb::Watch => watch_stream(&shared, &route, &q),
        Verb::Get => get_one(&shared, &route),
        Verb::Create => create(&shared, &route, &body),
        Verb::Update => update(&shared, &route, &body),
        Verb::Patch => patch(&shared, &route, &body, &content_type),
        Verb::Delete => delete_one(&shared, &route),
    }
}

fn key_of(route: &Route) -> Key {
    Key {
        gv: route.gv.clone(),
        resource: route.resource.clone(),
        namespace: route.namespace.clone().unwrap_or_default(),
        name: route.name.clone().unwrap_or_default(),
    }
}

fn kind_of(inner: &Inner, route: &Route) -> String {
    if let Some(k) = inner.kinds.get(&(route.gv.clone(), route.resource.clone())) {
        return k.clone();
    }
    let known = [
        ("pods", "Pod"),
        ("services", "Service"),
        ("configmaps", "ConfigMap"),
        ("nodes", "Node"),
        ("namespaces", "Namespace"),
        ("leases", "Lease"),
        ("events", "Event"),
        ("endpoints", "Endpoints"),
        ("endpointslices", "EndpointSlice"),
        ("secrets", "Secret"),
    ];
    known
        .iter()
        .find(|(r, _)| *r == route.resource)
        .map(|(_, k)| k.to_string())
        .unwrap_or_else(|| route.resource.trim_end_matches('s').to_string())
}
