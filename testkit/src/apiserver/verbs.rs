//! The verbs of the API test server but watch: list, get, create, update,
//! patch and delete.

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::http::{full, status, Body};
use super::selectors::Filter;
use super::store::{commit, kind_of, prepare_new, with_type, Key};
use super::strategy::{admit_create, graceful_delete, keep_deletion};
use super::{Route, Shared};

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
    match inner.objects.get(&Key::of(route)) {
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
        ..Key::of(route)
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
    admit_create(&mut inner, route, &mut obj);
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
    let key = Key::of(route);
    let mut inner = shared.lock();
    let Some(current) = inner.objects.get(&key).cloned() else {
        return status(404, "NotFound", "not found");
    };
    if stale(&obj, &current) {
        return status(409, "Conflict", "the object has been modified");
    }
    keep_deletion(&mut obj, &current);
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
    let key = Key::of(route);
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
    if let Some(c) = &current {
        keep_deletion(&mut obj, c);
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

/// DELETE; `gracePeriodSeconds` from the query or the DeleteOptions body.
pub(super) fn delete_one(
    shared: &Shared,
    route: &Route,
    q: &BTreeMap<String, String>,
    body: &Bytes,
) -> Response<Body> {
    let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let grace = q
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
        .or_else(|| opts["gracePeriodSeconds"].as_i64());
    let key = Key::of(route);
    let mut inner = shared.lock();
    let Some(current) = inner.objects.get(&key).cloned() else {
        return status(404, "NotFound", "not found");
    };
    let gone = match graceful_delete(route, &current, grace) {
        Ok(Some(terminating)) => commit(&mut inner, &shared.events, key, Some(terminating)),
        Ok(None) => Some(current),
        Err(()) => commit(&mut inner, &shared.events, key, None),
    };
    full(StatusCode::OK, &gone.unwrap_or_default())
}
