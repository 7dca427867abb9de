//! The object store of the API test server: objects by key, the change log
//! watches replay from, and the broadcast of live changes.

use std::collections::{BTreeMap, VecDeque};

/// Changes kept for watches to resume from, by default: a bounded window,
/// as etcd's compaction and the apiserver's watch cache keep; older
/// resourceVersions get `410 Expired`.
pub(super) const DEFAULT_LOG_WINDOW: usize = 4096;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::faults::Rule;
use super::{Mutator, Route, Seen};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) gv: String,
    pub(super) resource: String,
    pub(super) namespace: String,
    pub(super) name: String,
}

impl Key {
    pub(super) fn of(route: &Route) -> Key {
        Key {
            gv: route.gv.clone(),
            resource: route.resource.clone(),
            namespace: route.namespace.clone().unwrap_or_default(),
            name: route.name.clone().unwrap_or_default(),
        }
    }
}

/// A committed change: `old` is `None` on creation, `new` on deletion.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) key: Key,
    pub(super) old: Option<Value>,
    pub(super) new: Option<Value>,
}

#[derive(Debug, Clone)]
pub(super) enum Broadcast {
    Change(Arc<Change>),
    Bookmark(u64),
}

pub(super) struct Inner {
    pub(super) rv: u64,
    /// Watches from a resourceVersion below this get `410 Expired`.
    pub(super) compacted: u64,
    pub(super) objects: BTreeMap<Key, Value>,
    /// The newest changes, oldest first, at most `log_window` of them.
    pub(super) log: VecDeque<Arc<Change>>,
    pub(super) log_window: usize,
    pub(super) kinds: BTreeMap<(String, String), String>,
    pub(super) faults: VecDeque<Rule>,
    pub(super) mutators: Vec<(String, Mutator)>,
    pub(super) seen: Vec<Seen>,
    pub(super) names: u64,
    /// ClusterIPs and node ports allocated so far.
    pub(super) cluster_ips: u32,
    pub(super) node_ports: u16,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) events: broadcast::Sender<Broadcast>,
    /// Bumped to cut every open connection.
    pub(super) kill: watch::Sender<u64>,
    /// Bumped to end every open watch stream.
    pub(super) end_watches: watch::Sender<u64>,
    pub(super) down: AtomicBool,
    /// Events and bytes each watch stream delivered, by (actor, resource).
    pub(super) delivered: Mutex<Vec<WatchTally>>,
}

/// What one watch stream delivered.
pub(super) struct WatchTally {
    pub(super) actor: Option<String>,
    pub(super) resource: String,
    pub(super) events: Arc<std::sync::atomic::AtomicU64>,
    pub(super) bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            inner: Mutex::new(Inner {
                rv: 1000,
                compacted: 0,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                log_window: DEFAULT_LOG_WINDOW,
                kinds: BTreeMap::new(),
                faults: VecDeque::new(),
                mutators: Vec::new(),
                seen: Vec::new(),
                names: 0,
                cluster_ips: 0,
                node_ports: 0,
            }),
            events: broadcast::channel(4096).0,
            kill: watch::channel(0).0,
            end_watches: watch::channel(0).0,
            down: AtomicBool::new(false),
            delivered: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the real failure behind a
        // poisoned lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Fills the server-owned metadata of a new object version.
pub(super) fn prepare_new(inner: &mut Inner, value: &mut Value, old_meta: Option<&Value>) {
    let meta = &mut value["metadata"];
    match old_meta {
        Some(old) => {
            meta["uid"] = old["uid"].clone();
            meta["creationTimestamp"] = old["creationTimestamp"].clone();
        }
        None => {
            inner.names += 1;
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", inner.names));
            meta["creationTimestamp"] = json!(now());
        }
    }
}

/// Now as a `metav1.Time` (1 s resolution).
pub(super) fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Stores (or deletes, when `new` is `None`) under a fresh resourceVersion,
/// logs the change and tells the watchers. Returns the stored object, or
/// the deleted one with the deletion's resourceVersion.
pub(super) fn commit(
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
    inner.log.push_back(change.clone());
    compact_to_window(inner);
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

/// Drops the changes beyond the window; a watch resuming from before the
/// oldest kept change must re-list.
pub(super) fn compact_to_window(inner: &mut Inner) {
    while inner.log.len() > inner.log_window {
        if let Some(c) = inner.log.pop_front() {
            // Resuming from `c.rv` needs only later changes, which are kept.
            inner.compacted = inner.compacted.max(c.rv);
        }
    }
}

pub(super) fn kind_of(inner: &Inner, route: &Route) -> String {
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

/// `obj` with the `apiVersion` and `kind` of its collection.
pub(super) fn with_type(mut obj: Value, gv: &str, kind: &str) -> Value {
    obj["apiVersion"] = json!(gv);
    obj["kind"] = json!(kind);
    obj
}
