//! A TCP proxy in front of the private PostgreSQL that can lose a commit's
//! acknowledgement: armed, it lets the next statement of the switch's journal writer run
//! and commit, then closes the connection instead of passing the server's answer on. The
//! writer sees its connection lost mid-statement (was it written?) while the database holds
//! the commit: the ambiguous write of issue 11's defects 1 and 2, made on purpose.
//!
//! The journal writer's connection is recognised by the session setting it sends first
//! (`enable_seqscan`); other connections pass untouched. Server messages are passed on a
//! whole response at a time (up to ReadyForQuery, sent after the commit), so the cut
//! comes after the commit and before the client learns of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Largest server message the proxy accepts (a batch's answer is a few kilobytes).
const MESSAGE_MAX_BYTES: usize = 16 << 20;

/// The proxy; its tasks end with the test's runtime.
#[derive(Debug, Clone)]
pub struct PgProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl PgProxy {
    /// Listens on a free port, forwarding to PostgreSQL on `upstream_port` (127.0.0.1).
    pub async fn start(upstream_port: u16) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = PgProxy {
            addr: listener.local_addr().expect("proxy address"),
            armed: Arc::new(AtomicBool::new(false)),
            cuts: Arc::new(AtomicU64::new(0)),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                tokio::spawn(p.clone().pump(client, server));
            }
        });
        proxy
    }

    /// `url` (a `postgres://` URL of the private server) through this proxy.
    pub fn url(&self, url: &str) -> String {
        let port = crate::pg_port();
        url.replacen(&format!(":{port}/"), &format!(":{}/", self.addr.port()), 1)
    }

    /// Loses the acknowledgement of the journal writer's next statement.
    pub fn lose_next_journal_ack(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many acknowledgements were lost so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }

    async fn pump(self, client: TcpStream, server: TcpStream) {
        let (client_rx, client_tx) = client.into_split();
        let (server_rx, server_tx) = server.into_split();
        let journal = Arc::new(AtomicBool::new(false));
        let up = tokio::spawn(client_to_server(client_rx, server_tx, journal.clone()));
        self.server_to_client(server_rx, client_tx, &journal).await;
        up.abort();
    }

    /// Passes the server's answers on a response at a time; cuts when armed and a journal
    /// statement (not its session setting) has just committed.
    async fn server_to_client(
        &self,
        mut from: OwnedReadHalf,
        mut to: OwnedWriteHalf,
        journal: &AtomicBool,
    ) {
        let mut response = Vec::new();
        let mut statement_done = false;
        loop {
            let mut head = [0u8; 5];
            if from.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if !(4..=MESSAGE_MAX_BYTES).contains(&len) {
                return;
            }
            let mut body = vec![0u8; len - 4];
            if from.read_exact(&mut body).await.is_err() {
                return;
            }
            if head[0] == b'C' && !body.starts_with(b"SET") {
                statement_done = true;
            }
            response.extend_from_slice(&head);
            response.extend_from_slice(&body);
            // An authentication request waits for the client's answer: pass it on now.
            let waits_for_client = head[0] == b'R' && body.get(..4) != Some(&[0, 0, 0, 0]);
            if head[0] != b'Z' && !waits_for_client {
                continue;
            }
            let cut = statement_done
                && journal.load(Ordering::SeqCst)
                && self.armed.swap(false, Ordering::SeqCst);
            if cut {
                // Committed (ReadyForQuery comes after the commit); the writer never hears.
                self.cuts.fetch_add(1, Ordering::SeqCst);
                let _ = to.shutdown().await;
                return;
            }
            if to.write_all(&response).await.is_err() {
                return;
            }
            response.clear();
            statement_done = false;
        }
    }
}

/// Passes the client's bytes on, noting whether this is the journal writer's connection.
async fn client_to_server(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    journal: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if buf[..n].windows(14).any(|w| w == b"enable_seqscan") {
            journal.store(true, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
