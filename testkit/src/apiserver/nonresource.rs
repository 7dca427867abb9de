//! The API test server's paths outside the resource collections: health
//! (`/livez`, `/readyz`, `/healthz`, open to anonymous clients as in a
//! cluster's default `system:public-info-viewer` role), `/version`, and the
//! discovery documents `/api` and `/apis` (from the resources stored so
//! far), which generic clients read before anything else.

use std::collections::BTreeSet;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::http::{full, Body};
use super::Shared;

/// The Kubernetes version `/version` reports.
pub const GIT_VERSION: &str = "v1.33.0-kubepulse-test";

/// The response for a non-resource `path`, if it is one.
pub(super) fn respond(shared: &Shared, path: &str) -> Option<Response<Body>> {
    let path = path.trim_end_matches('/');
    Some(match path {
        "/livez" | "/readyz" | "/healthz" => text("ok"),
        "/version" => full(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "33", "gitVersion": GIT_VERSION,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"
            }),
        ),
        "/api" => full(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": []}),
        ),
        "/apis" => full(StatusCode::OK, &group_list(shared)),
        _ => return None,
    })
}

fn text(body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e: std::convert::Infallible| match e {})
            .boxed(),
    );
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `APIGroupList` of every group with a stored kind.
fn group_list(shared: &Shared) -> serde_json::Value {
    let inner = shared.lock();
    let gvs: BTreeSet<&str> = inner
        .kinds
        .keys()
        .map(|(gv, _)| gv.as_str())
        .filter(|gv| gv.contains('/'))
        .collect();
    let groups: Vec<_> = gvs
        .iter()
        .filter_map(|gv| gv.split_once('/'))
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}
