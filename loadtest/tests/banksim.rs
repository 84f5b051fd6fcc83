//! The bank simulator over real sockets: bank links in bank-bcd-v1 and the HTTP record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::{Frame, FrameCodec, Message, MessageBuilder, Mti, builtin};
use futures::{SinkExt, StreamExt};
use loadtest::banksim::{self, Addrs, Behaviour, Config, Handle};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// The switch's TPDU: ID 0x60, destination 0x0001, source 0x0000.
const TPDU_OUT: [u8; 5] = [0x60, 0x00, 0x01, 0x00, 0x00];
/// The same with source and destination swapped, as every answer must carry.
const TPDU_BACK: [u8; 5] = [0x60, 0x00, 0x00, 0x00, 0x01];
const ACQUIRER: &str = "123456";
const DE7: &str = "1126120000";
/// Long enough for any answer on loopback; the withheld request must stay silent past it.
const NO_ANSWER_WAIT: Duration = Duration::from_millis(300);
const ANSWER_WAIT: Duration = Duration::from_secs(5);

type Link = Framed<TcpStream, FrameCodec>;

async fn start(config: Config) -> (Addrs, Handle) {
    banksim::serve(config).await.expect("simulator starts")
}

async fn connect(addrs: &Addrs) -> Link {
    let d = builtin::bank_bcd();
    let stream = TcpStream::connect(addrs.listen).await.unwrap();
    Framed::new(stream, FrameCodec::new(d.framing, d.max_message_len))
}

async fn send(link: &mut Link, message: Bytes) {
    let header = Bytes::from_static(&TPDU_OUT);
    link.send(Frame { header, message }).await.unwrap();
}

/// The next answer, if one comes within `wait`; checks its TPDU on the way.
async fn recv(link: &mut Link, wait: Duration) -> Option<Message> {
    let frame = tokio::time::timeout(wait, link.next())
        .await
        .ok()??
        .unwrap();
    assert_eq!(&frame.header[..], &TPDU_BACK, "TPDU not swapped");
    Some(builtin::bank_bcd().decode(frame.message).unwrap())
}

fn network(stan: &str, code: &str) -> Bytes {
    let mut b = MessageBuilder::new(builtin::bank_bcd(), Mti::NETWORK_REQUEST);
    b.set_str(7, DE7)
        .set_str(11, stan)
        .set_str(32, ACQUIRER)
        .set_str(70, code);
    b.encode().unwrap()
}

fn financial(mti: Mti, pc: &str, stan: &str, rrn: &str, amount: &str) -> Bytes {
    let mut b = MessageBuilder::new(builtin::bank_bcd(), mti);
    b.set_str(2, "4111111111111111")
        .set_str(3, pc)
        .set_str(4, amount)
        .set_str(7, DE7)
        .set_str(11, stan)
        .set_str(12, "120000")
        .set_str(13, "1126")
        .set_str(14, "2812")
        .set_str(32, ACQUIRER)
        .set_str(37, rrn)
        .set_str(41, "TERM0001")
        .set_str(42, "MERCHANT0000001")
        .set_str(49, "978");
    b.encode().unwrap()
}

fn purchase(stan: &str, rrn: &str, amount: &str) -> Bytes {
    financial(Mti::FINANCIAL_REQUEST, "000000", stan, rrn, amount)
}

/// A reversal as the switch sends it: the original's DE37 and DE90 naming the original.
fn reversal(mti: Mti, stan: &str, orig_stan: &str, orig_rrn: &str, amount: &str) -> Bytes {
    let de90 = format!("0200{orig_stan}{DE7}{ACQUIRER:0>11}{}", "0".repeat(11));
    let mut b = MessageBuilder::new(builtin::bank_bcd(), mti);
    b.set_str(2, "4111111111111111")
        .set_str(3, "000000")
        .set_str(4, amount)
        .set_str(7, DE7)
        .set_str(11, stan)
        .set_str(32, ACQUIRER)
        .set_str(37, orig_rrn)
        .set_str(41, "TERM0001")
        .set_str(42, "MERCHANT0000001")
        .set_str(49, "978")
        .set_str(90, &de90);
    b.encode().unwrap()
}

fn str_of(m: &Message, n: u8) -> String {
    m.get_str(n).map(|s| s.into_owned()).unwrap_or_default()
}

/// An HTTP request with no body to the control endpoint: (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn record(addrs: &Addrs) -> Value {
    let (status, body) = http(addrs.control, "GET", "/record").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

async fn sign_on(link: &mut Link) {
    send(link, network("000001", "001")).await;
    let r = recv(link, ANSWER_WAIT).await.expect("sign-on answered");
    assert_eq!(r.mti(), Mti::NETWORK_RESPONSE);
    assert_eq!(str_of(&r, 39), "00");
    assert_eq!(r.get_u64(70), Some(1));
    assert_eq!(str_of(&r, 11), "000001");
    assert_eq!(str_of(&r, 32), ACQUIRER);
    assert_eq!(str_of(&r, 7), DE7);
}

// Proves the contract's test cards end to end: 00 approves with DE38, 51 declines, 91 is
// never answered, a reversal marks the approval, and /record reports all of it.
#[tokio::test]
async fn test_cards_and_record() {
    let (addrs, handle) = start(Config::default()).await;
    let mut link = connect(&addrs).await;
    sign_on(&mut link).await;

    send(
        &mut link,
        purchase("000002", "000000000101", "000000001000"),
    )
    .await;
    let r = recv(&mut link, ANSWER_WAIT).await.expect("approval");
    assert_eq!(r.mti(), Mti::FINANCIAL_RESPONSE);
    assert_eq!(str_of(&r, 39), "00");
    let auth = str_of(&r, 38);
    assert!(auth.len() == 6 && auth.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        r.fields().collect::<Vec<_>>(),
        [3, 4, 7, 11, 37, 38, 39, 41, 42, 49]
    );
    assert_eq!(str_of(&r, 11), "000002");
    assert_eq!(str_of(&r, 37), "000000000101");
    assert!(!r.has(2), "the card number is never echoed");

    send(
        &mut link,
        purchase("000003", "000000000102", "000000001051"),
    )
    .await;
    let r = recv(&mut link, ANSWER_WAIT).await.expect("decline");
    assert_eq!(str_of(&r, 39), "51");
    assert!(!r.has(38));
    assert_eq!(str_of(&r, 37), "000000000102");

    send(
        &mut link,
        purchase("000004", "000000000103", "000000001091"),
    )
    .await;
    assert!(
        recv(&mut link, NO_ANSWER_WAIT).await.is_none(),
        "91 answered"
    );

    let rev = reversal(
        Mti::REVERSAL_REQUEST,
        "000005",
        "000002",
        "000000000101",
        "000000001000",
    );
    send(&mut link, rev).await;
    let r = recv(&mut link, ANSWER_WAIT).await.expect("reversal answer");
    assert_eq!(r.mti(), Mti::REVERSAL_RESPONSE);
    assert_eq!(str_of(&r, 39), "00");
    assert_eq!(str_of(&r, 11), "000005");

    let v = record(&addrs).await;
    let approved = v["approved"].as_array().unwrap();
    assert_eq!(approved.len(), 1);
    let a = &approved[0];
    assert_eq!(a["rrn"], "000000000101");
    assert_eq!(a["mti"], "0200");
    assert_eq!(a["processing_code"], "000000");
    assert_eq!(a["amount_minor"], 1000);
    assert_eq!(a["currency"], "978");
    assert_eq!(a["terminal"], "TERM0001");
    assert_eq!(a["merchant"], "MERCHANT0000001");
    assert_eq!(a["stan"], "000002");
    assert_eq!(a["auth_code"], auth.as_str());
    assert_eq!(a["reversed"], true);
    assert_eq!(v["declined"][0]["rrn"], "000000000102");
    assert_eq!(v["declined"][0]["response_code"], "51");
    assert_eq!(v["unanswered"][0]["rrn"], "000000000103");
    assert_eq!(v["reversals"]["000000000101"], 1);
    assert_eq!(v["requests_by_rrn_dupes"], 0);
    assert_eq!(v["counts_by_mti"]["0800"], 1);
    assert_eq!(v["counts_by_mti"]["0200"], 3);
    assert_eq!(v["counts_by_mti"]["0400"], 1);
    assert_eq!(v["totals"]["approved_amount_minor"], 1000);
    assert_eq!(v["totals"]["approved_count"], 1);
    assert_eq!(v["totals"]["net_amount_minor"], 0);
    assert!(!v.to_string().contains("4111111111111111"));
    handle.shutdown().await;
}

// Proves pipelined requests are answered independently: with 200 ms latency, fifty
// requests sent at once all come back in far less than fifty times the latency.
#[tokio::test]
async fn pipelined_requests_with_latency() {
    let config = Config {
        latency: Duration::from_millis(200),
        ..Config::default()
    };
    let (addrs, handle) = start(config).await;
    let mut link = connect(&addrs).await;
    let started = Instant::now();
    let mut expected = HashMap::new();
    for i in 0..50u32 {
        let stan = format!("{:06}", i + 10);
        let rrn = format!("{:012}", i + 1000);
        expected.insert(stan.clone(), rrn.clone());
        send(
            &mut link,
            purchase(&stan, &rrn, &format!("{:012}", 100 * (i + 1))),
        )
        .await;
    }
    for _ in 0..50 {
        let r = recv(&mut link, ANSWER_WAIT).await.expect("answer");
        assert_eq!(str_of(&r, 39), "00");
        let rrn = expected
            .remove(&str_of(&r, 11))
            .expect("answer matches a request");
        assert_eq!(str_of(&r, 37), rrn);
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "latency not applied");
    assert!(
        took < Duration::from_secs(3),
        "answers were serialised: {took:?}"
    );
    let v = record(&addrs).await;
    assert_eq!(v["totals"]["approved_count"], 50);
    handle.shutdown().await;
}

// Proves an undecodable message is ignored and the link keeps serving.
#[tokio::test]
async fn undecodable_message_ignored() {
    let (addrs, handle) = start(Config::default()).await;
    let mut link = connect(&addrs).await;
    send(&mut link, Bytes::from_static(b"\x02\x00garbage")).await;
    assert!(recv(&mut link, NO_ANSWER_WAIT).await.is_none());
    sign_on(&mut link).await;
    handle.shutdown().await;
}

// Proves a zero frame length closes that link, and only that link.
#[tokio::test]
async fn broken_framing_closes_link() {
    let (addrs, handle) = start(Config::default()).await;
    let mut other = connect(&addrs).await;
    let mut s = TcpStream::connect(addrs.listen).await.unwrap();
    s.write_all(&[0, 0]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(ANSWER_WAIT, s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "link not closed");
    sign_on(&mut other).await;
    handle.shutdown().await;
}

// Proves the fault switches: sign-on refused with 91, echo tests never answered.
#[tokio::test]
async fn fault_switches() {
    let config = Config {
        behaviour: Behaviour {
            ignore_echo: true,
            refuse_sign_on: true,
            ..Behaviour::default()
        },
        ..Config::default()
    };
    let (addrs, handle) = start(config).await;
    let mut link = connect(&addrs).await;
    send(&mut link, network("000001", "001")).await;
    let r = recv(&mut link, ANSWER_WAIT)
        .await
        .expect("sign-on answered");
    assert_eq!(str_of(&r, 39), "91");
    send(&mut link, network("000002", "301")).await;
    assert!(
        recv(&mut link, NO_ANSWER_WAIT).await.is_none(),
        "echo answered"
    );
    send(&mut link, network("000003", "002")).await;
    let r = recv(&mut link, ANSWER_WAIT)
        .await
        .expect("sign-off answered");
    assert_eq!(str_of(&r, 39), "00");
    handle.shutdown().await;
}

// Proves duplicates by RRN are counted and not approved twice, repeats of a reversal are
// counted, refunds and completions are approved without DE38, and reset clears it all.
#[tokio::test]
async fn duplicates_repeats_and_reset() {
    let (addrs, handle) = start(Config::default()).await;
    let mut link = connect(&addrs).await;
    let mut codes = Vec::new();
    for stan in ["000010", "000011"] {
        send(&mut link, purchase(stan, "000000000201", "000000002000")).await;
        let r = recv(&mut link, ANSWER_WAIT).await.expect("answer");
        codes.push(str_of(&r, 38));
    }
    assert_eq!(
        codes[0], codes[1],
        "a duplicate gets the first approval's code"
    );
    for (mti, stan) in [
        (Mti::REVERSAL_REQUEST, "000012"),
        (Mti::REVERSAL_REPEAT, "000013"),
        (Mti::REVERSAL_REPEAT, "000014"),
    ] {
        send(
            &mut link,
            reversal(mti, stan, "000010", "000000000201", "000000002000"),
        )
        .await;
        let r = recv(&mut link, ANSWER_WAIT).await.expect("reversal answer");
        assert_eq!(
            (r.mti(), str_of(&r, 39)),
            (Mti::REVERSAL_RESPONSE, "00".into())
        );
    }
    send(
        &mut link,
        reversal(
            Mti::REVERSAL_REQUEST,
            "000015",
            "000099",
            "000000000999",
            "000000000100",
        ),
    )
    .await;
    assert_eq!(
        str_of(&recv(&mut link, ANSWER_WAIT).await.unwrap(), 39),
        "00"
    );
    let refund = financial(
        Mti::FINANCIAL_REQUEST,
        "200000",
        "000016",
        "000000000202",
        "000000000551",
    );
    send(&mut link, refund).await;
    let r = recv(&mut link, ANSWER_WAIT).await.unwrap();
    assert_eq!((str_of(&r, 39).as_str(), r.has(38)), ("00", false));
    let completion = financial(
        Mti::COMPLETION_ADVICE,
        "000000",
        "000017",
        "000000000203",
        "000000000591",
    );
    send(&mut link, completion).await;
    let r = recv(&mut link, ANSWER_WAIT).await.unwrap();
    assert_eq!(r.mti(), Mti::COMPLETION_RESPONSE);
    assert_eq!((str_of(&r, 39).as_str(), r.has(38)), ("00", false));

    let v = record(&addrs).await;
    assert_eq!(v["requests_by_rrn_dupes"], 1);
    assert_eq!(v["approved"].as_array().unwrap().len(), 3);
    assert_eq!(v["approved"][0]["reversed"], true);
    assert_eq!(v["approved"][1]["auth_code"], Value::Null);
    assert_eq!(v["reversals"]["000000000201"], 3);
    assert_eq!(v["reversals"]["000000000999"], 1);
    assert_eq!(v["counts_by_mti"]["0401"], 2);

    assert_eq!(http(addrs.control, "GET", "/health").await.0, 200);
    assert_eq!(http(addrs.control, "POST", "/reset").await.0, 204);
    let v = record(&addrs).await;
    assert!(v["approved"].as_array().unwrap().is_empty());
    assert!(v["reversals"].as_object().unwrap().is_empty());
    assert!(v["counts_by_mti"].as_object().unwrap().is_empty());
    handle.shutdown().await;
}

// Proves the binary announces readiness with exactly one JSON line, serves, and exits
// cleanly on SIGTERM.
#[tokio::test]
async fn binary_ready_line_and_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bank-sim"))
        .args(["--latency-ms", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(ANSWER_WAIT, lines.next_line())
        .await
        .expect("ready in time")
        .unwrap()
        .expect("a line");
    let v: Value = serde_json::from_str(&line).unwrap();
    let addrs = Addrs {
        listen: v["listen"].as_str().unwrap().parse().unwrap(),
        control: v["control"].as_str().unwrap().parse().unwrap(),
    };
    assert_eq!(
        line,
        format!(
            r#"{{"event":"ready","listen":"{}","control":"{}"}}"#,
            addrs.listen, addrs.control
        )
    );
    let mut link = connect(&addrs).await;
    sign_on(&mut link).await;
    assert_eq!(http(addrs.control, "GET", "/health").await.0, 200);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(ANSWER_WAIT, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        lines.next_line().await.unwrap().is_none(),
        "only one stdout line"
    );
}

// Proves a bank that answers reversals as a real one does: a reversal of an approval it
// made gets 00, one naming an RRN it never saw gets the configured code (25) and is listed
// under `unknown_reversals` in the record.
#[tokio::test]
async fn reversal_of_an_unknown_rrn_answered_25() {
    let (addrs, handle) = start(Config {
        behaviour: Behaviour {
            unknown_reversal_code: Some(*b"25"),
            ..Behaviour::default()
        },
        ..Config::default()
    })
    .await;
    let mut link = connect(&addrs).await;
    send(
        &mut link,
        purchase("000020", "000000000301", "000000002000"),
    )
    .await;
    assert_eq!(
        str_of(&recv(&mut link, ANSWER_WAIT).await.expect("answer"), 39),
        "00"
    );
    for (orig_rrn, want) in [("000000000301", "00"), ("000000000399", "25")] {
        let rev = reversal(
            Mti::REVERSAL_REQUEST,
            "000021",
            "000020",
            orig_rrn,
            "000000002000",
        );
        send(&mut link, rev).await;
        let r = recv(&mut link, ANSWER_WAIT).await.expect("reversal answer");
        assert_eq!(
            (r.mti(), str_of(&r, 39)),
            (Mti::REVERSAL_RESPONSE, want.into()),
            "reversal of {orig_rrn}"
        );
    }
    let v = record(&addrs).await;
    assert_eq!(v["approved"][0]["reversed"], true);
    assert_eq!(v["unknown_reversals"]["000000000399"], 1);
    assert!(v["unknown_reversals"].get("000000000301").is_none());
    handle.shutdown().await;
}

// Proves a simulator with a MAC key drops (and counts) a request without a MAC or with a
// wrong one, answers a signed one with an answer whose MAC verifies, and under
// --tamper-mac-every sends a financial answer whose MAC fails.
#[tokio::test]
async fn mac_checked_and_signed() {
    let key = codec::MacKey::x9_19(&[0x3C; 16]);
    let config = Config {
        mac: Some(key.clone()),
        faults: banksim::Faults {
            tamper_mac_every: Some(2),
            ..Default::default()
        },
        ..Config::default()
    };
    let (addrs, handle) = start(config).await;
    let mut link = connect(&addrs).await;
    let d = builtin::bank_bcd();
    send(&mut link, network("000001", "001")).await;
    assert!(recv(&mut link, NO_ANSWER_WAIT).await.is_none(), "unsigned");
    let signed = codec::builder::sign_encoded(d, network("000002", "001"), &key).unwrap();
    let mut wrong = signed.to_vec();
    *wrong.last_mut().unwrap() ^= 0x80;
    send(&mut link, Bytes::from(wrong)).await;
    assert!(recv(&mut link, NO_ANSWER_WAIT).await.is_none(), "wrong MAC");
    send(&mut link, signed).await;
    let r = recv(&mut link, ANSWER_WAIT)
        .await
        .expect("signed sign-on answered");
    assert_eq!(r.check_mac(&key), codec::MacCheck::Valid);
    for (i, expect) in [codec::MacCheck::Valid, codec::MacCheck::Invalid]
        .into_iter()
        .enumerate()
    {
        let stan = format!("{:06}", 20 + i);
        let rrn = format!("{:012}", 2000 + i);
        let p = codec::builder::sign_encoded(d, purchase(&stan, &rrn, "000000001000"), &key);
        send(&mut link, p.unwrap()).await;
        let r = recv(&mut link, ANSWER_WAIT)
            .await
            .expect("purchase answered");
        assert_eq!(r.check_mac(&key), expect, "purchase {i}");
    }
    let v = record(&addrs).await;
    assert_eq!(v["mac_failures"], 2);
    assert_eq!(v["macs_tampered"], 1);
    handle.shutdown().await;
}
