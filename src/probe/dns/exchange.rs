//! One timed DNS exchange over UDP (IO), on a blocking thread, timed as the
//! latency engine times its UDP probes: the wall clock read right before
//! `send`, the reply's kernel receive timestamp (SO_TIMESTAMPNS) at the
//! other end, so the receiving thread's wake-up is not measured. Without a
//! usable kernel stamp (none given, or a wall-clock step makes it disagree
//! with the monotonic clock) the monotonic time to the `recv` return is
//! used.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;

use super::message::{build_query, classify, Reply};
use crate::metrics::labels::DnsOutcome;
use crate::sys::clock::realtime_ns;
use crate::sys::timestamp::{enable_rx_timestamps, recv_timestamped, ControlBuf};

/// The kernel-stamped time, when it is consistent with the monotonic one
/// (never later than it; a wall-clock step would make it so).
fn pick_rtt(sent_ns: u64, kernel_rx_ns: Option<u64>, mono: Duration) -> Duration {
    kernel_rx_ns
        .and_then(|rx| rx.checked_sub(sent_ns))
        .map(Duration::from_nanos)
        .filter(|k| !k.is_zero() && *k <= mono)
        .unwrap_or(mono)
}

/// Largest reply read: plain DNS over UDP without EDNS is at most 512
/// bytes; a larger buffer only tolerates servers that send more.
const MAX_REPLY: usize = 4096;

/// The result of one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lookup {
    /// How it ended.
    pub outcome: DnsOutcome,
    /// Query sent to reply received, when a reply arrived.
    pub rtt: Option<Duration>,
}

impl Lookup {
    fn failed(outcome: DnsOutcome) -> Self {
        Self { outcome, rtt: None }
    }
}

/// Asks `server` for the A records of `name` from `bind` (a specific
/// address of the same family, or unspecified), waiting at most `timeout`.
pub(crate) fn lookup(server: SocketAddr, bind: IpAddr, name: &Name, timeout: Duration) -> Lookup {
    let sock = match socket(server, bind) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%server, error = %e, "DNS socket setup failed");
            return Lookup::failed(DnsOutcome::SendFailed);
        }
    };
    let id: u16 = rand::random();
    let query = build_query(id, name);
    let mut buf = [0u8; MAX_REPLY];
    let mut peek = [0u8; 1];
    let mut cmsg = ControlBuf::default();
    let sent_ns = realtime_ns();
    let start = Instant::now();
    if let Err(e) = sock.send(&query) {
        tracing::debug!(%server, error = %e, "DNS query send failed");
        return Lookup::failed(DnsOutcome::SendFailed);
    }
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return Lookup::failed(DnsOutcome::Timeout);
        }
        // Wait for a datagram (blocking peek, bounded by the read timeout),
        // then take it with its kernel stamp.
        let got = sock
            .peek(&mut peek)
            .and_then(|_| recv_timestamped(sock.as_fd(), &mut buf, &mut cmsg));
        match got {
            Ok(r) => {
                let mono = start.elapsed();
                match classify(&buf[..r.len], id, name) {
                    Reply::Unrelated => continue,
                    Reply::Answer(outcome) => {
                        return Lookup {
                            outcome,
                            rtt: Some(pick_rtt(sent_ns, r.kernel_rx_ns, mono)),
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Lookup::failed(DnsOutcome::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ICMP port or host unreachable on the connected socket.
                tracing::debug!(%server, error = %e, "DNS reply receive failed");
                return Lookup::failed(DnsOutcome::SendFailed);
            }
        }
    }
}

fn socket(server: SocketAddr, bind: IpAddr) -> io::Result<UdpSocket> {
    let local: IpAddr = if !bind.is_unspecified() && bind.is_ipv4() == server.is_ipv4() {
        bind
    } else if server.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    };
    // A fresh socket (new source port) per lookup, as a stub resolver
    // does: conntrack and kube-proxy see each lookup as a new flow.
    let sock = UdpSocket::bind(SocketAddr::new(local, 0))?;
    sock.connect(server)?;
    enable_rx_timestamps(&sock)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dns::query_name;
    use hickory_proto::op::{Message, MessageType, ResponseCode};

    /// A loopback server answering each query once with `rcode` after
    /// first sending a stray datagram with another id.
    fn server(rcode: ResponseCode) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = s.local_addr().expect("addr");
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf).expect("recv");
            let q = Message::from_vec(&buf[..n]).expect("query");
            let mut r = Message::new();
            r.set_id(q.id().wrapping_add(1))
                .set_message_type(MessageType::Response);
            s.send_to(&r.to_vec().expect("enc"), from)
                .expect("send stray");
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_response_code(rcode)
                .add_queries(q.queries().iter().cloned());
            s.send_to(&r.to_vec().expect("enc"), from).expect("send");
        });
        (addr, h)
    }

    #[test]
    fn answered_lookup_skips_strays_and_is_timed() {
        let name = query_name("kubernetes.default.svc.cluster.local").expect("name");
        let (addr, h) = server(ResponseCode::NXDomain);
        let l = lookup(
            addr,
            "127.0.0.1".parse().expect("ip"),
            &name,
            Duration::from_secs(5),
        );
        h.join().expect("server");
        assert_eq!(l.outcome, DnsOutcome::Nxdomain);
        let rtt = l.rtt.expect("timed");
        assert!(
            rtt > Duration::ZERO && rtt < Duration::from_secs(5),
            "{rtt:?}"
        );
    }

    #[test]
    fn kernel_stamps_are_used_only_when_consistent() {
        let ms = Duration::from_millis;
        let sent = 1_000_000_000;
        // The kernel stamp excludes the wake-up: preferred.
        assert_eq!(pick_rtt(sent, Some(sent + 3_000_000), ms(4)), ms(3));
        // No stamp, a stamp before the send or after the monotonic time
        // (wall clock stepped): the monotonic time.
        assert_eq!(pick_rtt(sent, None, ms(4)), ms(4));
        assert_eq!(pick_rtt(sent, Some(sent - 1), ms(4)), ms(4));
        assert_eq!(pick_rtt(sent, Some(sent + 9_000_000), ms(4)), ms(4));
    }

    #[test]
    fn silent_server_times_out() {
        let name = query_name("a.example").expect("name");
        // Bound but never answering.
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let t = Duration::from_millis(50);
        let l = lookup(
            s.local_addr().expect("addr"),
            IpAddr::from([0, 0, 0, 0]),
            &name,
            t,
        );
        assert_eq!(l, Lookup::failed(DnsOutcome::Timeout));
    }

    #[test]
    fn closed_port_is_send_failed() {
        let name = query_name("a.example").expect("name");
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = s.local_addr().expect("addr");
        drop(s);
        let l = lookup(
            addr,
            IpAddr::from([0, 0, 0, 0]),
            &name,
            Duration::from_secs(2),
        );
        assert_eq!(l, Lookup::failed(DnsOutcome::SendFailed));
    }
}
