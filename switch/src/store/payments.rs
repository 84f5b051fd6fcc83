//! Lifecycle steps under the payment's row lock: a completion, refund or reversal
//! request recorded with its [`Transition`], a refund settled by the bank; and
//! transaction ids.
//!
//! A [`PaymentLock`] is a task of its own holding the database transaction (and so the
//! row locks) while the request path decides; it commits what it is handed, or rolls
//! back when the handle is dropped.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool, PoolError, Transaction};
use tokio::sync::oneshot;

use super::reads::{load_named, lock_row};
use super::{NewTxn, OriginalRef, PaymentLock, StoreError, TxnRecord, postings, reversals};
use crate::db::DbError;
use crate::lifecycle::{self, Posting, RootChange, Row, Settlement, Transition, Verdict};

/// Pause before asking the pool again when it has no connection to give (busy or
/// timed out, as opposed to the database refusing one) while settling a refund.
pub(super) const POOL_WAIT_PAUSE_MS: u64 = 200;

/// The first of a block of fresh transaction ids (the sequence steps by the block).
pub(super) async fn id_block(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &client
                .prepare_cached("SELECT nextval('transaction_id_seq')")
                .await?,
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The rows a step's [`Transition`] is about.
struct Rows<'a> {
    own_id: i64,
    own_bank: Option<&'a str>,
    own_merchant: &'a str,
    own_currency: i16,
    own_instance: i16,
    named_id: i64,
    named_bank: Option<&'a str>,
    root_id: i64,
}

fn invalid(what: &str) -> StoreError {
    StoreError::Db(DbError::Invalid(what.to_string()))
}

/// What a [`PgPaymentLock`] hands its task to commit.
#[derive(Debug)]
struct Commit {
    request: NewTxn,
    change: Transition,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

type Held = Result<Option<(TxnRecord, TxnRecord)>, StoreError>;

/// Who a lock is for: the DE90 reference's row of the merchant's terminal.
struct Key {
    merchant_id: String,
    terminal_id: String,
    original: OriginalRef,
}

/// A payment locked by the task [`hold`].
#[derive(Debug)]
struct PgPaymentLock {
    named: TxnRecord,
    root: TxnRecord,
    commit: oneshot::Sender<Commit>,
}

#[async_trait]
impl PaymentLock for PgPaymentLock {
    fn named(&self) -> &TxnRecord {
        &self.named
    }

    fn root(&self) -> &TxnRecord {
        &self.root
    }

    async fn record(
        self: Box<Self>,
        request: NewTxn,
        change: Transition,
    ) -> Result<bool, StoreError> {
        let (done, recorded) = oneshot::channel();
        self.commit
            .send(Commit {
                request,
                change,
                done,
            })
            .map_err(|_| StoreError::LockLost)?;
        recorded.await.map_err(|_| StoreError::LockLost)?
    }
}

/// Locks the row a DE90 reference names and its payment's root.
pub(super) async fn lock(
    pool: &Pool,
    cutover_hours: i32,
    permit: tokio::sync::OwnedSemaphorePermit,
    merchant_id: &str,
    terminal_id: &str,
    original: &OriginalRef,
) -> Result<Option<Box<dyn PaymentLock>>, StoreError> {
    let (held_tx, held_rx) = oneshot::channel();
    let (commit_tx, commit_rx) = oneshot::channel();
    let key = Key {
        merchant_id: merchant_id.to_string(),
        terminal_id: terminal_id.to_string(),
        original: original.clone(),
    };
    let pool = pool.clone();
    tokio::spawn(async move {
        hold(pool, cutover_hours, key, held_tx, commit_rx).await;
        // The lock, and its connection, are given back: another may be taken.
        drop(permit);
    });
    let held = held_rx.await.map_err(|_| StoreError::LockLost)??;
    Ok(held.map(|(named, root)| {
        Box::new(PgPaymentLock {
            named,
            root,
            commit: commit_tx,
        }) as Box<dyn PaymentLock>
    }))
}

/// The lock's task: opens the transaction, locks and reports the rows, then commits what
/// it is handed. If the handle is dropped instead, the transaction drops, rolled back.
async fn hold(
    pool: Pool,
    cutover_hours: i32,
    key: Key,
    held: oneshot::Sender<Held>,
    commit: oneshot::Receiver<Commit>,
) {
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let _ = held.send(Err(e.into()));
            return;
        }
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => {
            let _ = held.send(Err(e.into()));
            return;
        }
    };
    let found = load_named(&tx, &key.merchant_id, &key.terminal_id, &key.original, true).await;
    let (named, root) = match found {
        Ok(Some(rows)) => rows,
        Ok(None) => {
            let _ = held.send(Ok(None));
            return;
        }
        Err(e) => {
            let _ = held.send(Err(e.into()));
            return;
        }
    };
    if held.send(Ok(Some((named.clone(), root.clone())))).is_err() {
        return;
    }
    let Ok(Commit {
        request,
        change,
        done,
    }) = commit.await
    else {
        return;
    };
    let _ = done.send(record(tx, cutover_hours, &named, root.id, &request, &change).await);
}

/// Inserts the request's row and applies its transition, then commits; `Ok(false)`
/// (rolled back) when the request's key exists already.
async fn record(
    tx: Transaction<'_>,
    cutover_hours: i32,
    named: &TxnRecord,
    root_id: i64,
    request: &NewTxn,
    change: &Transition,
) -> Result<bool, StoreError> {
    if !insert(&tx, request).await? {
        return Ok(false);
    }
    let rows = Rows {
        own_id: request.id,
        own_bank: request.bank_id.as_deref(),
        own_merchant: &request.merchant_id,
        own_currency: request.currency,
        own_instance: request.instance_id,
        named_id: named.id,
        named_bank: named.bank_id.as_deref(),
        root_id,
    };
    apply(&tx, cutover_hours, &rows, change).await?;
    tx.commit().await?;
    Ok(true)
}

/// Inserts a lifecycle request's row; false if a row with its key exists.
async fn insert<C: GenericClient>(c: &C, t: &NewTxn) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "INSERT INTO transaction_rows (id, instance_id, merchant_id, terminal_id, stan, transmitted_at, mti, kind, \
             processing_code, amount_minor, currency, order_ref, pan_hash, pan_last4, card_enc, rrn, bank_id, bank_stan, \
             bank_transmitted_at, original_id, state, response_code, reason, refund_reason, content_digest) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
             $22, $23, $24, $25) ON CONFLICT DO NOTHING",
            &[
                &t.id,
                &t.instance_id,
                &t.merchant_id,
                &t.terminal_id,
                &t.stan,
                &t.transmitted_at,
                &t.mti,
                &t.kind.as_str(),
                &t.processing_code,
                &t.amount_minor,
                &t.currency,
                &t.order_ref,
                &t.pan_hash,
                &t.pan_last4,
                &t.card_enc,
                &t.rrn,
                &t.bank_id,
                &t.bank_stan,
                &t.bank_transmitted_at,
                &t.original_id,
                &t.state.as_str(),
                &t.response_code,
                &t.reason,
                &t.refund_reason,
                &t.content.as_ref().map(|d| &d.0[..]),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Applies a transition to the rows it is about, inside the caller's transaction.
async fn apply<C: GenericClient>(
    c: &C,
    cutover_hours: i32,
    rows: &Rows<'_>,
    t: &Transition,
) -> Result<(), StoreError> {
    if let Some(s) = &t.settle {
        settle_row(c, rows.own_id, s).await?;
    }
    if let Some(state) = t.named_state {
        c.execute(
            "UPDATE transaction_rows SET state = $2, updated_at = now() WHERE id = $1",
            &[&rows.named_id, &state.as_str()],
        )
        .await?;
    }
    if !t.root.is_empty() {
        change_root(c, rows.root_id, &t.root).await?;
    }
    match t.posting {
        Some(Posting::Amount(amount)) => {
            let bank = rows
                .own_bank
                .ok_or_else(|| invalid("posting for a row without a bank"))?;
            let (id, merchant, currency) = (rows.own_id, rows.own_merchant, rows.own_currency);
            postings::post(c, cutover_hours, id, bank, merchant, amount, currency).await?;
        }
        Some(Posting::NegateNamed) => {
            postings::post_negation(c, cutover_hours, rows.own_id, rows.named_id).await?;
        }
        None => {}
    }
    if let Some((row, forward)) = t.forward {
        let (id, bank) = match row {
            Row::Own => (rows.own_id, rows.own_bank),
            Row::Named => (rows.named_id, rows.named_bank),
        };
        if let Some(bank) = bank {
            reversals::queue(c, id, bank, forward).await?;
        }
    }
    match t.in_doubt {
        // A request at the bank stays 'authorising' until it answers: recovery finds it here.
        Some(true) => {
            c.execute(
                "INSERT INTO in_doubt (transaction_id, instance_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&rows.own_id, &rows.own_instance],
            )
            .await?;
        }
        Some(false) => {
            c.execute(
                "DELETE FROM in_doubt WHERE transaction_id = $1",
                &[&rows.own_id],
            )
            .await?;
        }
        None => {}
    }
    Ok(())
}

/// A row's outcome: state, response code, DE38.
async fn settle_row<C: GenericClient>(c: &C, id: i64, s: &Settlement) -> Result<(), StoreError> {
    c.execute(
        "UPDATE transaction_rows SET state = $2, response_code = $3, auth_code = $4, updated_at = now() WHERE id = $1",
        &[&id, &s.state.as_str(), &s.rc.as_str(), &s.auth_code],
    )
    .await?;
    Ok(())
}

/// Applies a [`RootChange`] to the payment's root row.
pub(super) async fn change_root<C: GenericClient>(
    c: &C,
    id: i64,
    r: &RootChange,
) -> Result<(), StoreError> {
    let captured = r.captured_minor.map(|v| v as i64);
    c.execute(
        "UPDATE transaction_rows SET state = coalesce($2, state), captured_minor = coalesce($3, captured_minor), \
         refunded_minor = refunded_minor + $4, refund_reserved_minor = refund_reserved_minor + $5, \
         completion_pending = coalesce($6, completion_pending), updated_at = now() WHERE id = $1",
        &[
            &id,
            &r.state.map(|s| s.as_str()),
            &captured,
            &r.refunded_delta,
            &r.refund_reserved_delta,
            &r.completion_pending,
        ],
    )
    .await?;
    Ok(())
}

/// A connection, waiting while the pool has none to give; a database that refuses one
/// is an error.
async fn connection_patiently(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    loop {
        match pool.get().await {
            Ok(c) => return Ok(c),
            Err(PoolError::Backend(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "no database connection");
                tokio::time::sleep(Duration::from_millis(POOL_WAIT_PAUSE_MS)).await;
            }
        }
    }
}

/// Settles refund `id` with the bank's verdict, under its payment's lock.
pub(super) async fn settle_refund(
    pool: &Pool,
    cutover_hours: i32,
    id: i64,
    verdict: Verdict,
    auth_code: Option<String>,
) -> Result<(), StoreError> {
    let mut client = connection_patiently(pool).await?;
    let tx = client.transaction().await?;
    let own = lock_row(&tx, id).await?;
    if own.state != lifecycle::State::Authorising {
        // Settled already: this is a write repeated after its acknowledgement was lost
        // (found by the simulation, docs/simulation.md); applying it again would move
        // the refund's money twice.
        return Ok(());
    }
    let root_id = own
        .original_id
        .ok_or_else(|| invalid("a refund names its payment"))?;
    let root = lock_row(&tx, root_id).await?;
    let change = lifecycle::refund_settled(&root.payment(), own.amount_minor, verdict, auth_code);
    let rows = Rows {
        own_id: own.id,
        own_bank: own.bank_id.as_deref(),
        own_merchant: &own.merchant_id,
        own_currency: own.currency as i16,
        own_instance: 0,
        named_id: own.id,
        named_bank: own.bank_id.as_deref(),
        root_id,
    };
    debug_assert!(change.in_doubt != Some(true), "own_instance is not read");
    apply(&tx, cutover_hours, &rows, &change).await?;
    tx.commit().await?;
    Ok(())
}
