//! Message MACs over M, the message from the MTI up to (not including) the MAC element,
//! its bit already set:
//!
//! - HMAC-SHA256 truncated to its first 8 bytes: the merchant contract's MAC, and one
//!   choice for bank links.
//! - ANSI X9.19 retail MAC (ISO/IEC 9797-1 MAC algorithm 3, padding method 1): single-DES
//!   CBC-MAC under K of M padded with zero bytes to a multiple of 8, the last block then
//!   decrypted under K' and encrypted under K again; the other choice for bank links, with
//!   a double-length key K || K' of 16 bytes.

use std::fmt;

use des::Des;
use retail_mac::{KeyInit, Mac, RetailMac};
use ring::hmac;

/// Bytes of an HMAC-SHA256 MAC key.
pub const MAC_KEY_LEN_BYTES: usize = 32;
/// Bytes of an ANSI X9.19 key: K and K', two single-DES keys (parity bits ignored).
pub const X9_19_KEY_LEN_BYTES: usize = 16;
/// Bytes of a MAC on the wire.
pub const MAC_LEN_BYTES: usize = 8;

/// A MAC key, prepared once for its algorithm.
#[derive(Clone)]
pub struct MacKey {
    key: Algorithm,
}

#[derive(Clone)]
enum Algorithm {
    HmacSha256(hmac::Key),
    RetailX919(RetailMac<Des>),
}

/// Keys never print.
impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// An HMAC-SHA256 key.
    pub fn new(secret: &[u8; MAC_KEY_LEN_BYTES]) -> Self {
        MacKey {
            key: Algorithm::HmacSha256(hmac::Key::new(hmac::HMAC_SHA256, secret)),
        }
    }

    /// An ANSI X9.19 retail MAC key: K (bytes 0..8) then K' (bytes 8..16).
    pub fn x9_19(secret: &[u8; X9_19_KEY_LEN_BYTES]) -> Self {
        MacKey {
            key: Algorithm::RetailX919(RetailMac::<Des>::new(secret.into())),
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
        let mut mac = [0u8; MAC_LEN_BYTES];
        match &self.key {
            Algorithm::HmacSha256(key) => {
                let tag = hmac::sign(key, covered);
                mac.copy_from_slice(&tag.as_ref()[..MAC_LEN_BYTES]);
            }
            Algorithm::RetailX919(key) => {
                let tag = key.clone().chain_update(covered).finalize().into_bytes();
                mac.copy_from_slice(&tag[..MAC_LEN_BYTES]);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Proves the X9.19 retail MAC matches the published vectors of ISO/IEC 9797-1:2011
    // annex B.4 (MAC algorithm 3, padding method 1, K = 0123456789ABCDEF,
    // K' = FEDCBA9876543210), the algorithm ANSI X9.19 specifies.
    #[test]
    fn x9_19_published_vectors() {
        let key: [u8; 16] = unhex("0123456789ABCDEFFEDCBA9876543210")
            .try_into()
            .unwrap();
        let key = MacKey::x9_19(&key);
        assert_eq!(
            key.compute(b"Now is the time for all ").to_vec(),
            unhex("A1C72E74EA3FA9B6")
        );
        assert_eq!(
            key.compute(b"Now is the time for it").to_vec(),
            unhex("2E2B1428CC78254F")
        );
        assert!(key.verify(b"Now is the time for it", &unhex("2E2B1428CC78254F")));
        assert!(!key.verify(b"Now is the time for iT", &unhex("2E2B1428CC78254F")));
    }
}
