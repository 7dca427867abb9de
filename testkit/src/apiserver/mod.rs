//! A Kubernetes API test server: hyper 1 on loopback, speaking the real wire
//! format for what kube-rs clients use, so tests drive the real client and
//! watcher code paths.
//!
//! Generic over resources: any `/api/v1/...` or `/apis/{group}/{version}/...`
//! path is a collection of JSON objects (namespaced or cluster-scoped), so
//! Pods, Services, ConfigMaps, Nodes, Namespaces, Events and Leases all work
//! without code here. Supported:
//! - GET list (`{Kind}List` with `metadata.resourceVersion`), GET one (404);
//! - watch (`?watch=true&resourceVersion=R`): newline-delimited JSON
//!   `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` events, replayed from the
//!   change log after R (R = "0" or empty: synthetic ADDED for current
//!   objects), `ERROR` 410 `Expired` when R is older than the change log
//!   keeps (a window of the last 4,096 changes, [`ApiServer::set_log_window`],
//!   or the last [`ApiServer::compact`]), objects moving in and out of a label selector as
//!   ADDED/DELETED, `timeoutSeconds`;
//! - `labelSelector` (`=`, `==`, `!=`, exists, `!key`, `in`, `notin`) and
//!   `fieldSelector` (`=`, `==`, `!=` on dotted paths such as
//!   `metadata.name` or `spec.nodeName`);
//! - POST create (409 AlreadyExists, `generateName`), PUT update (409
//!   Conflict on a stale `metadata.resourceVersion`), PATCH (merge and
//!   strategic merge as RFC 7386 merge; server-side apply as merge, creating
//!   when absent), DELETE (404); `/status` subresources act on the object;
//! - pods: `status.phase` defaults to `Pending`; deleting a pod bound to a
//!   node is graceful (`deletionTimestamp` set, the object stays until a
//!   DELETE with `gracePeriodSeconds: 0`, as the kubelet sends);
//!   [`ApiServer::mutate_on_create`] acts as a mutating admission webhook;
//! - API Priority and Fairness headers on every response
//!   ([`FLOW_SCHEMA_UID`], [`PRIORITY_LEVEL_UID`]);
//! - faults: [`ApiServer::fail_next`] and [`ApiServer::inject`] (any status,
//!   429 with Retry-After, dropped connection, 410 Expired, slow response;
//!   by verb and path, once, n times or until cleared),
//!   [`ApiServer::set_down`] (connections refused and open ones cut),
//!   [`ApiServer::drop_connections`], [`ApiServer::end_watches`];
//! - events and bytes delivered by watch streams are counted per resource
//!   and actor ([`ApiServer::watch_delivered`]);
//! - every request is recorded ([`ApiServer::requests`]), with the actor
//!   named by clients from [`ApiServer::actor_client`] (test infrastructure
//!   such as a simulated kubelet) told apart from the code under test.
//!
//! - `/livez`, `/readyz`, `/healthz`, `/version` and the discovery
//!   documents `/api` and `/apis`; HTTPS on a listener of the caller's
//!   ([`ApiServer::serve_tls`], possibly in another network namespace);
//!   Services get a ClusterIP and node ports on creation; every request's
//!   User-Agent and Accept are recorded.
//!
//! Not modelled: pagination (`limit` is ignored, which the API allows),
//! JSON patch, validation, finalizers and garbage collection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::net::TcpListener;

mod faults;
mod http;
pub(crate) mod nonresource;
mod selectors;
mod store;
mod strategy;
mod tls;
mod verbs;
mod watch;

pub use faults::{Fault, Rule};
use http::Route;
pub use nonresource::GIT_VERSION;
use store::{commit, prepare_new, Broadcast, Inner, Key, Shared};

/// Header naming the test actor (e.g. `kubelet`) a request came from.
pub const ACTOR_HEADER: &str = "x-kubepulse-test-actor";
/// The API Priority and Fairness flow schema UID of every response.
pub const FLOW_SCHEMA_UID: &str = "fs-0000-service-accounts";
/// The API Priority and Fairness priority level UID of every response.
pub const PRIORITY_LEVEL_UID: &str = "pl-0000-workload-low";

/// A mutating admission hook for created objects.
pub type Mutator = Arc<dyn Fn(&mut Value) + Send + Sync>;

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

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Its verb; `None` for a path or method the API does not serve.
    pub verb: Option<Verb>,
    /// Resource (plural), e.g. `pods`; empty for a path outside the API.
    pub resource: String,
    /// Path and query.
    pub uri: String,
    /// The [`ACTOR_HEADER`] of the request: `None` for the code under test.
    pub actor: Option<String>,
    /// Its `User-Agent` (tells the clients under test apart: kube-rs,
    /// Prometheus's client-go).
    pub user_agent: Option<String>,
    /// Its `Accept` header.
    pub accept: Option<String>,
}

/// Stops the server when the last [`ApiServer`] clone is dropped.
struct Running {
    shared: Arc<Shared>,
    /// The accept loops: loopback HTTP first, then any HTTPS listeners.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
        self.shared.kill.send_modify(|g| *g += 1);
    }
}

/// The running test server; clones share it, and it stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _running: Arc<Running>,
}

impl ApiServer {
    /// Starts a server on an ephemeral loopback port.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::new());
        let task = tokio::spawn(http::accept_loop(listener, shared.clone(), None));
        let running = Arc::new(Running {
            shared: shared.clone(),
            tasks: std::sync::Mutex::new(vec![task]),
        });
        ApiServer {
            addr,
            shared,
            _running: running,
        }
    }

    /// Starts a server holding these Namespaces.
    pub async fn with_namespaces(namespaces: &[&str]) -> ApiServer {
        let server = ApiServer::start().await;
        for ns in namespaces {
            server.apply_json::<k8s_openapi::api::core::v1::Namespace>(
                json!({"metadata": {"name": ns}}),
            );
        }
        server
    }

    /// Serves the same API over HTTPS on `listener` (which may belong to
    /// another network namespace: a socket keeps the namespace it was
    /// created in), with the certificate chain `cert` and key `key` (PEM
    /// files). Must be called inside the server's tokio runtime; stops
    /// with the server.
    pub fn serve_tls(
        &self,
        listener: std::net::TcpListener,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let listener = TcpListener::from_std(listener).expect("a tokio listener");
        let acceptor = tls::acceptor(cert, key);
        let task = tokio::spawn(http::accept_loop(
            listener,
            self.shared.clone(),
            Some(acceptor),
        ));
        self._running
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (no credentials) to
    /// `dir/kubeconfig`, for a process under test, and returns its path.
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
                 clusters: [{{name: test, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: test, user: {{}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n",
                self.url()
            ),
        )
        .expect("write kubeconfig");
        path
    }

    /// A kube client for this server (default retry policy on, as in
    /// production).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("client")
    }

    /// A kube config for this server, to adjust before making a client.
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("uri"))
    }

    /// A kube client of test infrastructure (e.g. a simulated kubelet): its
    /// requests are recorded with `actor`, apart from the code under test.
    pub fn actor_client(&self, actor: &str) -> kube::Client {
        let mut cfg = self.config();
        cfg.headers.push((
            ACTOR_HEADER.parse().expect("header name"),
            actor.parse().expect("header value"),
        ));
        kube::Client::try_from(cfg).expect("client")
    }

    /// Creates or replaces a typed object (ADDED or MODIFIED to watchers);
    /// returns the stored JSON with its new resourceVersion.
    pub fn apply<K>(&self, obj: &K) -> Value
    where
        K: k8s_openapi::Resource + serde::Serialize,
    {
        self.apply_json::<K>(serde_json::to_value(obj).expect("serialize"))
    }

    /// [`ApiServer::apply`] of an object of type `K` given as JSON (its
    /// `apiVersion` and `kind` are filled in).
    pub fn apply_json<K: k8s_openapi::Resource>(&self, mut value: Value) -> Value {
        value["apiVersion"] = json!(K::API_VERSION);
        value["kind"] = json!(K::KIND);
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

    /// Deletes a typed object at once (DELETED to watchers); returns whether
    /// it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let key = key::<K>(namespace, name);
        let mut inner = self.shared.lock();
        if !inner.objects.contains_key(&key) {
            return false;
        }
        commit(&mut inner, &self.shared.events, key, None);
        true
    }

    /// Changes a stored typed object with `f` and stores it again
    /// (MODIFIED to watchers), as another client's update would; returns
    /// the stored JSON. Panics when the object does not exist.
    pub fn edit<K: k8s_openapi::Resource>(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Value {
        let mut v = self
            .get::<K>(namespace, name)
            .unwrap_or_else(|| panic!("no {} {namespace}/{name} to edit", K::KIND));
        f(&mut v);
        self.apply_json::<K>(v)
    }

    /// The stored JSON of a typed object.
    pub fn get<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&key::<K>(namespace, name))
            .cloned()
    }

    /// The stored objects of type `K` in `namespace` (ignored for
    /// cluster-scoped types), by name.
    pub fn objects<K: k8s_openapi::Resource>(&self, namespace: &str) -> Vec<Value> {
        let want = key::<K>(namespace, "");
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|(k, _)| {
                Key {
                    name: String::new(),
                    ..(*k).clone()
                } == want
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The stored objects of type `K` in every namespace.
    pub fn all_objects<K: k8s_openapi::Resource>(&self) -> Vec<Value> {
        let want = key::<K>("", "");
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|(k, _)| k.gv == want.gv && k.resource == want.resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes a stored object of type `K` in place with `f` (MODIFIED to
    /// watchers, a new resourceVersion; uid and creation time kept), as a
    /// controller's update would; `None` if it does not exist. For test
    /// infrastructure (a kubelet writing pod status) that must not race
    /// itself over HTTP.
    pub fn modify<K: k8s_openapi::Resource>(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let key = key::<K>(namespace, name);
        let mut inner = self.shared.lock();
        let mut value = inner.objects.get(&key)?.clone();
        let before = value.clone();
        f(&mut value);
        if value == before {
            return Some(value);
        }
        commit(&mut inner, &self.shared.events, key, Some(value))
    }

    /// Runs `mutate` on every object of `resource` (plural) created through
    /// the API, as a mutating admission webhook would.
    pub fn mutate_on_create(
        &self,
        resource: &str,
        mutate: impl Fn(&mut Value) + Send + Sync + 'static,
    ) {
        self.shared
            .lock()
            .mutators
            .push((resource.to_string(), Arc::new(mutate)));
    }

    /// Fails the next request with `verb` (any verb when `None`).
    pub fn fail_next(&self, verb: Option<Verb>, fault: Fault) {
        let rule = Rule::new(fault);
        self.inject(match verb {
            Some(v) => rule.verb(v),
            None => rule,
        });
    }

    /// Adds a fault rule; the first rule hitting a request applies.
    pub fn inject(&self, rule: Rule) {
        self.shared.lock().faults.push_back(rule);
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
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

    /// Ends every open watch stream cleanly (as the apiserver does when it
    /// closes a watch), leaving other requests alone.
    pub fn end_watches(&self) {
        self.shared.end_watches.send_modify(|g| *g += 1);
    }

    /// Forgets the change log: watches resuming from an older
    /// resourceVersion get `410 Expired` and must re-list.
    pub fn compact(&self) {
        let mut inner = self.shared.lock();
        inner.compacted = inner.rv;
        inner.log.clear();
    }

    /// Keeps only the last `changes` changes for watches to resume from
    /// (4,096 unless set), as etcd compaction and the apiserver's watch
    /// cache bound theirs: resuming from an older resourceVersion gets
    /// `410 Expired`. Memory then stays bounded however many object
    /// versions a test writes.
    pub fn set_log_window(&self, changes: usize) {
        let mut inner = self.shared.lock();
        inner.log_window = changes;
        store::compact_to_window(&mut inner);
    }

    /// Calls `f` on every stored object of type `K` in `namespace` (ignored
    /// for cluster-scoped types), under the store's lock and without
    /// copying them: for tests that read many large objects often.
    pub fn for_each_object<K: k8s_openapi::Resource>(
        &self,
        namespace: &str,
        mut f: impl FnMut(&Value),
    ) {
        let want = key::<K>(namespace, "");
        let inner = self.shared.lock();
        let from = std::ops::Bound::Included(&want);
        for (k, v) in inner.objects.range((from, std::ops::Bound::Unbounded)) {
            if (&k.gv, &k.resource, &k.namespace) != (&want.gv, &want.resource, &want.namespace) {
                break;
            }
            f(v);
        }
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

    /// Events and bytes delivered so far by every watch stream on
    /// `resource` opened by `actor` (`None`: the code under test).
    pub fn watch_delivered(&self, resource: &str, actor: Option<&str>) -> (u64, u64) {
        let d = self
            .shared
            .delivered
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        d.iter()
            .filter(|t| t.resource == resource && t.actor.as_deref() == actor)
            .fold((0, 0), |(e, b), t| {
                (
                    e + t.events.load(Ordering::Relaxed),
                    b + t.bytes.load(Ordering::Relaxed),
                )
            })
    }

    /// How many requests with `verb` on `resource` were seen.
    pub fn count(&self, verb: Verb, resource: &str) -> usize {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| s.verb == Some(verb) && s.resource == resource)
            .count()
    }
}

fn is_namespaced<K: k8s_openapi::Resource>() -> bool {
    std::any::type_name::<K::Scope>().ends_with("NamespaceResourceScope")
}

fn key<K: k8s_openapi::Resource>(namespace: &str, name: &str) -> Key {
    let ns = if is_namespaced::<K>() { namespace } else { "" };
    Key {
        gv: K::API_VERSION.to_string(),
        resource: K::URL_PATH_SEGMENT.to_string(),
        namespace: ns.to_string(),
        name: name.to_string(),
    }
}
