//! Where a report's samples come from: `/metrics` endpoints scraped twice,
//! or a Prometheus server asked for `increase()` over the window. Both end
//! in the same [`Window`], so both are computed by the same [`super::build`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use tokio::net::TcpStream;

use super::exposition::{self, ParseError};
use super::snapshot::{Labels, Sample, Snapshot, Window};
use crate::metrics::catalog::{self as c, MetricDef, MetricType};

/// Longest wait for one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body read (a Prometheus answer for a large cluster included).
const MAX_BODY: usize = 256 << 20;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL does not parse or is not `http://`.
    #[error("{url}: not an http:// URL: {why}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// Connecting or talking HTTP failed.
    #[error("{url}: {why}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// A `/metrics` body did not parse.
    #[error("{url}: {source}")]
    Exposition {
        /// The URL.
        url: String,
        /// The parse error.
        #[source]
        source: ParseError,
    },
    /// Prometheus refused a query or answered something unexpected.
    #[error("Prometheus query {query:?}: {why}")]
    Query {
        /// The PromQL.
        query: String,
        /// What went wrong.
        why: String,
    },
}

/// GETs `url` (plain HTTP/1.1) and returns the body.
pub async fn http_get(url: &str) -> Result<String, SourceError> {
    let bad = |why: &str| SourceError::Url {
        url: url.into(),
        why: why.into(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let fail = |why: String| SourceError::Http {
        url: url.into(),
        why,
    };
    let exchange = async {
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| fail(format!("handshake: {e}")))?;
        let driver = tokio::spawn(conn);
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::ACCEPT,
                "text/plain;version=0.0.4, application/json",
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("request: {e}")))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| fail(format!("body: {e}")))?
            .to_bytes();
        driver.abort();
        let body = String::from_utf8_lossy(&body).into_owned();
        if !(200..300).contains(&status) {
            return Err(SourceError::Status {
                url: url.into(),
                status,
                body: body.chars().take(300).collect(),
            });
        }
        Ok(body)
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {HTTP_TIMEOUT:?}")))?
}

/// Scrapes every URL once and merges the samples.
pub async fn scrape_all(urls: &[String]) -> Result<Snapshot, SourceError> {
    let mut snap = Snapshot::default();
    for url in urls {
        let body = http_get(url).await?;
        let s = exposition::parse(&body).map_err(|source| SourceError::Exposition {
            url: url.clone(),
            source,
        })?;
        snap.merge(s);
    }
    Ok(snap)
}

/// Scrapes `urls`, waits `window`, scrapes again: the window between.
pub async fn scrape_window(urls: &[String], window: Duration) -> Result<Window, SourceError> {
    let first = scrape_all(urls).await?;
    let start = tokio::time::Instant::now();
    tokio::time::sleep(window).await;
    let second = scrape_all(urls).await?;
    Ok(Window::between(
        &first,
        &second,
        start.elapsed().as_secs_f64(),
    ))
}

/// The families a report reads, and how to ask Prometheus for each: an
/// `increase()` over the window for counters and histogram lines, the value
/// at the end of the window for gauges.
fn report_queries() -> Vec<(String, bool)> {
    let counters: [&MetricDef; 5] = [
        &c::PROBE_SENT,
        &c::PROBE_LOST,
        &c::PROBE_REPLY_RTT,
        &c::APISERVER_THROTTLED,
        &c::NODE_READY_TRANSITIONS,
    ];
    let histograms: [&MetricDef; 5] = [
        &c::PROBE_RTT,
        &c::TCP_CONNECT,
        &c::HTTP_PHASE,
        &c::POD_STARTUP_DURATION,
        &c::APISERVER_REQUEST_DURATION,
    ];
    let gauges: [&MetricDef; 7] = [
        &c::PROBE_RTT_MIN,
        &c::PROBE_JITTER,
        &c::BANDWIDTH,
        &c::PATH_MTU,
        &c::NODE_LEASE_CLOCK_OFFSET,
        &c::PEERS_NOT_READY,
        &c::PEER_EXPECTED_DOWN,
    ];
    let mut q: Vec<(String, bool)> = Vec::new();
    for d in counters {
        debug_assert_eq!(d.kind, MetricType::Counter);
        q.push((d.name.to_string(), true));
    }
    for d in histograms {
        q.push((format!("{}_bucket", d.name), true));
        q.push((format!("{}_count", d.name), true));
    }
    for d in gauges {
        q.push((d.name.to_string(), false));
    }
    q
}

/// Shipped recording rules that hold a histogram's bucket rates summed by
/// every label the report groups by, for the windows they cover: asking
/// for them (times the window: `increase` is `rate` × range) spares
/// Prometheus the raw buckets of every agent on a large cluster.
const RECORDED: &[(&str, u64, &str)] = &[
    (
        "kubepulse_probe_rtt_seconds_bucket",
        300,
        "path_protocol_le:kubepulse_probe_rtt_seconds_bucket:rate5m",
    ),
    (
        "kubepulse_probe_rtt_seconds_bucket",
        3600,
        "path_protocol_le:kubepulse_probe_rtt_seconds_bucket:rate1h",
    ),
    (
        "kubepulse_pod_startup_duration_seconds_bucket",
        3600,
        "phase_le:kubepulse_pod_startup_duration_seconds_bucket:rate1h",
    ),
];

/// The PromQL a report sends for series `name` over `window`: a shipped
/// recording rule where one covers it, else `increase()` (counters and
/// histogram lines) or the value at the end (gauges).
pub fn promql(name: &str, increase: bool, window: Duration) -> String {
    let secs = window.as_secs().max(1);
    if let Some((_, _, rule)) = RECORDED
        .iter()
        .find(|(n, w, _)| *n == name && *w == secs && increase)
    {
        return format!("{rule} * {secs}");
    }
    if increase {
        format!("increase({name}[{secs}s])")
    } else {
        name.to_string()
    }
}

/// Asks the Prometheus at `base` (e.g. `http://prometheus:9090`) for the
/// window of length `window` ending at `at` (Unix seconds).
pub async fn prometheus_window(
    base: &str,
    window: Duration,
    at: f64,
) -> Result<Window, SourceError> {
    let mut samples = Vec::new();
    for (name, increase) in report_queries() {
        let query = promql(&name, increase, window);
        for (labels, value) in instant_query(base, &query, at).await? {
            samples.push(Sample {
                name: name.clone(),
                labels,
                value,
            });
        }
    }
    Ok(Window::from_samples(samples, window.as_secs_f64()))
}

/// One instant query: every series of the result vector with its value.
pub async fn instant_query(
    base: &str,
    query: &str,
    at: f64,
) -> Result<Vec<(Labels, f64)>, SourceError> {
    let enc: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let url = format!(
        "{}/api/v1/query?query={enc}&time={at:.3}",
        base.trim_end_matches('/')
    );
    let body = http_get(&url).await?;
    let bad = |why: String| SourceError::Query {
        query: query.into(),
        why,
    };
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
    if v["status"] != "success" {
        return Err(bad(format!("{}: {}", v["errorType"], v["error"])));
    }
    let result = v["data"]["result"]
        .as_array()
        .ok_or_else(|| bad("no result vector".into()))?;
    let mut out = Vec::with_capacity(result.len());
    for r in result {
        let labels: Labels = r["metric"]
            .as_object()
            .ok_or_else(|| bad("a series without labels".into()))?
            .iter()
            .filter(|(k, _)| k.as_str() != "__name__")
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let value = r["value"][1]
            .as_str()
            .and_then(super::snapshot::parse_value)
            .ok_or_else(|| bad("a sample without a value".into()))?;
        out.push((labels, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_rules_where_they_cover_the_window_raw_series_elsewhere() {
        let five = Duration::from_secs(300);
        assert_eq!(
            promql("kubepulse_probe_rtt_seconds_bucket", true, five),
            "path_protocol_le:kubepulse_probe_rtt_seconds_bucket:rate5m * 300"
        );
        assert_eq!(
            promql(
                "kubepulse_probe_rtt_seconds_bucket",
                true,
                Duration::from_secs(60)
            ),
            "increase(kubepulse_probe_rtt_seconds_bucket[60s])"
        );
        assert_eq!(
            promql("kubepulse_probe_sent_total", true, five),
            "increase(kubepulse_probe_sent_total[300s])"
        );
        assert_eq!(
            promql("kubepulse_path_mtu_bytes", false, five),
            "kubepulse_path_mtu_bytes"
        );
        // Every rule named here is shipped.
        let rules = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/alerts/kubepulse-rules.yaml"
        ))
        .expect("rules file");
        for (_, _, rule) in RECORDED {
            assert!(
                rules.contains(&format!("record: {rule}\n")),
                "{rule} is not shipped"
            );
        }
    }
}
