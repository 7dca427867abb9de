//! Answering a datagram from the address it was sent to (`IP_PKTINFO`,
//! `IPV6_RECVPKTINFO`). A UDP socket bound to the wildcard address lets
//! the kernel choose a reply's source by route: on a multi-homed node (a
//! pod bridge, an overlay device, the node's own interface) a reply to a
//! pod can leave from the bridge's or the overlay device's address instead
//! of the node address the pod asked. A prober with a connected socket
//! (the path MTU search) then never sees it, and a stateful firewall would
//! drop it; so the responder reads each request's destination and sends
//! the reply from there.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};

/// Asks the kernel to report every datagram's destination address on
/// `sock` (IPv4 or IPv6, as it is bound).
pub fn enable_destination_info(sock: &UdpSocket) -> io::Result<()> {
    match sock.local_addr()? {
        SocketAddr::V4(_) => setsockopt(sock, sockopt::Ipv4PacketInfo, &true),
        SocketAddr::V6(_) => setsockopt(sock, sockopt::Ipv6RecvPacketInfo, &true),
    }
    .map_err(io::Error::from)
}

/// Reusable control-message space for [`recv_with_destination`].
#[derive(Debug, Clone)]
pub struct DestinationBuf(Vec<u8>);

impl Default for DestinationBuf {
    fn default() -> Self {
        // in6_pktinfo is the larger of the two.
        Self(nix::cmsg_space!(libc::in6_pktinfo))
    }
}

/// One received datagram and where it was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes written into the buffer (the datagram is cut at its length).
    pub len: usize,
    /// Its source.
    pub from: SocketAddr,
    /// The local address it was sent to, if the kernel said.
    pub to: Option<IpAddr>,
}

/// Receives one datagram (blocking, as the socket is set) with its
/// destination address.
pub fn recv_with_destination(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut DestinationBuf,
) -> io::Result<Datagram> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg.0.as_mut_slice()),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut to = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        i.ipi_spec_dst.s_addr,
                    ))));
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    to = Some(IpAddr::from(i.ipi6_addr.s6_addr));
                }
                _ => {}
            }
        }
    }
    let from = msg
        .address
        .as_ref()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(*v4))
                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6)))
        })
        .ok_or_else(|| io::Error::other("datagram without an IP source address"))?;
    Ok(Datagram {
        len: msg.bytes,
        from,
        to,
    })
}

/// Sends `msg` to `to`, from local address `from` when given (the address
/// the request came to) and of the socket's family; otherwise as
/// `send_to` does.
pub fn send_from(
    sock: &UdpSocket,
    msg: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    let iov = [IoSlice::new(msg)];
    let dest = SockaddrStorage::from(to);
    let fd = sock.as_raw_fd();
    let flags = MsgFlags::empty();
    let sent = match (from, to) {
        (Some(IpAddr::V4(a)), SocketAddr::V4(_)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(a).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&info)],
                flags,
                Some(&dest),
            )
        }
        (Some(IpAddr::V6(a)), SocketAddr::V6(_)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                ipi6_ifindex: 0,
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&info)],
                flags,
                Some(&dest),
            )
        }
        _ => sendmsg(fd, &iov, &[], flags, Some(&dest)),
    };
    sent.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wildcard socket reports the address each datagram was sent to,
    /// and a reply sent from it arrives from that address: 127.0.0.2 is
    /// local on Linux's loopback, and a plain `send_to` would answer a
    /// request to it from 127.0.0.1 (the route's source towards the
    /// client), which the connected client never receives.
    #[test]
    fn replies_leave_from_the_address_asked() {
        let server = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        enable_destination_info(&server).expect("pktinfo");
        let port = server.local_addr().expect("addr").port();
        let mut buf = [0u8; 64];
        let mut cmsg = DestinationBuf::default();
        for dst in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)] {
            let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            // Connected: only a reply from `dst` is received, as the path
            // MTU search's socket does.
            client.connect((dst, port)).expect("connect");
            client.send(b"ping").expect("send");
            let d = recv_with_destination(&server, &mut buf, &mut cmsg).expect("recv");
            assert_eq!(&buf[..d.len], b"ping");
            assert_eq!(d.to, Some(IpAddr::V4(dst)));
            assert_eq!(d.from, client.local_addr().expect("addr"));
            send_from(&server, b"pong", d.from, d.to).expect("send");
            let mut got = [0u8; 8];
            let n = client.recv(&mut got).expect("reply from the address asked");
            assert_eq!(&got[..n], b"pong");
        }
    }

    #[test]
    fn without_a_source_it_sends_as_send_to() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let to = client.local_addr().expect("addr");
        send_from(&server, b"x", to, None).expect("send");
        let mut got = [0u8; 4];
        let (n, from) = client.recv_from(&mut got).expect("recv");
        assert_eq!((n, from), (1, server.local_addr().expect("addr")));
    }
}
