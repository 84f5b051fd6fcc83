//! Sending the switch's own requests to a bank: one place for how a request is keyed,
//! timed out and handed to the least-loaded ready link.

use std::time::Duration;

use bank_links::{Bank, MatchKey, Outcome};
use bytes::Bytes;
use codec::{EncodeError, MessageBuilder};

/// Sets DE32 (the switch's id at this bank) when the bank's dialect has it.
pub fn set_acquirer<'a>(b: &mut MessageBuilder<'a>, bank: &Bank, acquirer_id: &'a str) {
    if bank.config.dialect.field(32).is_some() && !acquirer_id.is_empty() {
        b.set(32, acquirer_id.as_bytes());
    }
}

/// Sends an encoded request of message class `class` with `stan` and `rrn` on the bank's
/// least-loaded ready link and waits for its outcome (the bank's timeout). A message that
/// could not be encoded, or a bank with no ready link, comes back as `LinkLost`: nothing
/// was sent, and the caller treats the outcome as unknown.
pub async fn send(
    bank: &Bank,
    class: u8,
    stan: u32,
    rrn: &str,
    message: Result<Bytes, EncodeError>,
) -> Outcome {
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, bank = %bank.config.id, rrn, "bank message could not be encoded");
            return Outcome::LinkLost;
        }
    };
    let Some(link) = bank.pick() else {
        return Outcome::LinkLost;
    };
    let rrn = rrn.as_bytes().try_into().ok();
    let key = MatchKey { class, stan, rrn };
    let timeout = Duration::from_millis(bank.config.request_timeout_ms);
    link.send(key, message, timeout)
        .await
        .unwrap_or(Outcome::LinkLost)
}
