//! The back office's operations beyond accounts and refunds (issue 12) against a running
//! switch, real PostgreSQL, Redis and the bank simulators: HTTPS on the admin listener.

use std::time::Duration;

use system_tests::office::{self, Office, PASSWORD};
use system_tests::switchyard::{WorldOptions, run_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Proves the admin listener speaks HTTPS with the configured certificate: a client
// trusting it gets /healthz and logs in, the console's session cookie is Secure; a
// plain-HTTP request to the port gets no HTTP answer and the listener keeps serving; a
// configured certificate file that does not exist stops the switch before it binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_over_tls() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let tag = system_tests::unique_name("admin_tls");
    let (cert, key) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "tls = {{ cert_pem = {:?}, key_pem = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let world = office::world("bo_tls", 1000, &tls, WorldOptions::default());
    let mut sw = world.start_switch(1);
    let addr = office::admin_addr(&mut sw);
    let https = Office::tls(addr, certified.cert.pem().as_bytes());

    let health = https.call("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    let (ok, _, err) = office::cli_add(&world, "watcher", "viewer", PASSWORD);
    assert!(ok, "{err}");
    assert_eq!(https.login("watcher", PASSWORD).await.status, 200);

    // Plain HTTP to the TLS port: the handshake fails, no HTTP answer comes back.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the switch closes a plain-HTTP connection");
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "no HTTP answer over plain TCP: {buf:?}"
    );
    let form = [
        ("username", "watcher"),
        ("password", PASSWORD),
        ("totp", ""),
    ];
    let signed_in = https
        .client
        .post(format!("https://{addr}/console/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        signed_in.status().as_u16(),
        303,
        "console sign-in redirects"
    );
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    drop(sw);

    // A missing certificate is a configuration error, named, before anything is bound.
    std::fs::remove_file(&cert).unwrap();
    let cfg = world.config.to_str().unwrap();
    let (status, out, err) = run_binary(
        "switchyard",
        &["check-config", "--config", cfg],
        &[("RUST_LOG", "warn")],
    );
    assert!(!status.success(), "{out}");
    assert!(err.contains("admin.tls.cert_pem"), "{err}");
}
