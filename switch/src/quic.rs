//! The merchant listener over QUIC: the same framing as TCP and TLS, on streams. A merchant
//! may send each request on its own bidirectional stream (its answer comes back on that
//! stream) or keep one stream for many; advices (0620) open a stream of their own, on which
//! the merchant's 0630 comes back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codec::FrameCodec;
use futures::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::task::TaskTracker;

use crate::server::TlsError;
use crate::session::Listening;
use crate::session::{ConnShared, ConnectionSlot, serve_stream};

/// ALPN of the merchant protocol over QUIC.
pub(crate) const MERCHANT_ALPN: &[u8] = b"switchyard-h2h/1";
/// Advices queued for one connection at most; beyond it the notifier tries again later.
pub(crate) const ADVICE_QUEUE_MAX: usize = 64;
/// Advice streams of one connection open at once at most (each waits up to
/// [`ADVICE_ANSWER_WAIT_MS`] for its 0630); an advice beyond it is not sent now, and the
/// notifier repeats it, as it does every advice not answered.
pub(crate) const ADVICE_STREAMS_MAX: usize = 64;
/// How long the switch waits for the 0630 on an advice's stream.
pub(crate) const ADVICE_ANSWER_WAIT_MS: u64 = 30_000;
/// A connection idle this long is closed by QUIC itself.
pub(crate) const QUIC_IDLE_TIMEOUT_MS: u64 = 300_000;

/// A QUIC server endpoint for merchants from PEM files.
pub(crate) fn endpoint(
    addr: std::net::SocketAddr,
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
    max_streams: usize,
) -> Result<quinn::Endpoint, TlsError> {
    let mut tls = crate::server::tls_server_config(cert_pem, key_pem)?;
    tls.alpn_protocols = vec![MERCHANT_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Pem {
            path: cert_pem.display().to_string(),
            why: e.to_string(),
        })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // A stream is an in-flight request (or a merchant's long-lived stream): the same bound.
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(
            max_streams.min(u32::MAX as usize) as u32
        ))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_millis(QUIC_IDLE_TIMEOUT_MS)) {
        transport.max_idle_timeout(Some(idle));
    }
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr).map_err(|e| TlsError::Pem {
        path: addr.to_string(),
        why: e.to_string(),
    })
}

/// Accepts QUIC connections until shutdown.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, l: Listening) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = l.shutdown.cancelled() => {
                endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
                return;
            }
        };
        let Some(slot) = ConnectionSlot::try_new(&l.connections, l.max_connections_total) else {
            tracing::warn!(peer = %incoming.remote_address(), "merchant QUIC connection refused: total connection limit");
            incoming.refuse();
            continue;
        };
        let l2 = l.clone();
        l.sessions.spawn(async move {
            let _slot = slot;
            match incoming.await {
                Ok(conn) => serve_connection(conn, l2).await,
                Err(e) => tracing::info!(error = %e, "QUIC handshake failed"),
            }
        });
    }
}

async fn serve_connection(conn: quinn::Connection, l: Listening) {
    let peer = conn.remote_address().to_string();
    let (outlet_tx, outlet_rx) = mpsc::channel::<Bytes>(ADVICE_QUEUE_MAX);
    let shared = ConnShared::new(Some(outlet_tx));
    let advice_streams = TaskTracker::new();
    let advices = tokio::spawn(send_advices(
        conn.clone(),
        outlet_rx,
        l.clone(),
        shared.clone(),
        advice_streams.clone(),
    ));
    let streams = TaskTracker::new();
    tracing::info!(%peer, transport = "quic", "merchant connection opened");
    let reason = loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                // Closed by the peer, timed out or reset: quinn's error says which.
                Err(e) => break e.to_string(),
            },
            _ = l.shutdown.cancelled() => break "shutdown".to_string(),
        };
        let stream = tokio::io::join(recv, send);
        streams.spawn(serve_stream(
            stream,
            peer.clone(),
            l.clone(),
            shared.clone(),
            false,
        ));
    };
    tracing::info!(%peer, transport = "quic", %reason, "merchant connection closed");
    streams.close();
    streams.wait().await;
    shared.close(&l.engine, &l.connections);
    advices.abort();
    // Advice streams end with the connection or their wait for the 0630; none is
    // awaited here, so a shutdown is not held up by a merchant that does not answer.
    advice_streams.close();
}

/// Opens a stream for each advice, writes it, and hands the merchant's answer (0630) to
/// the engine; at most [`ADVICE_STREAMS_MAX`] at once, tracked by `tasks`.
async fn send_advices(
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Bytes>,
    l: Listening,
    shared: ConnShared,
    tasks: TaskTracker,
) {
    let dialect = codec::builtin::merchant();
    let codec = FrameCodec::new(dialect.framing, l.limits.max_message_len);
    let room = Arc::new(Semaphore::new(ADVICE_STREAMS_MAX));
    while let Some(advice) = rx.recv().await {
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::warn!(
                bound = ADVICE_STREAMS_MAX,
                "QUIC advice streams at their bound: advice left for the notifier's repeat"
            );
            continue;
        };
        let Ok((send, recv)) = conn.open_bi().await else {
            return;
        };
        let engine = l.engine.clone();
        let state = shared.state().clone();
        tasks.spawn(async move {
            let _permit = permit;
            let mut writer = FramedWrite::new(send, codec);
            if writer.send(advice).await.is_err() {
                return;
            }
            let _ = SinkExt::<Bytes>::close(&mut writer).await;
            let mut reader = FramedRead::new(recv, codec);
            let wait = Duration::from_millis(ADVICE_ANSWER_WAIT_MS);
            while let Ok(Some(Ok(frame))) = tokio::time::timeout(wait, reader.next()).await {
                let _ = engine.handle(frame.message, &state).await;
            }
        });
    }
}
