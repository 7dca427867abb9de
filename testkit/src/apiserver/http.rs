//! The HTTP side of the API test server: connections, routing of API paths
//! to verbs, faults, and JSON/`Status` responses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::verbs::{create, delete_one, get_one, list, patch, update};
use super::watch::watch_stream;
use super::{faults, Seen, Shared, Verb, ACTOR_HEADER, FLOW_SCHEMA_UID, PRIORITY_LEVEL_UID};

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

/// Accepts and serves connections, over TLS when `tls` is given.
pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.down.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    // A failed handshake (a client that distrusts the CA)
                    // is the client's to report.
                    if let Ok(s) = acceptor.accept(stream).await {
                        serve_connection(TokioIo::new(s), shared).await;
                    }
                }
                None => serve_connection(TokioIo::new(stream), shared).await,
            }
        });
    }
}

/// Serves one connection until it ends or every connection is cut.
async fn serve_connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut kill = shared.kill.subscribe();
    let generation = *kill.borrow_and_update();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = http1::Builder::new().serve_connection(io, svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.wait_for(|g| *g != generation) => {}
    }
}

/// A parsed API path.
#[derive(Debug)]
pub(super) struct Route {
    pub(super) gv: String,
    pub(super) resource: String,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
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

pub(super) fn decode(s: &str) -> String {
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

pub(super) fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("json"));
    let mut r = Response::new(Full::new(bytes).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    full(sc, &status_body(code, reason, message))
}

fn verb_of(method: &Method, named: bool, q: &BTreeMap<String, String>) -> Option<Verb> {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    Some(match (method, named) {
        (&Method::GET, false) if watch => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::GET, true) => Verb::Get,
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        _ => return None,
    })
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let mut r = serve(&shared, req).await;
    // API Priority and Fairness classification, on every response.
    let h = r.headers_mut();
    h.insert(
        "X-Kubernetes-PF-FlowSchema-UID",
        HeaderValue::from_static(FLOW_SCHEMA_UID),
    );
    h.insert(
        "X-Kubernetes-PF-PriorityLevel-UID",
        HeaderValue::from_static(PRIORITY_LEVEL_UID),
    );
    r
}

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

async fn serve(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let route = parse_route(req.uri().path());
    let q = query(req.uri());
    let verb = route
        .as_ref()
        .and_then(|r| verb_of(req.method(), r.name.is_some(), &q));
    let uri = req.uri().to_string();
    let actor: Option<String> = req
        .headers()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let fault = {
        let mut inner = shared.lock();
        inner.seen.push(Seen {
            method: req.method().to_string(),
            verb,
            resource: route
                .as_ref()
                .map(|r| r.resource.clone())
                .unwrap_or_default(),
            uri: uri.clone(),
            actor: actor.clone(),
            user_agent: header(&req, hyper::header::USER_AGENT),
            accept: header(&req, hyper::header::ACCEPT),
        });
        verb.and_then(|v| faults::take(&mut inner, v, &uri))
    };
    let Some(route) = route else {
        if req.method() == Method::GET {
            if let Some(r) = super::nonresource::respond(shared, req.uri().path()) {
                return r;
            }
        }
        return status(404, "NotFound", "no such path");
    };
    let Some(verb) = verb else {
        return status(405, "MethodNotAllowed", "unsupported method");
    };
    if let Some(fault) = fault {
        if let Some(r) = faults::respond(fault, verb).await {
            return r;
        }
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
        Verb::List => list(shared, &route, &q),
        Verb::Watch => watch_stream(shared, &route, &q, actor),
        Verb::Get => get_one(shared, &route),
        Verb::Create => create(shared, &route, &body),
        Verb::Update => update(shared, &route, &body),
        Verb::Patch => patch(shared, &route, &body, &content_type),
        Verb::Delete => delete_one(shared, &route, &q, &body),
    }
}
