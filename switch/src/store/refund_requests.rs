//! Refund requests from the back office (the `refund_requests` table) and what their
//! execution needs to read: the original as the merchant named it (DE41, DE11, DE7, MTI),
//! and the 0620 telling the merchant the outcome. The rules (who may approve, when a
//! request needs approval) are in [`crate::refund_desk`].

use std::time::SystemTime;

use admin_http::refunds::RefundRequestView;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::Event;
use super::{StoreError, TxnRecord};
use crate::lifecycle::Status;

/// The original transaction of a refund, as the merchant named it.
#[derive(Debug, Clone)]
pub struct Original {
    pub rrn: String,
    pub merchant_id: String,
    pub terminal_id: String,
    pub mti: String,
    pub stan: String,
    pub transmitted_at: String,
    pub currency: i16,
    pub amount_minor: i64,
}

/// A new refund request.
#[derive(Debug, Clone)]
pub struct NewRefundRequest<'a> {
    /// refund, capture or void.
    pub kind: &'a str,
    pub requested_by: &'a str,
    pub idempotency_key: &'a str,
    pub original_rrn: &'a str,
    pub merchant_id: &'a str,
    pub amount_minor: i64,
    pub reason: &'a str,
    pub needs_approval: bool,
    pub now: SystemTime,
    pub expires_at: SystemTime,
}

/// A request's fields beyond its view that a decision needs.
#[derive(Debug, Clone)]
pub struct RequestRow {
    pub view: RefundRequestView,
    pub expires_at: SystemTime,
    /// The DE11 and DE7 it is sent with, fixed when it is approved: a resumed execution
    /// sends the same request again, which the request path recognises as a repeat.
    pub sent: Option<(String, String)>,
    /// Sendings that failed for a passing reason so far (the resumer's backoff).
    pub attempts: i32,
}

/// The refund requests' SQL, over the pool.
#[derive(Debug, Clone)]
pub struct RefundRequests {
    pool: Pool,
}

/// A request's state as it stands at the query's time: a pending request past its expiry is
/// `expired` even before anyone tries to decide it (the list and its filter show it so;
/// deciding it records the expiry).
macro_rules! state_now {
    () => {
        "CASE WHEN state = 'pending' AND expires_at <= now() THEN 'expired' ELSE state END"
    };
}

const COLUMNS: &str = concat!(
    "id, ",
    state_now!(),
    ", original_rrn, merchant_id, amount_minor, reason, requested_by, \
    needs_approval, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
    to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), decided_by, \
    refund_rrn, response_code, expires_at, kind, sent_stan, sent_de7, attempts, failure"
);

fn row_of(r: &Row) -> RequestRow {
    RequestRow {
        view: RefundRequestView {
            id: r.get(0),
            kind: r.get(14),
            state: r.get(1),
            original_rrn: r.get(2),
            merchant_id: r.get(3),
            amount_minor: r.get(4),
            reason: r.get(5),
            requested_by: r.get(6),
            needs_approval: r.get(7),
            created_at: r.get(8),
            expires_at: r.get(9),
            decided_by: r.get(10),
            refund_rrn: r.get(11),
            response_code: r.get(12),
            failure: r.get(18),
        },
        expires_at: r.get(13),
        sent: r
            .get::<_, Option<String>>(15)
            .zip(r.get::<_, Option<String>>(16)),
        attempts: r.get(17),
    }
}

/// The request of a requester (`$1`) and idempotency key (`$2`).
fn by_key_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM refund_requests WHERE requested_by = $1 AND idempotency_key = $2"
    )
}

impl RefundRequests {
    pub fn new(pool: Pool) -> RefundRequests {
        RefundRequests { pool }
    }

    /// The original transaction `rrn`, if any.
    pub async fn original(&self, rrn: &str) -> Result<Option<Original>, StoreError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT rrn, merchant_id, terminal_id, mti, stan, transmitted_at, currency,
                   amount_minor FROM transactions WHERE rrn = $1",
                &[&rrn],
            )
            .await?;
        Ok(row.map(|r| Original {
            rrn: r.get(0),
            merchant_id: r.get(1),
            terminal_id: r.get(2),
            mti: r.get(3),
            stan: r.get(4),
            transmitted_at: r.get(5),
            currency: r.get(6),
            amount_minor: r.get(7),
        }))
    }

    /// Records a request; `(row, true)` when new, `(existing, false)` when the requester
    /// used this idempotency key before.
    pub async fn insert(&self, n: &NewRefundRequest<'_>) -> Result<(RequestRow, bool), StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO refund_requests (requested_by, idempotency_key, original_rrn, merchant_id,
               amount_minor, reason, state, needs_approval, created_at, expires_at, kind)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10)
             ON CONFLICT (requested_by, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
        );
        let inserted = c
            .query_opt(
                &sql,
                &[
                    &n.requested_by,
                    &n.idempotency_key,
                    &n.original_rrn,
                    &n.merchant_id,
                    &n.amount_minor,
                    &n.reason,
                    &n.needs_approval,
                    &n.now,
                    &n.expires_at,
                    &n.kind,
                ],
            )
            .await?;
        if let Some(r) = inserted {
            return Ok((row_of(&r), true));
        }
        let r = c
            .query_one(&by_key_sql(), &[&n.requested_by, &n.idempotency_key])
            .await?;
        Ok((row_of(&r), false))
    }

    /// The request `requested_by` made with `idempotency_key`, if any.
    pub async fn by_key(
        &self,
        requested_by: &str,
        idempotency_key: &str,
    ) -> Result<Option<RequestRow>, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_opt(&by_key_sql(), &[&requested_by, &idempotency_key])
            .await?;
        Ok(r.map(|r| row_of(&r)))
    }

    /// Whether a void of `rrn` is already asked for and not over: pending (not expired),
    /// approved, or executed with `00`; a second would reverse the payment twice.
    pub async fn void_outstanding(&self, rrn: &str) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM refund_requests WHERE original_rrn = $1 AND kind = 'void'
               AND ({} IN ('pending', 'approved') OR (state = 'executed' AND response_code = '00')))",
            state_now!()
        );
        Ok(c.query_one(&sql, &[&rrn]).await?.get(0))
    }

    pub async fn get(&self, id: i64) -> Result<Option<RequestRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!("SELECT {COLUMNS} FROM refund_requests WHERE id = $1");
        Ok(c.query_opt(&sql, &[&id]).await?.map(|r| row_of(&r)))
    }

    /// Requests, newest first, of one merchant and/or state when given (at most 500).
    pub async fn list(
        &self,
        merchant_id: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<RefundRequestView>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM refund_requests
             WHERE ($1::text IS NULL OR merchant_id = $1) AND ($2::text IS NULL OR {} = $2)
             ORDER BY id DESC LIMIT 500",
            state_now!()
        );
        let rows = c.query(&sql, &[&merchant_id, &state]).await?;
        Ok(rows.iter().map(|r| row_of(r).view).collect())
    }

    /// Moves a pending request to `to` (approved, rejected, expired) by `by`, with the DE11
    /// and DE7 it will be sent with when approved; false when it was no longer pending.
    pub async fn decide(
        &self,
        id: i64,
        to: &str,
        by: Option<&str>,
        now: SystemTime,
        sent: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let (stan, de7) = sent.unzip();
        let n = c
            .execute(
                "UPDATE refund_requests SET state = $2, decided_by = $3, decided_at = $4,
                   sent_stan = $5, sent_de7 = $6
                 WHERE id = $1 AND state = 'pending'",
                &[&id, &to, &by, &now, &stan, &de7],
            )
            .await?;
        Ok(n == 1)
    }

    /// Records an approved request's transaction and answer; false when it was recorded
    /// before (by another execution of the same approved request).
    pub async fn executed(
        &self,
        id: i64,
        refund_rrn: Option<&str>,
        response_code: &str,
    ) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE refund_requests SET state = 'executed', refund_rrn = $2, response_code = $3
                 WHERE id = $1 AND state = 'approved'",
                &[&id, &refund_rrn, &response_code],
            )
            .await?;
        Ok(n == 1)
    }

    /// Ends an approved request whose sending can never succeed: `failed`, with `reason`;
    /// false when it was no longer approved.
    pub async fn failed(&self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE refund_requests SET state = 'failed', failure = $2
                 WHERE id = $1 AND state = 'approved'",
                &[&id, &reason],
            )
            .await?;
        Ok(n == 1)
    }

    /// Counts a sending of approved request `id` that failed for a passing reason and
    /// leaves it alone until `retry_at`.
    pub async fn postpone(&self, id: i64, retry_at: SystemTime) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE refund_requests SET attempts = attempts + 1, next_attempt_at = $2
             WHERE id = $1 AND state = 'approved'",
            &[&id, &retry_at],
        )
        .await?;
        Ok(())
    }

    /// Approved requests without a recorded outcome, approved before `before` and not
    /// postponed past `now` (longest waiting first, at most `max`): executions a crash
    /// interrupted, or whose sending failed for a passing reason.
    pub async fn interrupted(
        &self,
        before: SystemTime,
        now: SystemTime,
        max: i64,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM refund_requests
             WHERE state = 'approved' AND decided_at < $1
               AND COALESCE(next_attempt_at, decided_at) <= $2
             ORDER BY COALESCE(next_attempt_at, decided_at) LIMIT $3"
        );
        let rows = c.query(&sql, &[&before, &now, &max]).await?;
        Ok(rows.iter().map(row_of).collect())
    }

    /// Stores the 0620 telling the merchant of a back-office refund (transaction
    /// `refund_id`) of the payment `root`, with the payment's status after it.
    pub async fn notify(
        &self,
        root: &TxnRecord,
        status: Status,
        txn_id: i64,
        event: Event,
    ) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        super::notifications::enqueue(&c, root, status, txn_id, event).await
    }
}
