//! A real Prometheus server (`prometheus` from Debian's package of that
//! name), started per test on a free loopback port, scraping the given
//! targets every second, its storage in a temp dir.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, wait_until, Child};

pub struct Prometheus {
    pub url: String,
    http: reqwest::blocking::Client,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn prometheus_path() -> PathBuf {
    crate::process::require_program(
        "LOGPIPE_PROMETHEUS",
        "prometheus",
        "--version",
        "The metrics tests need a real Prometheus: run ./scripts/test (it installs Debian's \
         prometheus package) or `apt-get install prometheus`",
    )
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`)
    /// as job `logpipe`, every second, and waits until it is ready.
    pub fn start(targets: &[String]) -> Prometheus {
        let bin = prometheus_path();
        let dir = tempfile::tempdir().expect("tempdir");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: logpipe\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(&conf, config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let port = free_port();
        let child = Child::spawn(
            "prometheus",
            Command::new(bin)
                .arg(format!("--config.file={}", conf.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("prometheus log")),
        );
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let p = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            http,
            child,
            log,
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            let r = p.http.get(format!("{}/-/ready", p.url)).send().ok()?;
            r.status().is_success().then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus did not become ready:\n{}",
            p.log()
        );
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An instant query: each series' labels and value.
    pub fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let r: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .and_then(|r| r.text())
            .map(|t| {
                serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("prometheus query {q}: {e}: {t}"))
            })
            .unwrap_or_else(|e| panic!("prometheus query {q}: {e}"));
        assert_eq!(r["status"], "success", "query {q}: {r}");
        r["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
                        (s["metric"].clone(), v.unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The one value of `q`, if it has exactly one series.
    pub fn value(&self, q: &str) -> Option<f64> {
        match self.query(q).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// The scrape targets' health as Prometheus sees it (`up`, last error).
    pub fn targets(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/api/v1/targets", self.url))
            .send()
            .and_then(|r| r.text())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }
}
