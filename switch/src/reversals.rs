//! Store-and-forward of reversals, and recovery after a crash.
//!
//! A reversal row is written (in the same commit as the outcome that needs it) before
//! the first send. One worker per bank claims due rows in order with a lease (so two
//! instances never send the same one at once), sends 0400 the first time and 0401
//! after, and repeats with backoff until the bank answers or the row grows too old,
//! when it is marked `expired` for an operator.

use std::sync::Arc;
use std::time::Duration;

use bank_links::{Bank, Outcome};
use codec::{MessageBuilder, Mti};
use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crypto::{Purpose, Vault, split_card};
use crate::db::DbError;

/// Reversals claimed per round.
pub const REVERSAL_CLAIM_BATCH: i64 = 64;
/// A worker looks for due reversals at least this often even when not woken.
pub const REVERSAL_POLL_MS: u64 = 1_000;
/// Backoff between repeats of one reversal: doubling from the bank timeout up to this.
pub const REVERSAL_BACKOFF_MAX_MS: u64 = 60_000;

/// Marks every transaction this instance left without an outcome as reversing, with a
/// reversal to send. Runs before traffic is accepted; returns how many were found.
pub async fn recover(pool: &Pool, instance_id: i16) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "WITH d AS (
               DELETE FROM in_doubt WHERE instance_id = $1 RETURNING transaction_id
             ), r AS (
               UPDATE transactions t SET state = 'reversing', response_code = '91', updated_at = now()
               FROM d WHERE t.id = d.transaction_id AND t.state = 'authorising' AND t.bank_id IS NOT NULL
               RETURNING t.id, t.bank_id)
             INSERT INTO reversals (transaction_id, bank_id, reason)
             SELECT id, bank_id, 'recovery' FROM r ON CONFLICT (transaction_id, kind) DO NOTHING",
            &[&instance_id],
        )
        .await?;
    Ok(n)
}

/// What a reversal worker needs.
#[derive(Debug, Clone)]
pub struct ReversalWorker {
    pub pool: Pool,
    pub bank: Bank,
    pub vault: Arc<Vault>,
    pub acquirer_id: String,
    pub max_age_ms: u64,
    pub wake: Arc<Notify>,
}

struct Due {
    reversal_id: i64,
    /// An advice (a completion, 0220) rather than a reversal (0400).
    advice: bool,
    /// The original as the bank saw it, for DE90: a reversal names the transaction it
    /// undoes, an advice the pre-authorisation it completes.
    original_mti: String,
    original_bank_stan: Option<String>,
    original_bank_de7: Option<String>,
    attempts: i32,
    age_ms: i64,
    processing_code: String,
    amount_minor: i64,
    currency: i16,
    rrn: String,
    terminal_id: String,
    merchant_id: String,
    card_enc: Option<Vec<u8>>,
    /// The DE11 and DE7 recorded for the first send (advices: so that DE90 of a later
    /// reversal names the completion as the bank first saw it).
    first_stan: Option<String>,
    first_de7: Option<String>,
}

/// The pause before repeat number `attempts`.
pub fn reversal_backoff_ms(attempts: u32, base_ms: u64) -> u64 {
    base_ms
        .saturating_mul(1u64 << attempts.min(16))
        .min(REVERSAL_BACKOFF_MAX_MS)
}

impl ReversalWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let more = match self.round().await {
                Ok(more) => more,
                Err(e) => {
                    tracing::warn!(bank = %self.bank.config.id, error = %e, "reversal round failed");
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(REVERSAL_POLL_MS)) => {}
            }
        }
    }

    /// One round: claim due reversals and send them in order. True if a full batch was
    /// handled (there may be more due right away).
    async fn round(&self) -> Result<bool, DbError> {
        if !self.bank.is_reachable() {
            return Ok(false);
        }
        let lease_ms = (self.bank.config.request_timeout_ms * 2) as i64;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "WITH due AS (
                   SELECT id FROM reversals q
                   WHERE bank_id = $1 AND state = 'pending' AND next_attempt_at <= now()
                     -- in order per transaction: a completion's reversal never overtakes it
                     AND NOT EXISTS (SELECT 1 FROM reversals e WHERE e.transaction_id = q.transaction_id
                                     AND e.state = 'pending' AND e.id < q.id)
                   ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE reversals r SET next_attempt_at = now() + ($3::bigint * interval '1 millisecond')
                 FROM due, transactions t, transactions p
                 WHERE r.id = due.id AND t.id = r.transaction_id AND p.id = coalesce(t.original_id, t.id)
                 RETURNING r.id, r.attempts, (extract(epoch from now() - r.created_at) * 1000)::bigint,
                   t.mti, t.processing_code, t.amount_minor, t.currency, t.rrn, t.terminal_id, t.merchant_id,
                   t.bank_stan, t.bank_transmitted_at, t.card_enc, r.kind = 'advice',
                   CASE WHEN r.kind = 'advice' THEN p.mti ELSE t.mti END,
                   CASE WHEN r.kind = 'advice' THEN p.bank_stan ELSE t.bank_stan END,
                   CASE WHEN r.kind = 'advice' THEN p.bank_transmitted_at ELSE t.bank_transmitted_at END",
                &[&self.bank.config.id, &REVERSAL_CLAIM_BATCH, &lease_ms],
            )
            .await?;
        drop(client);
        let mut due: Vec<Due> = rows
            .iter()
            .map(|r| Due {
                reversal_id: r.get(0),
                attempts: r.get(1),
                age_ms: r.get(2),
                processing_code: r.get(4),
                amount_minor: r.get(5),
                currency: r.get(6),
                rrn: r.get(7),
                terminal_id: r.get(8),
                merchant_id: r.get(9),
                card_enc: r.get(12),
                first_stan: r.get(10),
                first_de7: r.get(11),
                advice: r.get(13),
                original_mti: r.get(14),
                original_bank_stan: r.get(15),
                original_bank_de7: r.get(16),
            })
            .collect();
        due.sort_by_key(|d| d.reversal_id);
        let full = due.len() as i64 == REVERSAL_CLAIM_BATCH;
        for d in due {
            if d.age_ms > self.max_age_ms as i64 {
                tracing::error!(bank = %self.bank.config.id, rrn = %d.rrn, attempts = d.attempts,
                    "reversal expired unacknowledged: an operator must settle it with the bank");
                let client = self.pool.get().await?;
                client
                    .execute(
                        "UPDATE reversals SET state = 'expired' WHERE id = $1",
                        &[&d.reversal_id],
                    )
                    .await?;
                continue;
            }
            self.send(d).await?;
        }
        Ok(full)
    }

    async fn send(&self, d: Due) -> Result<(), DbError> {
        let bank = &self.bank;
        if !bank.is_reachable() {
            return Ok(());
        }
        let (pan, expiry) = match d
            .card_enc
            .as_deref()
            .map(|c| self.vault.open(Purpose::Card, c))
        {
            Some(Ok(plain)) => split_card(&plain),
            _ => (Vec::new(), Vec::new()),
        };
        let Ok(stan) = bank.stans.allocate() else {
            return Ok(());
        };
        let mut stan_digits = bank_links::stan::format_stan(stan);
        let mut de7 = codec::clock::transmission(codec::clock::unix_now());
        // An advice's first send carries the DE11 and DE7 recorded with the completion.
        if let (true, 0, Some(s), Some(t)) = (d.advice, d.attempts, &d.first_stan, &d.first_de7)
            && let (Ok(s), Ok(t)) = (
                <[u8; 6]>::try_from(s.as_bytes()),
                <[u8; 10]>::try_from(t.as_bytes()),
            )
        {
            stan_digits = s;
            de7 = t;
        }
        let stan_key: u32 = std::str::from_utf8(&stan_digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(stan);
        let original = if d.advice {
            Mti::COMPLETION_ADVICE
        } else {
            Mti::REVERSAL_REQUEST
        };
        let mti = if d.attempts == 0 {
            original
        } else {
            original.repeat()
        };
        let what = if d.advice { "advice" } else { "reversal" };
        let de90 = crate::payments::bank_de90(
            &d.original_mti,
            d.original_bank_stan.as_deref().unwrap_or("0"),
            d.original_bank_de7.as_deref().unwrap_or("0"),
            &self.acquirer_id,
        );
        let amount = format!("{:012}", d.amount_minor);
        let currency = format!("{:03}", d.currency);
        let mut b = MessageBuilder::new(bank.config.dialect, mti);
        if !pan.is_empty() {
            b.set(2, &pan);
        }
        if expiry.len() == 4 {
            b.set(14, &expiry);
        }
        b.set(3, d.processing_code.as_bytes())
            .set(4, amount.as_bytes())
            .set(7, &de7)
            .set(11, &stan_digits)
            .set(37, d.rrn.as_bytes())
            .set(41, d.terminal_id.as_bytes())
            .set(42, d.merchant_id.as_bytes())
            .set(49, currency.as_bytes())
            .set(90, de90.as_bytes());
        crate::bank_io::set_acquirer(&mut b, bank, &self.acquirer_id);
        let outcome =
            crate::bank_io::send(bank, original.class(), stan_key, &d.rrn, b.encode()).await;
        bank.stans.release(stan);
        let client = self.pool.get().await?;
        match outcome {
            Outcome::Answered(reply) => {
                let rc = reply
                    .get_str(39)
                    .map(|s| s.into_owned())
                    .unwrap_or_default();
                tracing::info!(bank = %bank.config.id, rrn = %d.rrn, rc = %rc, attempts = d.attempts + 1, what,
                    "store-and-forward message acknowledged");
                if d.advice {
                    if rc != "00" {
                        // An advice reports what happened; a bank refusing one needs a person.
                        tracing::error!(bank = %bank.config.id, rrn = %d.rrn, rc = %rc, "bank refused a completion advice");
                    }
                    client
                        .execute(
                            "UPDATE reversals SET state = 'acknowledged', acknowledged_at = now(), \
                             attempts = attempts + 1, last_response_code = $2 WHERE id = $1 AND state = 'pending'",
                            &[&d.reversal_id, &rc],
                        )
                        .await?;
                } else {
                    drop(client);
                    acknowledge(&self.pool, d.reversal_id, &rc).await?;
                }
            }
            Outcome::TimedOut | Outcome::LinkLost => {
                let pause =
                    reversal_backoff_ms(d.attempts as u32, bank.config.request_timeout_ms) as i64;
                tracing::warn!(bank = %bank.config.id, rrn = %d.rrn, attempts = d.attempts + 1, retry_in_ms = pause, what,
                    "store-and-forward message unanswered; will repeat");
                client
                    .execute(
                        "UPDATE reversals SET attempts = attempts + 1,
                           next_attempt_at = now() + ($2::bigint * interval '1 millisecond')
                         WHERE id = $1 AND state = 'pending'",
                        &[&d.reversal_id, &pause],
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// The event a merchant is told of when a transaction of this kind, whose outcome was
/// unknown, is confirmed reversed at the bank.
pub fn reversed_event(kind: &str) -> &'static str {
    match kind {
        "refund" => "REFUND_REVERSED",
        "completion" => "COMPLETION_REVERSED",
        _ => "TRANSACTION_REVERSED",
    }
}

/// Records a bank's acknowledgement of a reversal, in one transaction: the reversal row,
/// the transaction (if its outcome was unknown, it is now reversed), the payment's money
/// (a reserved refund is released, a pending completion cleared) and, when the merchant
/// had been told 91, a notification of the final state.
pub async fn acknowledge(pool: &Pool, reversal_id: i64, rc: &str) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "WITH r AS (
               UPDATE reversals SET state = 'acknowledged', acknowledged_at = now(),
                 attempts = attempts + 1, last_response_code = $2
               WHERE id = $1 AND state = 'pending' RETURNING transaction_id)
             UPDATE transactions t SET state = 'reversed', updated_at = now()
             FROM r WHERE t.id = r.transaction_id AND t.state = 'reversing'
             RETURNING t.id, t.kind, coalesce(t.original_id, t.id), t.amount_minor",
            &[&reversal_id, &rc],
        )
        .await?;
    for row in rows {
        let id: i64 = row.get(0);
        let kind: String = row.get(1);
        let root_id: i64 = row.get(2);
        let amount: i64 = row.get(3);
        match kind.as_str() {
            "refund" => {
                tx.execute(
                    "UPDATE transactions SET refund_reserved_minor = refund_reserved_minor - $2, updated_at = now() \
                     WHERE id = $1",
                    &[&root_id, &amount],
                )
                .await?;
            }
            "completion" => {
                tx.execute(
                    "UPDATE transactions SET completion_pending = FALSE, updated_at = now() WHERE id = $1",
                    &[&root_id],
                )
                .await?;
            }
            _ => {}
        }
        crate::notify::enqueue(&tx, root_id, id, reversed_event(&kind)).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves repeats back off by doubling and stay bounded.
    #[test]
    fn backoff_is_bounded() {
        assert_eq!(reversal_backoff_ms(0, 3000), 3000);
        assert_eq!(reversal_backoff_ms(2, 3000), 12_000);
        assert_eq!(reversal_backoff_ms(40, 3000), REVERSAL_BACKOFF_MAX_MS);
    }
}
