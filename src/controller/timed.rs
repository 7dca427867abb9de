//! One timed apiserver request: the timer starts right before the request is
//! handed to the client (after any rate limiter) and stops when the whole
//! body has arrived (headers only for WATCH establishment).

use std::time::{Duration, Instant};

use bytes::Bytes;
use kube::client::Body;
use kube::Client;

use super::metric_labels::{Resource, Verb};
use super::metrics::ControllerMetrics;
use super::scope::scope;
use super::K8sError;

/// APF response headers.
pub(crate) const FLOW_SCHEMA_HEADER: &str = "X-Kubernetes-PF-FlowSchema-UID";
/// APF response headers.
pub(crate) const PRIORITY_LEVEL_HEADER: &str = "X-Kubernetes-PF-PriorityLevel-UID";

/// What a request is, for its labels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    /// Verb.
    pub verb: Verb,
    /// Resource.
    pub resource: Resource,
    /// A name is in the path.
    pub name_set: bool,
    /// The path is namespaced.
    pub namespaced: bool,
}

/// A finished request.
#[derive(Debug)]
pub(crate) struct Timed {
    /// HTTP status.
    pub status: u16,
    /// Body (empty for WATCH establishment).
    pub body: Bytes,
    /// When the request was handed to the client.
    pub sent: Instant,
    /// When the body (or headers, for WATCH) arrived.
    pub received: Instant,
}

impl Timed {
    /// Whether the status is 2xx.
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Decodes the body as `T`.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
    ) -> Result<T, K8sError> {
        serde_json::from_slice(&self.body).map_err(|source| K8sError::Decode { what, source })
    }
}

/// Sends `req`, records it in `kubepulse_apiserver_request_duration_seconds`
/// (transport failures and timeouts as `code="error"`) and exports the APF
/// classification. `sent_hook` runs right before sending, so a caller can
/// register the send time (watch-event latency) before the event can arrive.
pub(crate) async fn send(
    client: &Client,
    metrics: &ControllerMetrics,
    call: Call,
    req: hyper::Request<Vec<u8>>,
    timeout: Duration,
    sent_hook: impl FnOnce(Instant),
) -> Result<Timed, K8sError> {
    let sc = scope(call.verb, call.name_set, call.namespaced);
    let headers_only = call.verb == Verb::Watch;
    let sent = Instant::now();
    sent_hook(sent);
    let fut = async {
        let resp = client.send(req.map(Body::from)).await?;
        let status = resp.status().as_u16();
        let h = resp.headers();
        if let (Some(fs), Some(pl)) = (h.get(FLOW_SCHEMA_HEADER), h.get(PRIORITY_LEVEL_HEADER)) {
            if let (Ok(fs), Ok(pl)) = (fs.to_str(), pl.to_str()) {
                // UIDs are bounded by the cluster's flow schemas; keep them short anyway.
                metrics.set_flowcontrol(truncate(fs), truncate(pl));
            }
        }
        let body = if headers_only {
            Bytes::new()
        } else {
            resp.into_body().collect_bytes().await?
        };
        Ok::<_, K8sError>((status, body))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok((status, body))) => {
            let received = Instant::now();
            metrics.observe_request(call.verb, call.resource, sc, Some(status), received - sent);
            Ok(Timed {
                status,
                body,
                sent,
                received,
            })
        }
        Ok(Err(e)) => {
            metrics.observe_request(call.verb, call.resource, sc, None, sent.elapsed());
            Err(e)
        }
        Err(_) => {
            metrics.observe_request(call.verb, call.resource, sc, None, sent.elapsed());
            Err(K8sError::Timeout("apiserver request"))
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
