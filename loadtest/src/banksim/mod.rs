//! A bank for tests and load runs: it accepts the switch's bank links, answers by the
//! merchant contract's test-card rules (docs/bank-protocol.md) and keeps a record of
//! what it did, served over HTTP.
//!
//! - [`rules`]: the decisions, answers and headers, as plain functions.
//! - [`record`]: the thread-safe record and its JSON shape.
//! - `link`: one bank link over a byte stream (TCP or TLS), and the fault plan.
//! - `quic`: bank links over QUIC, one stream per exchange.
//! - [`tls`]: server certificates that require the switch's client certificate.
//! - [`advise`]: advices the bank starts (0420 reversal advices), on command.
//! - `control`: the HTTP control endpoint.
//! - [`gate`]: cutting the links on command (fault runs).

pub mod advise;
mod control;
pub mod gate;
mod link;
mod quic;
pub mod record;
pub mod rules;
pub mod tls;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use codec::Dialect;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use link::{LATE_AMOUNT_SUFFIX, LINK_IN_FLIGHT_MAX, LINK_WRITE_QUEUE_MAX};
pub use record::{RECORD_ENTRIES_MAX, Record, Snapshot};
pub use rules::{Behaviour, Decision, RequestView, decide};

/// Bank links served at once; further connections wait in the listen backlog.
pub const LINKS_MAX: usize = 1024;
/// Pause after a failed accept (such as running out of file descriptors), so the loop
/// does not spin while the cause lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The transport bank links use.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    #[default]
    Tcp,
    /// TLS over TCP; the configuration decides whether client certificates are required.
    Tls(Arc<rustls::ServerConfig>),
    /// QUIC: every exchange on its own bidirectional stream.
    Quic(Arc<rustls::ServerConfig>),
}

/// Misbehaviour for fault tests (all off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Answer this many financial requests on a connection, then drop the connection
    /// when the next one arrives, unanswered, with whatever else is in flight.
    pub drop_after: Option<u64>,
    /// Answer every financial request twice.
    pub answer_twice: bool,
    /// Send an undecodable frame before every n-th financial answer.
    pub garbage_every: Option<u64>,
    /// Answer financial requests whose amount ends in 77 this late.
    pub late: Option<Duration>,
    /// Never answer reversals (0400/0401), nor record them as taken; the switch's status
    /// inquiries are then its only way to settle an unknown outcome.
    pub ignore_reversals: bool,
    /// With a MAC key: break the MAC of every n-th financial answer after signing it (one
    /// bit flipped), as tampering on the link would; the switch must drop those answers.
    pub tamper_mac_every: Option<u64>,
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where bank links connect; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the HTTP control endpoint listens; port 0 picks a free port.
    pub control: SocketAddr,
    /// The wire profile of the bank links.
    pub dialect: &'static Dialect,
    /// Added before every answer.
    pub latency: Duration,
    pub behaviour: Behaviour,
    pub transport: Transport,
    pub faults: Faults,
    /// The bank's message MAC key (X9.19 or HMAC-SHA256): when set, every message from the
    /// switch must carry a MAC that verifies (or it is dropped and counted in the
    /// record's `mac_failures`), and every message the simulator sends is signed.
    pub mac: Option<codec::MacKey>,
}

impl Config {
    /// Both listeners on 127.0.0.1 with free ports, no latency, no faults.
    pub fn new(dialect: &'static Dialect) -> Self {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Config {
            listen: any_port,
            control: any_port,
            dialect,
            latency: Duration::ZERO,
            behaviour: Behaviour::default(),
            transport: Transport::Tcp,
            faults: Faults::default(),
            mac: None,
        }
    }
}

impl Default for Config {
    /// [`Config::new`] in the bank-bcd-v1 dialect.
    fn default() -> Self {
        Config::new(codec::builtin::bank_bcd())
    }
}

/// The addresses actually bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub listen: SocketAddr,
    pub control: SocketAddr,
}

/// A running simulator.
#[derive(Debug)]
pub struct Handle {
    cancel: CancellationToken,
    tasks: TaskTracker,
    record: Arc<Record>,
}

impl Handle {
    /// The live record (the same one `GET /record` serves).
    pub fn record(&self) -> &Arc<Record> {
        &self.record
    }

    /// Stops accepting, closes every link and the control endpoint, and waits for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("QUIC needs TLS 1.3: {0}")]
    Quic(String),
}

/// Binds both listeners and starts serving; returns once they are bound, so the caller
/// can announce readiness.
pub async fn serve(config: Config) -> Result<(Addrs, Handle), ServeError> {
    let bind = |what, addr| async move {
        let l = TcpListener::bind(addr).await;
        let l = l.and_then(|l| l.local_addr().map(|a| (l, a)));
        l.map_err(|source| ServeError::Bind { what, addr, source })
    };
    let record = Arc::new(Record::new());
    let shared = Arc::new(link::Shared {
        dialect: config.dialect,
        behaviour: config.behaviour,
        latency: config.latency,
        faults: config.faults,
        record: record.clone(),
        mac: config.mac.clone(),
        advisor: Arc::new(advise::Advisor::new(
            config.dialect,
            record.clone(),
            config.mac.clone(),
        )),
        gate: gate::LinkGate::default(),
    });
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();

    let listen = match &config.transport {
        Transport::Tcp | Transport::Tls(_) => {
            let (links, listen) = bind("bank links", config.listen).await?;
            let tls = match &config.transport {
                Transport::Tls(c) => Some(tokio_rustls::TlsAcceptor::from(c.clone())),
                _ => None,
            };
            tasks.spawn(accept_loop(
                links,
                tls,
                shared.clone(),
                cancel.clone(),
                tasks.clone(),
            ));
            listen
        }
        Transport::Quic(c) => {
            let endpoint = quic::bind(config.listen, c.clone())?;
            let listen = endpoint.local_addr().map_err(|source| ServeError::Bind {
                what: "bank links (QUIC)",
                addr: config.listen,
                source,
            })?;
            tasks.spawn(quic::accept_loop(
                endpoint,
                shared.clone(),
                cancel.clone(),
                tasks.clone(),
            ));
            listen
        }
    };
    let (control, control_addr) = bind("control", config.control).await?;

    let app = control::router(shared.clone());
    let stop = cancel.clone().cancelled_owned();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(control, app).with_graceful_shutdown(stop).await {
            warn!(error = %e, "control endpoint stopped");
        }
    });
    info!(%listen, control = %control_addr, dialect = %config.dialect.name, "bank simulator listening");
    Ok((
        Addrs {
            listen,
            control: control_addr,
        },
        Handle {
            cancel,
            tasks,
            record,
        },
    ))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<link::Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(LINKS_MAX));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => s.expect("semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if shared.gate.is_down(tokio::time::Instant::now()) {
            info!(%peer, "links are cut: connection closed");
            continue;
        }
        // Answers are small and latency-sensitive; Nagle would hold them back.
        if let Err(e) = stream.set_nodelay(true) {
            warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let (shared, cancel, tls) = (shared.clone(), cancel.clone(), tls.clone());
        tasks.spawn(async move {
            match tls {
                None => link::run(stream, peer, shared, cancel).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    match hs.await {
                        Ok(Ok(s)) => link::run(s, peer, shared, cancel).await,
                        Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => warn!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
}
