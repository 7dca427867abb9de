//! HTTP GET on a fresh connection, timed by phase with blocking IO:
//! connect, first byte (request written to first response byte) and
//! transfer (first byte to last body byte).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::connect::timed_connect;

/// Largest response head accepted; the probe target serves a tiny page.
const MAX_HEAD: usize = 16 << 10;
/// Largest body read; the body is discarded, this only bounds the work.
const MAX_BODY: u64 = 16 << 20;
/// Headers parsed at most.
const MAX_HEADERS: usize = 32;

/// Phase durations of a successful probe.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phases {
    /// TCP connect.
    pub connect: Duration,
    /// Request written to first response byte.
    pub first_byte: Duration,
    /// First response byte to last body byte.
    pub transfer: Duration,
    /// Body bytes received.
    pub body_bytes: u64,
}

/// Why an HTTP probe failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    /// The TCP connection was not established.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// Writing the request failed.
    #[error("sending the request: {0}")]
    Send(#[source] io::Error),
    /// Reading the response failed or timed out.
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    /// The connection closed before a complete response.
    #[error("connection closed after {0} bytes, before the response was complete")]
    Truncated(usize),
    /// The response head did not parse.
    #[error("malformed response: {0}")]
    Parse(String),
    /// A status outside 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
}

/// The parts of a response head the probe needs.
struct Head {
    len: usize,
    code: u16,
    content_length: Option<u64>,
}

/// Parses a response head with httparse; `Ok(None)` means incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Parse(e.to_string())),
    };
    let code = resp
        .code
        .ok_or_else(|| HttpError::Parse("no status code".into()))?;
    let mut content_length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| HttpError::Parse("bad Content-Length".into()))?;
            content_length = Some(v);
        }
    }
    // No body by definition (RFC 9110 6.4.1).
    if code == 204 || code == 304 || (100..200).contains(&code) {
        content_length = Some(0);
    }
    Ok(Some(Head {
        len,
        code,
        content_length,
    }))
}

/// Fuzz entry: parses a response head as the probe does.
#[cfg(fuzzing)]
pub(crate) fn fuzz_response_head(buf: &[u8]) {
    if let Ok(Some(h)) = parse_head(buf) {
        assert!(h.len <= buf.len(), "head longer than the input");
        let _ = (h.code, h.content_length);
    }
}

/// Sets the read timeout to what is left until `deadline`.
fn arm(stream: &TcpStream, deadline: Instant) -> Result<(), HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Read(io::ErrorKind::TimedOut.into()));
    }
    stream.set_read_timeout(Some(left)).map_err(HttpError::Read)
}

/// One HTTP probe; the whole exchange is bounded by `timeout`.
pub(super) fn probe(
    addr: SocketAddr,
    bind: IpAddr,
    timeout: Duration,
) -> Result<Phases, HttpError> {
    let deadline = Instant::now() + timeout;
    let (mut stream, connect) = timed_connect(addr, bind, timeout).map_err(HttpError::Connect)?;
    stream.set_nodelay(true).map_err(HttpError::Send)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(left))
        .map_err(HttpError::Send)?;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kubepulse/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(req.as_bytes()).map_err(HttpError::Send)?;
    let sent = Instant::now();

    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 << 10];
    let mut first: Option<Instant> = None;
    let head = loop {
        arm(&stream, deadline)?;
        let n = stream.read(&mut chunk).map_err(HttpError::Read)?;
        let now = Instant::now();
        if n == 0 {
            return Err(HttpError::Truncated(buf.len()));
        }
        first.get_or_insert(now);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = parse_head(&buf)? {
            break h;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::Parse(format!(
                "head larger than {MAX_HEAD} bytes"
            )));
        }
    };
    let first = first.unwrap_or(sent);
    if !(200..300).contains(&head.code) {
        return Err(HttpError::Status(head.code));
    }
    let mut body = u64::try_from(buf.len() - head.len).unwrap_or(u64::MAX);
    // If the whole body came with the head, the transfer took no time
    // beyond the first read.
    let mut last = first;
    // Without Content-Length the body ends at close (we asked for it).
    let want = head.content_length.unwrap_or(MAX_BODY);
    while body < want {
        arm(&stream, deadline)?;
        let n = stream.read(&mut chunk).map_err(HttpError::Read)?;
        if n == 0 {
            if head.content_length.is_some() {
                return Err(HttpError::Truncated(buf.len()));
            }
            break;
        }
        last = Instant::now();
        body += u64::try_from(n).unwrap_or(u64::MAX);
    }
    Ok(Phases {
        connect,
        first_byte: first.saturating_duration_since(sent),
        transfer: last.saturating_duration_since(first),
        body_bytes: body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-"),
            Ok(None)
        ));
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 612\r\n\r\nabc")
            .expect("parse")
            .expect("complete");
        assert_eq!((h.code, h.content_length, h.len), (200, Some(612), 40));
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("parse")
            .expect("complete");
        assert_eq!(h.content_length, Some(0));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
