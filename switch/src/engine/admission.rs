//! Admission of a purchase or pre-authorisation: whether it may go to a bank, or which
//! code refuses it. A plain decision; [`super::purchase`] is its async shell.

// A decision module: no clock readings of its own (clippy.toml says which).
#![deny(clippy::disallowed_methods)]

use std::time::Instant;

use crate::bank_io::Refused;
use crate::checks::Rc;

/// What the BIN table and the bank registry say about a card, and whether the bank it
/// names has a ready link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<B> {
    /// No BIN range serves the card.
    Unserved,
    /// A route names a bank that is not configured.
    Unconfigured,
    /// A configured bank; `link_ready` says whether any of its links is signed on.
    Bank { bank: B, link_ready: bool },
}

/// Why admission refused: the merchant's code and the reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) rc: Rc,
    pub(crate) why: &'static str,
}

/// Decides admission in the contract's order: no route (`92`), no ready link (`91`),
/// then the gate, which asks the breaker at `now` and takes a STAN (`91` when either
/// refuses). The gate runs last and only if everything before it passed, so that no
/// other refusal uses up the breaker's single half-open probe.
pub(crate) fn admit<B, G, X>(route: Route<B>, now: Instant, gate: G) -> Result<X, Refusal>
where
    G: FnOnce(B, Instant) -> Result<X, Refused>,
{
    let refuse = |rc, why| Err(Refusal { rc, why });
    match route {
        Route::Unserved => refuse(Rc::NO_ROUTE, "no bank serves this card"),
        Route::Unconfigured => refuse(Rc::NO_ROUTE, "route names an unconfigured bank"),
        Route::Bank {
            link_ready: false, ..
        } => refuse(Rc::ISSUER_DOWN, "bank has no ready link"),
        Route::Bank {
            bank,
            link_ready: true,
        } => match gate(bank, now) {
            Ok(go) => Ok(go),
            Err(Refused::Breaker) => refuse(Rc::ISSUER_DOWN, "bank circuit breaker open"),
            Err(Refused::Stans) => refuse(Rc::ISSUER_DOWN, "every STAN of the bank in flight"),
        },
    }
}

#[cfg(test)]
// Tests make their own clock readings to feed the decision.
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    /// A gate that counts its calls and answers `result`.
    fn gate<'a>(
        calls: &'a Cell<u32>,
        result: Result<u8, Refused>,
    ) -> impl FnOnce((), Instant) -> Result<u8, Refused> + 'a {
        move |(), _| {
            calls.set(calls.get() + 1);
            result
        }
    }

    // Proves route and link refusals come first, with their codes, and never ask the gate.
    #[test]
    fn refusals_before_the_gate_leave_the_probe_alone() {
        let now = Instant::now();
        let calls = Cell::new(0);
        for (route, rc) in [
            (Route::Unserved, Rc::NO_ROUTE),
            (Route::Unconfigured, Rc::NO_ROUTE),
            (
                Route::Bank {
                    bank: (),
                    link_ready: false,
                },
                Rc::ISSUER_DOWN,
            ),
        ] {
            let refused = admit(route, now, gate(&calls, Ok(1))).unwrap_err();
            assert_eq!(refused.rc, rc, "{route:?}");
        }
        assert_eq!(
            calls.get(),
            0,
            "the breaker was asked for a refused request"
        );
    }

    // Proves a ready bank goes when the gate opens, and is refused 91 when it does not.
    #[test]
    fn the_gate_decides_last() {
        let now = Instant::now();
        let calls = Cell::new(0);
        let ready = Route::Bank {
            bank: (),
            link_ready: true,
        };
        assert_eq!(admit(ready, now, gate(&calls, Ok(7))), Ok(7));
        for refused in [Refused::Breaker, Refused::Stans] {
            let refusal = admit(ready, now, gate(&calls, Err(refused))).unwrap_err();
            assert_eq!(refusal.rc, Rc::ISSUER_DOWN, "{refused:?}");
        }
        assert_eq!(calls.get(), 3);
    }

    // Proves the gate is asked about the routed bank at the `now` admission was given.
    #[test]
    fn the_gate_sees_now() {
        let now = Instant::now() + Duration::from_secs(5);
        let ready = Route::Bank {
            bank: 3u8,
            link_ready: true,
        };
        let seen = admit(ready, now, |bank, at| Ok::<_, Refused>((bank, at)));
        assert_eq!(seen, Ok((3, now)));
    }
}
