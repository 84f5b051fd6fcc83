//! The transaction state machine: the single source of truth for what may follow what.
//!
//! A *payment* is an original purchase or pre-authorisation (its root row) with every
//! completion, refund and reversal that names it. These functions take the payment's
//! state and a request and say whether the request may proceed (or what code refuses
//! it); the engine applies the effect under a row lock, so the answer holds under
//! concurrency on any number of instances. See docs/lifecycle.md for the diagram.

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

#[cfg(test)]
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
}
