//! The SQL of the back office's operations (issue 12): the store-and-forward queue as
//! operators see and steer it (the `reversals` table), API keys listed and revoked, and
//! accounts disabled and enabled. The rules (who may) are in [`crate::backoffice_ops`].

use std::time::SystemTime;

use admin_http::Role;
use admin_http::ops::{ApiKeyView, SafItem, SafQuery};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::StoreError;

/// Most queue rows one page holds.
pub const SAF_PAGE_MAX: u32 = 500;
/// Rows a page holds when the query does not say.
pub const SAF_PAGE_DEFAULT: u32 = 100;

/// An RFC 3339 UTC rendering of a `timestamptz` column, in SQL.
macro_rules! utc {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

const SAF_COLUMNS: &str = concat!(
    "r.id, r.kind, r.reason, r.bank_id, r.state, r.attempts, t.rrn, t.merchant_id, \
     t.amount_minor, ",
    utc!("r.created_at"),
    ", ",
    utc!("r.next_attempt_at"),
    ", r.last_response_code, r.discarded_by, r.discard_reason"
);

fn saf_item(r: &Row) -> SafItem {
    SafItem {
        id: r.get(0),
        kind: r.get(1),
        reason: r.get(2),
        bank_id: r.get(3),
        state: r.get(4),
        attempts: r.get(5),
        rrn: r.get(6),
        merchant_id: r.get(7),
        amount_minor: r.get(8),
        created_at: r.get(9),
        next_attempt_at: r.get(10),
        last_response_code: r.get(11),
        discarded_by: r.get(12),
        discard_reason: r.get(13),
    }
}

/// A page of the queue, newest first, filtered by `q`.
pub async fn saf_page(pool: &Pool, q: &SafQuery) -> Result<Vec<SafItem>, StoreError> {
    let c = pool.get().await?;
    let limit = i64::from(q.limit.unwrap_or(SAF_PAGE_DEFAULT).clamp(1, SAF_PAGE_MAX));
    let sql = format!(
        "SELECT {SAF_COLUMNS} FROM reversals r JOIN transactions t ON t.id = r.transaction_id
         WHERE ($1::text IS NULL OR r.state = $1) AND ($2::text IS NULL OR r.bank_id = $2)
           AND ($3::bigint IS NULL OR r.id < $3)
         ORDER BY r.id DESC LIMIT $4"
    );
    let rows = c
        .query(&sql, &[&q.state, &q.bank_id, &q.before_id, &limit])
        .await?;
    Ok(rows.iter().map(saf_item).collect())
}

pub async fn saf_item_by_id(pool: &Pool, id: i64) -> Result<Option<SafItem>, StoreError> {
    let c = pool.get().await?;
    let sql = format!(
        "SELECT {SAF_COLUMNS} FROM reversals r JOIN transactions t ON t.id = r.transaction_id
         WHERE r.id = $1"
    );
    Ok(c.query_opt(&sql, &[&id]).await?.map(|r| saf_item(&r)))
}

/// Makes a pending or expired message due now (an expired one pending again, its age
/// counted afresh so the worker does not expire it at once); false when it is neither.
pub async fn saf_retry(pool: &Pool, id: i64) -> Result<bool, StoreError> {
    let c = pool.get().await?;
    let n = c
        .execute(
            "UPDATE reversals SET next_attempt_at = now(),
               created_at = CASE WHEN state = 'expired' THEN now() ELSE created_at END,
               state = 'pending'
             WHERE id = $1 AND state IN ('pending', 'expired')",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

/// Stops a pending or expired message for good; false when it is neither.
pub async fn saf_discard(pool: &Pool, id: i64, by: &str, reason: &str) -> Result<bool, StoreError> {
    let c = pool.get().await?;
    let n = c
        .execute(
            "UPDATE reversals SET state = 'discarded', discarded_by = $2, discard_reason = $3
             WHERE id = $1 AND state IN ('pending', 'expired')",
            &[&id, &by, &reason],
        )
        .await?;
    Ok(n == 1)
}

const KEY_COLUMNS: &str = concat!(
    "k.id, k.name, k.role, k.merchant_id, a.username, ",
    utc!("k.created_at"),
    ", ",
    utc!("k.expires_at"),
    ", ",
    utc!("k.revoked_at")
);

fn key_view(r: &Row) -> ApiKeyView {
    ApiKeyView {
        id: r.get(0),
        name: r.get(1),
        // The table's CHECK allows only the names Role knows.
        role: Role::parse(r.get(2)).unwrap_or(Role::Merchant),
        merchant_id: r.get(3),
        created_by: r.get(4),
        created_at: r.get(5),
        expires_at: r.get(6),
        revoked_at: r.get(7),
    }
}

/// Every API key, newest first.
pub async fn api_keys(pool: &Pool) -> Result<Vec<ApiKeyView>, StoreError> {
    let c = pool.get().await?;
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.created_by ORDER BY k.id DESC"
    );
    Ok(c.query(&sql, &[]).await?.iter().map(key_view).collect())
}

pub async fn api_key_by_id(pool: &Pool, id: i64) -> Result<Option<ApiKeyView>, StoreError> {
    let c = pool.get().await?;
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.created_by WHERE k.id = $1"
    );
    Ok(c.query_opt(&sql, &[&id]).await?.map(|r| key_view(&r)))
}

/// Revokes a key at `now`; false when it already was.
pub async fn revoke_api_key(pool: &Pool, id: i64, now: SystemTime) -> Result<bool, StoreError> {
    let c = pool.get().await?;
    let n = c
        .execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &now],
        )
        .await?;
    Ok(n == 1)
}

/// Disables (ending every session of the account at `now`) or enables an account.
pub async fn set_account_disabled(
    pool: &Pool,
    account_id: i64,
    disabled: bool,
    now: SystemTime,
) -> Result<(), StoreError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.execute(
        "UPDATE accounts SET disabled = $2 WHERE id = $1",
        &[&account_id, &disabled],
    )
    .await?;
    if disabled {
        tx.execute(
            "UPDATE account_sessions SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL",
            &[&account_id, &now],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
