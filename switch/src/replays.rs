//! Recorded answers copied to Redis for replays, in batches, off the request path.
//!
//! A recorded answer is durable in PostgreSQL before the merchant gets it, and a
//! retransmission can always be answered from there. A copy in Redis keeps
//! retransmissions answered while PostgreSQL is away, and spares it the lookups. The copy
//! is written by one task that takes every answer queued and writes them in ONE pipelined
//! round trip, so the request path keeps one Redis round trip of its own (the claim).
//! The copy is best effort: when the queue is full or Redis fails, it is skipped and
//! counted; the record still answers.
//!
//! The same writer settles the keys of answers that are not recorded (refusals kept as the
//! key's answer, claims released after a `96`): each comes with the request's in-flight
//! guard, resolved once Redis has the key's new value, so that a retransmission arriving
//! meanwhile still gets the answer here. One bounded queue, no task per request.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::answer::Answer;
use crate::inflight::InFlightGuard;
use crate::limiter::{Claims, KeyWrite};
use crate::metrics::Metrics;

/// One key to write, and the request to resolve once it is written.
type Queued = (KeyWrite, Option<(InFlightGuard, Answer)>);

/// Answers waiting to be copied at most: about a second of answers at 10,000 purchases/s;
/// beyond it a copy is skipped rather than making a request wait.
pub const REPLAY_QUEUE_MAX: usize = 16_384;
/// Answers written in one pipeline at most.
pub const REPLAY_BATCH_MAX: usize = 512;

/// The handle requests use: `(request key, Redis value)` pairs.
#[derive(Debug, Clone)]
pub struct Replays {
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

impl Replays {
    /// Starts the writer; it ends, after writing what is queued, when every handle is
    /// dropped.
    pub fn start(
        limiter: Arc<dyn Claims>,
        metrics: Arc<Metrics>,
    ) -> (Replays, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(REPLAY_QUEUE_MAX);
        let task = tokio::spawn(run(rx, limiter, metrics.clone()));
        (Replays { tx, metrics }, task)
    }

    /// Queues a copy of `value` under `key`; never waits.
    pub fn copy(&self, key: String, value: String) {
        if self
            .tx
            .try_send((KeyWrite::Store(key, value), None))
            .is_err()
        {
            self.metrics.redis_errors.inc();
        }
    }

    /// Queues `write` for a request whose answer is not recorded; `guard` is resolved with
    /// `answer` once Redis has it (at once if the queue is full: the write is skipped and
    /// counted). Never waits.
    pub fn settle(&self, write: KeyWrite, guard: InFlightGuard, answer: Answer) {
        if let Err(e) = self.tx.try_send((write, Some((guard, answer)))) {
            self.metrics.redis_errors.inc();
            let (_, waiting) = e.into_inner();
            if let Some((guard, answer)) = waiting {
                guard.resolve(answer);
            }
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Queued>, limiter: Arc<dyn Claims>, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(REPLAY_BATCH_MAX);
    let mut writes = Vec::with_capacity(REPLAY_BATCH_MAX);
    while rx.recv_many(&mut batch, REPLAY_BATCH_MAX).await > 0 {
        debug_assert!(batch.len() <= REPLAY_BATCH_MAX);
        writes.extend(batch.iter().map(|(w, _)| w.clone()));
        if let Err(e) = limiter.write_keys(&writes).await {
            metrics.redis_errors.inc();
            tracing::warn!(error = %e, keys = writes.len(), "request keys not written to redis (PostgreSQL has what is recorded)");
        }
        for (_, waiting) in batch.drain(..) {
            if let Some((guard, answer)) = waiting {
                guard.resolve(answer);
            }
        }
        writes.clear();
    }
}
