//! The idempotency claims and limits in memory: the Redis script's rules
//! ([`crate::limiter`]) over a map, for the seeded simulation. It passes the same
//! contract tests as [`crate::limiter::Limiter`] (`tests/tests/claims_contract.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::clock::Clock;
use crate::config::RateAlgorithm;
use crate::limiter::{Claim, ClaimRequest, Claims, KeyWrite, LimiterError, Rate};

/// A value and when it expires (Unix µs).
#[derive(Debug, Clone)]
struct Entry {
    value: String,
    expires_us: u64,
}

#[derive(Debug, Default)]
struct Keys {
    idem: HashMap<String, Entry>,
    /// GCRA: theoretical arrival time (µs); token bucket: (tokens × 10⁶, last µs).
    rates: HashMap<String, (u64, u64)>,
    unreachable: bool,
}

/// Claims in memory, expiring by `clock`. Clones share the map.
#[derive(Debug, Clone)]
pub struct MemClaims {
    keys: Arc<Mutex<Keys>>,
    clock: Arc<dyn Clock>,
    algorithm: RateAlgorithm,
    claim_ttl_ms: u64,
    answer_ttl_ms: u64,
}

impl MemClaims {
    /// Empty claims with the Redis settings' meanings (`[redis]` in the configuration).
    pub fn new(
        clock: Arc<dyn Clock>,
        algorithm: RateAlgorithm,
        claim_ttl_ms: u64,
        answer_ttl_ms: u64,
    ) -> MemClaims {
        MemClaims {
            keys: Arc::default(),
            clock,
            algorithm,
            claim_ttl_ms,
            answer_ttl_ms,
        }
    }

    fn keys(&self) -> Result<MutexGuard<'_, Keys>, LimiterError> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.unreachable {
            return Err(LimiterError::Unreachable);
        }
        Ok(keys)
    }

    /// Forgets every key (`FLUSHALL`).
    pub fn flush(&self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.idem.clear();
        keys.rates.clear();
    }

    /// Makes every call fail ([`LimiterError::Unreachable`]) or work again.
    pub fn set_reachable(&self, reachable: bool) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unreachable = !reachable;
    }

    fn set(&self, keys: &mut Keys, key: &str, value: String, ttl_ms: u64) {
        let expires_us = self.clock.unix_us() + ttl_ms * 1_000;
        keys.idem
            .insert(key.to_string(), Entry { value, expires_us });
    }
}

fn get(keys: &Keys, key: &str, now_us: u64) -> Option<String> {
    keys.idem
        .get(key)
        .filter(|e| e.expires_us > now_us)
        .map(|e| e.value.clone())
}

/// Whether a request fits `rate` given the key's state, and the state to keep if it is
/// recorded: the script's `check` (GCRA or token bucket).
fn check(
    algorithm: RateAlgorithm,
    state: Option<(u64, u64)>,
    rate: Rate,
    now: u64,
) -> Option<(u64, u64)> {
    let (interval, tolerance) = (rate.interval_us, rate.tolerance_us);
    match algorithm {
        RateAlgorithm::Gcra => {
            let tat = state.map_or(0, |s| s.0).max(now);
            (tat - now <= tolerance).then_some((tat + interval, now))
        }
        RateAlgorithm::TokenBucket => {
            // Tokens in millionths, so that refills of a fraction of a token add up.
            let cap = (tolerance / interval + 1) * 1_000_000;
            let (tokens, ts) = state.unwrap_or((cap, now));
            let refill = now.saturating_sub(ts) * 1_000_000 / interval;
            let tokens = (tokens + refill).min(cap);
            (tokens >= 1_000_000).then(|| (tokens - 1_000_000, now))
        }
    }
}

#[async_trait]
impl Claims for MemClaims {
    async fn claim(&self, r: &ClaimRequest<'_>) -> Result<Claim, LimiterError> {
        let mut keys = self.keys()?;
        let now = self.clock.unix_us();
        if let Some(v) = get(&keys, r.key, now) {
            return Ok(Claim::Known(v));
        }
        if r.lookup_only {
            return Ok(Claim::Unknown);
        }
        let merchant_key = format!("m|{}", r.merchant_id);
        let card_key = format!("c|{}|{}", r.merchant_id, r.card_hash_hex);
        let mut commits = Vec::new();
        for (which, key, rate) in [
            ("merchant", merchant_key, r.merchant_rate),
            ("card", card_key, r.card_rate),
        ] {
            if rate.interval_us == 0 {
                continue;
            }
            let state = keys.rates.get(&key).copied();
            match check(self.algorithm, state, rate, r.now_us) {
                Some(next) => commits.push((key, next)),
                None => {
                    let refusal = format!("A|65|||{}", r.content_hex);
                    self.set(&mut keys, r.key, refusal, self.answer_ttl_ms);
                    return Ok(Claim::Limited(which));
                }
            }
        }
        keys.rates.extend(commits);
        self.set(
            &mut keys,
            r.key,
            r.claim_value.to_string(),
            self.claim_ttl_ms,
        );
        Ok(Claim::Claimed)
    }

    async fn take_over(&self, key: &str, dead: &str, value: &str) -> Result<bool, LimiterError> {
        let mut keys = self.keys()?;
        if get(&keys, key, self.clock.unix_us()).as_deref() != Some(dead) {
            return Ok(false);
        }
        self.set(&mut keys, key, value.to_string(), self.claim_ttl_ms);
        Ok(true)
    }

    async fn write_keys(&self, writes: &[KeyWrite]) -> Result<(), LimiterError> {
        let mut keys = self.keys()?;
        for w in writes {
            match w {
                KeyWrite::Store(key, value) => {
                    self.set(&mut keys, key, value.clone(), self.answer_ttl_ms)
                }
                KeyWrite::Release(key) => {
                    keys.idem.remove(key);
                }
            }
        }
        Ok(())
    }
}
