//! TCP connect time, and the timed blocking connect the HTTP and bandwidth
//! probes share.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Opens a blocking TCP connection to `addr` from `bind` (when it is a
/// specific address of the same family) and returns it with the duration
/// of the connect itself (SYN to SYN/ACK), socket creation excluded.
pub(super) fn timed_connect(
    addr: SocketAddr,
    bind: IpAddr,
    timeout: Duration,
) -> io::Result<(TcpStream, Duration)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
        sock.bind(&SocketAddr::new(bind, 0).into())?;
    }
    let start = Instant::now();
    sock.connect_timeout(&addr.into(), timeout)?;
    let took = start.elapsed();
    Ok((sock.into(), took))
}

/// Closes with an RST (SO_LINGER {on, 0}) so probe connections leave no
/// TIME_WAIT entries behind on either side.
pub(super) fn abort(stream: TcpStream) {
    let sock = Socket::from(stream);
    // Failing to set linger only means a normal close: nothing to report.
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

/// One connect-time probe: the connect duration, the connection closed
/// again at once.
pub(super) fn probe(addr: SocketAddr, bind: IpAddr, timeout: Duration) -> io::Result<Duration> {
    let (stream, took) = timed_connect(addr, bind, timeout)?;
    abort(stream);
    Ok(took)
}
