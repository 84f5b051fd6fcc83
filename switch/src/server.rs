//! Merchant listeners (TCP and TLS): accept within the connection limits and hand each
//! connection to a session.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::session::{self, ConnectionSlot, Listening};

/// Pause after a failed accept (out of file descriptors and the like), so a listener in
/// trouble does not spin.
pub(crate) const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate or key {path}: {why}")]
    Pem { path: String, why: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls server configuration from PEM files.
pub(crate) fn tls_acceptor(
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> Result<TlsAcceptor, TlsError> {
    Ok(TlsAcceptor::from(Arc::new(tls_server_config(
        cert_pem, key_pem,
    )?)))
}

/// A rustls server configuration (certificate chain and key from PEM files), shared by
/// the TLS and QUIC listeners.
pub(crate) fn tls_server_config(
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |p: &std::path::Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: p.display().to_string(),
        why: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| pem_err(cert_pem, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert_pem, e))?;
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| pem_err(key_pem, e))?;
    Ok(rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

/// Accepts until shutdown; `tls` wraps each connection when given.
pub(crate) async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, l: Listening) {
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep the listener, slow down.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
            _ = l.shutdown.cancelled() => return,
        };
        let Some(slot) = ConnectionSlot::try_new(&l.connections, l.max_connections_total) else {
            tracing::warn!(%peer, max = l.max_connections_total, "merchant connection refused: total connection limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let l2 = l.clone();
        let tls = tls.clone();
        l.sessions.spawn(async move {
            let _slot = slot;
            let peer = peer.to_string();
            match tls {
                None => session::serve(stream, peer, l2).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_millis(l2.limits.write_timeout_ms),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls_stream)) => session::serve(tls_stream, peer, l2).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}
