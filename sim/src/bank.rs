//! A simulated bank behind [`bank_links::Wire`]: it keeps its own ledger by RRN (DE37) and,
//! in bad weather, drops requests, answers too late, loses the link with a request in
//! flight, receives requests after the switch gave up on them, and receives them twice.
//! It can also reverse a charge on its own and tell the switch (an 0420 advice).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bank_links::bank::{Exchange, Wire};
use bank_links::{MatchKey, Outcome};
use bytes::Bytes;
use codec::{Dialect, Message, MessageBuilder, Mti, tlv};

use crate::dice::Dice;

/// What a charge at the bank is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeKind {
    Purchase,
    Preauth,
    Completion,
    Refund,
}

/// One RRN as the bank holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub kind: ChargeKind,
    pub amount_minor: u64,
    pub approved: bool,
    /// Approved and not reversed.
    pub standing: bool,
    /// Reversed by the bank on its own (an 0420 told the switch).
    pub reversed_by_bank: bool,
    /// Times the bank received it.
    pub received: u32,
}

#[derive(Debug, Default)]
struct Ledger {
    charges: BTreeMap<String, Charge>,
    /// RRNs reversed or asked about before the bank saw them: a late arrival is declined.
    tombstones: BTreeSet<String>,
    link_up: bool,
    stormy: bool,
}

/// A simulated bank. Clones share the ledger.
#[derive(Debug, Clone)]
pub struct SimBank {
    pub id: String,
    pub dialect: &'static Dialect,
    ledger: Arc<Mutex<Ledger>>,
    dice: Dice,
}

/// How one exchange goes.
enum Fate {
    Answered,
    /// Lost on the way: the bank never sees it.
    Dropped,
    /// The bank acts on it; its answer comes after the switch's timeout.
    Late,
    /// The link goes down with it in flight; the bank may have acted on it.
    LinkLost,
    /// Arrives at the bank after the switch's timeout.
    Delayed,
    /// Arrives twice.
    Duplicated,
    /// The bank acts on it and answers garbage: a reply without a response code (DE39).
    Garbled,
}

impl SimBank {
    pub fn new(id: &str, dialect: &'static Dialect, dice: Dice) -> SimBank {
        let ledger = Ledger {
            link_up: true,
            ..Ledger::default()
        };
        SimBank {
            id: id.to_string(),
            dialect,
            ledger: Arc::new(Mutex::new(ledger)),
            dice,
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the link up or down.
    pub fn set_link(&self, up: bool) {
        self.ledger().link_up = up;
    }

    /// Bad weather (drops, late answers, lost links, duplicates) or none.
    pub fn set_stormy(&self, stormy: bool) {
        self.ledger().stormy = stormy;
    }

    /// Every RRN the bank holds.
    pub fn charges(&self) -> BTreeMap<String, Charge> {
        self.ledger().charges.clone()
    }

    /// Reverses a standing purchase on the bank's own initiative; false if it does not
    /// stand.
    pub fn reverse_on_own(&self, rrn: &str) -> bool {
        let mut l = self.ledger();
        match l.charges.get_mut(rrn) {
            Some(c) if c.standing && c.kind == ChargeKind::Purchase => {
                c.standing = false;
                c.reversed_by_bank = true;
                true
            }
            _ => false,
        }
    }

    /// The 0420 telling the switch the bank reversed `rrn`, numbered `stan`.
    pub fn advice(&self, rrn: &str, stan: u32, de7: &[u8; 10]) -> Message {
        let stan = format!("{:06}", stan % 1_000_000);
        let advice = Mti::from_digits(*b"0420").expect("an MTI");
        let mut b = MessageBuilder::new(self.dialect, advice);
        b.set(7, de7)
            .set(11, stan.as_bytes())
            .set(37, rrn.as_bytes());
        self.dialect
            .decode(b.encode().expect("advice encodes"))
            .expect("advice decodes")
    }

    fn fate(&self) -> Fate {
        if !self.ledger().stormy {
            return Fate::Answered;
        }
        match self.dice.below(1_000) {
            0..40 => Fate::Dropped,
            40..80 => Fate::Late,
            80..110 => Fate::LinkLost,
            110..140 => Fate::Delayed,
            140..170 => Fate::Duplicated,
            170..185 => Fate::Garbled,
            _ => Fate::Answered,
        }
    }

    async fn exchange_inner(&self, message: Bytes, timeout: Duration) -> Outcome {
        let Ok(msg) = self.dialect.decode(message) else {
            return Outcome::NotSent;
        };
        let delay = Duration::from_millis(self.dice.between(2, 150));
        match self.fate() {
            Fate::Answered => {
                tokio::time::sleep(delay).await;
                Outcome::Answered(self.apply(&msg))
            }
            Fate::Dropped => {
                tokio::time::sleep(timeout).await;
                Outcome::TimedOut
            }
            Fate::Late => {
                tokio::time::sleep(delay).await;
                self.apply(&msg);
                tokio::time::sleep(timeout).await;
                Outcome::TimedOut
            }
            Fate::LinkLost => {
                tokio::time::sleep(delay).await;
                if self.dice.chance(500) {
                    self.apply(&msg);
                }
                Outcome::LinkLost
            }
            Fate::Delayed => {
                let me = self.clone();
                let late = timeout + Duration::from_millis(self.dice.between(1, 3_000));
                tokio::spawn(async move {
                    tokio::time::sleep(late).await;
                    me.apply(&msg);
                });
                tokio::time::sleep(timeout).await;
                Outcome::TimedOut
            }
            Fate::Duplicated => {
                tokio::time::sleep(delay).await;
                self.apply(&msg);
                Outcome::Answered(self.apply(&msg))
            }
            Fate::Garbled => {
                tokio::time::sleep(delay).await;
                self.apply(&msg);
                Outcome::Answered(self.garbage(&msg))
            }
        }
    }

    /// Acts on one request and answers it.
    fn apply(&self, msg: &Message) -> Message {
        let rrn = msg
            .get_str(37)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let amount = msg.get_u64(4).unwrap_or(0);
        let refund = msg.get(3).is_some_and(|p| p.starts_with(b"20"));
        let (rc, status) = match msg.mti().original() {
            Mti::AUTHORISATION_REQUEST => (self.authorise(&rrn, ChargeKind::Preauth, amount), None),
            Mti::FINANCIAL_REQUEST if refund => {
                (self.authorise(&rrn, ChargeKind::Refund, amount), None)
            }
            Mti::FINANCIAL_REQUEST => (self.authorise(&rrn, ChargeKind::Purchase, amount), None),
            Mti::COMPLETION_ADVICE => {
                self.authorise(&rrn, ChargeKind::Completion, amount);
                ("00", None)
            }
            Mti::REVERSAL_REQUEST => {
                self.reverse(&rrn);
                ("00", None)
            }
            Mti::STATUS_REQUEST => self.status(&rrn),
            _ => ("12", None),
        };
        self.reply(msg, rc, status)
    }

    /// Records (once per RRN) and answers a request that moves money.
    fn authorise(&self, rrn: &str, kind: ChargeKind, amount_minor: u64) -> &'static str {
        let approve = kind == ChargeKind::Completion || self.dice.chance(900);
        let mut l = self.ledger();
        if let Some(c) = l.charges.get_mut(rrn) {
            c.received += 1;
            return if c.approved { "00" } else { "51" };
        }
        let approved = approve && !l.tombstones.contains(rrn);
        l.charges.insert(
            rrn.to_string(),
            Charge {
                kind,
                amount_minor,
                approved,
                standing: approved,
                reversed_by_bank: false,
                received: 1,
            },
        );
        if approved { "00" } else { "51" }
    }

    fn reverse(&self, rrn: &str) {
        let mut l = self.ledger();
        match l.charges.get_mut(rrn) {
            Some(c) => c.standing = false,
            None => {
                l.tombstones.insert(rrn.to_string());
            }
        }
    }

    fn status(&self, rrn: &str) -> (&'static str, Option<&'static str>) {
        let mut l = self.ledger();
        match l.charges.get(rrn) {
            Some(c) if c.standing => ("00", Some("APPROVED")),
            Some(c) if c.approved => ("00", Some("REVERSED")),
            Some(_) => ("00", Some("DECLINED")),
            None => {
                // Nothing stands, and nothing will: a late arrival is declined.
                l.tombstones.insert(rrn.to_string());
                ("25", None)
            }
        }
    }

    /// A reply that matches the request (DE11, DE37) and says nothing else.
    fn garbage(&self, msg: &Message) -> Message {
        let echoed: Vec<(u8, Vec<u8>)> = [11u8, 37]
            .iter()
            .filter_map(|&n| msg.get(n).map(|v| (n, v.into_owned())))
            .collect();
        let mut b = MessageBuilder::new(self.dialect, msg.mti().response());
        for (n, v) in &echoed {
            b.set(*n, v);
        }
        self.dialect
            .decode(b.encode().expect("reply encodes"))
            .expect("reply decodes")
    }

    fn reply(&self, msg: &Message, rc: &str, status: Option<&str>) -> Message {
        let mut de48 = Vec::new();
        let echoed: Vec<(u8, Vec<u8>)> = [7u8, 11, 37]
            .iter()
            .filter_map(|&n| msg.get(n).map(|v| (n, v.into_owned())))
            .collect();
        let mut b = MessageBuilder::new(self.dialect, msg.mti().response());
        for (n, v) in &echoed {
            b.set(*n, v);
        }
        b.set(39, rc.as_bytes());
        if rc == "00" {
            b.set(38, b"SIM001");
        }
        if let Some(st) = status {
            let _ = tlv::push(&mut de48, b"ST", st.as_bytes());
            b.set(48, &de48);
        }
        self.dialect
            .decode(b.encode().expect("reply encodes"))
            .expect("reply decodes")
    }
}

impl Wire for SimBank {
    fn ready(&self) -> bool {
        self.ledger().link_up
    }

    fn exchange(&self, _key: MatchKey, message: Bytes, timeout: Duration) -> Exchange<'_> {
        Box::pin(self.exchange_inner(message, timeout))
    }
}
