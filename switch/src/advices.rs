//! Messages banks start: advices about a transaction's later fate. Each is recorded
//! before it is acknowledged, applied exactly once (a duplicate is acknowledged again and
//! changes nothing), and raises a notification to the merchant. The decision is
//! [`decide`] (in [`crate::lifecycle`]); the store ([`crate::store`]) records and applies it in one commit.
//!
//! Understood: 0420/0421 (the bank reversed a transaction on its own, named by DE37).
//! Any other advice class is recorded and acknowledged without effect.

use bytes::Bytes;
use codec::{Message, MessageBuilder};

use crate::store::{BankAdvice, Store, StoreError};

// The decision is the state machine's; its old paths stay for callers.
pub use crate::lifecycle::{AdviceEffect, decide, reversible};

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
