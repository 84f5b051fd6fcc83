//! The ledger poster: writes the postings of approved purchases after their commit
//! (migrations/V18__postings_after_the_commit.sql).
//!
//! The journal's commit of an approval appends its settlement, with the business day its
//! postings belong to, and leaves its `in_doubt` row; the merchant's answer waits for
//! that commit only. This worker then writes the postings of what was settled, in
//! batches, a few times a second ([`POST_INTERVAL_MS`]); each instance posts its own (an
//! instance taken over is adopted with its pending approvals, [`crate::lease`]). Whoever ends an approval's doubt
//! posts it, in the same statement: this worker, or a payment's lock (a reversal, a void,
//! a bank's advice), so each approval is posted exactly once, and before anything negates
//! it. `switchyard ledger check` and `ledger totals` post what is pending before they
//! read.
//!
//! Why after the commit: the postings and the `in_doubt` deletion were about a quarter of
//! the journal's commit time at 5,000 purchases/s (docs/loadtest.md), and every merchant
//! answer waits for two commits.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// The poster looks for settled approvals this often while it keeps up. Every read of the
/// ledger posts what is pending first, so no report lags the journal.
pub const POST_INTERVAL_MS: u64 = 100;
/// Approvals posted per statement at most: a round that fills it goes on at once.
pub const POST_BATCH_MAX: i64 = 5_000;
/// After a failed round (the database unreachable), the poster tries again this late.
pub const POST_RETRY_MS: u64 = 1_000;
/// Rounds at shutdown at most, posting what the last commits settled.
pub const SHUTDOWN_ROUNDS_MAX: usize = 4;

/// What a round of the poster found: how many approvals it posted, or that it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    Posted(u64),
    Failed,
}

/// How long the poster waits before its next round, after `round` with batches of
/// `batch_max`: none while a backlog fills whole batches, [`POST_RETRY_MS`] after a
/// failure, [`POST_INTERVAL_MS`] otherwise.
pub fn next_round_in(round: Round, batch_max: i64) -> Duration {
    assert!(batch_max > 0, "a batch of postings has room");
    match round {
        Round::Failed => Duration::from_millis(POST_RETRY_MS),
        Round::Posted(n) if n >= batch_max as u64 => Duration::ZERO,
        Round::Posted(_) => Duration::from_millis(POST_INTERVAL_MS),
    }
}

/// Posts the approvals instance `instance_id` settled until `shutdown`, then posts what
/// the last commits settled (at most [`SHUTDOWN_ROUNDS_MAX`] rounds).
pub async fn run(
    store: Arc<dyn Store>,
    instance_id: i16,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut wait = Duration::from_millis(POST_INTERVAL_MS);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = next_round_in(round(&*store, instance_id, &metrics).await, POST_BATCH_MAX);
    }
    for _ in 0..SHUTDOWN_ROUNDS_MAX {
        if next_round_in(round(&*store, instance_id, &metrics).await, POST_BATCH_MAX)
            != Duration::ZERO
        {
            break;
        }
    }
}

/// One statement of the poster ([`Store::post_settled`]), counted.
async fn round(store: &dyn Store, instance_id: i16, metrics: &Metrics) -> Round {
    match store.post_settled(instance_id, POST_BATCH_MAX).await {
        Ok(n) => {
            metrics.approvals_posted.inc_by(n);
            Round::Posted(n)
        }
        Err(e) => {
            metrics.poster_failures.inc();
            tracing::warn!(error = %e, "could not post settled approvals; trying again");
            Round::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the poster's pacing: at once while batches come back full, at its interval
    // while it keeps up, and later after a failure.
    #[test]
    fn the_poster_goes_on_at_once_only_behind_a_backlog() {
        assert_eq!(next_round_in(Round::Posted(10), 10), Duration::ZERO);
        assert_eq!(
            next_round_in(Round::Posted(9), 10),
            Duration::from_millis(POST_INTERVAL_MS)
        );
        assert_eq!(
            next_round_in(Round::Posted(0), 10),
            Duration::from_millis(POST_INTERVAL_MS)
        );
        assert_eq!(
            next_round_in(Round::Failed, 10),
            Duration::from_millis(POST_RETRY_MS)
        );
    }
}
