//! Messages banks start: advices about a transaction's later fate. Each is recorded
//! before it is acknowledged, applied exactly once (a duplicate is acknowledged again and
//! changes nothing), and raises a notification to the merchant. The decision is
//! [`decide`]; the store ([`crate::store`]) records and applies it in one commit.
//!
//! Understood: 0420/0421 (the bank reversed a transaction on its own, named by DE37).
//! Any other advice class is recorded and acknowledged without effect.

use bytes::Bytes;
use codec::{Message, MessageBuilder};

use crate::checks::Kind;
use crate::lifecycle::State;
use crate::store::{BankAdvice, Store, StoreError};

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
    /// The `effect` recorded with the advice, and its name in logs.
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

/// What an advice of MTI class `class` does to the transaction it names (its state
/// and kind; `None` when it names none we know), before duplicates are considered. Only
/// whole payments (purchases, pre-authorisations) are reversed by an advice; a bank
/// reversing a completion or refund on its own is recorded for an operator.
pub fn decide(class: u8, named: Option<(State, Kind)>) -> AdviceEffect {
    match named {
        Some((State::Authorising, _)) if class == 4 => AdviceEffect::Deferred,
        Some((state, kind)) if class == 4 && reversible(state) && kind.is_root() => {
            AdviceEffect::Reversed
        }
        _ => AdviceEffect::Recorded,
    }
}

/// Records and applies one advice from `bank_id`, through the store; a store failure
/// leaves it unacknowledged (the bank repeats it).
pub async fn apply(
    store: &dyn Store,
    bank_id: &str,
    msg: &Message,
) -> Result<AdviceEffect, StoreError> {
    let advice = BankAdvice {
        bank_id: bank_id.to_string(),
        mti: msg.mti().original(),
        stan: msg.get_str(11).map(|s| s.into_owned()).unwrap_or_default(),
        transmitted_at: msg.get_str(7).map(|s| s.into_owned()).unwrap_or_default(),
        rrn: msg.get_str(37).map(|s| s.trim_end().to_string()),
    };
    store.apply_bank_advice(&advice).await
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

    // Proves an advice reverses only a whole payment it may change, waits for an
    // outcome not yet recorded, and is otherwise only recorded.
    #[test]
    fn decisions() {
        let approved = Some((State::Approved, Kind::Purchase));
        assert_eq!(decide(4, approved), AdviceEffect::Reversed);
        assert_eq!(
            decide(4, Some((State::Reversing, Kind::Preauth))),
            AdviceEffect::Reversed
        );
        assert_eq!(
            decide(4, Some((State::Authorising, Kind::Purchase))),
            AdviceEffect::Deferred
        );
        assert_eq!(
            decide(4, Some((State::Approved, Kind::Refund))),
            AdviceEffect::Recorded,
            "an operator settles it"
        );
        assert_eq!(decide(4, None), AdviceEffect::Recorded);
        assert_eq!(
            decide(2, approved),
            AdviceEffect::Recorded,
            "not a reversal"
        );
    }
}
