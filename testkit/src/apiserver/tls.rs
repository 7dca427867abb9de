//! HTTPS for the API test server: a rustls acceptor from PEM files (a
//! serving certificate and its key, as the lab's CA issues them), so
//! clients configured in-cluster (`https://$KUBERNETES_SERVICE_HOST`, the
//! service account's CA) verify it as they would a real apiserver.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS acceptor serving the certificate chain in `cert` (PEM) with the
/// key in `key` (PEM, PKCS#8 or SEC1).
pub(super) fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", cert.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("bad certificate in {}: {e}", cert.display()));
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("bad key in {}: {e}", key.display()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a certificate and a matching key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
