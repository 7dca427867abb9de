//! The engine loop: follow targets, sleep in `ppoll` until the earliest
//! deadline (send, probe timeout or TCP reconnect) or news (target change,
//! shutdown), read every reply queued by then, then serve the streams whose
//! deadline has come. Replies are kernel-stamped (UDP, ICMP and TCP alike),
//! so they wait for the next wake-up instead of causing one of their own.
//! Runs on its own thread with 1 ns timer slack, and its sleeps end by a
//! timerfd ([`crate::sys::poll::ppoll_exact`]): a poll timeout would let
//! the kernel wake a thread that is not realtime up to 0.1 % of the sleep
//! late, 1 ms after the second between two trains, which made about half
//! the UDP sends (the first of each train) late. Nothing here touches tokio
//! except the non-blocking `watch` and cancellation reads, and a small task
//! that notifies an eventfd the engine sleeps on when either changes.
//!
//! The streams of one interval send as a train, a millisecond apart from a
//! random start ([`crate::schedule::train`]): a wake-up soon after the last
//! costs about half of one after a long sleep.
//!
//! Cost per probe does not grow with the number of targets: deadlines live
//! in a min-heap (one live entry per stream, stale ones skipped), the TCP
//! connections sit in one epoll set (a wake-up touches the ready
//! connections only), sockets are read only when reported
//! readable, and nothing is allocated per probe (metric handles are
//! resolved once per stream).

mod receive;
mod sink;
mod targets;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::metrics::labels::{IcmpMode, Protocol};
use crate::peer::Target;
use crate::probe::{ProbeContext, ProbeError};
use crate::proto::echo::{self, EchoHeader};
use crate::proto::icmp;
use crate::schedule::{random_below, Periodic, TrainSlot, Trains};
use crate::sys::clock::realtime_ns;
use crate::sys::epoll::{self, Epoll};
use crate::sys::icmp::IcmpSocketKind;
use crate::sys::poll::{ppoll, ppoll_exact, Alarm, PollFd, FAILED, READABLE, WRITABLE};
use crate::sys::thread::{prefer_realtime, set_timer_slack};
use crate::sys::timestamp::{enable_rx_timestamps, ControlBuf};
use crate::sys::wake::Wake;

use super::stream::{SendStamp, Sink, Stream};
use super::tcp::{SendError, TcpConn, TcpEvent};
use super::SampleHook;
use crate::metrics::{AgentMetrics, LatencySeries};
use crate::probe::guard::SampleGuard;
use receive::book_tcp_event;
use sink::{ClockHandle, MetricsSink};
use targets::diff;

/// Longest single wait when nothing notifies the engine of cancellation
/// and target changes (no tokio runtime to watch them): they are seen
/// within this (the brief allows ~100 ms).
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Longest single wait when a watcher task notifies the engine: only a
/// safety net, since every wake-up costs CPU.
const NOTIFIED_WAIT: Duration = Duration::from_secs(1);
/// Datagrams read per socket per wake-up, so a flood cannot delay sends.
const MAX_DRAIN: usize = 256;
/// Ready TCP connections handled per wake-up (more wait for the next).
const EPOLL_BATCH: usize = 64;
/// How long replies to a removed target's streams are silently ignored.
const RETIRED_GRACE: Duration = Duration::from_secs(10);
/// How often the retired streams are forgotten.
const RETIRED_SWEEP: Duration = Duration::from_secs(1);
/// Receive buffer: the largest UDP payload plus an IPv4 header with options.
const RX_BUF: usize = echo::MAX_LEN + 60 + icmp::HEADER_LEN;

/// Hashes stream ids as they are: they are random 64-bit numbers already,
/// and SipHash on every reply and deadline was a measurable part of the
/// engine's cost.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by stream id.
type ById<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Where a stream's probes go.
enum Dest {
    Udp(SocketAddr),
    Icmp(Ipv4Addr),
    Tcp(TcpConn),
}

struct Probe {
    stream: Stream,
    dest: Dest,
    series: LatencySeries,
    clock: ClockHandle,
    peer: Arc<str>,
    peer_node: Arc<str>,
    /// The deadline of this stream's live heap entry.
    armed: Instant,
    /// What the epoll set watches for this stream's TCP connection.
    registered: Option<(RawFd, i16)>,
    /// Its place in its interval's train, given back when it goes.
    train_slot: TrainSlot,
}

impl Probe {
    /// Runs `f` on the stream with the sink that books into this probe's
    /// metric handles: the one place stream events become metrics.
    fn book(
        &mut self,
        metrics: &AgentMetrics,
        hook: Option<&SampleHook>,
        guard: &dyn SampleGuard,
        f: impl FnOnce(&mut Stream, &dyn SampleGuard, &mut dyn Sink),
    ) {
        let mut sink = MetricsSink {
            protocol: self.stream.protocol,
            path: self.stream.path,
            series: &self.series,
            clock: &mut self.clock,
            metrics,
            hook,
            peer: &self.peer,
            peer_node: &self.peer_node,
        };
        f(&mut self.stream, guard, &mut sink);
    }

    /// When this stream next needs serving.
    fn next_wake(&self) -> Instant {
        let mut wake = self.stream.schedule.next_deadline();
        if let Some(t) = self.stream.next_timeout() {
            wake = wake.min(t);
        }
        if let Dest::Tcp(c) = &self.dest {
            if let Some(t) = c.next_timer() {
                wake = wake.min(t);
            }
        }
        wake
    }

    /// What the poll set holds for this stream, to notice changes.
    fn interest(&self) -> Option<(RawFd, i16)> {
        match &self.dest {
            Dest::Tcp(c) => c.interest().map(|(fd, ev)| (fd.as_raw_fd(), ev)),
            _ => None,
        }
    }
}

struct IcmpSocket {
    sock: Socket,
    kind: IcmpSocketKind,
    // Our identifier on raw sockets; DGRAM sockets get one from the kernel.
    ident: u16,
    /// Whether replies carry kernel receive stamps (else they must be read
    /// as soon as they arrive).
    stamped: bool,
}

/// Which descriptor a poll slot is.
#[derive(Clone, Copy)]
enum Slot {
    Udp,
    Icmp,
    Tcp,
}

/// The engine state, owned by its thread.
pub(super) struct Engine {
    ctx: ProbeContext,
    hook: Option<SampleHook>,
    udp: Option<Socket>,
    icmp: Option<IcmpSocket>,
    epoch: Instant,
    targets: HashMap<Target, Vec<u64>>,
    probes: ById<Probe>,
    retired: ById<Instant>,
    next_sweep: Instant,
    /// Min-heap of (deadline, stream id); an entry is live while it equals
    /// the stream's `armed`.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Where each stream sends within its interval.
    trains: Trains,
    /// The reply descriptors, polled without waiting at each wake-up.
    fds: Vec<PollFd>,
    slots: Vec<Slot>,
    /// What the engine sleeps on: `news`, the alarm, and the ICMP socket if
    /// its replies are not kernel-stamped.
    waits: Vec<PollFd>,
    /// Ends each sleep at its deadline.
    alarm: Alarm,
    tcp: Epoll,
    tcp_ready: Vec<(u64, u32)>,
    rx: Vec<u8>,
    tx: Vec<u8>,
    cmsg: ControlBuf,
    tcp_events: Vec<TcpEvent>,
    /// Notified on target changes and shutdown, when a watcher runs.
    news: Arc<Wake>,
    /// The longest wait: [`NOTIFIED_WAIT`] with a watcher, else
    /// [`POLL_WAIT`].
    max_wait: Duration,
}

/// Notifies `news` whenever the targets change and once at shutdown, from
/// a task on the current tokio runtime, so the engine thread sleeps until
/// its next deadline instead of waking to look. Returns whether it runs.
fn watch_for_news(ctx: &ProbeContext, news: &Arc<Wake>) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let (mut targets, stop, news) = (ctx.targets.clone(), ctx.shutdown.clone(), news.clone());
    rt.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                changed = targets.changed() => match changed {
                    Ok(()) => news.notify(),
                    // The sender is gone: the engine keeps the last set.
                    Err(_) => {
                        stop.cancelled().await;
                        break;
                    }
                },
            }
        }
        news.notify();
    });
    true
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

impl Engine {
    /// Opens the sockets; fails only on the UDP socket (ICMP may be
    /// unavailable, TCP connects per target later).
    pub(super) fn new(ctx: ProbeContext, hook: Option<SampleHook>) -> Result<Self, ProbeError> {
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
        let tcp = Epoll::new(EPOLL_BATCH).map_err(io_err("creating the TCP epoll set"))?;
        let news = Arc::new(Wake::new().map_err(io_err("creating the engine's eventfd"))?);
        let alarm = Alarm::new().map_err(io_err("creating the engine's timerfd"))?;
        let max_wait = if watch_for_news(&ctx, &news) {
            NOTIFIED_WAIT
        } else {
            POLL_WAIT
        };
        Ok(Self {
            news,
            max_wait,
            hook,
            udp,
            icmp,
            epoch: Instant::now(),
            targets: HashMap::new(),
            probes: ById::default(),
            retired: ById::default(),
            next_sweep: Instant::now(),
            timers: BinaryHeap::new(),
            trains: Trains::new(),
            fds: Vec::new(),
            slots: Vec::new(),
            waits: Vec::new(),
            alarm,
            tcp,
            tcp_ready: Vec::with_capacity(EPOLL_BATCH),
            rx: vec![0u8; RX_BUF],
            tx: Vec::with_capacity(icmp::HEADER_LEN + echo::HEADER_LEN),
            cmsg: ControlBuf::default(),
            tcp_events: Vec::new(),
            ctx,
        })
    }

    /// The agent name, for the thread name.
    pub(super) fn agent_name(&self) -> &str {
        &self.ctx.identity.name
    }

    /// The loop; returns after shutdown.
    pub(super) fn run(mut self) {
        // Timed waits must wake when asked, not up to 50 us later.
        if let Err(e) = set_timer_slack(1) {
            tracing::warn!(error = %e, "Cannot set timer slack; probe deadlines may be late");
        }
        if self.ctx.settings.realtime_priority {
            prefer_realtime("latency prober");
        }
        let initial = self.ctx.targets.borrow_and_update().clone();
        self.reconcile(&initial, Instant::now());
        self.build_poll_set();
        while !self.ctx.shutdown.is_cancelled() {
            // An error means the sender is gone: keep the last target set.
            if self.ctx.targets.has_changed().unwrap_or(false) {
                let set = self.ctx.targets.borrow_and_update().clone();
                self.reconcile(&set, Instant::now());
            }
            let now = Instant::now();
            let wake = self
                .timers
                .peek()
                .map_or(now + self.max_wait, |Reverse((t, _))| {
                    (*t).min(now + self.max_wait)
                });
            // Replies carry the kernel's receive stamp, so they need no
            // wake-up of their own: they are read at the next one a
            // deadline (send, timeout) or news causes, which halves the
            // wake-ups per probe and keeps every RTT exact.
            let timeout = wake.saturating_duration_since(now);
            if let Err(e) = ppoll_exact(&mut self.waits, timeout, &self.alarm) {
                tracing::warn!(error = %e, "ppoll failed in the latency engine");
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.waits.first().is_some_and(|w| w.revents() != 0) {
                // The loop re-reads the targets and the token itself.
                self.news.clear();
            }
            // Taken before reading, so any reply queued by now is booked
            // before a probe it answers can be declared lost.
            let woke = Instant::now();
            if let Err(e) = ppoll(&mut self.fds, Duration::ZERO) {
                tracing::warn!(error = %e, "ppoll failed in the latency engine");
            }
            self.read_ready(woke);
            self.run_timers(woke);
            if woke >= self.next_sweep {
                self.retired.retain(|_, until| *until > woke);
                self.next_sweep = woke + RETIRED_SWEEP;
            }
        }
        tracing::debug!(agent = %self.ctx.identity.name, "Latency engine stopped");
    }

    /// Reads every descriptor `ppoll` marked.
    fn read_ready(&mut self, woke: Instant) {
        for i in 0..self.fds.len() {
            let (Some(fd), Some(slot)) = (self.fds.get(i), self.slots.get(i)) else {
                break;
            };
            let revents = fd.revents();
            if revents == 0 {
                continue;
            }
            match *slot {
                Slot::Udp => self.drain_udp(),
                Slot::Icmp => self.drain_icmp(),
                Slot::Tcp => self.drain_tcp(woke),
            }
        }
    }

    /// Handles the TCP connections the epoll set reports ready.
    fn drain_tcp(&mut self, woke: Instant) {
        let mut ready = std::mem::take(&mut self.tcp_ready);
        if let Err(e) = self.tcp.ready(&mut ready) {
            tracing::warn!(error = %e, "epoll_wait failed in the latency engine");
        }
        for (id, events) in ready.drain(..) {
            self.tcp_ready(id, poll_flags(events), woke);
        }
        self.tcp_ready = ready;
    }

    /// Serves every stream whose deadline is at or before `now`.
    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((when, id))) = self.timers.peek().copied() {
            if when > now {
                break;
            }
            self.timers.pop();
            match self.probes.get(&id) {
                Some(p) if p.armed == when => self.serve(id, now),
                // Removed, or re-armed since: a stale entry.
                _ => {}
            }
        }
    }

    /// Connect/reconnect, send if due, expire timed-out probes, re-arm.
    fn serve(&mut self, id: u64, now: Instant) {
        let Some(p) = self.probes.get_mut(&id) else {
            return;
        };
        let metrics = &self.ctx.metrics;
        let guard = &*self.ctx.guard;
        let hook = self.hook.as_ref();
        if let Dest::Tcp(c) = &mut p.dest {
            c.tick(now, &mut self.tcp_events);
        }
        for ev in self.tcp_events.drain(..) {
            book_tcp_event(p, ev, metrics, hook, guard);
        }
        fire(
            p,
            now,
            self.epoch,
            &self.udp,
            &self.icmp,
            &mut self.tx,
            metrics,
            hook,
            guard,
        );
        p.book(metrics, hook, guard, |s, g, sink| s.expire(now, g, sink));
        sync_interest(&self.tcp, p, id);
        // Every deadline left is after `now` (fire and expire consumed the
        // due ones, tick moved the TCP timer on); the floor is a guard.
        let next = p.next_wake().max(now + Duration::from_nanos(1));
        p.armed = next;
        self.timers.push(Reverse((next, id)));
    }

    /// Arms `id` earlier if its next deadline moved before the armed one.
    fn rearm_if_earlier(&mut self, id: u64) {
        if let Some(p) = self.probes.get_mut(&id) {
            let next = p.next_wake();
            if next < p.armed {
                p.armed = next;
                self.timers.push(Reverse((next, id)));
            }
        }
    }

    fn reconcile(&mut self, set: &[Target], now: Instant) {
        let (removed, added) = diff(self.targets.keys(), set);
        for t in removed {
            for id in self.targets.remove(&t).unwrap_or_default() {
                // Dropping the probe closes its TCP socket, which leaves
                // the epoll set by itself.
                if let Some(p) = self.probes.remove(&id) {
                    self.trains.release(p.train_slot);
                }
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
        // Not to a Service address: nothing behind it answers the echo.
        if s.icmp.enabled && self.icmp.is_some() && t.path.probed_with_icmp() {
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
            let (train_slot, phase) = self.trains.take(periodic.interval, random_below);
            let series = self.ctx.metrics.latency(protocol, t.path, &t.peer.node);
            let stream = Stream::new(
                protocol,
                t.path,
                peer_node.clone(),
                // A place in its interval's train: one send per
                // TRAIN_SPACING, never two at once (see schedule::train).
                Periodic::aligned(self.epoch, phase, periodic.interval, now),
                periodic.timeout,
                s.rtt_min_window,
            );
            let id = stream.id;
            let mut probe = Probe {
                stream,
                dest,
                series,
                clock: ClockHandle::Unresolved,
                peer: peer.clone(),
                peer_node: peer_node.clone(),
                armed: now,
                registered: None,
                train_slot,
            };
            probe.armed = probe.next_wake();
            self.timers.push(Reverse((probe.armed, id)));
            ids.push(id);
            self.probes.insert(id, probe);
        }
        ids
    }

    fn build_poll_set(&mut self) {
        self.fds.clear();
        self.slots.clear();
        if let Some(u) = &self.udp {
            self.fds.push(PollFd::new(u.as_fd(), READABLE));
            self.slots.push(Slot::Udp);
        }
        if let Some(i) = &self.icmp {
            self.fds.push(PollFd::new(i.sock.as_fd(), READABLE));
            self.slots.push(Slot::Icmp);
        }
        self.fds.push(PollFd::new(self.tcp.as_fd(), READABLE));
        self.slots.push(Slot::Tcp);
        self.waits.clear();
        self.waits.push(PollFd::new(self.news.as_fd(), READABLE));
        self.waits.push(PollFd::new(self.alarm.as_fd(), READABLE));
        if let Some(i) = self.icmp.as_ref().filter(|i| !i.stamped) {
            self.waits.push(PollFd::new(i.sock.as_fd(), READABLE));
        }
    }

    fn tcp_ready(&mut self, id: u64, revents: i16, now: Instant) {
        let Some(p) = self.probes.get_mut(&id) else {
            return;
        };
        if let Dest::Tcp(c) = &mut p.dest {
            c.ready(revents, now, &mut self.tcp_events);
        }
        let (metrics, guard, hook) = (&self.ctx.metrics, &*self.ctx.guard, self.hook.as_ref());
        for ev in self.tcp_events.drain(..) {
            book_tcp_event(p, ev, metrics, hook, guard);
        }
        sync_interest(&self.tcp, p, id);
        self.rearm_if_earlier(id);
    }
}

/// Poll flags from epoll events (the TCP connection speaks poll's).
fn poll_flags(events: u32) -> i16 {
    let mut f = 0;
    if events & epoll::IN != 0 {
        f |= READABLE;
    }
    if events & epoll::OUT != 0 {
        f |= WRITABLE;
    }
    if events & epoll::ERR_HUP != 0 {
        f |= FAILED;
    }
    f
}

fn epoll_events(poll: i16) -> u32 {
    let mut e = 0;
    if poll & READABLE != 0 {
        e |= epoll::IN;
    }
    if poll & WRITABLE != 0 {
        e |= epoll::OUT;
    }
    e
}

/// Brings the epoll set in line with what `p`'s TCP connection wants. A
/// closed socket has left the set by itself, so nothing is ever deleted
/// (deleting by number could hit a newer socket that reused it).
fn sync_interest(set: &Epoll, p: &mut Probe, id: u64) {
    let now = p.interest();
    if now == p.registered {
        return;
    }
    if let Dest::Tcp(c) = &p.dest {
        if let Some((fd, events)) = c.interest() {
            let ev = epoll_events(events);
            let same_fd = p.registered.is_some_and(|(old, _)| old == fd.as_raw_fd());
            let r = if same_fd {
                // Same socket, new interest; if it was closed and its
                // number reused meanwhile, it is not in the set: add it.
                set.modify(fd, ev, id).or_else(|_| set.add(fd, ev, id))
            } else {
                set.add(fd, ev, id).or_else(|_| set.modify(fd, ev, id))
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "Cannot watch a TCP probe connection");
            }
        }
    }
    p.registered = now;
}

/// Sends `p`'s probe if its deadline has come.
#[allow(clippy::too_many_arguments)]
fn fire(
    p: &mut Probe,
    now: Instant,
    epoch: Instant,
    udp: &Option<Socket>,
    icmp: &Option<IcmpSocket>,
    tx: &mut Vec<u8>,
    metrics: &AgentMetrics,
    hook: Option<&SampleHook>,
    guard: &dyn SampleGuard,
) {
    let Some(fire) = p.stream.schedule.fire(now) else {
        return;
    };
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
    hdr.tx_mono_ns = u64::try_from(stamp.mono.duration_since(epoch).as_nanos()).unwrap_or(0);
    hdr.tx_real_ns = stamp.real_ns;
    if hdr.encode_request(&mut msg).is_none() {
        return;
    }
    let result = match &mut p.dest {
        Dest::Udp(to) => match udp {
            Some(u) => u.send_to(&msg, &SockAddr::from(*to)).map(|_| ()),
            None => return,
        },
        Dest::Icmp(to) => match icmp {
            Some(i) => {
                // The ICMP seq is 16 bits; the payload carries the full one.
                icmp::build_echo_request(i.ident, seq as u16, &msg, tx);
                let to = SockAddr::from(SocketAddrV4::new(*to, 0));
                i.sock.send_to(tx, &to).map(|_| ())
            }
            None => return,
        },
        Dest::Tcp(c) => match c.send(&msg, now) {
            Ok(()) => Ok(()),
            Err(SendError::NotConnected) => return,
            Err(SendError::Failed(e)) => Err(e),
        },
    };
    // Late, unless the burst guard keeps this probe out of every statistic
    // (a burst of this node or the peer's, whose own load may delay the
    // send): a late send only matters for the samples it biases. Judged
    // after the send, so the guard's work is not in the measured RTT.
    if fire.late
        && guard
            .exclude(&p.peer_node, stamp.real_ns, stamp.real_ns)
            .is_none()
    {
        metrics.send_late(p.stream.protocol);
    }
    match result {
        Ok(()) => p.book(metrics, hook, guard, |s, g, sink| {
            s.sent(seq, stamp, g, sink)
        }),
        Err(e) => {
            tracing::debug!(error = %e, protocol = %p.stream.protocol, "Probe send failed");
            p.book(metrics, hook, guard, |s, g, sink| {
                s.send_failed(stamp, g, sink)
            });
        }
    }
}

fn open_icmp(ctx: &ProbeContext) -> Option<IcmpSocket> {
    let (sock, errors) = crate::sys::icmp::open_icmp_v4();
    ctx.metrics.set_icmp_mode(match &sock {
        Some((IcmpSocketKind::Dgram, _)) => IcmpMode::Dgram,
        Some((IcmpSocketKind::Raw, _)) => IcmpMode::Raw,
        None => IcmpMode::Unavailable,
    });
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let Some((kind, sock)) = sock else {
        tracing::warn!(
            ?errors,
            "No ICMP socket (neither unprivileged DGRAM nor RAW); ICMP probes are off"
        );
        return None;
    };
    tracing::info!(?kind, "ICMP echo socket opened");
    let stamped = match enable_rx_timestamps(&sock) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "No kernel timestamps on the ICMP socket; using user-space time");
            false
        }
    };
    if let IpAddr::V4(ip) = ctx.bind {
        if !ip.is_unspecified() {
            if let Err(e) = sock.bind(&SockAddr::from(SocketAddrV4::new(ip, 0))) {
                tracing::warn!(error = %e, %ip, "Cannot bind the ICMP socket; the kernel picks the source");
            }
        }
    }
    Some(IcmpSocket {
        sock,
        kind,
        ident: rand::random(),
        stamped,
    })
}

fn same_family(sock: &Socket, addr: IpAddr) -> bool {
    sock.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .is_some_and(|a| a.is_ipv4() == addr.is_ipv4())
}
