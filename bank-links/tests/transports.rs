//! Bank links end to end over TCP, TLS and QUIC against the bank simulator, with
//! certificates generated at test time; wrong certificates; listen mode.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bank_links::{BankListener, LinkEndpoint, LinkState, StanAllocator, TransportKind};
use codec::{Frame, FrameCodec, MessageBuilder, Mti, builtin};
use common::*;
use futures::{SinkExt, StreamExt};
use loadtest::banksim::{Faults, Transport, rules};
use tokio_util::codec::{Encoder, Framed, FramedRead};
use tokio_util::sync::CancellationToken;

/// Requests sent at once in the round-trip tests.
const PIPELINED: u64 = 300;

async fn round_trips(kind: TransportKind) {
    let pki = Pki::generate("bank");
    let transport = match kind {
        TransportKind::Tcp => Transport::Tcp,
        _ => pki.sim_transport(kind, &pki.ca),
    };
    let (addrs, sim) = sim(transport, Faults::default()).await;
    let stans = Arc::new(StanAllocator::default());
    let pki_ref = (kind != TransportKind::Tcp).then_some(&pki);
    let link = dial(
        link_config("bank.0"),
        addrs.listen,
        connector(kind, pki_ref),
        stans.clone(),
    );
    ready(&link.handle).await;
    let outcomes = futures::future::join_all((0..PIPELINED).map(|i| {
        let (h, s) = (link.handle.clone(), stans.clone());
        async move { pay(&h, &s, i + 1, 1_000 + i * 100, Duration::from_secs(10)).await }
    }))
    .await;
    assert!(
        outcomes.iter().all(|o| rc(o).as_deref() == Some("00")),
        "{kind:?}: every request approved"
    );
    let snap = sim.record().snapshot();
    assert_eq!(snap.approved.len() as u64, PIPELINED);
    assert_eq!(snap.requests_by_rrn_dupes, 0);
    // Shutdown signs off: the bank sees a second 0800 and the link goes down.
    link.shutdown.cancel();
    eventually("sign-off reaches the bank", || {
        sim.record().snapshot().counts_by_mti.get("0800").copied() == Some(2)
    })
    .await;
    eventually("link down", || link.handle.state() == LinkState::Down).await;
    sim.shutdown().await;
}

// Proves requests and answers flow over plain TCP, pipelined, and shutdown signs off.
#[tokio::test]
async fn tcp_end_to_end() {
    round_trips(TransportKind::Tcp).await;
}

// Proves the same over TLS with mutual authentication and a pinned CA.
#[tokio::test]
async fn tls_end_to_end() {
    round_trips(TransportKind::Tls).await;
}

// Proves the same over QUIC (one stream per request/response, sign-on included).
#[tokio::test]
async fn quic_end_to_end() {
    round_trips(TransportKind::Quic).await;
}

/// Starts a link against a simulator whose certificates do not fit and proves it never
/// gets ready, however often it tries.
async fn refused(kind: TransportKind, sim_pki: &Pki, sim_client_ca: &str, switch_pki: &Pki) {
    let (addrs, sim) = sim(
        sim_pki.sim_transport(kind, sim_client_ca),
        Faults::default(),
    )
    .await;
    let stans = Arc::new(StanAllocator::default());
    let link = dial(
        link_config("bank.0"),
        addrs.listen,
        connector(kind, Some(switch_pki)),
        stans,
    );
    let h = link.handle.clone();
    let mut seen_ready = false;
    eventually("three refused attempts", || {
        seen_ready |= h.state() == LinkState::Ready;
        h.connect_failures() + h.connects() >= 3
    })
    .await;
    assert!(
        !seen_ready,
        "{kind:?}: link got ready with a wrong certificate"
    );
    assert_ne!(h.state(), LinkState::Ready);
    assert_eq!(sim.record().snapshot().counts_by_mti.get("0800"), None);
    link.shutdown.cancel();
    sim.shutdown().await;
}

// Proves a bank presenting a certificate from another CA is refused (TLS and QUIC).
#[tokio::test]
async fn wrong_bank_certificate_refused() {
    let good = Pki::generate("bank");
    let rogue = Pki::generate("rogue");
    for kind in [TransportKind::Tls, TransportKind::Quic] {
        refused(kind, &rogue, &good.ca, &good).await;
    }
}

// Proves a switch certificate the bank does not trust gets no link either.
#[tokio::test]
async fn untrusted_switch_certificate_refused() {
    let good = Pki::generate("bank");
    let other = Pki::generate("other");
    for kind in [TransportKind::Tls, TransportKind::Quic] {
        refused(kind, &good, &other.ca, &good).await;
    }
}

/// The bank's answer to a network management request.
fn answer_network(req: &Frame) -> Frame {
    let d = builtin::bank_bcd();
    let msg = d.decode(req.message.clone()).unwrap();
    Frame {
        header: rules::reply_header(&req.header),
        message: rules::build_response(d, &msg, "00", None).unwrap(),
    }
}

fn echo_request() -> Frame {
    let mut b = MessageBuilder::new(builtin::bank_bcd(), Mti::NETWORK_REQUEST);
    b.set(7, b"1126120000").set(11, b"900001").set(70, b"301");
    Frame {
        header: bytes::Bytes::from_static(&[0x60, 0, 0, 0, 1]),
        message: b.encode().unwrap(),
    }
}

// Proves listen mode over TCP: the bank dials the switch, the switch signs on, and the
// bank's own echo is answered.
#[tokio::test]
async fn listen_mode_tcp() {
    let stop = CancellationToken::new();
    let any = "127.0.0.1:0".parse().unwrap();
    let listener = BankListener::bind(any, TransportKind::Tcp, None, stop.clone())
        .await
        .unwrap();
    let link = spawn(
        link_config("bank.0"),
        LinkEndpoint::Listen(listener.clone()),
        Arc::new(StanAllocator::default()),
    );
    let d = builtin::bank_bcd();
    let stream = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    let mut bank = Framed::new(stream, FrameCodec::new(d.framing, d.max_message_len));
    let sign_on = bank.next().await.unwrap().unwrap();
    bank.send(answer_network(&sign_on)).await.unwrap();
    ready(&link.handle).await;
    bank.send(echo_request()).await.unwrap();
    let answer = bank.next().await.unwrap().unwrap();
    let m = d.decode(answer.message).unwrap();
    assert_eq!(m.mti(), Mti::NETWORK_RESPONSE);
    assert_eq!(m.get_str(39).unwrap(), "00");
    link.shutdown.cancel();
    stop.cancel();
}

// Proves listen mode over QUIC with mutual TLS: the switch opens a stream for its
// sign-on, and an echo the bank starts on its own stream is answered on that stream.
#[tokio::test]
async fn listen_mode_quic_bank_streams() {
    let pki = Pki::generate("bank");
    // The switch serves with the "server" certificate and trusts the same CA for the
    // bank's client certificate.
    let switch_side = bank_links::TlsMaterial::from_pem(
        pki.server.cert.as_bytes(),
        pki.server.key.as_bytes(),
        pki.ca.as_bytes(),
        BANK_NAME,
    )
    .unwrap();
    let stop = CancellationToken::new();
    let any = "127.0.0.1:0".parse().unwrap();
    let listener = BankListener::bind(any, TransportKind::Quic, Some(&switch_side), stop.clone())
        .await
        .unwrap();
    let link = spawn(
        link_config("bank.0"),
        LinkEndpoint::Listen(listener.clone()),
        Arc::new(StanAllocator::default()),
    );
    // The bank dials with its client certificate.
    let bank_side = pki.switch_material();
    let client = bank_links::transport::quic_client_config(&bank_side).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(client, listener.local_addr(), BANK_NAME)
        .unwrap()
        .await
        .unwrap();
    let d = builtin::bank_bcd();
    let mut codec = FrameCodec::new(d.framing, d.max_message_len);
    let (mut send, recv) = conn.accept_bi().await.unwrap();
    let sign_on = FramedRead::new(recv, codec).next().await.unwrap().unwrap();
    let mut buf = bytes::BytesMut::new();
    codec.encode(answer_network(&sign_on), &mut buf).unwrap();
    send.write_all(&buf).await.unwrap();
    send.finish().unwrap();
    ready(&link.handle).await;

    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    codec.encode(echo_request(), &mut buf).unwrap();
    send.write_all(&buf).await.unwrap();
    send.finish().unwrap();
    let mut answers = FramedRead::new(recv, codec);
    let answer = answers.next().await.unwrap().unwrap();
    let m = d.decode(answer.message).unwrap();
    assert_eq!(
        (m.mti(), m.get_str(11).unwrap().as_ref()),
        (Mti::NETWORK_RESPONSE, "900001")
    );
    assert!(
        answers.next().await.is_none(),
        "the stream ends after its answer"
    );
    link.shutdown.cancel();
    stop.cancel();
}

// Proves a bank address may be a host name: a link to `localhost:PORT` signs on and
// carries traffic, and one to a name that does not resolve keeps trying (each attempt
// resolves the name again and fails on its own) without ever getting ready.
#[tokio::test]
async fn host_name_addresses_resolve_on_every_connect() {
    let (addrs, sim) = sim(Transport::Tcp, Faults::default()).await;
    let stans = Arc::new(StanAllocator::default());
    let endpoint = LinkEndpoint::Connect {
        addr: format!("localhost:{}", addrs.listen.port()),
        connector: connector(TransportKind::Tcp, None),
    };
    let link = spawn(link_config("bank.0"), endpoint, stans.clone());
    ready(&link.handle).await;
    let outcome = pay(&link.handle, &stans, 1, 1_000, Duration::from_secs(10)).await;
    assert_eq!(rc(&outcome).as_deref(), Some("00"));
    link.shutdown.cancel();

    let endpoint = LinkEndpoint::Connect {
        addr: "bank.does-not-resolve.invalid:9".into(),
        connector: connector(TransportKind::Tcp, None),
    };
    let lost = spawn(link_config("bank.1"), endpoint, stans);
    let h = lost.handle.clone();
    eventually("three failed resolutions", || h.connect_failures() >= 3).await;
    assert_ne!(h.state(), LinkState::Ready);
    assert_eq!(h.connects(), 0);
    lost.shutdown.cancel();
    sim.shutdown().await;
}
