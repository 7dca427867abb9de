//! A minimal `epoll(7)` set. The latency engine keeps its many TCP probe
//! connections in one, and puts the epoll descriptor itself into its
//! `ppoll` set (an epoll fd is readable while any member is ready): the
//! wait keeps `ppoll`'s nanosecond timeout, and each wake-up costs the
//! ready descriptors, not all of them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Readable (EPOLLIN).
pub const IN: u32 = libc::EPOLLIN as u32;
/// Writable (EPOLLOUT).
pub const OUT: u32 = libc::EPOLLOUT as u32;
/// Error or hang-up (EPOLLERR | EPOLLHUP), reported whatever was asked.
pub const ERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new, empty set (close-on-exec) reporting up to `batch` descriptors
    /// per [`Epoll::ready`] call.
    pub fn new(batch: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a negative return is an
        // error, anything else is a new descriptor we now own.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; batch.max(1)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event that outlives the call (the
        // kernel copies it); a bad `fd` is reported as an error.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for `events` ([`IN`], [`OUT`]), reporting `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), events, token)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), events, token)
    }

    /// Stops watching `fd` (closing a descriptor also removes it).
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0)
    }

    /// The ready members right now (no waiting), as (token, events), into
    /// `out` (cleared first).
    pub fn ready(&mut self, out: &mut Vec<(u64, u32)>) -> io::Result<()> {
        out.clear();
        let max = libc::c_int::try_from(self.events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the pointer and `max` describe `self.events`, which is
        // exclusively borrowed and which the kernel fills with at most
        // `max` entries; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), max, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        let n = usize::try_from(n).unwrap_or(0);
        out.extend(self.events.iter().take(n).map(|e| (e.u64, e.events)));
        Ok(())
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::poll::{ppoll, PollFd, READABLE};
    use std::net::UdpSocket;
    use std::time::Duration;

    #[test]
    fn reports_ready_members_through_ppoll() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut ep = Epoll::new(4).expect("epoll");
        ep.add(a.as_fd(), IN, 7).expect("add a");
        ep.add(b.as_fd(), IN, 8).expect("add b");
        let mut out = Vec::new();
        ep.ready(&mut out).expect("ready");
        assert!(out.is_empty());
        let mut fds = [PollFd::new(ep.as_fd(), READABLE)];
        assert_eq!(ppoll(&mut fds, Duration::from_millis(1)).expect("ppoll"), 0);

        b.send_to(b"x", a.local_addr().expect("addr"))
            .expect("send");
        let mut fds = [PollFd::new(ep.as_fd(), READABLE)];
        assert_eq!(ppoll(&mut fds, Duration::from_secs(5)).expect("ppoll"), 1);
        ep.ready(&mut out).expect("ready");
        assert_eq!(out, vec![(7, IN)]);

        ep.modify(a.as_fd(), OUT, 9).expect("modify");
        ep.ready(&mut out).expect("ready");
        assert_eq!(out, vec![(9, OUT)]);
        ep.delete(a.as_fd()).expect("delete");
        ep.ready(&mut out).expect("ready");
        assert!(out.is_empty());
    }
}
