//! Lookups: recorded answers, live order references, payments by reference, operators'
//! views. None of them changes anything; [`load_named`] and [`lock_root`] also serve the
//! writers that hold a payment's lock.

use std::sync::LazyLock;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;

use super::{OriginalRef, Recorded, RequestRef, StoreError, TxnRecord};
use crate::checks::Kind;
use crate::db::DbError;
use crate::lifecycle::State;

/// The columns every lifecycle query reads, in the order [`txn_record`] expects.
pub(super) const TXN_COLUMNS: &str = "id, kind, state, amount_minor, currency, captured_minor, refunded_minor, \
    refund_reserved_minor, completion_pending, original_id, rrn, bank_id, bank_stan, bank_transmitted_at, mti, \
    processing_code, card_enc, pan_hash, pan_last4, order_ref, terminal_id, merchant_id, response_code";

/// A row selected with [`TXN_COLUMNS`]. A kind or state the enums do not know (the
/// database's checks allow none) reads as a reversal, refused.
pub(super) fn txn_record(r: &Row) -> TxnRecord {
    TxnRecord {
        id: r.get(0),
        kind: Kind::parse(r.get::<_, &str>(1)).unwrap_or(Kind::Reversal),
        state: State::parse(r.get::<_, &str>(2)).unwrap_or(State::Refused),
        amount_minor: r.get::<_, i64>(3) as u64,
        currency: r.get::<_, i16>(4) as u16,
        captured_minor: r.get::<_, i64>(5) as u64,
        refunded_minor: r.get::<_, i64>(6) as u64,
        refund_reserved_minor: r.get::<_, i64>(7) as u64,
        completion_pending: r.get(8),
        original_id: r.get(9),
        rrn: r.get(10),
        bank_id: r.get(11),
        bank_stan: r.get(12),
        bank_transmitted_at: r.get(13),
        mti: r.get(14),
        processing_code: r.get(15),
        card_enc: r.get(16),
        pan_hash: r.get(17),
        pan_last4: r.get(18),
        order_ref: r.get(19),
        terminal_id: r.get(20),
        merchant_id: r.get(21),
        response_code: r.get(22),
    }
}

/// The row named by a DE90 reference and its payment's root, both locked when `lock`
/// (until the caller's transaction ends).
pub(super) async fn load_named<C: GenericClient>(
    c: &C,
    merchant_id: &str,
    terminal_id: &str,
    r: &OriginalRef,
    lock: bool,
) -> Result<Option<(TxnRecord, TxnRecord)>, tokio_postgres::Error> {
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &merchant_id,
        &terminal_id,
        &r.mti,
        &r.stan,
        &r.transmitted_at,
    ];
    let named = if lock {
        let q = "SELECT id FROM transaction_rows WHERE merchant_id = $1 AND terminal_id = $2 AND mti = $3 \
                 AND stan = $4 AND transmitted_at = $5 FOR UPDATE";
        lock_where(c, q, &key).await?
    } else {
        let q = format!(
            "SELECT {TXN_COLUMNS} FROM transactions WHERE merchant_id = $1 AND terminal_id = $2 AND mti = $3 \
             AND stan = $4 AND transmitted_at = $5"
        );
        c.query_opt(&q, &key).await?.map(|row| txn_record(&row))
    };
    let Some(named) = named else {
        return Ok(None);
    };
    if named.kind.is_root() {
        return Ok(Some((named.clone(), named)));
    }
    let Some(root_id) = named.original_id else {
        return Ok(None);
    };
    let root = if lock {
        lock_where(c, LOCK_SQL, &[&root_id]).await?
    } else {
        let q = format!("SELECT {TXN_COLUMNS} FROM transactions WHERE id = $1");
        c.query_opt(&q, &[&root_id]).await?.map(|r| txn_record(&r))
    };
    Ok(root.map(|root| (named, root)))
}

/// Transaction `id`, locked until the caller's transaction ends, its settlement folded
/// in ([`FOLD_SQL`]). Errors: the database's, and a missing row.
pub(super) async fn lock_row<C: GenericClient>(c: &C, id: i64) -> Result<TxnRecord, StoreError> {
    lock_where(c, LOCK_SQL, &[&id])
        .await?
        .ok_or_else(|| StoreError::Db(DbError::Invalid(format!("no transaction {id} to lock"))))
}

/// Locks row `$1` of `transaction_rows` (the table under the view, which cannot be
/// locked through its outer join).
const LOCK_SQL: &str = "SELECT id FROM transaction_rows WHERE id = $1 FOR UPDATE";

/// Folds row `$1`'s settlement (V16) into the row, which the caller's transaction has
/// locked, and reads it with [`TXN_COLUMNS`]. The values written are the view's own (one
/// definition of how a settlement reads), so from then on the row's columns and
/// constraints (refunds within captured) say what the view says. Run after the lock, as
/// a statement of its own: its snapshot is taken once the lock is held, so it sees a
/// settlement committed while the lock was awaited. The read in the same statement sees
/// the row as it was with the settlement laid over it: what the fold writes.
static FOLD_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH f AS (
           UPDATE transaction_rows t SET state = v.state, response_code = v.response_code,
             auth_code = v.auth_code, updated_at = v.updated_at, captured_minor = v.captured_minor
           FROM transactions v WHERE t.id = $1 AND v.id = t.id AND t.state = 'authorising'
             AND v.state <> t.state)
         SELECT {TXN_COLUMNS} FROM transactions WHERE id = $1"
    )
});

/// Locks the row of `transaction_rows` that `lock_sql` selects (its id, `FOR UPDATE`)
/// until the caller's transaction ends, and reads it with its settlement folded in
/// ([`FOLD_SQL`]); None if it selects none.
pub(super) async fn lock_where<C: GenericClient>(
    c: &C,
    lock_sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<TxnRecord>, tokio_postgres::Error> {
    let lock = c.prepare_cached(lock_sql).await?;
    let Some(locked) = c.query_opt(&lock, params).await? else {
        return Ok(None);
    };
    let id: i64 = locked.get(0);
    let fold = c.prepare_cached(&FOLD_SQL).await?;
    Ok(c.query_opt(&fold, &[&id]).await?.map(|r| txn_record(&r)))
}

/// What the record says about the request with this key.
pub(super) async fn recorded(
    pool: &Pool,
    key: &RequestRef<'_>,
) -> Result<Option<Recorded>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &client.prepare_cached("SELECT state, response_code, rrn, auth_code, kind, content_digest FROM transactions \
             WHERE merchant_id = $1 AND terminal_id = $2 AND stan = $3 AND transmitted_at = $4 AND mti = $5").await?,
            &[
                &key.merchant_id,
                &key.terminal_id,
                &key.stan,
                &key.transmitted_at,
                &key.mti,
            ],
        )
        .await?;
    Ok(row.map(|r| Recorded {
        state: State::parse(r.get::<_, &str>(0)).unwrap_or(State::Refused),
        response_code: r.get(1),
        rrn: r.get(2),
        auth_code: r.get(3),
        kind: Kind::parse(r.get::<_, &str>(4)).unwrap_or(Kind::Reversal),
        content: r
            .get::<_, Option<&[u8]>>(5)
            .and_then(crate::content::ContentDigest::from_bytes),
    }))
}

/// Whether a live purchase or pre-authorisation of the merchant holds `order_ref`.
pub(super) async fn order_ref_live(
    pool: &Pool,
    merchant_id: &str,
    order_ref: &str,
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT 1 FROM transactions WHERE merchant_id = $1 AND order_ref = $2 \
             AND kind IN ('purchase', 'preauth') AND order_slot = 0",
                )
                .await?,
            &[&merchant_id, &order_ref],
        )
        .await?;
    Ok(row.is_some())
}

/// The root of the payment a DE90 reference names, without a lock.
pub(super) async fn payment_of(
    pool: &Pool,
    merchant_id: &str,
    terminal_id: &str,
    original: &OriginalRef,
) -> Result<Option<TxnRecord>, StoreError> {
    let client = pool.get().await?;
    let found = load_named(&client, merchant_id, terminal_id, original, false).await?;
    Ok(found.map(|(_, root)| root))
}

/// The merchant's latest purchase or pre-authorisation with `order_ref`.
pub(super) async fn payment_by_order_ref(
    pool: &Pool,
    merchant_id: &str,
    order_ref: &str,
) -> Result<Option<TxnRecord>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {TXN_COLUMNS} FROM transactions WHERE merchant_id = $1 AND order_ref = $2 \
                 AND kind IN ('purchase', 'preauth') ORDER BY id DESC LIMIT 1"
            ),
            &[&merchant_id, &order_ref],
        )
        .await?;
    Ok(row.map(|r| txn_record(&r)))
}

/// The transaction with this RRN.
pub(super) async fn by_rrn(pool: &Pool, rrn: &str) -> Result<Option<TxnRecord>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {TXN_COLUMNS} FROM transactions WHERE id = $1 AND rrn = $2"),
            &[&super::id_of_rrn(rrn), &rrn],
        )
        .await?;
    Ok(row.map(|r| txn_record(&r)))
}
