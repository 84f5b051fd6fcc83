//! The simulator's own record of what it approved, declined, withheld and reversed, which
//! tests and the load harness read (`GET /record`) to reconcile the switch against.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use codec::{Message, Mti};
use serde::Serialize;

use super::rules::{self, Standing};

/// Entries kept per list (and RRNs remembered for duplicate detection). A long load run
/// at a few thousand per second stays under it; past it entries are counted in
/// `dropped`, never stored, so memory stays bounded.
pub const RECORD_ENTRIES_MAX: usize = 2_000_000;

/// A financial request as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Txn {
    /// DE37.
    pub rrn: Option<String>,
    pub mti: String,
    /// DE3.
    pub processing_code: Option<String>,
    /// DE4.
    pub amount_minor: Option<u64>,
    /// DE49.
    pub currency: Option<String>,
    /// DE41, without the padding of the fixed-length element.
    pub terminal: Option<String>,
    /// DE42, likewise.
    pub merchant: Option<String>,
    /// DE11.
    pub stan: Option<String>,
}

impl Txn {
    pub fn of(msg: &Message) -> Self {
        let text = |n| msg.get_str(n).map(Cow::into_owned);
        let trimmed = |n| msg.get_str(n).map(|s| s.trim_end().to_owned());
        Txn {
            rrn: trimmed(37),
            mti: msg.mti().as_str().to_owned(),
            processing_code: text(3),
            amount_minor: msg.get_u64(4),
            currency: text(49),
            terminal: trimmed(41),
            merchant: trimmed(42),
            stan: text(11),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    #[serde(flatten)]
    pub txn: Txn,
    /// DE38; none for refunds and completions, which carry none.
    pub auth_code: Option<String>,
    pub reversed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decline {
    #[serde(flatten)]
    pub txn: Txn,
    pub response_code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub approved_count: u64,
    pub approved_amount_minor: u64,
    pub reversed_count: u64,
    pub reversed_amount_minor: u64,
    /// Approved minus reversed.
    pub net_amount_minor: u64,
}

/// An advice the simulator started (`POST /advise/reversal/{rrn}`) and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentAdvice {
    /// 0420, or 0421 for a repeat.
    pub mti: String,
    pub rrn: String,
    /// DE11.
    pub stan: String,
    /// DE7.
    pub de7: String,
    /// DE39 of the switch's 0430; None when none came in time.
    pub response_code: Option<String>,
}

/// What `GET /record` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub approved: Vec<Approval>,
    pub declined: Vec<Decline>,
    pub unanswered: Vec<Txn>,
    /// Reversals by the RRN they carry (the original's), with how many times each arrived.
    pub reversals: BTreeMap<String, u64>,
    /// The reversals among them whose RRN this bank never saw (a real bank answers those
    /// `25`), with how many times each arrived.
    pub unknown_reversals: BTreeMap<String, u64>,
    /// Status inquiries (0600/0601) by the RRN they name, with how many times each arrived.
    pub inquiries: BTreeMap<String, u64>,
    /// Advices the simulator sent, in order.
    pub advices: Vec<SentAdvice>,
    /// Financial requests whose RRN had been seen before.
    pub requests_by_rrn_dupes: u64,
    pub counts_by_mti: BTreeMap<String, u64>,
    pub totals: Totals,
    /// Entries not stored because a list was at [`RECORD_ENTRIES_MAX`].
    pub dropped: u64,
    /// Messages from the switch dropped because their MAC was missing or wrong.
    pub mac_failures: u64,
    /// Answers whose MAC the simulator broke on purpose (`--tamper-mac-every`).
    pub macs_tampered: u64,
}

/// Entries in one chunk of a [`Chunked`] list: a few MB of approvals, so a list at
/// [`RECORD_ENTRIES_MAX`] is about 120 chunks.
const CHUNK_ENTRIES: usize = 16_384;

/// A list that grows a chunk at a time: a push never moves what the list holds, where a
/// `Vec` reallocates all it holds when it doubles (copying it, unless the allocator can
/// remap the pages).
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, item: T) {
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK_ENTRIES) {
            self.chunks.push(Vec::with_capacity(CHUNK_ENTRIES));
        }
        self.chunks
            .last_mut()
            .expect("a chunk with room")
            .push(item);
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    fn to_vec(&self) -> Vec<T>
    where
        T: Clone,
    {
        // One allocation of the exact size: a snapshot is taken under the record's lock.
        let mut all = Vec::with_capacity(self.len);
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        all
    }
}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK_ENTRIES][i % CHUNK_ENTRIES]
    }
}

impl<T> std::ops::IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK_ENTRIES][i % CHUNK_ENTRIES]
    }
}

/// Nothing here grows by moving all it holds at once: the RRN indexes are B-trees (a hash
/// table rehashes every entry when it doubles, under the lock every link answers under;
/// that showed as single seconds of 30-150 ms in the p99 of every load run, at the seconds
/// the tables filled: docs/loadtest.md, 2026-12-03 later) and the lists are [`Chunked`]
/// (a doubling `Vec` is the same kind of pause, though not one matched to a spike).
#[derive(Debug, Default)]
struct Inner {
    approved: Chunked<Approval>,
    approved_by_rrn: BTreeMap<String, usize>,
    declined: Chunked<Decline>,
    declined_rrns: BTreeSet<String>,
    unanswered: Chunked<Txn>,
    reversals: BTreeMap<String, u64>,
    unknown_reversals: BTreeMap<String, u64>,
    inquiries: BTreeMap<String, u64>,
    advices: Chunked<SentAdvice>,
    seen_rrns: BTreeSet<String>,
    dupes: u64,
    counts_by_mti: BTreeMap<Mti, u64>,
    dropped: u64,
    mac_failures: u64,
    macs_tampered: u64,
}

impl Inner {
    fn note_rrn(&mut self, txn: &Txn) {
        let Some(rrn) = &txn.rrn else { return };
        if self.seen_rrns.contains(rrn) {
            self.dupes += 1;
        } else if self.seen_rrns.len() < RECORD_ENTRIES_MAX {
            self.seen_rrns.insert(rrn.clone());
        }
    }

    /// Counts one more under `key` in a bounded map.
    fn bump(map: &mut BTreeMap<String, u64>, dropped: &mut u64, key: &str) {
        let full = map.len() >= RECORD_ENTRIES_MAX;
        match map.get_mut(key) {
            Some(n) => *n += 1,
            None if full => *dropped += 1,
            None => {
                map.insert(key.to_owned(), 1);
            }
        }
    }

    fn push<T>(list: &mut Chunked<T>, dropped: &mut u64, item: T) {
        if list.len() < RECORD_ENTRIES_MAX {
            list.push(item);
        } else {
            *dropped += 1;
        }
    }
}

/// Shared by every link and the control endpoint. One mutex: each operation is a few
/// map look-ups, far cheaper than the socket work around it.
#[derive(Debug, Default)]
pub struct Record {
    inner: Mutex<Inner>,
    /// Survives `reset`, so codes stay unique for the life of the process.
    auth_counter: std::sync::atomic::AtomicU64,
}

impl Record {
    pub fn new() -> Self {
        Record::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst a half-written entry; the
        // record is for tests, which would rather see it than a second panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a decoded message by MTI.
    pub fn count(&self, mti: Mti) {
        *self.lock().counts_by_mti.entry(mti).or_default() += 1;
    }

    /// A message from the switch failed its MAC check (and was dropped).
    pub fn mac_failure(&self) {
        self.lock().mac_failures += 1;
    }

    /// An answer went out with its MAC broken on purpose.
    pub fn mac_tampered(&self) {
        self.lock().macs_tampered += 1;
    }

    /// Records an approval and returns its authorisation code (when `with_auth_code`).
    /// A repeat of an RRN already approved is answered with the first approval's code
    /// and not recorded again, as a bank would treat a duplicate.
    pub fn approve(&self, txn: Txn, with_auth_code: bool) -> Option<String> {
        let mut g = self.lock();
        g.note_rrn(&txn);
        if let Some(&i) = txn.rrn.as_ref().and_then(|r| g.approved_by_rrn.get(r)) {
            return g.approved[i].auth_code.clone();
        }
        let auth_code = with_auth_code.then(|| {
            let n = self
                .auth_counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rules::auth_code(n + 1)
        });
        let inner = &mut *g;
        if inner.approved.len() < RECORD_ENTRIES_MAX {
            if let Some(rrn) = &txn.rrn {
                inner
                    .approved_by_rrn
                    .insert(rrn.clone(), inner.approved.len());
            }
            inner.approved.push(Approval {
                txn,
                auth_code: auth_code.clone(),
                reversed: false,
            });
        } else {
            inner.dropped += 1;
        }
        auth_code
    }

    pub fn decline(&self, txn: Txn, response_code: &str) {
        let mut g = self.lock();
        g.note_rrn(&txn);
        let inner = &mut *g;
        if let Some(rrn) = &txn.rrn
            && inner.declined_rrns.len() < RECORD_ENTRIES_MAX
        {
            inner.declined_rrns.insert(rrn.clone());
        }
        Inner::push(
            &mut inner.declined,
            &mut inner.dropped,
            Decline {
                txn,
                response_code: response_code.to_owned(),
            },
        );
    }

    pub fn withhold(&self, txn: Txn) {
        let mut g = self.lock();
        g.note_rrn(&txn);
        let inner = &mut *g;
        Inner::push(&mut inner.unanswered, &mut inner.dropped, txn);
    }

    /// Records a reversal of `rrn` (None when the reversal carried no DE37) and marks the
    /// approval it undoes, if there is one.
    /// Returns false for a reversal naming an RRN no financial request here carried
    /// (true while the set of RRNs seen is too full to tell).
    pub fn reverse(&self, rrn: Option<&str>) -> bool {
        let Some(rrn) = rrn else { return false };
        let mut g = self.lock();
        let inner = &mut *g;
        Inner::bump(&mut inner.reversals, &mut inner.dropped, rrn);
        if let Some(&i) = inner.approved_by_rrn.get(rrn) {
            inner.approved[i].reversed = true;
        }
        let known = inner.seen_rrns.contains(rrn) || inner.seen_rrns.len() >= RECORD_ENTRIES_MAX;
        if !known {
            Inner::bump(&mut inner.unknown_reversals, &mut inner.dropped, rrn);
        }
        known
    }

    /// Where the transaction with this RRN stands here: approved (and whether reversed
    /// since), declined, or None if this bank never took it (unknown, or withheld).
    pub fn standing(&self, rrn: &str) -> Option<Standing> {
        let g = self.lock();
        if let Some(&i) = g.approved_by_rrn.get(rrn) {
            return Some(if g.approved[i].reversed {
                Standing::Reversed
            } else {
                Standing::Approved
            });
        }
        g.declined_rrns.contains(rrn).then_some(Standing::Declined)
    }

    /// Records a status inquiry about `rrn` (None when it carried no DE37) and returns
    /// where that transaction stands.
    pub fn inquire(&self, rrn: Option<&str>) -> Option<Standing> {
        let rrn = rrn?;
        {
            let mut g = self.lock();
            let inner = &mut *g;
            Inner::bump(&mut inner.inquiries, &mut inner.dropped, rrn);
        }
        self.standing(rrn)
    }

    /// Marks the approval with this RRN reversed (the bank reversed it on its own and the
    /// switch acknowledged the advice); false if there is no such approval. Not counted
    /// in `reversals`, which are the switch's.
    pub fn mark_reversed(&self, rrn: &str) -> bool {
        let mut g = self.lock();
        let inner = &mut *g;
        match inner.approved_by_rrn.get(rrn) {
            Some(&i) => {
                inner.approved[i].reversed = true;
                true
            }
            None => false,
        }
    }

    /// Records an advice the simulator sent.
    pub fn advised(&self, advice: SentAdvice) {
        let mut g = self.lock();
        let inner = &mut *g;
        Inner::push(&mut inner.advices, &mut inner.dropped, advice);
    }

    pub fn reset(&self) {
        // The old record is freed after the lock is let go: freeing a long run's entries
        // takes a while, and links answer under this lock.
        let old = {
            let mut g = self.lock();
            std::mem::take(&mut *g)
        };
        drop(old);
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        let mut totals = Totals {
            approved_count: 0,
            approved_amount_minor: 0,
            reversed_count: 0,
            reversed_amount_minor: 0,
            net_amount_minor: 0,
        };
        for a in g.approved.iter() {
            let amount = a.txn.amount_minor.unwrap_or(0);
            totals.approved_count += 1;
            totals.approved_amount_minor += amount;
            if a.reversed {
                totals.reversed_count += 1;
                totals.reversed_amount_minor += amount;
            }
        }
        totals.net_amount_minor = totals.approved_amount_minor - totals.reversed_amount_minor;
        Snapshot {
            approved: g.approved.to_vec(),
            declined: g.declined.to_vec(),
            unanswered: g.unanswered.to_vec(),
            reversals: g.reversals.clone(),
            unknown_reversals: g.unknown_reversals.clone(),
            inquiries: g.inquiries.clone(),
            advices: g.advices.to_vec(),
            requests_by_rrn_dupes: g.dupes,
            counts_by_mti: g
                .counts_by_mti
                .iter()
                .map(|(m, n)| (m.as_str().to_owned(), *n))
                .collect(),
            totals,
            dropped: g.dropped,
            mac_failures: g.mac_failures,
            macs_tampered: g.macs_tampered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(rrn: &str, amount: u64) -> Txn {
        Txn {
            rrn: Some(rrn.into()),
            mti: "0200".into(),
            processing_code: Some("000000".into()),
            amount_minor: Some(amount),
            currency: Some("978".into()),
            terminal: Some("TERM0001".into()),
            merchant: Some("M1".into()),
            stan: Some("000001".into()),
        }
    }

    // Proves a reversal marks its approval, repeats are counted, net excludes it, and a
    // reversal of an RRN never seen is told apart and listed.
    #[test]
    fn reversal_marks_approval() {
        let r = Record::new();
        let code = r.approve(txn("000000000001", 1000), true).unwrap();
        assert_eq!(code.len(), 6);
        r.approve(txn("000000000002", 250), true);
        assert!(r.reverse(Some("000000000001")), "a known RRN");
        assert!(r.reverse(Some("000000000001")));
        assert!(!r.reverse(Some("000000000099")), "an RRN never seen here");
        let s = r.snapshot();
        assert!(s.approved[0].reversed);
        assert!(!s.approved[1].reversed);
        assert_eq!(s.reversals["000000000001"], 2);
        assert_eq!(s.reversals["000000000099"], 1);
        assert_eq!(
            s.unknown_reversals.len(),
            1,
            "only the unknown one is listed"
        );
        assert_eq!(s.unknown_reversals["000000000099"], 1);
        assert_eq!(s.totals.approved_amount_minor, 1250);
        assert_eq!(s.totals.net_amount_minor, 250);
        assert_eq!(s.totals.approved_count, 2);
    }

    // Proves a duplicate RRN is counted, gets the first code, and is not approved twice.
    #[test]
    fn duplicates_counted() {
        let r = Record::new();
        let first = r.approve(txn("000000000001", 1000), true);
        let again = r.approve(txn("000000000001", 1000), true);
        assert_eq!(first, again);
        r.decline(txn("000000000003", 1051), "51");
        r.decline(txn("000000000003", 1051), "51");
        let s = r.snapshot();
        assert_eq!(s.approved.len(), 1);
        assert_eq!(s.requests_by_rrn_dupes, 2);
        assert_eq!(s.declined.len(), 2);
    }

    // Proves a chunked list indexes, iterates and copies in push order past a chunk's
    // end, as the Vec it replaces did.
    #[test]
    fn chunked_keeps_order_across_chunks() {
        let mut c = Chunked::default();
        for i in 0..CHUNK_ENTRIES * 2 + 3 {
            c.push(i);
        }
        assert_eq!(c.len(), CHUNK_ENTRIES * 2 + 3);
        assert_eq!(c[CHUNK_ENTRIES], CHUNK_ENTRIES);
        c[CHUNK_ENTRIES * 2 + 1] = 7;
        let v = c.to_vec();
        assert_eq!(v.len(), c.len());
        assert_eq!(v[CHUNK_ENTRIES * 2 + 1], 7);
        assert!(
            c.iter()
                .enumerate()
                .all(|(i, x)| *x == i || i == CHUNK_ENTRIES * 2 + 1)
        );
    }

    // Proves reset empties the record but authorisation codes stay unique after it.
    #[test]
    fn reset_clears() {
        let r = Record::new();
        r.count(Mti::FINANCIAL_REQUEST);
        let first = r.approve(txn("000000000001", 1000), true);
        r.withhold(txn("000000000002", 1091));
        r.reset();
        let s = r.snapshot();
        assert!(s.approved.is_empty() && s.unanswered.is_empty() && s.counts_by_mti.is_empty());
        assert_ne!(r.approve(txn("000000000001", 1000), true), first);
    }

    // Proves inquiries are counted by RRN and answered by where the transaction stands:
    // approved, reversed (by the switch or by the bank's own advice), declined, or not
    // taken (withheld 91s and unknown RRNs).
    #[test]
    fn inquiries_by_standing() {
        let r = Record::new();
        r.approve(txn("000000000001", 1000), true);
        r.approve(txn("000000000002", 1000), true);
        r.approve(txn("000000000005", 1000), true);
        r.decline(txn("000000000003", 1051), "51");
        r.withhold(txn("000000000004", 1091));
        r.reverse(Some("000000000002"));
        assert!(r.mark_reversed("000000000005"));
        assert!(!r.mark_reversed("000000000004"));
        assert_eq!(r.inquire(Some("000000000001")), Some(Standing::Approved));
        assert_eq!(r.inquire(Some("000000000002")), Some(Standing::Reversed));
        assert_eq!(r.inquire(Some("000000000005")), Some(Standing::Reversed));
        assert_eq!(r.inquire(Some("000000000003")), Some(Standing::Declined));
        assert_eq!(r.inquire(Some("000000000004")), None);
        assert_eq!(r.inquire(Some("000000000004")), None);
        assert_eq!(r.inquire(Some("000000000099")), None);
        assert_eq!(r.inquire(None), None);
        let s = r.snapshot();
        assert_eq!(s.inquiries["000000000004"], 2);
        assert_eq!(s.inquiries["000000000001"], 1);
        assert_eq!(s.inquiries.len(), 6);
        // The bank's own reversal is not one of the switch's reversals.
        assert!(!s.reversals.contains_key("000000000005"));
        assert_eq!(s.totals.reversed_count, 2);
    }

    // Proves the JSON shape the harness reads.
    #[test]
    fn json_shape() {
        let r = Record::new();
        r.count(Mti::FINANCIAL_REQUEST);
        r.approve(txn("000000000001", 1000), true);
        let v = serde_json::to_value(r.snapshot()).unwrap();
        let a = &v["approved"][0];
        for k in [
            "rrn",
            "mti",
            "processing_code",
            "amount_minor",
            "currency",
            "terminal",
            "merchant",
            "stan",
            "auth_code",
            "reversed",
        ] {
            assert!(a.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["counts_by_mti"]["0200"], 1);
        assert_eq!(v["totals"]["net_amount_minor"], 1000);
        assert_eq!(v["requests_by_rrn_dupes"], 0);
        assert!(v["inquiries"].as_object().unwrap().is_empty());
        r.advised(SentAdvice {
            mti: "0420".into(),
            rrn: "000000000001".into(),
            stan: "000001".into(),
            de7: "1126120000".into(),
            response_code: Some("00".into()),
        });
        let v = serde_json::to_value(r.snapshot()).unwrap();
        assert_eq!(v["advices"][0]["response_code"], "00");
        assert_eq!(v["advices"][0]["stan"], "000001");
    }
}
