//! `ppoll(2)` with a nanosecond timeout: `poll` and `epoll_wait` only take
//! whole milliseconds, too coarse for probe deadlines.
//!
//! A timeout alone is not kept to the nanosecond: for a thread that is not
//! realtime the kernel lets a poll timeout expire up to 0.1 % of its length
//! late (`select_estimate_accuracy`: 1 ms after a 1 s wait), whatever the
//! thread's timer slack. [`ppoll_exact`] ends the wait with an [`Alarm`]
//! (a timerfd, whose timer has no such slack) instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// Readable (POLLIN).
pub const READABLE: i16 = libc::POLLIN;
/// Writable (POLLOUT).
pub const WRITABLE: i16 = libc::POLLOUT;
/// Error or hang-up (POLLERR | POLLHUP | POLLNVAL), reported whatever was asked.
pub const FAILED: i16 = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;

/// One descriptor to watch and, after [`ppoll`], what happened to it.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    /// Watches `fd` for `events` ([`READABLE`], [`WRITABLE`]).
    pub fn new(fd: BorrowedFd<'_>, events: i16) -> Self {
        Self(libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        })
    }

    /// The events that occurred.
    pub fn revents(&self) -> i16 {
        self.0.revents
    }

    /// Whether any of `mask` occurred.
    pub fn has(&self, mask: i16) -> bool {
        self.0.revents & mask != 0
    }
}

impl std::fmt::Debug for PollFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollFd")
            .field("fd", &self.0.fd)
            .field("events", &self.0.events)
            .field("revents", &self.0.revents)
            .finish()
    }
}

/// Waits until one of `fds` is ready or `timeout` passes. Returns how many
/// descriptors have events; 0 on timeout or when a signal interrupted the
/// wait (the caller loops anyway).
pub fn ppoll(fds: &mut [PollFd], timeout: Duration) -> io::Result<usize> {
    ppoll_for(fds, Some(timeout))
}

/// A one-shot monotonic timer descriptor that becomes readable when it
/// expires, on time: the kernel starts a timerfd's timer without slack.
#[derive(Debug)]
pub struct Alarm(TimerFd);

impl Alarm {
    /// A disarmed alarm.
    pub fn new() -> io::Result<Alarm> {
        TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map(Alarm)
        .map_err(io::Error::from)
    }

    /// Arms it to expire `after` from now (at least 1 ns: a zero
    /// expiration would disarm it); re-arming clears an earlier expiry.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        self.0
            .set(
                Expiration::OneShot(TimeSpec::from_duration(after)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)
    }
}

impl AsFd for Alarm {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// [`ppoll`] that ends within microseconds of `timeout` also on a thread
/// that is not realtime: `alarm`, which `fds` must watch for
/// [`READABLE`], is armed for `timeout` and the poll itself has none. A
/// zero `timeout` polls once without waiting. When arming fails the plain
/// timeout is used.
pub fn ppoll_exact(fds: &mut [PollFd], timeout: Duration, alarm: &Alarm) -> io::Result<usize> {
    if timeout.is_zero() || alarm.arm(timeout).is_err() {
        return ppoll(fds, timeout);
    }
    ppoll_for(fds, None)
}

/// `ppoll` with `timeout`, or none (wait for readiness only).
fn ppoll_for(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos()),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: PollFd is repr(transparent) over libc::pollfd, so the pointer
    // and length describe `fds.len()` valid, exclusively borrowed pollfd
    // structs the kernel may write `revents` into; `ts` outlives the call
    // (a null timeout means "no timeout"); a null sigmask means "do not
    // change the signal mask". A descriptor closed meanwhile only yields
    // POLLNVAL, never memory unsafety.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            n,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(usize::try_from(r).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Instant;

    #[test]
    fn times_out_and_reports_readiness() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut fds = [PollFd::new(a.as_fd(), READABLE)];
        let t = Instant::now();
        assert_eq!(ppoll(&mut fds, Duration::from_millis(5)).expect("ppoll"), 0);
        assert!(
            t.elapsed() >= Duration::from_millis(5),
            "waited the timeout"
        );
        assert!(!fds[0].has(READABLE));

        b.send_to(b"x", a.local_addr().expect("addr"))
            .expect("send");
        let mut fds = [
            PollFd::new(a.as_fd(), READABLE),
            PollFd::new(b.as_fd(), WRITABLE),
        ];
        // Generous timeout: returns as soon as the datagram is queued.
        let n = ppoll(&mut fds, Duration::from_secs(5)).expect("ppoll");
        assert_eq!(n, 2);
        assert!(fds[0].has(READABLE));
        assert!(fds[1].has(WRITABLE));
        assert!(!fds[0].has(FAILED));
        assert!(format!("{:?}", fds[0]).contains("revents"));
    }

    #[test]
    fn an_exact_wait_ends_by_its_alarm_or_earlier_by_readiness() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let alarm = Alarm::new().expect("timerfd");
        let mut fds = [
            PollFd::new(a.as_fd(), READABLE),
            PollFd::new(alarm.as_fd(), READABLE),
        ];
        let t = Instant::now();
        let n = ppoll_exact(&mut fds, Duration::from_millis(20), &alarm).expect("ppoll");
        assert!(
            t.elapsed() >= Duration::from_millis(20),
            "waited the timeout"
        );
        assert_eq!(n, 1);
        assert!(fds[1].has(READABLE) && !fds[0].has(READABLE));
        // Re-arming clears the expiry: a datagram ends the next wait first.
        a.send_to(b"x", a.local_addr().expect("addr"))
            .expect("send");
        let n = ppoll_exact(&mut fds, Duration::from_secs(5), &alarm).expect("ppoll");
        assert_eq!(n, 1);
        assert!(fds[0].has(READABLE) && !fds[1].has(READABLE));
        // A zero timeout only looks.
        let t = Instant::now();
        ppoll_exact(&mut fds, Duration::ZERO, &alarm).expect("ppoll");
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
