//! The simulator's TLS: its certificate and key, and the CA that must have issued the
//! switch's client certificate (mutual authentication, as a real bank requires).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;

/// The ALPN id of bank links over QUIC; must equal `bank_links::tls::QUIC_ALPN` (the
/// simulator does not depend on bank-links, which uses it in tests).
pub const QUIC_ALPN: &[u8] = b"switchyard-bank/1";

#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("{what}: {source}")]
    Pem {
        what: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate found")]
    Empty(&'static str),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from PEM text. With `client_ca`, clients must present a
/// certificate issued by it; `alpn` is set for QUIC.
pub fn server_config_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
    alpn: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let pem = |what: &str| {
        let what = what.to_string();
        move |source| TlsSetupError::Pem { what, source }
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("certificate"))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty("certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem("key"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let mut config = match client_ca_pem {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots.add(c.map_err(pem("client CA"))?)?;
            }
            if roots.is_empty() {
                return Err(TlsSetupError::Empty("client CA"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key)?,
    };
    if alpn {
        config.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    }
    Ok(Arc::new(config))
}

/// The same from PEM files.
pub fn server_config_files(
    cert_pem: &Path,
    key_pem: &Path,
    client_ca_pem: Option<&Path>,
    alpn: bool,
) -> Result<Arc<rustls::ServerConfig>, std::io::Error> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let ca = client_ca_pem.map(read).transpose()?;
    server_config_pem(&read(cert_pem)?, &read(key_pem)?, ca.as_deref(), alpn)
        .map_err(std::io::Error::other)
}
