//! The transaction state machine: the single source of truth for what may follow what.
//!
//! A *payment* is an original purchase or pre-authorisation (its root row) with every
//! completion, refund and reversal that names it. These functions take the payment's
//! state and a request and say whether the request may proceed (or what code refuses
//! it); the engine applies the effect under a row lock, so the answer holds under
//! concurrency on any number of instances. See docs/lifecycle.md for the diagram.
//!
//! Each allowed step's effect is computed here as a plain value, a [`Transition`] (what
//! changes, to what), from the payment as read under its lock; the store
//! ([`crate::store`]) applies it in one commit. The money invariant (refunds settled and
//! at the bank never exceed what was captured) is asserted where a transition is
//! computed, and the database's `transactions_refunds_within_captured` enforces it too.
#![deny(clippy::disallowed_methods)]

use crate::checks::{Kind, Rc};

/// A row's state (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Recorded, possibly at the bank, outcome not yet recorded.
    Authorising,
    Approved,
    Declined,
    /// Refused by the switch after recording (no route, bank unreachable).
    Refused,
    /// Outcome unknown (timeout, lost link, crash): a reversal is on its way to the bank.
    Reversing,
    Reversed,
    /// A pre-authorisation whose completion was approved.
    Captured,
}

impl State {
    /// The state a `state` column value names; `None` for anything else.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "authorising" => State::Authorising,
            "approved" => State::Approved,
            "declined" => State::Declined,
            "refused" => State::Refused,
            "reversing" => State::Reversing,
            "reversed" => State::Reversed,
            "captured" => State::Captured,
            _ => return None,
        })
    }

    /// The `state` column's value.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Authorising => "authorising",
            State::Approved => "approved",
            State::Declined => "declined",
            State::Refused => "refused",
            State::Reversing => "reversing",
            State::Reversed => "reversed",
            State::Captured => "captured",
        }
    }
}

/// The contract's status of a payment (0610/0620 DE48 `ST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Declined,
    Reversed,
    Captured,
    PartiallyRefunded,
    Refunded,
    Unknown,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Approved => "APPROVED",
            Status::Declined => "DECLINED",
            Status::Reversed => "REVERSED",
            Status::Captured => "CAPTURED",
            Status::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Status::Refunded => "REFUNDED",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// A payment's root row, as far as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    pub kind: Kind,
    pub state: State,
    pub amount_minor: u64,
    pub currency: u16,
    pub captured_minor: u64,
    pub refunded_minor: u64,
    pub refund_reserved_minor: u64,
    pub completion_pending: bool,
}

impl Payment {
    /// What may still be refunded: captured, less refunds settled and at the bank.
    pub fn refundable_minor(&self) -> u64 {
        self.captured_minor
            .saturating_sub(self.refunded_minor + self.refund_reserved_minor)
    }

    /// The payment's status as the contract defines it.
    pub fn status(&self) -> Status {
        match self.state {
            State::Authorising => Status::Pending,
            State::Reversing => Status::Unknown,
            State::Declined | State::Refused => Status::Declined,
            State::Reversed => Status::Reversed,
            State::Approved | State::Captured => {
                let captured = self.captured_minor;
                if self.refunded_minor > 0 && self.refunded_minor >= captured {
                    Status::Refunded
                } else if self.refunded_minor > 0 {
                    Status::PartiallyRefunded
                } else if self.state == State::Captured {
                    Status::Captured
                } else {
                    Status::Approved
                }
            }
        }
    }
}

impl Payment {
    /// The payment once `change` is applied. Amounts stop at zero (the invariants are
    /// checked separately, see [`Payment::refunds_within_captured`]).
    pub fn after(&self, change: &RootChange) -> Payment {
        Payment {
            state: change.state.unwrap_or(self.state),
            captured_minor: change.captured_minor.unwrap_or(self.captured_minor),
            refunded_minor: self
                .refunded_minor
                .saturating_add_signed(change.refunded_delta),
            refund_reserved_minor: self
                .refund_reserved_minor
                .saturating_add_signed(change.refund_reserved_delta),
            completion_pending: change.completion_pending.unwrap_or(self.completion_pending),
            ..*self
        }
    }

    /// The money invariant: refunds settled and at the bank stay within what was
    /// captured (the database's `transactions_refunds_within_captured` too).
    pub fn refunds_within_captured(&self) -> bool {
        self.refunded_minor + self.refund_reserved_minor <= self.captured_minor
    }
}

/// The row a request names by DE90, and its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    pub kind: Kind,
    pub state: State,
    pub amount_minor: u64,
    pub currency: u16,
}

/// May a completion of `amount_minor` follow? (0220 naming `named`.)
pub fn check_completion(
    named: &Named,
    payment: &Payment,
    amount_minor: u64,
    currency: u16,
) -> Result<(), Rc> {
    if named.kind != Kind::Preauth || payment.kind != Kind::Preauth {
        return Err(Rc::INVALID_TRANSACTION);
    }
    // Held, not completed, no completion at the bank.
    if payment.state != State::Approved || payment.completion_pending || payment.captured_minor > 0
    {
        return Err(Rc::INVALID_TRANSACTION);
    }
    if currency != payment.currency {
        return Err(Rc::INVALID_TRANSACTION);
    }
    if amount_minor == 0 || amount_minor > payment.amount_minor {
        return Err(Rc::INVALID_AMOUNT);
    }
    Ok(())
}

/// May a refund of `amount_minor` follow? (0200 DE3 20 naming `named`.)
pub fn check_refund(
    named: &Named,
    payment: &Payment,
    amount_minor: u64,
    currency: u16,
) -> Result<(), Rc> {
    let names_capture = match named.kind {
        Kind::Purchase => named.state == State::Approved,
        Kind::Completion => named.state == State::Approved,
        _ => false,
    };
    if !names_capture
        || !matches!(payment.state, State::Approved | State::Captured)
        || currency != payment.currency
    {
        return Err(Rc::INVALID_TRANSACTION);
    }
    if amount_minor == 0 || amount_minor > payment.refundable_minor() {
        return Err(Rc::INVALID_AMOUNT);
    }
    Ok(())
}

/// What a reversal does when it is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalEffect {
    /// Already reversed (or being reversed): answer 00 again, change nothing.
    AlreadyReversed,
    /// A purchase or pre-authorisation becomes REVERSED.
    VoidPayment,
    /// A completion is undone: the payment returns to the held state.
    UndoCompletion,
    /// A refund stops counting.
    UndoRefund,
}

/// May a reversal of `named` (for `amount_minor`) follow, and what does it do?
pub fn check_reversal(
    named: &Named,
    payment: &Payment,
    amount_minor: u64,
) -> Result<ReversalEffect, Rc> {
    if matches!(named.state, State::Reversed | State::Reversing) {
        return Ok(ReversalEffect::AlreadyReversed);
    }
    if amount_minor != named.amount_minor {
        return Err(Rc::INVALID_AMOUNT);
    }
    let refunds = payment.refunded_minor + payment.refund_reserved_minor > 0;
    match named.kind {
        Kind::Purchase | Kind::Preauth => {
            if named.state != State::Approved || refunds || payment.completion_pending {
                return Err(Rc::INVALID_TRANSACTION);
            }
            Ok(ReversalEffect::VoidPayment)
        }
        Kind::Completion => {
            if named.state != State::Approved || refunds || payment.state != State::Captured {
                return Err(Rc::INVALID_TRANSACTION);
            }
            Ok(ReversalEffect::UndoCompletion)
        }
        Kind::Refund => {
            if named.state != State::Approved {
                return Err(Rc::INVALID_TRANSACTION);
            }
            Ok(ReversalEffect::UndoRefund)
        }
        Kind::Reversal => Err(Rc::INVALID_TRANSACTION),
    }
}

/// How long a merchant reversal waits for the request it names (merchant-h2h.md,
/// "Originals and what may follow them").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReversalHold {
    /// Longest wait for a named request not seen at all (the contract's 2 s).
    pub unseen_max_ms: u64,
    /// Longest wait for a named request still in flight to have its outcome recorded
    /// (the bank timeout, plus the time to record the outcome).
    pub in_flight_max_ms: u64,
}

/// What a merchant reversal does with the request it names, as found after `held_ms`
/// of waiting (`found` is `None` while no such request is recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalPlan {
    /// Reverse it with this effect (recorded, then sent to the bank by store and forward).
    Apply(ReversalEffect),
    /// Not seen yet, or its outcome is not recorded yet: look again.
    Hold,
    /// It ended declined or refused: nothing was charged, so the reversal is answered
    /// `00` and nothing is sent.
    NothingToUndo,
    /// Refused with this response code.
    Refuse(Rc),
}

/// The contract's rules for a reversal racing its original: held while the original is
/// in flight (at most `hold.in_flight_max_ms`, then `91`, nothing recorded, so a repeat
/// is processed afresh), held while it is unseen (at most `hold.unseen_max_ms`, then
/// `25`), then applied by [`check_reversal`]'s rules, a declined or refused original
/// needing nothing.
pub fn plan_reversal(
    found: Option<(&Named, &Payment)>,
    amount_minor: u64,
    held_ms: u64,
    hold: &ReversalHold,
) -> ReversalPlan {
    let Some((named, payment)) = found else {
        return if held_ms < hold.unseen_max_ms {
            ReversalPlan::Hold
        } else {
            ReversalPlan::Refuse(Rc::NO_ORIGINAL)
        };
    };
    match named.state {
        State::Authorising if held_ms < hold.in_flight_max_ms => ReversalPlan::Hold,
        State::Authorising => ReversalPlan::Refuse(Rc::ISSUER_DOWN),
        State::Declined | State::Refused if named.kind != Kind::Reversal => {
            if amount_minor == named.amount_minor {
                ReversalPlan::NothingToUndo
            } else {
                ReversalPlan::Refuse(Rc::INVALID_AMOUNT)
            }
        }
        _ => match check_reversal(named, payment, amount_minor) {
            Ok(effect) => ReversalPlan::Apply(effect),
            Err(rc) => ReversalPlan::Refuse(rc),
        },
    }
}

/// Why a reversal is stored for the bank (its store-and-forward row's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalReason {
    /// The bank did not answer in time, or the link was lost.
    Timeout,
    /// The merchant reversed it (0400).
    Merchant,
    /// A crash left it without an outcome; recovery reverses it at the next start.
    Recovery,
}

impl ReversalReason {
    /// The `reason` column's value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReversalReason::Timeout => "timeout",
            ReversalReason::Merchant => "merchant",
            ReversalReason::Recovery => "recovery",
        }
    }
}

/// A message the bank gets by store and forward, repeated until it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// 0400, then 0401 repeats: undo the transaction at the bank.
    Reversal(ReversalReason),
    /// 0220, then 0221 repeats: a completion the merchant was answered already.
    CompletionAdvice,
}

/// Which row of a step a part of its [`Transition`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// The step's own row: the completion, refund or reversal request itself.
    Own,
    /// The row the request names by DE90.
    Named,
}

/// How a request the bank was asked about came out: its row's state and the code the
/// merchant is answered with (and that the row records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub state: State,
    pub rc: Rc,
}

impl Verdict {
    /// Whether the bank may hold what it was asked although the switch does not know:
    /// a reversal must follow (the row is `reversing`).
    pub fn needs_reversal(&self) -> bool {
        self.state == State::Reversing
    }
}

/// What a request to a bank came to, as the verdicts read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BankReply {
    /// Never handed to a link (no ready link, could not be encoded): the bank never saw
    /// it, so nothing needs reversing.
    NotSent,
    /// Sent, and no answer came (timed out, link lost): the outcome at the bank is unknown.
    Unknown,
    /// Answered with this DE39 (mapped to the switch's codes).
    Answered(Rc),
}

/// The verdict on a request the bank never saw: refused by the switch, answered `91`.
const NOT_SENT: Verdict = Verdict {
    state: State::Refused,
    rc: Rc::ISSUER_DOWN,
};

/// The verdict on a request whose outcome at the bank is unknown: `reversing` (a
/// reversal must follow), answered `91`.
const UNKNOWN: Verdict = Verdict {
    state: State::Reversing,
    rc: Rc::ISSUER_DOWN,
};

/// A purchase's or pre-authorisation's verdict from the bank's reply. Any answer other
/// than `00` declines.
pub fn authorisation_verdict(reply: BankReply) -> Verdict {
    match reply {
        BankReply::NotSent => NOT_SENT,
        BankReply::Unknown => UNKNOWN,
        BankReply::Answered(Rc::APPROVED) => Verdict {
            state: State::Approved,
            rc: Rc::APPROVED,
        },
        BankReply::Answered(rc) => Verdict {
            state: State::Declined,
            rc,
        },
    }
}

/// A refund's verdict from the bank's reply. Unlike an authorisation, a refund the bank
/// answers `91` is treated as unanswered: reversed.
pub fn refund_verdict(reply: BankReply) -> Verdict {
    match reply {
        BankReply::NotSent => NOT_SENT,
        BankReply::Unknown | BankReply::Answered(Rc::ISSUER_DOWN) => UNKNOWN,
        BankReply::Answered(Rc::APPROVED) => Verdict {
            state: State::Approved,
            rc: Rc::APPROVED,
        },
        BankReply::Answered(rc) => Verdict {
            state: State::Declined,
            rc,
        },
    }
}

/// What a step changes on its payment's root row. Absent fields and zero deltas leave
/// the row as it is; deltas are in minor units of the payment's currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RootChange {
    pub state: Option<State>,
    pub captured_minor: Option<u64>,
    pub refunded_delta: i64,
    pub refund_reserved_delta: i64,
    pub completion_pending: Option<bool>,
}

impl RootChange {
    /// Whether the change leaves the root as it is.
    pub fn is_empty(&self) -> bool {
        *self == RootChange::default()
    }
}

/// How a step's own row settles at once: its state, response code and DE38.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub state: State,
    pub rc: Rc,
    pub auth_code: Option<String>,
}

/// Ledger postings a step makes under its own row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posting {
    /// `+amount` to the row's bank (`bank:<id>`), `-amount` to its merchant
    /// (`merchant:<id>`), in minor units of the row's currency; a negative amount posts the
    /// other way (a refund).
    Amount(i64),
    /// The negation of every posting of the named row (a reversal).
    NegateNamed,
}

/// What one lifecycle step changes, as a value: computed by the functions below from the
/// payment as read under its row lock, applied by the store in one commit. The default
/// changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    /// The step's own row settles at once.
    pub settle: Option<Settlement>,
    /// The named row's new state.
    pub named_state: Option<State>,
    /// The payment's root.
    pub root: RootChange,
    /// Ledger postings under the step's own row.
    pub posting: Option<Posting>,
    /// A message for the bank by store and forward, about which row (sent to that row's
    /// bank; a row without a bank has nothing to forward).
    pub forward: Option<(Row, Forward)>,
    /// The own row starts (`true`) or stops (`false`) waiting for the bank (`in_doubt`,
    /// where recovery finds it after a crash).
    pub in_doubt: Option<bool>,
}

fn signed(amount_minor: u64) -> i64 {
    i64::try_from(amount_minor).expect("amounts have at most 12 digits")
}

/// A completion of `amount_minor` that [`check_completion`] allowed: settled at once
/// (approved, `00`, `auth_code`), the payment captured for the amount and posted, and
/// the bank told by a stored advice.
pub fn completion_recorded(payment: &Payment, amount_minor: u64, auth_code: String) -> Transition {
    assert!(amount_minor > 0 && amount_minor <= payment.amount_minor);
    assert!(
        payment.captured_minor == 0,
        "one completion per pre-authorisation"
    );
    let t = Transition {
        settle: Some(Settlement {
            state: State::Approved,
            rc: Rc::APPROVED,
            auth_code: Some(auth_code),
        }),
        root: RootChange {
            state: Some(State::Captured),
            captured_minor: Some(amount_minor),
            ..RootChange::default()
        },
        posting: Some(Posting::Amount(signed(amount_minor))),
        forward: Some((Row::Own, Forward::CompletionAdvice)),
        ..Transition::default()
    };
    debug_assert!(payment.after(&t.root).refunds_within_captured());
    t
}

/// A refund of `amount_minor` that [`check_refund`] allowed, recorded before it goes to
/// the bank: its row waits for the bank (`in_doubt`) and the amount is reserved on the
/// payment, so no other refund can take it meanwhile.
pub fn refund_reserved(payment: &Payment, amount_minor: u64) -> Transition {
    assert!(amount_minor > 0 && amount_minor <= payment.refundable_minor());
    let t = Transition {
        root: RootChange {
            refund_reserved_delta: signed(amount_minor),
            ..RootChange::default()
        },
        in_doubt: Some(true),
        ..Transition::default()
    };
    debug_assert!(payment.after(&t.root).refunds_within_captured());
    t
}

/// A refund of `amount_minor` settled by the bank's `verdict`: approved moves the amount
/// from reserved to refunded and posts it (bank -, merchant +); unknown (`reversing`)
/// keeps it reserved until the bank acknowledges a stored reversal; declined releases it.
pub fn refund_settled(
    payment: &Payment,
    amount_minor: u64,
    verdict: Verdict,
    auth_code: Option<String>,
) -> Transition {
    debug_assert!(
        payment.refund_reserved_minor >= amount_minor,
        "a refund at the bank is reserved"
    );
    let amount = signed(amount_minor);
    let mut t = Transition {
        settle: Some(Settlement {
            state: verdict.state,
            rc: verdict.rc,
            auth_code,
        }),
        in_doubt: Some(false),
        ..Transition::default()
    };
    match verdict.state {
        State::Approved => {
            t.root.refund_reserved_delta = -amount;
            t.root.refunded_delta = amount;
            t.posting = Some(Posting::Amount(-amount));
        }
        State::Reversing => {
            t.forward = Some((Row::Own, Forward::Reversal(ReversalReason::Timeout)));
        }
        _ => t.root.refund_reserved_delta = -amount,
    }
    debug_assert!(payment.after(&t.root).refunds_within_captured());
    t
}

/// A merchant's reversal of `named` that [`check_reversal`] allowed with `effect` (its
/// own row is recorded approved). Unless the row was reversed already: the named row
/// becomes `reversed`, the payment changes as `effect` says, the named row's postings are
/// negated, and a reversal of it is stored for the bank.
pub fn reversal_recorded(effect: ReversalEffect, named: &Named, payment: &Payment) -> Transition {
    let mut root = RootChange::default();
    match effect {
        ReversalEffect::AlreadyReversed => return Transition::default(),
        ReversalEffect::VoidPayment => {}
        ReversalEffect::UndoCompletion => {
            assert!(payment.refunded_minor + payment.refund_reserved_minor == 0);
            root.state = Some(State::Approved);
            root.captured_minor = Some(0);
        }
        ReversalEffect::UndoRefund => {
            debug_assert!(payment.refunded_minor >= named.amount_minor);
            root.refunded_delta = -signed(named.amount_minor);
        }
    }
    let t = Transition {
        named_state: Some(State::Reversed),
        root,
        posting: Some(Posting::NegateNamed),
        forward: Some((Row::Named, Forward::Reversal(ReversalReason::Merchant))),
        ..Transition::default()
    };
    debug_assert!(payment.after(&t.root).refunds_within_captured());
    t
}

/// A reversal the bank acknowledged (or an inquiry settled) for a row of `kind` and
/// `amount_minor` whose outcome was unknown, now `reversed`: a refund's reservation is
/// released, a pending completion cleared; a purchase or pre-authorisation is the root
/// itself and changes nothing more.
pub fn reversal_confirmed(kind: Kind, payment: &Payment, amount_minor: u64) -> RootChange {
    let change = match kind {
        Kind::Refund => {
            debug_assert!(payment.refund_reserved_minor >= amount_minor);
            RootChange {
                refund_reserved_delta: -signed(amount_minor),
                ..RootChange::default()
            }
        }
        Kind::Completion => RootChange {
            completion_pending: Some(false),
            ..RootChange::default()
        },
        _ => RootChange::default(),
    };
    debug_assert!(payment.after(&change).refunds_within_captured());
    change
}

// Bank advices (0420/0421: the bank reversed a transaction on its own); recorded and
// applied by the store, see crate::advices.

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

#[cfg(test)]
// Tests make their own clock readings to feed the decisions.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn purchase(amount: u64) -> Payment {
        Payment {
            kind: Kind::Purchase,
            state: State::Approved,
            amount_minor: amount,
            currency: 840,
            captured_minor: amount,
            refunded_minor: 0,
            refund_reserved_minor: 0,
            completion_pending: false,
        }
    }

    fn named(kind: Kind, state: State, amount: u64) -> Named {
        Named {
            kind,
            state,
            amount_minor: amount,
            currency: 840,
        }
    }

    // Proves refunds add up to the captured amount and no further, and need a capture.
    #[test]
    fn refunds_up_to_captured() {
        let mut p = purchase(1000);
        let n = named(Kind::Purchase, State::Approved, 1000);
        assert_eq!(check_refund(&n, &p, 600, 840), Ok(()));
        p.refunded_minor = 600;
        assert_eq!(p.status(), Status::PartiallyRefunded);
        assert_eq!(check_refund(&n, &p, 401, 840), Err(Rc::INVALID_AMOUNT));
        p.refund_reserved_minor = 300;
        assert_eq!(
            check_refund(&n, &p, 101, 840),
            Err(Rc::INVALID_AMOUNT),
            "reserved counts"
        );
        assert_eq!(check_refund(&n, &p, 100, 840), Ok(()));
        assert_eq!(
            check_refund(&n, &p, 100, 978),
            Err(Rc::INVALID_TRANSACTION),
            "other currency"
        );
        assert_eq!(check_refund(&n, &p, 0, 840), Err(Rc::INVALID_AMOUNT));
        p.refunded_minor = 1000;
        p.refund_reserved_minor = 0;
        assert_eq!(p.status(), Status::Refunded);
        let held = Payment {
            kind: Kind::Preauth,
            captured_minor: 0,
            ..purchase(1000)
        };
        assert_eq!(
            check_refund(&named(Kind::Preauth, State::Approved, 1000), &held, 1, 840),
            Err(Rc::INVALID_TRANSACTION)
        );
    }

    // Proves one completion of at most the held amount, only of a pre-authorisation.
    #[test]
    fn completion_rules() {
        let held = Payment {
            kind: Kind::Preauth,
            captured_minor: 0,
            ..purchase(5000)
        };
        let n = named(Kind::Preauth, State::Approved, 5000);
        assert_eq!(check_completion(&n, &held, 4000, 840), Ok(()));
        assert_eq!(
            check_completion(&n, &held, 5001, 840),
            Err(Rc::INVALID_AMOUNT)
        );
        let pending = Payment {
            completion_pending: true,
            ..held
        };
        assert_eq!(
            check_completion(&n, &pending, 4000, 840),
            Err(Rc::INVALID_TRANSACTION)
        );
        let captured = Payment {
            state: State::Captured,
            captured_minor: 4000,
            ..held
        };
        assert_eq!(
            check_completion(&n, &captured, 100, 840),
            Err(Rc::INVALID_TRANSACTION),
            "second completion"
        );
        assert_eq!(captured.status(), Status::Captured);
        assert_eq!(
            check_completion(
                &named(Kind::Purchase, State::Approved, 5000),
                &purchase(5000),
                100,
                840
            ),
            Err(Rc::INVALID_TRANSACTION)
        );
    }

    // Proves reversal rules: exact amount, refused once refunds exist, repeatable.
    #[test]
    fn reversal_rules() {
        let p = purchase(1000);
        let n = named(Kind::Purchase, State::Approved, 1000);
        assert_eq!(check_reversal(&n, &p, 999), Err(Rc::INVALID_AMOUNT));
        assert_eq!(
            check_reversal(&n, &p, 1000),
            Ok(ReversalEffect::VoidPayment)
        );
        let refunded = Payment {
            refunded_minor: 1,
            ..p
        };
        assert_eq!(
            check_reversal(&n, &refunded, 1000),
            Err(Rc::INVALID_TRANSACTION)
        );
        assert_eq!(
            check_reversal(&named(Kind::Purchase, State::Reversed, 1000), &p, 1),
            Ok(ReversalEffect::AlreadyReversed)
        );
        let captured = Payment {
            kind: Kind::Preauth,
            state: State::Captured,
            captured_minor: 400,
            ..p
        };
        assert_eq!(
            check_reversal(
                &named(Kind::Completion, State::Approved, 400),
                &captured,
                400
            ),
            Ok(ReversalEffect::UndoCompletion)
        );
        assert_eq!(
            check_reversal(
                &named(Kind::Preauth, State::Captured, 1000),
                &captured,
                1000
            ),
            Err(Rc::INVALID_TRANSACTION)
        );
        assert_eq!(
            check_reversal(&named(Kind::Refund, State::Approved, 300), &refunded, 300),
            Ok(ReversalEffect::UndoRefund)
        );
    }

    // Proves a reversal racing its original is held while the original is unseen or in
    // flight, within the hold's limits, then applied to the outcome the original got.
    #[test]
    fn reversal_held_until_original_settles() {
        let hold = ReversalHold {
            unseen_max_ms: 2000,
            in_flight_max_ms: 5000,
        };
        let p = purchase(1000);
        assert_eq!(plan_reversal(None, 1000, 0, &hold), ReversalPlan::Hold);
        assert_eq!(
            plan_reversal(None, 1000, 2000, &hold),
            ReversalPlan::Refuse(Rc::NO_ORIGINAL)
        );
        let in_flight = named(Kind::Purchase, State::Authorising, 1000);
        let pending = Payment {
            state: State::Authorising,
            ..p
        };
        assert_eq!(
            plan_reversal(Some((&in_flight, &pending)), 1000, 4999, &hold),
            ReversalPlan::Hold
        );
        assert_eq!(
            plan_reversal(Some((&in_flight, &pending)), 1000, 5000, &hold),
            ReversalPlan::Refuse(Rc::ISSUER_DOWN)
        );
        let approved = named(Kind::Purchase, State::Approved, 1000);
        assert_eq!(
            plan_reversal(Some((&approved, &p)), 1000, 300, &hold),
            ReversalPlan::Apply(ReversalEffect::VoidPayment)
        );
        let declined = named(Kind::Purchase, State::Declined, 1000);
        assert_eq!(
            plan_reversal(Some((&declined, &p)), 1000, 300, &hold),
            ReversalPlan::NothingToUndo
        );
        assert_eq!(
            plan_reversal(Some((&declined, &p)), 999, 300, &hold),
            ReversalPlan::Refuse(Rc::INVALID_AMOUNT)
        );
        let unknown = named(Kind::Purchase, State::Reversing, 1000);
        assert_eq!(
            plan_reversal(Some((&unknown, &p)), 1000, 300, &hold),
            ReversalPlan::Apply(ReversalEffect::AlreadyReversed),
            "an unknown outcome is reversed by the switch anyway"
        );
    }

    // Proves the status names of the contract for each state.
    #[test]
    fn statuses() {
        let p = purchase(1000);
        assert_eq!(
            Payment {
                state: State::Authorising,
                ..p
            }
            .status(),
            Status::Pending
        );
        assert_eq!(
            Payment {
                state: State::Reversing,
                ..p
            }
            .status(),
            Status::Unknown
        );
        assert_eq!(
            Payment {
                state: State::Refused,
                ..p
            }
            .status(),
            Status::Declined
        );
        assert_eq!(p.status().as_str(), "APPROVED");
    }

    fn held(amount: u64) -> Payment {
        Payment {
            kind: Kind::Preauth,
            captured_minor: 0,
            ..purchase(amount)
        }
    }

    // Proves every state reads back from its column value, and nothing else reads as one.
    #[test]
    fn states_round_trip() {
        for s in [
            State::Authorising,
            State::Approved,
            State::Declined,
            State::Refused,
            State::Reversing,
            State::Reversed,
            State::Captured,
        ] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("APPROVED"), None);
    }

    // Proves a bank's 91 declines an authorisation but leaves a refund unknown, no answer
    // leaves either unknown (reversing, answered 91), and a request never sent is refused
    // (91, nothing to reverse); only the unknown one needs a reversal.
    #[test]
    fn verdicts() {
        let unknown = Verdict {
            state: State::Reversing,
            rc: Rc::ISSUER_DOWN,
        };
        assert_eq!(authorisation_verdict(BankReply::Unknown), unknown);
        assert_eq!(refund_verdict(BankReply::Unknown), unknown);
        assert_eq!(
            refund_verdict(BankReply::Answered(Rc::ISSUER_DOWN)),
            unknown
        );
        let refused = Verdict {
            state: State::Refused,
            rc: Rc::ISSUER_DOWN,
        };
        assert_eq!(
            authorisation_verdict(BankReply::NotSent),
            refused,
            "never sent"
        );
        assert_eq!(refund_verdict(BankReply::NotSent), refused, "never sent");
        assert!(unknown.needs_reversal() && !refused.needs_reversal());
        assert!(!authorisation_verdict(BankReply::Answered(Rc::APPROVED)).needs_reversal());
        assert_eq!(
            authorisation_verdict(BankReply::Answered(Rc::ISSUER_DOWN)).state,
            State::Declined
        );
        assert_eq!(
            authorisation_verdict(BankReply::Answered(Rc::INSUFFICIENT_FUNDS)),
            Verdict {
                state: State::Declined,
                rc: Rc::INSUFFICIENT_FUNDS
            }
        );
        assert_eq!(
            refund_verdict(BankReply::Answered(Rc::APPROVED)).state,
            State::Approved,
            "approved"
        );
    }

    // Proves a completion captures its amount, posts it and queues the advice, and the
    // payment then reads CAPTURED and refundable up to the amount.
    #[test]
    fn completion_transition() {
        let p = held(5000);
        let t = completion_recorded(&p, 4000, "123456".into());
        assert_eq!(t.settle.as_ref().map(|s| s.state), Some(State::Approved));
        assert_eq!(t.posting, Some(Posting::Amount(4000)));
        assert_eq!(t.forward, Some((Row::Own, Forward::CompletionAdvice)));
        assert_eq!(t.in_doubt, None);
        let after = p.after(&t.root);
        assert_eq!(after.state, State::Captured);
        assert_eq!(after.status(), Status::Captured);
        assert_eq!(after.refundable_minor(), 4000);
    }

    // Proves a refund reserves its amount, and each verdict moves or releases it: the
    // reserved plus refunded never exceed the captured amount.
    #[test]
    fn refund_transitions() {
        let p = purchase(1000);
        let reserve = refund_reserved(&p, 600);
        assert_eq!(reserve.in_doubt, Some(true));
        let at_bank = p.after(&reserve.root);
        assert_eq!(
            (at_bank.refund_reserved_minor, at_bank.refundable_minor()),
            (600, 400)
        );

        let ok = refund_settled(
            &at_bank,
            600,
            refund_verdict(BankReply::Answered(Rc::APPROVED)),
            None,
        );
        let done = at_bank.after(&ok.root);
        assert_eq!((done.refunded_minor, done.refund_reserved_minor), (600, 0));
        assert_eq!(ok.posting, Some(Posting::Amount(-600)));
        assert_eq!(ok.in_doubt, Some(false));
        assert_eq!(done.status(), Status::PartiallyRefunded);

        let no = refund_settled(
            &at_bank,
            600,
            refund_verdict(BankReply::Answered(Rc::DO_NOT_HONOUR)),
            None,
        );
        assert_eq!(
            at_bank.after(&no.root),
            p,
            "declined releases the reservation"
        );
        assert_eq!(no.posting, None);

        let unknown = refund_settled(&at_bank, 600, refund_verdict(BankReply::Unknown), None);
        assert!(unknown.root.is_empty(), "held until the bank acknowledges");
        assert_eq!(
            unknown.forward,
            Some((Row::Own, Forward::Reversal(ReversalReason::Timeout)))
        );
        let released = reversal_confirmed(Kind::Refund, &at_bank, 600);
        assert_eq!(at_bank.after(&released), p);
    }

    // Proves a refund beyond what may be refunded is refused where the transition is
    // computed, whatever a caller skipped.
    #[test]
    #[should_panic]
    fn refund_beyond_captured_panics() {
        let mut p = purchase(1000);
        p.refunded_minor = 700;
        refund_reserved(&p, 301);
    }

    // Proves each reversal effect: a void changes only the named row, an undone
    // completion holds the payment again, an undone refund stops counting, and a second
    // reversal changes nothing.
    #[test]
    fn reversal_transitions() {
        let p = purchase(1000);
        let n = named(Kind::Purchase, State::Approved, 1000);
        let void = reversal_recorded(ReversalEffect::VoidPayment, &n, &p);
        assert_eq!(void.named_state, Some(State::Reversed));
        assert!(void.root.is_empty());
        assert_eq!(void.posting, Some(Posting::NegateNamed));
        assert_eq!(
            void.forward,
            Some((Row::Named, Forward::Reversal(ReversalReason::Merchant)))
        );

        let captured = Payment {
            state: State::Captured,
            captured_minor: 400,
            ..held(1000)
        };
        let c = named(Kind::Completion, State::Approved, 400);
        let undo = reversal_recorded(ReversalEffect::UndoCompletion, &c, &captured);
        let again = captured.after(&undo.root);
        assert_eq!((again.state, again.captured_minor), (State::Approved, 0));
        assert_eq!(again.status(), Status::Approved);

        let refunded = Payment {
            refunded_minor: 300,
            ..p
        };
        let r = named(Kind::Refund, State::Approved, 300);
        let undo = reversal_recorded(ReversalEffect::UndoRefund, &r, &refunded);
        assert_eq!(refunded.after(&undo.root), p);

        let repeat = reversal_recorded(ReversalEffect::AlreadyReversed, &n, &p);
        assert_eq!(repeat, Transition::default());
    }

    // Proves a confirmed reversal clears a pending completion and leaves a payment's
    // money alone.
    #[test]
    fn confirmed_reversals() {
        let pending = Payment {
            completion_pending: true,
            ..held(1000)
        };
        let c = reversal_confirmed(Kind::Completion, &pending, 400);
        assert!(!pending.after(&c).completion_pending);
        assert!(reversal_confirmed(Kind::Purchase, &purchase(1000), 1000).is_empty());
    }

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
