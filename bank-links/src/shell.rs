//! The tokio shell around a [`Link`]: one task owns the link and its connection (TCP,
//! TLS over TCP, or QUIC; dialled or accepted), reconnects with bounded exponential
//! backoff and jitter, and hands replies back to callers through oneshot channels.
//!
//! Over TCP and TLS frames use the dialect's framing on one byte stream. Over QUIC every
//! exchange has its own bidirectional stream: each request of the switch (sign-on and
//! echo included) opens one and reads its answer from it, and each message the bank
//! starts arrives on a stream of its own and is answered there. No answer waits behind
//! another (no head-of-line blocking). The [`Link`] state machine is the same for all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use codec::{Frame, FrameCodec, Message};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, Framed, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::{
    Event, Link, LinkConfig, LinkState, MatchKey, Now, Outcome, SendError, TransmitKind,
};
use crate::stan::StanAllocator;
use crate::transport::{Conn, Connector, Io, LinkEndpoint};

/// Commands queued to one link task at most; senders wait (back-pressure) beyond it.
pub const LINK_COMMAND_QUEUE_MAX: usize = 4096;
/// Late answers and bank-initiated messages queued for the owner at most; more are dropped
/// (and counted) rather than stalling the link.
pub const LINK_EVENT_QUEUE_MAX: usize = 4096;
/// How long a connect attempt may take.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How long a sign-off may take on shutdown before the connection is dropped.
pub const SIGN_OFF_GRACE_MS: u64 = 2_000;
/// Commands taken in one turn of the link loop before writing: pipelined senders get
/// their frames written (and flushed) together.
pub const COMMAND_BATCH_MAX: usize = 256;
/// Frames already received that are handled in one turn before writing again.
pub const READ_BATCH_MAX: usize = 256;
/// QUIC: frames from exchange streams queued for the link task at most.
pub const QUIC_INBOUND_QUEUE_MAX: usize = 4096;
/// QUIC: an exchange stream is read this long past its request's deadline, so a late
/// answer is still seen (and reported late) instead of being cut off.
pub const QUIC_LATE_ANSWER_GRACE_MS: u64 = 10_000;
/// QUIC: how long a stream the bank opened may take to deliver its message.
pub const QUIC_BANK_STREAM_READ_MS: u64 = 10_000;
/// QUIC: exchange and stream tasks of one connection at most (requests, answers on the
/// bank's streams, streams the bank opens). Each lives until its answer or its deadline
/// plus [`QUIC_LATE_ANSWER_GRACE_MS`]; beyond the bound a request is not sent (it ends
/// `NotSent`: nothing to reverse), an answer is dropped (the bank repeats its request) and
/// a stream the bank opens is refused.
pub const QUIC_STREAM_TASKS_MAX: usize = 4096;
/// QUIC: the application error code a stream refused at [`QUIC_STREAM_TASKS_MAX`] is
/// stopped with.
pub const QUIC_STREAM_REFUSED_CODE: u32 = 1;
/// How long closing a stream transport (TLS close_notify) may take.
pub const CLOSE_GRACE_MS: u64 = 500;

/// What a request sent on a link came to.
pub type Reply = Outcome;

/// Why a request could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("link not ready")]
    NotReady,
    #[error("link busy")]
    Busy,
    #[error("link task has stopped")]
    Closed,
}

impl From<SendError> for LinkError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NotReady => LinkError::NotReady,
            SendError::Busy(_) | SendError::KeyInUse | SendError::Unsignable => LinkError::Busy,
        }
    }
}

pub use crate::backoff::Backoff;

enum Command {
    Send {
        key: MatchKey,
        message: Bytes,
        timeout: Duration,
        reply: oneshot::Sender<Reply>,
    },
    SignOff,
    SignOn,
    /// An answer to a message the bank started, sent once its owner made it durable.
    Answer {
        header: Bytes,
        message: Bytes,
    },
}

#[derive(Debug)]
struct Shared {
    name: String,
    state: AtomicU8,
    in_flight: AtomicUsize,
    /// Moving average of answered round trips, microseconds (0 until the first answer).
    round_trip_us: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    mac_failures: AtomicU64,
}

fn state_code(s: LinkState) -> u8 {
    match s {
        LinkState::Connecting => 0,
        LinkState::SigningOn => 1,
        LinkState::Ready => 2,
        LinkState::Draining => 3,
        LinkState::Down => 4,
    }
}

fn state_of(code: u8) -> LinkState {
    match code {
        0 => LinkState::Connecting,
        1 => LinkState::SigningOn,
        2 => LinkState::Ready,
        3 => LinkState::Draining,
        _ => LinkState::Down,
    }
}

/// Something the link saw that its owner must act on.
#[derive(Debug)]
pub enum LinkNotice {
    /// A late answer (its request already timed out).
    Late { link: String, message: Message },
    /// A request or advice the bank started. Network management is answered already;
    /// anything else is answered through `responder` once it is durable (a bank repeats
    /// an unanswered advice, so an answer lost with a dropped link does no harm).
    Unsolicited {
        link: String,
        message: Message,
        responder: Responder,
    },
}

/// Sends the answer to one message the bank started, on the link it came from.
#[derive(Debug)]
pub struct Responder {
    tx: mpsc::WeakSender<Command>,
    header: Bytes,
}

impl Responder {
    /// Queues the answer; false if the link task has gone.
    pub async fn answer(self, message: Bytes) -> bool {
        match self.tx.upgrade() {
            Some(tx) => tx
                .send(Command::Answer {
                    header: self.header,
                    message,
                })
                .await
                .is_ok(),
            None => false,
        }
    }
}

/// A cheap, clonable handle to a running link.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl LinkHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn state(&self) -> LinkState {
        state_of(self.shared.state.load(Ordering::Relaxed))
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Moving average of this link's answered round trips, if it has had any.
    pub fn round_trip_us(&self) -> Option<u64> {
        Some(self.shared.round_trip_us.load(Ordering::Relaxed)).filter(|&v| v > 0)
    }

    /// Commands (requests, answers) waiting for the link task.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Transports established so far (dialled or accepted).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// Dial attempts that failed (refused, timed out, or the handshake was rejected).
    pub fn connect_failures(&self) -> u64 {
        self.shared.connect_failures.load(Ordering::Relaxed)
    }

    /// Messages from the bank dropped because their MAC was missing or wrong.
    pub fn mac_failures(&self) -> u64 {
        self.shared.mac_failures.load(Ordering::Relaxed)
    }

    /// Sends a request and waits for its outcome (answered, timed out or link lost).
    pub async fn send(
        &self,
        key: MatchKey,
        message: Bytes,
        timeout: Duration,
    ) -> Result<Reply, LinkError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Send {
                key,
                message,
                timeout,
                reply,
            })
            .await
            .map_err(|_| LinkError::Closed)?;
        // A dropped sender means the link task ended with the request in flight.
        Ok(rx.await.unwrap_or(Outcome::LinkLost))
    }

    /// Signs the link off (it stays off until [`sign_on`](Self::sign_on)).
    pub async fn sign_off(&self) {
        let _ = self.tx.send(Command::SignOff).await;
    }

    /// Reconnects and signs on a link that was signed off.
    pub async fn sign_on(&self) {
        let _ = self.tx.send(Command::SignOn).await;
    }
}

/// Starts a link that connects to `addr` over plain TCP.
pub fn spawn_tcp(
    config: LinkConfig,
    addr: SocketAddr,
    stans: Arc<StanAllocator>,
    backoff: Backoff,
    notices: mpsc::Sender<LinkNotice>,
    shutdown: CancellationToken,
) -> LinkHandle {
    let endpoint = LinkEndpoint::Connect {
        addr: addr.to_string(),
        connector: Connector::Tcp,
    };
    spawn_link(config, endpoint, stans, backoff, notices, shutdown)
}

/// Starts a link over any transport, dialling or accepting as `endpoint` says.
pub fn spawn_link(
    config: LinkConfig,
    endpoint: LinkEndpoint,
    stans: Arc<StanAllocator>,
    backoff: Backoff,
    notices: mpsc::Sender<LinkNotice>,
    shutdown: CancellationToken,
) -> LinkHandle {
    let (tx, rx) = mpsc::channel(LINK_COMMAND_QUEUE_MAX);
    let shared = Arc::new(Shared {
        name: config.name.clone(),
        state: AtomicU8::new(state_code(LinkState::Connecting)),
        in_flight: AtomicUsize::new(0),
        round_trip_us: AtomicU64::new(0),
        connects: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        mac_failures: AtomicU64::new(0),
    });
    let task = LinkTask {
        link: Link::new(config, stans, Instant::now()),
        replies: HashMap::new(),
        next_id: 0,
        shared: shared.clone(),
        notices,
        rx,
        weak_tx: tx.downgrade(),
        signed_off: false,
        close_reason: "closed",
    };
    tokio::spawn(task.run(endpoint, backoff, shutdown));
    LinkHandle { tx, shared }
}

/// Wall clock and monotonic clock read together.
pub fn now() -> Now {
    Now {
        mono: Instant::now(),
        transmission: codec::clock::transmission(codec::clock::unix_now()),
    }
}

struct LinkTask {
    link: Link,
    replies: HashMap<u64, oneshot::Sender<Reply>>,
    next_id: u64,
    shared: Arc<Shared>,
    notices: mpsc::Sender<LinkNotice>,
    rx: mpsc::Receiver<Command>,
    /// For responders: weak, so the task still ends when every handle is gone.
    weak_tx: mpsc::WeakSender<Command>,
    /// Signed off on command: do not reconnect until told to sign on.
    signed_off: bool,
    /// Why the current connection ended, for the log line that says it did.
    close_reason: &'static str,
}

/// What one turn of the connection loop ends with.
enum Flow {
    Continue,
    /// The connection is finished with.
    Close,
}

impl LinkTask {
    async fn run(mut self, endpoint: LinkEndpoint, backoff: Backoff, shutdown: CancellationToken) {
        let mut attempt = 0u32;
        let port = match &endpoint {
            LinkEndpoint::Connect { addr, .. } => addr.len() as u16,
            LinkEndpoint::Listen(l) => l.local_addr().port(),
        };
        let mut seed = Instant::now().elapsed().as_nanos() as u64
            ^ (port as u64) << 17
            ^ self.shared.name.len() as u64;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.signed_off {
                self.link.handle_connecting();
                self.publish();
                let conn = match &endpoint {
                    LinkEndpoint::Connect { addr, connector } => {
                        let connected = tokio::time::timeout(
                            Duration::from_millis(CONNECT_TIMEOUT_MS),
                            connector.connect(addr),
                        )
                        .await;
                        match connected {
                            Ok(Ok(c)) => {
                                tracing::info!(link = %self.shared.name, %addr, "bank link connected");
                                Some(c)
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(link = %self.shared.name, %addr, error = %e, "bank link connect failed");
                                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                                None
                            }
                            Err(_) => {
                                tracing::warn!(link = %self.shared.name, %addr, "bank link connect timed out");
                                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                                None
                            }
                        }
                    }
                    LinkEndpoint::Listen(l) => {
                        let l = l.clone();
                        self.accept(&l, &shutdown).await
                    }
                };
                if let Some(conn) = conn {
                    self.shared.connects.fetch_add(1, Ordering::Relaxed);
                    self.close_reason = "closed";
                    if self.serve(conn, &shutdown).await {
                        attempt = 0;
                    }
                    tracing::info!(link = %self.shared.name, reason = self.close_reason, "bank link connection closed");
                }
                self.link.handle_disconnected(now());
                self.drain_events();
                self.publish();
            }
            if shutdown.is_cancelled() {
                break;
            }
            // xorshift: jitter needs no quality, only spread.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let delay = if self.signed_off {
                Duration::from_secs(3600)
            } else if matches!(endpoint, LinkEndpoint::Listen(_)) {
                // The bank redials; there is nothing to back off from.
                Duration::ZERO
            } else {
                backoff.jittered(attempt, seed % 1001)
            };
            attempt = attempt.saturating_add(1);
            let wake = tokio::time::Instant::now() + delay;
            // While waiting, refuse sends at once rather than letting them queue.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    _ = shutdown.cancelled() => break,
                    cmd = self.rx.recv() => match cmd {
                        None => return,
                        Some(Command::Send { reply, .. }) => { let _ = reply.send(Outcome::NotSent); }
                        Some(Command::SignOn) => { self.signed_off = false; attempt = 0; break; }
                        Some(Command::SignOff) => self.signed_off = true,
                        // No connection to answer on: the bank repeats its advice.
                        Some(Command::Answer { .. }) => {}
                    },
                }
            }
        }
        self.link.handle_disconnected(now());
        self.drain_events();
        self.publish();
    }

    /// Listen mode: waits for the bank to connect, refusing sends meanwhile.
    async fn accept(
        &mut self,
        listener: &crate::transport::BankListener,
        shutdown: &CancellationToken,
    ) -> Option<Conn> {
        loop {
            tokio::select! {
                c = listener.next() => return c,
                _ = shutdown.cancelled() => return None,
                cmd = self.rx.recv() => match cmd {
                    None => return None,
                    Some(Command::Send { reply, .. }) => { let _ = reply.send(Outcome::NotSent); }
                    Some(Command::SignOff) => { self.signed_off = true; return None; }
                    Some(Command::SignOn) | Some(Command::Answer { .. }) => {}
                },
            }
        }
    }

    /// Runs one connection until it drops; returns whether it ever got ready.
    async fn serve(&mut self, conn: Conn, shutdown: &CancellationToken) -> bool {
        let dialect = self.link.config().dialect;
        let codec = FrameCodec::new(dialect.framing, dialect.max_message_len);
        let mut wire = match conn {
            Conn::Stream(io) => Wire::Stream(Framed::new(io, codec)),
            Conn::Quic(c, e) => Wire::Quic(QuicWire::new(c, e, codec)),
        };
        let was_ready = self.serve_wire(&mut wire, shutdown).await;
        wire.close().await;
        was_ready
    }

    async fn serve_wire(&mut self, wire: &mut Wire, shutdown: &CancellationToken) -> bool {
        self.link.handle_connected(now());
        let mut was_ready = false;
        let mut sign_off_deadline: Option<tokio::time::Instant> = None;
        loop {
            while let Some((frame, kind)) = self.link.poll_transmit_kind() {
                if self.transmit(wire, frame, kind).await.is_err() {
                    self.close_reason = "write failed";
                    return was_ready;
                }
            }
            if wire.flush().await.is_err() {
                self.close_reason = "write failed";
                return was_ready;
            }
            self.drain_events();
            self.publish();
            match self.link.state() {
                LinkState::Ready => was_ready = true,
                LinkState::Down => {
                    // Echo tests unanswered, sign-on refused, or signed off.
                    self.close_reason = "link down";
                    return was_ready;
                }
                _ => {}
            }
            let timer = self.link.poll_timeout().map(tokio::time::Instant::from_std);
            let wake = match (timer, sign_off_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let flow = tokio::select! {
                inbound = wire.next() => {
                    let mut flow = self.inbound(wire, inbound).await;
                    // Take what else has already arrived before writing again.
                    for _ in 1..READ_BATCH_MAX {
                        if !matches!(flow, Flow::Continue) {
                            break;
                        }
                        match wire.next().now_or_never() {
                            Some(inbound) => flow = self.inbound(wire, inbound).await,
                            None => break,
                        }
                    }
                    flow
                }
                cmd = self.rx.recv(), if sign_off_deadline.is_none() => {
                    let mut flow = self.command(cmd);
                    for _ in 1..COMMAND_BATCH_MAX {
                        if !matches!(flow, Flow::Continue) {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(cmd) => flow = self.command(Some(cmd)),
                            Err(_) => break,
                        }
                    }
                    flow
                }
                _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                    if sign_off_deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                        self.close_reason = "signed off for shutdown";
                        Flow::Close
                    } else {
                        self.link.handle_timeout(now());
                        Flow::Continue
                    }
                }
                _ = shutdown.cancelled(), if sign_off_deadline.is_none() => {
                    self.link.sign_off(now());
                    sign_off_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(SIGN_OFF_GRACE_MS));
                    Flow::Continue
                }
            };
            if let Flow::Close = flow {
                return was_ready;
            }
        }
    }

    /// Writes one frame; a request the wire has no room for ends `NotSent` in the link.
    async fn transmit(
        &mut self,
        wire: &mut Wire,
        frame: Frame,
        kind: TransmitKind,
    ) -> Result<(), String> {
        match wire.write(frame, kind).await? {
            Written::Yes => {}
            Written::NoRoom => {
                tracing::warn!(link = %self.shared.name, bound = QUIC_STREAM_TASKS_MAX,
                    "QUIC stream tasks at their bound: frame not sent");
                if let TransmitKind::Request { key, .. } = kind {
                    self.link.unsent(key);
                }
            }
        }
        Ok(())
    }

    async fn inbound(&mut self, wire: &mut Wire, inbound: Option<Result<Inbound, String>>) -> Flow {
        match inbound {
            Some(Ok(Inbound { frame, reply })) => {
                self.link.handle_frame(now(), frame);
                if let Some(send) = reply {
                    // Whatever the link wrote in answer belongs on the bank's stream.
                    let mut answers = Vec::new();
                    while let Some((frame, kind)) = self.link.poll_transmit_kind() {
                        match kind {
                            TransmitKind::Answer => answers.push(frame),
                            TransmitKind::Request { .. } => {
                                if self.transmit(wire, frame, kind).await.is_err() {
                                    return Flow::Close;
                                }
                            }
                        }
                    }
                    if let Wire::Quic(q) = wire {
                        q.answer_on(send, answers);
                    }
                }
                Flow::Continue
            }
            Some(Err(e)) => {
                tracing::warn!(link = %self.shared.name, error = %e, "bank link transport error");
                self.close_reason = "transport error";
                Flow::Close
            }
            None => {
                self.close_reason = "closed by bank";
                Flow::Close
            }
        }
    }

    fn command(&mut self, cmd: Option<Command>) -> Flow {
        match cmd {
            None => {
                self.close_reason = "link dropped by the switch";
                return Flow::Close;
            }
            Some(Command::Send {
                key,
                message,
                timeout,
                reply,
            }) => {
                self.next_id += 1;
                match self.link.send(now(), self.next_id, key, message, timeout) {
                    Ok(()) => {
                        self.replies.insert(self.next_id, reply);
                    }
                    Err(_) => {
                        let _ = reply.send(Outcome::NotSent);
                    }
                }
            }
            Some(Command::SignOff) => {
                self.signed_off = true;
                self.link.sign_off(now());
            }
            Some(Command::SignOn) => self.signed_off = false,
            Some(Command::Answer { header, message }) => self.link.answer(&header, message),
        }
        Flow::Continue
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.link.poll_event() {
            match ev {
                Event::Reply { id, outcome } => {
                    if let Some(tx) = self.replies.remove(&id) {
                        let _ = tx.send(outcome);
                    }
                }
                Event::StateChanged(s) => {
                    tracing::info!(link = %self.shared.name, state = s.as_str(), "bank link state")
                }
                Event::Late(message) => {
                    let notice = LinkNotice::Late {
                        link: self.shared.name.clone(),
                        message,
                    };
                    if self.notices.try_send(notice).is_err() {
                        tracing::warn!(link = %self.shared.name, "late answer dropped: notice queue full");
                    }
                }
                Event::Unsolicited { message, header } => {
                    let responder = Responder {
                        tx: self.weak_tx.clone(),
                        header,
                    };
                    let notice = LinkNotice::Unsolicited {
                        link: self.shared.name.clone(),
                        message,
                        responder,
                    };
                    if self.notices.try_send(notice).is_err() {
                        tracing::warn!(link = %self.shared.name, "bank message dropped: notice queue full");
                    }
                }
                Event::Garbage(e) => {
                    tracing::warn!(link = %self.shared.name, error = %e, "undecodable frame from bank")
                }
                Event::SignOnRefused(rc) => {
                    tracing::warn!(link = %self.shared.name, rc = %rc, "bank refused sign-on")
                }
                Event::BadMac { mti, stan, check } => {
                    self.shared.mac_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(link = %self.shared.name, %mti, stan = ?stan, check = ?check,
                        "bank message dropped: MAC missing or wrong (tampered, or keys differ)")
                }
            }
        }
    }

    fn publish(&self) {
        self.shared
            .state
            .store(state_code(self.link.state()), Ordering::Relaxed);
        self.shared
            .in_flight
            .store(self.link.in_flight(), Ordering::Relaxed);
        if let Some(rtt) = self.link.round_trip_us() {
            self.shared.round_trip_us.store(rtt, Ordering::Relaxed);
        }
    }
}

/// A frame received, and on QUIC the bank's stream to answer it on when the bank
/// started the exchange.
struct Inbound {
    frame: Frame,
    reply: Option<quinn::SendStream>,
}

/// Whether a frame was handed to the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// A per-exchange wire at its task bound ([`QUIC_STREAM_TASKS_MAX`]): not sent.
    NoRoom,
}

/// A connection as the link loop sees it.
enum Wire {
    Stream(Framed<Box<dyn Io>, FrameCodec>),
    Quic(QuicWire),
}

impl Wire {
    async fn write(&mut self, frame: Frame, kind: TransmitKind) -> Result<Written, String> {
        match self {
            Wire::Stream(f) => f
                .feed(frame)
                .await
                .map(|()| Written::Yes)
                .map_err(|e| e.to_string()),
            Wire::Quic(q) => Ok(q.start(frame, kind)),
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self {
            Wire::Stream(f) => SinkExt::<Frame>::flush(f).await.map_err(|e| e.to_string()),
            Wire::Quic(_) => Ok(()),
        }
    }

    /// The next frame; `None` when the connection is gone. Cancel-safe.
    async fn next(&mut self) -> Option<Result<Inbound, String>> {
        match self {
            Wire::Stream(f) => f.next().await.map(|r| {
                r.map(|frame| Inbound { frame, reply: None })
                    .map_err(|e| e.to_string())
            }),
            Wire::Quic(q) => tokio::select! {
                i = q.inbound_rx.recv() => i.map(Ok),
                e = q.conn.closed() => Some(Err(e.to_string())),
            },
        }
    }

    async fn close(self) {
        match self {
            Wire::Stream(mut f) => {
                let grace = Duration::from_millis(CLOSE_GRACE_MS);
                let _ = tokio::time::timeout(grace, async {
                    let _ = SinkExt::<Frame>::flush(&mut f).await;
                    let _ = f.get_mut().shutdown().await;
                })
                .await;
            }
            Wire::Quic(q) => {
                q.acceptor.abort();
                q.conn.close(quinn::VarInt::from_u32(0), b"link closed");
                // The connection is closed: every stream task ends at its next read.
                q.tasks.close();
                let grace = Duration::from_millis(CLOSE_GRACE_MS);
                let _ = tokio::time::timeout(grace, q.tasks.wait()).await;
            }
        }
    }
}

/// One QUIC connection: exchanges run as tasks, each on its own stream, and feed what
/// they read back to the link task.
struct QuicWire {
    conn: quinn::Connection,
    /// Kept so the socket lives as long as the connection.
    _endpoint: quinn::Endpoint,
    codec: FrameCodec,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: mpsc::Receiver<Inbound>,
    acceptor: JoinHandle<()>,
    /// Room for stream tasks ([`QUIC_STREAM_TASKS_MAX`]) and the tasks themselves.
    tasks: StreamTasks,
}

/// The bounded, tracked stream tasks of one QUIC connection.
#[derive(Clone)]
struct StreamTasks {
    room: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl StreamTasks {
    fn new() -> Self {
        Self::bounded(QUIC_STREAM_TASKS_MAX)
    }

    fn bounded(max: usize) -> Self {
        StreamTasks {
            room: Arc::new(Semaphore::new(max)),
            tracker: TaskTracker::new(),
        }
    }

    /// Room for one more task, if the bound allows.
    fn room(&self) -> Option<OwnedSemaphorePermit> {
        self.room.clone().try_acquire_owned().ok()
    }

    /// Runs `task` holding `permit` until it ends.
    fn spawn<F>(&self, permit: OwnedSemaphorePermit, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(async move {
            task.await;
            drop(permit);
        });
    }

    fn close(&self) {
        self.tracker.close();
    }

    async fn wait(&self) {
        self.tracker.wait().await;
    }
}

impl QuicWire {
    fn new(conn: quinn::Connection, endpoint: quinn::Endpoint, codec: FrameCodec) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(QUIC_INBOUND_QUEUE_MAX);
        let tasks = StreamTasks::new();
        let acceptor = tokio::spawn(accept_bank_streams(
            conn.clone(),
            codec,
            inbound_tx.clone(),
            tasks.clone(),
        ));
        QuicWire {
            conn,
            _endpoint: endpoint,
            codec,
            inbound_tx,
            inbound_rx,
            acceptor,
            tasks,
        }
    }

    /// A frame of the link's own: a request opens an exchange stream and reads its
    /// answer; an answer with no bank stream to go on gets a stream of its own. No room
    /// for another stream task: [`Written::NoRoom`], nothing sent.
    fn start(&self, frame: Frame, kind: TransmitKind) -> Written {
        let Some(permit) = self.tasks.room() else {
            return Written::NoRoom;
        };
        let mut buf = BytesMut::new();
        if self.codec.clone().encode(frame, &mut buf).is_err() {
            return Written::Yes;
        }
        let (conn, codec, tx) = (self.conn.clone(), self.codec, self.inbound_tx.clone());
        self.tasks.spawn(permit, async move {
            let Ok((mut send, recv)) = conn.open_bi().await else {
                return;
            };
            if send.write_all(&buf).await.is_err() || send.finish().is_err() {
                return;
            }
            let TransmitKind::Request { deadline, .. } = kind else {
                return;
            };
            let until = tokio::time::Instant::from_std(deadline)
                + Duration::from_millis(QUIC_LATE_ANSWER_GRACE_MS);
            let mut frames = FramedRead::new(recv, codec);
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, frames.next()).await {
                if tx.send(Inbound { frame, reply: None }).await.is_err() {
                    return;
                }
            }
        });
        Written::Yes
    }

    /// Writes the link's answers on the stream the bank opened, then ends it.
    fn answer_on(&self, mut send: quinn::SendStream, answers: Vec<Frame>) {
        let Some(permit) = self.tasks.room() else {
            // The bank repeats a request it has no answer to.
            tracing::warn!(
                bound = QUIC_STREAM_TASKS_MAX,
                "QUIC stream tasks at their bound: answer dropped"
            );
            let _ = send.reset(quinn::VarInt::from_u32(QUIC_STREAM_REFUSED_CODE));
            return;
        };
        let mut buf = BytesMut::new();
        for a in answers {
            if self.codec.clone().encode(a, &mut buf).is_err() {
                return;
            }
        }
        self.tasks.spawn(permit, async move {
            if send.write_all(&buf).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

/// Streams the bank opens: each carries one message (an echo, a sign-on, an advice).
async fn accept_bank_streams(
    conn: quinn::Connection,
    codec: FrameCodec,
    tx: mpsc::Sender<Inbound>,
    tasks: StreamTasks,
) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Some(permit) = tasks.room() else {
            tracing::warn!(
                bound = QUIC_STREAM_TASKS_MAX,
                "QUIC stream tasks at their bound: bank stream refused"
            );
            let code = quinn::VarInt::from_u32(QUIC_STREAM_REFUSED_CODE);
            let _ = recv.stop(code);
            let _ = send.reset(code);
            continue;
        };
        let tx = tx.clone();
        tasks.spawn(permit, async move {
            let mut frames = FramedRead::new(recv, codec);
            let wait = Duration::from_millis(QUIC_BANK_STREAM_READ_MS);
            let mut reply = Some(send);
            while let Ok(Some(Ok(frame))) = tokio::time::timeout(wait, frames.next()).await {
                // The first message is the one answered on this stream.
                if tx
                    .send(Inbound {
                        frame,
                        reply: reply.take(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(mut send) = reply {
                let _ = send.finish();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves stream tasks beyond the bound get no room, and a task's room comes back
    // when it ends.
    #[tokio::test]
    async fn stream_tasks_are_bounded() {
        let tasks = StreamTasks::bounded(1);
        let permit = tasks.room().expect("room for one");
        assert!(tasks.room().is_none(), "beyond the bound");
        let (done_tx, done_rx) = oneshot::channel::<()>();
        tasks.spawn(permit, async move {
            let _ = done_rx.await;
        });
        assert!(tasks.room().is_none(), "held while the task runs");
        done_tx.send(()).unwrap();
        tasks.close();
        tasks.wait().await;
        assert!(tasks.room().is_some(), "given back when it ended");
    }
}
