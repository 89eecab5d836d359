//! Inputs that are not files: TCP and HTTP line receivers, Python's
//! `logging` socket handlers, and tcollector-style plugin programs.
//!
//! Every input publishes through the file producer's [`Publisher`] with the
//! same wire contract. What stands in for a file is a *stream*: one TCP or
//! HTTP connection, one Python handler connection (or the UDP socket), one
//! run of a plugin. A stream's `file` header is `<kind>:<run>:<n>` — the
//! producer's run (random, so streams of different runs and hosts never
//! share an identity) and the stream's number — and its `offset` is the
//! byte offset of the line (or record) in the stream, so the analyzers'
//! and the archive's de-duplication by (`file`, `offset`) applies unchanged.
//! A stream's records are sent from one task, in order, so they reach each
//! partition in offset order as a file's lines do.
//!
//! Nothing here has a checkpoint: a stream cannot be read again. Lines are
//! handed to librdkafka (idempotent, retried forever) as they arrive; a
//! shutdown waits for them like for file lines. The HTTP input answers a
//! request only once Kafka acknowledged every line of it, so a client that
//! saw an error can retry without loss (at worst a retry duplicates lines
//! whose acknowledgement was lost with the connection).

mod exec;
mod http;
pub mod python;
mod tcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::publish::{Origin, PublishError, Publisher, Run};
use crate::stats::Stats;
use crate::tail::Marks;

/// Which collectors to run, and their limits.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// `--tcp`: newline-delimited lines, published as `tcp_source`.
    pub tcp: Option<SocketAddr>,
    pub tcp_source: String,
    /// `--http`: `POST /lines`; the source from `?source=` or the
    /// `X-Logpipe-Source` header, else `http_source`.
    pub http: Option<SocketAddr>,
    pub http_source: String,
    /// Largest request body, compressed or not.
    pub http_max_body: usize,
    /// How long a request waits for Kafka's acknowledgement before 503.
    pub http_ack_timeout: Duration,
    /// `--python-logging`: SocketHandler on TCP and DatagramHandler on UDP,
    /// same address.
    pub python_logging: Option<SocketAddr>,
    /// `--exec`: plugin directory.
    pub exec: Option<PathBuf>,
    /// Longest line (or pickled record) accepted; longer lines are cut and
    /// marked as in files, longer records refused and logged.
    pub max_line_bytes: usize,
    /// Most connections at once per listener; more are refused (closed at once, logged).
    pub max_connections: usize,
    /// First wait before a long-running plugin that exited is started again
    /// (doubling up to a minute, reset after a minute of running).
    pub exec_restart_backoff: Duration,
}

impl CollectConfig {
    pub fn new() -> Self {
        CollectConfig {
            tcp: None,
            tcp_source: "tcp".into(),
            http: None,
            http_source: "http".into(),
            http_max_body: 64 << 20,
            http_ack_timeout: Duration::from_secs(30),
            python_logging: None,
            exec: None,
            max_line_bytes: 1 << 20,
            max_connections: 1024,
            exec_restart_backoff: Duration::from_secs(1),
        }
    }

    pub fn any(&self) -> bool {
        self.tcp.is_some()
            || self.http.is_some()
            || self.python_logging.is_some()
            || self.exec.is_some()
    }
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{what} {addr}: cannot listen: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--exec {}: {source}", dir.display())]
    ExecDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the collectors' runtime: {0}")]
    Runtime(std::io::Error),
}

/// What all streams share.
pub(crate) struct Shared {
    pub publisher: Arc<Publisher>,
    pub host: String,
    /// Random per producer run: part of every stream's `file` identity.
    pub run: String,
    pub next_stream: AtomicU64,
    pub stats: Arc<Stats>,
    pub cfg: CollectConfig,
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Bytes the Python logging connections read and did not publish yet.
    pub backlog: std::sync::atomic::AtomicUsize,
    /// Lines and bytes handed to Kafka by all streams.
    pub lines: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
}

impl Shared {
    /// A new stream of `kind` (`tcp`, `http`, `pylog`, `udp`, `exec`).
    pub fn stream(self: &Arc<Self>, kind: &str) -> Result<Stream, PublishError> {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        Ok(Stream {
            slot: self.publisher.add_slot(0)?,
            file_id: format!("{kind}:{}:{n}", self.run),
            shared: self.clone(),
            run: Run::new(),
            source: String::new(),
            key: Vec::new(),
            counted: (0, 0),
        })
    }

    pub fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}

/// One connection, request stream or plugin run: the `file` its records carry.
pub(crate) struct Stream {
    pub shared: Arc<Shared>,
    pub slot: usize,
    pub file_id: String,
    /// The record being gathered from the current read or request.
    run: Run,
    /// The previous line's source and key (most streams have one source).
    source: String,
    key: Vec<u8>,
    /// Lines and bytes sent and not yet added to the shared counters.
    counted: (u64, u64),
}

impl Stream {
    /// Adds one line to the stream's record, sending the record when the
    /// line does not continue it or it is full; while librdkafka's queue is
    /// full it waits (in `block_in_place`: call it on the collectors'
    /// runtime). `offset`: where it starts in the stream; `end`: where the
    /// next starts. [`Stream::end_read`] sends the rest.
    pub fn send(
        &mut self,
        source: &str,
        value: &[u8],
        offset: u64,
        end: u64,
        marks: Marks,
        timestamp_ms: i64,
    ) -> Result<(), PublishError> {
        if self.source != source || self.key.is_empty() {
            self.source.clear();
            self.source.push_str(source);
            self.key = logpipe_wire::record_key(&self.shared.host, source).into_bytes();
        }
        // Counted here and added to the shared counters now and then: one
        // atomic add per line per counter, from several connections on two
        // cores, was a visible share of the HTTP input's CPU.
        self.counted.0 += 1;
        self.counted.1 += value.len() as u64;
        if marks.cut.is_some() {
            Stats::add(&self.shared.stats.lines_cut, 1);
        }
        if marks.partial.is_some() {
            Stats::add(&self.shared.stats.partial_lines, 1);
        }
        if self.counted.0 >= 256 {
            self.account();
        }
        let line = Origin {
            slot: self.slot,
            key: &self.key,
            host: &self.shared.host,
            source: &self.source,
            file_id: &self.file_id,
        }
        .line(value, offset, end, marks, timestamp_ms);
        let (publisher, run) = (&self.shared.publisher, &mut self.run);
        if publisher.try_add(run, &line)? {
            return Ok(());
        }
        // The in-flight limit: wait for room off the runtime's scheduling
        // (the connection stops reading meanwhile: back-pressure to its client).
        tokio::task::block_in_place(|| publisher.add(run, &line))
    }

    /// The end of a read or request whose lines were `sent`: the record
    /// gathered goes out (waiting for room as [`Stream::send`] does; after
    /// a failure it is dropped) and the counters are brought up to date.
    pub fn end_read(&mut self, sent: Result<(), PublishError>) -> Result<(), PublishError> {
        let (publisher, run) = (&self.shared.publisher, &mut self.run);
        let r = sent.and_then(|()| match publisher.try_close(run)? {
            true => Ok(()),
            false => tokio::task::block_in_place(|| publisher.close(run)),
        });
        if r.is_err() {
            run.discard();
        }
        self.account();
        r
    }

    /// Adds the lines counted since the last call to the shared counters
    /// (after each read or request, so `/health` and the stats are current).
    pub fn account(&mut self) {
        let (lines, bytes) = std::mem::take(&mut self.counted);
        if lines > 0 {
            let stats = &self.shared.stats;
            Stats::add(&stats.lines_read, lines);
            Stats::add(&stats.bytes_read, bytes);
            self.shared.lines.fetch_add(lines, Ordering::Relaxed);
            self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Lines of this stream handed to Kafka and not acknowledged yet.
    pub fn in_flight(&self) -> u64 {
        self.shared.publisher.slot_in_flight(self.slot)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        debug_assert!(self.run.is_empty(), "a stream's last read was not ended");
        self.account();
        // The slot is freed once its last line is acknowledged.
        let (publisher, slot) = (self.shared.publisher.clone(), self.slot);
        if !publisher.remove_slot_if_done(slot) {
            // A task, not a thread: many connections may close at once.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    while !publisher.remove_slot_if_done(slot) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            } else {
                std::thread::spawn(move || {
                    while !publisher.remove_slot_if_done(slot) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        }
    }
}

/// The running collectors: a tokio runtime on a thread of its own.
pub struct Collectors {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set when a collector failed for good (the producer then stops).
    pub failed: Arc<AtomicBool>,
    lines: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

/// A random hex token (std's hasher keys are random per process).
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Collectors {
    /// Binds every listener (so a taken port is an error here, before
    /// anything runs) and starts serving.
    pub fn start(
        cfg: CollectConfig,
        publisher: Arc<Publisher>,
        host: &str,
        stats: Arc<Stats>,
    ) -> Result<Collectors, CollectError> {
        let bind = |what: &'static str, addr: SocketAddr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| CollectError::Bind { what, addr, source })
        };
        let tcp = cfg.tcp.map(|a| bind("--tcp", a)).transpose()?;
        let http = cfg.http.map(|a| bind("--http", a)).transpose()?;
        let pylog = cfg
            .python_logging
            .map(|a| bind("--python-logging", a))
            .transpose()?;
        let udp = cfg
            .python_logging
            .map(|addr| {
                std::net::UdpSocket::bind(addr)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .inspect(big_receive_buffer)
                    .map_err(|source| CollectError::Bind {
                        what: "--python-logging (UDP)",
                        addr,
                        source,
                    })
            })
            .transpose()?;
        let plugins = match &cfg.exec {
            Some(dir) => {
                Some(
                    exec::Plugins::scan(dir).map_err(|source| CollectError::ExecDir {
                        dir: dir.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("logpipe-collect")
            .enable_all()
            .build()
            .map_err(CollectError::Runtime)?;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let failed = Arc::new(AtomicBool::new(false));
        let (lines, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let shared = Arc::new(Shared {
            publisher,
            host: host.to_string(),
            run: random_token(),
            next_stream: AtomicU64::new(0),
            stats,
            cfg,
            stopping,
            backlog: Default::default(),
            lines: lines.clone(),
            bytes: bytes.clone(),
        });
        let thread = {
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("logpipe-collect".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut tasks = tokio::task::JoinSet::new();
                        // Listeners become tokio's inside the runtime.
                        if let Some(l) = tcp {
                            tasks.spawn(tcp::serve(shared.clone(), l));
                        }
                        if let Some(l) = http {
                            tasks.spawn(http::serve(shared.clone(), l));
                        }
                        if let Some(l) = pylog {
                            tasks.spawn(python::serve_tcp(shared.clone(), l));
                        }
                        if let Some(s) = udp {
                            tasks.spawn(python::serve_udp(shared.clone(), s));
                        }
                        if let Some(p) = plugins {
                            tasks.spawn(exec::run(shared.clone(), p));
                        }
                        while let Some(r) = tasks.join_next().await {
                            match r {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    tracing::error!(error = %e, "collector stopped");
                                    failed.store(true, Ordering::SeqCst);
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "collector task failed");
                                    failed.store(true, Ordering::SeqCst);
                                }
                            }
                        }
                    });
                    // Connections still open are dropped with the runtime.
                    runtime.shutdown_timeout(Duration::from_secs(5));
                })
                .map_err(CollectError::Runtime)?
        };
        Ok(Collectors {
            stop,
            thread: Some(thread),
            failed,
            lines,
            bytes,
        })
    }

    /// Stops accepting, lets open streams hand over what they received,
    /// stops plugins, and returns when all of it is queued to Kafka.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Collectors {
    /// Lines and bytes the collectors handed to Kafka so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.lines.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Collectors {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Datagrams that arrive while the receiver is busy wait in the socket's
/// buffer; the default (~200 KiB, ~1000 records) overflows — and loses
/// records — at the first burst. 8 MiB, forced when allowed (root).
fn big_receive_buffer(s: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on our own socket with a c_int value.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
    tracing::warn!("python-logging UDP: could not enlarge the receive buffer; bursts of datagrams may be lost by the kernel");
}

/// Accepts connections until the producer stops (at most
/// `max_connections` open; more are closed at once and logged), serves each
/// with `conn`, and returns when every connection has finished.
pub(crate) async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    l: std::net::TcpListener,
    what: &'static str,
    conn: F,
) -> Result<(), std::io::Error>
where
    F: Fn(Arc<Shared>, tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::from_std(l)?;
    let limit = Arc::new(tokio::sync::Semaphore::new(
        shared.cfg.max_connections.max(1),
    ));
    let mut stopping = shared.stopping.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((sock, peer)) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let served = conn(shared.clone(), sock, peer);
                        conns.spawn(async move {
                            served.await;
                            drop(permit);
                        });
                    }
                    Err(_) => tracing::warn!(%peer, max = shared.cfg.max_connections, "{what}: too many connections (--max-connections); this one is closed"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopping.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}
