//! Back-office account rules (issue 12), as plain functions of their inputs and `now`:
//! password strength and hashing (argon2id), lockout (PCI DSS 8.3.4: 10 failures within
//! 15 minutes lock for 30 minutes), session idle expiry (PCI DSS 8.2.8: 15 minutes),
//! opaque tokens, TOTP (RFC 6238) and recovery codes; failed logins per source address
//! ([`throttle`]). The SQL is in
//! [`crate::store::accounts`]; the flows that combine both are in [`crate::backoffice`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admin_http::Role;
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use ring::rand::{SecureRandom, SystemRandom};

pub(crate) mod throttle;

/// Shortest password accepted, in characters.
pub(crate) const PASSWORD_MIN_CHARS: usize = 12;
/// Longest password accepted, in characters: OWASP's "at least 64" with room for
/// passphrases, and a bound on what anyone can make argon2 hash (checked before it).
pub(crate) const PASSWORD_MAX_CHARS: usize = 128;
/// Failed logins within [`LOCKOUT_WINDOW_MS`] that lock an account (PCI DSS 8.3.4).
pub(crate) const LOCKOUT_FAILURES: u32 = 10;
/// The window failures are counted in.
pub(crate) const LOCKOUT_WINDOW_MS: u64 = 15 * 60 * 1000;
/// How long a lockout lasts unless an admin unlocks first.
pub(crate) const LOCKOUT_MS: u64 = 30 * 60 * 1000;
/// A session unused this long is over (PCI DSS 8.2.8).
pub(crate) const SESSION_IDLE_MS: u64 = 15 * 60 * 1000;
/// Recovery codes issued at TOTP enrolment.
pub(crate) const RECOVERY_CODES: usize = 10;
/// Longest life of an API key, in days.
pub(crate) const API_KEY_MAX_DAYS: u32 = 365;
/// Prefix of session tokens (tells them from API keys without a lookup).
pub(crate) const SESSION_PREFIX: &str = "sys_";
/// Prefix of API keys.
pub(crate) const API_KEY_PREFIX: &str = "syk_";
/// Prefix of password reset tokens.
pub(crate) const RESET_PREFIX: &str = "syr_";
/// How long a password reset token is valid.
pub(crate) const RESET_TTL_MS: u64 = 60 * 60 * 1000;

const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// Why a password is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PasswordProblem {
    #[error("shorter than {PASSWORD_MIN_CHARS} characters")]
    TooShort,
    #[error("longer than {PASSWORD_MAX_CHARS} characters")]
    TooLong,
    #[error("needs an upper-case letter")]
    NoUpper,
    #[error("needs a lower-case letter")]
    NoLower,
    #[error("needs a digit")]
    NoDigit,
    #[error("needs a symbol")]
    NoSymbol,
    #[error("on the list of common passwords")]
    Common,
}

/// A class of characters a password must contain one of.
type CharTest = fn(char) -> bool;

/// Checks the issue 12 rules: [`PASSWORD_MIN_CHARS`] to [`PASSWORD_MAX_CHARS`] characters with upper
/// case, lower case, digit and symbol, and not a common password: neither the whole
/// (any case) nor what is left after stripping digits and symbols from both ends is on
/// `common-passwords.txt` (so `Password123!` is refused for `password`).
pub(crate) fn check_password(pw: &str) -> Result<(), PasswordProblem> {
    if too_long(pw) {
        return Err(PasswordProblem::TooLong);
    }
    if pw.chars().count() < PASSWORD_MIN_CHARS {
        return Err(PasswordProblem::TooShort);
    }
    let checks: [(CharTest, PasswordProblem); 4] = [
        (char::is_uppercase, PasswordProblem::NoUpper),
        (char::is_lowercase, PasswordProblem::NoLower),
        (|c| c.is_ascii_digit(), PasswordProblem::NoDigit),
        (|c| !c.is_alphanumeric(), PasswordProblem::NoSymbol),
    ];
    if let Some((_, p)) = checks.iter().find(|(f, _)| !pw.chars().any(f)) {
        return Err(*p);
    }
    let lower = pw.to_lowercase();
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    let common = COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .any(|l| l == lower || l == core);
    if common {
        return Err(PasswordProblem::Common);
    }
    Ok(())
}

/// Over [`PASSWORD_MAX_CHARS`] characters; a string of more bytes than the longest
/// characters take (4) is, without counting them.
fn too_long(pw: &str) -> bool {
    pw.len() > 4 * PASSWORD_MAX_CHARS || pw.chars().count() > PASSWORD_MAX_CHARS
}

/// A PHC string (`$argon2id$v=19$...`) of `pw` with a fresh salt (argon2 0.6 defaults:
/// argon2id, 19 MiB, 2 passes, OWASP's recommendation).
pub(crate) fn hash_password(pw: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(pw.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `pw` matches the PHC string (false for an unreadable one, and for a password
/// longer than [`PASSWORD_MAX_CHARS`], which no account can have, without hashing it).
pub(crate) fn verify_password(pw: &str, phc: &str) -> bool {
    if too_long(pw) {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(pw.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Until when an account is locked after a failure, given the failures counted in the
/// last [`LOCKOUT_WINDOW_MS`] (this one included); `None`: not locked.
pub(crate) fn lock_until(failures_in_window: u32, now: SystemTime) -> Option<SystemTime> {
    (failures_in_window >= LOCKOUT_FAILURES).then(|| now + Duration::from_millis(LOCKOUT_MS))
}

/// Whether a lock set until `locked_until` still holds at `now`.
pub(crate) fn is_locked(locked_until: Option<SystemTime>, now: SystemTime) -> bool {
    locked_until.is_some_and(|t| t > now)
}

/// Failures at or after this instant count towards a lockout.
pub(crate) fn failure_window_start(now: SystemTime) -> SystemTime {
    now - Duration::from_millis(LOCKOUT_WINDOW_MS)
}

/// A session last used before this instant has expired.
pub(crate) fn session_cutoff(now: SystemTime) -> SystemTime {
    now - Duration::from_millis(SESSION_IDLE_MS)
}

/// Whether `role` must pass a second factor: every role above `viewer` (merchant users
/// too: they can move money back).
pub(crate) fn needs_second_factor(role: Role) -> bool {
    role != Role::Viewer
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source");
    b
}

/// SHA-256 of a token, as stored (tokens are random, 256 bits: no salt or stretching
/// needed).
pub(crate) fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// A fresh opaque token with `prefix` ([`SESSION_PREFIX`] or [`API_KEY_PREFIX`]) and
/// its hash.
pub(crate) fn new_token(prefix: &str) -> (String, Vec<u8>) {
    let token = format!("{prefix}{}", hex::encode(random_bytes::<32>()));
    let hash = token_hash(&token);
    (token, hash)
}

/// A fresh TOTP secret: 160 bits, RFC 4226's recommendation.
pub(crate) fn new_totp_secret() -> Vec<u8> {
    random_bytes::<20>().to_vec()
}

/// The RFC 6238 generator for a secret: SHA-1, 6 digits, 30 s steps, one step of skew
/// (what authenticator apps implement).
pub(crate) fn totp(secret: &[u8], username: &str) -> Result<totp_rs::Totp, String> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .with_issuer(Some("Switchyard"))
        .with_account_name(username.replace(':', "_"))
        .build()
        .map_err(|e| e.to_string())
}

/// The time step a code is valid for at `now`, if valid and later than `last_step` (a
/// code is accepted once, RFC 6238 §5.2).
pub(crate) fn check_totp(
    t: &totp_rs::Totp,
    code: &str,
    now: SystemTime,
    last_step: Option<u64>,
) -> Option<u64> {
    let secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let step = t.check(code.trim(), secs)?;
    (last_step.is_none_or(|l| step > l)).then_some(step)
}

/// [`RECOVERY_CODES`] fresh codes, `xxxxx-xxxxx` in lower-case hex (80 bits each).
pub(crate) fn new_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let h = hex::encode(random_bytes::<5>());
            format!("{}-{}", &h[..5], &h[5..])
        })
        .collect()
}

/// A recovery code as typed (case, spaces) to its stored hash.
pub(crate) fn recovery_hash(code: &str) -> Vec<u8> {
    token_hash(&code.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves each strength rule refuses on its own and a strong password passes.
    #[test]
    fn password_rules() {
        assert_eq!(check_password("Sh0rt!"), Err(PasswordProblem::TooShort));
        assert_eq!(
            check_password("lower-only-12"),
            Err(PasswordProblem::NoUpper)
        );
        assert_eq!(
            check_password("UPPER-ONLY-12"),
            Err(PasswordProblem::NoLower)
        );
        assert_eq!(
            check_password("No-Digits-Here"),
            Err(PasswordProblem::NoDigit)
        );
        assert_eq!(
            check_password("NoSymbols1234"),
            Err(PasswordProblem::NoSymbol)
        );
        assert_eq!(check_password("Password123!"), Err(PasswordProblem::Common));
        assert_eq!(check_password("!!Football99"), Err(PasswordProblem::Common));
        assert_eq!(check_password("Tangerine-Viaduct-42"), Ok(()));
    }

    // Proves passwords over the maximum are refused (in characters: 128 multi-byte ones
    // pass), and never verified, without hashing them.
    #[test]
    fn password_maximum() {
        let longest = format!("Aa1!{}", "é".repeat(PASSWORD_MAX_CHARS - 4));
        assert_eq!(check_password(&longest), Ok(()));
        let over = format!("{longest}x");
        assert_eq!(check_password(&over), Err(PasswordProblem::TooLong));
        let huge = "Aa1!".repeat(100_000);
        assert_eq!(check_password(&huge), Err(PasswordProblem::TooLong));
        let phc = hash_password(&longest).unwrap();
        assert!(verify_password(&longest, &phc));
        assert!(!verify_password(&over, &phc));
    }

    // Proves a hash verifies its password only, and is argon2id.
    #[test]
    fn hashing() {
        let h = hash_password("Tangerine-Viaduct-42").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("Tangerine-Viaduct-42", &h));
        assert!(!verify_password("Tangerine-Viaduct-43", &h));
        assert!(!verify_password("x", "not a phc string"));
    }

    // Proves the lockout figures: the 10th failure locks for 30 minutes, not the 9th.
    #[test]
    fn lockout() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(lock_until(9, now), None);
        let until = lock_until(10, now).unwrap();
        assert_eq!(until.duration_since(now).unwrap().as_secs(), 30 * 60);
        assert!(is_locked(Some(until), now + Duration::from_secs(29 * 60)));
        assert!(!is_locked(Some(until), now + Duration::from_secs(30 * 60)));
        assert!(!is_locked(None, now));
    }

    // Proves a TOTP code is accepted in its step, refused when replayed or wrong.
    #[test]
    fn totp_once() {
        let secret = new_totp_secret();
        let t = totp(&secret, "alice").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let code = t.generate(1_800_000_000).to_string();
        let step = check_totp(&t, &code, now, None).expect("valid");
        assert_eq!(check_totp(&t, &code, now, Some(step)), None, "replayed");
        let later = now + Duration::from_secs(600);
        assert_eq!(check_totp(&t, &code, later, None), None, "expired");
    }

    // Proves tokens carry their prefix, are unique, and hash to what is stored.
    #[test]
    fn tokens() {
        let (a, ha) = new_token(SESSION_PREFIX);
        let (b, _) = new_token(SESSION_PREFIX);
        assert!(a.starts_with(SESSION_PREFIX) && a != b);
        assert_eq!(token_hash(&a), ha);
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(
            recovery_hash(&codes[0].to_uppercase()),
            recovery_hash(&codes[0])
        );
    }
}
