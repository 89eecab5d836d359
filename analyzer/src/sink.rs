//! Where window points go: InfluxDB over HTTP, or a line-protocol file.
//!
//! A sink's `write` returns `Ok` only when the batch is durably accepted; the
//! analyzer commits offsets only after that. Errors tell a retryable outside
//! failure (5xx, 429, timeout, connection refused) from a permanent one (bad
//! request, auth, missing database) so the caller can retry or stop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::write::GzEncoder;

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again later: the data is not lost, only not yet written.
    #[error("{0} (will retry)")]
    Retryable(String),
    /// Trying again cannot help; the analyzer stops with this message.
    #[error("{0}")]
    Permanent(String),
}

/// A destination for line protocol.
pub trait Sink: Send {
    /// Writes one batch; `Ok` means durably accepted.
    fn write(&mut self, line_protocol: &[u8]) -> Result<(), SinkError>;
    /// Where it writes, for logs.
    fn describe(&self) -> String;
}

/// Connection settings of an InfluxDB 1.x `/write` endpoint.
#[derive(Debug, Clone)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub db: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Writes to InfluxDB 1.x with `POST /write?db=`, gzip-compressed.
pub struct InfluxSink {
    cfg: InfluxConfig,
    http: reqwest::blocking::Client,
    write_url: String,
}

impl InfluxSink {
    pub fn new(cfg: InfluxConfig) -> Result<Self, SinkError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| SinkError::Permanent(format!("cannot build HTTP client: {e}")))?;
        let write_url = format!("{}/write", cfg.url.trim_end_matches('/'));
        Ok(InfluxSink {
            cfg,
            http,
            write_url,
        })
    }

    fn auth(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.cfg.user {
            Some(u) => rb.basic_auth(u, self.cfg.password.as_deref()),
            None => rb,
        }
    }

    /// `CREATE DATABASE` (idempotent in InfluxDB 1.x); used by the demo.
    pub fn ensure_database(&self) -> Result<(), SinkError> {
        let url = format!("{}/query", self.cfg.url.trim_end_matches('/'));
        let q = format!("CREATE DATABASE \"{}\"", self.cfg.db.replace('"', "\\\""));
        let resp = self
            .auth(self.http.post(url).form(&[("q", q)]))
            .send()
            .map_err(classify_transport)?;
        check_status(resp, &self.cfg.url)
    }
}

fn classify_transport(e: reqwest::Error) -> SinkError {
    SinkError::Retryable(format!("InfluxDB unreachable: {e}"))
}

fn check_status(resp: reqwest::blocking::Response, url: &str) -> Result<(), SinkError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().unwrap_or_default();
    let msg = format!("InfluxDB at {url} answered {status}: {}", body.trim());
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        Err(SinkError::Retryable(msg))
    } else {
        Err(SinkError::Permanent(msg))
    }
}

impl Sink for InfluxSink {
    fn write(&mut self, lp: &[u8]) -> Result<(), SinkError> {
        let mut gz = GzEncoder::new(
            Vec::with_capacity(lp.len() / 4 + 64),
            flate2::Compression::fast(),
        );
        gz.write_all(lp)
            .and_then(|_| gz.try_finish())
            .map_err(|e| SinkError::Permanent(e.to_string()))?;
        let body = gz
            .finish()
            .map_err(|e| SinkError::Permanent(e.to_string()))?;
        let rb = self
            .http
            .post(&self.write_url)
            .query(&[("db", self.cfg.db.as_str())])
            .header("Content-Encoding", "gzip")
            .body(body);
        let resp = self.auth(rb).send().map_err(classify_transport)?;
        check_status(resp, &self.cfg.url)
    }

    fn describe(&self) -> String {
        format!("InfluxDB {} db {}", self.cfg.url, self.cfg.db)
    }
}

/// Appends line protocol to a file (the demo's default output), fsynced per batch.
pub struct LpFileSink {
    path: PathBuf,
    file: File,
}

impl LpFileSink {
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| SinkError::Permanent(format!("cannot open {}: {e}", path.display())))?;
        Ok(LpFileSink {
            path: path.to_owned(),
            file,
        })
    }
}

impl Sink for LpFileSink {
    fn write(&mut self, lp: &[u8]) -> Result<(), SinkError> {
        self.file
            .write_all(lp)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| SinkError::Retryable(format!("writing {}: {e}", self.path.display())))
    }

    fn describe(&self) -> String {
        format!("line-protocol file {}", self.path.display())
    }
}
