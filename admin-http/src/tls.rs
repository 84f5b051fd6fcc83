//! TLS for the admin listener (issue 12): an [`axum::serve::Listener`] whose connections
//! have completed a rustls handshake. Handshakes run in their own tasks (at most
//! [`HANDSHAKES_MAX`] at once, each cut off after [`HANDSHAKE_TIMEOUT_MS`]) so one slow or
//! plain-HTTP client never holds up the others; a failed handshake is logged and the
//! listener carries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Handshakes in progress at once; further connections wait to be accepted.
pub const HANDSHAKES_MAX: usize = 64;
/// A client that has not finished its handshake within this is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshaken connections waiting for the HTTP server to take them.
pub const READY_QUEUE_MAX: usize = 64;
/// Pause after a failed accept (out of file descriptors and the like).
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// Connections that passed the TLS handshake, as axum serves them.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` and handshaking with `config` until `shutdown`.
    /// `config` should offer ALPN `h2` and `http/1.1` ([`with_http_alpn`]).
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE_MAX);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx, shutdown));
        Ok(TlsListener { ready, local })
    }
}

/// `config` offering HTTP/2 and HTTP/1.1 by ALPN, as the admin server speaks both.
pub fn with_http_alpn(mut config: rustls::ServerConfig) -> rustls::ServerConfig {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            a = tcp.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "admin TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "admin TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): nothing more comes; axum's graceful
            // shutdown stops waiting on this.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
