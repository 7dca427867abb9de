//! Opening an ICMPv4 echo socket: unprivileged datagram ICMP first
//! (`net.ipv4.ping_group_range`), raw (CAP_NET_RAW) as fallback.

use socket2::{Domain, Protocol, Socket, Type};

use crate::labels::IcmpMode;

/// Opens the best ICMPv4 socket available, non-blocking. Returns the mode
/// and the socket, or `Unavailable` with the two errors for the log.
pub fn open_icmp_v4() -> (IcmpMode, Option<Socket>, Vec<std::io::Error>) {
    let mut errors = Vec::new();
    for (mode, ty) in [(IcmpMode::Dgram, Type::DGRAM), (IcmpMode::Raw, Type::RAW)] {
        match Socket::new(Domain::IPV4, ty, Some(Protocol::ICMPV4)) {
            Ok(s) => match s.set_nonblocking(true) {
                Ok(()) => return (mode, Some(s), errors),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e),
        }
    }
    (IcmpMode::Unavailable, None, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_mode_consistent_with_the_socket() {
        let (mode, sock, errors) = open_icmp_v4();
        match mode {
            IcmpMode::Dgram => assert!(sock.is_some() && errors.is_empty()),
            IcmpMode::Raw => assert!(sock.is_some() && errors.len() == 1),
            IcmpMode::Unavailable => assert!(sock.is_none() && errors.len() == 2),
        }
    }
}
