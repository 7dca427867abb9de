//! Path MTU search: binary search of the largest IP packet that crosses the
//! path with DF set and comes back as a UDP echo, RFC 4821 style, instead
//! of trusting ICMP "fragmentation needed" (overlays often drop it).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use crate::config::PmtuSettings;
use crate::proto::echo::{self, EchoHeader, Kind};
use crate::sys::pmtu::{self as sys, Family, PmtuDisc};

/// Largest IP packet: the IPv4 total length field is 16 bits. Loopback
/// reports an MTU of 65536, which no packet can use.
pub(super) const MAX_IP_PACKET: u32 = 65535;

/// How many times a search gives its smallest failed size another chance.
const MAX_RECHECKS: u32 = 2;

/// IP plus UDP header bytes in front of the echo payload.
fn overhead(family: Family) -> u32 {
    match family {
        Family::V4 => 20 + 8,
        Family::V6 => 40 + 8,
    }
}

/// The outcome of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PathMtu {
    /// Largest IP packet size delivered and echoed.
    pub path_mtu: u32,
    /// MTU of the route's interface, capped at [`MAX_IP_PACKET`].
    pub interface_mtu: u32,
}

/// Why a search produced no path MTU.
#[derive(Debug, thiserror::Error)]
pub(super) enum PmtuError {
    /// The probe socket could not be set up.
    #[error("socket setup: {0}")]
    Socket(#[source] io::Error),
    /// A send failed for a reason other than the size.
    #[error("send: {0}")]
    Send(#[source] io::Error),
    /// Not even the smallest size got an echo: the peer is down or the path
    /// MTU is below the search range. Nothing is reported.
    #[error("no echo at the smallest size ({min} bytes; interface MTU {interface_mtu})")]
    NothingDelivered {
        /// Smallest size tried.
        min: u32,
        /// Interface MTU found.
        interface_mtu: u32,
    },
    /// Shutdown interrupted the search.
    #[error("cancelled")]
    Cancelled,
}

/// A connected DF-probing UDP socket and its echo stream state.
struct Prober {
    sock: UdpSocket,
    family: Family,
    stream: u64,
    seq: u64,
    timeout: Duration,
    tries: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Prober {
    fn open(addr: SocketAddr, bind: IpAddr, s: &PmtuSettings) -> io::Result<Self> {
        let family = Family::of(&addr);
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let local = match (bind.is_unspecified(), family) {
            (false, _) if bind.is_ipv4() == addr.is_ipv4() => bind,
            (_, Family::V4) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (_, Family::V6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        sock.bind(&SocketAddr::new(local, 0).into())?;
        sock.connect(&addr.into())?;
        // DF on every packet and no use of the route's cached PMTU: the
        // kernel neither fragments nor refuses sizes based on old ICMP.
        sys::set_mtu_discover(&sock, family, PmtuDisc::Probe)?;
        Ok(Self {
            sock: sock.into(),
            family,
            stream: rand::random(),
            seq: 0,
            timeout: s.timeout,
            tries: s.tries.max(1),
            tx: vec![0u8; echo::MAX_LEN],
            rx: vec![0u8; echo::MAX_LEN + 1],
        })
    }

    fn interface_mtu(&self) -> io::Result<u32> {
        Ok(sys::ip_mtu(&self.sock, self.family)?.min(MAX_IP_PACKET))
    }

    /// Smallest IP size that carries a whole echo header.
    fn min_size(&self) -> u32 {
        overhead(self.family) + u32::try_from(echo::HEADER_LEN).unwrap_or(64)
    }

    /// Whether an IP packet of `size` bytes crosses the path and back.
    fn delivers(&mut self, size: u32, shutdown: &CancellationToken) -> Result<bool, PmtuError> {
        let payload = usize::try_from(size.saturating_sub(overhead(self.family)))
            .unwrap_or(usize::MAX)
            .clamp(echo::HEADER_LEN, echo::MAX_LEN);
        for _ in 0..self.tries {
            if shutdown.is_cancelled() {
                return Err(PmtuError::Cancelled);
            }
            self.seq += 1;
            // A pending error from an earlier size (ICMP frag-needed or
            // port unreachable) would otherwise fail this send.
            let _ = self.sock.take_error();
            let now_real = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            let h = EchoHeader {
                seq: self.seq,
                stream: self.stream,
                tx_real_ns: now_real,
                ..EchoHeader::default()
            };
            let msg = &mut self.tx[..payload];
            h.encode_request(msg)
                .ok_or_else(|| PmtuError::Send(io::Error::other("payload shorter than header")))?;
            match self.sock.send(msg) {
                Ok(_) => {}
                // Larger than the local interface MTU: too big, no retry.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(false),
                // Port unreachable from an earlier probe: try again.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(PmtuError::Send(e)),
            }
            let deadline = Instant::now() + self.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.sock
                    .set_read_timeout(Some(left))
                    .map_err(PmtuError::Socket)?;
                match self.sock.recv(&mut self.rx) {
                    Ok(n) => {
                        let ours = matches!(
                            EchoHeader::decode(&self.rx[..n]),
                            Ok((Kind::Reply, r)) if r.stream == self.stream && r.seq == self.seq
                        );
                        // A reply of another length is not proof for this size.
                        if ours && n == payload {
                            return Ok(true);
                        }
                    }
                    // ICMP frag-needed reported on the connected socket.
                    Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(false),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    // Port unreachable and the like: this try failed.
                    Err(_) => break,
                }
            }
        }
        Ok(false)
    }
}

/// Searches the path MTU to `addr` within `[s.min_bytes, interface MTU]`.
pub(super) fn search(
    addr: SocketAddr,
    bind: IpAddr,
    s: &PmtuSettings,
    shutdown: &CancellationToken,
) -> Result<PathMtu, PmtuError> {
    let mut p = Prober::open(addr, bind, s).map_err(PmtuError::Socket)?;
    let interface_mtu = p.interface_mtu().map_err(PmtuError::Socket)?;
    let min = s.min_bytes.max(p.min_size()).min(interface_mtu);
    // A clean path answers the first probe: one round trip.
    if p.delivers(interface_mtu, shutdown)? {
        return Ok(PathMtu {
            path_mtu: interface_mtu,
            interface_mtu,
        });
    }
    if min == interface_mtu || !p.delivers(min, shutdown)? {
        return Err(PmtuError::NothingDelivered { min, interface_mtu });
    }
    // Invariant: `lo` delivered, `hi` did not.
    let (mut lo, mut hi) = (min, interface_mtu);
    let mut rechecks = 0;
    loop {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if p.delivers(mid, shutdown)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // A delivery proves a size; a failure may be lost probes (a short
        // outage, a peer still starting), and the search would then report
        // a blackhole that is not there until the next search. The smallest
        // failed size gets another chance (at most MAX_RECHECKS times per
        // search); if it delivers now, the search goes on above it.
        if rechecks == MAX_RECHECKS || !p.delivers(hi, shutdown)? {
            break;
        }
        rechecks += 1;
        lo = hi;
        if lo == interface_mtu {
            break;
        }
        hi = interface_mtu;
    }
    Ok(PathMtu {
        path_mtu: lo,
        interface_mtu,
    })
}
