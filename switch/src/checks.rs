//! The contract's checks as plain functions of the message, the merchant and the date.
//! The order of refusals is the contract's: required elements (`30`), then, after the
//! retransmission lookup, Luhn (`14`), expiry (`54`), amount (`13`), currency (`58`) and
//! the per-transaction limit (`61`).
#![deny(clippy::disallowed_methods)]

use codec::{Message, Mti, tlv};

use crate::merchants::Merchant;

/// A DE39 response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rc(pub [u8; 2]);

impl Rc {
    pub const APPROVED: Rc = Rc(*b"00");
    /// Not a code that is sent: the request's outcome could not be recorded within
    /// `switch.outcome_wait_ms`, so no answer is sent at all (a guess could contradict
    /// the record); the merchant's retransmission is answered from the record once the
    /// outcome, or the reversal of an unrecorded one, is recorded.
    pub const WITHHELD: Rc = Rc(*b"--");
    pub const DO_NOT_HONOUR: Rc = Rc(*b"05");
    pub const INVALID_TRANSACTION: Rc = Rc(*b"12");
    pub const INVALID_AMOUNT: Rc = Rc(*b"13");
    pub const INVALID_CARD: Rc = Rc(*b"14");
    pub const NO_ORIGINAL: Rc = Rc(*b"25");
    pub const FORMAT_ERROR: Rc = Rc(*b"30");
    pub const INSUFFICIENT_FUNDS: Rc = Rc(*b"51");
    pub const EXPIRED_CARD: Rc = Rc(*b"54");
    pub const NOT_PERMITTED: Rc = Rc(*b"58");
    pub const OVER_LIMIT: Rc = Rc(*b"61");
    pub const SECURITY_VIOLATION: Rc = Rc(*b"63");
    pub const FREQUENCY: Rc = Rc(*b"65");
    pub const ISSUER_DOWN: Rc = Rc(*b"91");
    pub const NO_ROUTE: Rc = Rc(*b"92");
    pub const DUPLICATE: Rc = Rc(*b"94");
    pub const MALFUNCTION: Rc = Rc(*b"96");

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    pub fn parse(s: &str) -> Option<Rc> {
        let b: [u8; 2] = s.as_bytes().try_into().ok()?;
        b.iter().all(u8::is_ascii_alphanumeric).then_some(Rc(b))
    }

    /// A bank's answer as the merchant sees it: codes the contract does not list become `05`.
    pub fn from_bank(code: &[u8]) -> Rc {
        match code {
            b"00" => Rc::APPROVED,
            b"51" => Rc::INSUFFICIENT_FUNDS,
            b"54" => Rc::EXPIRED_CARD,
            b"14" => Rc::INVALID_CARD,
            b"13" => Rc::INVALID_AMOUNT,
            b"61" => Rc::OVER_LIMIT,
            b"65" => Rc::FREQUENCY,
            b"91" => Rc::ISSUER_DOWN,
            _ => Rc::DO_NOT_HONOUR,
        }
    }

    /// A short name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match &self.0 {
            b"00" => "approved",
            b"05" => "do_not_honour",
            b"12" => "invalid_transaction",
            b"13" => "invalid_amount",
            b"14" => "invalid_card_number",
            b"25" => "original_not_found",
            b"30" => "format_error",
            b"51" => "insufficient_funds",
            b"54" => "expired_card",
            b"58" => "not_permitted",
            b"61" => "over_amount_limit",
            b"63" => "security_violation",
            b"65" => "over_frequency_limit",
            b"91" => "issuer_or_switch_inoperative",
            b"92" => "unable_to_route",
            b"94" => "duplicate",
            b"96" => "system_malfunction",
            _ => "other",
        }
    }
}

/// Longest order reference the contract allows.
pub const ORDER_REF_MAX_LEN: usize = 64;
/// Shortest card number we accept (ISO/IEC 7812 allows 8, no scheme issues fewer than 12).
pub const PAN_MIN_LEN: usize = 12;

/// What kind of financial request a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Purchase,
    Preauth,
    Completion,
    Refund,
    Reversal,
}

impl Kind {
    /// The `kind` column's value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::Preauth => "preauth",
            Kind::Completion => "completion",
            Kind::Refund => "refund",
            Kind::Reversal => "reversal",
        }
    }

    /// The kind a `kind` column value names; `None` for anything else.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "purchase" => Kind::Purchase,
            "preauth" => Kind::Preauth,
            "completion" => Kind::Completion,
            "refund" => Kind::Refund,
            "reversal" => Kind::Reversal,
            _ => return None,
        })
    }

    /// A payment's root: an original purchase or pre-authorisation.
    pub fn is_root(&self) -> bool {
        matches!(self, Kind::Purchase | Kind::Preauth)
    }
}

/// A purchase or pre-authorisation whose elements are all present and well formed.
#[derive(Debug, Clone)]
pub struct Authorisation<'m> {
    pub kind: Kind,
    pub pan: &'m [u8],
    pub processing_code: &'m [u8],
    pub amount_minor: u64,
    pub transmitted_at: &'m [u8],
    pub stan: &'m [u8],
    pub expiry: &'m [u8],
    pub terminal_id: &'m [u8],
    pub merchant_id: &'m [u8],
    pub order_ref: &'m [u8],
    pub currency: u16,
}

fn field(msg: &Message, n: u8) -> Result<&[u8], Rc> {
    msg.raw(n).ok_or(Rc::FORMAT_ERROR)
}

/// MMDDhhmmss with each part in range.
pub fn valid_transmission(de7: &[u8]) -> bool {
    let two = |i: usize| u32::from(de7[i] - b'0') * 10 + u32::from(de7[i + 1] - b'0');
    de7.len() == 10
        && de7.iter().all(u8::is_ascii_digit)
        && (1..=12).contains(&two(0))
        && (1..=31).contains(&two(2))
        && two(4) < 24
        && two(6) < 60
        && two(8) < 60
}

/// Identifying text elements (DE41, DE42) are fixed and space-padded; they must hold
/// something other than padding.
fn non_blank(v: &[u8]) -> bool {
    v.iter().any(|&c| c != b' ')
}

/// Checks that a 0100 or 0200 purchase carries every required element, well formed.
/// A 0200 with DE3 `20` is a refund and is not an authorisation: `Ok(None)`.
pub fn required_authorisation(msg: &Message) -> Result<Option<Authorisation<'_>>, Rc> {
    let processing_code = field(msg, 3)?;
    let kind = match (msg.mti().original(), &processing_code[..2]) {
        (Mti::AUTHORISATION_REQUEST, b"00") => Kind::Preauth,
        (Mti::FINANCIAL_REQUEST, b"00") => Kind::Purchase,
        (Mti::FINANCIAL_REQUEST, b"20") => return Ok(None),
        _ => return Err(Rc::INVALID_TRANSACTION),
    };
    let pan = field(msg, 2)?;
    if pan.len() < PAN_MIN_LEN {
        return Err(Rc::FORMAT_ERROR);
    }
    let transmitted_at = field(msg, 7)?;
    if !valid_transmission(transmitted_at) {
        return Err(Rc::FORMAT_ERROR);
    }
    let expiry = field(msg, 14)?;
    let month = u32::from(expiry[2] - b'0') * 10 + u32::from(expiry[3] - b'0');
    if !(1..=12).contains(&month) {
        return Err(Rc::FORMAT_ERROR);
    }
    let terminal_id = field(msg, 41)?;
    let merchant_id = field(msg, 42)?;
    if !non_blank(terminal_id) || !non_blank(merchant_id) {
        return Err(Rc::FORMAT_ERROR);
    }
    let order_ref = match tlv::find(field(msg, 48)?, b"OR") {
        Ok(Some(v)) if !v.is_empty() && v.len() <= ORDER_REF_MAX_LEN => v,
        _ => return Err(Rc::FORMAT_ERROR),
    };
    let currency = msg.get_u64(49).ok_or(Rc::FORMAT_ERROR)? as u16;
    Ok(Some(Authorisation {
        kind,
        pan,
        processing_code,
        amount_minor: msg.get_u64(4).ok_or(Rc::FORMAT_ERROR)?,
        transmitted_at,
        stan: field(msg, 11)?,
        expiry,
        terminal_id,
        merchant_id,
        order_ref,
        currency,
    }))
}

/// The Luhn check digit test.
pub fn luhn(pan: &[u8]) -> bool {
    codec::card::luhn_valid(pan)
}

/// A card is good through the last day of its expiry month (YYMM).
pub fn expired(expiry: &[u8], today_year: u32, today_month: u32) -> bool {
    let yy = u32::from(expiry[0] - b'0') * 10 + u32::from(expiry[1] - b'0');
    let mm = u32::from(expiry[2] - b'0') * 10 + u32::from(expiry[3] - b'0');
    (2000 + yy, mm) < (today_year, today_month)
}

/// The checks after the retransmission lookup and before the rate limits, in order.
pub fn business_checks(
    a: &Authorisation<'_>,
    merchant: &Merchant,
    today: (u32, u32),
) -> Result<(), Rc> {
    if !luhn(a.pan) {
        return Err(Rc::INVALID_CARD);
    }
    if expired(a.expiry, today.0, today.1) {
        return Err(Rc::EXPIRED_CARD);
    }
    if a.amount_minor == 0 {
        return Err(Rc::INVALID_AMOUNT);
    }
    if codec::currency::exponent(a.currency).is_none() || !merchant.currencies.contains(&a.currency)
    {
        return Err(Rc::NOT_PERMITTED);
    }
    if a.amount_minor > merchant.per_txn_limit_minor {
        return Err(Rc::OVER_LIMIT);
    }
    Ok(())
}

#[cfg(test)]
// Tests make their own clock readings to feed the decisions.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    // Proves every kind reads back from its column value, and nothing else reads as one.
    #[test]
    fn kinds_round_trip() {
        for k in [
            Kind::Purchase,
            Kind::Preauth,
            Kind::Completion,
            Kind::Refund,
            Kind::Reversal,
        ] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("Purchase"), None);
        assert!(Kind::Preauth.is_root() && !Kind::Refund.is_root());
    }

    // Proves Luhn accepts the contract's test cards and rejects a one-digit change.
    #[test]
    fn luhn_cards() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"5500000000000004"));
        assert!(!luhn(b"4111111111111112"));
        assert!(!luhn(b""));
    }

    // Proves a card is valid through its expiry month and not after.
    #[test]
    fn expiry_month_inclusive() {
        assert!(!expired(b"2611", 2026, 11));
        assert!(expired(b"2610", 2026, 11));
        assert!(!expired(b"3012", 2026, 11));
    }

    // Proves DE7 ranges are checked.
    #[test]
    fn transmission_ranges() {
        assert!(valid_transmission(b"1126065301"));
        assert!(!valid_transmission(b"1326065301"));
        assert!(!valid_transmission(b"1126246000"));
        assert!(!valid_transmission(b"0026065301"));
    }

    // Proves bank codes outside the contract's list reach the merchant as 05.
    #[test]
    fn bank_codes() {
        assert_eq!(Rc::from_bank(b"51"), Rc::INSUFFICIENT_FUNDS);
        assert_eq!(Rc::from_bank(b"N7"), Rc::DO_NOT_HONOUR);
    }
}
