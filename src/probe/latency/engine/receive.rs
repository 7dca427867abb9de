//! Reading replies: UDP and ICMP datagrams with kernel timestamps, TCP
//! frames, and booking them against their streams.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use crate::metrics::labels::{ProbeErrorReason, Protocol};
use crate::metrics::AgentMetrics;
use crate::probe::guard::SampleGuard;
use crate::probe::ProbeContext;
use crate::proto::echo::{EchoHeader, Kind};
use crate::proto::icmp;
use crate::sys::icmp::IcmpSocketKind;
use crate::sys::timestamp::{recv_timestamped, Received};

use super::super::stream::{Arrival, ResponderTimes};
use super::super::tcp::TcpEvent;
use super::super::SampleHook;
use super::{ById, Dest, Engine, Probe, MAX_DRAIN};

impl Engine {
    pub(super) fn drain_udp(&mut self) {
        let Some(sock) = &self.udp else {
            return;
        };
        for _ in 0..MAX_DRAIN {
            let r = match recv_timestamped(sock.as_fd(), &mut self.rx, &mut self.cmsg) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP probe receive failed");
                    return;
                }
            };
            let arrival = arrival(&r);
            let bytes = self.rx.get(..r.len).unwrap_or_default();
            let decoded = if r.truncated {
                None
            } else {
                EchoHeader::decode(bytes).ok()
            };
            match decoded {
                Some((Kind::Reply, h)) => match self.probes.get_mut(&h.stream) {
                    Some(p) if p.stream.protocol == Protocol::Udp => {
                        let times = ResponderTimes {
                            rx_real_ns: h.rx_real_ns,
                            reply_real_ns: h.reply_real_ns,
                        };
                        p.book(
                            &self.ctx.metrics,
                            self.hook.as_ref(),
                            &*self.ctx.guard,
                            |s, g, sink| s.reply(h.seq, arrival, Some(times), g, sink),
                        );
                    }
                    _ if self.retired.contains_key(&h.stream) => {}
                    _ => bad_udp_reply(&self.probes, r.from, &self.ctx),
                },
                _ => bad_udp_reply(&self.probes, r.from, &self.ctx),
            }
        }
    }

    pub(super) fn drain_icmp(&mut self) {
        let Some(i) = &self.icmp else {
            return;
        };
        for _ in 0..MAX_DRAIN {
            let r = match recv_timestamped(i.sock.as_fd(), &mut self.rx, &mut self.cmsg) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "ICMP probe receive failed");
                    return;
                }
            };
            let arrival = arrival(&r);
            let bytes = self.rx.get(..r.len).unwrap_or_default();
            let msg = if i.kind == IcmpSocketKind::Raw {
                icmp::strip_ipv4_header(bytes)
            } else {
                Ok(bytes)
            };
            // A raw socket sees every ICMP packet of the host (our own
            // requests on loopback, other pingers): only well-formed echo
            // replies carrying one of our stream ids concern us.
            let Ok(e) = msg.and_then(icmp::parse_echo) else {
                continue;
            };
            if e.kind != icmp::EchoKind::Reply
                || (i.kind == IcmpSocketKind::Raw && e.ident != i.ident)
            {
                continue;
            }
            let Ok((Kind::Request, h)) = EchoHeader::decode(e.payload) else {
                continue;
            };
            if let Some(p) = self.probes.get_mut(&h.stream) {
                if p.stream.protocol != Protocol::Icmp || h.seq as u16 != e.seq {
                    self.ctx.metrics.probe_error(
                        p.stream.protocol,
                        p.stream.path,
                        ProbeErrorReason::BadReply,
                    );
                    continue;
                }
                p.book(
                    &self.ctx.metrics,
                    self.hook.as_ref(),
                    &*self.ctx.guard,
                    |s, g, sink| s.reply(h.seq, arrival, None, g, sink),
                );
            }
        }
    }
}

pub(super) fn arrival(r: &Received) -> Arrival {
    super::super::arrival_now(r.kernel_rx_ns)
}

/// A datagram that is not a reply to a live stream: counted against the
/// target it came from, if any (junk from elsewhere has no path label).
pub(super) fn bad_udp_reply(probes: &ById<Probe>, from: Option<SocketAddr>, ctx: &ProbeContext) {
    let hit = probes
        .values()
        .find(|p| matches!(p.dest, Dest::Udp(a) if Some(a) == from));
    match hit {
        Some(p) => {
            ctx.metrics
                .probe_error(p.stream.protocol, p.stream.path, ProbeErrorReason::BadReply)
        }
        None => tracing::debug!(?from, "Ignoring a datagram from no current target"),
    }
}

pub(super) fn book_tcp_event(
    p: &mut Probe,
    ev: TcpEvent,
    metrics: &AgentMetrics,
    hook: Option<&SampleHook>,
    guard: &dyn SampleGuard,
) {
    let (protocol, path) = (p.stream.protocol, p.stream.path);
    match ev {
        TcpEvent::ConnectFailed(e) => {
            tracing::debug!(error = %e, path = %path, "TCP probe connect failed");
            metrics.probe_error(protocol, path, ProbeErrorReason::ConnectFailed);
        }
        TcpEvent::Closed(e) => {
            tracing::debug!(error = ?e, path = %path, "TCP probe connection closed");
        }
        TcpEvent::Frame(f, arrival) => match EchoHeader::decode(&f) {
            Ok((Kind::Reply, h)) if h.stream == p.stream.id => {
                if let Dest::Tcp(c) = &mut p.dest {
                    c.healthy();
                }
                p.book(metrics, hook, guard, |s, g, sink| {
                    s.reply(h.seq, arrival, None, g, sink);
                });
            }
            _ => {
                // The byte stream cannot be trusted past a bad frame.
                metrics.probe_error(protocol, path, ProbeErrorReason::BadReply);
                if let Dest::Tcp(c) = &mut p.dest {
                    c.drop_connection(arrival.read_at());
                }
            }
        },
    }
}
