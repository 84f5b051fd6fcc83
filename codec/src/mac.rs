//! The merchant contract's MAC: the first 8 bytes of HMAC-SHA256(key, M), where M is
//! the message from the MTI up to (not including) the MAC element, its bit already set.

use std::fmt;

use ring::hmac;

use crate::message::Message;

/// Bytes of a MAC key.
pub const MAC_KEY_LEN_BYTES: usize = 32;
/// Bytes of a MAC on the wire.
pub const MAC_LEN_BYTES: usize = 8;

/// A merchant's MAC key, prepared once for HMAC.
#[derive(Clone)]
pub struct MacKey {
    key: hmac::Key,
}

/// Keys never print.
impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    pub fn new(secret: &[u8; MAC_KEY_LEN_BYTES]) -> Self {
        MacKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A key from its hex form (as shown to the merchant once).
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != MAC_KEY_LEN_BYTES * 2 {
            return None;
        }
        let mut k = [0u8; MAC_KEY_LEN_BYTES];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            k[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        }
        Some(MacKey::new(&k))
    }

    /// The MAC over exactly these bytes.
    #[inline]
    pub fn compute(&self, covered: &[u8]) -> [u8; MAC_LEN_BYTES] {
        let tag = hmac::sign(&self.key, covered);
        let mut mac = [0u8; MAC_LEN_BYTES];
        mac.copy_from_slice(&tag.as_ref()[..MAC_LEN_BYTES]);
        mac
    }

    /// Whether `mac` is right for `covered`, in constant time.
    #[inline]
    pub fn verify(&self, covered: &[u8], mac: &[u8]) -> bool {
        let expected = self.compute(covered);
        mac.len() == MAC_LEN_BYTES
            && expected
                .iter()
                .zip(mac)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The outcome of checking a message's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacCheck {
    Valid,
    /// No MAC where the dialect puts it (contract: `63`).
    Missing,
    /// A MAC that does not verify (contract: `63`).
    Invalid,
    /// A MAC in the other element than the dialect puts it for this message (contract: `30`).
    Misplaced,
}

impl Message {
    /// Checks the MAC where the dialect says it must be for this message.
    pub fn check_mac(&self, key: &MacKey) -> MacCheck {
        let Some(expected) = self.dialect().mac_field(self.has_secondary_bitmap()) else {
            return MacCheck::Missing;
        };
        let other = if expected == 64 { 128 } else { 64 };
        if self.has(other) && self.dialect().field(other).is_some() && other != expected {
            return MacCheck::Misplaced;
        }
        match self.mac_input(expected) {
            None => MacCheck::Missing,
            Some((covered, mac)) if key.verify(covered, mac) => MacCheck::Valid,
            Some(_) => MacCheck::Invalid,
        }
    }
}
