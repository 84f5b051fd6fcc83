//! Bank links against a misbehaving bank simulator: drops mid-flight, silent echoes,
//! late answers, double answers, garbage, restarts, refused sign-on; failover between
//! links and the circuit breaker.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_links::tcp::LinkNotice;
use bank_links::{
    Bank, BankConfig, BreakerConfig, BreakerState, LinkState, Outcome, StanAllocator, TransportKind,
};
use codec::builtin;
use common::*;
use loadtest::banksim::{Behaviour, Config, Faults, Transport};

fn tcp() -> bank_links::Connector {
    connector(TransportKind::Tcp, None)
}

async fn pipelined(
    link: &bank_links::LinkHandle,
    stans: &Arc<StanAllocator>,
    first_seq: u64,
    n: u64,
    amount: impl Fn(u64) -> u64,
    timeout: Duration,
) -> Vec<Outcome> {
    futures::future::join_all((0..n).map(|i| {
        let (h, s, a) = (link.clone(), stans.clone(), amount(i));
        async move { pay(&h, &s, first_seq + i, a, timeout).await }
    }))
    .await
}

// Proves a connection dropped mid-flight fails its in-flight requests as LinkLost, the
// bank never sees any of them twice (nothing is resent), and the link comes back.
#[tokio::test]
async fn dropped_mid_flight_is_link_lost_never_resent() {
    let faults = Faults {
        drop_after: Some(10),
        ..Faults::default()
    };
    let (addrs, sim) = sim(Transport::Tcp, faults).await;
    let stans = Arc::new(StanAllocator::default());
    let link = dial(link_config("bank.0"), addrs.listen, tcp(), stans.clone());
    ready(&link.handle).await;
    let outcomes = pipelined(
        &link.handle,
        &stans,
        1,
        40,
        |_| 1_000,
        Duration::from_secs(10),
    )
    .await;
    let answered = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Answered(_)))
        .count();
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::LinkLost))
        .count();
    // Answers the bank had queued when it dropped may be lost with the connection.
    assert!(answered <= 10, "the bank answered at most ten: {answered}");
    assert_eq!(answered + lost, 40, "the rest are lost, not timed out");
    assert!(lost >= 30);
    eventually("reconnected", || {
        link.handle.connects() >= 2 && link.handle.state() == LinkState::Ready
    })
    .await;
    let snap = sim.record().snapshot();
    assert_eq!(snap.requests_by_rrn_dupes, 0, "no request was resent");
    assert!(snap.approved.len() <= 40);
    sim.shutdown().await;
}

// Proves failover: when one link of a bank drops, traffic picked by least in-flight
// keeps flowing on the other, and lost requests are only those in flight on the drop.
#[tokio::test]
async fn failover_to_second_link() {
    let (bad, bad_sim) = sim(
        Transport::Tcp,
        Faults {
            drop_after: Some(5),
            ..Faults::default()
        },
    )
    .await;
    let (good, good_sim) = sim(Transport::Tcp, Faults::default()).await;
    let stans = Arc::new(StanAllocator::default());
    let l0 = dial(link_config("bank.0"), bad.listen, tcp(), stans.clone());
    let l1 = dial(link_config("bank.1"), good.listen, tcp(), stans.clone());
    ready(&l0.handle).await;
    ready(&l1.handle).await;
    let bank = Bank::new(
        BankConfig {
            id: "bank".into(),
            dialect: builtin::bank_bcd(),
            request_timeout_ms: 5_000,
        },
        stans.clone(),
        vec![l0.handle.clone(), l1.handle.clone()],
        BreakerConfig::default(),
    );
    // Concurrency 4: each request goes to the ready link with fewest in flight.
    const TOTAL: u64 = 200;
    const CONCURRENCY: u64 = 4;
    let mut outcomes = Vec::new();
    for batch in 0..TOTAL / CONCURRENCY {
        let sends = (0..CONCURRENCY).map(|i| {
            let seq = batch * CONCURRENCY + i + 1;
            let link = bank.pick().expect("a ready link").clone();
            let stans = stans.clone();
            async move { pay(&link, &stans, seq, 1_000, Duration::from_secs(5)).await }
        });
        outcomes.extend(futures::future::join_all(sends).await);
    }
    let answered = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Answered(_)))
        .count() as u64;
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::LinkLost))
        .count() as u64;
    assert_eq!(answered + lost, TOTAL);
    assert!(
        lost >= 1,
        "the drop cost at least the request that triggered it"
    );
    // The faulty bank drops every connection after five answers and the link redials
    // it, so each of its connections may cost what was in flight on it, no more.
    let drops = l0.handle.connects();
    assert!(
        lost <= drops * CONCURRENCY,
        "only requests in flight on a drop are lost: {lost} over {drops} connections"
    );
    assert!(answered >= TOTAL / 2, "traffic kept flowing: {answered}");
    assert!(good_sim.record().snapshot().approved.len() as u64 >= TOTAL / 2);
    assert_eq!(good_sim.record().snapshot().requests_by_rrn_dupes, 0);
    assert_eq!(bad_sim.record().snapshot().requests_by_rrn_dupes, 0);
    bad_sim.shutdown().await;
    good_sim.shutdown().await;
}

// Proves a bank that stops answering echoes is declared down after the missed echoes,
// and the link reconnects (and signs on again) by itself.
#[tokio::test]
async fn silent_echoes_take_the_link_down() {
    let (addrs, sim) = sim_with(Config {
        behaviour: Behaviour {
            ignore_echo: true,
            refuse_sign_on: false,
            ..Behaviour::default()
        },
        ..Config::default()
    })
    .await;
    let mut cfg = link_config("bank.0");
    cfg.echo_idle_ms = 50;
    cfg.echo_timeout_ms = 50;
    cfg.echo_missed_max = 2;
    let link = dial(cfg, addrs.listen, tcp(), Arc::new(StanAllocator::default()));
    ready(&link.handle).await;
    eventually("declared down and reconnected", || {
        link.handle.connects() >= 2
    })
    .await;
    let snap = sim.record().snapshot();
    assert!(
        snap.counts_by_mti["0800"] >= 4,
        "sign-on and two echoes, then sign-on again"
    );
    sim.shutdown().await;
}

// Proves a late answer resolves its request as TimedOut and is reported Late, never as
// an answer; requests answered in time are unaffected.
#[tokio::test]
async fn late_answers_are_timeouts_then_late() {
    let faults = Faults {
        late: Some(Duration::from_millis(300)),
        ..Faults::default()
    };
    for kind in [TransportKind::Tcp, TransportKind::Quic] {
        let pki = Pki::generate("bank");
        let t = match kind {
            TransportKind::Tcp => Transport::Tcp,
            _ => pki.sim_transport(kind, &pki.ca),
        };
        let (addrs, sim) = sim(t, faults).await;
        let stans = Arc::new(StanAllocator::default());
        let c = connector(kind, (kind != TransportKind::Tcp).then_some(&pki));
        let mut link = dial(link_config("bank.0"), addrs.listen, c, stans.clone());
        ready(&link.handle).await;
        let amount = |i: u64| if i.is_multiple_of(2) { 10_77 } else { 10_00 };
        let outcomes = pipelined(
            &link.handle,
            &stans,
            1,
            20,
            amount,
            Duration::from_millis(100),
        )
        .await;
        for (i, o) in outcomes.iter().enumerate() {
            if i.is_multiple_of(2) {
                assert!(matches!(o, Outcome::TimedOut), "{kind:?} #{i}: {o:?}");
            } else {
                assert_eq!(rc(o).as_deref(), Some("00"), "{kind:?} #{i}");
            }
        }
        for _ in 0..10 {
            let n = tokio::time::timeout(WAIT, link.notices.recv())
                .await
                .unwrap();
            assert!(
                matches!(n, Some(LinkNotice::Late { .. })),
                "{kind:?}: {n:?}"
            );
        }
        assert_eq!(link.handle.state(), LinkState::Ready);
        sim.shutdown().await;
    }
}

// Proves an answer sent twice resolves its request once; the copy is reported Late.
#[tokio::test]
async fn double_answers_resolve_once() {
    let faults = Faults {
        answer_twice: true,
        ..Faults::default()
    };
    let (addrs, sim) = sim(Transport::Tcp, faults).await;
    let stans = Arc::new(StanAllocator::default());
    let mut link = dial(link_config("bank.0"), addrs.listen, tcp(), stans.clone());
    ready(&link.handle).await;
    let outcomes = pipelined(
        &link.handle,
        &stans,
        1,
        50,
        |_| 1_000,
        Duration::from_secs(10),
    )
    .await;
    assert!(outcomes.iter().all(|o| rc(o).as_deref() == Some("00")));
    for _ in 0..50 {
        let n = tokio::time::timeout(WAIT, link.notices.recv())
            .await
            .unwrap();
        assert!(matches!(n, Some(LinkNotice::Late { .. })), "{n:?}");
    }
    assert!(
        link.notices.try_recv().is_err(),
        "exactly one copy per request"
    );
    sim.shutdown().await;
}

// Proves undecodable frames are skipped: every request is still answered and the link
// stays on its first connection.
#[tokio::test]
async fn garbage_is_skipped() {
    let faults = Faults {
        garbage_every: Some(3),
        ..Faults::default()
    };
    let (addrs, sim) = sim(Transport::Tcp, faults).await;
    let stans = Arc::new(StanAllocator::default());
    let link = dial(link_config("bank.0"), addrs.listen, tcp(), stans.clone());
    ready(&link.handle).await;
    let outcomes = pipelined(
        &link.handle,
        &stans,
        1,
        30,
        |_| 1_000,
        Duration::from_secs(10),
    )
    .await;
    assert!(outcomes.iter().all(|o| rc(o).as_deref() == Some("00")));
    assert_eq!(link.handle.connects(), 1);
    assert_eq!(link.handle.state(), LinkState::Ready);
    sim.shutdown().await;
}

// Proves a bank restart is survived: the link notices, reconnects to the new process on
// the same port, signs on again and traffic flows.
#[tokio::test]
async fn bank_restart_reconnects() {
    let (addrs, sim1) = sim(Transport::Tcp, Faults::default()).await;
    let stans = Arc::new(StanAllocator::default());
    let link = dial(link_config("bank.0"), addrs.listen, tcp(), stans.clone());
    ready(&link.handle).await;
    assert_eq!(
        rc(&pay(&link.handle, &stans, 1, 1_000, Duration::from_secs(5)).await).as_deref(),
        Some("00")
    );
    sim1.shutdown().await;
    eventually("link notices", || link.handle.state() != LinkState::Ready).await;
    let (_, sim2) = sim_with(Config {
        listen: addrs.listen,
        ..Config::default()
    })
    .await;
    ready(&link.handle).await;
    assert_eq!(
        rc(&pay(&link.handle, &stans, 2, 1_000, Duration::from_secs(5)).await).as_deref(),
        Some("00")
    );
    assert_eq!(sim2.record().snapshot().approved.len(), 1);
    sim2.shutdown().await;
}

// Proves a refused sign-on keeps the link from ever getting ready, and it retries.
#[tokio::test]
async fn refused_sign_on_never_ready() {
    let (addrs, sim) = sim_with(Config {
        behaviour: Behaviour {
            ignore_echo: false,
            refuse_sign_on: true,
            ..Behaviour::default()
        },
        ..Config::default()
    })
    .await;
    let stans = Arc::new(StanAllocator::default());
    let link = dial(link_config("bank.0"), addrs.listen, tcp(), stans.clone());
    let h = link.handle.clone();
    let mut seen_ready = false;
    eventually("three sign-on attempts", || {
        seen_ready |= h.state() == LinkState::Ready;
        h.connects() >= 3
    })
    .await;
    assert!(!seen_ready);
    let out = pay(&h, &stans, 1, 1_000, Duration::from_secs(1)).await;
    assert!(
        matches!(out, Outcome::NotSent),
        "nothing is sent before sign-on, and the outcome says so"
    );
    assert!(sim.record().snapshot().approved.is_empty());
    sim.shutdown().await;
}

// Proves the breaker opens when a bank's timeouts pass the rate, refuses during the
// cool-down, lets one probe through after it, and closes when the probe is answered.
#[tokio::test]
async fn breaker_opens_under_timeouts_and_probes_back() {
    let (addrs, sim) = sim(Transport::Tcp, Faults::default()).await;
    let stans = Arc::new(StanAllocator::default());
    let link = dial(link_config("bank.0"), addrs.listen, tcp(), stans.clone());
    ready(&link.handle).await;
    let bank = Bank::new(
        BankConfig {
            id: "bank".into(),
            dialect: builtin::bank_bcd(),
            request_timeout_ms: 50,
        },
        stans.clone(),
        vec![link.handle.clone()],
        BreakerConfig {
            window_ms: 60_000,
            min_requests: 6,
            timeout_rate_permille: 500,
            open_ms: 1_000,
        },
    );
    let timeout = Duration::from_millis(bank.config.request_timeout_ms);
    // Amounts ending 91 are never answered by the simulator: each times out.
    let mut seq = 0;
    let mut sent = 0;
    while bank.allow(Instant::now()) {
        seq += 1;
        let amount = if seq % 4 == 0 { 10_00 } else { 10_91 };
        let out = pay(bank.pick().unwrap(), &stans, seq, amount, timeout).await;
        bank.record_outcome(Instant::now(), &out);
        sent += 1;
        assert!(sent <= 8, "breaker should have opened by now");
    }
    let opened_at = Instant::now();
    assert_eq!(bank.breaker_state(opened_at), BreakerState::Open);
    assert!(!bank.allow(opened_at));
    // Time is an input: ask as of the end of the cool-down instead of sleeping.
    let later = opened_at + Duration::from_millis(1_001);
    assert!(bank.allow(later), "one probe after the cool-down");
    assert!(!bank.allow(later), "only one");
    let out = pay(bank.pick().unwrap(), &stans, 100, 10_00, timeout * 20).await;
    bank.record_outcome(later, &out);
    assert_eq!(bank.breaker_state(later), BreakerState::Closed);
    assert!(bank.allow(later));
    sim.shutdown().await;
}
