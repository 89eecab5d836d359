//! `--python-logging ADDR`: Python's `logging.handlers.SocketHandler` (TCP)
//! and `DatagramHandler` (UDP, same address).
//!
//! Both send each `LogRecord` as a 4-byte big-endian length and a pickled
//! dict of its attributes. The pickle is decoded by [`pickle`], which
//! only builds plain data; a pickle that names or builds any Python object
//! is refused and logged, and nothing runs. Each record is published as one
//! JSON object on one line, its source the logger's name:
//! `created`, `name`, `levelname`, `levelno`, `message` (`msg % args` as
//! `LogRecord.getMessage()` computes it, when the client did not do it
//! already), then the record's other attributes (`pathname`, `lineno`,
//! `funcName`, `process`, `processName`, `thread`, `threadName`,
//! `exc_text`, `stack_info`, any `extra=` fields …) in the order sent.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

pub mod format;
pub mod pickle;

use super::{now_ms, Shared};
use crate::stats::Stats;
use crate::tail::Marks;
use format::{percent_format, py_str};
use pickle::Value;

/// Why a frame did not become a line.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Pickle(#[from] pickle::PickleError),
    #[error("the pickle is not a dict of a LogRecord's attributes")]
    NotADict,
}

/// The JSON line of one pickled LogRecord dict, and its logger name.
pub fn record_line(frame: &[u8]) -> Result<(String, Vec<u8>), RecordError> {
    let v = pickle::decode(frame)?;
    let Value::Dict(items) = &v else {
        return Err(RecordError::NotADict);
    };
    let name = match v.get("name") {
        Some(Value::Str(s)) if !s.is_empty() => s.clone(),
        Some(Value::None) | None => "root".to_string(),
        Some(other) => py_str(other),
    };
    let msg = v.get("msg").map(py_str).unwrap_or_default();
    let mut format_error = None;
    let message = match v.get("args") {
        None | Some(Value::None) => msg,
        Some(Value::Tuple(t)) if t.is_empty() => msg,
        Some(Value::Dict(d)) if d.is_empty() => msg,
        Some(args) => {
            // LogRecord: a 1-tuple holding a dict is the mapping.
            let args = match args {
                Value::Tuple(t) if t.len() == 1 && matches!(t[0], Value::Dict(_)) => &t[0],
                a => a,
            };
            match percent_format(&msg, args) {
                Ok(m) => m,
                Err(e) => {
                    format_error = Some(e);
                    msg
                }
            }
        }
    };
    let mut out = Vec::with_capacity(frame.len() + 64);
    out.push(b'{');
    let mut first = true;
    let mut field = |out: &mut Vec<u8>, k: &str, w: &dyn Fn(&mut Vec<u8>)| {
        if !first {
            out.push(b',');
        }
        first = false;
        json_str(out, k);
        out.push(b':');
        w(out);
    };
    for k in ["created", "name", "levelname", "levelno"] {
        if let Some(x) = v.get(k) {
            field(&mut out, k, &|o| json_value(o, x));
        }
    }
    field(&mut out, "message", &|o| json_str(o, &message));
    if let Some(e) = &format_error {
        field(&mut out, "format_error", &|o| json_str(o, e));
    }
    const DONE: [&str; 8] = [
        "created",
        "name",
        "levelname",
        "levelno",
        "msg",
        "args",
        "message",
        "exc_info",
    ];
    // The other attributes in the order sent; of a repeated key, the last value.
    let mut rest: Vec<(&str, &Value)> = Vec::new();
    for (k, x) in items {
        let Value::Str(k) = k else { continue };
        if DONE.contains(&k.as_str()) {
            continue;
        }
        match rest.iter_mut().find(|(kk, _)| *kk == k) {
            Some(e) => e.1 = x,
            None => rest.push((k, x)),
        }
    }
    for (k, x) in rest {
        field(&mut out, k, &|o| json_value(o, x));
    }
    out.push(b'}');
    Ok((name, out))
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
}

fn json_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::None => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
        // Beyond 64 bits: decimal text (many JSON readers cannot hold such a number).
        Value::BigInt(s) => json_str(out, s),
        Value::Float(f) if f.is_finite() => {
            serde_json::to_writer(&mut *out, f).expect("writing to a Vec")
        }
        Value::Float(f) => json_str(out, &format::float_repr(*f)),
        Value::Str(s) => json_str(out, s),
        Value::Bytes(b) => json_str(out, &String::from_utf8_lossy(b)),
        Value::Tuple(items) | Value::List(items) | Value::Set(items) => {
            out.push(b'[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_value(out, x);
            }
            out.push(b']');
        }
        Value::Dict(kv) => {
            out.push(b'{');
            for (i, (k, x)) in kv.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, &py_str(k));
                out.push(b':');
                json_value(out, x);
            }
            out.push(b'}');
        }
    }
}

/// Logs a refused record: the first ten of a connection, then every 1000th.
fn refused(stats: &Stats, peer: &str, n: u64, error: &dyn std::fmt::Display) {
    Stats::add(&stats.records_refused, 1);
    if n < 10 || n.is_multiple_of(1000) {
        tracing::error!(%peer, refused_on_this_connection = n + 1, %error, "python-logging input: record refused (not published; nothing in it was run)");
    }
}

pub(crate) async fn serve_tcp(
    shared: Arc<Shared>,
    l: std::net::TcpListener,
) -> Result<(), std::io::Error> {
    tracing::info!(addr = %l.local_addr()?, "Python logging input listening (SocketHandler on TCP, DatagramHandler on UDP)");
    super::accept_loop(shared, l, "python-logging input", connection).await
}

/// Frames per batch handed from a connection's reader to its publisher.
const BATCH: usize = 256;

/// Bytes of records read from all connections and not yet published, at
/// most. Python's SocketHandler gives up on a record (silently, and
/// reconnects) when a send blocks for a second, so each connection's reader
/// keeps reading while its records wait to be decoded and published — up to
/// this much; beyond it, readers wait (back-pressure to the clients).
const TCP_BACKLOG: usize = 64 << 20;

/// Frames read from one connection: (stream offset, range in `data`).
struct Frames {
    data: Vec<u8>,
    frames: Vec<(u64, std::ops::Range<usize>)>,
}

async fn connection(shared: Arc<Shared>, sock: TcpStream, peer: SocketAddr) {
    let mut stream = match shared.stream("pylog") {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, error = %e, "python-logging input: connection refused");
            return;
        }
    };
    let peer_s = peer.to_string();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Frames>();
    let reader = tokio::spawn(read_frames(shared.clone(), sock, peer_s.clone(), tx));
    let mut refused_n = 0u64;
    // Ends when the reader is done and everything it read is published.
    while let Some(batch) = rx.recv().await {
        shared
            .backlog
            .fetch_sub(batch.data.len(), std::sync::atomic::Ordering::Relaxed);
        let result = (|| {
            let ts = now_ms();
            for (o, range) in &batch.frames {
                let frame = &batch.data[range.clone()];
                match record_line(frame) {
                    Ok((name, line)) => {
                        let end = o + 4 + frame.len() as u64;
                        stream.send(&name, &line, *o, end, Marks::default(), ts)?;
                    }
                    Err(e) => {
                        refused(&shared.stats, &peer_s, refused_n, &e);
                        refused_n += 1;
                    }
                }
            }
            Ok::<_, crate::publish::PublishError>(())
        })();
        let result = stream.end_read(result);
        if let Err(e) = result {
            if !matches!(e, crate::publish::PublishError::Stopping) {
                tracing::error!(peer = %peer_s, error = %e, "python-logging input: records could not be sent");
            }
            reader.abort();
            break;
        }
    }
}

/// Reads length-prefixed frames until the client closes, a frame is over
/// the size limit, or the producer stops.
async fn read_frames(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: String,
    tx: tokio::sync::mpsc::UnboundedSender<Frames>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut r = BufReader::with_capacity(256 << 10, sock);
    let mut stopping = shared.stopping.clone();
    let max = shared.cfg.max_line_bytes;
    let mut offset = 0u64;
    loop {
        let mut batch = Frames {
            data: Vec::with_capacity(64 << 10),
            frames: Vec::with_capacity(BATCH),
        };
        let mut done = false;
        // One frame at least, then whatever is already buffered.
        loop {
            let mut len = [0u8; 4];
            let got = tokio::select! {
                r = r.read_exact(&mut len) => r,
                _ = stopping.changed(), if batch.frames.is_empty() => return,
            };
            if got.is_err() {
                done = true;
                break;
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > max {
                refused(&shared.stats, &peer, 0, &format!("record of {n} bytes is over the limit of {max} (--max-line-bytes); connection closed"));
                done = true;
                break;
            }
            let start = batch.data.len();
            batch.data.resize(start + n, 0);
            if let Err(e) = r.read_exact(&mut batch.data[start..]).await {
                tracing::debug!(%peer, error = %e, "python-logging input: connection ended inside a record (that record is incomplete and not published)");
                batch.data.truncate(start);
                done = true;
                break;
            }
            batch.frames.push((offset, start..start + n));
            offset += 4 + n as u64;
            if batch.frames.len() >= BATCH || r.buffer().len() < 4 {
                break;
            }
        }
        if !batch.frames.is_empty() {
            shared.backlog.fetch_add(batch.data.len(), Relaxed);
            if tx.send(batch).is_err() {
                return;
            }
        }
        if done {
            return;
        }
        while shared.backlog.load(Relaxed) > TCP_BACKLOG {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// Datagrams received and not yet published, in bytes, at most: the kernel
/// drops datagrams that arrive while nobody reads the socket, so the reader
/// only queues them and another task decodes and publishes; past this
/// backlog (Kafka away for long) datagrams are dropped, counted and logged.
const UDP_BACKLOG: usize = 64 << 20;

pub(crate) async fn serve_udp(
    shared: Arc<Shared>,
    s: std::net::UdpSocket,
) -> Result<(), std::io::Error> {
    let s = UdpSocket::from_std(s)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(SocketAddr, Vec<u8>)>();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let receiver = {
        let (shared, queued) = (shared.clone(), queued.clone());
        tokio::spawn(async move {
            let mut stopping = shared.stopping.clone();
            let mut buf = vec![0u8; 65536];
            let mut dropped = 0u64;
            loop {
                let (n, peer) = tokio::select! {
                    r = s.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "python-logging input (UDP): receive failed");
                            continue;
                        }
                    },
                    _ = stopping.changed() => break,
                };
                use std::sync::atomic::Ordering::Relaxed;
                if queued.load(Relaxed) + n > UDP_BACKLOG {
                    Stats::add(&shared.stats.records_refused, 1);
                    if dropped.is_multiple_of(1000) {
                        tracing::error!(%peer, dropped = dropped + 1, backlog_bytes = UDP_BACKLOG, "python-logging input (UDP): backlog full (Kafka slow or away); datagram dropped");
                    }
                    dropped += 1;
                    continue;
                }
                queued.fetch_add(n, Relaxed);
                if tx.send((peer, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        })
    };
    let mut stream = shared
        .stream("udp")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut offset = 0u64;
    let mut refused_n = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    // Ends when the receiver stopped and everything it queued is published.
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let r = (|| {
            let ts = now_ms();
            for (peer, d) in batch.drain(..) {
                queued.fetch_sub(d.len(), std::sync::atomic::Ordering::Relaxed);
                let o = offset;
                offset += d.len() as u64;
                let len = d
                    .get(..4)
                    .map(|l| u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize);
                if len != Some(d.len().wrapping_sub(4)) {
                    refused(
                        &shared.stats,
                        &peer.to_string(),
                        refused_n,
                        &"datagram is not a 4-byte length and a pickle of that length",
                    );
                    refused_n += 1;
                    continue;
                }
                match record_line(&d[4..]) {
                    Ok((name, line)) => {
                        stream.send(&name, &line, o, offset, Marks::default(), ts)?
                    }
                    Err(e) => {
                        refused(&shared.stats, &peer.to_string(), refused_n, &e);
                        refused_n += 1;
                    }
                }
            }
            Ok::<_, crate::publish::PublishError>(())
        })();
        let r = stream.end_read(r);
        if let Err(e) = r {
            receiver.abort();
            if matches!(e, crate::publish::PublishError::Stopping) {
                break;
            }
            return Err(std::io::Error::other(e.to_string()));
        }
    }
    Ok(())
}
