//! Bank links over QUIC: each connection carries exchanges on their own bidirectional
//! streams. The switch opens a stream per request and finishes it; the answer (or
//! nothing, for a withheld one) is written on the same stream, which is then finished.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codec::FrameCodec;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::advise::{Attached, Way};
use super::link::{LINK_IN_FLIGHT_MAX, Plan, Shared, plan};
use super::{LINKS_MAX, ServeError};

/// Streams a switch may have open on one connection at once.
pub(super) const QUIC_STREAMS_MAX: u32 = 16_384;
/// How long a stream may take to deliver its request.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a QUIC handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn bind(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<quinn::Endpoint, ServeError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServeError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(QUIC_STREAMS_MAX))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr).map_err(|source| ServeError::Bind {
        what: "bank links (QUIC)",
        addr,
        source,
    })
}

pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(LINKS_MAX));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            s = slots.clone().acquire_owned() => s.expect("semaphore is never closed"),
        };
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let peer = incoming.remote_address();
        if shared.gate.is_down(tokio::time::Instant::now()) {
            info!(%peer, "links are cut: QUIC connection refused");
            incoming.refuse();
            continue;
        }
        let (shared, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(Ok(conn)) => run(conn, peer, shared, cancel).await,
                Ok(Err(e)) => warn!(%peer, error = %e, "QUIC handshake refused"),
                Err(_) => warn!(%peer, "QUIC handshake timed out"),
            }
            drop(slot);
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    endpoint.wait_idle().await;
}

async fn run(
    conn: quinn::Connection,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    info!(%peer, "bank link connected (QUIC)");
    let codec = FrameCodec::new(shared.dialect.framing, shared.dialect.max_message_len);
    let in_flight = Arc::new(Semaphore::new(LINK_IN_FLIGHT_MAX));
    // Shared by every stream of the connection, as on a TCP link.
    let served = Arc::new(std::sync::Mutex::new(0u64));
    let attached = Arc::new(shared.advisor.attach(Way::Quic(conn.clone())));
    let mut cuts = shared.gate.subscribe();
    loop {
        let (send, recv) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = cuts.changed() => {
                info!(%peer, "bank link cut on command (QUIC)");
                conn.close(quinn::VarInt::from_u32(0), b"cut");
                break;
            }
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    info!(%peer, reason = %e, "bank link closed (QUIC)");
                    break;
                }
            },
        };
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (shared, conn, served) = (shared.clone(), conn.clone(), served.clone());
        let attached = attached.clone();
        tokio::spawn(async move {
            exchange(send, recv, codec, peer, &shared, &attached, &conn, &served).await;
            drop(permit);
        });
    }
    drop(attached);
    conn.close(quinn::VarInt::from_u32(0), b"bye");
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    mut codec: FrameCodec,
    peer: SocketAddr,
    shared: &Shared,
    attached: &Attached,
    conn: &quinn::Connection,
    served: &std::sync::Mutex<u64>,
) {
    let mut frames = FramedRead::new(recv, codec);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(STREAM_READ_TIMEOUT, frames.next()).await {
        let decided = {
            let mut n = served.lock().unwrap_or_else(|p| p.into_inner());
            plan(shared, attached.port(), peer, frame, &mut n)
        };
        match decided {
            Plan::Drop => {
                conn.close(quinn::VarInt::from_u32(1), b"fault: dropped");
                return;
            }
            Plan::Answer(answers) => {
                for (delay, reply) in answers {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut buf = BytesMut::new();
                    if codec.encode(reply, &mut buf).is_err() || send.write_all(&buf).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
    let _ = send.finish();
}
