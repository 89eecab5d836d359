//! `--http ADDR`: `POST /lines` with a body of newline-delimited lines,
//! answered once Kafka acknowledged all of them; `GET /health`.
//!
//! - source: `?source=NAME`, else the `X-Logpipe-Source` header, else
//!   `--http-source`;
//! - `Content-Encoding: gzip` bodies are decompressed;
//! - a body (compressed or decompressed) over `--http-max-body` is refused
//!   with 413 and nothing of it is published;
//! - 200 `{"lines":N}` means every line is stored in Kafka; 503 means Kafka
//!   refused them or did not acknowledge within `--http-ack-timeout`: retry
//!   (lines may then arrive twice, never zero times).
//!
//! One HTTP/1.1 connection is one stream: its requests are served one after
//! another, and the lines' offsets count the decoded body bytes of the
//! connection.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::tcp::Splitter;
use super::{now_ms, Shared, Stream};

pub(crate) async fn serve(
    shared: Arc<Shared>,
    l: std::net::TcpListener,
) -> Result<(), std::io::Error> {
    tracing::info!(addr = %l.local_addr()?, "HTTP line input listening (POST /lines, GET /health)");
    super::accept_loop(shared, l, "HTTP input", |shared, sock, _peer| {
        connection(shared, sock)
    })
    .await
}

async fn connection(shared: Arc<Shared>, sock: tokio::net::TcpStream) {
    let _ = sock.set_nodelay(true);
    // Created on the first POST: health checks do not use up stream numbers.
    let stream: Arc<tokio::sync::Mutex<Option<(Stream, Splitter)>>> = Arc::default();
    let svc = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let (shared, stream) = (shared.clone(), stream.clone());
            async move { Ok::<_, std::convert::Infallible>(handle(&shared, &stream, req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc);
    tokio::pin!(conn);
    let mut stopping = shared.stopping.clone();
    let mut shutting = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP input: connection ended");
                }
                break;
            }
            _ = stopping.changed(), if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        serde_json::json!({ "error": msg }).to_string() + "\n",
    )
}

/// `%XX` and `+` of a query value.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn source_of(req: &Request<Incoming>, default: &str) -> Result<String, String> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "source")
            .map(|(_, v)| v)
    });
    let source = match from_query {
        Some(v) => percent_decode(v).ok_or("?source= is not valid percent-encoded UTF-8")?,
        None => match req.headers().get("x-logpipe-source") {
            Some(v) => v
                .to_str()
                .map_err(|_| "X-Logpipe-Source is not visible ASCII")?
                .to_string(),
            None => default.to_string(),
        },
    };
    if source.is_empty() || source.len() > 256 || source.chars().any(char::is_control) {
        return Err("the source must be 1 to 256 characters without control characters".into());
    }
    Ok(source)
}

async fn handle(
    shared: &Arc<Shared>,
    stream: &tokio::sync::Mutex<Option<(Stream, Splitter)>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            let s = shared.stats.snapshot();
            let ok = shared.publisher.check().is_ok();
            let body = serde_json::json!({
                "status": if ok { "ok" } else { "failing" },
                "lines_received": s.lines_read,
                "lines_acknowledged": s.lines_acked,
                "in_flight": s.in_flight,
            });
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, body.to_string() + "\n")
        }
        (&Method::POST, "/lines") => post_lines(shared, stream, req).await,
        (_, "/lines" | "/health") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "POST /lines, GET /health")
        }
        _ => error(StatusCode::NOT_FOUND, "POST /lines, GET /health"),
    }
}

async fn post_lines(
    shared: &Arc<Shared>,
    stream: &tokio::sync::Mutex<Option<(Stream, Splitter)>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let max = shared.cfg.http_max_body;
    let source = match source_of(&req, &shared.cfg.http_source) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let gzip = match req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .map(|v| v.to_str())
    {
        None | Some(Ok("identity")) => false,
        Some(Ok("gzip" | "x-gzip")) => true,
        Some(_) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Encoding must be gzip or none",
            )
        }
    };
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over the limit of {max} bytes (--http-max-body); nothing was published, send smaller batches"),
        )
    };
    if req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return too_big();
    }
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_big()
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let mut data = if gzip {
        let mut out = Vec::new();
        let r = flate2::read::MultiGzDecoder::new(&body[..])
            .take(max as u64 + 1)
            .read_to_end(&mut out);
        match r {
            Ok(_) if out.len() > max => return too_big(),
            Ok(_) => out,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("gzip body: {e}")),
        }
    } else {
        body.to_vec()
    };
    if data.is_empty() {
        return reply(StatusCode::OK, "{\"lines\":0}\n".into());
    }
    // The body's end ends its last line.
    if data.last() != Some(&b'\n') {
        data.push(b'\n');
    }
    let mut guard = stream.lock().await;
    if guard.is_none() {
        match shared.stream("http") {
            Ok(s) => *guard = Some((s, Splitter::new(shared.cfg.max_line_bytes))),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }
    let (stream, split) = guard.as_mut().expect("created above");
    let mut lines = 0u64;
    let sent = {
        let ts = now_ms();
        split.feed(&mut data, &mut |v, o, e, m| {
            lines += 1;
            stream.send(&source, v, o, e, m, ts)
        })
    };
    let sent = stream.end_read(sent);
    if let Err(e) = sent {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{e}; lines of this request may be published in part — retry"),
        );
    }
    // Acknowledged when nothing of this connection is in flight (its
    // requests are served one at a time).
    let deadline = Instant::now() + shared.cfg.http_ack_timeout;
    let mut pause = Duration::from_micros(200);
    while stream.in_flight() > 0 {
        if let Err(e) = shared.publisher.check() {
            return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
        if Instant::now() >= deadline {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Kafka did not acknowledge the lines in time (--http-ack-timeout); they may still be stored — a retry can duplicate them",
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    if let Err(e) = shared.publisher.check() {
        return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    reply(StatusCode::OK, format!("{{\"lines\":{lines}}}\n"))
}
