//! The sans-IO link state machine.
//!
//! A [`Link`] is driven by its shell with `handle_*` calls (a connection came up or went
//! down, a frame arrived, time passed, the switch wants to send) and drained with
//! `poll_*` calls (frames to write, events to deliver, the next instant it needs waking).
//! Time is always an input, so tests run it on a virtual clock.
#![deny(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::{DecodeError, Dialect, Frame, MacCheck, MacKey, Message, MessageBuilder, Mti};

use crate::stan::{StanAllocator, format_stan};

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No transport yet (or waiting out a reconnect backoff).
    Connecting,
    /// Transport up, sign-on sent, no traffic allowed yet.
    SigningOn,
    /// Signed on: traffic flows.
    Ready,
    /// Sign-off sent on command or shutdown: nothing new is sent.
    Draining,
    /// The transport is gone or the bank stopped answering; the shell reconnects.
    Down,
}

impl LinkState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::SigningOn => "signing_on",
            LinkState::Ready => "ready",
            LinkState::Draining => "draining",
            LinkState::Down => "down",
        }
    }
}

/// The current time as the link needs it: a monotonic instant for timers and the wall
/// clock in DE7 form (MMDDhhmmss, UTC) for the messages it writes itself.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub transmission: [u8; 10],
}

/// How a link behaves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// For logs and metrics: "bank-a/0".
    pub name: String,
    pub dialect: &'static Dialect,
    /// DE32 on network management messages.
    pub acquirer_id: String,
    /// The fixed frame header to send (a TPDU for dialects that have one).
    pub header: Bytes,
    pub sign_on_timeout_ms: u64,
    /// An echo is sent after this long without hearing from the bank.
    pub echo_idle_ms: u64,
    pub echo_timeout_ms: u64,
    /// Echoes missed in a row before the link is declared down.
    pub echo_missed_max: u32,
    /// Requests in flight on this link at most.
    pub in_flight_max: usize,
    /// The bank's message MAC key (X9.19 or HMAC-SHA256): when set, every message sent is
    /// signed and every message received must carry a MAC that verifies, or it is dropped
    /// unread (docs/bank-protocol.md).
    pub mac: Option<MacKey>,
}

/// What keeps a response apart from every other one in flight on the link: the request
/// class (so a 0410 never answers a 0200), the STAN, and the RRN when there is one (so a
/// late answer is never taken for a newer request that reused the STAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatchKey {
    pub class: u8,
    pub stan: u32,
    pub rrn: Option<[u8; 12]>,
}

impl MatchKey {
    /// The key a received response carries.
    pub fn of_response(msg: &Message) -> Option<MatchKey> {
        let stan = u32::try_from(msg.get_u64(11)?).ok()?;
        let rrn = msg
            .get(37)
            .and_then(|v| <[u8; 12]>::try_from(v.as_ref()).ok());
        Some(MatchKey {
            class: msg.mti().class(),
            stan,
            rrn,
        })
    }
}

/// How a request ended.
// Answered is by far the common case: boxing it would cost an allocation per answer to
// make the rare failures smaller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outcome {
    Answered(Message),
    /// No answer within the request's timeout: the outcome at the bank is unknown.
    TimedOut,
    /// The link went down with the request in flight: the outcome is unknown.
    LinkLost,
    /// Refused before any of it was written (no connection, not ready, no room): the bank
    /// never saw it.
    NotSent,
}

/// What the link tells its owner.
#[derive(Debug, Clone)]
pub enum Event {
    StateChanged(LinkState),
    /// A request sent with [`Link::send`] ended.
    Reply {
        id: u64,
        outcome: Outcome,
    },
    /// A response that matches nothing in flight (it came after its request timed out).
    Late(Message),
    /// A request or advice the bank started (network management is answered already).
    Unsolicited {
        message: Message,
        header: Bytes,
    },
    /// A frame that did not decode; the link stays up.
    Garbage(DecodeError),
    /// The bank answered the sign-on with something other than `00`.
    SignOnRefused(String),
    /// A message whose MAC was missing or wrong: dropped unread; the link stays up.
    BadMac {
        mti: Mti,
        /// DE11, when the message has one (to find it in the bank's logs).
        stan: Option<u64>,
        check: MacCheck,
    },
}

/// Why a request was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("link is not signed on")]
    NotReady,
    #[error("link has {0} requests in flight")]
    Busy(usize),
    #[error("a request with the same match key is in flight")]
    KeyInUse,
    #[error("the request cannot be signed with the bank's MAC")]
    Unsignable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    User(u64),
    SignOn,
    Echo,
    SignOff,
}

#[derive(Debug)]
struct Pending {
    origin: Origin,
    deadline: (Instant, u64),
    sent: Instant,
}

/// Weight of a new round trip in the link's moving average, in 1/16ths: recent enough to
/// show a slowing bank within a few dozen answers, smooth enough not to jump on one.
pub const RTT_EWMA_WEIGHT_SIXTEENTHS: u64 = 2;

/// What a frame to write is, so a transport with one stream per exchange (QUIC) knows
/// where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// A request of the switch (matched by `key`): it opens an exchange, answered by
    /// `deadline`.
    Request { deadline: Instant, key: MatchKey },
    /// The answer to the bank's request that was handled last.
    Answer,
}

/// Network management information codes (DE70).
pub const NMI_SIGN_ON: &[u8; 3] = b"001";
pub const NMI_SIGN_OFF: &[u8; 3] = b"002";
pub const NMI_ECHO: &[u8; 3] = b"301";

/// A link's state machine.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    stans: Arc<StanAllocator>,
    state: LinkState,
    pending: HashMap<MatchKey, Pending>,
    deadlines: BTreeMap<(Instant, u64), MatchKey>,
    deadline_seq: u64,
    outbox: VecDeque<(Frame, TransmitKind)>,
    events: VecDeque<Event>,
    last_rx: Instant,
    echo_outstanding: bool,
    echoes_missed: u32,
    user_in_flight: usize,
    rtt_ewma_us: Option<u64>,
}

impl Link {
    pub fn new(config: LinkConfig, stans: Arc<StanAllocator>, now: Instant) -> Self {
        Link {
            config,
            stans,
            state: LinkState::Connecting,
            pending: HashMap::new(),
            deadlines: BTreeMap::new(),
            deadline_seq: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            last_rx: now,
            echo_outstanding: false,
            echoes_missed: 0,
            user_in_flight: 0,
            rtt_ewma_us: None,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Requests of the switch in flight (network management not counted).
    pub fn in_flight(&self) -> usize {
        self.user_in_flight
    }

    fn set_state(&mut self, s: LinkState) {
        if self.state != s {
            self.state = s;
            self.events.push_back(Event::StateChanged(s));
        }
    }

    /// The transport came up: sign on before anything else.
    pub fn handle_connected(&mut self, now: Now) {
        self.last_rx = now.mono;
        self.echoes_missed = 0;
        self.echo_outstanding = false;
        self.set_state(LinkState::SigningOn);
        let timeout = Duration::from_millis(self.config.sign_on_timeout_ms);
        self.send_network(now, NMI_SIGN_ON, Origin::SignOn, timeout);
    }

    /// The transport is gone: everything in flight has an unknown outcome.
    pub fn handle_disconnected(&mut self, _now: Now) {
        self.fail_all();
        self.outbox.clear();
        self.set_state(LinkState::Down);
    }

    /// The shell is about to reconnect.
    pub fn handle_connecting(&mut self) {
        self.set_state(LinkState::Connecting);
    }

    /// Signs off: nothing new is sent; the link goes down once the bank answers or the
    /// sign-off times out.
    pub fn sign_off(&mut self, now: Now) {
        if matches!(self.state, LinkState::Ready | LinkState::SigningOn) {
            self.set_state(LinkState::Draining);
            let timeout = Duration::from_millis(self.config.sign_on_timeout_ms);
            self.send_network(now, NMI_SIGN_OFF, Origin::SignOff, timeout);
        }
    }

    /// Queues a request the switch built (its DE11 and DE37 already set, matching `key`).
    pub fn send(
        &mut self,
        now: Now,
        id: u64,
        key: MatchKey,
        message: Bytes,
        timeout: Duration,
    ) -> Result<(), SendError> {
        if self.state != LinkState::Ready {
            return Err(SendError::NotReady);
        }
        if self.user_in_flight >= self.config.in_flight_max {
            return Err(SendError::Busy(self.user_in_flight));
        }
        if self.pending.contains_key(&key) {
            return Err(SendError::KeyInUse);
        }
        let message = self.sign(message).ok_or(SendError::Unsignable)?;
        let deadline = now.mono + timeout;
        self.track(key, Origin::User(id), deadline, now.mono);
        self.user_in_flight += 1;
        self.outbox.push_back((
            Frame {
                header: self.config.header.clone(),
                message,
            },
            TransmitKind::Request { deadline, key },
        ));
        Ok(())
    }

    fn track(&mut self, key: MatchKey, origin: Origin, deadline: Instant, sent: Instant) {
        self.deadline_seq += 1;
        let deadline = (deadline, self.deadline_seq);
        self.deadlines.insert(deadline, key);
        self.pending.insert(
            key,
            Pending {
                origin,
                deadline,
                sent,
            },
        );
    }

    /// The moving average of answered round trips on this link, in microseconds.
    pub fn round_trip_us(&self) -> Option<u64> {
        self.rtt_ewma_us
    }

    fn send_network(&mut self, now: Now, code: &[u8; 3], origin: Origin, timeout: Duration) {
        let Ok(stan) = self.stans.allocate() else {
            return;
        };
        let stan_digits = format_stan(stan);
        let mut b = MessageBuilder::new(self.config.dialect, Mti::NETWORK_REQUEST);
        b.set(7, &now.transmission)
            .set(11, &stan_digits)
            .set(70, code);
        if self.config.dialect.field(32).is_some() && !self.config.acquirer_id.is_empty() {
            b.set(32, self.config.acquirer_id.as_bytes());
        }
        match self.encode(&b) {
            Ok(message) => {
                let key = MatchKey {
                    class: 8,
                    stan,
                    rrn: None,
                };
                let deadline = now.mono + timeout;
                self.track(key, origin, deadline, now.mono);
                self.outbox.push_back((
                    Frame {
                        header: self.config.header.clone(),
                        message,
                    },
                    TransmitKind::Request { deadline, key },
                ));
            }
            Err(_) => self.stans.release(stan),
        }
    }

    /// Encodes a message the link writes itself, signed when the bank uses a MAC.
    fn encode(&self, b: &MessageBuilder<'_>) -> Result<Bytes, codec::EncodeError> {
        match &self.config.mac {
            Some(key) => b.encode_with_mac(key),
            None => b.encode(),
        }
    }

    /// Signs a message encoded elsewhere when the bank uses a MAC; None if it cannot be.
    fn sign(&self, message: Bytes) -> Option<Bytes> {
        match &self.config.mac {
            Some(key) => codec::builder::sign_encoded(self.config.dialect, message, key).ok(),
            None => Some(message),
        }
    }

    /// A frame arrived from the bank.
    pub fn handle_frame(&mut self, now: Now, frame: Frame) {
        let msg = match self.config.dialect.decode(frame.message) {
            Ok(m) => m,
            Err(e) => {
                self.last_rx = now.mono;
                self.events.push_back(Event::Garbage(e));
                return;
            }
        };
        // Checked before anything is read from it: a message that fails is not the
        // bank's, so it neither answers a request nor counts as the link being alive.
        if self.mac_rejects(&msg) {
            return;
        }
        self.last_rx = now.mono;
        self.echoes_missed = 0;
        if msg.mti().is_request() {
            if msg.mti() == Mti::NETWORK_REQUEST {
                self.answer_network(&frame.header, &msg);
            }
            self.events.push_back(Event::Unsolicited {
                message: msg,
                header: frame.header.clone(),
            });
            return;
        }
        let Some(key) = MatchKey::of_response(&msg) else {
            self.events.push_back(Event::Late(msg));
            return;
        };
        // A response without DE37 may still answer a request that carried one.
        let found = self.pending.remove_entry(&key).or_else(|| {
            let k = self
                .pending
                .keys()
                .find(|k| k.class == key.class && k.stan == key.stan && key.rrn.is_none())
                .copied();
            k.and_then(|k| self.pending.remove_entry(&k))
        });
        let Some((key, p)) = found else {
            self.events.push_back(Event::Late(msg));
            return;
        };
        self.untrack(&key, &p);
        self.observe_round_trip(now.mono.saturating_duration_since(p.sent));
        match p.origin {
            Origin::User(id) => {
                self.user_in_flight -= 1;
                self.events.push_back(Event::Reply {
                    id,
                    outcome: Outcome::Answered(msg),
                });
            }
            Origin::SignOn => {
                let rc = msg.get_str(39).map(|s| s.into_owned()).unwrap_or_default();
                if rc == "00" {
                    self.set_state(LinkState::Ready);
                } else {
                    self.events.push_back(Event::SignOnRefused(rc));
                    self.fail_all();
                    self.set_state(LinkState::Down);
                }
            }
            Origin::Echo => self.echo_outstanding = false,
            Origin::SignOff => {
                self.fail_all();
                self.set_state(LinkState::Down);
            }
        }
    }

    /// With a MAC key: whether `msg` fails its MAC check (reported as [`Event::BadMac`]).
    fn mac_rejects(&mut self, msg: &Message) -> bool {
        let Some(key) = &self.config.mac else {
            return false;
        };
        let check = msg.check_mac(key);
        if check == MacCheck::Valid {
            return false;
        }
        self.events.push_back(Event::BadMac {
            mti: msg.mti(),
            stan: msg.get_u64(11),
            check,
        });
        true
    }

    fn observe_round_trip(&mut self, rtt: Duration) {
        let rtt_us = rtt.as_micros() as u64;
        self.rtt_ewma_us = Some(match self.rtt_ewma_us {
            None => rtt_us,
            Some(avg) => {
                (avg * (16 - RTT_EWMA_WEIGHT_SIXTEENTHS) + rtt_us * RTT_EWMA_WEIGHT_SIXTEENTHS) / 16
            }
        });
    }

    /// Answers a message the bank started (an advice), once its owner has made it durable.
    /// `header` is the frame header it came with; the answer's swaps source and destination.
    pub fn answer(&mut self, header: &Bytes, message: Bytes) {
        // One that cannot be signed is not sent: the bank repeats its advice.
        let Some(message) = self.sign(message) else {
            return;
        };
        self.outbox.push_back((
            Frame {
                header: swap_tpdu(header),
                message,
            },
            TransmitKind::Answer,
        ));
    }

    /// Answers a bank's own sign-on or echo.
    fn answer_network(&mut self, header: &Bytes, msg: &Message) {
        let mut b = MessageBuilder::new(self.config.dialect, Mti::NETWORK_RESPONSE);
        let values: Vec<(u8, Vec<u8>)> = [7u8, 11, 32, 70]
            .iter()
            .filter_map(|&n| msg.get(n).map(|v| (n, v.into_owned())))
            .collect();
        for (n, v) in &values {
            b.set(*n, v);
        }
        b.set(39, b"00");
        if let Ok(message) = self.encode(&b) {
            self.outbox.push_back((
                Frame {
                    header: swap_tpdu(header),
                    message,
                },
                TransmitKind::Answer,
            ));
        }
    }

    fn untrack(&mut self, key: &MatchKey, p: &Pending) {
        self.deadlines.remove(&p.deadline);
        if !matches!(p.origin, Origin::User(_)) {
            self.stans.release(key.stan);
        }
    }

    fn fail_all(&mut self) {
        let pending: Vec<(MatchKey, Pending)> = self.pending.drain().collect();
        self.deadlines.clear();
        self.echo_outstanding = false;
        for (key, p) in pending {
            match p.origin {
                Origin::User(id) => {
                    self.user_in_flight -= 1;
                    self.events.push_back(Event::Reply {
                        id,
                        outcome: Outcome::LinkLost,
                    });
                }
                _ => self.stans.release(key.stan),
            }
        }
        debug_assert_eq!(self.user_in_flight, 0);
    }

    /// The shell could not write the request `key` it took from
    /// [`poll_transmit_kind`](Self::poll_transmit_kind) (a per-exchange transport at its
    /// bound): a request of the switch ends [`Outcome::NotSent`] at once, since the bank
    /// never saw it; the link's own messages are left to their deadlines, as if lost.
    pub fn unsent(&mut self, key: MatchKey) {
        let Some(p) = self.pending.get(&key) else {
            return;
        };
        let Origin::User(id) = p.origin else {
            return;
        };
        self.deadlines.remove(&p.deadline);
        self.pending.remove(&key);
        self.user_in_flight -= 1;
        self.events.push_back(Event::Reply {
            id,
            outcome: Outcome::NotSent,
        });
    }

    /// Time passed: expire requests, send an echo on an idle link, declare a silent link down.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some((&(deadline, seq), &key)) = self.deadlines.iter().next() {
            if deadline > now.mono {
                break;
            }
            self.deadlines.remove(&(deadline, seq));
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            match p.origin {
                Origin::User(id) => {
                    self.user_in_flight -= 1;
                    self.events.push_back(Event::Reply {
                        id,
                        outcome: Outcome::TimedOut,
                    });
                }
                Origin::SignOn => {
                    self.stans.release(key.stan);
                    self.fail_all();
                    self.set_state(LinkState::Down);
                }
                Origin::Echo => {
                    self.stans.release(key.stan);
                    self.echo_outstanding = false;
                    self.echoes_missed += 1;
                    if self.echoes_missed >= self.config.echo_missed_max {
                        self.fail_all();
                        self.set_state(LinkState::Down);
                    }
                }
                Origin::SignOff => {
                    self.stans.release(key.stan);
                    self.fail_all();
                    self.set_state(LinkState::Down);
                }
            }
        }
        if self.state == LinkState::Ready && !self.echo_outstanding && now.mono >= self.echo_due() {
            self.echo_outstanding = true;
            let timeout = Duration::from_millis(self.config.echo_timeout_ms);
            self.send_network(now, NMI_ECHO, Origin::Echo, timeout);
            // Count idleness afresh from this echo, so missed echoes are spaced out.
            self.last_rx = now.mono;
        }
    }

    fn echo_due(&self) -> Instant {
        self.last_rx + Duration::from_millis(self.config.echo_idle_ms)
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next_deadline = self.deadlines.keys().next().map(|(d, _)| *d);
        let echo =
            (self.state == LinkState::Ready && !self.echo_outstanding).then(|| self.echo_due());
        match (next_deadline, echo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.outbox.pop_front().map(|(f, _)| f)
    }

    /// The next frame to write and what it is.
    pub fn poll_transmit_kind(&mut self) -> Option<(Frame, TransmitKind)> {
        self.outbox.pop_front()
    }

    /// The next event for the owner.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// A TPDU answer swaps destination (bytes 1-2) and source (bytes 3-4).
pub fn swap_tpdu(header: &Bytes) -> Bytes {
    if header.len() == 5 {
        Bytes::from(vec![header[0], header[3], header[4], header[1], header[2]])
    } else {
        header.clone()
    }
}

#[cfg(test)]
// Tests make their own clock readings to feed the decisions.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use codec::builtin;

    fn config() -> LinkConfig {
        LinkConfig {
            name: "test/0".into(),
            dialect: builtin::bank_bcd(),
            acquirer_id: "123456".into(),
            header: Bytes::from_static(&[0x60, 0, 1, 0, 2]),
            sign_on_timeout_ms: 1000,
            echo_idle_ms: 5000,
            echo_timeout_ms: 1000,
            echo_missed_max: 2,
            in_flight_max: 2,
            mac: None,
        }
    }

    fn at(t0: Instant, ms: u64) -> Now {
        Now {
            mono: t0 + Duration::from_millis(ms),
            transmission: *b"1126120000",
        }
    }

    /// Plays the bank: answers a network request frame with the given code.
    fn answer(link: &mut Link, now: Now, frame: Frame, rc: &[u8]) {
        link.handle_frame(now, answer_frame(&frame, rc, None));
    }

    /// The bank's answer to `frame` with code `rc`, signed when `key` is given.
    fn answer_frame(frame: &Frame, rc: &[u8], key: Option<&MacKey>) -> Frame {
        let d = builtin::bank_bcd();
        let req = d.decode(frame.message.clone()).unwrap();
        let mut b = MessageBuilder::new(d, req.mti().response());
        let vals: Vec<(u8, Vec<u8>)> = [7u8, 11, 37, 70]
            .iter()
            .filter_map(|&n| req.get(n).map(|v| (n, v.into_owned())))
            .collect();
        for (n, v) in &vals {
            b.set(*n, v);
        }
        b.set(39, rc);
        let message = match key {
            Some(key) => b.encode_with_mac(key).unwrap(),
            None => b.encode().unwrap(),
        };
        Frame {
            header: frame.header.clone(),
            message,
        }
    }

    /// A link whose sign-on the bank answered 00 at `t0`.
    fn signed_on(t0: Instant) -> Link {
        let mut link = Link::new(config(), Arc::new(StanAllocator::default()), t0);
        link.handle_connected(at(t0, 0));
        let f = link.poll_transmit().unwrap();
        answer(&mut link, at(t0, 0), f, b"00");
        link
    }

    fn events(link: &mut Link) -> Vec<Event> {
        std::iter::from_fn(|| link.poll_event()).collect()
    }

    fn purchase(stan: u32) -> (MatchKey, Bytes) {
        let d = builtin::bank_bcd();
        let s = format_stan(stan);
        let mut b = MessageBuilder::new(d, Mti::FINANCIAL_REQUEST);
        b.set(3, b"000000")
            .set(4, b"000000001000")
            .set(7, b"1126120000")
            .set(11, &s)
            .set(37, b"000000000042");
        (
            MatchKey {
                class: 2,
                stan,
                rrn: Some(*b"000000000042"),
            },
            b.encode().unwrap(),
        )
    }

    // Proves no traffic is accepted before sign-on is answered 00, it flows after, and the
    // link keeps a moving average of its round trips.
    #[test]
    fn signs_on_before_traffic() {
        let t0 = Instant::now();
        let mut link = Link::new(config(), Arc::new(StanAllocator::default()), t0);
        link.handle_connected(at(t0, 0));
        assert_eq!(link.state(), LinkState::SigningOn);
        let (key, msg) = purchase(500);
        assert_eq!(
            link.send(at(t0, 1), 1, key, msg.clone(), Duration::from_secs(1)),
            Err(SendError::NotReady)
        );
        let signon = link.poll_transmit().unwrap();
        answer(&mut link, at(t0, 2), signon, b"00");
        assert_eq!(link.state(), LinkState::Ready);
        link.send(at(t0, 3), 1, key, msg, Duration::from_secs(1))
            .unwrap();
        let sent = link.poll_transmit().unwrap();
        answer(&mut link, at(t0, 4), sent, b"00");
        let ev = events(&mut link);
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Reply {
                id: 1,
                outcome: Outcome::Answered(_)
            }
        )));
        // Sign-on answered after 2 ms, the purchase after 1 ms: the average leans to the first.
        assert_eq!(link.round_trip_us(), Some((2000 * 14 + 1000 * 2) / 16));
    }

    // Proves a request the shell could not write ends NotSent at once, frees its room in
    // flight and leaves no deadline behind; a later unsent of the same key changes nothing.
    #[test]
    fn unsent_request_ends_not_sent() {
        let t0 = Instant::now();
        let mut link = signed_on(t0);
        events(&mut link);
        let (key, msg) = purchase(500);
        link.send(at(t0, 1), 7, key, msg, Duration::from_secs(1))
            .unwrap();
        let (_, kind) = link.poll_transmit_kind().unwrap();
        let TransmitKind::Request { key: taken, .. } = kind else {
            panic!("a request");
        };
        assert_eq!(taken, key);
        link.unsent(taken);
        assert_eq!(link.in_flight(), 0);
        assert!(matches!(
            events(&mut link).as_slice(),
            [Event::Reply {
                id: 7,
                outcome: Outcome::NotSent
            }]
        ));
        link.unsent(taken);
        link.handle_timeout(at(t0, 2000));
        assert!(
            !events(&mut link)
                .iter()
                .any(|e| matches!(e, Event::Reply { .. })),
            "no second outcome"
        );
    }

    // Proves a refused sign-on takes the link down, as does an unanswered one.
    #[test]
    fn refused_or_silent_sign_on_goes_down() {
        let t0 = Instant::now();
        let mut link = Link::new(config(), Arc::new(StanAllocator::default()), t0);
        link.handle_connected(at(t0, 0));
        let f = link.poll_transmit().unwrap();
        answer(&mut link, at(t0, 1), f, b"91");
        assert_eq!(link.state(), LinkState::Down);
        assert!(
            events(&mut link)
                .iter()
                .any(|e| matches!(e, Event::SignOnRefused(rc) if rc == "91"))
        );

        link.handle_connected(at(t0, 10));
        assert_eq!(link.poll_timeout(), Some(at(t0, 1010).mono));
        link.handle_timeout(at(t0, 1010));
        assert_eq!(link.state(), LinkState::Down);
    }

    // Proves an idle link echoes, and missed echoes in a row declare it down, failing
    // requests in flight as LinkLost (never resent).
    #[test]
    fn idle_echo_and_missed_echoes() {
        let t0 = Instant::now();
        let stans = Arc::new(StanAllocator::default());
        let mut link = Link::new(config(), stans.clone(), t0);
        link.handle_connected(at(t0, 0));
        let f = link.poll_transmit().unwrap();
        answer(&mut link, at(t0, 0), f, b"00");
        let (key, msg) = purchase(700);
        link.send(at(t0, 0), 9, key, msg, Duration::from_secs(60))
            .unwrap();
        link.poll_transmit().unwrap();
        assert_eq!(link.poll_timeout(), Some(at(t0, 5000).mono));
        link.handle_timeout(at(t0, 5000));
        let echo = link.poll_transmit().expect("echo sent when idle");
        let echo_msg = builtin::bank_bcd().decode(echo.message).unwrap();
        assert_eq!(echo_msg.get(70).unwrap().as_ref(), NMI_ECHO);
        link.handle_timeout(at(t0, 6000)); // first echo missed
        assert_eq!(link.state(), LinkState::Ready);
        link.handle_timeout(at(t0, 11_000)); // second echo sent
        assert!(link.poll_transmit().is_some());
        link.handle_timeout(at(t0, 12_000)); // and missed
        assert_eq!(link.state(), LinkState::Down);
        let ev = events(&mut link);
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Reply {
                id: 9,
                outcome: Outcome::LinkLost
            }
        )));
        assert_eq!(link.in_flight(), 0);
        assert_eq!(stans.in_flight(), 0, "network STANs released");
    }

    // Proves timeouts fire at the deadline, late answers are reported as Late, the
    // in-flight cap holds, and a reversal answer never matches a purchase with the same STAN.
    #[test]
    fn timeouts_late_answers_and_caps() {
        let t0 = Instant::now();
        let mut link = signed_on(t0);
        events(&mut link);
        let (key, msg) = purchase(1);
        link.send(at(t0, 0), 1, key, msg, Duration::from_millis(100))
            .unwrap();
        let (key2, msg2) = purchase(2);
        link.send(at(t0, 0), 2, key2, msg2, Duration::from_millis(500))
            .unwrap();
        let (key3, msg3) = purchase(3);
        assert_eq!(
            link.send(at(t0, 0), 3, key3, msg3, Duration::from_millis(500)),
            Err(SendError::Busy(2))
        );
        let first = link.poll_transmit().unwrap();
        let second = link.poll_transmit().unwrap();
        link.handle_timeout(at(t0, 100));
        let ev = events(&mut link);
        assert!(matches!(
            ev.as_slice(),
            [Event::Reply {
                id: 1,
                outcome: Outcome::TimedOut
            }]
        ));
        answer(&mut link, at(t0, 150), first, b"00");
        assert!(matches!(events(&mut link).as_slice(), [Event::Late(_)]));
        // A 0410 with the second request's STAN and RRN does not answer the 0200.
        let d = builtin::bank_bcd();
        let mut b = MessageBuilder::new(d, Mti::REVERSAL_RESPONSE);
        b.set(11, b"000002").set(37, b"000000000042").set(39, b"00");
        link.handle_frame(
            at(t0, 160),
            Frame {
                header: Bytes::new(),
                message: b.encode().unwrap(),
            },
        );
        assert!(matches!(events(&mut link).as_slice(), [Event::Late(_)]));
        answer(&mut link, at(t0, 170), second, b"05");
        assert!(matches!(
            events(&mut link).as_slice(),
            [Event::Reply {
                id: 2,
                outcome: Outcome::Answered(_)
            }]
        ));
    }

    // Proves a bank's advice reaches the owner with its header, and the owner's answer
    // goes out as an answer with source and destination of the TPDU swapped.
    #[test]
    fn advice_answered_by_owner() {
        let t0 = Instant::now();
        let mut link = signed_on(t0);
        events(&mut link);
        let d = builtin::bank_bcd();
        let mut b = MessageBuilder::new(d, Mti::parse("0420").unwrap());
        b.set(7, b"1126120000")
            .set(11, b"000777")
            .set(37, b"000000000042");
        let header = Bytes::from_static(&[0x60, 0, 2, 0, 1]);
        link.handle_frame(
            at(t0, 1),
            Frame {
                header: header.clone(),
                message: b.encode().unwrap(),
            },
        );
        let ev = events(&mut link);
        let Some(Event::Unsolicited {
            message,
            header: got,
        }) = ev.first()
        else {
            panic!("advice reported: {ev:?}")
        };
        assert_eq!(message.mti().as_str(), "0420");
        assert_eq!(got, &header);
        assert!(
            link.poll_transmit().is_none(),
            "nothing answered before the owner says so"
        );
        link.answer(got, Bytes::from_static(b"ack"));
        let (frame, kind) = link.poll_transmit_kind().unwrap();
        assert_eq!(kind, TransmitKind::Answer);
        assert_eq!(&frame.header[..], &[0x60, 0, 1, 0, 2]);
    }

    // Proves garbage from the bank is reported and the link stays ready.
    #[test]
    fn garbage_keeps_link_up() {
        let t0 = Instant::now();
        let mut link = signed_on(t0);
        link.handle_frame(
            at(t0, 1),
            Frame {
                header: Bytes::new(),
                message: Bytes::from_static(b"\xff\xff garbage"),
            },
        );
        assert_eq!(link.state(), LinkState::Ready);
        assert!(
            events(&mut link)
                .iter()
                .any(|e| matches!(e, Event::Garbage(_)))
        );
    }

    // Proves sign-off on shutdown: nothing new is accepted while draining, requests in
    // flight are failed as LinkLost once the bank answers the sign-off, and the link is down.
    #[test]
    fn sign_off_drains_then_down() {
        let t0 = Instant::now();
        let mut link = signed_on(t0);
        let (key, msg) = purchase(10);
        link.send(at(t0, 1), 1, key, msg, Duration::from_secs(5))
            .unwrap();
        link.poll_transmit().unwrap();
        link.sign_off(at(t0, 2));
        assert_eq!(link.state(), LinkState::Draining);
        let (key2, msg2) = purchase(11);
        assert_eq!(
            link.send(at(t0, 3), 2, key2, msg2, Duration::from_secs(5)),
            Err(SendError::NotReady)
        );
        let sign_off = link.poll_transmit().unwrap();
        let m = builtin::bank_bcd()
            .decode(sign_off.message.clone())
            .unwrap();
        assert_eq!(m.get(70).unwrap().as_ref(), NMI_SIGN_OFF);
        answer(&mut link, at(t0, 4), sign_off, b"00");
        assert_eq!(link.state(), LinkState::Down);
        assert!(events(&mut link).iter().any(|e| matches!(
            e,
            Event::Reply {
                id: 1,
                outcome: Outcome::LinkLost
            }
        )));
    }

    // Proves frames are tagged for per-exchange transports: the switch's requests carry
    // their deadline, and the answer to a bank's own echo is tagged as an answer.
    #[test]
    fn transmits_are_tagged() {
        let t0 = Instant::now();
        let mut link = Link::new(config(), Arc::new(StanAllocator::default()), t0);
        link.handle_connected(at(t0, 0));
        let (_, kind) = link.poll_transmit_kind().unwrap();
        assert!(matches!(
            kind,
            TransmitKind::Request { deadline, key } if deadline == at(t0, 1000).mono && key.class == 8
        ));
        let d = builtin::bank_bcd();
        let mut b = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
        b.set(7, b"1126120000").set(11, b"000077").set(70, NMI_ECHO);
        link.handle_frame(
            at(t0, 5),
            Frame {
                header: Bytes::from_static(&[0x60, 0, 2, 0, 1]),
                message: b.encode().unwrap(),
            },
        );
        let (frame, kind) = link.poll_transmit_kind().unwrap();
        assert_eq!(kind, TransmitKind::Answer);
        assert_eq!(&frame.header[..], &[0x60, 0, 1, 0, 2], "TPDU swapped");
        let m = d.decode(frame.message).unwrap();
        assert_eq!(m.mti(), Mti::NETWORK_RESPONSE);
        assert_eq!(m.get_str(39).unwrap(), "00");
    }

    /// Plays a bank that signs: answers `frame` 00 with the MAC `key` gives, then flips
    /// one bit of the MAC when `tamper`.
    fn signed_answer(frame: &Frame, key: &MacKey, tamper: bool) -> Frame {
        let mut f = answer_frame(frame, b"00", Some(key));
        if tamper {
            let mut message = f.message.to_vec();
            *message.last_mut().unwrap() ^= 0x01;
            f.message = Bytes::from(message);
        }
        f
    }

    // Proves a link with a MAC key signs what it sends, drops an answer whose MAC is wrong
    // or missing (reporting it, staying up) and takes one whose MAC verifies.
    #[test]
    fn mac_signs_and_checks() {
        let t0 = Instant::now();
        let key = MacKey::x9_19(&[0x5A; 16]);
        let mut link = Link::new(
            LinkConfig {
                mac: Some(key.clone()),
                ..config()
            },
            Arc::new(StanAllocator::default()),
            t0,
        );
        link.handle_connected(at(t0, 0));
        let sign_on = link.poll_transmit().unwrap();
        let sent = builtin::bank_bcd().decode(sign_on.message.clone()).unwrap();
        assert_eq!(sent.check_mac(&key), MacCheck::Valid);
        link.handle_frame(at(t0, 1), signed_answer(&sign_on, &key, true));
        assert_eq!(link.state(), LinkState::SigningOn);
        assert!(events(&mut link).iter().any(|e| matches!(
            e,
            Event::BadMac {
                check: MacCheck::Invalid,
                ..
            }
        )));
        link.handle_frame(at(t0, 1), answer_frame(&sign_on, b"00", None));
        assert!(events(&mut link).iter().any(|e| matches!(
            e,
            Event::BadMac {
                check: MacCheck::Missing,
                ..
            }
        )));
        link.handle_frame(at(t0, 2), signed_answer(&sign_on, &key, false));
        assert_eq!(link.state(), LinkState::Ready);
        let (k, msg) = purchase(600);
        link.send(at(t0, 3), 1, k, msg, Duration::from_secs(1))
            .unwrap();
        let purchase = link.poll_transmit().unwrap();
        let sent = builtin::bank_bcd().decode(purchase.message).unwrap();
        assert_eq!(sent.check_mac(&key), MacCheck::Valid);
    }
}
