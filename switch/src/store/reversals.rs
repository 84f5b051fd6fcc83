//! The store-and-forward queue (the `reversals` table: reversals and completion
//! advices), crash recovery, and the status inquiries about unknown outcomes.

use deadpool_postgres::{GenericClient, Pool};

use super::Event;
use super::notifications;
use super::payments::change_root;
use super::reads::lock_row;
use super::{Backlog, DueForward, Inquiry, StoreError};
use crate::checks::Kind;
use crate::lifecycle::{self, Forward};

/// The queue row's `kind` and `reason` for a message.
fn columns(f: Forward) -> (&'static str, &'static str) {
    match f {
        Forward::Reversal(reason) => ("reversal", reason.as_str()),
        Forward::CompletionAdvice => ("advice", "completion"),
    }
}

/// Stores a message about transaction `id` for `bank_id` (once per transaction and kind).
pub(super) async fn queue<C: GenericClient>(
    c: &C,
    id: i64,
    bank_id: &str,
    f: Forward,
) -> Result<(), StoreError> {
    let (kind, reason) = columns(f);
    c.execute(
        "INSERT INTO reversals (transaction_id, bank_id, reason, kind) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (transaction_id, kind) DO NOTHING",
        &[&id, &bank_id, &reason, &kind],
    )
    .await?;
    Ok(())
}

/// Marks every transaction `instance_id` left without an outcome as reversing, with a
/// reversal to send; how many were found.
pub(super) async fn recover(pool: &Pool, instance_id: i16) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    recover_on(&client, instance_id, 0).await
}

/// [`recover`] of the transactions recorded at least `older_than_ms` ago only: the
/// live instance's sweep of requests no request path is still resolving.
pub(super) async fn recover_stale(
    pool: &Pool,
    instance_id: i16,
    older_than_ms: i64,
) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    recover_on(&client, instance_id, older_than_ms).await
}

/// [`recover`] (of transactions recorded at least `older_than_ms` ago) on a connection or
/// inside a transaction (a lease takeover's).
pub(super) async fn recover_on<C: GenericClient>(
    c: &C,
    instance_id: i16,
    older_than_ms: i64,
) -> Result<u64, StoreError> {
    let n = c
        .execute(
            "WITH d AS (
               SELECT transaction_id FROM in_doubt WHERE instance_id = $1
             ), due AS (
               SELECT t.id FROM d JOIN transaction_rows t ON t.id = d.transaction_id
               WHERE t.state = 'authorising' AND t.bank_id IS NOT NULL
                 AND t.created_at <= now() - $2::bigint * interval '1 millisecond'
             ), won AS (
               -- A settlement is exclusive (V16): where the journal has appended the
               -- bank's approval, committed or not yet, this inserts nothing (a unique
               -- check waits for the other writer) and the approval stands.
               INSERT INTO settlements (transaction_id, state, response_code)
               SELECT id, 'reversing', '91' FROM due ON CONFLICT DO NOTHING
               RETURNING transaction_id
             ), r AS (
               UPDATE transaction_rows t SET state = 'reversing', response_code = '91', updated_at = now()
               FROM won WHERE t.id = won.transaction_id AND t.state = 'authorising'
               RETURNING t.id, t.bank_id
             ), settled AS (
               -- The rows reversed here, and those whose transaction has moved on; a row
               -- still 'authorising' without a bank stays tracked (as of the statement's
               -- snapshot, which the update above does not change).
               DELETE FROM in_doubt i USING transactions t
               WHERE i.instance_id = $1 AND t.id = i.transaction_id
                 AND (t.state <> 'authorising' OR (t.bank_id IS NOT NULL
                      AND t.created_at <= now() - $2::bigint * interval '1 millisecond')))
             INSERT INTO reversals (transaction_id, bank_id, reason)
             SELECT id, bank_id, 'recovery' FROM r ON CONFLICT (transaction_id, kind) DO NOTHING",
            &[&instance_id, &older_than_ms],
        )
        .await?;
    Ok(n)
}

/// Claims due messages for a bank, in order, leased for `lease_ms`.
pub(super) async fn claim(
    pool: &Pool,
    bank_id: &str,
    max: i64,
    lease_ms: i64,
) -> Result<Vec<DueForward>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &client.prepare_cached("WITH due AS (
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
               CASE WHEN r.kind = 'advice' THEN p.bank_transmitted_at ELSE t.bank_transmitted_at END").await?,
            &[&bank_id, &max, &lease_ms],
        )
        .await?;
    let mut due: Vec<DueForward> = rows
        .iter()
        .map(|r| DueForward {
            id: r.get(0),
            attempts: r.get(1),
            age_ms: r.get(2),
            processing_code: r.get(4),
            amount_minor: r.get(5),
            currency: r.get(6),
            rrn: r.get(7),
            terminal_id: r.get(8),
            merchant_id: r.get(9),
            first_stan: r.get(10),
            first_de7: r.get(11),
            card_enc: r.get(12),
            advice: r.get(13),
            original_mti: r.get(14),
            original_bank_stan: r.get(15),
            original_bank_de7: r.get(16),
        })
        .collect();
    due.sort_by_key(|d| d.id);
    Ok(due)
}

/// Gives up on a message: `expired`, for an operator.
pub(super) async fn expire(pool: &Pool, id: i64) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE reversals SET state = 'expired' WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(())
}

/// The bank answered an advice.
pub(super) async fn advice_answered(pool: &Pool, id: i64, rc: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE reversals SET state = 'acknowledged', acknowledged_at = now(), \
             attempts = attempts + 1, last_response_code = $2 WHERE id = $1 AND state = 'pending'",
            &[&id, &rc],
        )
        .await?;
    Ok(())
}

/// A message went unanswered: count it, repeat after `pause_ms`.
pub(super) async fn unanswered(pool: &Pool, id: i64, pause_ms: i64) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE reversals SET attempts = attempts + 1,
               next_attempt_at = now() + ($2::bigint * interval '1 millisecond')
             WHERE id = $1 AND state = 'pending'",
            &[&id, &pause_ms],
        )
        .await?;
    Ok(())
}

/// Records a bank's acknowledgement of a reversal, in one transaction: the queue row,
/// the transaction (if its outcome was unknown, it is now reversed), the payment's money
/// ([`lifecycle::reversal_confirmed`]) and, when the merchant had been told 91, a
/// notification of the final state.
pub(super) async fn reversal_answered(pool: &Pool, id: i64, rc: &str) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &tx.prepare_cached(
                "WITH r AS (
               UPDATE reversals SET state = 'acknowledged', acknowledged_at = now(),
                 attempts = attempts + 1, last_response_code = $2
               WHERE id = $1 AND state = 'pending' RETURNING transaction_id)
             UPDATE transaction_rows t SET state = 'reversed', updated_at = now()
             FROM r WHERE t.id = r.transaction_id AND t.state = 'reversing'
             RETURNING t.id, t.kind, coalesce(t.original_id, t.id), t.amount_minor",
            )
            .await?,
            &[&id, &rc],
        )
        .await?;
    for row in rows {
        let txn_id: i64 = row.get(0);
        let kind = Kind::parse(row.get::<_, &str>(1)).unwrap_or(Kind::Reversal);
        let root = lock_row(&tx, row.get(2)).await?;
        let amount = row.get::<_, i64>(3) as u64;
        let change = lifecycle::reversal_confirmed(kind, &root.payment(), amount);
        if !change.is_empty() {
            change_root(&tx, root.id, &change).await?;
        }
        let status = root.payment().after(&change).status();
        notifications::enqueue(&tx, &root, status, txn_id, Event::reversed(kind)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The pending backlog per bank.
pub(super) async fn backlog(pool: &Pool) -> Result<Vec<Backlog>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT bank_id, count(*), coalesce(extract(epoch from now() - min(created_at)), 0)::bigint \
             FROM reversals WHERE state = 'pending' GROUP BY bank_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Backlog {
            bank_id: r.get(0),
            pending: r.get(1),
            oldest_age_s: r.get(2),
        })
        .collect())
}

/// Claims unknown-outcome transactions to ask about by stamping `inquired_at`, so that
/// instances do not ask about the same one at once.
pub(super) async fn claim_inquiries(
    pool: &Pool,
    bank_id: &str,
    max: i64,
    repeat_ms: i64,
) -> Result<Vec<Inquiry>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &client.prepare_cached("WITH due AS (
               SELECT t.id FROM reversals r JOIN transaction_rows t ON t.id = r.transaction_id
               WHERE r.bank_id = $1 AND r.state = 'pending' AND r.attempts >= 1 AND t.state = 'reversing'
                 AND (t.inquired_at IS NULL OR t.inquired_at < now() - ($3::bigint * interval '1 millisecond'))
               ORDER BY r.id LIMIT $2 FOR UPDATE OF t SKIP LOCKED)
             UPDATE transaction_rows t SET inquired_at = now(), inquiries = t.inquiries + 1
             FROM due, reversals r WHERE t.id = due.id AND r.transaction_id = t.id
             RETURNING t.id, t.rrn, t.mti, t.bank_stan, t.bank_transmitted_at, r.id").await?,
            &[&bank_id, &max, &repeat_ms],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Inquiry {
            rrn: r.get(1),
            mti: r.get(2),
            bank_stan: r.get(3),
            bank_transmitted_at: r.get(4),
            reversal_id: r.get(5),
        })
        .collect())
}
