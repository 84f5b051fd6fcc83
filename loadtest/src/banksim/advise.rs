//! Messages the simulated bank starts: reversal advices (0420, repeated as 0421) sent on
//! command (`POST /advise/reversal/{rrn}`) on one of the connected bank links, and matched
//! to the switch's 0430 (docs/bank-protocol.md, "Messages the bank starts").
//!
//! Every connected link registers a [`Port`] for as long as it lives. On a byte stream the
//! advice is queued to the link's writer and its answer comes back through the link's
//! reader ([`Advisor::complete`]); on QUIC it goes on a stream of its own, which carries
//! the answer back.

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

/// The registry of connected links and the advices waiting for an answer.
#[derive(Debug)]
pub(crate) struct Advisor {
    dialect: &'static Dialect,
    record: Arc<Record>,
    ports: Mutex<BTreeMap<u64, Arc<Port>>>,
    next_port: AtomicU64,
    /// Advices in flight on byte-stream links, by (DE11, DE37).
    pending: Mutex<HashMap<(String, String), oneshot::Sender<Option<String>>>>,
    stan: AtomicU64,
}

/// Whether `s` is `len` ASCII digits.
fn digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks what a caller asks to advise: an RRN of 1 to 12 alphanumerics and, for a repeat,
/// a six-digit STAN and a ten-digit DE7.
pub fn validate(rrn: &str, repeat: Option<(&str, &str)>) -> Result<(), AdviseError> {
    if rrn.is_empty() || rrn.len() > 12 || !rrn.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AdviseError::Invalid("rrn"));
    }
    if let Some((stan, de7)) = repeat {
        if !digits(stan, 6) {
            return Err(AdviseError::Invalid("repeat_of_stan"));
        }
        if !digits(de7, 10) {
            return Err(AdviseError::Invalid("de7"));
        }
    }
    Ok(())
}

impl Advisor {
    pub(crate) fn new(dialect: &'static Dialect, record: Arc<Record>) -> Self {
        Advisor {
            dialect,
            record,
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

    /// Sends a reversal advice for `rrn` (a 0421 repeating DE11 and DE7 when `repeat` is
    /// given), waits up to [`ADVICE_WAIT`] for the 0430, records the advice and, when it
    /// was acknowledged `00`, marks the approval reversed.
    pub(crate) async fn reversal(
        &self,
        rrn: &str,
        repeat: Option<(&str, &str)>,
    ) -> Result<AdviceOutcome, AdviseError> {
        validate(rrn, repeat)?;
        let port = self.pick().ok_or(AdviseError::NoLink)?;
        let (stan, de7) = match repeat {
            Some((s, d)) => (s.to_owned(), d.to_owned()),
            None => (
                self.fresh_stan(),
                String::from_utf8_lossy(&codec::clock::transmission(codec::clock::unix_now()))
                    .into_owned(),
            ),
        };
        let acquirer = lock(&port.acquirer_id).clone();
        let message = rules::build_reversal_advice(
            self.dialect,
            repeat.is_some(),
            &de7,
            &stan,
            acquirer.as_deref(),
            rrn,
        )
        .map_err(|e| AdviseError::Encode(e.to_string()))?;
        let mti = if repeat.is_some() { "0421" } else { "0420" };
        let header = lock(&port.header).clone().unwrap_or_default();
        let frame = Frame { header, message };
        let rc = match &port.way {
            Way::Stream(tx) => self.over_stream(tx, frame, &stan, rrn).await,
            Way::Quic(conn) => self.over_quic(conn, frame).await,
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
        let (done, answered) = oneshot::channel();
        lock(&self.pending).insert(key.clone(), done);
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

    async fn over_quic(&self, conn: &quinn::Connection, frame: Frame) -> Option<String> {
        let mut codec = FrameCodec::new(self.dialect.framing, self.dialect.max_message_len);
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).ok()?;
        let exchange = async {
            let (mut send, recv) = conn.open_bi().await.ok()?;
            send.write_all(&buf).await.ok()?;
            let _ = send.finish();
            let mut frames = FramedRead::new(recv, codec);
            let answer = frames.next().await?.ok()?;
            let msg = self.dialect.decode(answer.message).ok()?;
            self.record.count(msg.mti());
            Some(msg.get_str(39).map(|s| s.into_owned()))
        };
        tokio::time::timeout(ADVICE_WAIT, exchange)
            .await
            .ok()
            .flatten()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{MessageBuilder, Mti, builtin};

    // Proves what a caller may ask to advise: RRNs of 1 to 12 alphanumerics, repeats with a
    // six-digit STAN and a ten-digit DE7.
    #[test]
    fn validation() {
        assert_eq!(validate("000000000777", None), Ok(()));
        assert_eq!(validate("", None), Err(AdviseError::Invalid("rrn")));
        assert_eq!(
            validate("0000000007770", None),
            Err(AdviseError::Invalid("rrn"))
        );
        assert_eq!(
            validate("00000/000777", None),
            Err(AdviseError::Invalid("rrn"))
        );
        assert_eq!(
            validate("000000000777", Some(("000001", "1126120000"))),
            Ok(())
        );
        assert_eq!(
            validate("000000000777", Some(("1", "1126120000"))),
            Err(AdviseError::Invalid("repeat_of_stan"))
        );
        assert_eq!(
            validate("000000000777", Some(("000001", "11261200"))),
            Err(AdviseError::Invalid("de7"))
        );
    }

    // Proves fresh STANs are six digits, never 000000, and distinct in sequence.
    #[test]
    fn fresh_stans() {
        let a = Advisor::new(builtin::bank_bcd(), Arc::new(Record::new()));
        let s: Vec<String> = (0..3).map(|_| a.fresh_stan()).collect();
        assert_eq!(s, ["000001", "000002", "000003"]);
    }

    // Proves an answer is handed to the advice waiting on its (DE11, DE37) and only to it,
    // and that a link learns its header, DE32 and sign-on from the switch's requests.
    #[tokio::test]
    async fn answers_matched_and_ports_learn() {
        let d = builtin::bank_bcd();
        let advisor = Arc::new(Advisor::new(d, Arc::new(Record::new())));
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
