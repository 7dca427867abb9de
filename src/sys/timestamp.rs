//! Kernel receive timestamps (SO_TIMESTAMPNS, CLOCK_REALTIME) on datagram
//! and TCP sockets: the arrival time excludes the receiving thread's
//! wake-up. On TCP the stamp is that of the last segment the read consumed.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage,
};
use nix::sys::time::TimeSpec;

/// Asks the kernel to stamp every datagram received on `fd`.
pub fn enable_rx_timestamps<F: AsFd>(fd: &F) -> io::Result<()> {
    setsockopt(fd, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// One received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// Whether the datagram was longer than the buffer (tail dropped).
    pub truncated: bool,
    /// Source address (IPv4 or IPv6), if the kernel gave one.
    pub from: Option<SocketAddr>,
    /// Kernel receive time, ns since the epoch, if stamped.
    pub kernel_rx_ns: Option<u64>,
}

/// Reusable control-message space for [`recv_timestamped`].
#[derive(Debug, Clone)]
pub struct ControlBuf(Vec<u8>);

impl Default for ControlBuf {
    fn default() -> Self {
        Self(nix::cmsg_space!(TimeSpec))
    }
}

/// Receives one datagram (or, on a stream socket, up to `buf.len()` bytes)
/// from `fd` without blocking (MSG_DONTWAIT), with its kernel timestamp.
/// `WouldBlock` means the queue is empty.
pub fn recv_timestamped(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    cmsg: &mut ControlBuf,
) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        fd.as_raw_fd(),
        &mut iov,
        Some(cmsg.0.as_mut_slice()),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut kernel_rx_ns = None;
    // A truncated control buffer only loses the timestamp, not the datagram.
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                kernel_rx_ns = timespec_ns(&ts);
            }
        }
    }
    let from = msg.address.as_ref().and_then(to_std);
    Ok(Received {
        len: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        from,
        kernel_rx_ns,
    })
}

fn timespec_ns(ts: &TimeSpec) -> Option<u64> {
    let s = u64::try_from(ts.tv_sec()).ok()?;
    let ns = u64::try_from(ts.tv_nsec()).ok()?;
    s.checked_mul(1_000_000_000)?.checked_add(ns)
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::from(*v6));
    }
    // Only reached for families we never open.
    let _ = a.family();
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::clock::realtime_ns;
    use std::net::UdpSocket;

    #[test]
    fn datagrams_carry_realtime_kernel_stamps() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(&rx).expect("SO_TIMESTAMPNS");
        let mut cmsg = ControlBuf::default();
        let mut buf = [0u8; 16];
        let e = recv_timestamped(rx.as_fd(), &mut buf, &mut cmsg).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        let before = realtime_ns();
        tx.send_to(b"hello", rx.local_addr().expect("addr"))
            .expect("send");
        // Loopback delivery is synchronous with send, so one read suffices.
        let r = recv_timestamped(rx.as_fd(), &mut buf, &mut cmsg).expect("recv");
        let after = realtime_ns();
        assert_eq!(r.len, 5);
        assert!(!r.truncated);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(r.from, Some(tx.local_addr().expect("addr")));
        let ts = r.kernel_rx_ns.expect("stamped");
        assert!(before <= ts && ts <= after, "{before} <= {ts} <= {after}");

        tx.send_to(&[7u8; 40], rx.local_addr().expect("addr"))
            .expect("send");
        let r = recv_timestamped(rx.as_fd(), &mut buf, &mut cmsg).expect("recv");
        assert!(r.truncated);
        assert_eq!(r.len, 16);
    }

    /// Sends one datagram, reads it `late` later; true when its stamp is
    /// the arrival's (taken before the send returned), not the read's.
    fn stamped_at_arrival(
        rx: &UdpSocket,
        tx: &UdpSocket,
        cmsg: &mut ControlBuf,
        late: std::time::Duration,
    ) -> bool {
        let mut buf = [0u8; 16];
        tx.send_to(b"x", rx.local_addr().expect("addr"))
            .expect("send");
        let sent = realtime_ns();
        std::thread::sleep(late);
        let r = recv_timestamped(rx.as_fd(), &mut buf, cmsg).expect("recv");
        r.kernel_rx_ns.expect("stamped") <= sent
    }

    #[test]
    fn a_late_read_keeps_the_arrival_stamp() {
        // The latency engine reads replies at its next wake-up, not when
        // they arrive: the stamp must be the arrival's, not the read's.
        // The kernel stamps arriving packets only while some socket asks
        // for stamps, and turns that on from a work queue after the first
        // one does (until then a read is stamped when it happens): the
        // engine's sockets ask for their whole life, so wait for it here.
        use std::time::{Duration, Instant};
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(&rx).expect("SO_TIMESTAMPNS");
        let mut cmsg = ControlBuf::default();
        let on_by = Instant::now() + Duration::from_secs(2);
        while !stamped_at_arrival(&rx, &tx, &mut cmsg, Duration::from_millis(2)) {
            assert!(
                Instant::now() < on_by,
                "arrival stamps never began while a socket asked for them"
            );
        }
        assert!(
            stamped_at_arrival(&rx, &tx, &mut cmsg, Duration::from_millis(50)),
            "stamped at the read 50 ms later, not at arrival"
        );
    }

    #[test]
    fn tcp_reads_carry_the_segment_stamp() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let rx =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut tx, _) = listener.accept().expect("accept");
        enable_rx_timestamps(&rx).expect("SO_TIMESTAMPNS");
        let mut cmsg = ControlBuf::default();
        let mut buf = [0u8; 4];
        let before = realtime_ns();
        tx.write_all(b"abcdef").expect("write");
        // Loopback TCP delivers within the write; poll briefly all the same.
        let r = (0..1000)
            .find_map(
                |_| match recv_timestamped(rx.as_fd(), &mut buf, &mut cmsg) {
                    Ok(r) => Some(r),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        None
                    }
                    Err(e) => panic!("recv: {e}"),
                },
            )
            .expect("data within 1 s");
        let after = realtime_ns();
        // A read stops where the caller's buffer ends, mid-segment.
        assert_eq!((r.len, &buf[..]), (4, &b"abcd"[..]));
        let ts = r.kernel_rx_ns.expect("TCP reads are stamped");
        assert!(before <= ts && ts <= after, "{before} <= {ts} <= {after}");
    }
}
