//! Metrics and health over HTTP for logpipe's long-running roles
//! (`--metrics-addr`):
//!
//! - `/metrics`: the role's counters in the OpenMetrics text format, which
//!   Prometheus scrapes (plain `text/plain` exposition is the same text
//!   without the `# EOF` line), encoded by `prometheus-client`;
//! - `/health`: 200 while the process answers (liveness);
//! - `/ready`: 200 when the role can do its work, 503 with the reason when
//!   it cannot (readiness: the role's [`Probe`]).
//!
//! Roles keep counting as they always have (atomics, a snapshot per flush):
//! a scrape reads them through the role's [`Scrape`], so nothing is counted
//! twice and no hot path waits on a scrape. The server runs on a thread of
//! its own with a single-threaded tokio runtime.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use prometheus_client;

/// What a scrape reads: the role writes its metrics through [`Out`].
pub type Scrape = Box<dyn Fn(&mut Out<'_>) -> fmt::Result + Send + Sync>;

/// Whether the role can do its work now; `Err` says why not.
pub type Probe = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The OpenMetrics content type Prometheus asks for and this server sends.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--metrics-addr {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--metrics-addr {0}: not an address (HOST:PORT, e.g. 127.0.0.1:9898)")]
    Address(String),
    #[error("starting the metrics server: {0}")]
    Runtime(std::io::Error),
}

/// One scrape's writer: metric families named under `logpipe_`, with the
/// unit and type suffixes OpenMetrics asks for (`_bytes`, `_total`).
pub struct Out<'a> {
    enc: DescriptorEncoder<'a>,
}

impl Out<'_> {
    /// A cumulative count (`<name>_total`).
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.counter_in(name, help, None, v)
    }

    /// A cumulative count in `unit` (`<name>_<unit>_total`).
    pub fn counter_in<N>(&mut self, name: &str, help: &str, unit: Option<Unit>, v: N) -> fmt::Result
    where
        N: prometheus_client::encoding::EncodeCounterValue,
    {
        let c = ConstCounter::new(v);
        let m = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), c.metric_type())?;
        c.encode(m)
    }

    /// A value that goes up and down (an integer, or seconds and ratios as
    /// `f64`).
    pub fn gauge<N>(&mut self, name: &str, help: &str, unit: Option<Unit>, v: N) -> fmt::Result
    where
        N: prometheus_client::encoding::EncodeGaugeValue,
    {
        let g = ConstGauge::new(v);
        let m = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
        g.encode(m)
    }

    /// One counter family, a series per value of `label`.
    pub fn counters_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(String, u64)],
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (value, v) in values {
            let labels = [(label, value.as_str())];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
        Ok(())
    }

    /// One gauge family, a series per value of `label`.
    pub fn gauges_by(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        label: &str,
        values: &[(String, i64)],
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(
            name,
            help,
            unit.as_ref(),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (value, v) in values {
            let labels = [(label, value.as_str())];
            m.encode_family(&labels)?.encode_gauge(v)?;
        }
        Ok(())
    }
}

/// The role's scrape as a `prometheus-client` collector.
struct RoleCollector(Scrape);

impl fmt::Debug for RoleCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoleCollector")
    }
}

impl Collector for RoleCollector {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> fmt::Result {
        (self.0)(&mut Out { enc })
    }
}

/// The registry of one role: `logpipe_build_info{role,version}` and the
/// role's metrics.
pub fn registry(role: &str, scrape: Scrape) -> Registry {
    let mut r = Registry::with_prefix("logpipe");
    r.register(
        "build",
        "The logpipe build and the role this process runs",
        Info::new(vec![
            ("role".to_string(), role.to_string()),
            ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ]),
    );
    r.register_collector(Box::new(RoleCollector(scrape)));
    r
}

/// The exposition of `registry`, as `/metrics` sends it.
pub fn render(registry: &Registry) -> String {
    let mut s = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut s, registry)
        .expect("writing to a String does not fail");
    s
}

/// A running endpoint; it serves until the process exits.
pub struct Server {
    addr: SocketAddr,
}

impl Server {
    /// The bound address (the port chosen when `--metrics-addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` now (an address in use is an error here, at start) and
/// serves `/metrics`, `/health` and `/ready` from a thread of its own.
pub fn serve(addr: &str, role: &str, scrape: Scrape, ready: Probe) -> Result<Server, Error> {
    let sock: SocketAddr = addr.parse().map_err(|_| Error::Address(addr.to_string()))?;
    let listener = std::net::TcpListener::bind(sock).map_err(|source| Error::Bind {
        addr: addr.to_string(),
        source,
    })?;
    listener.set_nonblocking(true).map_err(Error::Runtime)?;
    let local = listener.local_addr().map_err(Error::Runtime)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(Error::Runtime)?;
    let state = Arc::new(State {
        registry: registry(role, scrape),
        ready,
    });
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || rt.block_on(accept(listener, state)))
        .map_err(Error::Runtime)?;
    tracing::info!(address = %local, "metrics on http://{local}/metrics; health on /health and /ready");
    Ok(Server { addr: local })
}

struct State {
    registry: Registry,
    ready: Probe,
}

async fn accept(listener: std::net::TcpListener, state: Arc<State>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics endpoint cannot listen");
            return;
        }
    };
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: try again shortly.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, render(&state.registry));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        "/health" => text(StatusCode::OK, "alive\n".into()),
        "/ready" => match (state.ready)() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "logpipe serves /metrics, /health and /ready\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    fn scrape(n: Arc<AtomicU64>) -> Scrape {
        Box::new(move |o| {
            o.counter("demo_lines", "Lines", n.load(Ordering::Relaxed))?;
            o.counter_in("demo_read", "Bytes read", Some(Unit::Bytes), 2048u64)?;
            o.gauges_by(
                "demo_lag",
                "Records behind",
                Some(Unit::Other("records".into())),
                "partition",
                &[("0".into(), 3), ("1".into(), 0)],
            )?;
            o.counters_by("demo_dead", "Dead letters", "kind", &[("cut".into(), 2)])
        })
    }

    #[test]
    fn exposition_has_types_units_and_labels() {
        let r = registry("test", scrape(Arc::new(AtomicU64::new(7))));
        let text = render(&r);
        for want in [
            "# TYPE logpipe_demo_lines counter",
            "logpipe_demo_lines_total 7",
            "# UNIT logpipe_demo_read_bytes bytes",
            "logpipe_demo_read_bytes_total 2048",
            "logpipe_demo_lag_records{partition=\"0\"} 3",
            "logpipe_demo_lag_records{partition=\"1\"} 0",
            "logpipe_demo_dead_total{kind=\"cut\"} 2",
            "# TYPE logpipe_build info",
            "logpipe_build_info{role=\"test\",version=\"",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let n = Arc::new(AtomicU64::new(1));
        let ok = Arc::new(AtomicBool::new(false));
        let probe_ok = ok.clone();
        let s = serve(
            "127.0.0.1:0",
            "test",
            scrape(n.clone()),
            Box::new(move || {
                if probe_ok.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("no partitions assigned yet".into())
                }
            }),
        )
        .unwrap();
        let base = format!("http://{}", s.local_addr());
        let get = |p: &str| reqwest::blocking::get(format!("{base}{p}")).unwrap();
        n.store(42, Ordering::Relaxed);
        let m = get("/metrics");
        assert_eq!(m.status(), 200);
        assert_eq!(m.headers()["content-type"], CONTENT_TYPE);
        assert!(m.text().unwrap().contains("logpipe_demo_lines_total 42"));
        assert_eq!(get("/health").status(), 200);
        let r = get("/ready");
        assert_eq!(r.status(), 503);
        assert!(r.text().unwrap().contains("no partitions assigned yet"));
        ok.store(true, Ordering::Relaxed);
        assert_eq!(get("/ready").status(), 200);
        assert_eq!(get("/nothing").status(), 404);
    }

    #[test]
    fn an_address_in_use_is_an_error_that_names_it() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let e = serve(&addr, "t", Box::new(|_| Ok(())), Box::new(|| Ok(())))
            .err()
            .expect("in use");
        assert!(e.to_string().contains(&addr), "{e}");
        let e = serve("localhost", "t", Box::new(|_| Ok(())), Box::new(|| Ok(())))
            .err()
            .expect("no port");
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
    }
}
