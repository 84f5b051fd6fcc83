//! The invariants, checked at quiescence against the banks' ledgers, the merchants'
//! book of answers and the store.

use std::collections::{BTreeMap, BTreeSet};

use switch::checks::Kind;
use switch::store::{State, Store};

use crate::bank::Charge;
use crate::merchant::{Book, Req};
use crate::world::World;

/// Lines reported per invariant at most.
const LINES_MAX: usize = 3;

#[derive(Default)]
struct Found(BTreeMap<&'static str, Vec<String>>);

impl Found {
    fn add(&mut self, rule: &'static str, detail: String) {
        self.0.entry(rule).or_default().push(detail);
    }

    fn lines(self) -> Vec<String> {
        let mut out = Vec::new();
        for (rule, details) in self.0 {
            let more = details.len().saturating_sub(LINES_MAX);
            for d in details.into_iter().take(LINES_MAX) {
                out.push(format!("{rule}: {d}"));
            }
            if more > 0 {
                out.push(format!("{rule}: ... and {more} more"));
            }
        }
        out
    }
}

/// Every broken invariant (none when the run is sound).
pub async fn invariants(world: &World, book: &Book) -> Vec<String> {
    let mut f = Found::default();
    let charges: BTreeMap<String, Charge> = world.banks.iter().flat_map(|b| b.charges()).collect();
    let reqs = book.all();
    merchant_checks(world, &reqs, &charges, &mut f);
    store_checks(world, &charges, &mut f).await;
    if std::env::var_os("SIM_DUMP").is_some() {
        for r in &reqs {
            eprintln!(
                "{} {} {:?} {} STAN {} DE7 {} amount {} answers {:?} reversed {}",
                r.merchant,
                r.terminal,
                r.kind,
                r.mti.as_str(),
                r.stan,
                r.de7,
                r.amount_minor,
                r.answers,
                r.reversed
            );
        }
    }
    f.lines()
}

/// What merchants were told against what stands at the banks: every approval held is
/// charged, every charge is an approval held, one answer per request, none left
/// unanswered.
fn merchant_checks(world: &World, reqs: &[Req], charges: &BTreeMap<String, Charge>, f: &mut Found) {
    let money = || reqs.iter().filter(|r| r.kind.moves_money());
    let approvals: BTreeSet<&str> = money().filter_map(|r| r.approval()).collect();
    for r in money() {
        let who = format!(
            "{} {} STAN {} ({:?})",
            r.merchant, r.terminal, r.stan, r.kind
        );
        if let Some(rrn) = r.approval() {
            match charges.get(rrn) {
                Some(c) if c.reversed_by_bank => {}
                Some(c) if c.standing && c.amount_minor == r.amount_minor => {}
                other => f.add(
                    "approval-seen-is-charged",
                    format!(
                        "{who} was approved as RRN {rrn} for {} (answers {:?}); the bank has {other:?}; the store: {}",
                        r.amount_minor,
                        r.answers,
                        story(world, rrn)
                    ),
                ),
            }
        }
        let with_rrn: BTreeSet<_> = r.answers.iter().filter(|a| a.1.is_some()).collect();
        if with_rrn.len() > 1 {
            f.add(
                "one-answer-per-request",
                format!("{who} was answered {with_rrn:?}"),
            );
        }
        if r.abandoned {
            f.add(
                "every-request-answered",
                format!("{who}: neither it nor its reversal was ever answered"),
            );
        }
    }
    for (rrn, c) in charges.iter().filter(|(_, c)| c.standing) {
        if !approvals.contains(rrn.as_str()) {
            f.add(
                "charge-without-approval-is-reversed",
                format!(
                    "RRN {rrn} ({:?} of {}) stands at the bank; no merchant holds its approval; the store: {}; merchants were told {:?}",
                    c.kind,
                    c.amount_minor,
                    story(world, rrn),
                    told(reqs, rrn)
                ),
            );
        }
    }
}

/// The store against the banks: no order charged twice, nothing unresolved, every
/// notification delivered, the ledger sound, each row's state as its bank holds it.
async fn store_checks(world: &World, charges: &BTreeMap<String, Charge>, f: &mut Found) {
    let txns = world.store.transactions();
    let mut per_order: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for t in &txns {
        let standing_at_bank = charges.get(&t.rrn).is_some_and(|c| c.standing);
        if let (true, Some(order)) = (t.kind.is_root(), &t.order_ref)
            && standing_at_bank
        {
            per_order
                .entry((t.merchant_id.clone(), order.clone()))
                .or_default()
                .push(t.rrn.clone());
        }
        row_checks(t, standing_at_bank, charges, f);
    }
    for ((merchant, order), rrns) in per_order.iter().filter(|(_, r)| r.len() > 1) {
        f.add(
            "no-order-charged-twice",
            format!("order {order} of {merchant} stands at the bank as {rrns:?}"),
        );
    }
    if world.store.pending_forwards() > 0 || world.store.in_doubt() > 0 {
        f.add(
            "nothing-unresolved",
            format!(
                "{} messages to forward, {} in doubt",
                world.store.pending_forwards(),
                world.store.in_doubt()
            ),
        );
    }
    match world.store.notification_backlog().await {
        Ok(b) if b.pending == 0 => {}
        other => f.add("notifications-delivered", format!("backlog {other:?}")),
    }
    match world.store.ledger_violations().await {
        Ok(v) => {
            for v in v {
                f.add("ledger-balances", format!("{}: {}", v.rule, v.detail));
            }
        }
        Err(e) => f.add("ledger-balances", format!("not checked: {e}")),
    }
}

/// One row: settled, and standing here exactly when it stands at its bank.
fn row_checks(
    t: &switch::store::TxnRecord,
    standing_at_bank: bool,
    charges: &BTreeMap<String, Charge>,
    f: &mut Found,
) {
    if matches!(t.state, State::Authorising | State::Reversing) {
        f.add(
            "nothing-unresolved",
            format!(
                "{} RRN {} is still {}",
                t.kind.as_str(),
                t.rrn,
                t.state.as_str()
            ),
        );
    }
    let moves = matches!(
        t.kind,
        Kind::Purchase | Kind::Preauth | Kind::Completion | Kind::Refund
    );
    if moves && t.bank_id.is_some() {
        let standing_here = matches!(t.state, State::Approved | State::Captured);
        if standing_here != standing_at_bank {
            f.add(
                "store-agrees-with-bank",
                format!(
                    "{} RRN {} is {} here; the bank has {:?}",
                    t.kind.as_str(),
                    t.rrn,
                    t.state.as_str(),
                    charges.get(&t.rrn)
                ),
            );
        }
    }
}

/// The store's rows about `rrn`: its own and those naming it.
fn story(world: &World, rrn: &str) -> String {
    let txns = world.store.transactions();
    let Some(t) = txns.iter().find(|t| t.rrn == rrn) else {
        return "nothing".into();
    };
    let mut out = format!(
        "{} {} {:?}",
        t.kind.as_str(),
        t.state.as_str(),
        t.response_code
    );
    for n in txns.iter().filter(|n| n.original_id == Some(t.id)) {
        out.push_str(&format!(
            "; {} {} {} {:?}",
            n.rrn,
            n.kind.as_str(),
            n.state.as_str(),
            n.response_code
        ));
    }
    out
}

/// Which requests were answered with `rrn`, and how.
fn told(reqs: &[Req], rrn: &str) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.answers.iter().any(|a| a.1.as_deref() == Some(rrn)))
        .map(|r| {
            format!(
                "{:?} STAN {} answers {:?} reversed {}",
                r.kind, r.stan, r.answers, r.reversed
            )
        })
        .collect()
}
