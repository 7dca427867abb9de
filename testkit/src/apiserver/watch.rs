//! Watch streams of the API test server: replay from the change log (or
//! synthetic ADDED), then live changes, bookmarks, 410 after compaction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use super::http::{status, status_body, Body};
use super::selectors::Filter;
use super::store::{kind_of, with_type, Broadcast, Change, WatchTally};
use super::{Route, Shared};

/// The watch event a change produces for `filter`, if any: objects moving
/// into the selection are ADDED, out of it DELETED.
fn event_for(filter: &Filter, c: &Change, gv: &str, kind: &str) -> Option<Value> {
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

/// Options of one watch's live part.
struct Live {
    filter: Filter,
    bookmarks: bool,
    timeout: Option<Duration>,
    gv: String,
    kind: String,
}

pub(super) fn watch_stream(
    shared: &Shared,
    route: &Route,
    q: &BTreeMap<String, String>,
    actor: Option<String>,
) -> Response<Body> {
    let tally = Tally::default();
    if let Ok(mut d) = shared.delivered.lock() {
        d.push(WatchTally {
            actor,
            resource: route.resource.clone(),
            events: tally.events.clone(),
            bytes: tally.bytes.clone(),
        });
    }
    let filter = match Filter::new(route, q) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let mut end = shared.end_watches.subscribe();
    end.borrow_and_update();
    let (events, live) = {
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
                return watch_response(rx, tally);
            }
            // The log is sorted by resourceVersion.
            let first = inner.log.partition_point(|c| c.rv <= since);
            for c in inner.log.range(first..) {
                if let Some(ev) = event_for(&filter, c, &gv, &kind) {
                    let _ = tx.send(ev);
                }
            }
        }
        let live = Live {
            filter,
            bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
            timeout: q
                .get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .map(Duration::from_secs),
            gv,
            kind,
        };
        (shared.events.subscribe(), live)
    };
    tokio::spawn(forward_live(events, end, tx, live));
    watch_response(rx, tally)
}

/// Forwards live changes until the timeout, the client leaving, or
/// [`super::ApiServer::end_watches`]; the stream then ends cleanly.
async fn forward_live(
    mut events: broadcast::Receiver<Broadcast>,
    mut end: watch::Receiver<u64>,
    tx: mpsc::UnboundedSender<Value>,
    live: Live,
) {
    let deadline = tokio::time::sleep(live.timeout.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = end.changed() => return,
            m = events.recv() => m,
        };
        let (gv, kind) = (&live.gv, &live.kind);
        let ev = match msg {
            Ok(Broadcast::Change(c)) => event_for(&live.filter, &c, gv, kind),
            Ok(Broadcast::Bookmark(rv)) if live.bookmarks => Some(json!({"type": "BOOKMARK",
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

/// Counters of one watch stream (events and bytes written to the client).
#[derive(Default, Clone)]
struct Tally {
    events: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

fn watch_response(rx: mpsc::UnboundedReceiver<Value>, tally: Tally) -> Response<Body> {
    let s = futures::stream::unfold((rx, tally), |(mut rx, tally)| async move {
        let ev = rx.recv().await?;
        let line = Bytes::from(format!("{ev}\n"));
        tally.events.fetch_add(1, Ordering::Relaxed);
        tally.bytes.fetch_add(line.len() as u64, Ordering::Relaxed);
        let rx = (rx, tally);
        Some((Ok::<_, std::io::Error>(Frame::data(line)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(s)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
