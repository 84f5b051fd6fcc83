//! The request mix: which kind of request each scheduled slot carries, and its amount.
//!
//! Plain functions: the kind of slot `i` is a fixed permutation of the mix's weights, so a
//! run of `total` slots holds each kind in exact proportion, spread evenly, and a rerun
//! sends the same sequence.

use std::fmt;

use thiserror::Error;

/// Kinds of request the harness sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Approved by the bank simulator (amount ending 00).
    Purchase,
    /// Declined by the bank simulator (amount ending 51 or 05).
    Decline,
    /// Never answered by the bank (amount ending 91): the switch answers 91 and reverses.
    Timeout,
    /// A 0201 repeat of an earlier answered purchase: must get the same answer.
    Retransmit,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Purchase,
        Kind::Decline,
        Kind::Timeout,
        Kind::Retransmit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::Decline => "decline",
            Kind::Timeout => "timeout",
            Kind::Retransmit => "retransmit",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The largest weight sum accepted (keeps the permutation small and exact).
pub const MIX_TOTAL_MAX: u32 = 10_000;
/// Multiplier of the slot permutation; the first value coprime with the total at or
/// above it is used, so kinds interleave rather than come in runs.
const MIX_STRIDE_MIN: u32 = 37;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MixError {
    #[error("mix entry {0:?} is not KIND=WEIGHT")]
    Syntax(String),
    #[error("unknown kind {0:?} (purchase, decline, timeout, retransmit)")]
    UnknownKind(String),
    #[error("weights must add up to between 1 and {MIX_TOTAL_MAX}")]
    BadTotal,
}

/// Weights by kind, in [`Kind::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
    stride: u32,
}

impl Mix {
    /// Parses `purchase=90,decline=5,timeout=1,retransmit=4` (kinds not named weigh 0).
    pub fn parse(s: &str) -> Result<Mix, MixError> {
        let mut weights = [0u32; 4];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, w) = part
                .split_once('=')
                .ok_or_else(|| MixError::Syntax(part.into()))?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| MixError::Syntax(part.into()))?;
            let i = Kind::ALL
                .iter()
                .position(|kind| kind.name() == k.trim())
                .ok_or_else(|| MixError::UnknownKind(k.trim().into()))?;
            weights[i] = w;
        }
        Mix::new(weights)
    }

    pub fn new(weights: [u32; 4]) -> Result<Mix, MixError> {
        let total: u32 = weights.iter().sum();
        if total == 0 || total > MIX_TOTAL_MAX {
            return Err(MixError::BadTotal);
        }
        let stride = (MIX_STRIDE_MIN..)
            .find(|s| gcd(*s, total) == 1)
            .unwrap_or(1);
        Ok(Mix { weights, stride })
    }

    pub fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    pub fn weight(&self, k: Kind) -> u32 {
        self.weights[k as usize]
    }

    /// The kind of slot `i`.
    pub fn kind_at(&self, i: u64) -> Kind {
        let total = u64::from(self.total());
        let p = (i % total) * u64::from(self.stride) % total;
        let mut acc = 0u64;
        for k in Kind::ALL {
            acc += u64::from(self.weight(k));
            if p < acc {
                return k;
            }
        }
        Kind::Purchase
    }

    /// The same mix with the kinds a bare relay cannot play (timeouts need a switch to
    /// time out, retransmissions a switch to remember) sent as purchases.
    pub fn for_relay(&self) -> Mix {
        let w = self.weights;
        Mix {
            weights: [w[0] + w[2] + w[3], w[1], 0, 0],
            stride: self.stride,
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Kind::ALL
            .iter()
            .map(|k| format!("{k}={}", self.weight(*k)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Distinct amount bases (in hundreds of minor units) before amounts repeat.
pub const AMOUNT_BASES: u64 = 9_000;
/// The smallest amount base (so the smallest purchase is 100.00).
const AMOUNT_BASE_MIN: u64 = 100;

/// The amount of slot `seq` of kind `k`, in minor units: the last two digits pick the
/// bank simulator's outcome (00 approve, 51 and 05 decline, 91 never answer).
pub fn amount_minor(k: Kind, seq: u64) -> u64 {
    let base = (AMOUNT_BASE_MIN + seq % AMOUNT_BASES) * 100;
    match k {
        Kind::Purchase | Kind::Retransmit => base,
        Kind::Decline if seq.is_multiple_of(2) => base + 51,
        Kind::Decline => base + 5,
        Kind::Timeout => base + 91,
    }
}

/// The response code a kind should get; a retransmission must get its original's.
pub fn expected_code(k: Kind, amount_minor: u64, original_code: Option<&str>) -> Option<String> {
    match k {
        Kind::Purchase => Some("00".into()),
        Kind::Decline if amount_minor % 100 == 51 => Some("51".into()),
        Kind::Decline => Some("05".into()),
        Kind::Timeout => Some("91".into()),
        Kind::Retransmit => original_code.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the mix string parses, prints back, and rejects bad entries.
    #[test]
    fn parse_mix() {
        let m = Mix::parse("purchase=90,decline=5,timeout=1,retransmit=4").unwrap();
        assert_eq!(m.total(), 100);
        assert_eq!(
            m.to_string(),
            "purchase=90,decline=5,timeout=1,retransmit=4"
        );
        assert_eq!(Mix::parse("purchase=1").unwrap().weight(Kind::Decline), 0);
        assert!(matches!(
            Mix::parse("refund=1"),
            Err(MixError::UnknownKind(_))
        ));
        assert!(matches!(Mix::parse("purchase"), Err(MixError::Syntax(_))));
        assert_eq!(Mix::parse("purchase=0"), Err(MixError::BadTotal));
    }

    // Proves a cycle of slots holds every kind exactly by weight, and kinds interleave.
    #[test]
    fn kinds_in_proportion() {
        let m = Mix::parse("purchase=90,decline=5,timeout=1,retransmit=4").unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..1000 {
            *counts.entry(m.kind_at(i)).or_insert(0) += 1;
        }
        assert_eq!(counts[&Kind::Purchase], 900);
        assert_eq!(counts[&Kind::Decline], 50);
        assert_eq!(counts[&Kind::Timeout], 10);
        assert_eq!(counts[&Kind::Retransmit], 40);
        // No run of more than a few non-purchases in a row.
        let first_20: Vec<Kind> = (0..20).map(|i| m.kind_at(i)).collect();
        assert!(first_20.iter().filter(|k| **k == Kind::Purchase).count() >= 15);
    }

    // Proves the relay mix turns timeouts and retransmissions into purchases.
    #[test]
    fn relay_mix() {
        let m = Mix::parse("purchase=90,decline=5,timeout=1,retransmit=4")
            .unwrap()
            .for_relay();
        assert_eq!(m.weight(Kind::Purchase), 95);
        assert_eq!(m.weight(Kind::Timeout), 0);
        assert_eq!(m.total(), 100);
    }

    // Proves amounts end in the digits that pick the simulator's outcome.
    #[test]
    fn amounts_pick_outcomes() {
        for seq in [0, 1, 2, 8999, 9000, 123_457] {
            assert_eq!(amount_minor(Kind::Purchase, seq) % 100, 0);
            assert_eq!(amount_minor(Kind::Timeout, seq) % 100, 91);
            let d = amount_minor(Kind::Decline, seq) % 100;
            assert!(d == 51 || d == 5);
            assert!(amount_minor(Kind::Timeout, seq) >= 10_000);
        }
        assert_eq!(
            expected_code(Kind::Decline, 10_051, None).as_deref(),
            Some("51")
        );
        assert_eq!(
            expected_code(Kind::Decline, 10_005, None).as_deref(),
            Some("05")
        );
        assert_eq!(
            expected_code(Kind::Retransmit, 0, Some("00")).as_deref(),
            Some("00")
        );
    }
}
