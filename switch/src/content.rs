//! What makes a retransmission the same request: a digest of its content.
//!
//! The contract ("Duplicates and idempotency", merchant-h2h.md) identifies a request by
//! (DE42, DE41, DE11, DE7, MTI class), and calls a request with that identity a
//! retransmission only when it matches the original in DE2, DE3, DE4, DE14, DE49, DE90
//! and DE48 `OR`. One that differs is answered `94`, reaches no bank, and leaves the
//! earlier request's record and answer untouched. The digest of those elements goes with
//! the identity everywhere a request is remembered: the in-flight table, the Redis claim
//! and answer, and the journal's row; a replay compares it first.
#![deny(clippy::disallowed_methods)]

use codec::{Message, tlv};
use ring::digest::{SHA256, digest};

/// The elements compared, in order (DE48 is compared by its `OR` sub-element only).
pub(crate) const COMPARED_ELEMENTS: [u8; 6] = [2, 3, 4, 14, 49, 90];

/// Bytes of the SHA-256 kept: 128 bits, far beyond any accidental collision.
pub(crate) const DIGEST_LEN: usize = 16;

/// The content digest of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentDigest(pub [u8; DIGEST_LEN]);

impl ContentDigest {
    /// The digest of `msg`'s compared elements: each as its number, a presence byte, its
    /// length and its bytes, so that no two different contents share an encoding.
    pub fn of(msg: &Message) -> ContentDigest {
        let mut buf = Vec::with_capacity(128);
        let mut put = |tag: u8, value: Option<&[u8]>| {
            buf.push(tag);
            match value {
                None => buf.push(0),
                Some(v) => {
                    buf.push(1);
                    buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    buf.extend_from_slice(v);
                }
            }
        };
        for n in COMPARED_ELEMENTS {
            put(n, msg.raw(n));
        }
        let order_ref = msg
            .raw(48)
            .and_then(|de48| tlv::find(de48, b"OR").ok().flatten());
        put(48, order_ref);
        let d = digest(&SHA256, &buf);
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&d.as_ref()[..DIGEST_LEN]);
        ContentDigest(out)
    }

    /// Lower-case hex (32 characters), as kept in Redis.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`to_hex`](Self::to_hex); None for anything else.
    pub fn from_hex(s: &str) -> Option<ContentDigest> {
        let v = hex::decode(s).ok()?;
        Some(ContentDigest(v.try_into().ok()?))
    }

    /// Parses the bytes kept in PostgreSQL; None for anything but [`DIGEST_LEN`] bytes.
    pub fn from_bytes(b: &[u8]) -> Option<ContentDigest> {
        Some(ContentDigest(b.try_into().ok()?))
    }
}

/// Whether a request with digest `ours` may be answered as the one remembered with
/// `remembered`. A memory without a digest (written before digests were kept, or a rate
/// limit refusal stored by Redis itself) cannot tell, and counts as the same request.
pub(crate) fn same_request(remembered: Option<ContentDigest>, ours: ContentDigest) -> bool {
    remembered.is_none_or(|r| r == ours)
}

#[cfg(test)]
// Tests make their own clock readings to feed the decisions.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use codec::{MessageBuilder, Mti, builtin};

    fn purchase(amount: &[u8], pan: &[u8], order_ref: &[u8], stan: &[u8]) -> ContentDigest {
        let mut de48 = Vec::new();
        de48.extend_from_slice(b"OR");
        de48.extend_from_slice(format!("{:03}", order_ref.len()).as_bytes());
        de48.extend_from_slice(order_ref);
        let mut b = MessageBuilder::new(builtin::merchant(), Mti::FINANCIAL_REQUEST);
        b.set(2, pan)
            .set(3, b"000000")
            .set(4, amount)
            .set(7, b"1130120000")
            .set(11, stan)
            .set(14, b"2912")
            .set(41, b"TERM0001")
            .set(42, b"MERCHANT0000001")
            .set(48, &de48)
            .set(49, b"840");
        let bytes = b.encode().expect("encodes");
        let msg = builtin::merchant().decode(bytes).expect("decodes");
        ContentDigest::of(&msg)
    }

    // Proves the digest changes with each compared element and not with the identity's
    // own elements (a retransmission as 0201 or with another STAN still compares equal).
    #[test]
    fn digest_covers_the_compared_elements_only() {
        let visa = b"4111111111111111";
        let base = purchase(b"000000001000", visa, b"ORDER-1", b"000001");
        let same = [
            purchase(b"000000001000", visa, b"ORDER-1", b"000001"),
            purchase(b"000000001000", visa, b"ORDER-1", b"000002"),
        ];
        let other = [
            purchase(b"000000900000", visa, b"ORDER-1", b"000001"),
            purchase(b"000000001000", b"5500000000000004", b"ORDER-1", b"000001"),
            purchase(b"000000001000", visa, b"ORDER-2", b"000001"),
        ];
        assert!(same.iter().all(|d| *d == base), "same content");
        assert!(other.iter().all(|d| *d != base), "other content");
    }

    // Proves hex and byte forms round-trip and that an unknown memory counts as the same.
    #[test]
    fn forms_and_comparison() {
        let d = purchase(b"000000001000", b"4111111111111111", b"ORDER-1", b"000001");
        assert_eq!(ContentDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(ContentDigest::from_bytes(&d.0), Some(d));
        assert_eq!(ContentDigest::from_hex("zz"), None);
        assert_eq!(ContentDigest::from_bytes(&[1, 2, 3]), None);
        assert!(same_request(None, d));
        assert!(same_request(Some(d), d));
        assert!(!same_request(Some(ContentDigest([0; DIGEST_LEN])), d));
    }
}
