//! Secrets at rest: MAC keys and card data sealed with AES-256-GCM under the master key,
//! and a keyed hash of the card number for velocity rules and lookups.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::atomic::{AtomicU64, Ordering};

/// Sealing or opening failed (wrong key, tampered data, or no randomness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed data could not be opened (wrong key or tampered)")]
    Open,
    #[error("no randomness available")]
    Random,
    #[error("key must be 32 bytes")]
    KeyLength,
}

/// Holds the master key and the card-hash key.
pub struct Vault {
    sealing: LessSafeKey,
    pan_hash: hmac::Key,
    rng: SystemRandom,
    /// This vault's first nonce, random (96 bits): each seal takes the next one, so nonces
    /// never repeat within a process, and two processes' runs overlap with probability
    /// about (seals of both) / 2^96. NIST SP 800-38D section 8.2 asks for unique nonces,
    /// not unpredictable ones; drawing them from the kernel cost a system call per purchase.
    nonce_base: u128,
    /// Seals made so far (the offset from `nonce_base`).
    nonce_count: AtomicU64,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

/// What a sealed blob is for; bound into the AEAD so one kind cannot pass for another.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    MacKey,
    Card,
    /// A back-office account's TOTP secret (RFC 6238).
    TotpSecret,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::MacKey => b"switchyard/mac-key/v1",
            Purpose::Card => b"switchyard/card/v1",
            Purpose::TotpSecret => b"switchyard/totp-secret/v1",
        }
    }
}

impl Vault {
    pub fn new(master_key: &[u8], pan_hash_key: &[u8]) -> Result<Vault, CryptoError> {
        if master_key.len() != 32 || pan_hash_key.len() != 32 {
            return Err(CryptoError::KeyLength);
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, master_key).map_err(|_| CryptoError::KeyLength)?;
        let rng = SystemRandom::new();
        let mut base = [0u8; 16];
        rng.fill(&mut base[..NONCE_LEN])
            .map_err(|_| CryptoError::Random)?;
        Ok(Vault {
            sealing: LessSafeKey::new(unbound),
            pan_hash: hmac::Key::new(hmac::HMAC_SHA256, pan_hash_key),
            rng,
            nonce_base: u128::from_le_bytes(base),
            nonce_count: AtomicU64::new(0),
        })
    }

    /// The next nonce: `nonce_base` plus the seals so far, modulo 2^96.
    fn next_nonce(&self) -> [u8; NONCE_LEN] {
        let n = self.nonce_count.fetch_add(1, Ordering::Relaxed);
        let value = self.nonce_base.wrapping_add(u128::from(n));
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&value.to_le_bytes()[..NONCE_LEN]);
        nonce
    }

    /// A random number from the system's generator (this process's incarnation).
    pub fn random_u64(&self) -> Result<u64, CryptoError> {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
        Ok(u64::from_le_bytes(b))
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, purpose: Purpose, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = self.next_nonce();
        let mut buf = plain.to_vec();
        self.sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.aad()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, purpose: Purpose, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut buf = ct.to_vec();
        let plain = self
            .sealing
            .open_in_place(nonce, Aad::from(purpose.aad()), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }

    /// HMAC-SHA256 of the card number under the card-hash key.
    pub fn pan_hash(&self, pan: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.pan_hash, pan);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// 32 fresh random bytes (a new merchant's MAC key).
    pub fn random_key(&self) -> Result<[u8; 32], CryptoError> {
        let mut k = [0u8; 32];
        self.rng.fill(&mut k).map_err(|_| CryptoError::Random)?;
        Ok(k)
    }
}

/// Card data as sealed in the journal: the PAN and the expiry, which a reversal sent
/// later (or after a restart) needs again.
pub fn card_plaintext(pan: &[u8], expiry: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(pan.len() + 1 + expiry.len());
    v.extend_from_slice(pan);
    v.push(b'=');
    v.extend_from_slice(expiry);
    v
}

/// The inverse of [`card_plaintext`].
pub fn split_card(plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match plain.iter().position(|&b| b == b'=') {
        Some(i) => (plain[..i].to_vec(), plain[i + 1..].to_vec()),
        None => (plain.to_vec(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves sealing round-trips, binds the purpose, and detects tampering.
    #[test]
    fn seal_open_tamper() {
        let v = Vault::new(&[1u8; 32], &[2u8; 32]).unwrap();
        let s = v.seal(Purpose::Card, b"4111111111111111=3012").unwrap();
        assert!(!s.windows(16).any(|w| w == b"4111111111111111"));
        assert_eq!(v.open(Purpose::Card, &s).unwrap(), b"4111111111111111=3012");
        assert_eq!(v.open(Purpose::MacKey, &s), Err(CryptoError::Open));
        let mut t = s.clone();
        *t.last_mut().unwrap() ^= 1;
        assert_eq!(v.open(Purpose::Card, &t), Err(CryptoError::Open));
        assert_eq!(v.pan_hash(b"4111"), v.pan_hash(b"4111"));
        assert_ne!(v.pan_hash(b"4111"), v.pan_hash(b"4112"));
        assert_eq!(
            split_card(&card_plaintext(b"41", b"3012")),
            (b"41".to_vec(), b"3012".to_vec())
        );
    }

    // Proves consecutive seals use consecutive (so distinct) nonces, carried across the
    // 96-bit boundary, and that two vaults start at different places.
    #[test]
    fn nonces_never_repeat() {
        let v = Vault::new(&[1u8; 32], &[2u8; 32]).unwrap();
        let a = v.seal(Purpose::Card, b"x").unwrap();
        let b = v.seal(Purpose::Card, b"x").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b, "the same plaintext seals differently");
        let w = Vault::new(&[1u8; 32], &[2u8; 32]).unwrap();
        assert_ne!(v.nonce_base, w.nonce_base);
        let top = Vault {
            nonce_base: (1u128 << 96) - 1,
            ..w
        };
        assert_eq!(top.next_nonce(), [0xff; NONCE_LEN]);
        assert_eq!(top.next_nonce(), [0; NONCE_LEN]);
    }
}
