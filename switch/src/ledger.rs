//! The double-entry ledger: balances, per-day totals, settlement, and the invariants
//! `switchyard ledger check` verifies.
//!
//! Accounts: `bank:<id>` (what the bank owes: debits positive) and `merchant:<id>` (what
//! is owed to the merchant: credits negative). A purchase or completion posts +amount to
//! its bank and -amount to its merchant, a refund the opposite, a reversal the negation
//! of what it undoes.

use deadpool_postgres::Pool;

use crate::db::DbError;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

/// Checks every invariant; the violations found (empty when the ledger is sound).
pub async fn check(pool: &Pool) -> Result<Vec<Violation>, DbError> {
    let client = pool.get().await?;
    let mut out = Vec::new();

    // 1. Each transaction's postings balance.
    for r in client
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

    // 1b. Each posting names a recorded transaction (postings carry no foreign key, so
    //     that writing them costs one index; see migrations/V6__flat_journal.sql).
    for r in client
        .query(
            "SELECT p.transaction_id, count(*)::bigint FROM ledger_postings p \
             WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.id = p.transaction_id) \
             GROUP BY p.transaction_id ORDER BY 1 LIMIT 10",
            &[],
        )
        .await?
    {
        out.push(Violation {
            rule: "posting-names-transaction",
            detail: format!(
                "{} postings name transaction {}, which is not recorded",
                r.get::<_, i64>(1),
                r.get::<_, i64>(0)
            ),
        });
    }

    // 2. Each merchant's balance equals its captures less its refunds (reversed ones not
    //    counting), per currency, as the journal's payment rows say.
    for r in client
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

    // 3. Every approved purchase, completion and refund has its postings, for its amount,
    //    against its bank and merchant.
    for r in client
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

    // 4. Money in flight is consistent: refunds stay within what was captured.
    for r in client
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
    Ok(out)
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

/// Totals per business day, account and currency (the settlement report), optionally
/// for one day (YYYY-MM-DD).
pub async fn totals(pool: &Pool, day: Option<&str>) -> Result<Vec<Total>, DbError> {
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

/// Totals as CSV (header line first).
pub fn to_csv(totals: &[Total]) -> String {
    let mut s = String::from("business_day,account,currency,postings,amount_minor\n");
    for t in totals {
        s.push_str(&format!(
            "{},{},{},{},{}\n",
            t.business_day, t.account, t.currency, t.postings, t.amount_minor
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the CSV form has a header and one line per total.
    #[test]
    fn csv() {
        let t = Total {
            business_day: "2026-11-26".into(),
            account: "bank:a".into(),
            currency: 840,
            postings: 2,
            amount_minor: 1500,
        };
        assert_eq!(
            to_csv(&[t]),
            "business_day,account,currency,postings,amount_minor\n2026-11-26,bank:a,840,2,1500\n"
        );
    }
}
