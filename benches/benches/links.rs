//! One bank link pair on loopback: the switch's link (the `Link` state machine in its
//! tokio shell) against the bank simulator, with requests pipelined (PIPELINE in flight).
//! Round trips per second over TCP, TLS (mutual, rustls/ring) and QUIC (quinn, one
//! stream per request), in the same run so they compare on the same machine state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_links::link::LinkConfig;
use bank_links::tcp::Backoff;
use bank_links::{
    Connector, LinkEndpoint, LinkHandle, LinkState, MatchKey, Outcome, StanAllocator, TlsMaterial,
    TransportKind, spawn_link,
};
use bytes::Bytes;
use codec::{MessageBuilder, Mti, builtin};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use loadtest::banksim::{self, Config, Transport};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

/// Requests in flight on the link at once.
const PIPELINE: usize = 256;
/// The name in the simulator's certificate.
const BANK_NAME: &str = "bank.bench";
/// How long set-up may take before the bench gives up.
const READY_WAIT: Duration = Duration::from_secs(30);

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let leaf = |name: &str, usage| {
        let mut p = CertificateParams::new(vec![name.to_string()]).expect("params");
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("leaf");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf(BANK_NAME, ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("switch.bench", ExtendedKeyUsagePurpose::ClientAuth),
        ca: ca.pem(),
    }
}

struct Pair {
    link: LinkHandle,
    stans: Arc<StanAllocator>,
    stop: CancellationToken,
    sim: banksim::Handle,
}

async fn pair(kind: TransportKind, pki: &Pki) -> Pair {
    let sim_tls = || {
        banksim::tls::server_config_pem(
            pki.server.0.as_bytes(),
            pki.server.1.as_bytes(),
            Some(pki.ca.as_bytes()),
            kind == TransportKind::Quic,
        )
        .expect("sim TLS")
    };
    let transport = match kind {
        TransportKind::Tcp => Transport::Tcp,
        TransportKind::Tls => Transport::Tls(sim_tls()),
        TransportKind::Quic => Transport::Quic(sim_tls()),
    };
    let (addrs, sim) = banksim::serve(Config {
        transport,
        ..Config::default()
    })
    .await
    .expect("simulator");
    let material = TlsMaterial::from_pem(
        pki.client.0.as_bytes(),
        pki.client.1.as_bytes(),
        pki.ca.as_bytes(),
        BANK_NAME,
    )
    .expect("switch TLS");
    let connector = Connector::new(kind, Some(&material)).expect("connector");
    let d = builtin::bank_bcd();
    let config = LinkConfig {
        name: format!("bench-{kind:?}"),
        dialect: d,
        acquirer_id: "123456".into(),
        header: Bytes::from_static(&[0x60, 0x00, 0x01, 0x00, 0x00]),
        sign_on_timeout_ms: 5_000,
        echo_idle_ms: 60_000,
        echo_timeout_ms: 5_000,
        echo_missed_max: 3,
        in_flight_max: PIPELINE * 2,
        mac: None,
    };
    let stans = Arc::new(StanAllocator::default());
    let (notices, mut notice_rx) = tokio::sync::mpsc::channel(1024);
    // Late answers cannot happen here; drain the channel anyway so it never fills.
    tokio::spawn(async move { while notice_rx.recv().await.is_some() {} });
    let stop = CancellationToken::new();
    let link = spawn_link(
        config,
        LinkEndpoint::Connect {
            addr: addrs.listen.to_string(),
            connector,
        },
        stans.clone(),
        Backoff {
            min_ms: 50,
            max_ms: 500,
        },
        notices,
        stop.clone(),
    );
    let deadline = Instant::now() + READY_WAIT;
    while link.state() != LinkState::Ready {
        assert!(Instant::now() < deadline, "{kind:?} link never got ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Pair {
        link,
        stans,
        stop,
        sim,
    }
}

fn purchase(stans: &StanAllocator, seq: u64) -> (MatchKey, Bytes) {
    let stan = stans.allocate().expect("STAN");
    let stan_s = bank_links::stan::format_stan(stan);
    let rrn = format!("{:012}", seq % 1_000_000_000_000);
    let mut b = MessageBuilder::new(builtin::bank_bcd(), Mti::FINANCIAL_REQUEST);
    b.set(2, b"4111111111111111")
        .set(3, b"000000")
        .set(4, b"000000001000")
        .set(7, b"1126120000")
        .set(11, &stan_s)
        .set(32, b"123456")
        .set(37, rrn.as_bytes())
        .set(41, b"TERM0001")
        .set(42, b"MERCHANT0000001")
        .set(49, b"978");
    let key = MatchKey {
        class: 2,
        stan,
        rrn: Some(rrn.as_bytes().try_into().expect("12 digits")),
    };
    (key, b.encode().expect("encode"))
}

/// Sends `n` requests with PIPELINE in flight; the time they took.
async fn run(p: &Pair, first: u64, n: u64) -> Duration {
    let started = Instant::now();
    let mut answered = 0u64;
    let mut replies = futures::stream::iter(first..first + n)
        .map(|seq| {
            let (link, stans) = (p.link.clone(), p.stans.clone());
            async move {
                let (key, msg) = purchase(&stans, seq);
                let out = link.send(key, msg, Duration::from_secs(30)).await;
                stans.release(key.stan);
                out
            }
        })
        .buffer_unordered(PIPELINE);
    while let Some(out) = replies.next().await {
        if matches!(out, Ok(Outcome::Answered(_))) {
            answered += 1;
        }
    }
    assert_eq!(answered, n, "every request answered");
    started.elapsed()
}

fn links(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = pki();
    let mut group = c.benchmark_group("link_round_trips");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for kind in [TransportKind::Tcp, TransportKind::Tls, TransportKind::Quic] {
        let p = rt.block_on(pair(kind, &pki));
        let mut seq = 0u64;
        group.bench_function(format!("{kind:?}").to_lowercase(), |b| {
            b.iter_custom(|iters| {
                let first = seq;
                seq += iters;
                rt.block_on(run(&p, first, iters))
            })
        });
        p.stop.cancel();
        rt.block_on(p.sim.shutdown());
    }
    group.finish();
}

criterion_group!(benches, links);
criterion_main!(benches);
