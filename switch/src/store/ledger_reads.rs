//! Reads of the ledger for the back office: one business day's totals and every
//! account's balance, optionally for one account (a merchant user's own).

use deadpool_postgres::Pool;

use super::StoreError;
use crate::db::DbError;

/// Postings and their sum of one account in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSum {
    /// `bank:<id>` or `merchant:<id>`.
    pub account: String,
    pub currency: i16,
    pub postings: i64,
    pub amount_minor: i64,
}

fn sums(rows: &[tokio_postgres::Row]) -> Vec<AccountSum> {
    rows.iter()
        .map(|r| AccountSum {
            account: r.get(0),
            currency: r.get(1),
            postings: r.get(2),
            amount_minor: r.get(3),
        })
        .collect()
}

/// Totals per account and currency of the business day `day` (`YYYY-MM-DD`), of
/// `account` only when given.
pub async fn day_totals(
    pool: &Pool,
    day: &str,
    account: Option<&str>,
) -> Result<Vec<AccountSum>, StoreError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let rows = client
        .query(
            "SELECT account, currency, count(*)::bigint, sum(amount_minor)::bigint
             FROM ledger_postings
             WHERE business_day = $1::text::date AND ($2::text IS NULL OR account = $2::text)
             GROUP BY account, currency ORDER BY account, currency",
            &[&day, &account],
        )
        .await
        .map_err(DbError::from)?;
    Ok(sums(&rows))
}

/// Balances over every posting per account and currency, of `account` only when given.
pub async fn balances(pool: &Pool, account: Option<&str>) -> Result<Vec<AccountSum>, StoreError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let rows = client
        .query(
            "SELECT account, currency, count(*)::bigint, sum(amount_minor)::bigint
             FROM ledger_postings WHERE $1::text IS NULL OR account = $1::text
             GROUP BY account, currency ORDER BY account, currency",
            &[&account],
        )
        .await
        .map_err(DbError::from)?;
    Ok(sums(&rows))
}
