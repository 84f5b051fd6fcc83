//! Sending the switch's own requests to a bank: one place for how a request is keyed,
//! timed out and handed to the least-loaded ready link.

use std::time::Duration;

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

/// A bank's [`Outcome`] as the verdicts read it, and the approval code (DE38) of an
/// approval. `NotSent` (refused before any byte was written) needs no reversal; a timeout,
/// a lost link or a reply without a response code (DE39: garbage that matched the
/// request) leaves the outcome at the bank unknown.
pub fn reply(outcome: &Outcome) -> (BankReply, Option<String>) {
    match outcome {
        Outcome::NotSent => (BankReply::NotSent, None),
        Outcome::Answered(reply) => {
            // The logical value: on an EBCDIC link the wire bytes are not ASCII digits.
            // No DE39 is no answer: the bank may have approved (found by the simulation,
            // docs/simulation.md), so it is reversed rather than taken as a decline.
            let Some(de39) = reply.get(39) else {
                return (BankReply::Unknown, None);
            };
            let rc = Rc::from_bank(&de39);
            let auth = (rc == Rc::APPROVED)
                .then(|| reply.get_str(38).map(|s| s.trim_end().to_string()))
                .flatten();
            (BankReply::Answered(rc), auth)
        }
        Outcome::TimedOut | Outcome::LinkLost => (BankReply::Unknown, None),
    }
}

/// Sends an encoded request of message class `class` with `stan` and `rrn` on the bank's
/// least-loaded ready link and waits for its outcome (the bank's timeout). A message that
/// could not be encoded, a bank with no ready link and a link that has closed are
/// [`Outcome::NotSent`], as are the link's own refusals.
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
            return Outcome::NotSent;
        }
    };
    if !bank.is_reachable() {
        tracing::warn!(bank = %bank.config.id, rrn, "no ready link: not sent");
        return Outcome::NotSent;
    }
    let rrn = rrn.as_bytes().try_into().ok();
    let key = MatchKey { class, stan, rrn };
    let timeout = Duration::from_millis(bank.config.request_timeout_ms);
    bank.exchange(key, message, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{Mti, builtin};

    fn answer(rc: Option<&[u8]>) -> Outcome {
        let d = builtin::bank_bcd();
        let mut b = MessageBuilder::new(d, Mti::FINANCIAL_RESPONSE);
        b.set(11, b"000001").set(37, b"000000001234");
        if let Some(rc) = rc {
            b.set(39, rc).set(38, b"A1B2C3");
        }
        Outcome::Answered(d.decode(b.encode().expect("encodes")).expect("decodes"))
    }

    // Proves how a bank's reply reads: an approval with its DE38, a decline, and a reply
    // without DE39 as an unknown outcome (reversed), like a timeout.
    #[test]
    fn replies() {
        assert_eq!(
            reply(&answer(Some(b"00"))),
            (BankReply::Answered(Rc::APPROVED), Some("A1B2C3".into()))
        );
        assert_eq!(
            reply(&answer(Some(b"51"))).0,
            BankReply::Answered(Rc::INSUFFICIENT_FUNDS)
        );
        assert_eq!(reply(&answer(None)), (BankReply::Unknown, None));
        assert_eq!(reply(&Outcome::TimedOut), (BankReply::Unknown, None));
        assert_eq!(reply(&Outcome::NotSent), (BankReply::NotSent, None));
    }
}
