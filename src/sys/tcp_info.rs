//! `TCP_INFO`: the kernel's view of a TCP connection, used by bandwidth
//! bursts to measure goodput from bytes the peer acknowledged rather than
//! bytes written into the socket buffer.

use std::io;
use std::mem::{offset_of, size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// The `TCP_INFO` fields kubepulse uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// Bytes acknowledged by the peer (`tcpi_bytes_acked`, RFC 4898
    /// tcpEStatsAppHCThruOctetsAcked); includes 1 for the SYN.
    pub bytes_acked: u64,
    /// Bytes received in order (`tcpi_bytes_received`, RFC 4898
    /// tcpEStatsAppHCThruOctetsReceived): counted by the kernel when they
    /// arrive, not when the application reads them.
    pub bytes_received: u64,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// Smoothed RTT.
    pub rtt: Duration,
    /// Windowed minimum RTT, when the kernel reports it (Linux >= 4.9).
    pub min_rtt: Option<Duration>,
    /// Latest delivery rate sample, bytes per second (Linux >= 4.9).
    pub delivery_rate: Option<u64>,
}

/// Reads `TCP_INFO` of a TCP socket.
///
/// Older kernels fill a shorter prefix of the struct; fields past the
/// returned length are reported as `None`, and a kernel too old to report
/// `bytes_acked` (before 4.1) is an `Unsupported` error.
pub fn tcp_info(sock: &impl AsFd) -> io::Result<TcpInfo> {
    let fd = sock.as_fd().as_raw_fd();
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let size = libc::socklen_t::try_from(size_of::<libc::tcp_info>())
        .map_err(|_| io::Error::other("tcp_info larger than socklen_t"))?;
    let mut len = size;
    // SAFETY: `fd` is a valid descriptor borrowed for the call; `info` is a
    // writable buffer of `size` bytes and `len` tells the kernel so, so it
    // writes at most that many bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer was zero-initialised and `tcp_info` is plain
    // integers, so every bit pattern (kernel-written prefix, zero rest) is
    // a valid value.
    let info = unsafe { info.assume_init() };
    let len = usize::try_from(len).unwrap_or(0);
    let has = |offset: usize, field: usize| offset + field <= len;
    if !has(offset_of!(libc::tcp_info, tcpi_bytes_received), 8) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("TCP_INFO returned {len} bytes: no tcpi_bytes_received"),
        ));
    }
    let micros = |us: u32| Duration::from_micros(u64::from(us));
    Ok(TcpInfo {
        bytes_acked: info.tcpi_bytes_acked,
        bytes_received: info.tcpi_bytes_received,
        total_retrans: info.tcpi_total_retrans,
        rtt: micros(info.tcpi_rtt),
        min_rtt: has(offset_of!(libc::tcp_info, tcpi_min_rtt), 4)
            .then(|| micros(info.tcpi_min_rtt)),
        delivery_rate: has(offset_of!(libc::tcp_info, tcpi_delivery_rate), 8)
            .then_some(info.tcpi_delivery_rate),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};

    #[test]
    fn bytes_acked_counts_delivered_data() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut s, _) = l.accept().expect("accept");
        let before = tcp_info(&c).expect("tcp_info");
        c.write_all(&[7u8; 10_000]).expect("write");
        let mut buf = vec![0u8; 10_000];
        s.read_exact(&mut buf).expect("read");
        // The data was read, so it was acked; poll until the ACK is
        // processed on our side (it is asynchronous to the reader).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let after = loop {
            let i = tcp_info(&c).expect("tcp_info");
            if i.bytes_acked >= before.bytes_acked + 10_000 || std::time::Instant::now() > deadline
            {
                break i;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(after.bytes_acked - before.bytes_acked, 10_000);
        // The receiver's kernel counted the same bytes on arrival.
        let got = tcp_info(&s).expect("tcp_info").bytes_received;
        assert_eq!(got, 10_000);
        assert_eq!(after.total_retrans, 0);
        assert!(after.min_rtt.is_some(), "kernel >= 4.9 reports min_rtt");
    }

    #[test]
    fn non_tcp_socket_is_an_error() {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(tcp_info(&u).is_err());
    }
}
