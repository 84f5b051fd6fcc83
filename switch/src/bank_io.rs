//! Sending the switch's own requests to a bank: one place for how a request is keyed,
//! timed out and handed to the least-loaded ready link.

use std::time::{Duration, Instant};

use bank_links::{Bank, MatchKey, Outcome};
use bytes::Bytes;
use codec::{EncodeError, MessageBuilder};

use crate::checks::Rc;
use crate::lifecycle::BankReply;

/// Sets DE32 (the switch's id at this bank) when the bank's dialect has it.
pub fn set_acquirer<'a>(b: &mut MessageBuilder<'a>, bank: &Bank, acquirer_id: &'a str) {
    if bank.config.dialect.field(32).is_some() && !acquirer_id.is_empty() {
        b.set(32, acquirer_id.as_bytes());
    }
}

/// How a request to a bank ended.
// One per request, moved a couple of times: boxing the answer would cost an allocation on
// the hot path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Exchange {
    /// Never handed to a link (it could not be encoded, the bank had no ready link, or
    /// the link had closed): the bank never saw it.
    NotSent,
    /// Handed to a link: answered, or its outcome at the bank is unknown.
    Sent(Outcome),
}

impl Exchange {
    /// The bank's reply as the verdicts read it, and the approval code (DE38) of an
    /// approval.
    pub fn reply(&self) -> (BankReply, Option<String>) {
        match self {
            Exchange::NotSent | Exchange::Sent(Outcome::NotSent) => (BankReply::NotSent, None),
            Exchange::Sent(Outcome::Answered(reply)) => {
                // The logical value: on an EBCDIC link the wire bytes are not ASCII digits.
                let rc = Rc::from_bank(reply.get(39).as_deref().unwrap_or(b"05"));
                let auth = (rc == Rc::APPROVED)
                    .then(|| reply.get_str(38).map(|s| s.trim_end().to_string()))
                    .flatten();
                (BankReply::Answered(rc), auth)
            }
            Exchange::Sent(Outcome::TimedOut | Outcome::LinkLost) => (BankReply::Unknown, None),
        }
    }

    /// Tells the bank's breaker how the exchange went: an outcome if it was sent, else
    /// its probe (if it had one) back.
    pub fn report(&self, bank: &Bank, now: Instant) {
        match self {
            Exchange::Sent(outcome) => bank.record_outcome(now, outcome),
            Exchange::NotSent => bank.abandon(now),
        }
    }
}

/// Sends an encoded request of message class `class` with `stan` and `rrn` on the bank's
/// least-loaded ready link and waits for its outcome (the bank's timeout).
pub async fn send(
    bank: &Bank,
    class: u8,
    stan: u32,
    rrn: &str,
    message: Result<Bytes, EncodeError>,
) -> Exchange {
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, bank = %bank.config.id, rrn, "bank message could not be encoded");
            return Exchange::NotSent;
        }
    };
    let Some(link) = bank.pick() else {
        tracing::warn!(bank = %bank.config.id, rrn, "no ready link: not sent");
        return Exchange::NotSent;
    };
    let rrn = rrn.as_bytes().try_into().ok();
    let key = MatchKey { class, stan, rrn };
    let timeout = Duration::from_millis(bank.config.request_timeout_ms);
    match link.send(key, message, timeout).await {
        Ok(Outcome::NotSent) | Err(_) => Exchange::NotSent,
        Ok(outcome) => Exchange::Sent(outcome),
    }
}
