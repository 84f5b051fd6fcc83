//! Helpers for the bank-links integration tests: certificates generated at test time,
//! the bank simulator in-process, links, and requests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bank_links::link::LinkConfig;
use bank_links::tcp::{Backoff, LinkNotice};
use bank_links::{
    Connector, LinkEndpoint, LinkHandle, MatchKey, Outcome, StanAllocator, TlsMaterial,
    TransportKind, spawn_link,
};
use bytes::Bytes;
use codec::{MessageBuilder, Mti, builtin};
use loadtest::banksim::{self, Addrs, Config, Faults, Handle, Transport};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen promptly on loopback.
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// The name in the simulator's certificate.
pub(crate) const BANK_NAME: &str = "bank.test";

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub(crate) struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA and the certificates it issued.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca: String,
    pub server: Pem,
    pub client: Pem,
}

impl Pki {
    pub(crate) fn generate(label: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{label} CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca).unwrap();
            Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        };
        Pki {
            server: leaf(BANK_NAME, ExtendedKeyUsagePurpose::ServerAuth),
            client: leaf("switch.test", ExtendedKeyUsagePurpose::ClientAuth),
            ca: ca.pem(),
        }
    }

    /// The switch's side: its client certificate, trusting only this CA.
    pub(crate) fn switch_material(&self) -> TlsMaterial {
        TlsMaterial::from_pem(
            self.client.cert.as_bytes(),
            self.client.key.as_bytes(),
            self.ca.as_bytes(),
            BANK_NAME,
        )
        .unwrap()
    }

    /// The simulator's side: its server certificate, requiring clients of `client_ca`.
    pub(crate) fn sim_transport(&self, kind: TransportKind, client_ca: &str) -> Transport {
        let quic = kind == TransportKind::Quic;
        let c = banksim::tls::server_config_pem(
            self.server.cert.as_bytes(),
            self.server.key.as_bytes(),
            Some(client_ca.as_bytes()),
            quic,
        )
        .unwrap();
        match kind {
            TransportKind::Tcp => Transport::Tcp,
            TransportKind::Tls => Transport::Tls(c),
            TransportKind::Quic => Transport::Quic(c),
        }
    }
}

/// Starts a simulator with this transport and these faults.
pub(crate) async fn sim(transport: Transport, faults: Faults) -> (Addrs, Handle) {
    sim_with(Config {
        transport,
        faults,
        ..Config::default()
    })
    .await
}

pub(crate) async fn sim_with(config: Config) -> (Addrs, Handle) {
    banksim::serve(config).await.expect("simulator starts")
}

pub(crate) fn link_config(name: &str) -> LinkConfig {
    let d = builtin::bank_bcd();
    LinkConfig {
        name: name.into(),
        dialect: d,
        acquirer_id: "123456".into(),
        header: Bytes::from_static(&[0x60, 0x00, 0x01, 0x00, 0x00]),
        sign_on_timeout_ms: 2_000,
        echo_idle_ms: 30_000,
        echo_timeout_ms: 5_000,
        echo_missed_max: 3,
        in_flight_max: 1024,
        mac: None,
    }
}

pub(crate) const FAST_BACKOFF: Backoff = Backoff {
    min_ms: 20,
    max_ms: 200,
};

/// A running link and what it reports.
pub(crate) struct TestLink {
    pub handle: LinkHandle,
    pub notices: mpsc::Receiver<LinkNotice>,
    pub shutdown: CancellationToken,
}

pub(crate) fn connector(kind: TransportKind, pki: Option<&Pki>) -> Connector {
    let m = pki.map(Pki::switch_material);
    Connector::new(kind, m.as_ref()).unwrap()
}

pub(crate) fn spawn(
    config: LinkConfig,
    endpoint: LinkEndpoint,
    stans: Arc<StanAllocator>,
) -> TestLink {
    let (tx, notices) = mpsc::channel(bank_links::tcp::LINK_EVENT_QUEUE_MAX);
    let shutdown = CancellationToken::new();
    let handle = spawn_link(config, endpoint, stans, FAST_BACKOFF, tx, shutdown.clone());
    TestLink {
        handle,
        notices,
        shutdown,
    }
}

pub(crate) fn dial(
    config: LinkConfig,
    addr: SocketAddr,
    connector: Connector,
    stans: Arc<StanAllocator>,
) -> TestLink {
    let addr = addr.to_string();
    spawn(config, LinkEndpoint::Connect { addr, connector }, stans)
}

/// Waits (bounded) until `cond` holds, checking as state changes propagate.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) async fn ready(link: &LinkHandle) {
    eventually(&format!("{} ready", link.name()), || {
        link.state() == bank_links::LinkState::Ready
    })
    .await;
}

/// A 0200 purchase for `amount` minor units with a fresh STAN and an RRN from `seq`.
pub(crate) fn purchase(stans: &StanAllocator, seq: u64, amount: u64) -> (MatchKey, Bytes) {
    let d = builtin::bank_bcd();
    let stan = stans.allocate().unwrap();
    let stan_s = bank_links::stan::format_stan(stan);
    let rrn = format!("{seq:012}");
    let amount_s = format!("{amount:012}");
    let mut b = MessageBuilder::new(d, Mti::FINANCIAL_REQUEST);
    b.set(2, b"4111111111111111")
        .set(3, b"000000")
        .set(4, amount_s.as_bytes())
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
        rrn: Some(rrn.as_bytes().try_into().unwrap()),
    };
    (key, b.encode().unwrap())
}

/// Sends a purchase on `link` and waits for its outcome, releasing the STAN.
pub(crate) async fn pay(
    link: &LinkHandle,
    stans: &StanAllocator,
    seq: u64,
    amount: u64,
    timeout: Duration,
) -> Outcome {
    let (key, msg) = purchase(stans, seq, amount);
    let out = link.send(key, msg, timeout).await.expect("link task runs");
    stans.release(key.stan);
    out
}

pub(crate) fn rc(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Answered(m) => m.get_str(39).map(|s| s.into_owned()),
        _ => None,
    }
}
