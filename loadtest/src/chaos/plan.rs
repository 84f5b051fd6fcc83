//! What a chaos order sends, and the merchant contract's retransmission rule as a plain
//! function ("Duplicates and idempotency" in ../shared/protocol/merchant-h2h.md).
//!
//! Every order has an amount of its own (the order's index in the hundreds, the bank
//! simulator's test-card suffix in the last two digits), so the bank's record names the
//! order without any help from the switch: (DE41, DE4) is the order at the bank.

use codec::{Mti, OwnedMessage};
use serde::{Deserialize, Serialize};

use crate::merchant::{self, PurchaseSpec};

/// Terminals (DE41) the run spreads its orders over.
pub const TERMINALS: u64 = 8;
/// Every this-many-th order is declined by the bank (amount ending in 51).
pub const DECLINE_EVERY: u64 = 25;
/// Two orders in every this many are never answered by the bank (amount ending in 91),
/// one at each bank: the switch times out, answers `91` and reverses.
pub const BANK_TIMEOUT_EVERY: u64 = 100;
/// Every this-many-th order approved is then reversed by the merchant (0400).
pub const REVERSE_EVERY: u64 = 20;

/// The card, terminal and amount of order `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPlan {
    pub order_ref: String,
    pub terminal: String,
    pub pan: String,
    pub amount_minor: u64,
    /// Whether the merchant reverses the purchase once it is approved.
    pub reverse_if_approved: bool,
}

/// The plan of order `index`: cards alternate between the two banks' BIN ranges (4 for
/// bank-a, 51 for bank-b) and are all different (card velocity stays far away).
pub fn order_plan(index: u64) -> OrderPlan {
    let in_hundred = index % BANK_TIMEOUT_EVERY;
    let suffix = if in_hundred == BANK_TIMEOUT_EVERY / 2 - 1 || in_hundred == BANK_TIMEOUT_EVERY - 2
    {
        91
    } else if index % DECLINE_EVERY == 7 {
        51
    } else {
        0
    };
    let pan_digits = if index.is_multiple_of(2) {
        format!("4{:014}", index)
    } else {
        format!("51{:013}", index)
    };
    OrderPlan {
        order_ref: format!("CHAOS{index:08}"),
        terminal: format!("CHAOS{:03}", index % TERMINALS + 1),
        pan: merchant::luhn_complete(&pan_digits),
        amount_minor: (index + 1) * 100 + suffix,
        reverse_if_approved: index % REVERSE_EVERY == 3,
    }
}

/// The 0200 of an order with DE11 `stan` and DE7 `de7`.
pub fn purchase_message(
    merchant_id: &str,
    plan: &OrderPlan,
    stan: u32,
    de7: [u8; 10],
) -> OwnedMessage {
    merchant::purchase(
        merchant_id,
        &PurchaseSpec {
            stan,
            de7,
            terminal: plan.terminal.clone(),
            pan: plan.pan.clone(),
            amount_minor: plan.amount_minor,
            expiry: "3012".into(),
            order: plan.order_ref.clone(),
            currency: CURRENCY.into(),
        },
    )
}

/// ISO 4217 numeric code of every order (US dollar).
pub const CURRENCY: &str = "840";

/// A 0400 that reverses the 0200 sent with `original_stan` and `original_de7`.
pub fn reversal_message(
    merchant_id: &str,
    plan: &OrderPlan,
    original: (&str, &str),
    stan: u32,
    de7: [u8; 10],
) -> OwnedMessage {
    let mut m = OwnedMessage::new(Mti::REVERSAL_REQUEST);
    m.fields
        .insert(4, format!("{:012}", plan.amount_minor).into_bytes());
    m.fields.insert(7, de7.to_vec());
    m.fields.insert(11, merchant::stan_text(stan).into_bytes());
    m.fields.insert(41, plan.terminal.as_bytes().to_vec());
    m.fields.insert(42, merchant_id.as_bytes().to_vec());
    m.fields.insert(49, CURRENCY.as_bytes().to_vec());
    let (stan0, de7_0) = original;
    let de90 = format!("0200{stan0}{de7_0}{}", "0".repeat(22));
    m.fields.insert(90, de90.into_bytes());
    m
}

/// How long the merchant waits and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// No answer this long after a send: retransmit.
    pub answer_timeout_ms: u64,
    /// After `94` (still in flight) or `96` (not recorded): retransmit after this long.
    pub pause_ms: u64,
    /// No final answer this long after the first send: give up (the request stays
    /// unresolved in the merchant's records).
    pub give_up_ms: u64,
}

/// What happened to the last send of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// An answer with this DE39.
    Answer(&'a str),
    /// No answer within the policy's timeout.
    Silence,
    /// The connection closed before an answer came.
    ConnectionLost,
}

/// What the merchant does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The answer is final.
    Done,
    /// Send the repeat (0201, 0401) after this many milliseconds.
    Retransmit { after_ms: u64 },
    /// Out of time without a final answer.
    GiveUp,
}

/// Whether an answer is final. `94` says the request is still in flight and `96` that it
/// was not recorded (a retransmission is then processed as new); every other answer is
/// the request's outcome and is replayed to retransmissions.
pub fn is_final(code: &str) -> bool {
    !matches!(code, "94" | "96")
}

/// The merchant's next step after `event`, `elapsed_ms` after the request's first send.
pub fn next_step(event: Event<'_>, elapsed_ms: u64, p: &RetryPolicy) -> Step {
    let after_ms = match event {
        Event::Answer(code) if is_final(code) => return Step::Done,
        Event::Answer(_) => p.pause_ms,
        Event::Silence => 0,
        // The connection is being re-established; the send waits for it.
        Event::ConnectionLost => p.pause_ms.min(100),
    };
    if elapsed_ms + after_ms >= p.give_up_ms {
        Step::GiveUp
    } else {
        Step::Retransmit { after_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        answer_timeout_ms: 5000,
        pause_ms: 500,
        give_up_ms: 60_000,
    };

    // Proves only 94 and 96 are retried after a pause, silence at once, and time runs out.
    #[test]
    fn retransmission_rule() {
        for code in ["00", "05", "51", "91", "12", "25", "30"] {
            assert_eq!(next_step(Event::Answer(code), 10, &P), Step::Done, "{code}");
        }
        assert_eq!(
            next_step(Event::Answer("94"), 10, &P),
            Step::Retransmit { after_ms: 500 }
        );
        assert_eq!(
            next_step(Event::Answer("96"), 10, &P),
            Step::Retransmit { after_ms: 500 }
        );
        assert_eq!(
            next_step(Event::Silence, 5000, &P),
            Step::Retransmit { after_ms: 0 }
        );
        assert_eq!(
            next_step(Event::ConnectionLost, 5, &P),
            Step::Retransmit { after_ms: 100 }
        );
        assert_eq!(next_step(Event::Answer("94"), 59_600, &P), Step::GiveUp);
        assert_eq!(next_step(Event::Silence, 60_000, &P), Step::GiveUp);
        assert_eq!(next_step(Event::Answer("00"), 90_000, &P), Step::Done);
    }

    // Proves every order has its own amount, the bank's test suffixes come at their rates,
    // and cards pass Luhn and alternate banks.
    #[test]
    fn plans() {
        let plans: Vec<OrderPlan> = (0..1000).map(order_plan).collect();
        let amounts: std::collections::HashSet<u64> =
            plans.iter().map(|p| p.amount_minor).collect();
        assert_eq!(amounts.len(), 1000);
        let with = |s: u64| plans.iter().filter(|p| p.amount_minor % 100 == s).count();
        assert_eq!((with(91), with(51)), (20, 40));
        assert!(plans[0].pan.starts_with('4') && plans[1].pan.starts_with("51"));
        assert!(
            plans
                .iter()
                .all(|p| codec::card::luhn_valid(p.pan.as_bytes()))
        );
        assert_eq!(plans.iter().filter(|p| p.reverse_if_approved).count(), 50);
        assert_eq!(plans[9].terminal, "CHAOS002");
    }

    // Proves a reversal names its original in DE90 as the contract lays it out.
    #[test]
    fn reversal_names_original() {
        let plan = order_plan(3);
        let m = reversal_message("M1", &plan, ("000042", "1201010203"), 43, *b"1201010204");
        assert_eq!(m.mti, Mti::REVERSAL_REQUEST);
        let de90 = String::from_utf8(m.fields[&90].clone()).unwrap();
        assert_eq!(de90.len(), 42);
        assert!(de90.starts_with("02000000421201010203"));
        assert_eq!(
            m.fields[&4],
            format!("{:012}", plan.amount_minor).into_bytes()
        );
    }
}
