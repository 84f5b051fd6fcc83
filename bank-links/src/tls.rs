//! Certificates for a bank's links: the switch's own certificate and key, and the one CA
//! it trusts for that bank (pinned: the system roots are never consulted, so only a
//! certificate issued by the bank's CA is accepted). Both sides always authenticate.
//!
//! The same material configures TLS over TCP and QUIC, as client (connect mode) or as
//! server (listen mode). ring is the only crypto provider compiled in; it is passed
//! explicitly so no process-wide default is needed.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

/// The ALPN protocol id of a bank link over QUIC (RFC 9001 requires one).
/// The bank simulator (`loadtest::banksim`) uses the same literal.
pub const QUIC_ALPN: &[u8] = b"switchyard-bank/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate found")]
    NoCertificate(&'static str),
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("QUIC needs TLS 1.3: {0}")]
    Quic(String),
}

/// One bank's TLS material.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The switch's certificate chain (leaf first).
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The bank's CA: the only root trusted on this bank's links.
    pub ca: Vec<CertificateDer<'static>>,
    /// The name the bank's certificate must carry (connect mode).
    pub server_name: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// From PEM text.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: &[u8],
        server_name: &str,
    ) -> Result<Self, TlsError> {
        let pem = |what, source| TlsError::Pem {
            what,
            path: "(inline)".into(),
            source,
        };
        let cert_chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem("key", e))?;
        let ca = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("CA", e))?;
        Self::new(cert_chain, key, ca, server_name)
    }

    /// From PEM files (checked at start-up, so a bad file stops the switch early).
    pub fn from_pem_files(
        cert_pem: &Path,
        key_pem: &Path,
        ca_pem: &Path,
        server_name: &str,
    ) -> Result<Self, TlsError> {
        let pem = |what, path: &Path, source| TlsError::Pem {
            what,
            path: path.display().to_string(),
            source,
        };
        let cert_chain = CertificateDer::pem_file_iter(cert_pem)
            .map_err(|e| pem("certificate", cert_pem, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("certificate", cert_pem, e))?;
        let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| pem("key", key_pem, e))?;
        let ca = CertificateDer::pem_file_iter(ca_pem)
            .map_err(|e| pem("CA", ca_pem, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("CA", ca_pem, e))?;
        Self::new(cert_chain, key, ca, server_name)
    }

    fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca: Vec<CertificateDer<'static>>,
        server_name: &str,
    ) -> Result<Self, TlsError> {
        if cert_chain.is_empty() {
            return Err(TlsError::NoCertificate("certificate"));
        }
        if ca.is_empty() {
            return Err(TlsError::NoCertificate("CA"));
        }
        let m = TlsMaterial {
            cert_chain,
            key: Arc::new(key),
            ca,
            server_name: server_name.to_string(),
        };
        // Build both sides once so every mistake surfaces here, not at the first connect.
        m.server_name()?;
        m.client_config(&[])?;
        m.server_config(&[])?;
        Ok(m)
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone())?;
        }
        Ok(roots)
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, TlsError> {
        ServerName::try_from(self.server_name.clone())
            .map_err(|_| TlsError::ServerName(self.server_name.clone()))
    }

    /// The switch as TLS client: presents its certificate, trusts only the bank's CA.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())?;
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(c))
    }

    /// The switch as TLS server (listen mode): requires a client certificate issued by
    /// the bank's CA.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())?;
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(c))
    }
}
