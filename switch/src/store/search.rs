//! The back office's reads of transactions (issue 12): search and a payment's chain.
//!
//! No index is added for them: the request path's table keeps the few indexes issue 9
//! left it. A search walks the primary key newest first (ids grow with time) and stops at
//! its page size, so a narrow filter over a large table costs a long scan; the time
//! bounds (`from`, `to`) and the RRN (the id) keep it short.

use admin_http::transactions::{TimelineEvent, TxnPage, TxnQuery, TxnSummary};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::StoreError;

/// Most transactions one search returns.
pub const SEARCH_PAGE_MAX: u32 = 200;
/// Transactions a search returns when it does not say.
pub const SEARCH_PAGE_DEFAULT: u32 = 50;

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A filter PostgreSQL cannot read (a time that is not RFC 3339).
    #[error("bad filter: {0}")]
    BadFilter(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The transactions' back-office reads, over the pool.
#[derive(Debug, Clone)]
pub struct TxnSearch {
    pool: Pool,
}

const SUMMARY_COLUMNS: &str = "t.rrn, t.kind, t.state, t.merchant_id, t.terminal_id, t.stan, \
    t.amount_minor, t.currency, t.response_code, t.pan_last4, t.order_ref, o.rrn, \
    to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), t.id";

fn summary_of(r: &Row) -> TxnSummary {
    TxnSummary {
        rrn: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        merchant_id: r.get(3),
        terminal_id: r.get(4),
        stan: r.get(5),
        amount_minor: r.get(6),
        currency: r.get(7),
        response_code: r.get(8),
        card: r
            .get::<_, Option<String>>(9)
            .map(|l4| format!("************{l4}")),
        order_ref: r.get(10),
        original_rrn: r.get(11),
        created_at: r.get(12),
    }
}

fn bad_filter(e: tokio_postgres::Error) -> SearchError {
    // SQLSTATE class 22, data exception: an unreadable time, a NUL byte...
    match e.code() {
        Some(c) if c.code().starts_with("22") => SearchError::BadFilter(
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default(),
        ),
        _ => SearchError::Store(e.into()),
    }
}

impl TxnSearch {
    pub fn new(pool: Pool) -> TxnSearch {
        TxnSearch { pool }
    }

    /// Transactions matching `q` (its `merchant_id` already confined by the caller),
    /// newest first.
    pub async fn search(&self, q: &TxnQuery) -> Result<TxnPage, SearchError> {
        let c = self.pool.get().await.map_err(StoreError::from)?;
        let limit = q
            .limit
            .unwrap_or(SEARCH_PAGE_DEFAULT)
            .clamp(1, SEARCH_PAGE_MAX);
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM transactions t
               LEFT JOIN transactions o ON o.id = t.original_id
             WHERE ($1::text IS NULL OR t.merchant_id = $1)
               AND ($2::text IS NULL OR t.order_ref = $2)
               AND ($3::text IS NULL OR t.rrn = $3)
               AND ($4::text IS NULL OR t.stan = $4)
               AND ($5::text IS NULL OR t.terminal_id = $5)
               AND ($6::text IS NULL OR t.state = $6)
               AND ($7::text IS NULL OR t.kind = $7)
               AND ($8::bigint IS NULL OR t.amount_minor >= $8)
               AND ($9::bigint IS NULL OR t.amount_minor <= $9)
               AND ($10::text IS NULL OR t.created_at >= $10::text::timestamptz)
               AND ($11::text IS NULL OR t.created_at <= $11::text::timestamptz)
               AND ($12::bigint IS NULL OR t.id < $12)
             ORDER BY t.id DESC LIMIT $13"
        );
        let rows = c
            .query(
                &sql,
                &[
                    &q.merchant_id,
                    &q.order_ref,
                    &q.rrn,
                    &q.stan,
                    &q.terminal_id,
                    &q.state,
                    &q.kind,
                    &q.amount_min,
                    &q.amount_max,
                    &q.from,
                    &q.to,
                    &q.cursor,
                    &i64::from(limit),
                ],
            )
            .await
            .map_err(bad_filter)?;
        let next_cursor = (rows.len() == limit as usize)
            .then(|| rows.last().map(|r| r.get::<_, i64>(13)))
            .flatten();
        Ok(TxnPage {
            transactions: rows.iter().map(summary_of).collect(),
            next_cursor,
        })
    }

    /// The transaction `rrn` and the ids of its whole chain (its root and everything
    /// that names the root, at any depth).
    async fn chain_ids(&self, rrn: &str) -> Result<Option<(TxnSummary, Vec<i64>)>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM transactions t
               LEFT JOIN transactions o ON o.id = t.original_id WHERE t.rrn = $1"
        );
        let Some(row) = c.query_opt(&sql, &[&rrn]).await? else {
            return Ok(None);
        };
        let id: i64 = row.get(13);
        let ids = c
            .query(
                "WITH RECURSIVE up(id, original_id) AS (
                   SELECT id, original_id FROM transactions WHERE id = $1
                   UNION ALL
                   SELECT t.id, t.original_id FROM transactions t JOIN up ON t.id = up.original_id
                 ), root AS (SELECT id FROM up WHERE original_id IS NULL),
                 down(id) AS (
                   SELECT id FROM root
                   UNION ALL
                   SELECT t.id FROM transactions t JOIN down ON t.original_id = down.id
                 ) SELECT id FROM down",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Some((summary_of(&row), ids)))
    }

    /// The transaction `rrn` with its chain's events, oldest first; `None` when unknown.
    pub async fn chain(
        &self,
        rrn: &str,
    ) -> Result<Option<(TxnSummary, Vec<TimelineEvent>)>, StoreError> {
        let Some((txn, ids)) = self.chain_ids(rrn).await? else {
            return Ok(None);
        };
        let c = self.pool.get().await?;
        let utc = |col: &str| {
            format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        };
        let sql = format!(
            "SELECT * FROM (
               SELECT {t}, 'transaction', kind, rrn, state, amount_minor, response_code, created_at AS at
                 FROM transactions WHERE id = ANY($1)
               UNION ALL
               SELECT {n}, 'notification', event, rrn, status, NULL::bigint, NULL, created_at
                 FROM notifications WHERE transaction_id = ANY($1)
               UNION ALL
               SELECT {r}, 'store-and-forward', r.kind, t.rrn, r.state, NULL::bigint,
                      r.last_response_code, r.created_at
                 FROM reversals r JOIN transactions t ON t.id = r.transaction_id
                 WHERE r.transaction_id = ANY($1)
             ) e ORDER BY at, 2",
            t = utc("created_at"),
            n = utc("created_at"),
            r = utc("r.created_at"),
        );
        let events = c
            .query(&sql, &[&ids])
            .await?
            .iter()
            .map(|r| TimelineEvent {
                at: r.get(0),
                source: r.get(1),
                what: r.get(2),
                rrn: r.get(3),
                state: r.get(4),
                amount_minor: r.get(5),
                response_code: r.get(6),
            })
            .collect();
        Ok(Some((txn, events)))
    }
}
