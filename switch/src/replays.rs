//! Recorded answers copied to Redis for replays, in batches, off the request path.
//!
//! A recorded answer is durable in PostgreSQL before the merchant gets it, and a
//! retransmission can always be answered from there. A copy in Redis keeps
//! retransmissions answered while PostgreSQL is away, and spares it the lookups. The copy
//! is written by one task that takes every answer queued and writes them in ONE pipelined
//! round trip, so the request path keeps one Redis round trip of its own (the claim).
//! The copy is best effort: when the queue is full or Redis fails, it is skipped and
//! counted; the record still answers.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::limiter::Limiter;
use crate::metrics::Metrics;

/// Answers waiting to be copied at most: about a second of answers at 10,000 purchases/s;
/// beyond it a copy is skipped rather than making a request wait.
pub const REPLAY_QUEUE_MAX: usize = 16_384;
/// Answers written in one pipeline at most.
pub const REPLAY_BATCH_MAX: usize = 512;

/// The handle requests use: `(request key, Redis value)` pairs.
#[derive(Debug, Clone)]
pub struct Replays {
    tx: mpsc::Sender<(String, String)>,
    metrics: Arc<Metrics>,
}

impl Replays {
    /// Starts the writer; it ends, after writing what is queued, when every handle is
    /// dropped.
    pub fn start(
        limiter: Limiter,
        metrics: Arc<Metrics>,
    ) -> (Replays, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(REPLAY_QUEUE_MAX);
        let task = tokio::spawn(run(rx, limiter, metrics.clone()));
        (Replays { tx, metrics }, task)
    }

    /// Queues a copy of `value` under `key`; never waits.
    pub fn copy(&self, key: String, value: String) {
        if self.tx.try_send((key, value)).is_err() {
            self.metrics.redis_errors.inc();
        }
    }
}

async fn run(mut rx: mpsc::Receiver<(String, String)>, limiter: Limiter, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(REPLAY_BATCH_MAX);
    while rx.recv_many(&mut batch, REPLAY_BATCH_MAX).await > 0 {
        debug_assert!(batch.len() <= REPLAY_BATCH_MAX);
        if let Err(e) = limiter.store_answers(&batch).await {
            metrics.redis_errors.inc();
            tracing::warn!(error = %e, answers = batch.len(), "answers not copied to redis (PostgreSQL has them)");
        }
        batch.clear();
    }
}
