//! One bank link over a byte stream (TCP or TLS): read frames, decide and record each
//! request, write answers as they complete. Requests are independent, so a slow
//! (latency) answer never holds up another. [`plan`] is shared with QUIC and applies the
//! fault switches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codec::owned::mask_pan;
use codec::{Dialect, Frame, FrameCodec, Message};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Faults;
use super::advise::{Advisor, Port, Way};
use super::record::{Record, Txn};
use super::rules::{self, Behaviour, Decision, RequestView};

/// Requests on one link that may be waiting for their answer; the link stops reading
/// (and TCP pushes back on the switch) while this many are pending.
pub const LINK_IN_FLIGHT_MAX: usize = 4096;
/// Answers queued for the writer of one link.
pub const LINK_WRITE_QUEUE_MAX: usize = 1024;

/// What every link shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dialect: &'static Dialect,
    pub behaviour: Behaviour,
    pub latency: Duration,
    pub faults: Faults,
    pub record: Arc<Record>,
    /// The bank's MAC key, when its messages carry a MAC.
    pub mac: Option<codec::MacKey>,
    pub advisor: Arc<Advisor>,
    /// Cuts ordered through the control endpoint.
    pub gate: super::gate::LinkGate,
}

/// What to do about one received frame.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Write these frames, each after its delay.
    Answer(Vec<(Duration, Frame)>),
    /// Close the connection without answering (`--drop-after`).
    Drop,
}

/// A frame that frames correctly but decodes as nothing (`--garbage-every`).
pub(crate) fn garbage(header: &Bytes) -> Frame {
    Frame {
        header: rules::reply_header(header),
        message: Bytes::from_static(b"\xff\xfegarbage\x00\x01"),
    }
}

/// Decides one frame and applies the fault switches; `served` counts the financial
/// requests of this connection, `port` is the connection as advices see it.
pub(crate) fn plan(
    shared: &Shared,
    port: &Port,
    peer: SocketAddr,
    frame: Frame,
    served: &mut u64,
) -> Plan {
    let header = frame.header.clone();
    if !mac_verifies(shared, peer, &frame) {
        return Plan::Answer(Vec::new());
    }
    let Some((reply, amount)) = handle(shared, port, peer, frame) else {
        return Plan::Answer(Vec::new());
    };
    let Some(mut reply) = sign(shared, peer, reply) else {
        return Plan::Answer(Vec::new());
    };
    let f = &shared.faults;
    let financial = amount.is_some();
    if financial {
        if f.drop_after.is_some_and(|n| *served >= n) {
            info!(%peer, served = *served, "fault: dropping the connection");
            return Plan::Drop;
        }
        *served += 1;
    }
    let mut delay = shared.latency;
    if financial
        && amount.is_some_and(|a| a % 100 == LATE_AMOUNT_SUFFIX)
        && let Some(late) = f.late
    {
        delay = late;
    }
    if financial
        && f.tamper_mac_every
            .is_some_and(|n| n > 0 && (*served).is_multiple_of(n))
        && tamper_mac(shared.dialect, &mut reply)
    {
        info!(%peer, served = *served, "fault: answer sent with a broken MAC");
        shared.record.mac_tampered();
    }
    let mut out = Vec::with_capacity(3);
    if financial
        && f.garbage_every
            .is_some_and(|n| n > 0 && (*served).is_multiple_of(n))
    {
        out.push((delay, garbage(&header)));
    }
    if financial && f.answer_twice {
        out.push((delay, reply.clone()));
    }
    out.push((delay, reply));
    Plan::Answer(out)
}

/// Whether the frame's MAC verifies (always, when the bank uses no MAC); a failure is
/// logged and counted, and the frame is not answered.
fn mac_verifies(shared: &Shared, peer: SocketAddr, frame: &Frame) -> bool {
    let Some(key) = &shared.mac else {
        return true;
    };
    // An undecodable frame is left to `handle`, which reports it as such.
    let Ok(msg) = shared.dialect.decode(frame.message.clone()) else {
        return true;
    };
    let check = msg.check_mac(key);
    if check == codec::MacCheck::Valid {
        return true;
    }
    warn!(%peer, mti = %msg.mti(), check = ?check, "message from the switch dropped: MAC missing or wrong");
    shared.record.mac_failure();
    false
}

/// Signs an answer when the bank uses a MAC; None (logged) if it cannot be signed.
pub(crate) fn sign(shared: &Shared, peer: SocketAddr, frame: Frame) -> Option<Frame> {
    let Some(key) = &shared.mac else {
        return Some(frame);
    };
    match codec::builder::sign_encoded(shared.dialect, frame.message, key) {
        Ok(message) => Some(Frame {
            header: frame.header,
            message,
        }),
        Err(e) => {
            warn!(%peer, error = %e, "cannot sign answer; not answered");
            None
        }
    }
}

/// Flips one bit of a signed frame's MAC; false if it carries none.
fn tamper_mac(dialect: &'static Dialect, frame: &mut Frame) -> bool {
    let Ok(msg) = dialect.decode(frame.message.clone()) else {
        return false;
    };
    let Some(at) = dialect
        .mac_field(msg.has_secondary_bitmap())
        .and_then(|f| msg.mac_input(f))
        .map(|(covered, _)| covered.len())
    else {
        return false;
    };
    let mut bytes = frame.message.to_vec();
    bytes[at] ^= 0x01;
    frame.message = Bytes::from(bytes);
    true
}

/// Amounts ending in these two digits are answered late under `--late-ms`.
pub const LATE_AMOUNT_SUFFIX: u64 = 77;

/// Serves one connection until the peer closes it, its framing breaks, or `cancel`.
pub(crate) async fn run<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    info!(%peer, "bank link connected");
    let codec = FrameCodec::new(shared.dialect.framing, shared.dialect.max_message_len);
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FramedRead::new(rd, codec);
    let (tx, rx) = mpsc::channel(LINK_WRITE_QUEUE_MAX);
    let attached = shared.advisor.attach(Way::Stream(tx.downgrade()));
    let writer = tokio::spawn(write_loop(FramedWrite::new(wr, codec), rx, peer));
    let in_flight = Arc::new(Semaphore::new(LINK_IN_FLIGHT_MAX));
    let mut served = 0u64;
    let mut cuts = shared.gate.subscribe();

    'read: loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = cuts.changed() => {
                // Cut: answers not yet written are lost with the link, as on a real outage.
                info!(%peer, "bank link cut on command");
                writer.abort();
                return;
            }
            next = reader.next() => next,
        };
        let frame = match next {
            None => {
                info!(%peer, "bank link closed by peer");
                break;
            }
            Some(Err(e)) => {
                // The stream cannot be resynchronised after a bad length; what was
                // already accepted is still answered before the socket closes.
                warn!(%peer, error = %e, "bank link framing broken; closing");
                break;
            }
            Some(Ok(frame)) => frame,
        };
        let answers = match plan(&shared, attached.port(), peer, frame, &mut served) {
            Plan::Drop => {
                // Mid-flight: what is queued is discarded with the connection.
                writer.abort();
                return;
            }
            Plan::Answer(a) => a,
        };
        for (delay, reply) in answers {
            if delay.is_zero() {
                if tx.send(reply).await.is_err() {
                    break 'read;
                }
                continue;
            }
            let permit = tokio::select! {
                _ = cancel.cancelled() => break 'read,
                p = in_flight.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let (tx, cancel) = (tx.clone(), cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {
                        // The writer is gone only if the link is; nothing to answer then.
                        let _ = tx.send(reply).await;
                    }
                }
                drop(permit);
            });
        }
    }
    drop(attached);
    drop(tx);
    let _ = writer.await;
    info!(%peer, "bank link done");
}

async fn write_loop<W: AsyncWrite>(
    mut writer: FramedWrite<WriteHalf<W>, FrameCodec>,
    mut rx: mpsc::Receiver<Frame>,
    peer: SocketAddr,
) {
    while let Some(frame) = rx.recv().await {
        // Batch whatever else is ready into one flush: pipelined load sends in bursts.
        let mut res = writer.feed(frame).await;
        while res.is_ok() {
            match rx.try_recv() {
                Ok(frame) => res = writer.feed(frame).await,
                Err(_) => break,
            }
        }
        if let Err(e) = res.and(SinkExt::<Frame>::flush(&mut writer).await) {
            warn!(%peer, error = %e, "bank link write failed");
            return;
        }
    }
    let _ = SinkExt::<Frame>::close(&mut writer).await;
}

/// Decodes, decides, records and builds the answer to one frame, with the amount of a
/// financial request (`Some(0)` when it has none); None when there is nothing to send.
/// A response (the switch acknowledging an advice) is handed to the advice it answers.
fn handle(
    shared: &Shared,
    port: &Port,
    peer: SocketAddr,
    frame: Frame,
) -> Option<(Frame, Option<u64>)> {
    let msg = match shared.dialect.decode(frame.message) {
        Ok(m) => m,
        Err(e) => {
            // The error names an element and offset, never content, so no PAN leaks.
            warn!(%peer, error = %e, "undecodable message ignored");
            return None;
        }
    };
    let record = &shared.record;
    record.count(msg.mti());
    if !msg.mti().is_request() {
        if !shared.advisor.complete(&msg) {
            debug!(%peer, mti = %msg.mti(), "response that answers no advice ignored");
        }
        return None;
    }
    let decision = rules::decide(&RequestView::of(&msg), &shared.behaviour);
    log_request(peer, &msg, &decision);
    port.observe(&msg, &frame.header, decision.response_code());

    // A reversal naming nothing this bank saw is answered as a real bank would.
    let mut unknown_reversal: Option<[u8; 2]> = None;
    let auth_code = match decision {
        Decision::Authorise => record.approve(Txn::of(&msg), true),
        Decision::Accept => record.approve(Txn::of(&msg), false),
        Decision::Decline(code) => {
            record.decline(Txn::of(&msg), code);
            None
        }
        Decision::Withhold => {
            record.withhold(Txn::of(&msg));
            return None;
        }
        Decision::Reverse if shared.faults.ignore_reversals => {
            debug!(%peer, mti = %msg.mti(), "fault: reversal not answered");
            return None;
        }
        Decision::Reverse => {
            let known = record.reverse(msg.get_str(37).as_deref().map(str::trim_end));
            if let (false, Some(code)) = (known, shared.behaviour.unknown_reversal_code) {
                unknown_reversal = Some(code);
            }
            None
        }
        Decision::Inquire => {
            let standing = record.inquire(msg.get_str(37).as_deref().map(str::trim_end));
            let (code, de48) = rules::inquiry_answer(standing);
            let message = match rules::build_status_response(
                shared.dialect,
                &msg,
                code,
                de48.as_deref(),
            ) {
                Ok(m) => m,
                Err(e) => {
                    warn!(%peer, mti = %msg.mti(), error = %e, "cannot encode answer; not answered");
                    return None;
                }
            };
            // Not a financial request: the fault switches leave it alone.
            let header = rules::reply_header(&frame.header);
            return Some((Frame { header, message }, None));
        }
        Decision::Network(_) => None,
        Decision::Ignore(_) => return None,
    };
    let code = match &unknown_reversal {
        Some(code) => std::str::from_utf8(code).unwrap_or("25"),
        None => decision.response_code()?,
    };
    let message = match rules::build_response(shared.dialect, &msg, code, auth_code.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            warn!(%peer, mti = %msg.mti(), error = %e, "cannot encode answer; not answered");
            return None;
        }
    };
    let header = rules::reply_header(&frame.header);
    let amount = (msg.mti().class() != 8).then(|| msg.get_u64(4).unwrap_or(0));
    Some((Frame { header, message }, amount))
}

fn log_request(peer: SocketAddr, msg: &Message, decision: &Decision) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let pan = msg.get_str(2).map(|p| mask_pan(&p));
    debug!(
        %peer,
        mti = %msg.mti(),
        pan = pan.as_deref().unwrap_or("-"),
        stan = msg.get_str(11).as_deref().unwrap_or("-"),
        rrn = msg.get_str(37).as_deref().unwrap_or("-"),
        amount_minor = msg.get_u64(4),
        ?decision,
        "request"
    );
    if let Decision::Ignore(why) = decision {
        debug!(%peer, mti = %msg.mti(), why, "request not answered");
    }
}
