//! The tokio shell around a [`Link`]: one task owns the link and its TCP connection,
//! reconnects with bounded exponential backoff and jitter, and hands replies back to
//! callers through oneshot channels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::{FrameCodec, Message};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::link::{Event, Link, LinkConfig, LinkState, MatchKey, Now, Outcome, SendError};
use crate::stan::StanAllocator;

/// Commands queued to one link task at most; senders wait (back-pressure) beyond it.
pub const LINK_COMMAND_QUEUE_MAX: usize = 4096;
/// Late answers and bank-initiated messages queued for the owner at most; more are dropped
/// (and counted) rather than stalling the link.
pub const LINK_EVENT_QUEUE_MAX: usize = 4096;
/// How long a connect attempt may take.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How long a sign-off may take on shutdown before the connection is dropped.
pub const SIGN_OFF_GRACE_MS: u64 = 2_000;

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
            SendError::Busy(_) | SendError::KeyInUse => LinkError::Busy,
        }
    }
}

/// Bounded exponential backoff with jitter: `min * 2^attempt`, capped at `max`, then
/// scaled by a factor in [0.5, 1.0] so that many links do not reconnect in lockstep.
pub fn backoff_delay(attempt: u32, min_ms: u64, max_ms: u64, jitter_permille: u64) -> Duration {
    let exp = min_ms.saturating_mul(1u64 << attempt.min(20)).min(max_ms);
    let jitter = 500 + jitter_permille.min(1000) / 2;
    Duration::from_millis(exp * jitter / 1000)
}

/// Reconnect timing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min_ms: u64,
    pub max_ms: u64,
}

enum Command {
    Send {
        key: MatchKey,
        message: Bytes,
        timeout: Duration,
        reply: oneshot::Sender<Reply>,
    },
    SignOff,
    SignOn,
}

#[derive(Debug)]
struct Shared {
    name: String,
    state: AtomicU8,
    in_flight: AtomicUsize,
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
    /// A request or advice the bank started.
    Unsolicited { link: String, message: Message },
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

/// Starts a link that connects to `addr`.
pub fn spawn_tcp(
    config: LinkConfig,
    addr: SocketAddr,
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
    });
    let task = LinkTask {
        link: Link::new(config, stans, Instant::now()),
        replies: HashMap::new(),
        next_id: 0,
        shared: shared.clone(),
        notices,
        rx,
        signed_off: false,
    };
    tokio::spawn(task.run(addr, backoff, shutdown));
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
    /// Signed off on command: do not reconnect until told to sign on.
    signed_off: bool,
}

impl LinkTask {
    async fn run(mut self, addr: SocketAddr, backoff: Backoff, shutdown: CancellationToken) {
        let mut attempt = 0u32;
        let mut seed = Instant::now().elapsed().as_nanos() as u64 ^ (addr.port() as u64) << 17;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.signed_off {
                self.link.handle_connecting();
                self.publish();
                let connected = tokio::time::timeout(
                    Duration::from_millis(CONNECT_TIMEOUT_MS),
                    TcpStream::connect(addr),
                )
                .await;
                if let Ok(Ok(stream)) = connected {
                    let _ = stream.set_nodelay(true);
                    let dialect = self.link.config().dialect;
                    let framed = Framed::new(
                        stream,
                        FrameCodec::new(dialect.framing, dialect.max_message_len),
                    );
                    let was_ready = self.serve(framed, &shutdown).await;
                    if was_ready {
                        attempt = 0;
                    }
                } else {
                    tracing::warn!(link = %self.shared.name, %addr, "bank link connect failed");
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
            } else {
                backoff_delay(attempt, backoff.min_ms, backoff.max_ms, seed % 1001)
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
                        Some(Command::Send { reply, .. }) => { let _ = reply.send(Outcome::LinkLost); }
                        Some(Command::SignOn) => { self.signed_off = false; attempt = 0; break; }
                        Some(Command::SignOff) => self.signed_off = true,
                    },
                }
            }
        }
        self.link.handle_disconnected(now());
        self.drain_events();
        self.publish();
    }

    /// Runs one connection until it drops; returns whether it ever got ready.
    async fn serve(
        &mut self,
        mut framed: Framed<TcpStream, FrameCodec>,
        shutdown: &CancellationToken,
    ) -> bool {
        self.link.handle_connected(now());
        let mut was_ready = false;
        let mut sign_off_deadline: Option<tokio::time::Instant> = None;
        loop {
            while let Some(frame) = self.link.poll_transmit() {
                if framed.feed(frame).await.is_err() {
                    return was_ready;
                }
            }
            if SinkExt::<codec::Frame>::flush(&mut framed).await.is_err() {
                return was_ready;
            }
            self.drain_events();
            self.publish();
            match self.link.state() {
                LinkState::Ready => was_ready = true,
                LinkState::Down => return was_ready,
                _ => {}
            }
            let timer = self.link.poll_timeout().map(tokio::time::Instant::from_std);
            let wake = match (timer, sign_off_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                frame = framed.next() => match frame {
                    Some(Ok(frame)) => self.link.handle_frame(now(), frame),
                    Some(Err(e)) => {
                        tracing::warn!(link = %self.shared.name, error = %e, "bank link framing error");
                        return was_ready;
                    }
                    None => return was_ready,
                },
                cmd = self.rx.recv(), if sign_off_deadline.is_none() => match cmd {
                    None => return was_ready,
                    Some(Command::Send { key, message, timeout, reply }) => {
                        self.next_id += 1;
                        match self.link.send(now(), self.next_id, key, message, timeout) {
                            Ok(()) => { self.replies.insert(self.next_id, reply); }
                            Err(_) => { let _ = reply.send(Outcome::LinkLost); }
                        }
                    }
                    Some(Command::SignOff) => {
                        self.signed_off = true;
                        self.link.sign_off(now());
                    }
                    Some(Command::SignOn) => self.signed_off = false,
                },
                _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                    if sign_off_deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                        return was_ready;
                    }
                    self.link.handle_timeout(now());
                }
                _ = shutdown.cancelled(), if sign_off_deadline.is_none() => {
                    self.link.sign_off(now());
                    sign_off_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(SIGN_OFF_GRACE_MS));
                }
            }
        }
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
                Event::Unsolicited(message) => {
                    let notice = LinkNotice::Unsolicited {
                        link: self.shared.name.clone(),
                        message,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves backoff doubles, is capped, and jitter keeps it within [half, full].
    #[test]
    fn backoff_bounds() {
        assert_eq!(
            backoff_delay(0, 100, 10_000, 1000),
            Duration::from_millis(100)
        );
        assert_eq!(
            backoff_delay(3, 100, 10_000, 1000),
            Duration::from_millis(800)
        );
        assert_eq!(
            backoff_delay(30, 100, 10_000, 1000),
            Duration::from_millis(10_000)
        );
        assert_eq!(
            backoff_delay(30, 100, 10_000, 0),
            Duration::from_millis(5_000)
        );
    }
}
