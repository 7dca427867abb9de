//! A wake-up descriptor (`eventfd(2)`): another thread notifies it, and a
//! thread blocked in `ppoll` on it wakes at once, so it need not wake on a
//! timer to look for news.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A non-blocking eventfd counter.
#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    /// A new descriptor (close-on-exec, non-blocking), not signalled.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative return is an error,
        // anything else is a new descriptor we now own.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Makes the descriptor readable until [`Wake::clear`].
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: the pointer and length describe `one`, which outlives the
        // call. A full counter (EAGAIN) is still readable: nothing lost.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Consumes every notification so far.
    pub fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: the pointer and length describe `n`, exclusively borrowed
        // for the call; non-blocking, so an empty counter returns EAGAIN.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut n).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::poll::{ppoll, PollFd, READABLE};
    use std::time::Duration;

    #[test]
    fn notify_wakes_a_poll_until_cleared() {
        let w = Wake::new().expect("eventfd");
        let quiet = |w: &Wake| {
            let mut fds = [PollFd::new(w.as_fd(), READABLE)];
            ppoll(&mut fds, Duration::ZERO).expect("ppoll") == 0
        };
        assert!(quiet(&w), "fresh descriptor is not readable");
        w.notify();
        w.notify();
        assert!(!quiet(&w), "notified descriptor is readable");
        w.clear();
        assert!(quiet(&w), "cleared descriptor is quiet again");
        w.clear();
        assert!(quiet(&w), "clearing an empty counter is harmless");
    }
}
