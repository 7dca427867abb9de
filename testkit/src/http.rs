//! The one HTTP client of the tests: a blocking HTTP/1.0 GET (no chunked
//! encoding; the server closes), enough for `/metrics`, the live page and
//! Prometheus' query API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GETs `target` (path and query) from `addr`; returns (status, body).
pub fn get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    Ok((status, body.to_string()))
}

/// GETs `target` from `addr`; a status other than 200 is an error.
pub fn get_ok(addr: SocketAddr, target: &str) -> std::io::Result<String> {
    match get(addr, target)? {
        (200, body) => Ok(body),
        (status, _) => Err(std::io::Error::other(format!("HTTP status {status}"))),
    }
}

/// Percent-encodes a PromQL expression for a query string.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
