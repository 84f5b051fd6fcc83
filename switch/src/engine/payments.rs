//! The rest of the payment lifecycle on the request path: completion (0220), refund (0200
//! with DE3 `20`), reversal (0400) and status (0600).
//!
//! Each request first passes the retransmission check and limits ([`Engine::claim`]); the
//! rules, and each step's effect as a [`lifecycle::Transition`], come from
//! [`crate::lifecycle`]; the store applies the effect in one commit holding the payment's
//! row lock ([`crate::store::PaymentLock`]), so two requests racing for the same money
//! (on one instance or several) are serialised by the database.
//!
//! By message: [`completion_refund`] (0220, and 0200 with DE3 `20`: recorded with their
//! effect, a refund then sent to the bank), [`reversal`] (0400, held while the request it
//! names is unseen or in flight), [`status`] (0600). This module keeps what they share:
//! their common elements, DE90, and the payment's lock.

use std::sync::Arc;
use std::time::Duration;

use codec::{Message, MessageBuilder, Mti, tlv};

use crate::answer::{Answer, switch_auth_code};
use crate::bank_io::{BankExchange, bank_de90};
use crate::checks::{Kind, Rc, valid_transmission};
use crate::content::ContentDigest;
use crate::crypto::{Purpose, split_card};
use crate::engine::{Claimed, Engine, request_key};
use crate::ids::rrn_of;
use crate::inflight::owner_gone;
use crate::lifecycle::{self, ReversalEffect, ReversalHold, ReversalPlan, State, Status};
use crate::merchants::Merchant;
use crate::store::{NewTxn, PaymentLock, StoreError, TxnRecord};

pub use crate::store::OriginalRef;
pub use reversal::{
    REVERSAL_HOLD_FOLLOW_MS, REVERSAL_HOLD_MARGIN_MS, REVERSAL_HOLD_POLL_MS, REVERSAL_UNSEEN_MAX_MS,
};

mod completion_refund;
mod reversal;
mod status;

/// Longest refund reason kept (DE48 `RR` is free text inside an LLLVAR of 999).
pub const REFUND_REASON_MAX_LEN: usize = 255;

/// DE90: original MTI (4), STAN (6), DE7 (10), then 22 digits we do not use.
pub fn parse_de90(de90: &[u8]) -> Option<OriginalRef> {
    if de90.len() != 42 || !de90.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mti = Mti::from_digits(de90[..4].try_into().ok()?)?.original();
    let de7 = &de90[10..20];
    if !valid_transmission(de7) {
        return None;
    }
    Some(OriginalRef {
        mti: mti.as_str().to_string(),
        stan: String::from_utf8_lossy(&de90[4..10]).into_owned(),
        transmitted_at: String::from_utf8_lossy(de7).into_owned(),
    })
}

/// Elements common to the lifecycle requests, checked present and well formed.
struct Common {
    key: String,
    /// What makes a retransmission of this request the same request.
    content: ContentDigest,
    terminal_id: String,
    stan: String,
    transmitted_at: String,
    amount_minor: u64,
    currency: u16,
    original: OriginalRef,
}

fn common(msg: &Message, merchant: &Merchant) -> Result<Common, Rc> {
    for n in [4u8, 7, 11, 41, 42, 49, 90] {
        if !msg.has(n) {
            return Err(Rc::FORMAT_ERROR);
        }
    }
    let de7 = msg.raw(7).ok_or(Rc::FORMAT_ERROR)?;
    if !valid_transmission(de7) {
        return Err(Rc::FORMAT_ERROR);
    }
    let terminal = msg.raw(41).ok_or(Rc::FORMAT_ERROR)?;
    if terminal.iter().all(|&c| c == b' ') {
        return Err(Rc::FORMAT_ERROR);
    }
    let original = parse_de90(msg.raw(90).ok_or(Rc::FORMAT_ERROR)?).ok_or(Rc::FORMAT_ERROR)?;
    let stan = msg.raw(11).ok_or(Rc::FORMAT_ERROR)?;
    Ok(Common {
        key: request_key(&merchant.id, terminal, stan, de7, msg.mti()),
        content: ContentDigest::of(msg),
        terminal_id: String::from_utf8_lossy(terminal).trim_end().to_string(),
        stan: String::from_utf8_lossy(stan).into_owned(),
        transmitted_at: String::from_utf8_lossy(de7).into_owned(),
        amount_minor: msg.get_u64(4).ok_or(Rc::FORMAT_ERROR)?,
        currency: msg.get_u64(49).ok_or(Rc::FORMAT_ERROR)? as u16,
        original,
    })
}

impl Engine {
    fn db_error(&self, e: impl std::fmt::Display) -> Answer {
        tracing::error!(error = %e, "lifecycle request not recorded: answering 96");
        Answer::refused(Rc::MALFUNCTION)
    }

    /// The row the request names and its payment, both locked until the lock is
    /// recorded or dropped; `25` when there is no such original.
    async fn lock_named(
        &self,
        merchant: &Merchant,
        c: &Common,
    ) -> Result<Box<dyn PaymentLock>, Answer> {
        match self
            .store
            .lock_payment(&merchant.id, &c.terminal_id, &c.original)
            .await
        {
            Ok(Some(lock)) => Ok(lock),
            Ok(None) => {
                tracing::info!(rc = "25", "original not found");
                Err(Answer::refused(Rc::NO_ORIGINAL))
            }
            Err(e) => Err(self.db_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves DE90 reads the contract's example and refuses malformed ones.
    #[test]
    fn de90() {
        let r = parse_de90(b"010000000411260653020000000000000000000000").unwrap();
        assert_eq!(
            r,
            OriginalRef {
                mti: "0100".into(),
                stan: "000004".into(),
                transmitted_at: "1126065302".into()
            }
        );
        assert_eq!(
            parse_de90(b"020100000311260653010000000000000000000000")
                .unwrap()
                .mti,
            "0200",
            "repeat counts as original"
        );
        assert!(
            parse_de90(b"0100000004112606530200000000000000000000").is_none(),
            "short"
        );
        assert!(
            parse_de90(b"010000000413260653020000000000000000000000").is_none(),
            "month 13"
        );
    }
}
