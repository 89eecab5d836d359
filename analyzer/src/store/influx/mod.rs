//! InfluxDB over HTTP: the writer, and the restore-point reader beside it.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;

use crate::store::{Scope, Sink, SinkError, StateBatch, StateStore, StoredPoint};

mod restore_points;

pub use restore_points::{quote_ident, STATE, STATE_SOURCE};

/// Which InfluxDB HTTP API to write to.
#[derive(Debug, Clone)]
pub enum InfluxApi {
    /// 1.x `/write?db=`, optional basic auth.
    V1 {
        db: String,
        user: Option<String>,
        password: Option<String>,
    },
    /// 2.x / 3.x `/api/v2/write?org=&bucket=` with `Authorization: Token`.
    /// Restore points are read through the v1-compatible `/query?db=<bucket>`
    /// (InfluxDB 2.x maps every bucket to a database of the same name).
    V2 {
        org: String,
        bucket: String,
        token: String,
    },
}

/// Connection settings of an InfluxDB endpoint.
#[derive(Debug, Clone)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub api: InfluxApi,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl InfluxConfig {
    /// The database (v1) or bucket (v2) name.
    pub fn database(&self) -> &str {
        match &self.api {
            InfluxApi::V1 { db, .. } => db,
            InfluxApi::V2 { bucket, .. } => bucket,
        }
    }
}

/// Request bodies are split at about this many bytes of line protocol
/// (InfluxDB's default `max-body-size` is 25 MB).
const MAX_BODY: usize = 4 << 20;

/// Writes to InfluxDB, gzip-compressed.
pub struct InfluxSink {
    client: Arc<InfluxClient>,
}

/// The HTTP side shared by the writer and the restore-point reader.
pub struct InfluxClient {
    cfg: InfluxConfig,
    http: reqwest::blocking::Client,
    write_url: String,
    query_url: String,
}

impl InfluxClient {
    fn new(cfg: InfluxConfig) -> Result<Self, SinkError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| SinkError::Permanent(format!("cannot build HTTP client: {e}")))?;
        let base = cfg.url.trim_end_matches('/');
        let write_url = match &cfg.api {
            InfluxApi::V1 { .. } => format!("{base}/write"),
            InfluxApi::V2 { .. } => format!("{base}/api/v2/write"),
        };
        let query_url = format!("{base}/query");
        Ok(InfluxClient {
            cfg,
            http,
            write_url,
            query_url,
        })
    }

    fn auth(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.cfg.api {
            InfluxApi::V1 {
                user: Some(u),
                password,
                ..
            } => rb.basic_auth(u, password.as_deref()),
            InfluxApi::V1 { .. } => rb,
            InfluxApi::V2 { token, .. } => rb.header("Authorization", format!("Token {token}")),
        }
    }

    /// Runs one InfluxQL statement; returns the first result's series.
    fn query(&self, q: &str, post: bool) -> Result<Vec<serde_json::Value>, SinkError> {
        let params = [("db", self.cfg.database()), ("q", q), ("epoch", "ms")];
        let rb = if post {
            self.http.post(&self.query_url).form(&params)
        } else {
            self.http.get(&self.query_url).query(&params)
        };
        let resp = self.auth(rb).send().map_err(|e| self.transport(e))?;
        let resp = self.check_status(resp)?;
        let v: serde_json::Value = resp.text().map_err(|e| self.transport(e)).and_then(|t| {
            serde_json::from_str(&t)
                .map_err(|e| SinkError::Retryable(format!("bad answer from InfluxDB: {e}")))
        })?;
        let result = &v["results"][0];
        if let Some(err) = result["error"].as_str() {
            return Err(classify_message(&self.cfg, err));
        }
        Ok(result["series"].as_array().cloned().unwrap_or_default())
    }

    fn transport(&self, e: reqwest::Error) -> SinkError {
        SinkError::Retryable(format!("InfluxDB at {} unreachable: {e}", self.cfg.url))
    }

    fn check_status(
        &self,
        resp: reqwest::blocking::Response,
    ) -> Result<reqwest::blocking::Response, SinkError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        let msg = format!("InfluxDB at {} answered {status}: {detail}", self.cfg.url);
        Err(match status.as_u16() {
            408 | 429 => SinkError::Retryable(msg),
            s if s >= 500 => SinkError::Retryable(msg),
            401 | 403 => SinkError::Permanent(format!(
                "{msg} — the credentials were refused; check {}",
                match self.cfg.api {
                    InfluxApi::V1 { .. } => "--influx-user / --influx-password",
                    InfluxApi::V2 { .. } => "--influx-token and its permissions on the bucket",
                }
            )),
            _ => classify_message(&self.cfg, &msg),
        })
    }

    fn write_chunk(&self, lp: &[u8]) -> Result<(), SinkError> {
        let mut gz = GzEncoder::new(
            Vec::with_capacity(lp.len() / 4 + 64),
            flate2::Compression::fast(),
        );
        gz.write_all(lp)
            .map_err(|e| SinkError::Permanent(e.to_string()))?;
        let body = gz
            .finish()
            .map_err(|e| SinkError::Permanent(e.to_string()))?;
        let rb = self.http.post(&self.write_url);
        let rb = match &self.cfg.api {
            InfluxApi::V1 { db, .. } => rb.query(&[("db", db.as_str()), ("precision", "ns")]),
            InfluxApi::V2 { org, bucket, .. } => rb.query(&[
                ("org", org.as_str()),
                ("bucket", bucket.as_str()),
                ("precision", "ns"),
            ]),
        };
        let rb = rb
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body);
        let resp = self.auth(rb).send().map_err(|e| self.transport(e))?;
        self.check_status(resp).map(drop)
    }
}

/// Names the cause of a message InfluxDB sent back, and tells retryable
/// from permanent.
fn classify_message(cfg: &InfluxConfig, msg: &str) -> SinkError {
    if msg.contains("database not found") || msg.contains("bucket not found") {
        SinkError::Permanent(format!(
            "{msg} — database {:?} does not exist at {}: create it or pass --influx-create-db",
            cfg.database(),
            cfg.url
        ))
    } else if msg.contains("authorization") || msg.contains("authentication") {
        SinkError::Permanent(format!("{msg} — check the InfluxDB credentials"))
    } else {
        SinkError::Permanent(msg.to_string())
    }
}

impl InfluxSink {
    pub fn new(cfg: InfluxConfig) -> Result<Self, SinkError> {
        Ok(InfluxSink {
            client: Arc::new(InfluxClient::new(cfg)?),
        })
    }

    /// Checks that the server answers, the credentials work and the database
    /// exists; with `create`, creates it (v1 only: a v2 bucket is made with
    /// `influx bucket create`).
    pub fn check_ready(&self, create: bool) -> Result<(), SinkError> {
        let c = &self.client;
        match &c.cfg.api {
            InfluxApi::V1 { db, .. } => {
                if create {
                    let q = format!("CREATE DATABASE {}", restore_points::quote_ident(db));
                    c.query(&q, true)?;
                    return Ok(());
                }
                let series = c.query("SHOW DATABASES", false)?;
                let exists = series.iter().any(|s| {
                    s["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|row| row[0].as_str() == Some(db))
                });
                if exists {
                    Ok(())
                } else {
                    Err(SinkError::Permanent(format!(
                        "database {db:?} does not exist at {}: create it (CREATE DATABASE \"{db}\") or pass --influx-create-db",
                        c.cfg.url
                    )))
                }
            }
            // Reading the restore points checks the token and the bucket mapping.
            InfluxApi::V2 { .. } => c.query("SHOW MEASUREMENTS LIMIT 1", false).map(drop),
        }
    }

    /// `CREATE DATABASE` (idempotent in InfluxDB 1.x); used by the demo.
    pub fn ensure_database(&self) -> Result<(), SinkError> {
        self.check_ready(true)
    }

    /// Runs one InfluxQL `SELECT` (times in ms); returns the series of its
    /// result (`logpipe status` reads the restore points and newest windows).
    pub fn select(&self, q: &str) -> Result<Vec<serde_json::Value>, SinkError> {
        self.client.query(q, false)
    }
}

impl Sink for InfluxSink {
    fn write(&mut self, lp: &[u8], st: &StateBatch<'_>) -> Result<(), SinkError> {
        let mut rest = lp;
        let mut tail = Vec::new();
        restore_points::encode(&mut tail, st);
        // Window points first, in chunks cut at line ends; the restore points
        // ride in the last request, so they are stored only after every window
        // they vouch for was accepted.
        while rest.len() + tail.len() > MAX_BODY && rest.len() > MAX_BODY / 2 {
            let cut = memchr::memrchr(b'\n', &rest[..MAX_BODY / 2]).map_or(rest.len(), |i| i + 1);
            self.client.write_chunk(&rest[..cut])?;
            rest = &rest[cut..];
        }
        if rest.is_empty() && tail.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(rest.len() + tail.len());
        body.extend_from_slice(rest);
        body.extend_from_slice(&tail);
        self.client.write_chunk(&body)
    }

    fn describe(&self) -> String {
        let c = &self.client.cfg;
        match &c.api {
            InfluxApi::V1 { db, .. } => format!("InfluxDB {} db {db}", c.url),
            InfluxApi::V2 { org, bucket, .. } => {
                format!("InfluxDB {} org {org} bucket {bucket}", c.url)
            }
        }
    }

    fn state_store(&self) -> Arc<dyn StateStore> {
        self.client.clone()
    }
}

impl StateStore for InfluxClient {
    fn load(
        &self,
        scope: &Scope,
        partitions: &[i32],
    ) -> Result<HashMap<i32, StoredPoint>, SinkError> {
        let (q_part, q_src) = restore_points::queries(scope);
        let parts = self.query(&q_part, false)?;
        let srcs = self.query(&q_src, false)?;
        Ok(restore_points::from_series(&parts, &srcs, partitions))
    }
}
