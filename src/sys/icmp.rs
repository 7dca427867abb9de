//! Opening an ICMPv4 echo socket: unprivileged datagram ICMP first
//! (`net.ipv4.ping_group_range`), raw (CAP_NET_RAW) as fallback.

use socket2::{Domain, Protocol, Socket, Type};

/// The kind of ICMP socket opened: they differ in what a read returns and
/// in who picks the echo identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpSocketKind {
    /// Unprivileged datagram socket: reads return the ICMP message, and the
    /// kernel sets the echo identifier (the socket's "port").
    Dgram,
    /// Raw socket: reads return the IPv4 header too, every ICMP packet of
    /// the host arrives, and the identifier is ours to pick and check.
    Raw,
}

/// Opens the best ICMPv4 socket available, non-blocking: its kind and the
/// socket, or `None` with the two errors for the log.
pub fn open_icmp_v4() -> (Option<(IcmpSocketKind, Socket)>, Vec<std::io::Error>) {
    let mut errors = Vec::new();
    for (kind, ty) in [
        (IcmpSocketKind::Dgram, Type::DGRAM),
        (IcmpSocketKind::Raw, Type::RAW),
    ] {
        match Socket::new(Domain::IPV4, ty, Some(Protocol::ICMPV4)) {
            Ok(s) => match s.set_nonblocking(true) {
                Ok(()) => return (Some((kind, s)), errors),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e),
        }
    }
    (None, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_kind_consistent_with_the_errors() {
        let (sock, errors) = open_icmp_v4();
        match sock {
            Some((IcmpSocketKind::Dgram, _)) => assert!(errors.is_empty()),
            Some((IcmpSocketKind::Raw, _)) => assert_eq!(errors.len(), 1),
            None => assert_eq!(errors.len(), 2),
        }
    }
}
