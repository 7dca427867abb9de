//! The kubelet's probes, from the node's namespace (where a kubelet's
//! probes come from) to the pod's address.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::super::pod::{Check, Probe};
use crate::lab::netlab::in_ns;

/// Runs one probe from the node's namespace (where the kubelet's probes
/// come from) against the pod's address.
pub(super) fn check(node_ns: &str, ip: Ipv4Addr, p: &Probe) -> bool {
    let timeout = Duration::from_secs(p.timeout);
    let check = p.check.clone();
    in_ns(node_ns, move || match check {
        Check::Http { port, path } => http_ok(SocketAddr::from((ip, port)), &path, timeout),
        Check::Tcp { port } => {
            std::net::TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout).is_ok()
        }
    })
}

/// A GET answered 200-399 within `timeout`.
fn http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}
