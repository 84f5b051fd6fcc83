//! Simulated merchants: terminals that buy, pre-authorise and complete, refund, reverse,
//! ask for status, retransmit when no answer comes (and at times while one is on its
//! way), reuse an identity or a live order reference, and acknowledge notifications. Every
//! answer is written in the [`Book`], which the invariants read.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use codec::{MacKey, Mti, OwnedMessage, builtin};
use tokio::sync::mpsc;

use crate::dice::Dice;
use crate::world::World;

/// How long a merchant waits for one answer: past the bank timeout, the outcome's
/// retries and a reversal's hold.
pub const ANSWER_WAIT_MS: u64 = 8_000;
/// Sends of one request before the merchant gives up on it (and reverses it if it
/// moves money).
pub const SENDS_MAX: u32 = 6;
/// Sends of the reversal of a request that was never answered.
pub const REVERSAL_SENDS_MAX: u32 = 30;

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqKind {
    Purchase,
    Preauth,
    Completion,
    Refund,
    Reversal,
    Status,
}

impl ReqKind {
    /// Whether it moves money at the bank (and so must be charged if approved).
    pub fn moves_money(&self) -> bool {
        !matches!(self, ReqKind::Reversal | ReqKind::Status)
    }
}

/// One request and every answer it got.
#[derive(Debug, Clone)]
pub struct Req {
    pub kind: ReqKind,
    pub merchant: String,
    pub terminal: String,
    pub mti: Mti,
    pub stan: String,
    pub de7: String,
    pub amount_minor: u64,
    pub order: Option<String>,
    /// (DE39, DE37) of each answer, in order.
    pub answers: Vec<(String, Option<String>)>,
    /// The merchant's reversal of it was answered `00`.
    pub reversed: bool,
    /// Nothing ever answered it, nor its reversal.
    pub abandoned: bool,
}

impl Req {
    /// The last answer.
    pub fn last(&self) -> Option<&(String, Option<String>)> {
        self.answers.last()
    }

    /// The RRN of an approval the merchant holds (approved, not reversed by it).
    pub fn approval(&self) -> Option<&str> {
        match self.last() {
            Some((rc, Some(rrn))) if rc == "00" && !self.reversed => Some(rrn),
            _ => None,
        }
    }
}

/// Every request of the run, by index.
#[derive(Debug, Default)]
pub struct Book {
    reqs: Mutex<Vec<Req>>,
    /// One line per answer, for the run's digest.
    pub trace: Mutex<Vec<String>>,
    pub notifications: Mutex<u64>,
}

impl Book {
    fn reqs(&self) -> MutexGuard<'_, Vec<Req>> {
        self.reqs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn all(&self) -> Vec<Req> {
        self.reqs().clone()
    }

    fn add(&self, r: Req) -> usize {
        let mut reqs = self.reqs();
        reqs.push(r);
        reqs.len() - 1
    }

    fn answered(&self, i: usize, rc: String, rrn: Option<String>, at_ms: u64) {
        let mut reqs = self.reqs();
        let r = &mut reqs[i];
        self.trace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!(
                "{at_ms} {} {} {} {rc} {rrn:?}",
                r.merchant, r.terminal, r.stan
            ));
        r.answers.push((rc, rrn));
    }

    fn get(&self, i: usize) -> Req {
        self.reqs()[i].clone()
    }

    fn set_reversed(&self, i: usize) {
        self.reqs()[i].reversed = true;
    }

    fn set_abandoned(&self, i: usize) {
        self.reqs()[i].abandoned = true;
    }
}

/// One terminal of one merchant.
pub struct Terminal {
    pub world: Arc<World>,
    pub book: Arc<Book>,
    pub dice: Dice,
    pub merchant: String,
    pub key: MacKey,
    pub terminal: String,
    pub stan: u32,
    pub orders: u32,
    /// Purchases approved here that the bank may reverse on its own.
    pub reversible: Arc<Mutex<Vec<(usize, String)>>>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("terminal", &self.terminal)
            .finish()
    }
}

fn de90(r: &Req) -> String {
    format!(
        "{}{}{}{}",
        r.mti.original().as_str(),
        r.stan,
        r.de7,
        "0".repeat(22)
    )
}

impl Terminal {
    fn now_ms(&self) -> u64 {
        self.world.clock.unix_us() / 1_000
    }

    fn base(&mut self, mti: Mti) -> OwnedMessage {
        self.stan = self.stan % 999_999 + 1;
        let de7 = codec::clock::transmission(self.world.clock.unix_s());
        let mut m = OwnedMessage::new(mti);
        m.fields.insert(7, de7.to_vec());
        m.fields
            .insert(11, format!("{:06}", self.stan).into_bytes());
        m.fields.insert(41, self.terminal.as_bytes().to_vec());
        m.fields.insert(42, self.merchant.as_bytes().to_vec());
        m
    }

    fn req(
        &self,
        kind: ReqKind,
        m: &OwnedMessage,
        amount_minor: u64,
        order: Option<String>,
    ) -> Req {
        let text = |n: u8| String::from_utf8_lossy(&m.fields[&n]).into_owned();
        Req {
            kind,
            merchant: self.merchant.clone(),
            terminal: self.terminal.clone(),
            mti: m.mti,
            stan: text(11),
            de7: text(7),
            amount_minor,
            order,
            answers: Vec::new(),
            reversed: false,
            abandoned: false,
        }
    }

    fn pan(&self) -> String {
        let bin = if self.dice.chance(500) { "4" } else { "5" };
        let digits = format!("{bin}{:014}", self.dice.below(100_000_000_000_000));
        codec::card::luhn_complete(&digits)
    }

    /// A purchase (0200) or pre-authorisation (0100) for a new order, or for `order`.
    fn authorisation(
        &mut self,
        kind: ReqKind,
        amount: u64,
        order: Option<String>,
    ) -> (OwnedMessage, Req) {
        let mti = if kind == ReqKind::Preauth {
            Mti::AUTHORISATION_REQUEST
        } else {
            Mti::FINANCIAL_REQUEST
        };
        let order = order.unwrap_or_else(|| {
            self.orders += 1;
            format!("{}-{}-{}", self.merchant, self.terminal, self.orders)
        });
        let mut m = self.base(mti);
        m.fields.insert(2, self.pan().into_bytes());
        m.fields.insert(3, b"000000".to_vec());
        m.fields.insert(4, format!("{amount:012}").into_bytes());
        m.fields.insert(14, b"3012".to_vec());
        m.fields
            .insert(48, format!("OR{:03}{order}", order.len()).into_bytes());
        m.fields.insert(49, b"840".to_vec());
        let r = self.req(kind, &m, amount, Some(order));
        (m, r)
    }

    /// A request naming `named` by DE90: completion, refund or reversal.
    fn naming(&mut self, kind: ReqKind, named: &Req, amount: u64) -> (OwnedMessage, Req) {
        let (mti, de3) = match kind {
            ReqKind::Completion => (Mti::COMPLETION_ADVICE, "000000"),
            ReqKind::Refund => (Mti::FINANCIAL_REQUEST, "200000"),
            _ => (Mti::REVERSAL_REQUEST, "000000"),
        };
        let mut m = self.base(mti);
        m.fields.insert(3, de3.as_bytes().to_vec());
        m.fields.insert(4, format!("{amount:012}").into_bytes());
        m.fields.insert(49, b"840".to_vec());
        m.fields.insert(90, de90(named).into_bytes());
        let r = self.req(kind, &m, amount, None);
        (m, r)
    }

    /// Sends `m` until it is answered ([`SENDS_MAX`] times at most, repeats after the
    /// first), at times twice at once. The answer, or `None`.
    async fn exchange(
        &self,
        i: usize,
        m: &OwnedMessage,
        sends: u32,
    ) -> Option<(String, Option<String>)> {
        for attempt in 0..sends {
            let mut sent = m.clone();
            if attempt > 0 && sent.mti != Mti::STATUS_REQUEST {
                sent.mti = m.mti.repeat();
            }
            let frame = sent
                .encode_with_mac(builtin::merchant(), &self.key)
                .expect("encodes");
            if self.dice.chance(30) {
                // A retransmission while the original is on its way.
                let (world, book, frame) = (self.world.clone(), self.book.clone(), frame.clone());
                let at = self.now_ms();
                tokio::spawn(async move {
                    if let Some(a) = world
                        .call(frame, Duration::from_millis(ANSWER_WAIT_MS))
                        .await
                    {
                        let (rc, rrn) = read(&a);
                        book.answered(i, rc, rrn, at);
                    }
                });
            }
            let wait = Duration::from_millis(ANSWER_WAIT_MS);
            if let Some(a) = self.world.call(frame, wait).await {
                let (rc, rrn) = read(&a);
                self.book
                    .answered(i, rc.clone(), rrn.clone(), self.now_ms());
                return Some((rc, rrn));
            }
            let pause = self.dice.between(500, 4_000);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        None
    }

    /// Sends a request that moves money; unanswered, it is reversed.
    async fn send_money(
        &mut self,
        m: OwnedMessage,
        r: Req,
    ) -> (usize, Option<(String, Option<String>)>) {
        let i = self.book.add(r);
        let answer = self.exchange(i, &m, SENDS_MAX).await;
        if answer.is_none() {
            let named = self.book.get(i);
            let (rev, rr) = self.naming(ReqKind::Reversal, &named, named.amount_minor);
            let j = self.book.add(rr);
            match self.exchange(j, &rev, REVERSAL_SENDS_MAX).await {
                Some((rc, _)) if rc == "00" => self.book.set_reversed(i),
                Some(_) => {}
                None => self.book.set_abandoned(i),
            }
        }
        (i, answer)
    }

    /// Reverses request `i` (answered `00`: it no longer stands).
    async fn reverse(&mut self, i: usize) {
        let named = self.book.get(i);
        let (m, r) = self.naming(ReqKind::Reversal, &named, named.amount_minor);
        let j = self.book.add(r);
        if let Some((rc, _)) = self.exchange(j, &m, REVERSAL_SENDS_MAX).await
            && rc == "00"
        {
            self.book.set_reversed(i);
        }
    }

    async fn status(&mut self, order: &str) {
        let mut m = self.base(Mti::STATUS_REQUEST);
        m.fields
            .insert(48, format!("OR{:03}{order}", order.len()).into_bytes());
        let r = self.req(ReqKind::Status, &m, 0, Some(order.to_string()));
        let i = self.book.add(r);
        self.exchange(i, &m, 2).await;
    }

    /// A purchase and what may follow it.
    async fn purchase(&mut self) {
        let amount = self.dice.between(100, 20_000);
        let (m, r) = self.authorisation(ReqKind::Purchase, amount, None);
        let order = r.order.clone().unwrap_or_default();
        let (i, answer) = self.send_money(m.clone(), r).await;
        let Some((rc, Some(rrn))) = answer else {
            return;
        };
        if rc != "00" {
            return;
        }
        match self.dice.below(100) {
            0..15 => self.reverse(i).await,
            15..30 => {
                let named = self.book.get(i);
                let (rm, rr) = self.naming(ReqKind::Refund, &named, amount / 2 + 1);
                let (k, _) = self.send_money(rm, rr).await;
                if self.dice.chance(200) {
                    self.reverse(k).await;
                }
            }
            30..40 => self.status(&order).await,
            40..50 => self
                .reversible
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((i, rrn)),
            50..56 => {
                // The identity again with other content: to be refused 94.
                let mut other = m.clone();
                other
                    .fields
                    .insert(4, format!("{:012}", amount + 1).into_bytes());
                let mut r = self.book.get(i);
                r.amount_minor = amount + 1;
                r.answers.clear();
                let k = self.book.add(r);
                self.exchange(k, &other, 2).await;
            }
            56..62 => {
                // A new request for the live order: to be refused 94.
                let (m2, r2) = self.authorisation(ReqKind::Purchase, amount, Some(order));
                self.send_money(m2, r2).await;
            }
            _ => {}
        }
    }

    /// A pre-authorisation, its completion, and perhaps the completion's reversal.
    async fn preauth(&mut self) {
        let amount = self.dice.between(1_000, 20_000);
        let (m, r) = self.authorisation(ReqKind::Preauth, amount, None);
        let (i, answer) = self.send_money(m, r).await;
        if !matches!(answer, Some((ref rc, Some(_))) if rc == "00") {
            return;
        }
        if self.dice.chance(200) {
            self.reverse(i).await;
            return;
        }
        let named = self.book.get(i);
        let captured = self.dice.between(1, amount);
        let (cm, cr) = self.naming(ReqKind::Completion, &named, captured);
        let (k, answer) = self.send_money(cm, cr).await;
        if matches!(answer, Some((ref rc, _)) if rc == "00") && self.dice.chance(150) {
            self.reverse(k).await;
        }
    }

    /// The terminal's working day: `ops` operations with pauses between them.
    pub async fn run(mut self, ops: u32) {
        for _ in 0..ops {
            tokio::time::sleep(Duration::from_millis(self.dice.below(3_000))).await;
            if self.dice.chance(650) {
                self.purchase().await;
            } else {
                self.preauth().await;
            }
        }
    }
}

/// DE39 and DE37 of an answer.
fn read(frame: &Bytes) -> (String, Option<String>) {
    match builtin::merchant().decode(frame.clone()) {
        Ok(m) => (
            m.get_str(39).map(|s| s.into_owned()).unwrap_or_default(),
            m.get_str(37).map(|s| s.trim_end().to_string()),
        ),
        Err(_) => ("??".into(), None),
    }
}

/// Answers every 0620 a merchant gets with a 0630, as a merchant's host does.
pub async fn acknowledge(
    world: Arc<World>,
    book: Arc<Book>,
    key: MacKey,
    mut inbox: mpsc::Receiver<Bytes>,
) {
    while let Some(frame) = inbox.recv().await {
        let Ok(n) = builtin::merchant().decode(frame) else {
            continue;
        };
        *book.notifications.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let mut a = OwnedMessage::new(Mti::NOTIFICATION_RESPONSE);
        for f in [7u8, 11, 37, 41, 42] {
            if let Some(v) = n.raw(f) {
                a.fields.insert(f, v.to_vec());
            }
        }
        a.fields.insert(39, b"00".to_vec());
        if let Ok(bytes) = a.encode_with_mac(builtin::merchant(), &key) {
            world.call(bytes, Duration::from_secs(2)).await;
        }
    }
}
