//! Phase bookkeeping of one apiserver probe (pure): which phases completed
//! and how long each took, the outcome named after the first phase that
//! failed, and the `/livez` response check.

use std::io;
use std::time::Duration;

use crate::metrics::labels::{ApiserverOutcome, ApiserverPhase};

/// The result of one probe: the durations of the phases that completed,
/// in order, and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// Completed phases, in the order they ran.
    pub done: Vec<(ApiserverPhase, Duration)>,
    /// `Ok`, or why the first failed phase failed.
    pub outcome: ApiserverOutcome,
}

impl Probe {
    /// A probe about to start: nothing done yet.
    pub(crate) fn start() -> Self {
        Self {
            done: Vec::with_capacity(ApiserverPhase::ALL.len()),
            outcome: ApiserverOutcome::Ok,
        }
    }

    /// Books a completed phase. A phase longer than `timeout` counts as
    /// timed out (a socket timeout bounds each read, not the whole phase),
    /// so the histograms never hold a phase that was a failure.
    pub(crate) fn completed(
        &mut self,
        phase: ApiserverPhase,
        took: Duration,
        timeout: Duration,
    ) -> bool {
        if took > timeout {
            self.outcome = ApiserverOutcome::Timeout;
            return false;
        }
        self.done.push((phase, took));
        true
    }

    /// Books the failure of `phase`: the probe ends with this outcome.
    pub(crate) fn failed(mut self, phase: ApiserverPhase, why: Failure) -> Self {
        self.outcome = outcome(phase, why);
        self
    }

    /// The probe's duration of `phase`, if that phase completed.
    #[cfg(test)]
    pub(crate) fn phase(&self, phase: ApiserverPhase) -> Option<Duration> {
        self.done.iter().find(|(p, _)| *p == phase).map(|(_, d)| *d)
    }
}

/// How a phase failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A socket error (a timeout among them).
    Io(io::ErrorKind),
    /// The TLS layer refused (certificate, protocol alert).
    Tls,
    /// The response was not a 200 or not HTTP.
    Http,
}

/// The outcome of a failure in `phase`: any timeout is `timeout`; other
/// socket errors are the phase's own failure.
pub(crate) fn outcome(phase: ApiserverPhase, why: Failure) -> ApiserverOutcome {
    match why {
        Failure::Io(io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
            ApiserverOutcome::Timeout
        }
        Failure::Io(_) => match phase {
            ApiserverPhase::Connect => ApiserverOutcome::ConnectFailed,
            ApiserverPhase::TlsHandshake => ApiserverOutcome::TlsFailed,
            ApiserverPhase::Livez => ApiserverOutcome::HttpFailed,
        },
        Failure::Tls => ApiserverOutcome::TlsFailed,
        Failure::Http => ApiserverOutcome::HttpFailed,
    }
}

/// The request line and headers of the health request.
pub(crate) fn livez_request(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kubepulse\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
}

/// Largest response head accepted.
pub(crate) const MAX_HEAD: usize = 16 << 10;

/// Where a `/livez` response read so far stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LivezRead {
    /// Need more bytes.
    More,
    /// Complete (head and Content-Length body, or head only without a
    /// length: then the body ends at close) with this status.
    Complete(u16),
    /// Head complete with this status; the body runs until the connection closes.
    UntilClose(u16),
    /// Not an HTTP response, or a head too large.
    Malformed,
}

/// Checks the bytes of a `/livez` response read so far.
pub(crate) fn read_livez(buf: &[u8]) -> LivezRead {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return LivezRead::More,
        _ => return LivezRead::Malformed,
    };
    let Some(code) = resp.code else {
        return LivezRead::Malformed;
    };
    let mut length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(n) => length = Some(n),
                None => return LivezRead::Malformed,
            }
        }
    }
    match length {
        Some(n) if buf.len() - head_len >= n => LivezRead::Complete(code),
        Some(_) => LivezRead::More,
        None => LivezRead::UntilClose(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_booked_in_order_until_the_first_failure() {
        let t = Duration::from_secs(2);
        let ms = Duration::from_millis;
        let mut p = Probe::start();
        assert!(p.completed(ApiserverPhase::Connect, ms(1), t));
        assert!(p.completed(ApiserverPhase::TlsHandshake, ms(3), t));
        let p = p.failed(ApiserverPhase::Livez, Failure::Http);
        assert_eq!(p.outcome, ApiserverOutcome::HttpFailed);
        assert_eq!(p.phase(ApiserverPhase::Connect), Some(ms(1)));
        assert_eq!(p.phase(ApiserverPhase::TlsHandshake), Some(ms(3)));
        assert_eq!(p.phase(ApiserverPhase::Livez), None);

        // A phase over the timeout is a timeout, not a sample.
        let mut p = Probe::start();
        assert!(!p.completed(ApiserverPhase::Connect, ms(2001), t));
        assert_eq!(p.outcome, ApiserverOutcome::Timeout);
        assert!(p.done.is_empty());
    }

    #[test]
    fn failures_map_to_outcomes() {
        use io::ErrorKind::*;
        use ApiserverPhase::*;
        let cases = [
            (
                Connect,
                Failure::Io(ConnectionRefused),
                ApiserverOutcome::ConnectFailed,
            ),
            (Connect, Failure::Io(TimedOut), ApiserverOutcome::Timeout),
            (
                TlsHandshake,
                Failure::Io(WouldBlock),
                ApiserverOutcome::Timeout,
            ),
            (
                TlsHandshake,
                Failure::Io(ConnectionReset),
                ApiserverOutcome::TlsFailed,
            ),
            (TlsHandshake, Failure::Tls, ApiserverOutcome::TlsFailed),
            (
                Livez,
                Failure::Io(UnexpectedEof),
                ApiserverOutcome::HttpFailed,
            ),
            (Livez, Failure::Http, ApiserverOutcome::HttpFailed),
        ];
        for (phase, why, want) in cases {
            assert_eq!(outcome(phase, why), want, "{phase}");
        }
    }

    #[test]
    fn livez_responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(read_livez(ok), LivezRead::Complete(200));
        assert_eq!(read_livez(&ok[..ok.len() - 1]), LivezRead::More);
        assert_eq!(read_livez(&ok[..10]), LivezRead::More);
        let err = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(read_livez(err), LivezRead::Complete(500));
        let forbidden = b"HTTP/1.1 403 Forbidden\r\n\r\n";
        assert_eq!(read_livez(forbidden), LivezRead::UntilClose(403));
        assert_eq!(read_livez(b"SSH-2.0-OpenSSH\r\n\r\n"), LivezRead::Malformed);
        let bad_len = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n";
        assert_eq!(read_livez(bad_len), LivezRead::Malformed);
        assert_eq!(read_livez(&vec![b'a'; MAX_HEAD]), LivezRead::Malformed);
        let req = livez_request("/livez", "kubernetes.default.svc");
        assert!(req.starts_with("GET /livez HTTP/1.1\r\nHost: kubernetes.default.svc\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }
}
