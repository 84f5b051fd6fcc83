//! The three-way reconciliation of a chaos run as a plain function: the merchant's
//! records (every request sent, every answer got), the bank simulators' records, and the
//! switch's journal with its ledger postings. Each order is judged on its own; what
//! belongs to no order is judged apart.
//!
//! - **lost**: the merchant was told approved (and did not reverse it), but the bank has
//!   no standing charge with that RRN.
//! - **doubled**: the bank holds two or more standing charges for one order.
//! - **phantom**: a standing bank charge the merchant was not told of (a decline, a `91`,
//!   a reversal answered `00`, or no final answer), or one matching no order; and a
//!   reversal the bank got for an RRN it never saw, unless the merchant was told `91` for
//!   that request: the switch cannot know whether a request written as its link broke
//!   reached the bank, and the contract has it reverse such an unknown outcome (the bank
//!   answers `25`, no money moves; counted apart as `unseen_reversals_after_91`).
//! - **unresolved**: a request of the merchant without a final answer, or a journal row
//!   left `authorising` or `reversing`, or a reversal left pending or expired.
//! - **journal mismatch**: the journal's state of the order disagrees with what the
//!   merchant was told; **ledger mismatch**: the order's postings on its bank's account
//!   do not add up to the amount the journal says is charged.
//! - **inconsistent answers**: two final answers to one request that differ;
//!   **contradictory 96**: a `96` that carries DE37 (the contract: a `96` means nothing
//!   was recorded and nothing reached a bank; any answer with DE37 is recorded under it).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::journal::JournalRow;
use super::plan::{RetryPolicy, is_final};
use crate::load::reconcile::SimRecord;

/// Examples kept per count (the count itself is always exact).
pub const EXAMPLES_MAX: usize = 10;

/// One answer the merchant got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerSeen {
    /// DE39.
    pub code: String,
    /// DE37.
    pub rrn: Option<String>,
    /// DE38.
    pub auth: Option<String>,
    /// Since the start of the run.
    pub at_ms: u64,
}

/// One request (a purchase or a reversal) with all its sends and answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLog {
    /// The original MTI (retransmissions went as its repeat).
    pub mti: String,
    pub stan: String,
    pub de7: String,
    /// Sends, the first included.
    pub sends: u32,
    /// Every answer that came for this request's identity, late ones included.
    pub answers: Vec<AnswerSeen>,
    /// The answer that ended the merchant's retransmissions; None when it gave up.
    pub final_answer: Option<AnswerSeen>,
}

/// One order: its purchase and, when the merchant cancelled it, its reversal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLog {
    pub index: u64,
    pub order_ref: String,
    pub terminal: String,
    pub amount_minor: u64,
    pub purchase: RequestLog,
    pub reversal: Option<RequestLog>,
}

/// The merchant's whole record of a run (the file `chaos-merchant run` writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantLog {
    pub merchant: String,
    pub policy: RetryPolicy,
    pub orders: Vec<OrderLog>,
    /// Answers that named no request the merchant sent.
    pub unmatched_answers: u64,
}

/// How many, with a few explained examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Count {
    fn add(&mut self, example: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(example());
        }
    }
}

/// The reconciliation's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub orders: u64,
    /// Final answers to purchases by DE39 (`none` for no final answer).
    pub purchase_finals: BTreeMap<String, u64>,
    /// Final answers to the merchant's reversals by DE39.
    pub reversal_finals: BTreeMap<String, u64>,
    /// Sends beyond the first, all requests together.
    pub retransmissions: u64,
    /// Answers `94` and `96` the merchant got (then retransmitted).
    pub answers_94: u64,
    pub answers_96: u64,
    /// Financial requests the banks got with an RRN seen before (a resend, not a charge).
    pub bank_rrn_repeats: u64,
    /// Reversals of requests the bank never saw, after the merchant was told `91`.
    pub unseen_reversals_after_91: u64,
    pub lost: Count,
    pub doubled: Count,
    pub phantom: Count,
    pub unresolved: Count,
    pub journal_mismatch: Count,
    pub ledger_mismatch: Count,
    pub inconsistent_answers: Count,
    pub contradictory_96: Count,
}

impl Verdict {
    /// True when every count is zero.
    pub fn ok(&self) -> bool {
        self.counts().iter().all(|(_, c)| c.count == 0)
    }

    /// The counts by name, in the order the summary prints them.
    pub fn counts(&self) -> [(&'static str, &Count); 8] {
        [
            ("lost", &self.lost),
            ("doubled", &self.doubled),
            ("phantom", &self.phantom),
            ("unresolved", &self.unresolved),
            ("journal_mismatch", &self.journal_mismatch),
            ("ledger_mismatch", &self.ledger_mismatch),
            ("inconsistent_answers", &self.inconsistent_answers),
            ("contradictory_96", &self.contradictory_96),
        ]
    }
}

/// A charge at a bank, as its record tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Charge {
    rrn: String,
    /// Not answered by the bank (it may or may not have charged): it must be reversed.
    withheld: bool,
    reversed: bool,
}

/// The bank's charges and the journal's rows, indexed for judging orders.
struct Index<'a> {
    charges: HashMap<(&'a str, u64), Vec<Charge>>,
    rows_by_order: HashMap<&'a str, Vec<&'a JournalRow>>,
    children: HashMap<i64, Vec<&'a JournalRow>>,
}

impl<'a> Index<'a> {
    fn new(bank: &'a SimRecord, journal: &'a [JournalRow]) -> Index<'a> {
        let mut charges: HashMap<(&str, u64), Vec<Charge>> = HashMap::new();
        let reversed = |rrn: &str| bank.reversals.contains_key(rrn);
        let approved = bank.approved.iter().map(|a| (&a.txn, false, a.reversed));
        let withheld = bank.unanswered.iter().map(|t| (t, true, false));
        for (t, withheld, marked) in approved.chain(withheld) {
            let (Some(term), Some(amount), Some(rrn)) = (&t.terminal, t.amount_minor, &t.rrn)
            else {
                continue;
            };
            charges
                .entry((term.as_str(), amount))
                .or_default()
                .push(Charge {
                    rrn: rrn.clone(),
                    withheld,
                    reversed: marked || reversed(rrn),
                });
        }
        let mut rows_by_order: HashMap<&str, Vec<&JournalRow>> = HashMap::new();
        let mut children: HashMap<i64, Vec<&JournalRow>> = HashMap::new();
        for r in journal {
            if let Some(o) = &r.order_ref {
                rows_by_order.entry(o.as_str()).or_default().push(r);
            }
            if let Some(parent) = r.original_id {
                children.entry(parent).or_default().push(r);
            }
        }
        Index {
            charges,
            rows_by_order,
            children,
        }
    }

    /// The order's rows and the rows that name them (its reversal).
    fn rows(&self, order_ref: &str) -> Vec<&'a JournalRow> {
        let own = self
            .rows_by_order
            .get(order_ref)
            .cloned()
            .unwrap_or_default();
        let kids = own
            .iter()
            .flat_map(|r| self.children.get(&r.id).cloned().unwrap_or_default());
        let kids: Vec<&JournalRow> = kids.collect();
        own.into_iter().chain(kids).collect()
    }
}

/// Judges the run. Bank entries of terminals the merchant did not use are not this
/// run's and are left alone.
pub fn verdict(log: &MerchantLog, bank: &SimRecord, journal: &[JournalRow]) -> Verdict {
    let idx = Index::new(bank, journal);
    let mut v = Verdict {
        orders: log.orders.len() as u64,
        bank_rrn_repeats: bank.requests_by_rrn_dupes,
        ..Verdict::default()
    };
    for o in &log.orders {
        tally(o, &mut v);
        judge_order(o, &idx, &mut v);
    }
    judge_strays(log, bank, journal, &idx, &mut v);
    v
}

fn tally(o: &OrderLog, v: &mut Verdict) {
    let code = |r: &RequestLog| {
        r.final_answer
            .as_ref()
            .map_or("none".to_owned(), |a| a.code.clone())
    };
    *v.purchase_finals.entry(code(&o.purchase)).or_default() += 1;
    if let Some(r) = &o.reversal {
        *v.reversal_finals.entry(code(r)).or_default() += 1;
    }
    for r in std::iter::once(&o.purchase).chain(&o.reversal) {
        v.retransmissions += u64::from(r.sends.saturating_sub(1));
        v.answers_94 += r.answers.iter().filter(|a| a.code == "94").count() as u64;
        v.answers_96 += r.answers.iter().filter(|a| a.code == "96").count() as u64;
    }
}

/// What the merchant believes: charged (with the RRN it was told) or not.
fn merchant_charged(o: &OrderLog) -> Option<&str> {
    let told = o
        .purchase
        .final_answer
        .as_ref()
        .filter(|a| a.code == "00")?;
    let reversed = o
        .reversal
        .as_ref()
        .and_then(|r| r.final_answer.as_ref())
        .is_some_and(|a| a.code == "00");
    if reversed {
        None
    } else {
        Some(told.rrn.as_deref().unwrap_or(""))
    }
}

fn judge_order(o: &OrderLog, idx: &Index<'_>, v: &mut Verdict) {
    let no_charges = Vec::new();
    let charges = idx
        .charges
        .get(&(o.terminal.as_str(), o.amount_minor))
        .unwrap_or(&no_charges);
    let live: Vec<&Charge> = charges.iter().filter(|c| !c.reversed).collect();
    let rows = idx.rows(&o.order_ref);
    let told = merchant_charged(o);
    let why = || describe(o, charges, &rows);
    if told.is_some_and(|rrn| !live.iter().any(|c| c.rrn == rrn)) {
        v.lost.add(why);
    }
    if live.len() >= 2 {
        v.doubled.add(why);
    }
    if live.iter().any(|c| told != Some(c.rrn.as_str())) {
        v.phantom.add(why);
    }
    let requests = std::iter::once(&o.purchase).chain(&o.reversal);
    let unanswered = requests.clone().any(|r| r.final_answer.is_none());
    if unanswered || rows.iter().any(|r| r.unresolved()) {
        v.unresolved.add(why);
    }
    if requests.clone().any(|r| !finals_agree(r)) {
        v.inconsistent_answers.add(why);
    }
    let answers = requests.clone().flat_map(|r| &r.answers);
    if answers.clone().any(|a| a.code == "96" && a.rrn.is_some()) {
        v.contradictory_96.add(why);
    }
    let purchase_rows: Vec<&&JournalRow> = rows.iter().filter(|r| r.kind == "purchase").collect();
    let journal_charged = purchase_rows.iter().any(|r| r.charged());
    let answered = !unanswered;
    let told_rrn_known = told.is_none_or(|rrn| purchase_rows.iter().any(|r| r.rrn == rrn));
    if (answered && journal_charged != told.is_some()) || !told_rrn_known {
        v.journal_mismatch.add(why);
    }
    let posted: i64 = rows.iter().map(|r| r.bank_net_minor).sum();
    let expected = if journal_charged {
        o.amount_minor as i64
    } else {
        0
    };
    if posted != expected {
        v.ledger_mismatch.add(why);
    }
}

/// Every final answer to one request is the same (DE39, DE37, DE38).
fn finals_agree(r: &RequestLog) -> bool {
    let mut finals = r.answers.iter().filter(|a| is_final(&a.code));
    let Some(first) = finals.next() else {
        return true;
    };
    finals.all(|a| (&a.code, &a.rrn, &a.auth) == (&first.code, &first.rrn, &first.auth))
}

fn judge_strays(
    log: &MerchantLog,
    bank: &SimRecord,
    journal: &[JournalRow],
    idx: &Index<'_>,
    v: &mut Verdict,
) {
    let terminals: HashSet<&str> = log.orders.iter().map(|o| o.terminal.as_str()).collect();
    let orders: HashSet<(&str, u64)> = log
        .orders
        .iter()
        .map(|o| (o.terminal.as_str(), o.amount_minor))
        .collect();
    for ((term, amount), charges) in &idx.charges {
        if !terminals.contains(term) || orders.contains(&(*term, *amount)) {
            continue;
        }
        for c in charges.iter().filter(|c| !c.reversed) {
            v.phantom
                .add(|| format!("bank charge {} ({term}, {amount}) matches no order", c.rrn));
        }
    }
    let by_rrn = orders_by_rrn(log, journal);
    for (rrn, n) in &bank.unknown_reversals {
        let order = by_rrn.get(rrn.as_str());
        let told = order.and_then(|o| o.purchase.final_answer.as_ref());
        if told.is_some_and(|a| a.code == "91" && a.rrn.as_deref() == Some(rrn.as_str())) {
            v.unseen_reversals_after_91 += 1;
            continue;
        }
        v.phantom.add(|| {
            let what = order.map_or("no order".to_owned(), |o| {
                let charges = idx.charges.get(&(o.terminal.as_str(), o.amount_minor));
                describe(
                    o,
                    charges.map_or(&[], |c| c.as_slice()),
                    &idx.rows(&o.order_ref),
                )
            });
            format!("the bank got {n} reversal(s) of RRN {rrn}, which it never saw: {what}")
        });
    }
    let order_refs: HashSet<&str> = log.orders.iter().map(|o| o.order_ref.as_str()).collect();
    let of_orders: HashSet<i64> = journal
        .iter()
        .filter(|r| {
            r.order_ref
                .as_deref()
                .is_some_and(|o| order_refs.contains(o))
        })
        .map(|r| r.id)
        .collect();
    for r in journal.iter().filter(|r| r.unresolved()) {
        let belongs =
            of_orders.contains(&r.id) || r.original_id.is_some_and(|p| of_orders.contains(&p));
        if !belongs {
            v.unresolved
                .add(|| format!("journal row of no order: {}", r.describe()));
        }
    }
}

/// Each order by every RRN it was told or the journal gave it.
fn orders_by_rrn<'a>(
    log: &'a MerchantLog,
    journal: &'a [JournalRow],
) -> HashMap<&'a str, &'a OrderLog> {
    let by_ref: HashMap<&str, &OrderLog> = log
        .orders
        .iter()
        .map(|o| (o.order_ref.as_str(), o))
        .collect();
    let mut m = HashMap::new();
    for o in &log.orders {
        let answers = std::iter::once(&o.purchase)
            .chain(&o.reversal)
            .flat_map(|r| &r.answers);
        for rrn in answers.filter_map(|a| a.rrn.as_deref()) {
            m.insert(rrn, o);
        }
    }
    for r in journal {
        if let Some(o) = r.order_ref.as_deref().and_then(|x| by_ref.get(x)) {
            m.insert(r.rrn.as_str(), *o);
        }
    }
    m
}

/// Answers in order, runs of one code and RRN collapsed: `96 x153 @43556..120930ms rrn R`.
fn answer_runs(answers: &[AnswerSeen]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < answers.len() {
        let a = &answers[i];
        let run = answers[i..]
            .iter()
            .take_while(|b| (&b.code, &b.rrn) == (&a.code, &a.rrn))
            .count();
        let last = &answers[i + run - 1];
        let rrn = a
            .rrn
            .as_ref()
            .map(|x| format!(" rrn {x}"))
            .unwrap_or_default();
        out.push(if run == 1 {
            format!("{}@{}ms{rrn}", a.code, a.at_ms)
        } else {
            format!("{} x{run} @{}..{}ms{rrn}", a.code, a.at_ms, last.at_ms)
        });
        i += run;
    }
    out.join(", ")
}

fn describe(o: &OrderLog, charges: &[Charge], rows: &[&JournalRow]) -> String {
    let request = |r: &RequestLog| {
        let answers = answer_runs(&r.answers);
        let fin = r
            .final_answer
            .as_ref()
            .map_or("none".into(), |a| a.code.clone());
        format!(
            "{} stan {} de7 {} sent {}x answers [{answers}] final {fin}",
            r.mti, r.stan, r.de7, r.sends
        )
    };
    let bank: Vec<String> = charges
        .iter()
        .map(|c| {
            let what = if c.withheld { "withheld" } else { "approved" };
            let state = if c.reversed { "reversed" } else { "standing" };
            format!("{} {what} {state}", c.rrn)
        })
        .collect();
    let journal: Vec<String> = rows.iter().map(|r| r.describe()).collect();
    let reversal = o
        .reversal
        .as_ref()
        .map(|r| format!("; reversal: {}", request(r)))
        .unwrap_or_default();
    format!(
        "order {} (terminal {}, amount {}): purchase: {}{reversal}; bank: [{}]; journal: [{}]",
        o.order_ref,
        o.terminal,
        o.amount_minor,
        request(&o.purchase),
        bank.join(", "),
        journal.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::reconcile::{SimApproval, SimTxn};

    const TERM: &str = "CHAOS001";

    fn answer(code: &str, rrn: &str) -> AnswerSeen {
        AnswerSeen {
            code: code.into(),
            rrn: (!rrn.is_empty()).then(|| rrn.into()),
            auth: (code == "00").then(|| "A00001".into()),
            at_ms: 10,
        }
    }

    fn request(mti: &str, stan: &str, answers: &[AnswerSeen]) -> RequestLog {
        RequestLog {
            mti: mti.into(),
            stan: stan.into(),
            de7: "1201000000".into(),
            sends: answers.len() as u32,
            answers: answers.to_vec(),
            final_answer: answers.iter().rev().find(|a| is_final(&a.code)).cloned(),
        }
    }

    fn order(index: u64, answers: &[AnswerSeen]) -> OrderLog {
        OrderLog {
            index,
            order_ref: format!("O{index}"),
            terminal: TERM.into(),
            amount_minor: (index + 1) * 100,
            purchase: request("0200", &format!("{index:06}"), answers),
            reversal: None,
        }
    }

    fn bank_charge(rrn: &str, amount: u64, reversed: bool) -> SimApproval {
        SimApproval {
            txn: SimTxn {
                rrn: Some(rrn.into()),
                mti: "0200".into(),
                amount_minor: Some(amount),
                terminal: Some(TERM.into()),
            },
            auth_code: Some("A00001".into()),
            reversed,
        }
    }

    fn row(id: i64, o: &OrderLog, state: &str, rrn: &str, net: i64) -> JournalRow {
        JournalRow {
            id,
            kind: "purchase".into(),
            state: state.into(),
            rrn: rrn.into(),
            order_ref: Some(o.order_ref.clone()),
            terminal: TERM.into(),
            stan: o.purchase.stan.clone(),
            mti: "0200".into(),
            amount_minor: o.amount_minor as i64,
            bank_net_minor: net,
            ..JournalRow::default()
        }
    }

    fn log(orders: Vec<OrderLog>) -> MerchantLog {
        let policy = RetryPolicy {
            answer_timeout_ms: 1,
            pause_ms: 1,
            give_up_ms: 1,
        };
        MerchantLog {
            merchant: "M".into(),
            policy,
            orders,
            unmatched_answers: 0,
        }
    }

    /// An approved order (after a 94), a declined one and a reversed one, all consistent.
    fn clean() -> (MerchantLog, SimRecord, Vec<JournalRow>) {
        let approved = order(0, &[answer("94", ""), answer("00", "R0")]);
        let declined = order(1, &[answer("51", "R1")]);
        let mut reversed = order(2, &[answer("00", "R2")]);
        reversed.reversal = Some(request("0400", "000099", &[answer("00", "R3")]));
        let mut rev_row = row(4, &reversed, "approved", "R3", -300);
        (rev_row.kind, rev_row.order_ref, rev_row.original_id) = ("reversal".into(), None, Some(3));
        let journal = vec![
            row(1, &approved, "approved", "R0", 100),
            row(2, &declined, "declined", "R1", 0),
            row(3, &reversed, "reversed", "R2", 300),
            rev_row,
        ];
        let bank = SimRecord {
            approved: vec![bank_charge("R0", 100, false), bank_charge("R2", 300, true)],
            reversals: [("R2".to_owned(), 1)].into(),
            ..SimRecord::default()
        };
        (log(vec![approved, declined, reversed]), bank, journal)
    }

    fn counts(v: &Verdict) -> Vec<(&'static str, u64)> {
        v.counts()
            .iter()
            .map(|(n, c)| (*n, c.count))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    // Proves a consistent run is judged clean, with its answers tallied.
    #[test]
    fn clean_run() {
        let (l, b, j) = clean();
        let v = verdict(&l, &b, &j);
        assert!(v.ok(), "{:?}", counts(&v));
        assert_eq!((v.orders, v.answers_94, v.retransmissions), (3, 1, 1));
        assert_eq!(v.purchase_finals["00"], 2);
        assert_eq!(v.reversal_finals["00"], 1);
    }

    // Proves an approval told to the merchant but reversed at the bank is lost (and the
    // journal, still saying approved, disagrees with the bank only through the loss).
    #[test]
    fn lost_approval() {
        let (l, mut b, j) = clean();
        b.approved[0].reversed = true;
        let v = verdict(&l, &b, &j);
        assert_eq!(counts(&v), [("lost", 1)]);
        assert!(
            v.lost.examples[0].contains("order O0"),
            "{}",
            v.lost.examples[0]
        );
    }

    // Proves two standing charges of one order are doubled (and the second a phantom).
    #[test]
    fn doubled_charge() {
        let (l, mut b, j) = clean();
        b.approved.push(bank_charge("R9", 100, false));
        let v = verdict(&l, &b, &j);
        assert_eq!(counts(&v), [("doubled", 1), ("phantom", 1)]);
    }

    // Proves a standing charge after a 91, a charge of no order, and a reversal of an RRN
    // the bank never saw are phantoms.
    #[test]
    fn phantoms() {
        let (mut l, mut b, j) = clean();
        l.orders.push(order(5, &[answer("91", "R5")]));
        b.unanswered.push(b.approved[0].txn.clone());
        b.unanswered[0].rrn = Some("R5".into());
        b.unanswered[0].amount_minor = Some(600);
        b.approved.push(bank_charge("R7", 7777, false));
        b.unknown_reversals.insert("R8".into(), 1);
        // The reversal of a request answered 91 that the bank never saw is no phantom.
        l.orders.push(order(6, &[answer("91", "R6")]));
        b.unknown_reversals.insert("R6".into(), 1);
        let v = verdict(&l, &b, &j);
        assert_eq!(v.phantom.count, 3, "{:?}", v.phantom.examples);
        assert_eq!(v.unseen_reversals_after_91, 1);
        // The 91 order has no journal row: the journal mismatch is not what is judged here.
        assert_eq!(v.lost.count + v.doubled.count, 0);
    }

    // Proves runs of one answer are collapsed in the explanations.
    #[test]
    fn answer_runs_collapse() {
        let mut a = vec![answer("96", ""), answer("96", ""), answer("00", "R1")];
        a[1].at_ms = 20;
        assert_eq!(answer_runs(&a), "96 x2 @10..20ms, 00@10ms rrn R1");
    }

    // Proves a request given up, a row left authorising and a pending reversal are unresolved.
    #[test]
    fn unresolved() {
        let (mut l, b, mut j) = clean();
        l.orders[1].purchase = request("0200", "000001", &[answer("94", "")]);
        j[0].state = "authorising".into();
        j[0].bank_net_minor = 0;
        j.push(JournalRow {
            id: 9,
            state: "reversing".into(),
            ..JournalRow::default()
        });
        j[2].reversal_state = Some("pending".into());
        let v = verdict(&l, &b, &j);
        assert_eq!(v.unresolved.count, 4, "{:?}", v.unresolved.examples);
        assert!(
            v.unresolved
                .examples
                .iter()
                .any(|e| e.contains("journal row of no order"))
        );
    }

    // Proves the journal and ledger are held to what the merchant was told, and differing
    // final answers to one request and a 96 with DE37 are caught.
    #[test]
    fn journal_ledger_and_answers() {
        let (mut l, b, mut j) = clean();
        j[1].state = "approved".into();
        j[0].bank_net_minor = 200;
        l.orders[0].purchase.answers.push(answer("05", "R0"));
        l.orders[1].purchase.answers.insert(0, answer("96", "R1"));
        let v = verdict(&l, &b, &j);
        assert_eq!(
            counts(&v),
            [
                ("journal_mismatch", 1),
                ("ledger_mismatch", 2),
                ("inconsistent_answers", 1),
                ("contradictory_96", 1)
            ]
        );
    }
}
