//! The bare frame relay: what the machine moves at all, with no switch in the way.
//!
//! Every accepted connection gets one upstream connection; frames (a 2-byte big-endian
//! length and what it counts) are forwarded each way as they are, batched into one
//! write when several are ready. No parsing, no state beyond the two sockets.

use std::io;
use std::net::SocketAddr;

use codec::spec::{Encoding, Framing};
use codec::{Frame, FrameCodec};
use futures::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, warn};

/// The outer framing of both dialects: 2-byte binary length, header counted inside.
pub const RELAY_FRAMING: Framing = Framing {
    length_bytes: 2,
    length_encoding: Encoding::Binary,
    header_len: 0,
};
/// The largest frame a 2-byte length can announce.
pub const RELAY_FRAME_MAX_BYTES: usize = u16::MAX as usize;
/// Pause after a failed accept, so the loop does not spin while the cause lasts.
const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

fn codec() -> FrameCodec {
    FrameCodec::new(RELAY_FRAMING, RELAY_FRAME_MAX_BYTES)
}

/// Accepts connections for ever, relaying each to `upstream`.
pub async fn serve(listener: TcpListener, upstream: SocketAddr) -> io::Result<()> {
    loop {
        let (down, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = relay(down, upstream).await {
                debug!(%peer, error = %e, "relay connection ended");
            }
        });
    }
}

async fn relay(down: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let up = TcpStream::connect(upstream).await?;
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let (down_rd, down_wr) = down.into_split();
    let (up_rd, up_wr) = up.into_split();
    let there = tokio::spawn(pump(down_rd, up_wr));
    let back = pump(up_rd, down_wr).await;
    there.abort();
    back
}

/// Forwards frames from `rd` to `wr`, flushing once per batch of ready frames.
async fn pump(rd: OwnedReadHalf, wr: OwnedWriteHalf) -> io::Result<()> {
    let mut rd = FramedRead::new(rd, codec());
    let mut wr = FramedWrite::new(wr, codec());
    while let Some(frame) = rd.next().await {
        let frame: Frame = frame.map_err(io::Error::other)?;
        SinkExt::<Frame>::feed(&mut wr, frame)
            .await
            .map_err(io::Error::other)?;
        // Whatever else is already buffered goes out with it.
        while let Some(Some(more)) = futures::FutureExt::now_or_never(rd.next()) {
            let more: Frame = more.map_err(io::Error::other)?;
            SinkExt::<Frame>::feed(&mut wr, more)
                .await
                .map_err(io::Error::other)?;
        }
        SinkExt::<Frame>::flush(&mut wr)
            .await
            .map_err(io::Error::other)?;
    }
    let _ = SinkExt::<Frame>::close(&mut wr).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Proves frames go through unchanged both ways, several in one write included.
    #[tokio::test]
    async fn relays_frames() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        tokio::spawn(serve(relay, echo_addr));
        let mut c = TcpStream::connect(relay_addr).await.unwrap();
        let sent = [0, 3, b'a', b'b', b'c', 0, 1, b'z'];
        c.write_all(&sent).await.unwrap();
        let mut got = [0u8; 8];
        tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, sent);
    }
}
