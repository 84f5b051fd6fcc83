//! Malformed frames and messages on the merchant listener: the documented answers, and
//! that the connection (or at least the process) survives; pipelining.

use std::collections::HashMap;
use std::time::Duration;

use system_tests::switchyard::{
    Client, World, WorldOptions, as_repeat, count_mti, next_stan, order_ref, rc, requests_for,
};

const VISA: &str = "4111111111111111";

/// A frame: 2-byte big-endian length, then the bytes.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = (message.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(message);
    f
}

/// Sends an echo and asserts the very next answer on the connection is its 0810 00.
async fn echo_is_next(c: &mut Client, what: &str) {
    let stan = next_stan();
    c.send(&c.network(&stan, "301")).await;
    let r = c
        .try_recv(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("{what}: the connection must stay open and answer an echo"));
    assert_eq!(
        r.mti().as_str(),
        "0810",
        "{what}: next answer is the echo's"
    );
    assert_eq!(r.get_str(11).as_deref(), Some(stan.as_str()), "{what}");
    assert_eq!(rc(&r), "00", "{what}");
}

// Proves a zero-length frame closes that connection (no answer) and the switch still
// serves a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_frame_closes_connection() {
    let world = World::new("mal_zero", WorldOptions::default());
    let sw = world.start_switch(1);
    let mut c = world.client(&sw).await;
    c.send_raw(&[0, 0]).await;
    assert!(
        c.closed(Duration::from_secs(30)).await,
        "a zero-length frame closes the connection without an answer"
    );
    let mut fresh = world.client(&sw).await;
    echo_is_next(&mut fresh, "new connection after a zero-length frame").await;
}

// Proves a length over the limit (0xFFFF, and 4097 with the default limit of 4096) closes
// the connection, and the switch still serves new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_length_closes_connection() {
    let world = World::new("mal_big", WorldOptions::default());
    let sw = world.start_switch(1);
    for len in [0xFFFFu16, 4097] {
        let mut c = world.client(&sw).await;
        let mut raw = len.to_be_bytes().to_vec();
        raw.extend_from_slice(b"0800");
        raw.extend_from_slice(&[0u8; 60]);
        c.send_raw(&raw).await;
        assert!(
            c.closed(Duration::from_secs(30)).await,
            "length {len} closes the connection"
        );
        let mut fresh = world.client(&sw).await;
        echo_is_next(&mut fresh, &format!("after length {len}")).await;
    }
}

// Proves a framed message without a readable MTI is dropped without an answer and the
// connection stays open: the next valid request is answered, and is the next answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_without_mti_is_dropped_connection_stays() {
    let world = World::new("mal_garbage", WorldOptions::default());
    let sw = world.start_switch(1);
    let mut c = world.client(&sw).await;
    let garbage: [&[u8]; 4] = [
        b"XY",
        b"ABCD\x00\x00\x00\x00\x00\x00\x00\x00",
        &[0xFF; 40],
        b"02",
    ];
    for g in garbage {
        c.send_raw(&frame(g)).await;
        echo_is_next(&mut c, &format!("after garbage {g:02X?}")).await;
    }
}

// Proves a message with a readable MTI and garbage after it is answered with its response
// MTI and 30 (no MAC: DE42 was not read), and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_mti_with_garbage_answers_30() {
    let world = World::new("mal_mti", WorldOptions::default());
    let sw = world.start_switch(1);
    let mut c = world.client(&sw).await;
    for (mti, resp) in [("0200", "0210"), ("0800", "0810"), ("0201", "0210")] {
        let mut msg = mti.as_bytes().to_vec();
        msg.extend_from_slice(b"\xF2\x3A\x01");
        c.send_raw(&frame(&msg)).await;
        let r = c
            .try_recv(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{mti} with garbage: an answer"));
        assert_eq!(r.mti().as_str(), resp, "{mti} with garbage: answer MTI");
        assert_eq!(rc(&r), "30", "{mti} with garbage: DE39");
        assert!(!r.has(64) && !r.has(128), "no DE42 read: no MAC");
        for n in [2u8, 3, 4, 11, 41, 42] {
            assert!(
                !r.has(n),
                "{mti} with garbage: nothing unread is echoed (DE{n})"
            );
        }
        echo_is_next(&mut c, &format!("after {mti} with garbage")).await;
    }
}

// Proves nothing already accepted is lost when a connection is closed for a bad frame: a
// purchase pipelined just before a zero-length frame (in one write, while the bank takes
// 500 ms) is still answered before the close, and reaches the bank once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_request_answered_before_bad_frame_close() {
    let world = World::new(
        "mal_accepted",
        WorldOptions {
            bank_args: vec![vec!["--latency-ms".into(), "500".into()], vec![]],
            bank_timeout_ms: 10_000,
            ..WorldOptions::default()
        },
    );
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let stan = next_stan();
    let req = c.purchase(&stan, 1000, VISA, &order_ref("ACCEPTED", &stan));
    let mut raw = frame(&c.encode(&req));
    raw.extend_from_slice(&[0, 0]);
    c.send_raw(&raw).await;
    let r = c
        .try_recv(Duration::from_secs(30))
        .await
        .expect("the accepted purchase is answered before the close");
    assert_eq!(r.get_str(11).as_deref(), Some(stan.as_str()));
    assert_eq!(rc(&r), "00");
    assert!(c.mac_ok(&r));
    assert!(
        c.closed(Duration::from_secs(30)).await,
        "then the connection closes"
    );
    let rrn = r.get_str(37).expect("DE37").into_owned();
    assert_eq!(world.banks[0].requests_for(&rrn).await, 1);
}

// Proves a request whose connection closes right after sending is still carried through:
// the bank gets it once, and a retransmission on a new connection gets its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_request_survives_merchant_disconnect() {
    let world = World::new(
        "mal_disconnect",
        WorldOptions {
            bank_args: vec![vec!["--latency-ms".into(), "500".into()], vec![]],
            bank_timeout_ms: 10_000,
            ..WorldOptions::default()
        },
    );
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let before = count_mti(&world.banks[0].record().await, "0200");
    let mut c = world.client(&sw).await;
    let stan = next_stan();
    let req = c.purchase(&stan, 1000, VISA, &order_ref("GONE", &stan));
    c.send(&req).await;
    drop(c);
    world.banks[0]
        .wait_record(
            "the purchase of the closed connection",
            Duration::from_secs(30),
            |r| count_mti(r, "0200") > before,
        )
        .await;
    let mut c = world.client(&sw).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = c.call(&as_repeat(&req)).await;
        if rc(&r) != "94" {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outcome never became known"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rc(&r), "00", "the accepted purchase was approved");
    let rrn = r.get_str(37).expect("DE37").into_owned();
    let rec = world.banks[0].record().await;
    assert_eq!(requests_for(&rec, &rrn), 1);
    assert_eq!(count_mti(&rec, "0200"), before + 1);
}

// Proves 50 purchases pipelined on one connection get 50 answers, matched by DE11, each
// approved with a valid MAC and its own RRN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_50_purchases() {
    let world = World::new("mal_pipe", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let before = count_mti(&world.banks[0].record().await, "0200");
    let mut c = world.client(&sw).await;
    let mut pending = HashMap::new();
    let mut raw = Vec::new();
    for _ in 0..50 {
        let stan = next_stan();
        let req = c.purchase(&stan, 1000, VISA, &order_ref("PIPE", &stan));
        raw.extend_from_slice(&frame(&c.encode(&req)));
        pending.insert(stan, req);
    }
    c.send_raw(&raw).await;
    let mut rrns = std::collections::HashSet::new();
    for _ in 0..50 {
        let r = c.recv().await;
        let stan = r.get_str(11).expect("DE11").into_owned();
        let req = pending
            .remove(&stan)
            .unwrap_or_else(|| panic!("an answer for an unknown or repeated STAN {stan}"));
        assert_eq!(
            r.get(7).map(|v| v.into_owned()),
            req.fields.get(&7).cloned()
        );
        assert_eq!(
            r.get(41).map(|v| v.into_owned()),
            req.fields.get(&41).cloned()
        );
        assert_eq!(rc(&r), "00", "STAN {stan}");
        assert!(c.mac_ok(&r), "STAN {stan}: MAC");
        assert!(rrns.insert(r.get_str(37).expect("DE37").into_owned()));
    }
    assert!(pending.is_empty());
    assert_eq!(
        count_mti(&world.banks[0].record().await, "0200"),
        before + 50
    );
}
