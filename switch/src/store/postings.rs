//! Ledger postings: the one business-day rule, postings outside the journal, and the
//! ledger's checks and totals (see [`crate::ledger`] for the accounts).

use deadpool_postgres::{GenericClient, Pool};

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

/// Every broken invariant, at most ten per rule.
pub(super) async fn violations(pool: &Pool) -> Result<Vec<Violation>, StoreError> {
    let client = pool.get().await?;
    let mut out = Vec::new();
    unbalanced(&client, &mut out).await?;
    orphaned(&client, &mut out).await?;
    merchant_balances(&client, &mut out).await?;
    unposted(&client, &mut out).await?;
    refunds_beyond_captures(&client, &mut out).await?;
    Ok(out)
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
/// counting), per currency, as the journal's payment rows say.
async fn merchant_balances<C: GenericClient>(
    c: &C,
    out: &mut Vec<Violation>,
) -> Result<(), StoreError> {
    for r in c
        .query(
            "WITH journal AS (
               SELECT merchant_id, currency, sum(captured_minor - refunded_minor)::bigint AS owed
               FROM transactions
               WHERE kind IN ('purchase', 'preauth') AND state IN ('approved', 'captured')
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
/// against its bank and merchant.
async fn unposted<C: GenericClient>(c: &C, out: &mut Vec<Violation>) -> Result<(), StoreError> {
    for r in c
        .query(
            "SELECT t.id, t.kind, t.amount_minor, coalesce(sum(p.amount_minor) FILTER (WHERE p.account = 'bank:' || t.bank_id), 0)::bigint
             FROM transactions t LEFT JOIN ledger_postings p ON p.transaction_id = t.id
             WHERE t.kind IN ('purchase', 'completion', 'refund') AND t.state IN ('approved', 'reversed', 'captured')
               AND t.response_code = '00'
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

/// Totals per business day, account and currency, optionally for one day.
pub(super) async fn totals(pool: &Pool, day: Option<&str>) -> Result<Vec<Total>, StoreError> {
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
