//! Names what a failed Kubernetes API call actually ran into, so logs send
//! an operator to the right problem: a 403 names the verb and resource the
//! RBAC rules lack, a 404 the object that is missing, a refused connection
//! or a TLS failure the transport, instead of one "unreachable" for all.
//!
//! Pure: it only reads the error (and its `source()` chain). Shared by the
//! controller and the agent's plan watch (`discovery::kubernetes`).

use std::fmt;

use crate::label_enum::label_enum;

label_enum! {
    /// The `reason` label of API failures: a closed set.
    ApiFailureReason {
        /// 401: the credentials were refused.
        Unauthorized => "unauthorized",
        /// 403: RBAC does not allow the verb on the resource.
        Forbidden => "forbidden",
        /// 404: the object (or its namespace, or the API) does not exist.
        NotFound => "not_found",
        /// 409: a concurrent write won (optimistic concurrency).
        Conflict => "conflict",
        /// 429: API priority and fairness throttled the call.
        Throttled => "throttled",
        /// 5xx: the apiserver failed.
        ServerError => "server_error",
        /// Any other HTTP status.
        Status => "status",
        /// Nothing listens at the API address.
        ConnectionRefused => "connection_refused",
        /// The TLS handshake failed (certificate, CA, protocol).
        Tls => "tls",
        /// No answer in time.
        Timeout => "timeout",
        /// Another transport failure (DNS, reset, broken connection).
        Transport => "transport",
        /// The answer was not what the API promises (bad JSON).
        Decode => "decode",
        /// Anything else (client configuration, request building).
        Other => "other",
    }
}

/// The call that failed, to name it in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiCall<'a> {
    /// The Kubernetes verb: `get`, `list`, `watch`, `create`, `update`...
    pub verb: &'a str,
    /// The resource, with its group when not core: `leases.coordination.k8s.io`.
    pub resource: &'a str,
    /// The namespace, for namespaced calls.
    pub namespace: Option<&'a str>,
    /// The object's name, for calls on one object.
    pub name: Option<&'a str>,
}

impl ApiCall<'_> {
    fn object(&self) -> String {
        let mut s = self.resource.to_string();
        if let Some(ns) = self.namespace {
            s.push_str(&format!(" in namespace {ns:?}"));
        }
        if let Some(n) = self.name {
            s = format!("{s} named {n:?}");
        }
        s
    }
}

/// A failed API call, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiFailure {
    /// The closed reason (a metric label).
    pub reason: ApiFailureReason,
    /// The HTTP status, when the apiserver answered.
    pub status: Option<u16>,
    /// The apiserver's own reason (`Forbidden`, `NotFound`...), when given.
    pub api_reason: Option<String>,
    /// A sentence an operator can act on.
    pub message: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Names the failure of `call` from kube-rs's error.
pub(crate) fn describe(err: &kube::Error, call: &ApiCall<'_>) -> ApiFailure {
    match err {
        kube::Error::Api(status) => from_status(
            status.code,
            Some(status.reason.as_str()).filter(|r| !r.is_empty()),
            &status.message,
            call,
        ),
        kube::Error::SerdeError(e) => failure(
            ApiFailureReason::Decode,
            format!(
                "cannot decode the answer to {} {}: {e}",
                call.verb,
                call.object()
            ),
        ),
        other => from_transport(other, call),
    }
}

/// Names the failure of a kube-runtime watcher on `resource` (`namespace`
/// when namespaced): the initial list, the watch start or the stream.
pub(crate) fn describe_watcher(
    err: &kube::runtime::watcher::Error,
    resource: &str,
    namespace: Option<&str>,
) -> ApiFailure {
    use kube::runtime::watcher::Error as W;
    let call = |verb| ApiCall {
        verb,
        resource,
        namespace,
        name: None,
    };
    match err {
        W::InitialListFailed(e) => describe(e, &call("list")),
        W::WatchStartFailed(e) | W::WatchFailed(e) => describe(e, &call("watch")),
        W::WatchError(s) => from_status(
            s.code,
            Some(s.reason.as_str()).filter(|r| !r.is_empty()),
            &s.message,
            &call("watch"),
        ),
        W::NoResourceVersion => failure(
            ApiFailureReason::Other,
            format!("watching {resource}: the list had no resourceVersion"),
        ),
    }
}

/// Names a failure from a raw response: its status and, when the body is
/// a `Status` object, the apiserver's reason and message.
pub(crate) fn from_response(code: u16, body: &[u8], call: &ApiCall<'_>) -> ApiFailure {
    match serde_json::from_slice::<kube::core::Status>(body) {
        Ok(st) => from_status(
            code,
            Some(st.reason.as_str()).filter(|r| !r.is_empty()),
            &st.message,
            call,
        ),
        Err(_) => from_status(code, None, "", call),
    }
}

/// Names a failure from an HTTP status and the apiserver's reason and
/// message (also for callers that send raw requests and read the status).
pub(crate) fn from_status(
    code: u16,
    api_reason: Option<&str>,
    api_message: &str,
    call: &ApiCall<'_>,
) -> ApiFailure {
    let said = if api_message.is_empty() {
        String::new()
    } else {
        format!(" (apiserver: {api_message})")
    };
    let (reason, message) = match code {
        401 => (
            ApiFailureReason::Unauthorized,
            format!(
                "unauthorized: the apiserver refused this pod's credentials for {} {}; check the ServiceAccount token{said}",
                call.verb, call.object()
            ),
        ),
        403 => (
            ApiFailureReason::Forbidden,
            format!(
                "forbidden: RBAC does not allow verb {:?} on {}; the Role or ClusterRole bound to this ServiceAccount lacks it{said}",
                call.verb,
                call.object()
            ),
        ),
        404 => (
            ApiFailureReason::NotFound,
            format!("not found: {} does not exist{said}", call.object()),
        ),
        409 => (
            ApiFailureReason::Conflict,
            format!(
                "conflict on {} {}: another writer changed it first, or it already exists{said}",
                call.verb,
                call.object()
            ),
        ),
        429 => (
            ApiFailureReason::Throttled,
            format!(
                "throttled: the apiserver's priority and fairness rejected {} {}{said}",
                call.verb,
                call.object()
            ),
        ),
        500..=599 => (
            ApiFailureReason::ServerError,
            format!(
                "apiserver error HTTP {code} on {} {}{said}",
                call.verb,
                call.object()
            ),
        ),
        _ => (
            ApiFailureReason::Status,
            format!(
                "unexpected HTTP {code} on {} {}{said}",
                call.verb,
                call.object()
            ),
        ),
    };
    ApiFailure {
        reason,
        status: Some(code),
        api_reason: api_reason.map(str::to_string),
        message,
    }
}

fn failure(reason: ApiFailureReason, message: String) -> ApiFailure {
    ApiFailure {
        reason,
        status: None,
        api_reason: None,
        message,
    }
}

/// Names a transport failure by walking the error's source chain.
fn from_transport(err: &(dyn std::error::Error + 'static), call: &ApiCall<'_>) -> ApiFailure {
    let (reason, what) = transport_reason(err);
    let detail = chain(err);
    let message = match reason {
        ApiFailureReason::ConnectionRefused => format!(
            "connection refused: nothing listens at the apiserver address ({} {}); check KUBERNETES_SERVICE_HOST/PORT or the kubeconfig: {detail}",
            call.verb,
            call.object()
        ),
        ApiFailureReason::Tls => format!(
            "TLS failure talking to the apiserver ({} {}): check the CA bundle and the server certificate: {detail}",
            call.verb,
            call.object()
        ),
        _ => format!("{what} on {} {}: {detail}", call.verb, call.object()),
    };
    failure(reason, message)
}

fn transport_reason(err: &(dyn std::error::Error + 'static)) -> (ApiFailureReason, &'static str) {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut text_says_tls = false;
    let mut text_says_timeout = false;
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return (ApiFailureReason::Tls, "TLS failure");
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // io::Error::source() skips the wrapped error itself.
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return (ApiFailureReason::Tls, "TLS failure");
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return (ApiFailureReason::ConnectionRefused, "connection refused")
                }
                std::io::ErrorKind::TimedOut => text_says_timeout = true,
                _ => {}
            }
        }
        let text = e.to_string().to_ascii_lowercase();
        // rustls's messages, for when its error is not reachable as a type.
        if [
            "certificate",
            "tls",
            "handshake",
            "invalid peer",
            "corrupt message",
            "fatal alert",
            "peer misbehaved",
            "peer is incompatible",
        ]
        .iter()
        .any(|w| text.contains(w))
        {
            text_says_tls = true;
        }
        if text.contains("connection refused") {
            return (ApiFailureReason::ConnectionRefused, "connection refused");
        }
        if text.contains("timed out") || text.contains("deadline") {
            text_says_timeout = true;
        }
        cur = e.source();
    }
    if text_says_tls {
        (ApiFailureReason::Tls, "TLS failure")
    } else if text_says_timeout {
        (ApiFailureReason::Timeout, "timeout")
    } else {
        (ApiFailureReason::Transport, "transport failure")
    }
}

/// The messages of an error and its sources, joined.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        // Wrappers often repeat their source's message: keep it once.
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE_GET: ApiCall<'static> = ApiCall {
        verb: "get",
        resource: "leases.coordination.k8s.io",
        namespace: Some("kubepulse"),
        name: Some("kubepulse-controller"),
    };

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
        }))
        .expect("status");
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn forbidden_names_verb_and_resource() {
        let f = describe(&api(403, "Forbidden", "leases is forbidden"), &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::Forbidden);
        assert_eq!(f.status, Some(403));
        assert_eq!(f.api_reason.as_deref(), Some("Forbidden"));
        assert!(f.message.contains("verb \"get\""), "{f}");
        assert!(f.message.contains("leases.coordination.k8s.io"), "{f}");
        assert!(f.message.contains("leases is forbidden"), "{f}");
        assert!(!f.message.contains("unreachable"), "{f}");
    }

    #[test]
    fn not_found_names_the_object() {
        let f = describe(&api(404, "NotFound", ""), &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::NotFound);
        assert!(f.message.contains("\"kubepulse-controller\""), "{f}");
        assert!(f.message.contains("namespace \"kubepulse\""), "{f}");
        // An unusual 404 without a reason is still a 404.
        let f = from_status(404, None, "", &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::NotFound);
        assert_eq!(f.api_reason, None);
    }

    #[test]
    fn watcher_failures_name_list_or_watch() {
        let e = kube::runtime::watcher::Error::InitialListFailed(api(403, "Forbidden", ""));
        let f = describe_watcher(&e, "pods", Some("kubepulse"));
        assert_eq!(f.reason, ApiFailureReason::Forbidden);
        assert!(
            f.message
                .contains("verb \"list\" on pods in namespace \"kubepulse\""),
            "{f}"
        );
        let e = kube::runtime::watcher::Error::WatchStartFailed(api(404, "NotFound", ""));
        let f = describe_watcher(&e, "nodes", None);
        assert_eq!(f.reason, ApiFailureReason::NotFound);
        assert!(f.message.contains("nodes does not exist"), "{f}");
    }

    #[test]
    fn raw_responses_are_read_for_the_apiserver_reason() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":403,"reason":"Forbidden","message":"pods is forbidden"}"#;
        let call = ApiCall {
            verb: "create",
            resource: "pods",
            namespace: Some("kubepulse-probes"),
            name: None,
        };
        let f = from_response(403, body, &call);
        assert_eq!(f.api_reason.as_deref(), Some("Forbidden"));
        assert!(f.message.contains("verb \"create\" on pods"), "{f}");
        assert!(f.message.contains("pods is forbidden"), "{f}");
        let f = from_response(502, b"<html>bad gateway</html>", &call);
        assert_eq!(
            (f.reason, f.api_reason),
            (ApiFailureReason::ServerError, None)
        );
    }

    #[test]
    fn other_statuses() {
        for (code, want) in [
            (401, ApiFailureReason::Unauthorized),
            (409, ApiFailureReason::Conflict),
            (429, ApiFailureReason::Throttled),
            (503, ApiFailureReason::ServerError),
            (418, ApiFailureReason::Status),
        ] {
            let f = from_status(code, None, "x", &LEASE_GET);
            assert_eq!(f.reason, want, "{code}");
            assert!(f.message.contains("(apiserver: x)"), "{f}");
        }
    }

    #[test]
    fn connection_refused_is_found_in_the_source_chain() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = kube::Error::ReadEvents(io);
        let f = describe(&err, &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::ConnectionRefused);
        assert!(f.message.starts_with("connection refused"), "{f}");
    }

    #[test]
    fn tls_and_other_transport_failures() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let f = describe(&kube::Error::ReadEvents(io), &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::Tls);
        assert!(f.message.contains("UnknownIssuer"), "{f}");
        let io = std::io::Error::other(rustls::Error::DecryptError);
        let f = describe(&kube::Error::ReadEvents(io), &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::Tls);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let f = describe(&kube::Error::ReadEvents(io), &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::Transport);
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let f = describe(&kube::Error::ReadEvents(io), &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::Timeout);
        let bad = serde_json::from_str::<u8>("x").expect_err("bad json");
        let f = describe(&kube::Error::SerdeError(bad), &LEASE_GET);
        assert_eq!(f.reason, ApiFailureReason::Decode);
    }
}
