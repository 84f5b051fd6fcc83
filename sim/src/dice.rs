//! The run's one source of choices: a PCG generator seeded by the run's seed. Every part
//! takes its own stream ([`Dice::fork`]), so that one part drawing more numbers does not
//! shift another's choices more than the scheduling already does.

use std::sync::{Arc, Mutex};

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// A shared, seeded generator.
#[derive(Debug, Clone)]
pub struct Dice(Arc<Mutex<Pcg64Mcg>>);

impl Dice {
    pub fn new(seed: u64) -> Dice {
        Dice(Arc::new(Mutex::new(Pcg64Mcg::seed_from_u64(seed))))
    }

    /// An independent stream for one part, named by `salt`.
    pub fn fork(&self, salt: u64) -> Dice {
        let seed = self.next() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Dice::new(seed)
    }

    fn next(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).next_u64()
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A number in `lo..=hi`.
    pub fn between(&self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True `permille` times in a thousand.
    pub fn chance(&self, permille: u64) -> bool {
        self.below(1_000) < permille
    }
}
