//! A real InfluxDB 1.x server (`influxd` from Debian's `influxdb` package),
//! started per test on free loopback ports with all its state in a temp dir.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, wait_until, Child};

pub struct Influx {
    pub url: String,
    http: reqwest::blocking::Client,
    _child: Child,
    _dir: tempfile::TempDir,
}

fn influxd_path() -> PathBuf {
    let p = PathBuf::from(std::env::var("LOGPIPE_INFLUXD").unwrap_or_else(|_| "influxd".into()));
    let found = Command::new(&p)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "influxd not found (tried {p:?}). The tests need a real InfluxDB 1.x: run ./scripts/test (it installs \
         Debian's influxdb package) or `apt-get install influxdb`, or set LOGPIPE_INFLUXD."
    );
    p
}

impl Influx {
    /// Starts `influxd` and waits until `/ping` answers.
    pub fn start() -> Influx {
        let bin = influxd_path();
        let dir = tempfile::tempdir().expect("tempdir");
        let (http_port, rpc_port) = (free_port(), free_port());
        let d = dir.path().display();
        let config = format!(
            r#"reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"#
        );
        let conf_path = dir.path().join("influxdb.conf");
        std::fs::write(&conf_path, config).expect("write influxdb.conf");
        let log = std::fs::File::create(dir.path().join("influxd.log")).expect("log file");
        let child = Child::spawn(
            "influxd",
            Command::new(bin)
                .arg("-config")
                .arg(&conf_path)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let url = format!("http://127.0.0.1:{http_port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let ping = format!("{url}/ping");
        wait_until(Duration::from_secs(20), || {
            http.get(&ping)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        })
        .unwrap_or_else(|| {
            panic!(
                "influxd did not answer /ping within 20 s; log: {}",
                std::fs::read_to_string(dir.path().join("influxd.log")).unwrap_or_default()
            )
        });
        Influx {
            url,
            http,
            _child: child,
            _dir: dir,
        }
    }

    /// Creates a database (unique per test) and returns its name.
    pub fn create_db(&self, name: &str) -> String {
        self.query_raw(None, &format!("CREATE DATABASE \"{name}\""));
        name.to_string()
    }

    fn query_raw(&self, db: Option<&str>, q: &str) -> serde_json::Value {
        let mut params = vec![("q", q), ("epoch", "ms")];
        if let Some(db) = db {
            params.push(("db", db));
        }
        let resp = self
            .http
            .post(format!("{}/query", self.url))
            .form(&params)
            .send()
            .expect("InfluxDB query");
        assert!(
            resp.status().is_success(),
            "query {q:?} failed: {}",
            resp.status()
        );
        let v: serde_json::Value =
            serde_json::from_str(&resp.text().expect("query body")).expect("query JSON");
        if let Some(e) = v["results"][0]["error"].as_str() {
            panic!("query {q:?} failed: {e}");
        }
        v
    }

    /// Runs an InfluxQL query; returns the series of the first result
    /// (each with `name`, `tags`, `columns`, `values`).
    pub fn query(&self, db: &str, q: &str) -> Vec<serde_json::Value> {
        let v = self.query_raw(Some(db), q);
        v["results"][0]["series"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
