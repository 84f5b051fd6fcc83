//! The switch's journal and ledger as the chaos reconciliation reads them (PostgreSQL,
//! read-only): one row per transaction of the merchant, with the state of its queued
//! reversal and the net of its postings on bank accounts.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::{Client, NoTls};

/// One transaction row, as [`super::verdict`] judges it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JournalRow {
    pub id: i64,
    /// purchase, preauth, completion, refund or reversal.
    pub kind: String,
    /// authorising, approved, declined, refused, reversing, reversed or captured.
    pub state: String,
    pub rrn: String,
    pub order_ref: Option<String>,
    pub terminal: String,
    pub stan: String,
    pub mti: String,
    pub amount_minor: i64,
    /// The row a reversal (or completion, refund) names.
    pub original_id: Option<i64>,
    pub response_code: Option<String>,
    /// The state of the reversal the switch queued for this row, if any (pending,
    /// acknowledged, expired).
    pub reversal_state: Option<String>,
    /// The sum of this row's postings on `bank:*` accounts (a charge is +amount).
    pub bank_net_minor: i64,
}

impl JournalRow {
    /// Left without an outcome: in flight, or a reversal not acknowledged by the bank.
    pub fn unresolved(&self) -> bool {
        matches!(self.state.as_str(), "authorising" | "reversing")
            || matches!(self.reversal_state.as_deref(), Some("pending" | "expired"))
    }

    /// The journal says the bank holds this purchase's money.
    pub fn charged(&self) -> bool {
        matches!(self.state.as_str(), "approved" | "captured")
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        format!(
            "#{} {} {} {} stan {} rrn {} rc {} reversal {} bank net {}",
            self.id,
            self.kind,
            self.mti,
            self.state,
            self.stan,
            self.rrn,
            self.response_code.as_deref().unwrap_or("-"),
            self.reversal_state.as_deref().unwrap_or("-"),
            self.bank_net_minor
        )
    }
}

const ROWS_SQL: &str = "
SELECT t.id, t.kind, t.state, t.rrn, t.order_ref, t.terminal_id, t.stan, t.mti,
       t.amount_minor, t.original_id, t.response_code, r.state,
       COALESCE((SELECT sum(p.amount_minor) FROM ledger_postings p
                 WHERE p.transaction_id = t.id AND p.account LIKE 'bank:%'), 0)::BIGINT
FROM transactions t LEFT JOIN reversals r ON r.transaction_id = t.id
WHERE t.merchant_id = $1
ORDER BY t.id";

const UNSETTLED_SQL: &str = "
SELECT (SELECT count(*) FROM transactions WHERE state IN ('authorising', 'reversing'))
     + (SELECT count(*) FROM reversals WHERE state = 'pending')";

/// Connects (a connection of its own, dropped with the client).
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        // The connection ends with the client; an error then has no one left to tell.
        let _ = conn.await;
    });
    Ok(client)
}

/// Every row of `merchant`.
pub async fn rows(db: &Client, merchant: &str) -> Result<Vec<JournalRow>, tokio_postgres::Error> {
    let rows = db.query(ROWS_SQL, &[&merchant]).await?;
    Ok(rows
        .iter()
        .map(|r| JournalRow {
            id: r.get(0),
            kind: r.get(1),
            state: r.get(2),
            rrn: r.get(3),
            order_ref: r.get(4),
            terminal: r.get(5),
            stan: r.get(6),
            mti: r.get(7),
            amount_minor: r.get(8),
            original_id: r.get(9),
            response_code: r.get(10),
            reversal_state: r.get(11),
            bank_net_minor: r.get(12),
        })
        .collect())
}

/// Transactions in flight or reversing, plus reversals pending, of every merchant.
pub async fn unsettled(db: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(db.query_one(UNSETTLED_SQL, &[]).await?.get(0))
}

/// Polls [`unsettled`] every `poll` until it is zero or `wait` has passed; returns the
/// last count and how long it took.
pub async fn settle(
    db: &Client,
    wait: Duration,
    poll: Duration,
) -> Result<(i64, Duration), tokio_postgres::Error> {
    let t0 = tokio::time::Instant::now();
    loop {
        let n = unsettled(db).await?;
        if n == 0 || t0.elapsed() >= wait {
            return Ok((n, t0.elapsed()));
        }
        tokio::time::sleep(poll).await;
    }
}
