//! The verbs of the API test server: list, get, create, update, patch,
//! delete and watch.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc};

use super::selectors::Filter;
use super::{
    commit, full, key_of, kind_of, prepare_new, status, status_body, Body, Broadcast, Change, Key,
    Route, Shared,
};

pub(super) fn with_type(mut obj: Value, gv: &str, kind: &str) -> Value {
    obj["apiVersion"] = json!(gv);
    obj["kind"] = json!(kind);
    obj
}

pub(super) fn list(shared: &Shared, route: &Route, q: &BTreeMap<String, String>) -> Response<Body> {
    let filter = match Filter::new(route, q) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let inner = shared.lock();
    let kind = kind_of(&inner, route);
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|(k, v)| filter.in_collection(k) && filter.matches(v))
        .map(|(_, v)| with_type(v.clone(), &route.gv, &kind))
        .collect();
    full(
        StatusCode::OK,
        &json!({
            "kind": format!("{kind}List"), "apiVersion": route.gv,
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        }),
    )
}

pub(super) fn get_one(shared: &Shared, route: &Route) -> Response<Body> {
    let inner = shared.lock();
    match inner.objects.get(&key_of(route)) {
        Some(v) => full(StatusCode::OK, v),
        None => status(404, "NotFound", "not found"),
    }
}

pub(super) fn parse_body(body: &Bytes) -> Result<Value, Box<Response<Body>>> {
    serde_json::from_slice(body).map_err(|e| Box::new(status(400, "BadRequest", &e.to_string())))
}

pub(super) fn create(shared: &Shared, route: &Route, body: &Bytes) -> Response<Body> {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut inner = shared.lock();
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        let Some(prefix) = obj["metadata"]["generateName"].as_str().map(String::from) else {
            return status(422, "Invalid", "metadata.name or generateName is required");
        };
        inner.names += 1;
        obj["metadata"]["name"] = json!(format!("{prefix}{:05x}", inner.names));
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = Key {
        name,
        ..key_of(route)
    };
    if inner.objects.contains_key(&key) {
        return status(409, "AlreadyExists", "object already exists");
    }
    if let Some(ns) = &route.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    if let Some(k) = obj["kind"].as_str() {
        let k = k.to_string();
        inner
            .kinds
            .insert((route.gv.clone(), route.resource.clone()), k);
    }
    prepare_new(&mut inner, &mut obj, None);
    let stored = commit(&mut inner, &shared.events, key, Some(obj));
    full(StatusCode::CREATED, &stored.unwrap_or_default())
}

pub(super) fn stale(obj: &Value, current: &Value) -> bool {
    let want = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
    !want.is_empty() && Some(want) != current["metadata"]["resourceVersion"].as_str()
}

pub(super) fn update(shared: &Shared, route: &Route, body: &Bytes) -> Response<Body> {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let key = key_of(route);
    let mut inner = shared.lock();
    let Some(current) = inner.objects.get(&key).cloned() else {
        return status(404, "NotFound", "not found");
    };
    if stale(&obj, &current) {
        return status(409, "Conflict", "the object has been modified");
    }
    prepare_new(&mut inner, &mut obj, Some(&current["metadata"]));
    let stored = commit(&mut inner, &shared.events, key, Some(obj));
    full(StatusCode::OK, &stored.unwrap_or_default())
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge(target: &mut Value, patch: &Value) {
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

pub(super) fn patch(
    shared: &Shared,
    route: &Route,
    body: &Bytes,
    content_type: &str,
) -> Response<Body> {
    if content_type.contains("json-patch+json") {
        return status(415, "UnsupportedMediaType", "JSON patch is not modelled");
    }
    let p = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let apply = content_type.contains("apply-patch");
    let key = key_of(route);
    let mut inner = shared.lock();
    let current = inner.objects.get(&key).cloned();
    let mut obj = match (&current, apply) {
        (Some(c), _) => {
            if stale(&p, c) {
                return status(409, "Conflict", "the object has been modified");
            }
            c.clone()
        }
        (None, true) => Value::Object(Map::new()),
        (None, false) => return status(404, "NotFound", "not found"),
    };
    merge(&mut obj, &p);
    obj["metadata"]["name"] = json!(key.name);
    if let Some(ns) = &route.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let created = current.as_ref().map(|c| c["metadata"].clone());
    prepare_new(&mut inner, &mut obj, created.as_ref());
    let code = if current.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let stored = commit(&mut inner, &shared.events, key, Some(obj));
    full(code, &stored.unwrap_or_default())
}

pub(super) fn delete_one(shared: &Shared, route: &Route) -> Response<Body> {
    let key = key_of(route);
    let mut inner = shared.lock();
    if !inner.objects.contains_key(&key) {
        return status(404, "NotFound", "not found");
    }
    let gone = commit(&mut inner, &shared.events, key, None);
    full(StatusCode::OK, &gone.unwrap_or_default())
}

/// The watch event a change produces for `filter`, if any: objects moving
/// into the selection are ADDED, out of it DELETED.
pub(super) fn event_for(filter: &Filter, c: &Change, gv: &str, kind: &str) -> Option<Value> {
    if !filter.in_collection(&c.key) {
        return None;
    }
    let was = c.old.as_ref().is_some_and(|o| filter.matches(o));
    let is = c.new.as_ref().is_some_and(|n| filter.matches(n));
    let (ty, obj) = match (was, is, &c.new) {
        (false, true, Some(n)) => ("ADDED", n.clone()),
        (true, true, Some(n)) => ("MODIFIED", n.clone()),
        (true, false, new) => {
            let mut o = new.clone().or_else(|| c.old.clone())?;
            o["metadata"]["resourceVersion"] = json!(c.rv.to_string());
            ("DELETED", o)
        }
        _ => return None,
    };
    Some(json!({"type": ty, "object": with_type(obj, gv, kind)}))
}

pub(super) fn watch_stream(
    shared: &Shared,
    route: &Route,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let filter = match Filter::new(route, q) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs);
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let (live, kind, gv) = {
        let inner = shared.lock();
        let kind = kind_of(&inner, route);
        let gv = route.gv.clone();
        if from.is_empty() || from == "0" {
            // Synthetic ADDED for the current state, as the apiserver does.
            for (k, v) in &inner.objects {
                if filter.in_collection(k) && filter.matches(v) {
                    let _ = tx
                        .send(json!({"type": "ADDED", "object": with_type(v.clone(), &gv, &kind)}));
                }
            }
        } else {
            let since: u64 = from.parse().unwrap_or(0);
            if since < inner.compacted {
                let ev = json!({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")});
                let _ = tx.send(ev);
                drop(tx);
                return watch_response(rx);
            }
            for c in inner.log.iter().filter(|c| c.rv > since) {
                if let Some(ev) = event_for(&filter, c, &gv, &kind) {
                    let _ = tx.send(ev);
                }
            }
        }
        (shared.events.subscribe(), kind, gv)
    };
    tokio::spawn(forward_live(live, tx, filter, bookmarks, timeout, gv, kind));
    watch_response(rx)
}

pub(super) async fn forward_live(
    mut live: broadcast::Receiver<Broadcast>,
    tx: mpsc::UnboundedSender<Value>,
    filter: Filter,
    bookmarks: bool,
    timeout: Option<Duration>,
    gv: String,
    kind: String,
) {
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            m = live.recv() => m,
        };
        let ev = match msg {
            Ok(Broadcast::Change(c)) => event_for(&filter, &c, &gv, &kind),
            Ok(Broadcast::Bookmark(rv)) if bookmarks => Some(json!({"type": "BOOKMARK",
                "object": {"apiVersion": gv, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}}})),
            Ok(Broadcast::Bookmark(_)) => None,
            // Fell behind: end the watch; the client resumes or re-lists.
            Err(_) => return,
        };
        if let Some(ev) = ev {
            if tx.send(ev).is_err() {
                return;
            }
        }
    }
}

pub(super) fn watch_response(rx: mpsc::UnboundedReceiver<Value>) -> Response<Body> {
    let s = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let line = Bytes::from(format!("{ev}\n"));
        Some((Ok::<_, std::io::Error>(Frame::data(line)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(s)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
