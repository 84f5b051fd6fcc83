//! The careful merchant of a chaos run: orders at a steady rate over a few connections,
//! each request retransmitted (as its repeat MTI) until it has a final answer or the
//! policy gives up ([`super::plan::next_step`]); connections are re-established whenever
//! the switch goes away. Every answer is kept, late ones included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use codec::{Dialect, Frame, FrameCodec, Message, OwnedMessage, builtin};
use futures::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::plan::{self, Event, RetryPolicy, Step};
use super::verdict::{AnswerSeen, MerchantLog, OrderLog, RequestLog};
use crate::merchant::{self, MatchKey, Merchant};

/// Frames queued for one connection's writer.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Orders in progress at once at most; the schedule waits beyond it (and says so).
pub const ORDERS_IN_FLIGHT_MAX: usize = 20_000;
/// Answers kept at most (a 120 s run at 150/s with every retransmission is far below).
pub const ANSWER_LOG_MAX: usize = 2_000_000;
/// Pause between attempts to connect while the switch is down.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// How long one connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the first connections may take before the run fails.
pub const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How often progress is printed (stderr).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("could not connect to the switch at {0} within {FIRST_CONNECT_WAIT:?}")]
    NoConnection(SocketAddr),
    #[error("rate must be at least 1 order a second")]
    Rate,
}

/// What `chaos-merchant run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub addr: SocketAddr,
    pub merchant: Merchant,
    pub rate_per_s: u32,
    pub duration: Duration,
    pub connections: usize,
    pub policy: RetryPolicy,
}

/// One connection to the switch; it closes for good when `closed` fires.
struct Conn {
    tx: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<MatchKey, oneshot::Sender<AnswerSeen>>>,
    closed: CancellationToken,
}

impl Conn {
    fn pending(&self) -> MutexGuard<'_, HashMap<MatchKey, oneshot::Sender<AnswerSeen>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What every task of a run shares.
struct Shared {
    cfg: RunConfig,
    dialect: &'static Dialect,
    t0: Instant,
    stan: AtomicU32,
    answers: Mutex<Vec<(MatchKey, AnswerSeen)>>,
    answers_dropped: AtomicU64,
    slots: Vec<watch::Receiver<Option<Arc<Conn>>>>,
    finals: AtomicU64,
}

impl Shared {
    fn since_start_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn keep_answer(&self, key: MatchKey, a: AnswerSeen) {
        let mut log = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < ANSWER_LOG_MAX {
            log.push((key, a));
        } else {
            self.answers_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The slot's live connection, waiting for one until `deadline`.
    async fn conn(&self, slot: usize, deadline: Instant) -> Option<Arc<Conn>> {
        let mut rx = self.slots[slot % self.slots.len()].clone();
        loop {
            if let Some(c) = rx
                .borrow_and_update()
                .clone()
                .filter(|c| !c.closed.is_cancelled())
            {
                return Some(c);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

fn answer_of(m: &Message, at_ms: u64) -> AnswerSeen {
    let text = |n| m.get_str(n).map(|s| s.trim_end().to_owned());
    AnswerSeen {
        code: text(39).unwrap_or_else(|| "--".into()),
        rrn: text(37),
        auth: text(38),
        at_ms,
    }
}

async fn connect(shared: &Arc<Shared>) -> std::io::Result<Arc<Conn>> {
    let addr = shared.cfg.addr;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let d = shared.dialect;
    let codec = FrameCodec::new(d.framing, d.max_message_len);
    let (rd, wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Frame>(WRITE_QUEUE_MAX);
    let conn = Arc::new(Conn {
        tx,
        pending: Mutex::new(HashMap::new()),
        closed: CancellationToken::new(),
    });
    let (c, mut writer) = (conn.clone(), FramedWrite::new(wr, codec));
    tokio::spawn(async move {
        while let Some(frame) =
            tokio::select! { f = rx.recv() => f, _ = c.closed.cancelled() => None }
        {
            if writer.send(frame).await.is_err() {
                break;
            }
        }
        c.closed.cancel();
    });
    let (c, s, mut reader) = (conn.clone(), shared.clone(), FramedRead::new(rd, codec));
    tokio::spawn(async move {
        loop {
            let next = tokio::select! { n = reader.next() => n, _ = c.closed.cancelled() => None };
            let Some(Ok(frame)) = next else { break };
            let Ok(m) = s.dialect.decode(frame.message) else {
                continue;
            };
            let Some(key) = MatchKey::of_message(&m) else {
                continue;
            };
            let a = answer_of(&m, s.since_start_ms());
            s.keep_answer(key.clone(), a.clone());
            if let Some(waiter) = c.pending().remove(&key) {
                let _ = waiter.send(a);
            }
        }
        c.closed.cancel();
        // Waiters learn that their connection is gone.
        c.pending().clear();
    });
    Ok(conn)
}

/// Keeps one slot connected until `stop`.
async fn keep_connected(
    shared: Arc<Shared>,
    slot: watch::Sender<Option<Arc<Conn>>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let conn = match connect(&shared).await {
            Ok(c) => c,
            Err(_) => {
                tokio::select! { _ = tokio::time::sleep(RECONNECT_PAUSE) => {}, _ = stop.cancelled() => {} }
                continue;
            }
        };
        slot.send_replace(Some(conn.clone()));
        tokio::select! { _ = conn.closed.cancelled() => {}, _ = stop.cancelled() => conn.closed.cancel() }
        slot.send_replace(None);
    }
}

/// One send and what came of it.
async fn exchange(
    shared: &Shared,
    conn: &Conn,
    msg: &OwnedMessage,
    key: &MatchKey,
) -> Result<AnswerSeen, Event<'static>> {
    let bytes = msg
        .encode_with_mac(shared.dialect, &shared.cfg.merchant.key)
        .expect("the chaos messages are well formed");
    let (tx, rx) = oneshot::channel();
    conn.pending().insert(key.clone(), tx);
    let frame = Frame {
        header: Bytes::new(),
        message: bytes,
    };
    if conn.tx.send(frame).await.is_err() {
        conn.pending().remove(key);
        return Err(Event::ConnectionLost);
    }
    let wait = Duration::from_millis(shared.cfg.policy.answer_timeout_ms);
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(_)) => Err(Event::ConnectionLost),
        Err(_) => {
            conn.pending().remove(key);
            Err(Event::Silence)
        }
    }
}

/// Sends `msg` on `slot` and retransmits it until a final answer or the policy gives up.
async fn request(shared: &Shared, slot: usize, msg: OwnedMessage) -> RequestLog {
    let key = MatchKey::of_owned(&msg).expect("chaos messages carry DE7, DE11 and DE41");
    let policy = shared.cfg.policy;
    let first = Instant::now();
    let give_up_at = first + Duration::from_millis(policy.give_up_ms);
    let repeat = merchant::repeat_of(&msg);
    let mut log = RequestLog {
        mti: msg.mti.as_str().to_owned(),
        stan: key.stan.clone(),
        de7: key.de7.clone(),
        ..RequestLog::default()
    };
    while let Some(conn) = shared.conn(slot, give_up_at).await {
        let outcome = exchange(
            shared,
            &conn,
            if log.sends == 0 { &msg } else { &repeat },
            &key,
        )
        .await;
        log.sends += 1;
        let event = match &outcome {
            Ok(a) => Event::Answer(&a.code),
            Err(e) => *e,
        };
        match plan::next_step(event, first.elapsed().as_millis() as u64, &policy) {
            Step::Done => {
                log.final_answer = outcome.ok();
                shared.finals.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Step::Retransmit { after_ms } => {
                tokio::time::sleep(Duration::from_millis(after_ms)).await
            }
            Step::GiveUp => break,
        }
    }
    log
}

/// One order: the purchase, then its reversal when the plan says so and it was approved.
async fn order(shared: Arc<Shared>, index: u64) -> OrderLog {
    let p = plan::order_plan(index);
    let slot = index as usize;
    let merchant_id = shared.cfg.merchant.id.clone();
    let stan = shared.stan.fetch_add(1, Ordering::Relaxed);
    let purchase = request(
        &shared,
        slot,
        plan::purchase_message(&merchant_id, &p, stan, merchant::de7_now()),
    )
    .await;
    let approved = purchase
        .final_answer
        .as_ref()
        .is_some_and(|a| a.code == "00");
    let reversal = if p.reverse_if_approved && approved {
        let stan = shared.stan.fetch_add(1, Ordering::Relaxed);
        let original = (purchase.stan.as_str(), purchase.de7.as_str());
        let msg = plan::reversal_message(&merchant_id, &p, original, stan, merchant::de7_now());
        Some(request(&shared, slot, msg).await)
    } else {
        None
    };
    OrderLog {
        index,
        order_ref: p.order_ref,
        terminal: p.terminal,
        amount_minor: p.amount_minor,
        purchase,
        reversal,
    }
}

/// Runs the orders for the configured time, waits for every order to end, and returns
/// the merchant's record.
pub async fn run(cfg: RunConfig) -> Result<MerchantLog, RunError> {
    if cfg.rate_per_s == 0 {
        return Err(RunError::Rate);
    }
    let stop = CancellationToken::new();
    let (senders, slots): (Vec<_>, Vec<_>) = (0..cfg.connections.max(1))
        .map(|_| watch::channel(None))
        .unzip();
    let shared = Arc::new(Shared {
        cfg,
        dialect: builtin::merchant(),
        t0: Instant::now(),
        stan: AtomicU32::new(1),
        answers: Mutex::new(Vec::new()),
        answers_dropped: AtomicU64::new(0),
        slots,
        finals: AtomicU64::new(0),
    });
    for s in senders {
        tokio::spawn(keep_connected(shared.clone(), s, stop.clone()));
    }
    for slot in 0..shared.slots.len() {
        if shared
            .conn(slot, Instant::now() + FIRST_CONNECT_WAIT)
            .await
            .is_none()
        {
            stop.cancel();
            return Err(RunError::NoConnection(shared.cfg.addr));
        }
    }
    let orders = schedule(&shared).await;
    stop.cancel();
    Ok(merchant_log(&shared, orders))
}

/// Starts orders at the configured rate for the configured time; returns them all ended.
async fn schedule(shared: &Arc<Shared>) -> Vec<OrderLog> {
    let cfg = &shared.cfg;
    let every = Duration::from_secs(1) / cfg.rate_per_s;
    let start = Instant::now();
    let end = start + cfg.duration;
    let room = Arc::new(Semaphore::new(ORDERS_IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    let mut next_progress = start + PROGRESS_EVERY;
    let mut index = 0u64;
    let mut orders = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep_until(start + every * (index as u32)).await;
        let permit = room.clone().acquire_owned().await.expect("never closed");
        let s = shared.clone();
        tasks.spawn(async move {
            let o = order(s, index).await;
            drop(permit);
            o
        });
        index += 1;
        // Ended orders are collected as they end, so the set holds the open ones.
        while let Some(r) = tasks.try_join_next() {
            orders.push(r.expect("an order task panicked"));
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            progress(shared, index, tasks.len());
        }
    }
    eprintln!(
        "chaos-merchant: {index} orders started; waiting for the {} still open",
        tasks.len()
    );
    while let Some(r) = tasks.join_next().await {
        orders.push(r.expect("an order task panicked"));
    }
    orders.sort_by_key(|o| o.index);
    orders
}

fn progress(shared: &Shared, started: u64, open: usize) {
    let answers = shared.answers.lock().map(|l| l.len()).unwrap_or(0);
    let finals = shared.finals.load(Ordering::Relaxed);
    let connected = shared
        .slots
        .iter()
        .filter(|s| {
            s.borrow()
                .as_ref()
                .is_some_and(|c| !c.closed.is_cancelled())
        })
        .count();
    eprintln!(
        "chaos-merchant: {:>4} s: {started} orders started, {open} open, {finals} final answers, {answers} answers, {connected}/{} connected",
        shared.t0.elapsed().as_secs(),
        shared.slots.len()
    );
}

/// The orders with every answer kept for their requests' identities.
fn merchant_log(shared: &Shared, mut orders: Vec<OrderLog>) -> MerchantLog {
    let log = std::mem::take(&mut *shared.answers.lock().unwrap_or_else(|e| e.into_inner()));
    let mut by_key: HashMap<MatchKey, Vec<AnswerSeen>> = HashMap::new();
    for (k, a) in log {
        by_key.entry(k).or_default().push(a);
    }
    for o in &mut orders {
        let terminal = o.terminal.clone();
        for r in std::iter::once(&mut o.purchase).chain(o.reversal.as_mut()) {
            let key = MatchKey {
                stan: r.stan.clone(),
                de7: r.de7.clone(),
                terminal: terminal.clone(),
            };
            r.answers = by_key.remove(&key).unwrap_or_default();
        }
    }
    let dropped = shared.answers_dropped.load(Ordering::Relaxed);
    MerchantLog {
        merchant: shared.cfg.merchant.id.clone(),
        policy: shared.cfg.policy,
        orders,
        unmatched_answers: by_key.values().map(|v| v.len() as u64).sum::<u64>() + dropped,
    }
}
