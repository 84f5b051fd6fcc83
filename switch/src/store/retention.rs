//! Retention: removing whole payments of old business days (`switchyard prune`).
//!
//! A payment goes with everything that names it (completions, refunds, reversals, their
//! postings, store-and-forward rows, notifications, bank advices), and only when all of
//! it is settled and older than the cut-off: nothing in doubt, no message still to send,
//! no notification undelivered. The ledger stays balanced (`switchyard ledger check`),
//! because a payment's postings leave with its rows. Export what must be kept first
//! (`switchyard ledger totals --day D --csv`). It ends with `VACUUM (ANALYZE)` of the
//! journal's tables, whose insert-driven autovacuum is off (migrations/V9): run it daily.

use deadpool_postgres::Pool;

use super::StoreError;

/// Payments removed in one database transaction at most: bounds how long one
/// transaction holds its row locks and how much WAL it writes at once.
pub const PRUNE_BATCH_MAX: i64 = 5_000;

/// What one call removed, in rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub payments: u64,
    pub transactions: u64,
    pub postings: u64,
}

/// One batch: after the root id `$4`, the oldest settled payments whose every row's business day (UTC minus the
/// cut-over hour, as for postings) is before `before` (`YYYY-MM-DD`), and every row
/// naming them. Chains are followed through `original_id` to any depth.
const PRUNE_SQL: &str = "
WITH RECURSIVE roots AS (
  SELECT t.id FROM transactions t
  WHERE t.original_id IS NULL AND t.id > $4
    AND ((t.created_at AT TIME ZONE 'UTC') - make_interval(hours => $2::int))::date < $1::text::date
  ORDER BY t.id LIMIT $3
), chain AS (
  SELECT id, id AS root FROM roots
  UNION ALL
  SELECT c.id, chain.root FROM transactions c JOIN chain ON c.original_id = chain.id
), blocked AS (
  SELECT DISTINCT chain.root FROM chain JOIN transactions t ON t.id = chain.id
  WHERE t.state IN ('authorising', 'reversing')
     OR ((t.created_at AT TIME ZONE 'UTC') - make_interval(hours => $2::int))::date >= $1::text::date
     OR EXISTS (SELECT 1 FROM reversals r WHERE r.transaction_id = t.id AND r.state = 'pending')
     OR EXISTS (SELECT 1 FROM notifications n WHERE n.transaction_id = t.id AND n.delivered_at IS NULL)
     OR EXISTS (SELECT 1 FROM in_doubt d WHERE d.transaction_id = t.id)
), doomed AS (
  SELECT id, root FROM chain WHERE root NOT IN (SELECT root FROM blocked)
), p AS (
  DELETE FROM ledger_postings WHERE transaction_id IN (SELECT id FROM doomed) RETURNING 1
), n AS (
  DELETE FROM notifications WHERE transaction_id IN (SELECT id FROM doomed)
), r AS (
  DELETE FROM reversals WHERE transaction_id IN (SELECT id FROM doomed)
), a AS (
  DELETE FROM bank_advices WHERE transaction_id IN (SELECT id FROM doomed)
), s AS (
  DELETE FROM settlements WHERE transaction_id IN (SELECT id FROM doomed)
), t AS (
  DELETE FROM transaction_rows WHERE id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT (SELECT count(DISTINCT root) FROM doomed), (SELECT count(*) FROM t), (SELECT count(*) FROM p),
  (SELECT count(*) FROM roots), (SELECT coalesce(max(id), 0) FROM roots)";

/// The journal's tables, vacuumed (and their statistics refreshed) after each prune.
const VACUUM_SQL: &str =
    "VACUUM (ANALYZE) transaction_rows, settlements, ledger_postings, in_doubt";

/// Removes settled payments of business days before `before`, [`PRUNE_BATCH_MAX`] at a
/// time, until none is left; returns what went. `cutover_hours` is
/// `switch.business_day_cutover_hour`. Errors: the database's, or a malformed day.
pub(super) async fn prune(
    pool: &Pool,
    cutover_hours: i32,
    before: &str,
) -> Result<Pruned, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare(PRUNE_SQL).await?;
    let mut total = Pruned::default();
    let mut after = -1i64;
    loop {
        let row = client
            .query_one(&stmt, &[&before, &cutover_hours, &PRUNE_BATCH_MAX, &after])
            .await?;
        let (payments, txns, postings, looked_at): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert!(
            payments <= looked_at && txns >= payments,
            "a payment goes whole"
        );
        total.payments += payments as u64;
        total.transactions += txns as u64;
        total.postings += postings as u64;
        if looked_at < PRUNE_BATCH_MAX {
            // Insert-driven autovacuum is off on these tables (migrations/V9): this is
            // their scheduled vacuum, outside any transaction.
            client.batch_execute(VACUUM_SQL).await?;
            return Ok(total);
        }
        // Payments still blocked in this batch stay; the next batch starts after it.
        let last: i64 = row.get(4);
        assert!(last > after, "the cursor moves forward");
        after = last;
    }
}
