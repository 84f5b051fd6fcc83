//! The simulation's fixed seeds, run by the test command (scripts/simulate.sh runs more).

use sim::{Options, run_seed};

/// Seeds every run of the test command checks: a fixed set, so that a failure here is
/// reproduced by `SEED=<seed> scripts/simulate.sh 1`.
const FIXED_SEEDS: std::ops::Range<u64> = 1..101;

// Proves the whole switch keeps every invariant (docs/simulation.md) through the faults of
// the fixed seeds.
#[test]
fn fixed_seeds_keep_the_invariants() {
    let opts = Options::default();
    let mut failed = Vec::new();
    for seed in FIXED_SEEDS {
        let r = run_seed(seed, &opts);
        assert!(r.requests > 50, "seed {seed}: only {} requests", r.requests);
        if !r.violations.is_empty() {
            failed.push(format!("seed {seed}:\n  {}", r.violations.join("\n  ")));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

// Proves a seed names a run: the same seed twice gives the same answers at the same
// virtual times, and another seed does not.
#[test]
fn a_seed_reproduces_its_run() {
    let opts = Options::default();
    let (a, b) = (run_seed(7, &opts), run_seed(7, &opts));
    assert_eq!(a.digest, b.digest, "seed 7 twice");
    assert_eq!(a.violations, b.violations);
    assert_ne!(a.digest, run_seed(8, &opts).digest, "seeds 7 and 8");
}

// Proves the faults happen: across the fixed seeds the switch crashes, banks time out
// (answered 91) and identities are reused (answered 94).
#[test]
fn faults_happen() {
    let opts = Options::default();
    let (mut crashes, mut timeouts, mut reused) = (0, 0, 0);
    for seed in 1..11 {
        let r = run_seed(seed, &opts);
        crashes += r.crashes;
        timeouts += r.answers.get("91").copied().unwrap_or(0);
        reused += r.answers.get("94").copied().unwrap_or(0);
    }
    assert!(
        crashes > 0 && timeouts > 0 && reused > 0,
        "crashes {crashes}, 91s {timeouts}, 94s {reused}"
    );
}
