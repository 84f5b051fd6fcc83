//! Sending the switch's own requests to a bank: one place for how a request is keyed,
//! timed out and handed to the least-loaded ready link.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_links::{Bank, MatchKey, Outcome};
use bytes::Bytes;
use codec::{EncodeError, MessageBuilder};

use crate::checks::Rc;
use crate::clock::Clock;
use crate::lifecycle::BankReply;

/// Sets DE32 (the switch's id at this bank) when the bank's dialect has it.
pub(crate) fn set_acquirer<'a>(b: &mut MessageBuilder<'a>, bank: &Bank, acquirer_id: &'a str) {
    if bank.config.dialect.field(32).is_some() && !acquirer_id.is_empty() {
        b.set(32, acquirer_id.as_bytes());
    }
}

/// DE90 as the bank saw the original: its MTI, the switch's STAN and DE7 to the bank,
/// the acquirer id right-justified in 11 digits, then 11 zeros.
pub(crate) fn bank_de90(mti: &str, bank_stan: &str, bank_de7: &str, acquirer_id: &str) -> String {
    let acquirer: String = acquirer_id.chars().filter(char::is_ascii_digit).collect();
    format!(
        "{mti}{bank_stan:0>6}{bank_de7:0>10}{acquirer:0>11}{}",
        "0".repeat(11)
    )
}

/// A bank's [`Outcome`] as the verdicts read it, and the approval code (DE38) of an
/// approval. `NotSent` (refused before any byte was written) needs no reversal; a timeout,
/// a lost link or a reply without a response code (DE39: garbage that matched the
/// request) leaves the outcome at the bank unknown.
pub(crate) fn reply(outcome: &Outcome) -> (BankReply, Option<String>) {
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
async fn send(
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

/// Why an exchange with a bank could not begin (answered `91`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The bank's circuit breaker is open (or its single probe is out).
    Breaker,
    /// Every STAN is in flight.
    Stans,
}

/// One request of the switch's at a bank, from its admission to its outcome: it holds a
/// STAN and, when the breaker was asked ([`BankExchange::gated`]), the breaker's
/// admission (in half-open, its single probe). [`BankExchange::send`] sends the request,
/// feeds the outcome to the breaker and frees the STAN; dropped without being sent (the
/// request was refused, could not be recorded, or its task ended), it gives the STAN and
/// the probe back. So no caller does this bookkeeping by hand, and none can forget it.
#[derive(Debug)]
pub(crate) struct BankExchange {
    bank: Bank,
    stan: u32,
    /// The clock the breaker was asked with, when it was.
    gate: Option<Arc<dyn Clock>>,
    /// Sent: the breaker has its outcome.
    sent: bool,
}

impl BankExchange {
    /// Begins an exchange the breaker must allow (a request the bank answers: a
    /// purchase, pre-authorisation or refund): `Refused::Breaker` while it is open.
    pub(crate) fn gated(bank: &Bank, clock: Arc<dyn Clock>) -> Result<BankExchange, Refused> {
        let now = clock.mono();
        Self::gated_at(bank, clock, now)
    }

    /// [`BankExchange::gated`] with the breaker asked at `now` (the clock's monotonic
    /// reading the caller took).
    pub(crate) fn gated_at(
        bank: &Bank,
        clock: Arc<dyn Clock>,
        now: Instant,
    ) -> Result<BankExchange, Refused> {
        if !bank.allow(now) {
            return Err(Refused::Breaker);
        }
        let stan = match bank.stans.allocate() {
            Ok(stan) => stan,
            Err(_) => {
                bank.abandon(now);
                return Err(Refused::Stans);
            }
        };
        Ok(BankExchange {
            bank: bank.clone(),
            stan,
            gate: Some(clock),
            sent: false,
        })
    }

    /// Begins an exchange the breaker does not gate (store and forward, inquiries, a
    /// completion's number).
    pub(crate) fn ungated(bank: &Bank) -> Result<BankExchange, Refused> {
        let stan = bank.stans.allocate().map_err(|_| Refused::Stans)?;
        Ok(BankExchange {
            bank: bank.clone(),
            stan,
            gate: None,
            sent: false,
        })
    }

    /// The exchange's STAN (DE11 at the bank).
    pub(crate) fn stan(&self) -> u32 {
        self.stan
    }

    /// The bank it is with.
    pub(crate) fn bank(&self) -> &Bank {
        &self.bank
    }

    /// Sends the request as [`send`] does (keyed by `match_stan`, the exchange's STAN
    /// unless the message carries another: an advice's first send), records the outcome
    /// with the breaker when it gates this exchange, and frees the STAN.
    pub(crate) async fn send(
        mut self,
        class: u8,
        match_stan: u32,
        rrn: &str,
        message: Result<Bytes, EncodeError>,
    ) -> Outcome {
        let outcome = send(&self.bank, class, match_stan, rrn, message).await;
        if let Some(clock) = &self.gate {
            self.bank.record_outcome(clock.mono(), &outcome);
        }
        self.sent = true;
        outcome
    }
}

impl Drop for BankExchange {
    fn drop(&mut self) {
        self.bank.stans.release(self.stan);
        if let (false, Some(clock)) = (self.sent, &self.gate) {
            // Nothing reached the bank: the probe is free for another request.
            self.bank.abandon(clock.mono());
        }
    }
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

    /// A clock that moves only when told: the breaker's times.
    #[derive(Debug)]
    struct Manual(std::sync::Mutex<std::time::Instant>);

    impl Clock for Manual {
        fn mono(&self) -> std::time::Instant {
            *self.0.lock().unwrap()
        }

        fn unix_us(&self) -> u64 {
            0
        }
    }

    // Proves an exchange gives its STAN and the breaker's probe back when it is dropped
    // unsent, and feeds the breaker when sent: a dropped probe lets the next request
    // probe at once, a timed-out request opens the breaker.
    #[test]
    fn exchanges_give_back_what_they_hold() {
        let config = bank_links::BankConfig {
            id: "bank-x".into(),
            dialect: builtin::bank_bcd(),
            request_timeout_ms: 10,
        };
        let breaker = bank_links::BreakerConfig {
            window_ms: 10_000,
            min_requests: 1,
            timeout_rate_permille: 500,
            open_ms: 1_000,
        };
        let bank = Bank::new(config, Arc::default(), Vec::new(), breaker);
        let now = std::time::Instant::now();
        let clock: Arc<Manual> = Arc::new(Manual(std::sync::Mutex::new(now)));
        let ex = BankExchange::gated(&bank, clock.clone()).expect("closed breaker");
        assert_eq!(bank.stans.in_flight(), 1);
        drop(ex);
        assert_eq!(bank.stans.in_flight(), 0, "the STAN is back");
        bank.record(now, false);
        assert!(BankExchange::gated(&bank, clock.clone()).is_err(), "open");
        *clock.0.lock().unwrap() = now + Duration::from_millis(1_500);
        let probe = BankExchange::gated(&bank, clock.clone()).expect("the probe");
        assert_eq!(
            BankExchange::gated(&bank, clock.clone()).err(),
            Some(Refused::Breaker),
            "one probe at a time"
        );
        drop(probe);
        let probe = BankExchange::gated(&bank, clock.clone()).expect("the probe, given back");
        let sent = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(probe.send(2, 1, "000000001234", Ok(Bytes::from_static(b"x"))));
        assert!(matches!(sent, Outcome::NotSent), "no ready link");
        assert_eq!(bank.stans.in_flight(), 0);
        assert!(
            BankExchange::ungated(&bank).is_ok(),
            "store and forward is never gated"
        );
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

    // Proves DE90 to the bank carries the original's MTI, STAN and DE7 to the bank and
    // the acquirer id in 11 digits.
    #[test]
    fn de90_to_the_bank() {
        assert_eq!(
            bank_de90("0200", "000042", "1126065301", "123456"),
            format!("0200000042112606530100000123456{}", "0".repeat(11))
        );
    }
}
