//! UDP echo: answers every valid echo request within its source's budget
//! (`udp_packets_per_second_per_source`, see [`super::budget`]) with the
//! whole datagram (padding included, so path MTU probes see their size come
//! back), stamped with the responder's wall-clock receive and send times.
//! Requests over budget are dropped before parsing and counted
//! (`reason="source_rate"`): no reflector at line rate. A reply leaves
//! from the address its request was sent to, whatever the route's source
//! would be ([`crate::sys::pktinfo`]): a host agent on a node with a pod
//! bridge and an overlay device answers pods from the node address they
//! asked, so the path MTU search's connected socket receives it.
//!
//! Runs on its own OS thread with a blocking socket: its turnaround adds to
//! every measured RTT, and on the shared runtime it would queue behind other
//! tasks (measurement.md §5: p99 6-7x worse under load).

use crate::sys::pktinfo::{self, DestinationBuf};
use crate::sys::thread::prefer_realtime;
use std::io;
use std::net::UdpSocket;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::budget::{Rate, TokenBuckets, DEFAULT_MAX_SOURCES};
use super::{wall_ns, POLL_INTERVAL};
use crate::config::ResponderSettings;
use crate::metrics::labels::{RejectReason, ResponderKind};
use crate::metrics::AgentMetrics;
use crate::proto::echo;
use crate::proto::DecodeError;

/// Pause after an unexpected receive error, so a persistent one cannot spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Starts the echo thread on a bound socket.
pub(super) fn spawn(
    sock: UdpSocket,
    offset_ns: u64,
    limits: &ResponderSettings,
    metrics: AgentMetrics,
    stop: CancellationToken,
) -> io::Result<JoinHandle<()>> {
    // Shutdown must wake the blocking receive. With a runtime at hand a
    // task does it by shutting the socket's receive side (which wakes a
    // blocked recv on Linux, even unconnected); else a timeout polls, at
    // the cost of ten wake-ups a second.
    let woken_on_stop = match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let waker = sock.try_clone()?;
            let stop = stop.clone();
            rt.spawn(async move {
                stop.cancelled().await;
                // ENOTCONN on an unconnected socket, after the wake-up.
                let _ = socket2::SockRef::from(&waker).shutdown(std::net::Shutdown::Read);
            });
            true
        }
        Err(_) => false,
    };
    sock.set_read_timeout((!woken_on_stop).then_some(POLL_INTERVAL))?;
    pktinfo::enable_destination_info(&sock)?;
    let realtime = limits.realtime_priority;
    let rate = Rate::new(f64::from(limits.udp_packets_per_second_per_source), 1.0);
    std::thread::Builder::new()
        .name("kp-udp-echo".into())
        .spawn(move || {
            if realtime {
                prefer_realtime("udp echo");
            }
            let budget = TokenBuckets::new(rate, DEFAULT_MAX_SOURCES, Instant::now());
            run(&sock, offset_ns, budget, &metrics, &stop)
        })
}

fn run(
    sock: &UdpSocket,
    offset_ns: u64,
    mut budget: TokenBuckets,
    metrics: &AgentMetrics,
    stop: &CancellationToken,
) {
    // One byte more than the largest valid message, to tell oversized
    // datagrams (truncated to the buffer) from the largest valid one.
    let mut buf = vec![0u8; echo::MAX_LEN + 1];
    let mut cmsg = DestinationBuf::default();
    while !stop.is_cancelled() {
        let received = pktinfo::recv_with_destination(sock, &mut buf, &mut cmsg);
        // Woken by the shutdown of the receive side: not a request.
        if stop.is_cancelled() {
            break;
        }
        let (n, peer, local) = match received {
            Ok(d) => (d.len, d.from, d.to),
            Err(e) if super::is_timeout(&e) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "UDP echo receive failed");
                std::thread::sleep(ERROR_BACKOFF);
                continue;
            }
        };
        let rx_ns = wall_ns(offset_ns);
        // Over budget: dropped before any parsing, the cheapest answer.
        if !budget.take(peer.ip(), 1.0, Instant::now()) {
            metrics.responder_rejected(ResponderKind::UdpEcho, RejectReason::SourceRate);
            continue;
        }
        let Some(msg) = buf.get_mut(..n) else {
            continue;
        };
        if let Err(reason) = answer(msg, rx_ns, offset_ns) {
            metrics.responder_rejected(ResponderKind::UdpEcho, reason);
            continue;
        }
        match pktinfo::send_from(sock, msg, peer, local) {
            Ok(_) => metrics.responder_request(ResponderKind::UdpEcho),
            Err(e) => tracing::debug!(error = %e, %peer, "UDP echo send failed"),
        }
    }
}

/// Turns a request into its reply in place, or says why it is rejected.
fn answer(msg: &mut [u8], rx_ns: u64, offset_ns: u64) -> Result<(), RejectReason> {
    if msg.len() > echo::MAX_LEN {
        return Err(RejectReason::Oversized);
    }
    echo::make_reply(msg, rx_ns, wall_ns(offset_ns)).map_err(|e| match e {
        DecodeError::Oversized(_) => RejectReason::Oversized,
        _ => RejectReason::Malformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::echo::{EchoHeader, Kind};

    #[test]
    fn answers_requests_and_rejects_the_rest() {
        let mut msg = vec![0x55u8; 300];
        let h = EchoHeader {
            seq: 9,
            ..Default::default()
        };
        h.encode_request(&mut msg).expect("fits");
        answer(&mut msg, 5, 0).expect("answered");
        let (kind, r) = EchoHeader::decode(&msg).expect("decode");
        assert_eq!((kind, r.seq, r.rx_real_ns), (Kind::Reply, 9, 5));
        assert!(r.reply_real_ns > 5);
        // A reply is not answered again.
        assert_eq!(answer(&mut msg, 5, 0), Err(RejectReason::Malformed));
        assert_eq!(answer(&mut [1, 2, 3], 5, 0), Err(RejectReason::Malformed));
        let mut big = vec![0u8; echo::MAX_LEN + 1];
        h.encode_request(&mut big).expect("fits");
        assert_eq!(answer(&mut big, 5, 0), Err(RejectReason::Oversized));
    }
}
