//! How a link gets its connection: by dialling the bank (connect mode) or by taking one
//! the bank opened to the switch (listen mode), over TCP, TLS over TCP, or QUIC.
//!
//! TCP and TLS give a byte stream carrying the dialect's framing; QUIC gives a
//! connection on which every exchange has its own bidirectional stream (see
//! [`crate::shell`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::tls::{QUIC_ALPN, TlsError, TlsMaterial};

/// Bidirectional QUIC streams a peer may have open at once: above any link's in-flight
/// cap (one stream per request) plus room for network management and late answers.
pub const QUIC_STREAMS_MAX: u32 = 16_384;
/// A QUIC connection with no packet for this long is dead (echoes keep a live one busy).
pub const QUIC_IDLE_TIMEOUT_MS: u64 = 30_000;
/// QUIC keep-alive interval, well inside the idle timeout.
pub const QUIC_KEEP_ALIVE_MS: u64 = 5_000;
/// Accepted connections (listen mode) waiting for a free link at most.
pub const LISTEN_HANDOFF_QUEUE_MAX: usize = 1;
/// How long an accepted connection waits for a free link before it is closed (the bank
/// opened more connections than the switch has links).
pub const LISTEN_HANDOFF_WAIT_MS: u64 = 5_000;
/// How long a TLS or QUIC handshake may take in listen mode.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Pause after a failed accept (out of descriptors), so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// A byte stream a link can run its framing over (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An established transport, not yet signed on.
pub enum Conn {
    Stream(Box<dyn Io>),
    /// The endpoint is kept with its connection: dropping it would close the socket.
    Quic(quinn::Connection, quinn::Endpoint),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Stream(_) => f.write_str("Conn::Stream"),
            Conn::Quic(c, _) => write!(f, "Conn::Quic({})", c.remote_address()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("QUIC connect: {0}")]
    QuicConnect(#[from] quinn::ConnectError),
    #[error("QUIC connection: {0}")]
    QuicConnection(#[from] quinn::ConnectionError),
    #[error("timed out")]
    Timeout,
}

/// The transport of a bank's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    #[default]
    Tcp,
    Tls,
    Quic,
}

/// The QUIC transport parameters both roles use.
pub fn quic_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(QUIC_STREAMS_MAX))
        // Bank links never use unidirectional streams.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_millis(QUIC_KEEP_ALIVE_MS)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(QUIC_IDLE_TIMEOUT_MS))
                .expect("idle timeout fits a VarInt"),
        ));
    Arc::new(t)
}

/// A QUIC client configuration from TLS material.
pub fn quic_client_config(tls: &TlsMaterial) -> Result<quinn::ClientConfig, TlsError> {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls.client_config(&[QUIC_ALPN])?)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(quic_transport());
    Ok(c)
}

/// A QUIC server configuration from TLS material (client certificates required).
pub fn quic_server_config(tls: &TlsMaterial) -> Result<quinn::ServerConfig, TlsError> {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config(&[QUIC_ALPN])?)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    c.transport_config(quic_transport());
    Ok(c)
}

/// How a link dials its bank.
#[derive(Clone)]
pub enum Connector {
    Tcp,
    Tls {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    },
    Quic {
        config: quinn::ClientConfig,
        server_name: String,
    },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Tcp => "Connector::Tcp",
            Connector::Tls { .. } => "Connector::Tls",
            Connector::Quic { .. } => "Connector::Quic",
        })
    }
}

impl Connector {
    pub fn new(kind: TransportKind, tls: Option<&TlsMaterial>) -> Result<Self, TransportError> {
        let need = || tls.ok_or(TlsError::NoCertificate("TLS material"));
        Ok(match kind {
            TransportKind::Tcp => Connector::Tcp,
            TransportKind::Tls => {
                let tls = need()?;
                Connector::Tls {
                    config: tls.client_config(&[])?,
                    server_name: tls.server_name()?,
                }
            }
            TransportKind::Quic => {
                let tls = need()?;
                Connector::Quic {
                    config: quic_client_config(tls)?,
                    server_name: tls.server_name.clone(),
                }
            }
        })
    }

    /// One connection attempt to `host:port` (the caller bounds it with a timeout). The
    /// name is resolved afresh on every attempt, so a bank that moves (a service name
    /// pointing elsewhere) is found on the next reconnect; each address it resolves to is
    /// tried in turn.
    pub async fn connect(&self, addr: &str) -> Result<Conn, TransportError> {
        let mut last = None;
        for resolved in tokio::net::lookup_host(addr).await? {
            match self.connect_to(resolved).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{addr} resolves to no address"),
            )
            .into()
        }))
    }

    async fn connect_to(&self, addr: SocketAddr) -> Result<Conn, TransportError> {
        match self {
            Connector::Tcp => {
                let s = TcpStream::connect(addr).await?;
                // Requests are small and latency-bound; Nagle would hold them back.
                s.set_nodelay(true)?;
                Ok(Conn::Stream(Box::new(s)))
            }
            Connector::Tls {
                config,
                server_name,
            } => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(server_name.clone(), s)
                    .await?;
                Ok(Conn::Stream(Box::new(tls)))
            }
            Connector::Quic {
                config,
                server_name,
            } => {
                let local: SocketAddr = if addr.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let endpoint = quinn::Endpoint::client(local)?;
                let conn = endpoint
                    .connect_with(config.clone(), addr, server_name)?
                    .await?;
                Ok(Conn::Quic(conn, endpoint))
            }
        }
    }
}

/// Where a link's connection comes from.
#[derive(Debug, Clone)]
pub enum LinkEndpoint {
    /// The switch dials `addr` (`host:port`, the host a name or an IP address, resolved
    /// on every attempt), reconnecting with backoff.
    Connect { addr: String, connector: Connector },
    /// The bank dials the switch; links take accepted connections from a shared listener.
    Listen(Arc<BankListener>),
}

/// A listener shared by a bank's links in listen mode: it accepts and handshakes
/// connections and hands each to a link waiting for one.
#[derive(Debug)]
pub struct BankListener {
    addr: SocketAddr,
    rx: Mutex<mpsc::Receiver<Conn>>,
}

impl BankListener {
    /// Binds `addr` and accepts until `shutdown`. TLS and QUIC require `tls`.
    pub async fn bind(
        addr: SocketAddr,
        kind: TransportKind,
        tls: Option<&TlsMaterial>,
        shutdown: CancellationToken,
    ) -> Result<Arc<BankListener>, TransportError> {
        let (tx, rx) = mpsc::channel(LISTEN_HANDOFF_QUEUE_MAX);
        let need = || tls.ok_or(TlsError::NoCertificate("TLS material"));
        let local = match kind {
            TransportKind::Tcp | TransportKind::Tls => {
                let acceptor = match kind {
                    TransportKind::Tls => {
                        Some(tokio_rustls::TlsAcceptor::from(need()?.server_config(&[])?))
                    }
                    _ => None,
                };
                let listener = TcpListener::bind(addr).await?;
                let local = listener.local_addr()?;
                tokio::spawn(accept_stream(listener, acceptor, tx, shutdown));
                local
            }
            TransportKind::Quic => {
                let endpoint = quinn::Endpoint::server(quic_server_config(need()?)?, addr)?;
                let local = endpoint.local_addr()?;
                tokio::spawn(accept_quic(endpoint, tx, shutdown));
                local
            }
        };
        Ok(Arc::new(BankListener {
            addr: local,
            rx: Mutex::new(rx),
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next accepted connection; cancel-safe.
    pub async fn next(&self) -> Option<Conn> {
        self.rx.lock().await.recv().await
    }
}

async fn hand_off(tx: &mpsc::Sender<Conn>, conn: Conn, peer: SocketAddr) {
    let wait = Duration::from_millis(LISTEN_HANDOFF_WAIT_MS);
    if tx.send_timeout(conn, wait).await.is_err() {
        tracing::warn!(%peer, "bank connection closed: no free link to take it");
    }
}

async fn accept_stream(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<Conn>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "bank listener accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracing::info!(%peer, "bank connection accepted");
        let (tx, acceptor, shutdown) = (tx.clone(), acceptor.clone(), shutdown.clone());
        // Handshakes run beside the accept loop so one slow peer does not hold up others.
        tokio::spawn(async move {
            let conn = match acceptor {
                None => Conn::Stream(Box::new(stream)),
                Some(a) => {
                    let hs = tokio::time::timeout(
                        Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                        a.accept(stream),
                    );
                    match hs.await {
                        Ok(Ok(s)) => Conn::Stream(Box::new(s)),
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "bank TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "bank TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = hand_off(&tx, conn, peer) => {}
            }
        });
    }
}

async fn accept_quic(
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<Conn>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let peer = incoming.remote_address();
        let (tx, endpoint, shutdown) = (tx.clone(), endpoint.clone(), shutdown.clone());
        tokio::spawn(async move {
            let hs = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), incoming);
            let conn = match hs.await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "bank QUIC handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "bank QUIC handshake timed out");
                    return;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = hand_off(&tx, Conn::Quic(conn, endpoint), peer) => {}
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
}
