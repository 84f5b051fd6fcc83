//! Ledger postings: the one business-day rule, postings outside the journal, and the
//! ledger's checks and totals (see [`crate::ledger`] for the accounts).

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::error::SqlState;

use super::StoreError;

/// One broken invariant: the rule's name (e.g. `posting-balances`) and what breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

/// One line of a balance or settlement report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    pub business_day: String,
    pub account: String,
    pub currency: i16,
    pub postings: i64,
    pub amount_minor: i64,
}

/// The business day of a posting made now, as SQL: the UTC date `$<param>` hours (the
/// cut-over hour, `switch.business_day_cutover_hour`, an `int`) ago. The ONE rule: every
/// statement that posts uses this fragment, the journal's batch statement included (a
/// test there holds it to that).
pub(super) fn business_day_sql(param: u8) -> String {
    format!("(now() AT TIME ZONE 'UTC' - make_interval(hours => ${param}::int))::date")
}

/// Posts `amount_minor` to the bank (debit) and the merchant (credit) under transaction
/// `txn_id`; a negative amount posts the other way.
pub(super) async fn post<C: GenericClient>(
    c: &C,
    cutover_hours: i32,
    txn_id: i64,
    bank_id: &str,
    merchant_id: &str,
    amount_minor: i64,
    currency: i16,
) -> Result<(), StoreError> {
    let q = format!(
        "INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day) \
         VALUES ($1, $2, $4, $5, {bd}), ($1, $6, -$4, $5, {bd})",
        bd = business_day_sql(3)
    );
    c.execute(
        &q,
        &[
            &txn_id,
            &format!("bank:{bank_id}"),
            &cutover_hours,
            &amount_minor,
            &currency,
            &format!("merchant:{merchant_id}"),
        ],
    )
    .await?;
    Ok(())
}

/// Undoes transaction `named_id`'s postings under the reversing transaction's id.
pub(super) async fn post_negation<C: GenericClient>(
    c: &C,
    cutover_hours: i32,
    reversal_id: i64,
    named_id: i64,
) -> Result<(), StoreError> {
    let q = format!(
        "INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day) \
         SELECT $1, account, -amount_minor, currency, {bd} FROM ledger_postings WHERE transaction_id = $2",
        bd = business_day_sql(3)
    );
    c.execute(&q, &[&reversal_id, &named_id, &cutover_hours])
        .await?;
    Ok(())
}

/// An approved purchase's postings (V18): the bank owes its amount, the merchant is owed
/// it, on the business day its settlement recorded. `$deleted` is the rows whose
/// `in_doubt` entry the statement deleted: only the one that deleted it posts, so a
/// conflict on the postings' key means a broken invariant. `$conflict` is
/// `ON CONFLICT DO NOTHING` or nothing.
macro_rules! settled_postings {
    ($deleted:literal, $conflict:literal) => {
        concat!(
            "INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day)
  SELECT t.id, p.account, p.sign * t.amount_minor, t.currency, s.business_day
  FROM ",
            $deleted,
            " g JOIN settlements s ON s.transaction_id = g.transaction_id AND s.state = 'approved'
  JOIN transaction_rows t ON t.id = g.transaction_id AND t.kind = 'purchase',
    LATERAL (VALUES ('bank:' || t.bank_id, 1), ('merchant:' || t.merchant_id, -1)) AS p(account, sign)
  ",
            $conflict
        )
    };
}
pub(super) use settled_postings;

/// The poster's statement, with `$conflict` after its insert of postings: writes the
/// postings of at most `$1` approvals of instance `$2` that the journal has settled (V18),
/// oldest first, and ends their doubt; returns how many it posted. Only the instance's own
/// poster runs it (an instance taken over has its rows adopted), so no two of them meet
/// on a row; a payment's lock that ends an approval's doubt first posts it itself, and
/// this then finds the row gone. Rows are not locked before they are deleted, and the
/// fast form has no conflict clause: a row lock and a speculative insertion are each a
/// write of their own (measured on a grown database: 12 µs per approval with
/// `FOR UPDATE` and `ON CONFLICT`).
macro_rules! post_settled_sql {
    ($conflict:literal) => {
        concat!(
            "WITH gone AS (
  DELETE FROM in_doubt i WHERE i.transaction_id IN (
    SELECT d.transaction_id FROM in_doubt d
    JOIN settlements s ON s.transaction_id = d.transaction_id AND s.state = 'approved'
    WHERE d.instance_id = $2 ORDER BY d.transaction_id LIMIT $1)
  RETURNING i.transaction_id
), posted AS (
",
            settled_postings!("gone", $conflict),
            "
  RETURNING 1
)
SELECT count(*) FROM gone"
        )
    };
}

/// [`post_settled_sql`] without a conflict clause, tried first.
const POST_SETTLED_SQL_FAST: &str = post_settled_sql!("");
/// [`post_settled_sql`] that skips postings that exist, for a batch the fast form refused.
const POST_SETTLED_SQL: &str = post_settled_sql!("ON CONFLICT DO NOTHING");

/// The poster's statement for every instance, skipping rows another writer holds
/// (`SKIP LOCKED`): a check or a report posts what it can beside the live posters without
/// waiting for them, and whatever it skips is being posted.
const DRAIN_SQL: &str = concat!(
    "WITH due AS (
  SELECT d.transaction_id FROM in_doubt d
  JOIN settlements s ON s.transaction_id = d.transaction_id AND s.state = 'approved'
  ORDER BY d.transaction_id LIMIT $1 FOR UPDATE OF d SKIP LOCKED
), gone AS (
  DELETE FROM in_doubt i USING due WHERE i.transaction_id = due.transaction_id
  RETURNING i.transaction_id
), posted AS (
",
    settled_postings!("gone", "ON CONFLICT DO NOTHING"),
    "
  RETURNING 1
)
SELECT count(*) FROM gone"
);

/// Makes the rest of the caller's transaction reach `in_doubt` by key only. The table
/// takes an insert and a delete per request, so between vacuums most of its tuples are
/// dead: a sequential scan reads them all (measured at 5,000 purchases/s: recovery's sweep
/// took 315 ms a call with one, the journal the same, see its `WRITER_SESSION_SQL`).
pub(super) const IN_DOUBT_BY_KEY_SQL: &str = "SET LOCAL enable_seqscan = off";

/// Posts at most `max` (> 0) pending approvals of `instance_id` ([`POST_SETTLED_SQL_FAST`],
/// then [`POST_SETTLED_SQL`] if a posting exists already, which is logged: nothing but
/// the poster and a payment's lock posts an approval, and only the one that ends its
/// doubt); how many it posted. Errors: the database's.
pub(super) async fn post_settled(
    pool: &Pool,
    instance_id: i16,
    max: i64,
) -> Result<u64, StoreError> {
    assert!(max > 0, "a batch of postings has room");
    let mut client = pool.get().await?;
    match post_in_transaction(&mut client, POST_SETTLED_SQL_FAST, &[&max, &instance_id]).await {
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::error!(error = %e, "an approval pending its postings had some already; posting the rest");
            Ok(post_in_transaction(&mut client, POST_SETTLED_SQL, &[&max, &instance_id]).await?)
        }
        done => Ok(done?),
    }
}

/// Runs one posting statement `sql` (returning how many it posted) in a transaction of
/// its own that reaches `in_doubt` by key ([`IN_DOUBT_BY_KEY_SQL`]).
async fn post_in_transaction(
    client: &mut deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(IN_DOUBT_BY_KEY_SQL).await?;
    let q = tx.prepare_cached(sql).await?;
    let n: i64 = tx.query_one(&q, params).await?.get(0);
    tx.commit().await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Posts every approval pending now, of every instance ([`DRAIN_SQL`], in batches of
/// [`DRAIN_BATCH_MAX`]), so that a check or a report that follows sees them; how many it
/// posted.
pub(super) async fn drain(pool: &Pool) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let mut total = 0;
    for _ in 0..DRAIN_BATCHES_MAX {
        let n = post_in_transaction(&mut client, DRAIN_SQL, &[&DRAIN_BATCH_MAX]).await?;
        total += n;
        if n < DRAIN_BATCH_MAX as u64 {
            break;
        }
    }
    Ok(total)
}

/// Approvals posted per statement by [`drain`].
const DRAIN_BATCH_MAX: i64 = 10_000;
/// Statements per [`drain`] at most (a million approvals; a live poster keeps the
/// backlog to a fraction of a second's).
const DRAIN_BATCHES_MAX: usize = 100;

/// An approval whose postings are pending longer than this is reported by the ledger
/// check: the poster writes them within a fraction of a second.
pub(super) const POSTING_PENDING_MAX_S: i64 = 60;

/// Every broken invariant, at most ten per rule, once what is pending is posted. An
/// approval settled while the rules run is pending, not unposted: each rule leaves out
/// approvals whose postings are pending, as of its own snapshot.
pub(super) async fn violations(pool: &Pool) -> Result<Vec<Violation>, StoreError> {
    drain(pool).await?;
    let client = pool.get().await?;
    let mut out = Vec::new();
    pending(&client, &mut out).await?;
    unbalanced(&client, &mut out).await?;
    orphaned(&client, &mut out).await?;
    merchant_balances(&client, &mut out).await?;
    unposted(&client, &mut out).await?;
    refunds_beyond_captures(&client, &mut out).await?;
    Ok(out)
}

/// Rule 0: an approval's postings are not pending for long ([`POSTING_PENDING_MAX_S`]).
async fn pending<C: GenericClient>(c: &C, out: &mut Vec<Violation>) -> Result<(), StoreError> {
    for r in c
        .query(
            "SELECT s.transaction_id, (extract(epoch FROM now() - s.settled_at))::bigint FROM in_doubt d
             JOIN settlements s ON s.transaction_id = d.transaction_id AND s.state = 'approved'
             WHERE s.settled_at < now() - $1::bigint * interval '1 second' ORDER BY 1 LIMIT 10",
            &[&POSTING_PENDING_MAX_S],
        )
        .await?
    {
        out.push(Violation {
            rule: "postings-not-pending",
            detail: format!(
                "transaction {} was approved {} s ago and is not posted",
                r.get::<_, i64>(0),
                r.get::<_, i64>(1)
            ),
        });
    }
    Ok(())
}

/// Rule 1: each transaction's postings balance.
async fn unbalanced<C: GenericClient>(c: &C, out: &mut Vec<Violation>) -> Result<(), StoreError> {
    for r in c
        .query(
            "SELECT transaction_id, sum(amount_minor)::bigint FROM ledger_postings GROUP BY transaction_id \
             HAVING sum(amount_minor) <> 0 ORDER BY transaction_id LIMIT 10",
            &[],
        )
        .await?
    {
        out.push(Violation {
            rule: "posting-balances",
            detail: format!("transaction {} postings sum to {}", r.get::<_, i64>(0), r.get::<_, i64>(1)),
        });
    }
    Ok(())
}

/// Rules 1b and 1c: each posting and each settlement names a recorded transaction. Neither
/// carries a foreign key, so that writing one costs one index entry
/// (migrations/V6__flat_journal.sql, V16__appended_settlements.sql).
async fn orphaned<C: GenericClient>(c: &C, out: &mut Vec<Violation>) -> Result<(), StoreError> {
    let checks = [
        (
            "posting-names-transaction",
            "postings",
            "SELECT p.transaction_id, count(*)::bigint FROM ledger_postings p \
             WHERE NOT EXISTS (SELECT 1 FROM transaction_rows t WHERE t.id = p.transaction_id) \
             GROUP BY p.transaction_id ORDER BY 1 LIMIT 10",
        ),
        (
            "settlement-names-transaction",
            "settlements",
            "SELECT s.transaction_id, 1::bigint FROM settlements s \
             WHERE NOT EXISTS (SELECT 1 FROM transaction_rows t WHERE t.id = s.transaction_id) \
             ORDER BY 1 LIMIT 10",
        ),
    ];
    for (rule, what, sql) in checks {
        for r in c.query(sql, &[]).await? {
            out.push(Violation {
                rule,
                detail: format!(
                    "{} {what} name transaction {}, which is not recorded",
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(0)
                ),
            });
        }
    }
    Ok(())
}

/// Rule 2: each merchant's balance equals its captures less its refunds (reversed ones not
/// counting), per currency, as the journal's payment rows say (approvals whose postings
/// are pending left out).
async fn merchant_balances<C: GenericClient>(
    c: &C,
    out: &mut Vec<Violation>,
) -> Result<(), StoreError> {
    for r in c
        .query(
            "WITH journal AS (
               SELECT merchant_id, currency, sum(captured_minor - refunded_minor)::bigint AS owed
               FROM transactions t
               WHERE kind IN ('purchase', 'preauth') AND state IN ('approved', 'captured')
                 AND NOT EXISTS (SELECT 1 FROM in_doubt d WHERE d.transaction_id = t.id)
               GROUP BY merchant_id, currency),
             ledger AS (
               SELECT substr(account, 10) AS merchant_id, currency, (-sum(amount_minor))::bigint AS owed
               FROM ledger_postings WHERE account LIKE 'merchant:%'
               GROUP BY 1, 2)
             SELECT coalesce(j.merchant_id, l.merchant_id), coalesce(j.currency, l.currency),
               coalesce(j.owed, 0), coalesce(l.owed, 0)
             FROM journal j FULL JOIN ledger l ON j.merchant_id = l.merchant_id AND j.currency = l.currency
             WHERE coalesce(j.owed, 0) <> coalesce(l.owed, 0)
             ORDER BY 1, 2 LIMIT 10",
            &[],
        )
        .await?
    {
        out.push(Violation {
            rule: "merchant-balance-matches-journal",
            detail: format!(
                "merchant {} currency {}: journal says {} owed, ledger says {}",
                r.get::<_, String>(0),
                r.get::<_, i16>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3)
            ),
        });
    }
    Ok(())
}

/// Rule 3: every approved purchase, completion and refund has its postings, for its amount,
/// against its bank and merchant (once they are no longer pending).
async fn unposted<C: GenericClient>(c: &C, out: &mut Vec<Violation>) -> Result<(), StoreError> {
    for r in c
        .query(
            "SELECT t.id, t.kind, t.amount_minor, coalesce(sum(p.amount_minor) FILTER (WHERE p.account = 'bank:' || t.bank_id), 0)::bigint
             FROM transactions t LEFT JOIN ledger_postings p ON p.transaction_id = t.id
             WHERE t.kind IN ('purchase', 'completion', 'refund') AND t.state IN ('approved', 'reversed', 'captured')
               AND t.response_code = '00'
               AND NOT EXISTS (SELECT 1 FROM in_doubt d WHERE d.transaction_id = t.id)
             GROUP BY t.id, t.kind, t.amount_minor
             HAVING coalesce(sum(p.amount_minor) FILTER (WHERE p.account = 'bank:' || t.bank_id), 0)
               <> CASE WHEN t.kind = 'refund' THEN -t.amount_minor ELSE t.amount_minor END
             ORDER BY t.id LIMIT 10",
            &[],
        )
        .await?
    {
        out.push(Violation {
            rule: "approved-transactions-posted",
            detail: format!(
                "{} {} of {} has {} posted to its bank",
                r.get::<_, String>(1),
                r.get::<_, i64>(0),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3)
            ),
        });
    }
    Ok(())
}

/// Rule 4: money in flight is consistent: refunds stay within what was captured.
async fn refunds_beyond_captures<C: GenericClient>(
    c: &C,
    out: &mut Vec<Violation>,
) -> Result<(), StoreError> {
    for r in c
        .query(
            "SELECT id, captured_minor, refunded_minor, refund_reserved_minor FROM transactions
             WHERE refunded_minor + refund_reserved_minor > captured_minor OR refunded_minor < 0
               OR refund_reserved_minor < 0 ORDER BY id LIMIT 10",
            &[],
        )
        .await?
    {
        out.push(Violation {
            rule: "refunds-within-captured",
            detail: format!(
                "payment {}: captured {}, refunded {}, reserved {}",
                r.get::<_, i64>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3)
            ),
        });
    }
    Ok(())
}

/// Totals per business day, account and currency, optionally for one day, once what is
/// pending is posted.
pub(super) async fn totals(pool: &Pool, day: Option<&str>) -> Result<Vec<Total>, StoreError> {
    drain(pool).await?;
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT business_day::text, account, currency, count(*)::bigint, sum(amount_minor)::bigint
             FROM ledger_postings WHERE $1::text IS NULL OR business_day = $1::date
             GROUP BY business_day, account, currency ORDER BY business_day, account, currency",
            &[&day],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Total {
            business_day: r.get(0),
            account: r.get(1),
            currency: r.get(2),
            postings: r.get(3),
            amount_minor: r.get(4),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the business-day rule: the UTC date less the cut-over hour, as an `int`
    // parameter (the journal's statement is held to the same fragment in its own test).
    #[test]
    fn business_day_rule() {
        assert_eq!(
            business_day_sql(3),
            "(now() AT TIME ZONE 'UTC' - make_interval(hours => $3::int))::date"
        );
    }
}
