//! Injected faults of the API test server: which requests they hit and the
//! response they turn into.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::json;

use super::http::{status, status_body, Body};
use super::{Inner, Verb};

/// What an injected fault does to a request.
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
    /// Serve the request normally, this much later.
    Delay(Duration),
}

/// A fault and the requests it hits: by default the next request of any
/// verb on any path.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: Fault,
    verb: Option<Verb>,
    path: Option<String>,
    /// Requests left to hit; `None`: until [`super::ApiServer::clear_faults`].
    times: Option<usize>,
}

impl Rule {
    /// `fault` for the next request.
    pub fn new(fault: Fault) -> Rule {
        Rule {
            fault,
            verb: None,
            path: None,
            times: Some(1),
        }
    }

    /// Only requests with this verb.
    pub fn verb(mut self, verb: Verb) -> Rule {
        self.verb = Some(verb);
        self
    }

    /// Only requests whose path and query contain `path`.
    pub fn path(mut self, path: impl Into<String>) -> Rule {
        self.path = Some(path.into());
        self
    }

    /// The next `n` matching requests.
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    /// Every matching request until the faults are cleared.
    pub fn always(mut self) -> Rule {
        self.times = None;
        self
    }

    fn hits(&self, verb: Verb, uri: &str) -> bool {
        self.verb.is_none_or(|v| v == verb) && self.path.as_ref().is_none_or(|p| uri.contains(p))
    }
}

/// The fault of the first rule hitting this request, used up by one.
pub(super) fn take(inner: &mut Inner, verb: Verb, uri: &str) -> Option<Fault> {
    let i = inner.faults.iter().position(|r| r.hits(verb, uri))?;
    let rule = &mut inner.faults[i];
    let fault = rule.fault.clone();
    match &mut rule.times {
        Some(n) if *n <= 1 => {
            inner.faults.remove(i);
        }
        Some(n) => *n -= 1,
        None => {}
    }
    Some(fault)
}

/// The response a fault answers with instead of serving; `None` for
/// [`Fault::Delay`], which serves after waiting.
pub(super) async fn respond(fault: Fault, verb: Verb) -> Option<Response<Body>> {
    Some(match fault {
        Fault::Status(code) => status(code, reason_for(code), "injected failure"),
        Fault::TooManyRequests { retry_after } => {
            let mut r = status(429, "TooManyRequests", "injected throttling");
            r.headers_mut()
                .insert("Retry-After", hyper::header::HeaderValue::from(retry_after));
            r
        }
        Fault::Drop => dropped(),
        Fault::Expired if verb == Verb::Watch => {
            let ev = json!({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")});
            let line = format!("{ev}\n");
            let s = futures::stream::once(async move { Ok(Frame::data(Bytes::from(line))) });
            Response::new(BodyExt::boxed(StreamBody::new(s)))
        }
        Fault::Expired => status(410, "Expired", "too old resource version"),
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            return None;
        }
    })
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
