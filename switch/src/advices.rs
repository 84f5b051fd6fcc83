//! Messages banks start: advices about a transaction's later fate. Each is recorded
//! before it is acknowledged, applied exactly once (a duplicate is acknowledged again and
//! changes nothing), and raises a notification to the merchant.
//!
//! Understood: 0420/0421 (the bank reversed a transaction on its own, named by DE37).
//! Any other advice class is recorded and acknowledged without effect.

use bytes::Bytes;
use codec::{Message, MessageBuilder};
use deadpool_postgres::Pool;

use crate::db::DbError;
use crate::lifecycle::State;

/// What an advice did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdviceEffect {
    /// Seen before: acknowledged again, nothing applied.
    Duplicate,
    /// The named transaction's own outcome is not recorded yet: nothing is recorded and
    /// the advice is not acknowledged, so the bank repeats it once it can be applied.
    Deferred,
    /// The named transaction is now reversed.
    Reversed,
    /// Recorded; the transaction was already reversed, or is unknown, or the advice is
    /// of a kind that changes nothing here.
    Recorded,
}

impl AdviceEffect {
    pub fn as_str(&self) -> &'static str {
        match self {
            AdviceEffect::Duplicate => "duplicate",
            AdviceEffect::Reversed => "reversed",
            AdviceEffect::Recorded => "recorded",
            AdviceEffect::Deferred => "deferred",
        }
    }
}

/// Whether a reversal advice may apply to a row in `state`: something the bank approved
/// (or whose outcome is unknown) can be reversed; anything else is left as it is.
pub fn reversible(state: State) -> bool {
    matches!(state, State::Approved | State::Reversing)
}

/// Records and applies one advice from `bank_id`.
pub async fn apply(pool: &Pool, bank_id: &str, msg: &Message) -> Result<AdviceEffect, DbError> {
    let mti = msg.mti().original();
    let stan = msg.get_str(11).map(|s| s.into_owned()).unwrap_or_default();
    let de7 = msg.get_str(7).map(|s| s.into_owned()).unwrap_or_default();
    let rrn = msg.get_str(37).map(|s| s.trim_end().to_string());
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let txn = match &rrn {
        Some(rrn) => {
            tx.query_opt(
                "SELECT id, state, kind, coalesce(original_id, id) FROM transactions \
                 WHERE rrn = $1 AND bank_id = $2 FOR UPDATE",
                &[rrn, &bank_id],
            )
            .await?
        }
        None => None,
    };
    // Only whole payments (purchases, pre-authorisations) are reversed by an advice; a
    // bank reversing a completion or refund on its own is recorded for an operator.
    if mti.class() == 4
        && txn
            .as_ref()
            .is_some_and(|r| State::parse(r.get::<_, &str>(1)) == Some(State::Authorising))
    {
        return Ok(AdviceEffect::Deferred);
    }
    let understood = mti.class() == 4
        && txn.as_ref().is_some_and(|r| {
            State::parse(r.get::<_, &str>(1)).is_some_and(reversible)
                && matches!(r.get::<_, &str>(2), "purchase" | "preauth")
        });
    let effect = if understood {
        AdviceEffect::Reversed
    } else {
        AdviceEffect::Recorded
    };
    let inserted = tx
        .execute(
            "INSERT INTO bank_advices (bank_id, mti, stan, transmitted_at, rrn, transaction_id, effect) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (bank_id, mti, stan, transmitted_at) DO NOTHING",
            &[&bank_id, &mti.as_str(), &stan, &de7, &rrn, &txn.as_ref().map(|r| r.get::<_, i64>(0)), &effect.as_str()],
        )
        .await?;
    if inserted == 0 {
        return Ok(AdviceEffect::Duplicate);
    }
    if let (AdviceEffect::Reversed, Some(row)) = (effect, &txn) {
        let id: i64 = row.get(0);
        let root: i64 = row.get(3);
        let was: String = row.get(1);
        tx.execute(
            "UPDATE transactions SET state = 'reversed', updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
        // A reversal of ours still pending for it has nothing left to do.
        tx.execute(
            "UPDATE reversals SET state = 'acknowledged', acknowledged_at = now(), last_response_code = 'AD' \
             WHERE transaction_id = $1 AND state = 'pending'",
            &[&id],
        )
        .await?;
        if was == "approved" {
            // Undo the ledger as a merchant reversal would: under a reversal row of its own.
            // Its MTI (A420) is no merchant MTI and its STAN is qualified by the bank (each bank
            // numbers its own), so it never takes a merchant request's or another advice's key.
            tx.execute(
                "WITH r AS (
                   INSERT INTO transactions (id, instance_id, merchant_id, terminal_id, stan, transmitted_at, mti, kind,
                     processing_code, amount_minor, currency, rrn, bank_id, original_id, state, response_code, reason)
                   SELECT n.id, t.instance_id, t.merchant_id, t.terminal_id, $2, $3, 'A420', 'reversal',
                     t.processing_code, t.amount_minor, t.currency, lpad((n.id % 1000000000000)::text, 12, '0'),
                     t.bank_id, t.id, 'approved', '00', 'bank advice'
                   FROM transactions t, (SELECT nextval('transaction_id_seq') AS id) n WHERE t.id = $1
                   RETURNING id)
                 INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day)
                 SELECT r.id, p.account, -p.amount_minor, p.currency, current_date
                 FROM r, ledger_postings p WHERE p.transaction_id = $1",
                &[&id, &format!("{bank_id}:{stan}"), &de7],
            )
            .await?;
        }
        crate::notify::enqueue(&tx, root, id, "BANK_REVERSED").await?;
    }
    tx.commit().await?;
    Ok(effect)
}

/// The acknowledgement of an advice: its response MTI, echoing 7, 11, 32, 37 and 70,
/// DE39 `00`.
pub fn acknowledgement(msg: &Message) -> Option<Bytes> {
    let values: Vec<(u8, Vec<u8>)> = [7u8, 11, 32, 37, 70]
        .iter()
        .filter_map(|&n| msg.get(n).map(|v| (n, v.into_owned())))
        .collect();
    let mut b = MessageBuilder::new(msg.dialect(), msg.mti().response());
    for (n, v) in &values {
        b.set(*n, v);
    }
    b.set(39, b"00");
    b.encode().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves which states a bank's reversal advice may change.
    #[test]
    fn reversible_states() {
        assert!(reversible(State::Approved));
        assert!(reversible(State::Reversing));
        assert!(
            !reversible(State::Authorising),
            "its outcome is not known yet"
        );
        assert!(!reversible(State::Declined));
        assert!(!reversible(State::Reversed));
    }
}
