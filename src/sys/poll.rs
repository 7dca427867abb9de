//! `ppoll(2)` with a nanosecond timeout: `poll` and `epoll_wait` only take
//! whole milliseconds, too coarse for probe deadlines.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

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
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: PollFd is repr(transparent) over libc::pollfd, so the pointer
    // and length describe `fds.len()` valid, exclusively borrowed pollfd
    // structs the kernel may write `revents` into; `ts` outlives the call;
    // a null sigmask means "do not change the signal mask". A descriptor
    // closed meanwhile only yields POLLNVAL, never memory unsafety.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            n,
            &ts,
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
}
