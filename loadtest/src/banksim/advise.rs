//! Messages the simulated bank starts: reversal advices (0420, repeated as 0421) sent on
//! command (`POST /advise/reversal/{rrn}`) on one of the connected bank links, and matched
//! to the switch's 0430 (docs/bank-protocol.md, "Messages the bank starts").
//!
//! Every connected link registers a [`Port`] for as long as it lives. On a byte stream the
//! advice is queued to the link's writer and its answer comes back through the link's
//! reader ([`Advisor::complete`]); on QUIC it goes on a stream the bank opens, and the
//! answer comes back on it or on a stream the switch opens.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::{Dialect, Frame, FrameCodec, Message};
use futures::StreamExt;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead};
use tracing::{info, warn};

use super::record::{Record, SentAdvice};
use super::rules::{self, network};

/// How long an advice waits for its acknowledgement.
pub const ADVICE_WAIT: Duration = Duration::from_secs(5);

/// How an advice reaches the switch on one link.
#[derive(Debug)]
pub(crate) enum Way {
    /// Queued to the writer of a TCP or TLS link (weak: the link owns its writer).
    Stream(mpsc::WeakSender<Frame>),
    /// A new bidirectional stream on a QUIC connection.
    Quic(quinn::Connection),
}

/// One connected bank link, as advices see it.
#[derive(Debug)]
pub(crate) struct Port {
    way: Way,
    /// The frame header of the last answer on this link: the TPDU routed to the switch.
    header: Mutex<Option<Bytes>>,
    /// DE32 the switch last sent on this link.
    acquirer_id: Mutex<Option<String>>,
    /// Whether the switch signed on here (and was answered 00).
    signed_on: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Port {
    /// Learns from a request the switch sent on this link, answered with `code`.
    pub(crate) fn observe(&self, request: &Message, request_header: &[u8], code: Option<&str>) {
        *lock(&self.header) = Some(rules::reply_header(request_header));
        if let Some(a) = request.get_str(32) {
            *lock(&self.acquirer_id) = Some(a.into_owned());
        }
        if request.mti().class() == 8 {
            match request.get_u64(70) {
                Some(network::SIGN_ON) => self
                    .signed_on
                    .store(code == Some(rules::code::APPROVED), Ordering::Relaxed),
                Some(network::SIGN_OFF) => self.signed_on.store(false, Ordering::Relaxed),
                _ => {}
            }
        }
    }
}

/// Removes its port from the registry when the link ends.
#[derive(Debug)]
pub(crate) struct Attached {
    advisor: Arc<Advisor>,
    id: u64,
    port: Arc<Port>,
}

impl Attached {
    pub(crate) fn port(&self) -> &Port {
        &self.port
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        lock(&self.advisor.ports).remove(&self.id);
    }
}

/// What `POST /advise/reversal/{rrn}` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdviceOutcome {
    /// The switch answered 0430 with DE39 `00` within [`ADVICE_WAIT`].
    pub acknowledged: bool,
    /// DE39 of the 0430; None when none came in time.
    pub rc: Option<String>,
    pub mti: String,
    pub rrn: String,
    /// DE11 and DE7 as sent: what a repeat must carry again.
    pub stan: String,
    pub de7: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdviseError {
    #[error("no bank link is connected")]
    NoLink,
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("cannot encode the advice: {0}")]
    Encode(String),
}

/// An advice waiting on a byte-stream link, by (DE11, DE37); it is handed the 0430's DE39.
type Pending = HashMap<(String, String), oneshot::Sender<Option<String>>>;

/// The registry of connected links and the advices waiting for an answer.
#[derive(Debug)]
pub(crate) struct Advisor {
    dialect: &'static Dialect,
    record: Arc<Record>,
    /// Signs advices when the bank uses a MAC.
    mac: Option<codec::MacKey>,
    ports: Mutex<BTreeMap<u64, Arc<Port>>>,
    next_port: AtomicU64,
    /// Advices in flight on byte-stream links, by (DE11, DE37).
    pending: Mutex<Pending>,
    stan: AtomicU64,
}

/// Whether `s` is `len` ASCII digits.
fn digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

/// What a caller asks to advise (`POST /advise/reversal/{rrn}` and its query).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdviceRequest<'a> {
    pub rrn: &'a str,
    /// Send a 0421 (a repeat); then `stan` and `de7` are those of the advice it repeats.
    pub repeat: bool,
    /// DE11; a fresh one when None.
    pub stan: Option<&'a str>,
    /// DE7; now when None.
    pub de7: Option<&'a str>,
}

impl AdviceRequest<'_> {
    /// Checks it: an RRN of 1 to 12 alphanumerics, a six-digit STAN and a ten-digit DE7
    /// when given, and both for a repeat.
    pub fn validate(&self) -> Result<(), AdviseError> {
        let rrn = self.rrn;
        if rrn.is_empty() || rrn.len() > 12 || !rrn.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(AdviseError::Invalid("rrn"));
        }
        if self.repeat && (self.stan.is_none() || self.de7.is_none()) {
            return Err(AdviseError::Invalid(
                "repeat: it needs the STAN and DE7 it repeats",
            ));
        }
        if self.stan.is_some_and(|s| !digits(s, 6)) {
            return Err(AdviseError::Invalid("stan"));
        }
        if self.de7.is_some_and(|d| !digits(d, 10)) {
            return Err(AdviseError::Invalid("de7"));
        }
        Ok(())
    }
}

impl Advisor {
    pub(crate) fn new(
        dialect: &'static Dialect,
        record: Arc<Record>,
        mac: Option<codec::MacKey>,
    ) -> Self {
        Advisor {
            dialect,
            record,
            mac,
            ports: Mutex::new(BTreeMap::new()),
            next_port: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            stan: AtomicU64::new(0),
        }
    }

    /// Registers a connected link until the returned guard is dropped.
    pub(crate) fn attach(self: &Arc<Self>, way: Way) -> Attached {
        let id = self.next_port.fetch_add(1, Ordering::Relaxed);
        let port = Arc::new(Port {
            way,
            header: Mutex::new(None),
            acquirer_id: Mutex::new(None),
            signed_on: AtomicBool::new(false),
        });
        lock(&self.ports).insert(id, port.clone());
        Attached {
            advisor: self.clone(),
            id,
            port,
        }
    }

    /// Hands a response that came in on a byte-stream link to the advice it answers;
    /// false if it answers none.
    pub(crate) fn complete(&self, response: &Message) -> bool {
        let text = |n| response.get_str(n).map(|s| s.trim_end().to_owned());
        let (Some(stan), Some(rrn)) = (text(11), text(37)) else {
            return false;
        };
        match lock(&self.pending).remove(&(stan, rrn)) {
            Some(tx) => {
                let _ = tx.send(text(39));
                true
            }
            None => false,
        }
    }

    /// A signed-on link if there is one, else any connected link.
    fn pick(&self) -> Option<Arc<Port>> {
        let ports = lock(&self.ports);
        ports
            .values()
            .find(|p| p.signed_on.load(Ordering::Relaxed))
            .or_else(|| ports.values().next())
            .cloned()
    }

    fn fresh_stan(&self) -> String {
        let n = self.stan.fetch_add(1, Ordering::Relaxed);
        format!("{:06}", n % 999_999 + 1)
    }

    /// Sends the reversal advice `req` asks for, waits up to [`ADVICE_WAIT`] for the 0430,
    /// records the advice and, when it was acknowledged `00`, marks the approval reversed.
    pub(crate) async fn reversal(
        &self,
        req: AdviceRequest<'_>,
    ) -> Result<AdviceOutcome, AdviseError> {
        req.validate()?;
        let (rrn, repeat) = (req.rrn, req.repeat);
        let port = self.pick().ok_or(AdviseError::NoLink)?;
        let stan = req.stan.map_or_else(|| self.fresh_stan(), str::to_owned);
        let de7 = req.de7.map_or_else(
            || {
                let now = codec::clock::transmission(codec::clock::unix_now());
                String::from_utf8_lossy(&now).into_owned()
            },
            str::to_owned,
        );
        let acquirer = lock(&port.acquirer_id).clone();
        let message = rules::build_reversal_advice(
            self.dialect,
            repeat,
            &de7,
            &stan,
            acquirer.as_deref(),
            rrn,
        )
        .map_err(|e| AdviseError::Encode(e.to_string()))?;
        let message = match &self.mac {
            Some(key) => codec::builder::sign_encoded(self.dialect, message, key)
                .map_err(|e| AdviseError::Encode(e.to_string()))?,
            None => message,
        };
        let mti = if repeat { "0421" } else { "0420" };
        let header = lock(&port.header).clone().unwrap_or_default();
        let frame = Frame { header, message };
        let rc = match &port.way {
            Way::Stream(tx) => self.over_stream(tx, frame, &stan, rrn).await,
            Way::Quic(conn) => self.over_quic(conn, frame, &stan, rrn).await,
        };
        let acknowledged = rc.as_deref() == Some(rules::code::APPROVED);
        if acknowledged {
            self.record.mark_reversed(rrn);
        }
        info!(
            mti,
            rrn,
            stan,
            rc = rc.as_deref().unwrap_or("-"),
            "reversal advice sent"
        );
        self.record.advised(SentAdvice {
            mti: mti.into(),
            rrn: rrn.into(),
            stan: stan.clone(),
            de7: de7.clone(),
            response_code: rc.clone(),
        });
        Ok(AdviceOutcome {
            acknowledged,
            rc,
            mti: mti.into(),
            rrn: rrn.into(),
            stan,
            de7,
        })
    }

    async fn over_stream(
        &self,
        tx: &mpsc::WeakSender<Frame>,
        frame: Frame,
        stan: &str,
        rrn: &str,
    ) -> Option<String> {
        let key = (stan.to_owned(), rrn.to_owned());
        let answered = self.expect(&key);
        let sent = match tx.upgrade() {
            Some(tx) => tx.send(frame).await.is_ok(),
            None => false,
        };
        let rc = if sent {
            tokio::time::timeout(ADVICE_WAIT, answered)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        } else {
            warn!(rrn, "the bank link closed before the advice went out");
            None
        };
        lock(&self.pending).remove(&key);
        rc
    }

    /// Registers an advice waiting for its answer on a link's reader.
    fn expect(&self, key: &(String, String)) -> oneshot::Receiver<Option<String>> {
        let (done, answered) = oneshot::channel();
        lock(&self.pending).insert(key.clone(), done);
        answered
    }

    /// On QUIC the advice goes on a stream the bank opens. The answer may come back on
    /// that stream or on a stream the switch opens (as the switch does: it answers only
    /// network management on the bank's stream), which the link hands to [`Self::complete`].
    async fn over_quic(
        &self,
        conn: &quinn::Connection,
        frame: Frame,
        stan: &str,
        rrn: &str,
    ) -> Option<String> {
        let mut codec = FrameCodec::new(self.dialect.framing, self.dialect.max_message_len);
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).ok()?;
        let key = (stan.to_owned(), rrn.to_owned());
        let answered = self.expect(&key);
        let on_own_stream = async {
            let (mut send, recv) = conn.open_bi().await.ok()?;
            send.write_all(&buf).await.ok()?;
            let _ = send.finish();
            let mut frames = FramedRead::new(recv, codec);
            let answer = frames.next().await?.ok()?;
            let msg = self.dialect.decode(answer.message).ok()?;
            self.record.count(msg.mti());
            Some(msg.get_str(39).map(|s| s.into_owned()))
        };
        let on_other_stream = async { answered.await.ok() };
        let rc = tokio::time::timeout(ADVICE_WAIT, async {
            tokio::pin!(on_own_stream, on_other_stream);
            let mut own_done = false;
            loop {
                tokio::select! {
                    r = &mut on_own_stream, if !own_done => match r {
                        Some(rc) => return rc,
                        // Finished without an answer: it comes on another stream.
                        None => own_done = true,
                    },
                    r = &mut on_other_stream => return r.flatten(),
                }
            }
        })
        .await
        .ok()
        .flatten();
        lock(&self.pending).remove(&key);
        rc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{MessageBuilder, Mti, builtin};

    // Proves what a caller may ask to advise: RRNs of 1 to 12 alphanumerics, a six-digit
    // STAN and ten-digit DE7 when given, and both for a repeat.
    #[test]
    fn validation() {
        let req = |rrn, repeat, stan, de7| AdviceRequest {
            rrn,
            repeat,
            stan,
            de7,
        };
        let ok = |r: AdviceRequest<'_>| r.validate();
        let rrn = "000000000777";
        assert_eq!(ok(req(rrn, false, None, None)), Ok(()));
        for bad in ["", "0000000007770", "00000/000777"] {
            assert_eq!(
                ok(req(bad, false, None, None)),
                Err(AdviseError::Invalid("rrn"))
            );
        }
        let (stan, de7) = (Some("000001"), Some("1126120000"));
        assert_eq!(ok(req(rrn, true, stan, de7)), Ok(()));
        assert_eq!(ok(req(rrn, false, stan, de7)), Ok(()));
        assert_eq!(ok(req(rrn, false, stan, None)), Ok(()));
        assert!(ok(req(rrn, true, stan, None)).is_err());
        assert!(ok(req(rrn, true, None, de7)).is_err());
        assert_eq!(
            ok(req(rrn, true, Some("1"), de7)),
            Err(AdviseError::Invalid("stan"))
        );
        assert_eq!(
            ok(req(rrn, false, stan, Some("11261200"))),
            Err(AdviseError::Invalid("de7"))
        );
    }

    // Proves fresh STANs are six digits, never 000000, and distinct in sequence.
    #[test]
    fn fresh_stans() {
        let a = Advisor::new(builtin::bank_bcd(), Arc::new(Record::new()), None);
        let s: Vec<String> = (0..3).map(|_| a.fresh_stan()).collect();
        assert_eq!(s, ["000001", "000002", "000003"]);
    }

    // Proves an answer is handed to the advice waiting on its (DE11, DE37) and only to it,
    // and that a link learns its header, DE32 and sign-on from the switch's requests.
    #[tokio::test]
    async fn answers_matched_and_ports_learn() {
        let d = builtin::bank_bcd();
        let advisor = Arc::new(Advisor::new(d, Arc::new(Record::new()), None));
        assert!(advisor.pick().is_none());
        let (tx, _rx) = mpsc::channel(4);
        let attached = advisor.attach(Way::Stream(tx.downgrade()));
        let mut sign_on = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
        sign_on
            .set_str(7, "1126120000")
            .set_str(11, "000001")
            .set_str(32, "123450")
            .set_str(70, "001");
        let sign_on = d.decode(sign_on.encode().unwrap()).unwrap();
        attached
            .port()
            .observe(&sign_on, &[0x60, 0, 1, 0, 0], Some("00"));
        let port = advisor.pick().unwrap();
        assert!(port.signed_on.load(Ordering::Relaxed));
        assert_eq!(lock(&port.acquirer_id).as_deref(), Some("123450"));
        assert_eq!(lock(&port.header).as_deref(), Some(&[0x60, 0, 0, 0, 1][..]));

        let (done, answered) = oneshot::channel();
        lock(&advisor.pending).insert(("000007".into(), "000000000777".into()), done);
        let ack = |stan: &str| {
            let mut b = MessageBuilder::new(d, Mti::parse("0430").unwrap());
            b.set_str(11, stan)
                .set_str(37, "000000000777")
                .set_str(39, "00");
            d.decode(b.encode().unwrap()).unwrap()
        };
        assert!(!advisor.complete(&ack("000008")));
        assert!(advisor.complete(&ack("000007")));
        assert_eq!(answered.await.unwrap().as_deref(), Some("00"));
        assert!(!advisor.complete(&ack("000007")));

        drop(attached);
        assert!(advisor.pick().is_none());
    }
}
