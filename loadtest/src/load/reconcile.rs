//! Reconciling what the harness saw against what the bank simulator recorded
//! (`GET /record`), as plain functions.
//!
//! - every approval the harness saw exists at the simulator by RRN, and is not reversed;
//! - no two requests were approved with one RRN, and every retransmission got its
//!   original's answer (same DE39, DE37, DE38);
//! - every `91` the harness saw ended reversed at the simulator (the caller polls until
//!   [`timeouts_unreversed`] is empty or a bounded wait passes);
//! - nothing the simulator approved for the harness's terminals stands unreversed without
//!   the harness having been told it was approved; nothing withheld stays unreversed;
//! - every request got an answer, and the simulator saw no RRN twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::mix::Kind;

/// Failure lines kept per check (the count is always exact).
pub const FAILURE_EXAMPLES_MAX: usize = 5;

/// The parts of the simulator's record that reconciliation reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SimRecord {
    #[serde(default)]
    pub approved: Vec<SimApproval>,
    #[serde(default)]
    pub unanswered: Vec<SimTxn>,
    #[serde(default)]
    pub reversals: BTreeMap<String, u64>,
    /// Reversals naming an RRN the simulator never saw: for a request that never reached
    /// the bank, a reversal is a phantom.
    #[serde(default)]
    pub unknown_reversals: BTreeMap<String, u64>,
    #[serde(default)]
    pub requests_by_rrn_dupes: u64,
    #[serde(default)]
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SimTxn {
    pub rrn: Option<String>,
    pub mti: String,
    pub amount_minor: Option<u64>,
    pub terminal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SimApproval {
    #[serde(flatten)]
    pub txn: SimTxn,
    pub auth_code: Option<String>,
    pub reversed: bool,
}

impl SimRecord {
    /// Several simulators' records as one (each bank sees a disjoint set of RRNs).
    pub fn merge(records: Vec<SimRecord>) -> SimRecord {
        let mut all = SimRecord::default();
        for r in records {
            all.approved.extend(r.approved);
            all.unanswered.extend(r.unanswered);
            for (rrn, n) in r.reversals {
                *all.reversals.entry(rrn).or_default() += n;
            }
            for (rrn, n) in r.unknown_reversals {
                *all.unknown_reversals.entry(rrn).or_default() += n;
            }
            all.requests_by_rrn_dupes += r.requests_by_rrn_dupes;
            all.dropped += r.dropped;
        }
        all
    }
}

/// The answer a retransmission's original got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalAnswer {
    pub code: String,
    pub rrn: Option<String>,
    pub auth: Option<String>,
}

/// One request as the harness saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub kind: Kind,
    pub terminal: String,
    pub amount_minor: u64,
    /// DE39; None when no answer came.
    pub code: Option<String>,
    pub rrn: Option<String>,
    pub auth: Option<String>,
    /// For a retransmission, what its original got.
    pub original: Option<OriginalAnswer>,
}

/// One kind of failure: how many, and a few examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub check: String,
    pub count: u64,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub approvals_checked: u64,
    pub retransmissions_checked: u64,
    pub timeouts_checked: u64,
    pub failures: Vec<Failure>,
}

impl Reconciliation {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn fail(&mut self, check: &str, example: String) {
        let f = match self.failures.iter_mut().position(|f| f.check == check) {
            Some(i) => &mut self.failures[i],
            None => {
                self.failures.push(Failure {
                    check: check.to_owned(),
                    ..Failure::default()
                });
                self.failures.last_mut().expect("just pushed")
            }
        };
        f.count += 1;
        if f.examples.len() < FAILURE_EXAMPLES_MAX {
            f.examples.push(example);
        }
    }
}

/// The RRN the simulator knows a `91` by: the answer's DE37, or else the withheld
/// request of the same terminal and amount.
fn timeout_rrn(s: &Seen, withheld: &HashMap<(&str, u64), &str>) -> Option<String> {
    s.rrn.clone().or_else(|| {
        withheld
            .get(&(s.terminal.as_str(), s.amount_minor))
            .map(|r| (*r).to_owned())
    })
}

fn withheld_index(sim: &SimRecord) -> HashMap<(&str, u64), &str> {
    sim.unanswered
        .iter()
        .filter_map(|t| Some(((t.terminal.as_deref()?, t.amount_minor?), t.rrn.as_deref()?)))
        .collect()
}

fn is_reversed(rrn: &str, sim: &SimRecord, approved: &HashMap<&str, &SimApproval>) -> bool {
    sim.reversals.contains_key(rrn) || approved.get(rrn).is_some_and(|a| a.reversed)
}

/// The `91` answers whose reversal the simulator has not (yet) seen.
pub fn timeouts_unreversed(seen: &[Seen], sim: &SimRecord) -> Vec<String> {
    let withheld = withheld_index(sim);
    let approved: HashMap<&str, &SimApproval> = approved_index(sim);
    seen.iter()
        .filter(|s| s.code.as_deref() == Some("91"))
        .filter_map(|s| {
            let rrn = timeout_rrn(s, &withheld);
            match rrn {
                Some(r) if is_reversed(&r, sim, &approved) => None,
                Some(r) => Some(r),
                None => Some(format!("terminal {} amount {}", s.terminal, s.amount_minor)),
            }
        })
        .collect()
}

fn approved_index(sim: &SimRecord) -> HashMap<&str, &SimApproval> {
    sim.approved
        .iter()
        .filter_map(|a| Some((a.txn.rrn.as_deref()?, a)))
        .collect()
}

/// Checks everything listed in the module documentation. `terminals` are the harness's
/// DE41 values: simulator entries of other terminals are not the harness's business.
pub fn reconcile(seen: &[Seen], sim: &SimRecord, terminals: &HashSet<String>) -> Reconciliation {
    let mut r = Reconciliation::default();
    let approved = approved_index(sim);
    let mut told_approved: HashSet<&str> = HashSet::new();

    for s in seen {
        let Some(code) = s.code.as_deref() else {
            r.fail(
                "request never answered",
                format!(
                    "{} terminal {} amount {}",
                    s.kind, s.terminal, s.amount_minor
                ),
            );
            continue;
        };
        if let Some(o) = &s.original {
            r.retransmissions_checked += 1;
            if code != o.code || s.rrn != o.rrn || s.auth != o.auth {
                r.fail(
                    "retransmission answered differently from its original",
                    format!(
                        "original {} {:?} {:?}, repeat {code} {:?} {:?}",
                        o.code, o.rrn, o.auth, s.rrn, s.auth
                    ),
                );
            }
            continue;
        }
        if code != "00" {
            continue;
        }
        r.approvals_checked += 1;
        let Some(rrn) = s.rrn.as_deref() else {
            r.fail("approval without DE37", format!("terminal {}", s.terminal));
            continue;
        };
        if !told_approved.insert(rrn) {
            r.fail("two approvals with one RRN", rrn.to_owned());
        }
        match approved.get(rrn) {
            None => r.fail("approval the bank never made", rrn.to_owned()),
            Some(a) if a.reversed => r.fail(
                "approved to the merchant but reversed at the bank",
                rrn.to_owned(),
            ),
            Some(a) if a.auth_code.is_some() && a.auth_code != s.auth => r.fail(
                "DE38 differs from the bank's",
                format!("{rrn}: merchant {:?}, bank {:?}", s.auth, a.auth_code),
            ),
            Some(_) => {}
        }
    }

    let withheld = withheld_index(sim);
    for s in seen
        .iter()
        .filter(|s| s.code.as_deref() == Some("91") && s.original.is_none())
    {
        r.timeouts_checked += 1;
        match timeout_rrn(s, &withheld) {
            Some(rrn) if is_reversed(&rrn, sim, &approved) => {}
            Some(rrn) => r.fail("91 answered but not reversed at the bank", rrn),
            None => r.fail(
                "91 answered but the bank has no such request",
                format!("terminal {} amount {}", s.terminal, s.amount_minor),
            ),
        }
    }

    let ours = |t: &SimTxn| t.terminal.as_ref().is_some_and(|x| terminals.contains(x));
    for a in sim.approved.iter().filter(|a| ours(&a.txn) && !a.reversed) {
        let rrn = a.txn.rrn.as_deref().unwrap_or("");
        if a.txn
            .rrn
            .as_ref()
            .is_some_and(|x| sim.reversals.contains_key(x))
        {
            continue;
        }
        // Refunds and completions are not sent by the harness; an approved purchase the
        // merchant was never told of is money taken without a sale.
        if !told_approved.contains(rrn) {
            r.fail(
                "charged at the bank, merchant not told approved",
                rrn.to_owned(),
            );
        }
    }
    for t in sim.unanswered.iter().filter(|t| ours(t)) {
        let rrn = t.rrn.as_deref().unwrap_or("");
        if !is_reversed(rrn, sim, &approved) {
            r.fail("withheld at the bank and never reversed", rrn.to_owned());
        }
    }
    for rrn in sim.unknown_reversals.keys() {
        r.fail("reversal of a request the bank never saw", rrn.clone());
    }
    if sim.requests_by_rrn_dupes > 0 {
        for _ in 0..sim.requests_by_rrn_dupes {
            r.fail(
                "bank got a second request with an RRN it had seen",
                "see the record".into(),
            );
        }
    }
    if sim.dropped > 0 {
        r.fail(
            "bank record overflowed",
            format!("{} entries dropped", sim.dropped),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saw(kind: Kind, code: Option<&str>, rrn: Option<&str>, amount: u64) -> Seen {
        Seen {
            kind,
            terminal: "T0010001".into(),
            amount_minor: amount,
            code: code.map(str::to_owned),
            rrn: rrn.map(str::to_owned),
            auth: rrn.map(|_| "AUTH01".to_owned()),
            original: None,
        }
    }

    fn txn(rrn: &str, amount: u64) -> SimTxn {
        SimTxn {
            rrn: Some(rrn.into()),
            mti: "0200".into(),
            amount_minor: Some(amount),
            terminal: Some("T0010001".into()),
        }
    }

    fn approval(rrn: &str, reversed: bool) -> SimApproval {
        SimApproval {
            txn: txn(rrn, 1000),
            auth_code: Some("AUTH01".into()),
            reversed,
        }
    }

    fn terminals() -> HashSet<String> {
        ["T0010001".to_owned()].into()
    }

    fn clean() -> (Vec<Seen>, SimRecord) {
        let mut retransmit = saw(Kind::Retransmit, Some("00"), Some("000000000001"), 1000);
        retransmit.original = Some(OriginalAnswer {
            code: "00".into(),
            rrn: Some("000000000001".into()),
            auth: Some("AUTH01".into()),
        });
        let seen = vec![
            saw(Kind::Purchase, Some("00"), Some("000000000001"), 1000),
            saw(Kind::Decline, Some("51"), Some("000000000002"), 1051),
            saw(Kind::Timeout, Some("91"), Some("000000000003"), 1091),
            retransmit,
        ];
        let sim = SimRecord {
            approved: vec![approval("000000000001", false)],
            unanswered: vec![txn("000000000003", 1091)],
            reversals: [("000000000003".to_owned(), 1)].into(),
            ..SimRecord::default()
        };
        (seen, sim)
    }

    // Proves a consistent run reconciles with every kind checked.
    #[test]
    fn clean_run_passes() {
        let (seen, sim) = clean();
        let r = reconcile(&seen, &sim, &terminals());
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(
            (
                r.approvals_checked,
                r.retransmissions_checked,
                r.timeouts_checked
            ),
            (1, 1, 1)
        );
        assert!(timeouts_unreversed(&seen, &sim).is_empty());
    }

    // Proves an approval missing at the bank, or reversed there, is caught.
    #[test]
    fn approval_missing_or_reversed() {
        let (seen, mut sim) = clean();
        sim.approved[0].reversed = true;
        let r = reconcile(&seen, &sim, &terminals());
        assert_eq!(
            r.failures[0].check,
            "approved to the merchant but reversed at the bank"
        );
        sim.approved.clear();
        let r = reconcile(&seen, &sim, &terminals());
        assert_eq!(r.failures[0].check, "approval the bank never made");
    }

    // Proves a double charge (two approvals, one RRN) and a changed retransmission fail.
    #[test]
    fn double_charge_and_bad_retransmission() {
        let (mut seen, sim) = clean();
        seen.push(seen[0].clone());
        seen[3].rrn = Some("000000000009".into());
        let r = reconcile(&seen, &sim, &terminals());
        let checks: Vec<&str> = r.failures.iter().map(|f| f.check.as_str()).collect();
        assert!(checks.contains(&"two approvals with one RRN"), "{checks:?}");
        assert!(checks.contains(&"retransmission answered differently from its original"));
    }

    // Proves a reversal of an RRN the bank never saw (a phantom) fails reconciliation.
    #[test]
    fn phantom_reversal() {
        let (seen, mut sim) = clean();
        sim.unknown_reversals.insert("000000000077".to_owned(), 1);
        let r = reconcile(&seen, &sim, &terminals());
        assert!(!r.ok());
        assert!(
            r.failures
                .iter()
                .any(|f| f.check == "reversal of a request the bank never saw"),
            "{:?}",
            r.failures
        );
    }

    // Proves an unreversed 91 is pending (found by terminal and amount without DE37),
    // and a bank approval the merchant never heard of fails.
    #[test]
    fn unresolved_timeouts_and_silent_charges() {
        let (mut seen, mut sim) = clean();
        sim.reversals.clear();
        seen[2].rrn = None;
        assert_eq!(timeouts_unreversed(&seen, &sim), ["000000000003"]);
        sim.approved.push(approval("000000000077", false));
        seen.push(saw(Kind::Purchase, None, None, 1000));
        let r = reconcile(&seen, &sim, &terminals());
        let checks: Vec<&str> = r.failures.iter().map(|f| f.check.as_str()).collect();
        for c in [
            "91 answered but not reversed at the bank",
            "charged at the bank, merchant not told approved",
            "withheld at the bank and never reversed",
            "request never answered",
        ] {
            assert!(checks.contains(&c), "{c} missing from {checks:?}");
        }
    }

    // Proves records merge and the simulator's JSON shape deserialises.
    #[test]
    fn merge_and_parse() {
        let json = r#"{"approved":[{"rrn":"000000000001","mti":"0200","processing_code":"000000",
            "amount_minor":1000,"currency":"840","terminal":"T","merchant":"M","stan":"000001",
            "auth_code":"ABC123","reversed":false}],"declined":[],"unanswered":[],
            "reversals":{"000000000009":2},"requests_by_rrn_dupes":0,"counts_by_mti":{},
            "totals":{},"dropped":0}"#;
        let a: SimRecord = serde_json::from_str(json).unwrap();
        let b: SimRecord = serde_json::from_str(json).unwrap();
        let m = SimRecord::merge(vec![a, b]);
        assert_eq!(m.approved.len(), 2);
        assert_eq!(m.reversals["000000000009"], 4);
        assert_eq!(m.approved[0].auth_code.as_deref(), Some("ABC123"));
    }
}
