//! One timed apiserver probe (IO) on a blocking thread: TCP connect, TLS
//! handshake with rustls, `GET <livez_path>`; each phase is stamped with
//! `Instant` right around its socket calls.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use socket2::{Domain, Protocol, Socket, Type};

use super::phases::{livez_request, read_livez, Failure, LivezRead, Probe};
use crate::metrics::labels::ApiserverPhase;

/// Why the TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    /// The CA bundle could not be read or held no certificate.
    #[error("CA bundle {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS client trusting only the CA bundle at `ca_file`.
pub(crate) fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let ca_err = |reason: String| TlsSetupError::Ca {
        path: ca_file.display().to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| ca_err(e.to_string()))?;
    for c in certs {
        let c = c.map_err(|e| ca_err(e.to_string()))?;
        roots.add(c).map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// What a probe needs besides its target.
#[derive(Clone)]
pub(crate) struct ProbeSetup {
    /// The TLS client.
    pub tls: Arc<ClientConfig>,
    /// Name the certificate is checked against (and the Host header).
    pub server_name: ServerName<'static>,
    /// Health request path.
    pub path: String,
    /// Per-phase timeout.
    pub timeout: Duration,
    /// Source address (unspecified: the kernel's choice).
    pub bind: IpAddr,
}

/// Probes the apiserver at `addr`.
pub(crate) fn probe(addr: SocketAddr, s: &ProbeSetup) -> Probe {
    let mut p = Probe::start();
    // Connect.
    let (mut sock, took) = match connect(addr, s.bind, s.timeout) {
        Ok(v) => v,
        Err(e) => return p.failed(ApiserverPhase::Connect, Failure::Io(e.kind())),
    };
    if !p.completed(ApiserverPhase::Connect, took, s.timeout) {
        return p;
    }
    if sock.set_read_timeout(Some(s.timeout)).is_err()
        || sock.set_write_timeout(Some(s.timeout)).is_err()
        || sock.set_nodelay(true).is_err()
    {
        return p.failed(
            ApiserverPhase::TlsHandshake,
            Failure::Io(io::ErrorKind::Other),
        );
    }
    // TLS handshake: ClientHello written to the handshake's end.
    let Ok(mut tls) = ClientConnection::new(s.tls.clone(), s.server_name.clone()) else {
        return p.failed(ApiserverPhase::TlsHandshake, Failure::Tls);
    };
    let start = Instant::now();
    while tls.is_handshaking() {
        if let Err(e) = tls.complete_io(&mut sock) {
            let why = if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                Failure::Tls
            } else {
                Failure::Io(e.kind())
            };
            tracing::debug!(%addr, error = %e, "apiserver TLS handshake failed");
            return p.failed(ApiserverPhase::TlsHandshake, why);
        }
    }
    if !p.completed(ApiserverPhase::TlsHandshake, start.elapsed(), s.timeout) {
        return p;
    }
    // GET /livez: request written to the response's last byte.
    let host = match &s.server_name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(_) => addr.ip().to_string(),
        _ => addr.ip().to_string(),
    };
    let req = livez_request(&s.path, &host);
    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    let start = Instant::now();
    if let Err(e) = stream
        .write_all(req.as_bytes())
        .and_then(|()| stream.flush())
    {
        return p.failed(ApiserverPhase::Livez, Failure::Io(e.kind()));
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let status = loop {
        match stream.read(&mut chunk) {
            Ok(0) => match read_livez(&buf) {
                LivezRead::Complete(c) | LivezRead::UntilClose(c) => break c,
                _ => {
                    return p.failed(
                        ApiserverPhase::Livez,
                        Failure::Io(io::ErrorKind::UnexpectedEof),
                    )
                }
            },
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                match read_livez(&buf) {
                    LivezRead::Complete(c) => break c,
                    LivezRead::Malformed => return p.failed(ApiserverPhase::Livez, Failure::Http),
                    LivezRead::More | LivezRead::UntilClose(_) => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A close without close_notify after a body that runs to close.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => match read_livez(&buf) {
                LivezRead::Complete(c) | LivezRead::UntilClose(c) => break c,
                _ => return p.failed(ApiserverPhase::Livez, Failure::Io(e.kind())),
            },
            Err(e) => return p.failed(ApiserverPhase::Livez, Failure::Io(e.kind())),
        }
    };
    let took = start.elapsed();
    abort(sock);
    if status != 200 {
        tracing::debug!(%addr, status, "apiserver health request not ok");
        return p.failed(ApiserverPhase::Livez, Failure::Http);
    }
    p.completed(ApiserverPhase::Livez, took, s.timeout);
    p
}

/// A blocking TCP connection from `bind` (when of the same family) and its
/// connect time, SYN to SYN/ACK: the kernel's RTT sample of the handshake
/// (`TCP_INFO`, so the probing thread's wake-up is not measured), or the
/// duration of the connect call when the kernel has no sample (a
/// retransmitted SYN gives none) or one longer than the call.
fn connect(addr: SocketAddr, bind: IpAddr, timeout: Duration) -> io::Result<(TcpStream, Duration)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
        sock.bind(&SocketAddr::new(bind, 0).into())?;
    }
    let start = Instant::now();
    sock.connect_timeout(&addr.into(), timeout)?;
    let call = start.elapsed();
    let kernel = crate::sys::tcp_info::tcp_info(&sock).ok().map(|i| i.rtt);
    Ok((sock.into(), pick_connect(kernel, call)))
}

/// The kernel's handshake RTT when it is a plausible sample of this call.
fn pick_connect(kernel: Option<Duration>, call: Duration) -> Duration {
    kernel
        .filter(|k| !k.is_zero() && *k <= call)
        .unwrap_or(call)
}

/// Closes with an RST so probe connections leave no TIME_WAIT behind on
/// the apiserver (one connection per agent per round).
fn abort(stream: TcpStream) {
    let sock = Socket::from(stream);
    // Failing to set linger only means a normal close.
    let _ = sock.set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_handshake_rtt_is_used_when_plausible() {
        let us = Duration::from_micros;
        assert_eq!(pick_connect(Some(us(300)), us(420)), us(300));
        assert_eq!(pick_connect(None, us(420)), us(420));
        assert_eq!(pick_connect(Some(Duration::ZERO), us(420)), us(420));
        assert_eq!(pick_connect(Some(us(900)), us(420)), us(420));
    }

    #[test]
    fn loopback_connect_is_timed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (_s, took) =
            connect(addr, IpAddr::from([0, 0, 0, 0]), Duration::from_secs(2)).expect("connect");
        assert!(
            took > Duration::ZERO && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
