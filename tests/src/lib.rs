//! Support for black-box tests: finding the private PostgreSQL and Redis, starting binaries.
//!
//! `scripts/test.sh` starts a private PostgreSQL and a private Redis on free ports and exports
//! where they are (`SWITCHYARD_TEST_PG_URL`, `SWITCHYARD_TEST_PG_BIN`, `SWITCHYARD_TEST_PG_DATA`,
//! `SWITCHYARD_TEST_PG_PORT`, `SWITCHYARD_TEST_REDIS_URL`, `SWITCHYARD_TEST_REDIS_PORT`). The
//! helpers here read those variables and panic with a pointer to the script when they are
//! missing.
//!
//! - [`pg_url`], [`redis_url`]: the servers.
//! - [`fresh_database`]: a new, empty database with a unique name, so tests are isolated.
//! - [`pg_connect`]: a tokio-postgres client whose connection task is already spawned.
//! - [`pg_stop`], [`pg_start`], [`pg_is_running`]: a database outage in the middle of a test.
//!   The server is shared by every test of the run: a test that stops it should live in a test
//!   file of its own (cargo runs test binaries one after another, but the tests inside one
//!   binary in parallel), and should hold a [`PgOutage`] guard so the server comes back even
//!   when the test panics.
//! - [`free_port`]: a TCP port that is free on 127.0.0.1.
//! - [`pgproxy::PgProxy`]: a proxy in front of PostgreSQL that loses a commit's acknowledgement.
//! - [`RedisCluster`]: a private three-node Redis Cluster for one test; [`PrivateRedis`]: a
//!   private single server a test may stop and start again (a Redis outage or restart).
//! - [`unique_name`]: a name no other test of this run uses (Redis key prefixes, say).
//! - [`spawn_binary`]: start a workspace binary from `target/debug`; the [`Spawned`] guard
//!   kills it on drop. [`wait_for_line`] waits for a line on its stdout (or stderr) that
//!   matches, so tests wait for readiness instead of sleeping.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};

pub mod office;
pub mod pgproxy;
pub mod switchyard;

/// Re-exported so test files need no direct dependency for the common cases.
pub use tokio_postgres;

const HINT: &str = "run the tests with scripts/test.sh, which starts a private PostgreSQL and \
                    Redis and exports it (or source scripts/services.sh and call services_start)";

fn env_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {HINT}"),
    }
}

/// URL of the private PostgreSQL's `postgres` database (`SWITCHYARD_TEST_PG_URL`).
pub fn pg_url() -> String {
    env_var("SWITCHYARD_TEST_PG_URL")
}

/// URL of the private Redis (`SWITCHYARD_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    env_var("SWITCHYARD_TEST_REDIS_URL")
}

/// Port of the private PostgreSQL (`SWITCHYARD_TEST_PG_PORT`).
pub fn pg_port() -> u16 {
    env_var("SWITCHYARD_TEST_PG_PORT")
        .parse()
        .expect("SWITCHYARD_TEST_PG_PORT is not a port number")
}

/// Port of the private Redis (`SWITCHYARD_TEST_REDIS_PORT`).
pub fn redis_port() -> u16 {
    env_var("SWITCHYARD_TEST_REDIS_PORT")
        .parse()
        .expect("SWITCHYARD_TEST_REDIS_PORT is not a port number")
}

/// A name that no other call in this run returns: `prefix` (reduced to `[a-z0-9_]`), the
/// process id, a counter and the time. At most 63 bytes (PostgreSQL's identifier limit).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let suffix = format!("_{}_{}_{:x}", std::process::id(), n, nanos);
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean.insert(0, 't');
    }
    clean.truncate(63 - suffix.len());
    clean + &suffix
}

/// Replaces the database name (the path) of a `postgres://` URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Creates a new, empty database on the private PostgreSQL with a unique name derived from
/// `name` and returns its URL.
///
/// Synchronous, and usable from inside a tokio test too (it does its work on a thread of its
/// own, with a runtime of its own).
pub fn fresh_database(name: &str) -> String {
    let admin = pg_url();
    let db = unique_name(name);
    let url = with_database(&admin, &db);
    let sql = format!("CREATE DATABASE \"{db}\"");
    thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to {admin}"))?;
            let task = tokio::spawn(conn);
            client.batch_execute(&sql).await.context(sql.clone())?;
            drop(client);
            let _ = task.await;
            Ok(())
        })
    })
    .join()
    .expect("fresh_database thread panicked")
    .unwrap_or_else(|e| panic!("fresh_database({name}): {e:#} ({HINT})"));
    url
}

/// Connects to `url` with tokio-postgres (no TLS) and spawns the connection task on the
/// current runtime.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        // The connection ends when the client is dropped or the server goes away; tests that
        // care see the error on their next query.
        let _ = conn.await;
    });
    client
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `pg_ctl ARGS` from `SWITCHYARD_TEST_PG_BIN` as the `postgres` user (via `runuser`
/// when we are root, as PostgreSQL refuses to run as root).
fn pg_ctl(args: &[&str]) -> anyhow::Result<()> {
    let pg_ctl = Path::new(&env_var("SWITCHYARD_TEST_PG_BIN")).join("pg_ctl");
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    };
    cmd.args(args).current_dir("/").stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("running {}", pg_ctl.display()))?;
    if !out.status.success() {
        bail!(
            "pg_ctl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Stops the private PostgreSQL (`pg_ctl -m fast -w stop`): every connection is cut, new ones
/// are refused until [`pg_start`]. Panics if it cannot.
pub fn pg_stop() {
    let data = env_var("SWITCHYARD_TEST_PG_DATA");
    pg_ctl(&["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"])
        .unwrap_or_else(|e| panic!("pg_stop: {e:#}"));
}

/// Starts the private PostgreSQL again (`pg_ctl -w start`), on the same port and socket
/// directory (they are in the cluster's postgresql.conf). Returns when it accepts connections.
/// Panics if it cannot.
pub fn pg_start() {
    let data = env_var("SWITCHYARD_TEST_PG_DATA");
    let log = Path::new(&data).join("server.log");
    let log = log.to_string_lossy();
    pg_ctl(&["-D", &data, "-l", &log, "-w", "-t", "60", "start"])
        .unwrap_or_else(|e| panic!("pg_start: {e:#}"));
}

/// Whether the private PostgreSQL is running (`pg_ctl status`).
pub fn pg_is_running() -> bool {
    let data = env_var("SWITCHYARD_TEST_PG_DATA");
    pg_ctl(&["-D", &data, "status"]).is_ok()
}

/// A PostgreSQL outage for the length of a scope: [`PgOutage::begin`] stops the server, dropping
/// the guard (or [`PgOutage::end`]) starts it again, also when the test panics.
#[derive(Debug)]
pub struct PgOutage {
    ended: bool,
}

impl PgOutage {
    /// Stops the private PostgreSQL.
    pub fn begin() -> Self {
        pg_stop();
        PgOutage { ended: false }
    }

    /// Starts it again now.
    pub fn end(mut self) {
        self.ended = true;
        pg_start();
    }
}

impl Drop for PgOutage {
    fn drop(&mut self) {
        if !self.ended
            && !pg_is_running()
            && let Err(e) = std::panic::catch_unwind(pg_start)
        {
            eprintln!("PgOutage: could not restart PostgreSQL: {e:?}");
        }
    }
}

/// A TCP port that is free on 127.0.0.1 at the moment of the call (bound to port 0 and
/// released again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// The directory holding the workspace's binaries: the parent of this test executable's
/// `deps/` when the binary is there (this follows `CARGO_TARGET_DIR` and the profile),
/// otherwise `<workspace>/target/debug` (the workspace being `CARGO_MANIFEST_DIR/..`).
pub fn binary_path(name: &str) -> PathBuf {
    let exe_name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let dir = if dir.ends_with("deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        let candidate = dir.join(&exe_name);
        if candidate.is_file() {
            return candidate;
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace");
    let candidate = workspace.join("target").join("debug").join(&exe_name);
    if candidate.is_file() {
        return candidate;
    }
    panic!(
        "workspace binary `{name}` not found at {}: build it first (`cargo build --workspace`, \
         which scripts/test.sh does)",
        candidate.display()
    );
}

/// Lines of one output stream of a [`Spawned`] child, read by a thread of their own. Every line
/// is also echoed to the test's stderr (captured by the test harness, shown on failure).
#[derive(Debug)]
pub struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    closed: bool,
}

impl Lines {
    fn start(label: String, stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        eprintln!("[{label}] {line}");
                        // The receiver may be gone; keep draining so the child never blocks.
                        let _ = tx.send(line);
                    }
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            closed: false,
        }
    }

    /// Every line received so far (by [`wait_for_line`] or [`Lines::drain`]).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Takes in the lines that have arrived so far without waiting; returns them.
    pub fn drain(&mut self) -> &[String] {
        let from = self.seen.len();
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
        &self.seen[from..]
    }

    /// Whether the stream has ended (the child closed it or exited).
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Reads lines from `lines` (a child's stdout or stderr) until one satisfies `predicate` and
/// returns it. Fails when `timeout` passes or the stream ends first; the error lists the last
/// lines seen.
pub fn wait_for_line(
    lines: &mut Lines,
    mut predicate: impl FnMut(&str) -> bool,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.rx.recv_timeout(left) {
            Ok(line) => {
                lines.seen.push(line.clone());
                if predicate(&line) {
                    return Ok(line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(anyhow!(
                    "no matching line within {timeout:?}; last lines:\n{}",
                    tail(&lines.seen)
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                lines.closed = true;
                return Err(anyhow!(
                    "the stream ended without a matching line; last lines:\n{}",
                    tail(&lines.seen)
                ));
            }
        }
    }
}

fn tail(seen: &[String]) -> String {
    let from = seen.len().saturating_sub(20);
    seen[from..].join("\n")
}

/// A running workspace binary. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Spawned {
    name: String,
    child: Child,
    stdout: Lines,
    stderr: Lines,
    exited: Option<ExitStatus>,
}

/// Starts the workspace binary `name` (from `target/debug`, see above) with `args` and extra
/// environment variables `env`, stdin closed and stdout/stderr piped. Read its output with
/// [`Spawned::stdout`] / [`Spawned::stderr`] and [`wait_for_line`].
pub fn spawn_binary(name: &str, args: &[&str], env: &[(&str, &str)]) -> Spawned {
    spawn_binary_os(name, args, env.iter().copied())
}

/// Like [`spawn_binary`] with any argument and environment types.
pub fn spawn_binary_os<A, K, V>(
    name: &str,
    args: impl IntoIterator<Item = A>,
    env: impl IntoIterator<Item = (K, V)>,
) -> Spawned
where
    A: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    spawn_path(&binary_path(name), args, env)
}

/// Like [`spawn_binary_os`] for a program given by path (`sh`, a fake bank, ...).
pub fn spawn_path<A, K, V>(
    path: &Path,
    args: impl IntoIterator<Item = A>,
    env: impl IntoIterator<Item = (K, V)>,
) -> Spawned
where
    A: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let mut child = Command::new(path)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
    let stdout = Lines::start(
        format!("{name} out"),
        child.stdout.take().expect("stdout is piped"),
    );
    let stderr = Lines::start(
        format!("{name} err"),
        child.stderr.take().expect("stderr is piped"),
    );
    Spawned {
        name,
        child,
        stdout,
        stderr,
        exited: None,
    }
}

impl Spawned {
    /// The child's stdout lines.
    pub fn stdout(&mut self) -> &mut Lines {
        &mut self.stdout
    }

    /// The child's stderr lines.
    pub fn stderr(&mut self) -> &mut Lines {
        &mut self.stderr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return self.exited;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }

    /// Kills the process (SIGKILL) and reaps it; returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {}: {e}", self.name));
        self.exited = Some(status);
        status
    }

    /// The underlying [`Child`].
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a private Redis Cluster may take to agree on its slots after creation.
const REDIS_CLUSTER_READY_WAIT: Duration = Duration::from_secs(30);
/// Nodes in a private Redis Cluster: the fewest `redis-cli --cluster create` accepts
/// without replicas.
pub const REDIS_CLUSTER_NODES: usize = 3;

/// A private three-node Redis Cluster on free ports, its files under
/// `target/test-services/cluster-<name>/`; the nodes are shut down when this is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    /// The nodes' files, removed with them.
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts the nodes (`--cluster-enabled yes`), joins them with `redis-cli --cluster
    /// create` and waits until every node reports `cluster_state:ok`.
    pub fn start(name: &str) -> RedisCluster {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-services")
            .join(format!("cluster-{}", unique_name(name)));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            nodes: Vec::new(),
            dir: dir.clone(),
        };
        for _ in 0..REDIS_CLUSTER_NODES {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (install the Debian package redis-server)");
            cluster.ports.push(port);
            cluster.nodes.push(child);
        }
        for port in &cluster.ports {
            wait_until("redis node answers PING", REDIS_CLUSTER_READY_WAIT, || {
                redis_cli(*port, &["ping"]).is_some_and(|o| o.trim() == "PONG")
            });
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {created:?}"
        );
        for port in &cluster.ports {
            wait_until("cluster_state:ok", REDIS_CLUSTER_READY_WAIT, || {
                redis_cli(*port, &["cluster", "info"])
                    .is_some_and(|o| o.contains("cluster_state:ok"))
            });
        }
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The ports of the nodes.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (port, node) in self.ports.iter().zip(self.nodes.iter_mut()) {
            let _ = redis_cli(*port, &["shutdown", "nosave"]);
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private single Redis server on a free port that a test may stop and start again on
/// the same port (an outage, or a restart that loses every key: it keeps nothing on disk).
/// Stopped when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    server: Option<Child>,
}

impl PrivateRedis {
    /// Starts the server and waits until it answers PING.
    pub fn start() -> PrivateRedis {
        let mut redis = PrivateRedis {
            port: free_port(),
            server: None,
        };
        redis.resume();
        redis
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (connections refused until [`PrivateRedis::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        wait_until("redis stopped", REDIS_CLUSTER_READY_WAIT, || {
            redis_cli(self.port, &["ping"]).is_none()
        });
    }

    /// Starts the server again on its port, empty, and waits until it answers PING.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (install the Debian package redis-server)");
        self.server = Some(child);
        let port = self.port;
        wait_until("redis answers PING", REDIS_CLUSTER_READY_WAIT, || {
            redis_cli(port, &["ping"]).is_some_and(|o| o.trim() == "PONG")
        });
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// Runs `redis-cli -p PORT ARGS` and returns its output, if it ran and succeeded.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `ready` every 50 ms until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The environment variables that point at the private servers, for passing on to a child
/// process explicitly (children inherit them anyway).
pub fn service_env() -> HashMap<&'static str, String> {
    [
        "SWITCHYARD_TEST_PG_URL",
        "SWITCHYARD_TEST_PG_BIN",
        "SWITCHYARD_TEST_PG_DATA",
        "SWITCHYARD_TEST_PG_PORT",
        "SWITCHYARD_TEST_REDIS_URL",
        "SWITCHYARD_TEST_REDIS_PORT",
    ]
    .into_iter()
    .map(|k| (k, env_var(k)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // with_database swaps only the path of a postgres URL.
    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5/postgres", "x"),
            "postgres://postgres@127.0.0.1:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u@h:5/db?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
    }

    // unique_name gives distinct, valid identifiers of at most 63 bytes.
    #[test]
    fn unique_names_are_distinct_and_short() {
        let a = unique_name("Some Test-Name");
        let b = unique_name("Some Test-Name");
        assert_ne!(a, b);
        assert!(a.starts_with("some_test_name_"));
        let long = unique_name(&"x".repeat(200));
        assert!(long.len() <= 63);
        assert!(unique_name("1abc").starts_with('t'));
    }

    // wait_for_line returns the first matching line, reports a timeout, and the guard kills the
    // child on drop.
    #[test]
    fn wait_for_line_and_kill_on_drop() {
        let mut child = spawn_path(
            Path::new("sh"),
            [
                "-c",
                "echo starting; echo \"$GREETING\" >&2; echo ready on 42; exec sleep 60",
            ],
            [("GREETING", "hi there")],
        );
        let line = wait_for_line(
            child.stdout(),
            |l| l.starts_with("ready"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(line, "ready on 42");
        assert_eq!(child.stdout().seen(), ["starting", "ready on 42"]);
        let err = wait_for_line(child.stderr(), |l| l == "hi there", Duration::from_secs(10));
        assert_eq!(err.unwrap(), "hi there");
        let timeout = wait_for_line(child.stdout(), |_| true, Duration::from_millis(100));
        assert!(
            timeout
                .unwrap_err()
                .to_string()
                .contains("no matching line")
        );
        assert!(child.wait_timeout(Duration::from_millis(50)).is_none());

        let pid = child.pid();
        drop(child);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!alive, "the child must be gone after drop");
    }
}
