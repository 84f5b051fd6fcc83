//! Merchant connections: frames in, one task per request, answers out in completion
//! order. A connection's requests in flight are bounded (beyond it, the connection is
//! simply not read: TCP back-pressure); a frame that cannot be resynchronised stops
//! reading, but everything already accepted is still answered before the close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codec::FrameCodec;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Engine, SessionState};

/// Limits of one listener.
#[derive(Debug, Clone)]
pub(crate) struct SessionLimits {
    pub max_in_flight_per_connection: usize,
    pub max_connections_per_merchant: usize,
    pub idle_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub max_message_len: usize,
}

/// Connections per merchant, to enforce `max_connections_per_merchant`.
#[derive(Debug, Default)]
pub(crate) struct MerchantConnections {
    counts: Mutex<HashMap<String, usize>>,
    pub total: AtomicUsize,
}

impl MerchantConnections {
    fn try_bind(&self, merchant: &str, max: usize) -> bool {
        let mut c = self.counts.lock().expect("connections lock");
        let n = c.entry(merchant.to_string()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn unbind(&self, merchant: &str) {
        let mut c = self.counts.lock().expect("connections lock");
        if let Some(n) = c.get_mut(merchant) {
            *n -= 1;
            if *n == 0 {
                c.remove(merchant);
            }
        }
    }
}

/// What the streams of one merchant connection share: its sign-on state, which merchant
/// it is counted for, and where the notifier sends it advices.
#[derive(Debug, Clone)]
pub(crate) struct ConnShared {
    state: Arc<SessionState>,
    bound: Arc<Mutex<Binding>>,
    session_id: u64,
    /// Advices go here (QUIC: a task that opens a stream for each); None: on the stream
    /// that bound the connection (TCP, TLS).
    outlet: Option<mpsc::Sender<Bytes>>,
}

impl ConnShared {
    pub(crate) fn new(outlet: Option<mpsc::Sender<Bytes>>) -> Self {
        ConnShared {
            state: Arc::new(SessionState::default()),
            bound: Arc::new(Mutex::new(Binding::default())),
            session_id: SESSION_IDS.fetch_add(1, Ordering::Relaxed),
            outlet,
        }
    }

    pub(crate) fn state(&self) -> &Arc<SessionState> {
        &self.state
    }

    /// The connection is ending: nothing binds it any more, and the notifier forgets it.
    pub(crate) fn close(&self, engine: &crate::engine::Engine, connections: &MerchantConnections) {
        let mut b = self.bound.lock().expect("bound lock");
        b.closed = true;
        if let Some(id) = b.merchant.take() {
            engine.outlets.unregister(&id, self.session_id);
            connections.unbind(&id);
        }
    }
}

/// Everything a listener shares with its sessions.
#[derive(Debug, Clone)]
pub(crate) struct Listening {
    pub engine: Arc<Engine>,
    pub limits: SessionLimits,
    pub max_connections_total: usize,
    pub connections: Arc<MerchantConnections>,
    /// Stops accepting and reading.
    pub shutdown: CancellationToken,
    /// Sessions (so shutdown can wait for their answers to be written).
    pub sessions: TaskTracker,
    /// Accepted requests (so shutdown can wait for their outcomes).
    pub requests: TaskTracker,
}

/// Serves one connection until the peer closes it, it idles out, a frame is bad, or
/// shutdown stops the reading; then answers what was accepted and closes.
pub(crate) async fn serve<S>(stream: S, peer: String, l: Listening)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    serve_stream(stream, peer, l, ConnShared::new(None), true).await
}

/// Serves one stream of a connection (for TCP and TLS, the connection itself). `owns`:
/// the connection ends with this stream.
pub(crate) async fn serve_stream<S>(
    stream: S,
    peer: String,
    l: Listening,
    conn: ConnShared,
    owns: bool,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Listening {
        engine,
        limits,
        connections,
        shutdown,
        requests,
        ..
    } = l;
    let dialect = codec::builtin::merchant();
    let (r, w) = tokio::io::split(stream);
    let mut reader = FramedRead::new(r, FrameCodec::new(dialect.framing, limits.max_message_len));
    let writer = FramedWrite::new(w, FrameCodec::new(dialect.framing, limits.max_message_len));
    let (tx, rx) = mpsc::channel::<Bytes>(limits.max_in_flight_per_connection);
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let writing = tokio::spawn(write_loop(writer, rx, write_timeout, peer.clone()));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight_per_connection));
    let over_limit = CancellationToken::new();
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    if owns {
        tracing::info!(%peer, "merchant connection opened");
    }

    let end = loop {
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break ReadEnd::Shutdown,
        };
        let frame = tokio::select! {
            f = tokio::time::timeout(idle, reader.next()) => f,
            _ = shutdown.cancelled() => break ReadEnd::Shutdown,
            _ = over_limit.cancelled() => break ReadEnd::OverLimit,
        };
        let frame = match frame {
            Err(_) => break ReadEnd::Idle,
            Ok(None) => break ReadEnd::PeerClosed,
            Ok(Some(Err(e))) => break ReadEnd::from_frame_error(&e),
            Ok(Some(Ok(frame))) => frame,
        };
        // Accepted: carried through to its outcome even if the connection goes.
        let accepted = Accepted {
            engine: engine.clone(),
            conn: conn.clone(),
            tx: tx.clone(),
            connections: connections.clone(),
            over_limit: over_limit.clone(),
            max_per_merchant: limits.max_connections_per_merchant,
        };
        requests.spawn(accepted.run(frame.message, permit));
    };
    end.log(&peer, owns);
    if owns {
        // From here no request binds the connection, so the notifier holds no sender of it.
        conn.close(&engine, &connections);
    }
    drop(tx);
    // The writer ends once every accepted request has answered (each holds a sender).
    let _ = writing.await;
}

/// What an accepted request's task needs of its connection.
#[derive(Debug)]
struct Accepted {
    engine: Arc<Engine>,
    conn: ConnShared,
    /// The connection's writer.
    tx: mpsc::Sender<Bytes>,
    connections: Arc<MerchantConnections>,
    /// Cancelled when the merchant is over its connection limit: reading stops.
    over_limit: CancellationToken,
    max_per_merchant: usize,
}

impl Accepted {
    /// Handles the request, queues its answer, and binds the connection to the merchant
    /// its first authenticated request names; `permit` is the request's room in flight.
    async fn run(self, message: Bytes, permit: OwnedSemaphorePermit) {
        let handled = self.engine.handle(message, &self.conn.state).await;
        if let Some(answer) = handled.response {
            let _ = self.tx.send(answer).await;
        }
        if let Some(m) = handled.merchant {
            self.bind(&m.id);
        }
        drop(permit);
    }

    /// Binds an unbound, open connection to `merchant`, within its connection limit; over
    /// it, the connection closes after this answer.
    fn bind(&self, merchant: &str) {
        let mut b = self.conn.bound.lock().expect("bound lock");
        if b.merchant.is_some() || b.closed {
            return;
        }
        if self.connections.try_bind(merchant, self.max_per_merchant) {
            b.merchant = Some(merchant.to_string());
            let outlet = self.conn.outlet.clone().unwrap_or_else(|| self.tx.clone());
            let signed_on = self.conn.state.signed_on.clone();
            self.engine
                .outlets
                .register(merchant, self.conn.session_id, outlet, signed_on);
        } else {
            tracing::warn!(merchant = %merchant, "merchant over its connection limit: closing after this answer");
            self.over_limit.cancel();
        }
    }
}

/// Why a merchant connection (or QUIC stream) stopped reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The peer closed its side after whole frames.
    PeerClosed,
    /// The transport failed: the peer reset or aborted the connection, or closed it in
    /// the middle of a frame. The peer's doing, not a fault of its framing.
    Reset(String),
    /// A frame the codec refuses (bad length prefix, over the limit): the stream cannot
    /// be resynchronised.
    FramingFault(String),
    /// Nothing arrived for `idle_timeout_ms`.
    Idle,
    /// The switch is shutting down.
    Shutdown,
    /// The merchant is over `max_connections_per_merchant`.
    OverLimit,
}

impl ReadEnd {
    /// A read error: an i/o error is the transport's (a reset, or EOF inside a frame, which
    /// tokio-util reports as an i/o error), anything else the framing's.
    pub(crate) fn from_frame_error(e: &codec::FrameError) -> ReadEnd {
        match e {
            codec::FrameError::Io(io) => ReadEnd::Reset(io.to_string()),
            other => ReadEnd::FramingFault(other.to_string()),
        }
    }

    /// The `reason` field of the close line.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ReadEnd::PeerClosed => "closed by peer",
            ReadEnd::Reset(_) => "reset by peer",
            ReadEnd::FramingFault(_) => "framing fault",
            ReadEnd::Idle => "idle timeout",
            ReadEnd::Shutdown => "shutdown",
            ReadEnd::OverLimit => "connection limit",
        }
    }

    /// Logs the end: a framing fault as a warning of its own; the close line (with the
    /// peer and the reason) when the connection ends with this stream (`owns`).
    fn log(&self, peer: &str, owns: bool) {
        let detail = match self {
            ReadEnd::FramingFault(e) => {
                tracing::warn!(%peer, error = %e, "merchant frame cannot be resynchronised: closing the connection");
                e.as_str()
            }
            ReadEnd::Reset(e) => e.as_str(),
            _ => "",
        };
        if owns {
            tracing::info!(%peer, reason = self.reason(), detail, "merchant connection closed");
        } else if let ReadEnd::Reset(e) = self {
            tracing::debug!(%peer, error = %e, "merchant stream reset by peer");
        }
    }
}

/// Which merchant a connection is counted for, and whether it is closing.
#[derive(Debug, Default)]
struct Binding {
    merchant: Option<String>,
    closed: bool,
}

/// Connection ids, for the notification registry.
static SESSION_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

async fn write_loop<W>(
    mut writer: FramedWrite<W, FrameCodec>,
    mut rx: mpsc::Receiver<Bytes>,
    timeout: Duration,
    peer: String,
) where
    W: AsyncWrite + Unpin,
{
    let mut broken = false;
    while let Some(msg) = rx.recv().await {
        if broken {
            // Keep draining so request tasks never block on a dead connection.
            continue;
        }
        match tokio::time::timeout(timeout, write_ready(&mut writer, msg, &mut rx)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "merchant connection write failed");
                broken = true;
            }
            Err(_) => {
                tracing::warn!(%peer, "merchant too slow to read its answers: closing");
                broken = true;
            }
        }
    }
    let _ = tokio::time::timeout(timeout, SinkExt::<Bytes>::close(&mut writer)).await;
}

/// Answers written with one flush at most: bounds the time one connection's writer
/// spends before it flushes, while answers keep arriving.
pub(crate) const WRITE_COALESCE_MAX: usize = 64;

/// Writes `first` and every answer already queued behind it (up to
/// [`WRITE_COALESCE_MAX`]), then flushes once: one write(2) for all frames that are ready,
/// instead of one per answer.
async fn write_ready<W>(
    writer: &mut FramedWrite<W, FrameCodec>,
    first: Bytes,
    rx: &mut mpsc::Receiver<Bytes>,
) -> Result<(), codec::FrameError>
where
    W: AsyncWrite + Unpin,
{
    writer.feed(first).await?;
    for _ in 1..WRITE_COALESCE_MAX {
        match rx.try_recv() {
            Ok(msg) => writer.feed(msg).await?,
            Err(_) => break,
        }
    }
    SinkExt::<Bytes>::flush(writer).await
}

/// Counts a connection for `max_connections_total` while it lives.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(pub Arc<MerchantConnections>);

impl ConnectionSlot {
    pub(crate) fn try_new(
        c: &Arc<MerchantConnections>,
        max_total: usize,
    ) -> Option<ConnectionSlot> {
        let prev = c.total.fetch_add(1, Ordering::AcqRel);
        if prev >= max_total {
            c.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(c.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a reset or a connection closed inside a frame (i/o errors) is the peer's doing,
    // and only a frame the codec refuses is a framing fault.
    #[test]
    fn resets_are_not_framing_faults() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
            ErrorKind::Other,
        ] {
            let e = codec::FrameError::Io(Error::new(kind, "gone"));
            assert!(matches!(ReadEnd::from_frame_error(&e), ReadEnd::Reset(_)));
        }
        for e in [
            codec::FrameError::ZeroLength,
            codec::FrameError::BadLength,
            codec::FrameError::TooLong {
                len: 9000,
                max: 4096,
            },
        ] {
            let end = ReadEnd::from_frame_error(&e);
            assert_eq!(end.reason(), "framing fault");
        }
    }
}
