//! Black-box checks of what operators and security rely on: the TLS merchant listener,
//! the metrics endpoint, and card numbers never appearing in clear in the logs.

use std::sync::Arc;

use std::time::Duration;

use codec::{FrameCodec, builtin};
use futures::{SinkExt, StreamExt};
use system_tests::switchyard::{World, WorldOptions, http, next_stan};
use tokio_util::codec::Framed;

const ADMIN_TOKEN: &str = "test-viewer-token-0123456789";

fn tls_files(
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rcgen::CertifiedKey<rcgen::KeyPair>,
) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join(format!("{}.crt", system_tests::unique_name(name)));
    let key = dir.join(format!("{}.key", system_tests::unique_name(name)));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, certified)
}

// Proves a merchant can pay over TLS and over QUIC (certificate generated at test time),
// one request per QUIC stream, that /metrics
// counts the request, and that the switch's logs of the run hold no card number in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_metrics_and_masked_logs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key, certified) = tls_files("tls");
    let extra = format!(
        "\n[admin]\naddr = \"127.0.0.1:0\"\ntokens = [{{ token = \"{ADMIN_TOKEN}\", role = \"viewer\" }}]\n"
    );
    let opts = WorldOptions {
        extra_config: extra,
        ..Default::default()
    };
    let world = World::new("tls", opts);
    let tls_env = format!(
        "{{ addr = \"127.0.0.1:0\", cert_pem = \"{}\", key_pem = \"{}\" }}",
        cert.display(),
        key.display()
    );
    // Inline tables cannot come from the environment, so the TLS and QUIC listeners are
    // written into the file.
    let mut text = std::fs::read_to_string(&world.config).unwrap();
    text = text.replacen(
        "tcp = \"127.0.0.1:0\"",
        &format!("tcp = \"127.0.0.1:0\"\ntls = {tls_env}\nquic = {tls_env}"),
        1,
    );
    std::fs::write(&world.config, text).unwrap();
    let mut sw = world.start_switch(1);
    let ready = sw.process.stdout().seen().last().cloned().unwrap();
    let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let tls_addr: std::net::SocketAddr = v["merchant_tls"].as_str().unwrap().parse().unwrap();
    let admin_addr: std::net::SocketAddr = v["admin"].as_str().unwrap().parse().unwrap();
    let quic_addr: std::net::SocketAddr = v["merchant_quic"].as_str().unwrap().parse().unwrap();
    world.wait_links_ready(&sw).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let d = builtin::merchant();
    let mut framed = Framed::new(tls, FrameCodec::new(d.framing, 4096));
    let helper = world.client(&sw).await;
    let pan = "4111111111111111";
    let request = helper.encode(&helper.purchase(&next_stan(), 2500, pan, "TLS-ORDER-1"));
    framed.send(request).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(30), framed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let answer = d.decode(frame.message).unwrap();
    assert_eq!(
        answer.get_str(39).as_deref(),
        Some("00"),
        "approved over TLS"
    );
    assert!(helper.mac_ok(&answer));

    // Over QUIC: each request on a stream of its own, the answer on that stream.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"switchyard-h2h/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(quic_addr, "localhost")
        .unwrap()
        .await
        .expect("QUIC handshake");
    for (i, order) in ["QUIC-ORDER-1", "QUIC-ORDER-2"].iter().enumerate() {
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut w = tokio_util::codec::FramedWrite::new(send, FrameCodec::new(d.framing, 4096));
        let stan = next_stan();
        w.send(helper.encode(&helper.purchase(&stan, 3000 + i as u64, pan, order)))
            .await
            .unwrap();
        SinkExt::<bytes::Bytes>::close(&mut w).await.unwrap();
        let mut r = tokio_util::codec::FramedRead::new(recv, FrameCodec::new(d.framing, 4096));
        let frame = tokio::time::timeout(Duration::from_secs(30), r.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let answer = d.decode(frame.message).unwrap();
        assert_eq!(
            answer.get_str(39).as_deref(),
            Some("00"),
            "approved over QUIC"
        );
        assert_eq!(answer.get_str(11).as_deref(), Some(stan.as_str()));
        assert!(helper.mac_ok(&answer));
    }
    conn.close(0u32.into(), b"done");

    let metrics = http(admin_addr, "GET", "/metrics").await;
    assert!(
        metrics.contains("switchyard_requests_total{mti=\"0200\",rc=\"00\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_bank_round_trip_seconds_bucket"));

    sw.process.signal("TERM");
    sw.process
        .wait_timeout(Duration::from_secs(30))
        .expect("switch exits on SIGTERM");
    let logs = sw.process.stderr().drain().join("\n");
    assert!(
        logs.contains("request answered"),
        "the run logged its requests"
    );
    assert!(
        !logs.contains(pan),
        "a card number appears in clear in the logs"
    );
    assert!(
        !logs.contains("5500000000000004"),
        "a card number appears in clear in the logs"
    );
}
