//! The idempotency claims' contract, one set of test bodies run against Redis
//! ([`Limiter`]) and memory ([`MemClaims`], the simulation's), so that the simulation
//! cannot rely on a guarantee the real claims do not give.

use std::sync::Arc;

use switch::clock::SystemClock;
use switch::config::RateAlgorithm;
use switch::limiter::{Claim, ClaimRequest, Claims, KeyWrite, Limiter, Rate};
use switch::mem::MemClaims;

async fn both(algorithm: RateAlgorithm) -> [(&'static str, Arc<dyn Claims>); 2] {
    let prefix = format!("{}:", system_tests::unique_name("claims"));
    let redis = Limiter::connect(
        &system_tests::redis_url(),
        &[],
        prefix,
        algorithm,
        30_000,
        60_000,
        2_000,
    )
    .await
    .expect("redis");
    [
        (
            "memory",
            Arc::new(MemClaims::new(
                Arc::new(SystemClock),
                algorithm,
                30_000,
                60_000,
            )),
        ),
        ("redis", Arc::new(redis)),
    ]
}

fn request<'a>(
    key: &'a str,
    value: &'a str,
    merchant_rate: Rate,
    lookup_only: bool,
) -> ClaimRequest<'a> {
    ClaimRequest {
        key,
        merchant_id: key.split('|').next().unwrap_or(key),
        card_hash_hex: "-",
        merchant_rate,
        card_rate: Rate::new(0, 1, 0),
        claim_value: value,
        content_hex: "00ff",
        now_us: 1_000_000_000,
        lookup_only,
    }
}

// Proves a key is claimed once: the claim holds the claimant's value, an answer written
// replaces it, a release frees the key, and a lookup claims nothing.
#[tokio::test]
async fn a_key_is_claimed_once() {
    let free = Rate::new(0, 1, 0);
    for (name, claims) in both(RateAlgorithm::Gcra).await {
        let key = "M1|T1|000001|0301120000|0200";
        let lookup = claims
            .claim(&request(key, "P|1|7|00ff", free, true))
            .await
            .unwrap();
        assert_eq!(lookup, Claim::Unknown, "{name}: lookup");
        assert_eq!(
            claims
                .claim(&request(key, "P|1|7|00ff", free, false))
                .await
                .unwrap(),
            Claim::Claimed,
            "{name}"
        );
        assert_eq!(
            claims
                .claim(&request(key, "P|1|8|00ff", free, false))
                .await
                .unwrap(),
            Claim::Known("P|1|7|00ff".into()),
            "{name}: held"
        );
        let answer = "A|00|000000001000|123456|00ff".to_string();
        claims
            .write_keys(&[KeyWrite::Store(key.into(), answer.clone())])
            .await
            .unwrap();
        assert_eq!(
            claims.claim(&request(key, "x", free, false)).await.unwrap(),
            Claim::Known(answer),
            "{name}"
        );
        claims
            .write_keys(&[KeyWrite::Release(key.into())])
            .await
            .unwrap();
        assert_eq!(
            claims
                .claim(&request(key, "P|1|9|00ff", free, false))
                .await
                .unwrap(),
            Claim::Claimed,
            "{name}"
        );
    }
}

// Proves a claim left by a process that is gone is taken over only by naming it exactly.
#[tokio::test]
async fn a_dead_claim_is_taken_over_once() {
    let free = Rate::new(0, 1, 0);
    for (name, claims) in both(RateAlgorithm::Gcra).await {
        let key = "M2|T1|000001|0301120000|0200";
        claims
            .claim(&request(key, "P|1|7|00ff", free, false))
            .await
            .unwrap();
        assert!(
            !claims
                .take_over(key, "P|1|6|00ff", "P|1|8|00ff")
                .await
                .unwrap(),
            "{name}: wrong holder"
        );
        assert!(
            claims
                .take_over(key, "P|1|7|00ff", "P|1|8|00ff")
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            !claims
                .take_over(key, "P|1|7|00ff", "P|1|9|00ff")
                .await
                .unwrap(),
            "{name}: taken already"
        );
        let held = claims.claim(&request(key, "x", free, false)).await.unwrap();
        assert_eq!(held, Claim::Known("P|1|8|00ff".into()), "{name}");
    }
}

// Proves the merchant's rate (one a second, bursts of two) lets two requests of one
// instant through and refuses the third, keeping the refusal (65) as its key's answer,
// under both algorithms.
#[tokio::test]
async fn the_merchant_rate_refuses_beyond_its_burst() {
    for algorithm in [RateAlgorithm::Gcra, RateAlgorithm::TokenBucket] {
        let rate = Rate::new(1, 1_000_000, 2);
        for (name, claims) in both(algorithm).await {
            let keys = [
                "M3|T1|000001|x|0200",
                "M3|T1|000002|x|0200",
                "M3|T1|000003|x|0200",
            ];
            for k in &keys[..2] {
                assert_eq!(
                    claims.claim(&request(k, "P", rate, false)).await.unwrap(),
                    Claim::Claimed,
                    "{name} {algorithm:?}"
                );
            }
            let third = claims
                .claim(&request(keys[2], "P", rate, false))
                .await
                .unwrap();
            assert_eq!(third, Claim::Limited("merchant"), "{name} {algorithm:?}");
            let kept = claims
                .claim(&request(keys[2], "P", rate, false))
                .await
                .unwrap();
            assert_eq!(
                kept,
                Claim::Known("A|65|||00ff".into()),
                "{name} {algorithm:?}"
            );
        }
    }
}

// Proves claims asked at once decide as one-by-one claims would: each merchant's burst is
// granted exactly, without one merchant's claims counting against another's, and of two
// claims of one key exactly one owns it while the other is told the owner's value.
#[tokio::test]
async fn claims_asked_together_decide_as_one_by_one() {
    for algorithm in [RateAlgorithm::Gcra, RateAlgorithm::TokenBucket] {
        // Two merchants, each asking for more than its burst at once.
        const BURST: u32 = 5;
        const PER_MERCHANT: usize = 12;
        let rate = Rate::new(1, 1_000_000, BURST);
        for (name, claims) in both(algorithm).await {
            let keys: Vec<String> = (0..2 * PER_MERCHANT)
                .map(|i| format!("M{}|T1|{:06}|x|0200", 4 + i % 2, i))
                .collect();
            let requests: Vec<ClaimRequest> =
                keys.iter().map(|k| request(k, "P", rate, false)).collect();
            let got = futures::future::join_all(requests.iter().map(|r| claims.claim(r))).await;
            for merchant in ["M4|", "M5|"] {
                let count = |want: &Claim| {
                    keys.iter()
                        .zip(&got)
                        .filter(|(k, c)| {
                            k.starts_with(merchant) && c.as_ref().expect("claim") == want
                        })
                        .count()
                };
                assert_eq!(
                    (count(&Claim::Claimed), count(&Claim::Limited("merchant"))),
                    (BURST as usize, PER_MERCHANT - BURST as usize),
                    "{name} {algorithm:?} {merchant}"
                );
            }
            let free = Rate::new(0, 1, 0);
            let key = "M6|T1|000001|x|0200";
            let twice = futures::future::join(
                claims.claim(&request(key, "P|a", free, false)),
                claims.claim(&request(key, "P|b", free, false)),
            )
            .await;
            let owner_told = match (twice.0.unwrap(), twice.1.unwrap()) {
                (Claim::Claimed, Claim::Known(v)) => v == "P|a",
                (Claim::Known(v), Claim::Claimed) => v == "P|b",
                other => panic!("{name} {algorithm:?}: {other:?}"),
            };
            assert!(owner_told, "{name} {algorithm:?}: told the owner's value");
        }
    }
}

// Proves a claim still works when Redis has lost its scripts (a restart, `SCRIPT FLUSH`):
// the claim's EVALSHA meets NOSCRIPT, loads the script and calls again, and the key's
// state is the same as if nothing had been lost. A private Redis, so that the flush
// cannot reach other tests' calls.
#[tokio::test]
async fn a_claim_survives_redis_losing_its_scripts() {
    let redis = system_tests::PrivateRedis::start();
    let limiter = Limiter::connect(
        &redis.url(),
        &[],
        "noscript:".into(),
        RateAlgorithm::Gcra,
        30_000,
        60_000,
        2_000,
    )
    .await
    .expect("redis");
    let free = Rate::new(0, 1, 0);
    let claim = |key: &'static str, value: &'static str| {
        let limiter = &limiter;
        async move {
            limiter
                .claim(&request(key, value, free, false))
                .await
                .unwrap()
        }
    };
    let key = "M1|T1|000002|0301120000|0200";
    // A new server has never seen the script: the first call loads it.
    assert_eq!(claim(key, "P|1|7|00ff").await, Claim::Claimed);
    let flushed = system_tests::redis_cli(redis.port(), &["script", "flush"]);
    assert_eq!(flushed.as_deref().map(str::trim), Some("OK"));
    assert_eq!(
        claim(key, "P|1|8|00ff").await,
        Claim::Known("P|1|7|00ff".into()),
        "the claim made before the flush holds"
    );
    let other = "M1|T1|000003|0301120000|0200";
    assert_eq!(claim(other, "P|1|9|00ff").await, Claim::Claimed);
}
