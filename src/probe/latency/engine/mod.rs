//! The engine loop: follow targets, send what is due, wait in `ppoll` until
//! the next deadline or a reply, book replies and losses. Runs on its own
//! thread with 1 ns timer slack; nothing here touches tokio except the
//! non-blocking `watch` and cancellation reads.

mod receive;
mod targets;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::discovery::Target;
use crate::labels::{IcmpMode, Protocol};
use crate::probe::{ProbeContext, ProbeError};
use crate::proto::echo::{self, EchoHeader};
use crate::proto::icmp;
use crate::sys::clock::realtime_ns;
use crate::sys::poll::{ppoll, PollFd, READABLE};
use crate::sys::thread::{prefer_realtime, set_timer_slack};
use crate::sys::timestamp::{enable_rx_timestamps, ControlBuf};

use super::stream::{SendStamp, Stream};
use super::tcp::{SendError, TcpConn, TcpEvent};
use super::SampleHook;
use receive::book_tcp_event;
use targets::diff;

/// Longest single wait, so cancellation and target changes are seen within
/// this (the brief allows ~100 ms).
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Datagrams read per socket per wake-up, so a flood cannot delay sends.
const MAX_DRAIN: usize = 256;
/// How long replies to a removed target's streams are silently ignored.
const RETIRED_GRACE: Duration = Duration::from_secs(10);
/// Receive buffer: the largest UDP payload plus an IPv4 header with options.
const RX_BUF: usize = echo::MAX_LEN + 60 + icmp::HEADER_LEN;

/// Where a stream's probes go.
enum Dest {
    Udp(SocketAddr),
    Icmp(Ipv4Addr),
    Tcp(TcpConn),
}

struct Probe {
    stream: Stream,
    dest: Dest,
}

struct IcmpSocket {
    sock: Socket,
    mode: IcmpMode,
    // Our identifier on raw sockets; DGRAM sockets get one from the kernel.
    ident: u16,
}

/// Which descriptor a poll slot is.
#[derive(Clone, Copy)]
enum Slot {
    Udp,
    Icmp,
    Tcp(u64),
}

/// The engine state, owned by its thread.
pub(super) struct Engine {
    ctx: ProbeContext,
    hook: Option<SampleHook>,
    udp: Option<Socket>,
    icmp: Option<IcmpSocket>,
    epoch: Instant,
    targets: HashMap<Target, Vec<u64>>,
    probes: HashMap<u64, Probe>,
    retired: HashMap<u64, Instant>,
    rx: Vec<u8>,
    tx: Vec<u8>,
    cmsg: ControlBuf,
    tcp_events: Vec<TcpEvent>,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

impl Engine {
    /// Opens the sockets; fails only on the UDP socket (ICMP may be
    /// unavailable, TCP connects per target later).
    pub fn new(ctx: ProbeContext, hook: Option<SampleHook>) -> Result<Self, ProbeError> {
        let udp = if ctx.settings.udp.enabled {
            let addr = SocketAddr::new(ctx.bind, 0);
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)
                .map_err(io_err("opening the UDP probe socket"))?;
            s.set_nonblocking(true)
                .map_err(io_err("configuring the UDP probe socket"))?;
            s.bind(&SockAddr::from(addr))
                .map_err(io_err("binding the UDP probe socket"))?;
            enable_rx_timestamps(&s).map_err(io_err("enabling SO_TIMESTAMPNS"))?;
            Some(s)
        } else {
            None
        };
        let icmp = if ctx.settings.icmp.enabled {
            open_icmp(&ctx)
        } else {
            None
        };
        Ok(Self {
            hook,
            udp,
            icmp,
            epoch: Instant::now(),
            targets: HashMap::new(),
            probes: HashMap::new(),
            retired: HashMap::new(),
            rx: vec![0u8; RX_BUF],
            tx: Vec::with_capacity(icmp::HEADER_LEN + echo::HEADER_LEN),
            cmsg: ControlBuf::default(),
            tcp_events: Vec::new(),
            ctx,
        })
    }

    /// The agent name, for the thread name.
    pub fn agent_name(&self) -> &str {
        &self.ctx.identity.name
    }

    /// The loop; returns after shutdown.
    pub fn run(mut self) {
        // Timed waits must wake when asked, not up to 50 us later.
        if let Err(e) = set_timer_slack(1) {
            tracing::warn!(error = %e, "Cannot set timer slack; probe deadlines may be late");
        }
        if self.ctx.settings.realtime_priority {
            prefer_realtime("latency prober");
        }
        let initial = self.ctx.targets.borrow_and_update().clone();
        self.reconcile(&initial, Instant::now());
        let mut fds: Vec<PollFd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        while !self.ctx.shutdown.is_cancelled() {
            // An error means the sender is gone: keep the last target set.
            if self.ctx.targets.has_changed().unwrap_or(false) {
                let set = self.ctx.targets.borrow_and_update().clone();
                self.reconcile(&set, Instant::now());
            }
            let now = Instant::now();
            self.tick_tcp(now);
            self.fire_due(now);
            self.retired.retain(|_, until| *until > now);

            let now = Instant::now();
            let wait = self.next_wake(now).saturating_duration_since(now);
            self.poll_set(&mut fds, &mut slots);
            if let Err(e) = ppoll(&mut fds, wait) {
                tracing::warn!(error = %e, "ppoll failed in the latency engine");
                std::thread::sleep(Duration::from_millis(10));
            }
            // Taken before reading, so any reply queued by now is booked
            // before a probe it answers can be declared lost.
            let woke = Instant::now();
            self.drain_udp();
            self.drain_icmp();
            for (fd, slot) in fds.iter().zip(&slots) {
                if let Slot::Tcp(id) = *slot {
                    if fd.revents() != 0 {
                        self.tcp_ready(id, fd.revents(), woke);
                    }
                }
            }
            for p in self.probes.values_mut() {
                p.stream.expire(woke);
            }
        }
        tracing::debug!(agent = %self.ctx.identity.name, "Latency engine stopped");
    }

    fn reconcile(&mut self, set: &[Target], now: Instant) {
        let (removed, added) = diff(self.targets.keys(), set);
        for t in removed {
            for id in self.targets.remove(&t).unwrap_or_default() {
                self.probes.remove(&id);
                self.retired.insert(id, now + RETIRED_GRACE);
            }
        }
        for t in added {
            let ids = self.add_target(&t, now);
            self.targets.insert(t, ids);
        }
    }

    fn add_target(&mut self, t: &Target, now: Instant) -> Vec<u64> {
        let s = &self.ctx.settings;
        let addr = t.peer.address;
        let mut dests = Vec::new();
        if s.udp.enabled {
            match &self.udp {
                Some(u) if same_family(u, addr) => dests.push((
                    Protocol::Udp,
                    s.udp,
                    Dest::Udp(SocketAddr::new(addr, t.peer.ports.udp_echo)),
                )),
                _ => tracing::warn!(peer = %t.peer.name, %addr,
                    "Peer address family differs from the bind address; no UDP probes"),
            }
        }
        if s.icmp.enabled && self.icmp.is_some() {
            match addr {
                IpAddr::V4(v4) => dests.push((Protocol::Icmp, s.icmp, Dest::Icmp(v4))),
                IpAddr::V6(_) => {
                    tracing::warn!(peer = %t.peer.name, %addr, "ICMPv6 is not supported; no ICMP probes")
                }
            }
        }
        if s.tcp.enabled {
            let dest = SocketAddr::new(addr, t.peer.ports.tcp_echo);
            let conn = TcpConn::new(dest, self.ctx.bind, s.tcp.timeout, now);
            dests.push((Protocol::Tcp, s.tcp, Dest::Tcp(conn)));
        }
        let peer: Arc<str> = Arc::from(t.peer.name.as_str());
        let peer_node: Arc<str> = Arc::from(t.peer.node.as_str());
        let mut ids = Vec::new();
        for (protocol, periodic, dest) in dests {
            let series = self.ctx.metrics.latency(protocol, t.path, &t.peer.node);
            let stream = Stream::new(
                protocol,
                t.path,
                peer.clone(),
                peer_node.clone(),
                series,
                periodic.interval,
                periodic.timeout,
                s.rtt_min_window,
                now,
                self.ctx.guard.clone(),
                self.ctx.metrics.clone(),
            );
            ids.push(stream.id);
            self.probes.insert(stream.id, Probe { stream, dest });
        }
        ids
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + MAX_WAIT;
        for p in self.probes.values() {
            wake = wake.min(p.stream.schedule.next_deadline());
            if let Some(t) = p.stream.next_timeout() {
                wake = wake.min(t);
            }
            if let Dest::Tcp(c) = &p.dest {
                if let Some(t) = c.next_timer() {
                    wake = wake.min(t);
                }
            }
        }
        wake
    }

    fn poll_set(&self, fds: &mut Vec<PollFd>, slots: &mut Vec<Slot>) {
        fds.clear();
        slots.clear();
        if let Some(u) = &self.udp {
            fds.push(PollFd::new(u.as_fd(), READABLE));
            slots.push(Slot::Udp);
        }
        if let Some(i) = &self.icmp {
            fds.push(PollFd::new(i.sock.as_fd(), READABLE));
            slots.push(Slot::Icmp);
        }
        for (id, p) in &self.probes {
            if let Dest::Tcp(c) = &p.dest {
                if let Some((fd, events)) = c.interest() {
                    fds.push(PollFd::new(fd, events));
                    slots.push(Slot::Tcp(*id));
                }
            }
        }
    }

    fn tick_tcp(&mut self, now: Instant) {
        let metrics = &self.ctx.metrics;
        for p in self.probes.values_mut() {
            if let Dest::Tcp(c) = &mut p.dest {
                c.tick(now, &mut self.tcp_events);
                for ev in self.tcp_events.drain(..) {
                    book_tcp_event(&mut p.stream, c, ev, metrics, self.hook.as_ref());
                }
            }
        }
    }

    fn tcp_ready(&mut self, id: u64, revents: i16, now: Instant) {
        let Some(p) = self.probes.get_mut(&id) else {
            return;
        };
        if let Dest::Tcp(c) = &mut p.dest {
            c.ready(revents, now, &mut self.tcp_events);
            for ev in self.tcp_events.drain(..) {
                book_tcp_event(&mut p.stream, c, ev, &self.ctx.metrics, self.hook.as_ref());
            }
        }
    }

    fn fire_due(&mut self, now: Instant) {
        let metrics = &self.ctx.metrics;
        for p in self.probes.values_mut() {
            let Some(fire) = p.stream.schedule.fire(now) else {
                continue;
            };
            if fire.late {
                metrics.send_late(p.stream.protocol);
            }
            let seq = p.stream.take_seq();
            let mut hdr = EchoHeader {
                seq,
                stream: p.stream.id,
                ..EchoHeader::default()
            };
            let mut msg = [0u8; echo::HEADER_LEN];
            // Clocks are read last, just before the send syscall.
            let stamp = SendStamp {
                mono: Instant::now(),
                real_ns: realtime_ns(),
            };
            hdr.tx_mono_ns =
                u64::try_from(stamp.mono.duration_since(self.epoch).as_nanos()).unwrap_or(0);
            hdr.tx_real_ns = stamp.real_ns;
            if hdr.encode_request(&mut msg).is_none() {
                continue;
            }
            let result = match &mut p.dest {
                Dest::Udp(to) => match &self.udp {
                    Some(u) => u.send_to(&msg, &SockAddr::from(*to)).map(|_| ()),
                    None => continue,
                },
                Dest::Icmp(to) => match &self.icmp {
                    Some(i) => {
                        // The ICMP seq is 16 bits; the payload carries the full one.
                        icmp::build_echo_request(i.ident, seq as u16, &msg, &mut self.tx);
                        let to = SockAddr::from(SocketAddrV4::new(*to, 0));
                        i.sock.send_to(&self.tx, &to).map(|_| ())
                    }
                    None => continue,
                },
                Dest::Tcp(c) => match c.send(&msg, now) {
                    Ok(()) => Ok(()),
                    Err(SendError::NotConnected) => continue,
                    Err(SendError::Failed(e)) => Err(e),
                },
            };
            match result {
                Ok(()) => p.stream.sent(seq, stamp),
                Err(e) => {
                    tracing::debug!(error = %e, protocol = %p.stream.protocol, "Probe send failed");
                    p.stream.send_failed(metrics);
                }
            }
        }
    }
}

fn open_icmp(ctx: &ProbeContext) -> Option<IcmpSocket> {
    let (mode, sock, errors) = crate::sys::icmp::open_icmp_v4();
    ctx.metrics.set_icmp_mode(mode);
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let Some(sock) = sock else {
        tracing::warn!(
            ?errors,
            "No ICMP socket (neither unprivileged DGRAM nor RAW); ICMP probes are off"
        );
        return None;
    };
    tracing::info!(mode = %mode, "ICMP echo socket opened");
    if let Err(e) = enable_rx_timestamps(&sock) {
        tracing::warn!(error = %e, "No kernel timestamps on the ICMP socket; using user-space time");
    }
    if let IpAddr::V4(ip) = ctx.bind {
        if !ip.is_unspecified() {
            if let Err(e) = sock.bind(&SockAddr::from(SocketAddrV4::new(ip, 0))) {
                tracing::warn!(error = %e, %ip, "Cannot bind the ICMP socket; the kernel picks the source");
            }
        }
    }
    Some(IcmpSocket {
        sock,
        mode,
        ident: rand::random(),
    })
}

fn same_family(sock: &Socket, addr: IpAddr) -> bool {
    sock.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .is_some_and(|a| a.is_ipv4() == addr.is_ipv4())
}
