//! A pipelined merchant client: one TCP connection, a writer task and a reader task.
//!
//! Requests go out as soon as they are handed over; answers come back in completion
//! order and are matched to their request by (DE11, DE7, DE41), as the merchant contract
//! says. Each answer carries the instant its request was *due* (which the caller names),
//! so a load generator measures latency from the schedule, not from the socket write.
//!
//! The same client speaks the bank dialect (with its TPDU) for the relay ceiling run: the
//! framing and the match key come from the dialect.
//!
//! Message builders for the merchant contract live here too: [`purchase`], [`network`],
//! [`repeat_of`], and [`luhn_complete`] for test card numbers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use codec::{Dialect, Frame, FrameCodec, MacKey, Message, Mti, OwnedMessage};
use futures::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Frames queued for the writer of one connection; senders wait beyond it.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Requests of one connection awaiting their answer at most; beyond it `send` refuses.
pub const PENDING_MAX: usize = 200_000;
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The TPDU the ceiling run puts on bank-dialect frames (ID 0x60, destination 0x0001).
pub const TPDU: [u8; 5] = [0x60, 0x00, 0x01, 0x00, 0x00];
/// Response code of an approval.
pub const APPROVED: &str = "00";

/// Network management codes (DE70).
pub mod network_code {
    pub const SIGN_ON: &str = "001";
    pub const SIGN_OFF: &str = "002";
    pub const ECHO: &str = "301";
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("the connection is closed")]
    Closed,
    #[error("{0} requests already await an answer on this connection")]
    TooManyPending(usize),
    #[error("a request with the same (DE11, DE7, DE41) is already in flight")]
    DuplicateKey,
    #[error("cannot encode: {0}")]
    Encode(#[from] codec::EncodeError),
    #[error("the request lacks DE{0}, needed to match its answer")]
    MissingKeyElement(u8),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// What matches an answer to its request: DE11, DE7 and DE41 (trailing spaces trimmed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MatchKey {
    pub stan: String,
    pub de7: String,
    pub terminal: String,
}

impl MatchKey {
    /// The key of a decoded message; None when one of the three is missing.
    pub fn of_message(m: &Message) -> Option<MatchKey> {
        Some(MatchKey {
            stan: m.get_str(11)?.into_owned(),
            de7: m.get_str(7)?.into_owned(),
            terminal: m.get_str(41)?.trim_end().to_owned(),
        })
    }

    /// The key of a message about to be sent.
    pub fn of_owned(m: &OwnedMessage) -> Result<MatchKey, ClientError> {
        let text = |n: u8| {
            m.fields
                .get(&n)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .ok_or(ClientError::MissingKeyElement(n))
        };
        Ok(MatchKey {
            stan: text(11)?,
            de7: text(7)?,
            terminal: text(41)?.trim_end().to_owned(),
        })
    }
}

/// An answer with the request's tag and timing.
#[derive(Debug)]
pub struct Answer<T> {
    pub tag: T,
    /// When the request was due (the caller's schedule).
    pub due: Instant,
    pub received: Instant,
    pub message: Message,
}

impl<T> Answer<T> {
    /// From due to received.
    pub fn latency(&self) -> Duration {
        self.received.saturating_duration_since(self.due)
    }

    /// DE39, or "--" when it is missing.
    pub fn code(&self) -> String {
        self.message
            .get_str(39)
            .map(|c| c.into_owned())
            .unwrap_or_else(|| "--".into())
    }
}

struct Pending<T> {
    tag: T,
    due: Instant,
}

struct Shared<T> {
    pending: Mutex<HashMap<MatchKey, Pending<T>>>,
    /// Answers that matched nothing in flight (or did not decode).
    unmatched: AtomicU64,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<MatchKey, Pending<T>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One pipelined connection. Answers arrive on the receiver returned by [`Client::connect`].
pub struct Client<T> {
    dialect: &'static Dialect,
    header: Bytes,
    tx: mpsc::Sender<Frame>,
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("dialect", &self.dialect.name)
            .field("pending", &self.shared.lock().len())
            .finish()
    }
}

impl<T: Send + 'static> Client<T> {
    /// Connects and starts the writer and reader tasks. The reader ends (and the receiver
    /// yields None) when the peer closes the connection or the framing breaks.
    pub async fn connect(
        addr: SocketAddr,
        dialect: &'static Dialect,
    ) -> Result<(Client<T>, mpsc::UnboundedReceiver<Answer<T>>), ClientError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(addr))?
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let codec = FrameCodec::new(dialect.framing, dialect.max_message_len);
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
        tokio::spawn(write_loop(FramedWrite::new(wr, codec), rx));
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            unmatched: AtomicU64::new(0),
        });
        // Unbounded, yet bounded in practice: at most PENDING_MAX answers can be owed.
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(
            FramedRead::new(rd, codec),
            dialect,
            shared.clone(),
            answers_tx,
        ));
        let header = if dialect.framing.header_len == 0 {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&TPDU[..usize::from(dialect.framing.header_len)])
        };
        Ok((
            Client {
                dialect,
                header,
                tx,
                shared,
            },
            answers_rx,
        ))
    }

    pub fn dialect(&self) -> &'static Dialect {
        self.dialect
    }

    /// Sends an encoded message whose answer will carry `key`; the answer reports `due`.
    pub async fn send_bytes(
        &self,
        message: Bytes,
        key: MatchKey,
        due: Instant,
        tag: T,
    ) -> Result<(), ClientError> {
        {
            let mut p = self.shared.lock();
            if p.len() >= PENDING_MAX {
                return Err(ClientError::TooManyPending(p.len()));
            }
            if p.contains_key(&key) {
                return Err(ClientError::DuplicateKey);
            }
            p.insert(key.clone(), Pending { tag, due });
        }
        let frame = Frame {
            header: self.header.clone(),
            message,
        };
        if self.tx.send(frame).await.is_err() {
            self.shared.lock().remove(&key);
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Encodes (with `mac` when given) and sends.
    pub async fn send(
        &self,
        msg: &OwnedMessage,
        mac: Option<&MacKey>,
        due: Instant,
        tag: T,
    ) -> Result<(), ClientError> {
        let key = MatchKey::of_owned(msg)?;
        let bytes = match mac {
            Some(k) => msg.encode_with_mac(self.dialect, k)?,
            None => msg.encode(self.dialect)?,
        };
        self.send_bytes(bytes, key, due, tag).await
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().len()
    }

    /// Answers that matched no request in flight.
    pub fn unmatched(&self) -> u64 {
        self.shared.unmatched.load(Ordering::Relaxed)
    }

    /// Gives up on every request still awaiting an answer and returns their tags.
    pub fn abandon_pending(&self) -> Vec<(MatchKey, T)> {
        self.shared
            .lock()
            .drain()
            .map(|(k, p)| (k, p.tag))
            .collect()
    }
}

async fn write_loop(
    mut writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        // Batch whatever else is queued into one flush.
        let mut res = writer.feed(frame).await;
        while res.is_ok() {
            match rx.try_recv() {
                Ok(frame) => res = writer.feed(frame).await,
                Err(_) => break,
            }
        }
        if res.and(SinkExt::<Frame>::flush(&mut writer).await).is_err() {
            return;
        }
    }
    let _ = SinkExt::<Frame>::close(&mut writer).await;
}

async fn read_loop<T>(
    mut reader: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    dialect: &'static Dialect,
    shared: Arc<Shared<T>>,
    answers: mpsc::UnboundedSender<Answer<T>>,
) {
    while let Some(Ok(frame)) = reader.next().await {
        let received = Instant::now();
        let Ok(message) = dialect.decode(frame.message) else {
            shared.unmatched.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let pending = MatchKey::of_message(&message).and_then(|k| shared.lock().remove(&k));
        let Some(p) = pending else {
            shared.unmatched.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let answer = Answer {
            tag: p.tag,
            due: p.due,
            received,
            message,
        };
        if answers.send(answer).is_err() {
            return;
        }
    }
}

/// A merchant's identity on the wire.
#[derive(Debug, Clone)]
pub struct Merchant {
    /// DE42.
    pub id: String,
    pub key: MacKey,
}

impl Merchant {
    /// From the id and the hex key `switchyard merchant add` printed.
    pub fn new(id: &str, key_hex: &str) -> Option<Merchant> {
        Some(Merchant {
            id: id.to_owned(),
            key: MacKey::from_hex(key_hex)?,
        })
    }
}

/// The parts of a purchase that vary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseSpec {
    pub stan: u32,
    /// DE7, MMDDhhmmss.
    pub de7: [u8; 10],
    /// DE41 (at most 8 characters).
    pub terminal: String,
    pub pan: String,
    pub amount_minor: u64,
    /// YYMM.
    pub expiry: String,
    /// DE48 `OR`.
    pub order: String,
    /// DE49, ISO 4217 numeric.
    pub currency: String,
}

/// DE7 for the current wall-clock second.
pub fn de7_now() -> [u8; 10] {
    codec::clock::transmission(codec::clock::unix_now())
}

/// DE11 as six digits (the counter modulo a million).
pub fn stan_text(stan: u32) -> String {
    format!("{:06}", stan % 1_000_000)
}

fn base(mti: Mti, stan: u32, de7: &[u8; 10], terminal: &str, merchant: &str) -> OwnedMessage {
    let mut m = OwnedMessage::new(mti);
    m.fields.insert(7, de7.to_vec());
    m.fields.insert(11, stan_text(stan).into_bytes());
    m.fields.insert(41, terminal.as_bytes().to_vec());
    m.fields.insert(42, merchant.as_bytes().to_vec());
    m
}

/// A 0200 purchase in the merchant contract (MAC added when encoding).
pub fn purchase(merchant: &str, s: &PurchaseSpec) -> OwnedMessage {
    let mut m = base(
        Mti::FINANCIAL_REQUEST,
        s.stan,
        &s.de7,
        &s.terminal,
        merchant,
    );
    m.fields.insert(2, s.pan.as_bytes().to_vec());
    m.fields.insert(3, b"000000".to_vec());
    m.fields
        .insert(4, format!("{:012}", s.amount_minor).into_bytes());
    m.fields.insert(14, s.expiry.as_bytes().to_vec());
    m.fields.insert(
        48,
        format!("OR{:03}{}", s.order.len(), s.order).into_bytes(),
    );
    m.fields.insert(49, s.currency.as_bytes().to_vec());
    m
}

/// The repeat of a request (0200 -> 0201) with every element as it was.
pub fn repeat_of(original: &OwnedMessage) -> OwnedMessage {
    OwnedMessage {
        mti: original.mti.repeat(),
        fields: original.fields.clone(),
    }
}

/// A 0800 network management request with DE70 `code`.
pub fn network(merchant: &str, terminal: &str, stan: u32, code: &str) -> OwnedMessage {
    let mut m = base(Mti::NETWORK_REQUEST, stan, &de7_now(), terminal, merchant);
    m.fields.insert(70, code.as_bytes().to_vec());
    m
}

/// `digits` followed by the Luhn check digit that makes the whole number valid.
pub use codec::card::luhn_complete;

/// Sends one request and waits for its answer (for sequential use such as the demo:
/// answers to other requests that arrive meanwhile are dropped).
pub async fn call(
    client: &Client<()>,
    answers: &mut mpsc::UnboundedReceiver<Answer<()>>,
    msg: &OwnedMessage,
    mac: Option<&MacKey>,
    wait: Duration,
) -> Result<Answer<()>, ClientError> {
    let key = MatchKey::of_owned(msg)?;
    client.send(msg, mac, Instant::now(), ()).await?;
    let deadline = Instant::now() + wait;
    loop {
        let next = tokio::time::timeout_at(deadline, answers.recv()).await;
        match next {
            Err(_) => {
                client.shared.lock().remove(&key);
                return Err(ClientError::NoAnswer(wait));
            }
            Ok(None) => return Err(ClientError::Closed),
            Ok(Some(a)) if MatchKey::of_message(&a.message).as_ref() == Some(&key) => {
                return Ok(a);
            }
            Ok(Some(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::builtin;

    // Proves generated card numbers pass Luhn, including the contract's test cards.
    #[test]
    fn luhn_digits() {
        assert_eq!(luhn_complete("411111111111111"), "4111111111111111");
        assert_eq!(luhn_complete("550000000000000"), "5500000000000004");
        assert_eq!(luhn_complete("7992739871"), "79927398713");
    }

    // Proves a purchase carries the contract's required elements and its key reads back.
    #[test]
    fn purchase_elements_and_key() {
        let spec = PurchaseSpec {
            stan: 1_000_042,
            de7: *b"1126120000",
            terminal: "TERM0001".into(),
            pan: "4111111111111111".into(),
            amount_minor: 1000,
            expiry: "3012".into(),
            order: "ORDER-1".into(),
            currency: "840".into(),
        };
        let m = purchase("MERCHANT0000001", &spec);
        let fields: Vec<u8> = m.fields.keys().copied().collect();
        assert_eq!(fields, [2, 3, 4, 7, 11, 14, 41, 42, 48, 49]);
        assert_eq!(m.fields[&48], b"OR007ORDER-1");
        let key = MatchKey::of_owned(&m).unwrap();
        assert_eq!(key.stan, "000042");
        let mac = MacKey::new(&[7; 32]);
        let d = builtin::merchant();
        let decoded = d.decode(m.encode_with_mac(d, &mac).unwrap()).unwrap();
        assert_eq!(MatchKey::of_message(&decoded), Some(key));
        assert_eq!(decoded.check_mac(&mac), codec::MacCheck::Valid);
        let r = repeat_of(&m);
        assert_eq!(r.mti, Mti::FINANCIAL_REPEAT);
        assert_eq!(r.fields, m.fields);
    }
}
