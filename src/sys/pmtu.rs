//! Path MTU socket options that socket2 does not expose: `IP_MTU_DISCOVER`
//! (and its IPv6 twin) to send with DF while ignoring the route's cached
//! path MTU, and `IP_MTU` to read the MTU the kernel would use for a
//! connected socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Address family of a socket: the options live at different levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `IPPROTO_IP` options.
    V4,
    /// `IPPROTO_IPV6` options.
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: &std::net::SocketAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Path MTU discovery modes (`IP_PMTUDISC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmtuDisc {
    /// Never set DF; fragment locally.
    Dont,
    /// Per-route default: DF when the route allows.
    Want,
    /// Always DF, sizes above the cached path MTU fail with `EMSGSIZE`.
    Do,
    /// Always DF and ignore the cached path MTU: what a prober needs to
    /// measure the path itself rather than read the kernel's belief.
    Probe,
}

impl PmtuDisc {
    // The IPv4 and IPv6 constants have the same values (0..=3); the match
    // keeps that assumption explicit instead of casting.
    fn to_raw(self, family: Family) -> libc::c_int {
        match (family, self) {
            (Family::V4, PmtuDisc::Dont) => libc::IP_PMTUDISC_DONT,
            (Family::V4, PmtuDisc::Want) => libc::IP_PMTUDISC_WANT,
            (Family::V4, PmtuDisc::Do) => libc::IP_PMTUDISC_DO,
            (Family::V4, PmtuDisc::Probe) => libc::IP_PMTUDISC_PROBE,
            (Family::V6, PmtuDisc::Dont) => libc::IPV6_PMTUDISC_DONT,
            (Family::V6, PmtuDisc::Want) => libc::IPV6_PMTUDISC_WANT,
            (Family::V6, PmtuDisc::Do) => libc::IPV6_PMTUDISC_DO,
            (Family::V6, PmtuDisc::Probe) => libc::IPV6_PMTUDISC_PROBE,
        }
    }

    fn from_raw(family: Family, v: libc::c_int) -> Option<Self> {
        [
            PmtuDisc::Dont,
            PmtuDisc::Want,
            PmtuDisc::Do,
            PmtuDisc::Probe,
        ]
        .into_iter()
        .find(|m| m.to_raw(family) == v)
    }
}

fn levels(family: Family) -> (libc::c_int, libc::c_int, libc::c_int) {
    match family {
        Family::V4 => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_MTU),
        Family::V6 => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_MTU),
    }
}

fn set_int(
    sock: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    let fd = sock.as_fd().as_raw_fd();
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen overflow"))?;
    // SAFETY: `fd` is a valid open descriptor borrowed for the call; the
    // option value points to a live c_int and `len` is its exact size.
    let rc = unsafe { libc::setsockopt(fd, level, name, std::ptr::from_ref(&v).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(sock: &impl AsFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let fd = sock.as_fd().as_raw_fd();
    let mut v: libc::c_int = 0;
    let size = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen overflow"))?;
    let mut len = size;
    // SAFETY: `fd` is a valid open descriptor borrowed for the call; `v` is
    // a writable c_int and `len` holds its size, so the kernel writes at
    // most `len` bytes into it.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, std::ptr::from_mut(&mut v).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len != size {
        return Err(io::Error::other(format!(
            "getsockopt returned {len} bytes, expected {size}"
        )));
    }
    Ok(v)
}

/// Sets the path MTU discovery mode of a datagram socket.
pub fn set_mtu_discover(sock: &impl AsFd, family: Family, mode: PmtuDisc) -> io::Result<()> {
    let (level, opt, _) = levels(family);
    set_int(sock, level, opt, mode.to_raw(family))
}

/// Reads the path MTU discovery mode of a socket.
pub fn mtu_discover(sock: &impl AsFd, family: Family) -> io::Result<PmtuDisc> {
    let (level, opt, _) = levels(family);
    let v = get_int(sock, level, opt)?;
    PmtuDisc::from_raw(family, v)
        .ok_or_else(|| io::Error::other(format!("unknown IP_MTU_DISCOVER value {v}")))
}

/// The MTU the kernel uses for a **connected** socket's route (`IP_MTU`):
/// the interface MTU, or a smaller cached path MTU. Fails with `ENOTCONN`
/// on an unconnected socket.
pub fn ip_mtu(sock: &impl AsFd, family: Family) -> io::Result<u32> {
    let (level, _, opt) = levels(family);
    let v = get_int(sock, level, opt)?;
    u32::try_from(v).map_err(|_| io::Error::other(format!("negative IP_MTU {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn probe_mode_round_trips_and_loopback_mtu_is_read() {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        set_mtu_discover(&s, Family::V4, PmtuDisc::Probe).expect("set");
        assert_eq!(mtu_discover(&s, Family::V4).expect("get"), PmtuDisc::Probe);
        set_mtu_discover(&s, Family::V4, PmtuDisc::Dont).expect("set");
        assert_eq!(mtu_discover(&s, Family::V4).expect("get"), PmtuDisc::Dont);
        // IP_MTU needs a route: unconnected sockets fail.
        assert!(ip_mtu(&s, Family::V4).is_err());
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.connect(peer.local_addr().expect("addr"))
            .expect("connect");
        let mtu = ip_mtu(&s, Family::V4).expect("mtu");
        // Loopback MTU is 65536 by default; anything sane is >= 1280.
        assert!(mtu >= 1280, "loopback mtu {mtu}");
    }

    #[test]
    fn wrong_level_is_an_error_not_garbage() {
        // An IPv6 option on an IPv4 socket is rejected by the kernel.
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(set_mtu_discover(&s, Family::V6, PmtuDisc::Probe).is_err());
    }
}
