//! Advices banks start, recorded before they are acknowledged and applied exactly once
//! (the decision is [`crate::lifecycle::decide`]).

use deadpool_postgres::{GenericClient, Pool};

use super::Event;
use super::notifications;
use super::postings::business_day_sql;
use super::reads::{lock_row, lock_where};
use super::{BankAdvice, StoreError, TxnRecord};
use crate::lifecycle::State;
use crate::lifecycle::{AdviceEffect, decide};

/// Records and applies one advice.
pub(super) async fn apply(
    pool: &Pool,
    cutover_hours: i32,
    a: &BankAdvice,
) -> Result<AdviceEffect, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let txn = match &a.rrn {
        Some(rrn) => {
            lock_where(
                &tx,
                "SELECT id FROM transaction_rows WHERE id = $1 AND rrn = $2 AND bank_id = $3 FOR UPDATE",
                &[&super::id_of_rrn(rrn), rrn, &a.bank_id],
            )
            .await?
        }
        None => None,
    };
    let effect = decide(a.mti.class(), txn.as_ref().map(|t| (t.state, t.kind)));
    if effect == AdviceEffect::Deferred {
        return Ok(effect);
    }
    let inserted = tx
        .execute(
            "INSERT INTO bank_advices (bank_id, mti, stan, transmitted_at, rrn, transaction_id, effect) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (bank_id, mti, stan, transmitted_at) DO NOTHING",
            &[
                &a.bank_id,
                &a.mti.as_str(),
                &a.stan,
                &a.transmitted_at,
                &a.rrn,
                &txn.as_ref().map(|t| t.id),
                &effect.as_str(),
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(AdviceEffect::Duplicate);
    }
    if let (AdviceEffect::Reversed, Some(t)) = (effect, &txn) {
        reverse(&tx, cutover_hours, a, t).await?;
    }
    tx.commit().await?;
    Ok(effect)
}

/// The bank reversed `t` on its own: it is reversed here too, a reversal of ours still
/// pending for it has nothing left to do, its postings (if approved) are undone, and its
/// merchant is notified.
async fn reverse<C: GenericClient>(
    c: &C,
    cutover_hours: i32,
    a: &BankAdvice,
    t: &TxnRecord,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE transaction_rows SET state = 'reversed', updated_at = now() WHERE id = $1",
        &[&t.id],
    )
    .await?;
    c.execute(
        "UPDATE reversals SET state = 'acknowledged', acknowledged_at = now(), last_response_code = 'AD' \
         WHERE transaction_id = $1 AND state = 'pending'",
        &[&t.id],
    )
    .await?;
    if t.state == State::Approved {
        undo_postings(c, cutover_hours, a, t.id).await?;
    }
    let root = lock_row(c, t.original_id.unwrap_or(t.id)).await?;
    let status = root.payment().status();
    notifications::enqueue(c, &root, status, t.id, Event::BankReversed).await
}

/// Undoes transaction `id`'s postings as a merchant reversal would: under a reversal
/// row of its own. Its MTI (A420) is no merchant MTI and its STAN is qualified by the
/// bank (each bank numbers its own), so it never takes a merchant request's or another
/// advice's key.
async fn undo_postings<C: GenericClient>(
    c: &C,
    cutover_hours: i32,
    a: &BankAdvice,
    id: i64,
) -> Result<(), StoreError> {
    let q = format!(
        "WITH r AS (
           INSERT INTO transaction_rows (id, instance_id, merchant_id, terminal_id, stan, transmitted_at, mti, kind,
             processing_code, amount_minor, currency, rrn, bank_id, original_id, state, response_code, reason)
           SELECT n.id, t.instance_id, t.merchant_id, t.terminal_id, $2, $3, 'A420', 'reversal',
             t.processing_code, t.amount_minor, t.currency, lpad((n.id % 1000000000000)::text, 12, '0'),
             t.bank_id, t.id, 'approved', '00', 'bank advice'
           FROM transactions t, (SELECT nextval('transaction_id_seq') AS id) n WHERE t.id = $1
           RETURNING id)
         INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day)
         SELECT r.id, p.account, -p.amount_minor, p.currency, {bd}
         FROM r, ledger_postings p WHERE p.transaction_id = $1",
        bd = business_day_sql(4)
    );
    let stan = format!("{}:{}", a.bank_id, a.stan);
    c.execute(&q, &[&id, &stan, &a.transmitted_at, &cutover_hours])
        .await?;
    Ok(())
}
