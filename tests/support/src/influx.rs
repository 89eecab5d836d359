//! A real InfluxDB 1.x server (`influxd` from Debian's `influxdb` package),
//! started per test on free loopback ports with all its state in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{free_port, wait_until, Child};

pub struct Influx {
    pub url: String,
    http: reqwest::blocking::Client,
    child: Option<Child>,
    conf_path: PathBuf,
    dir: tempfile::TempDir,
    /// Admin credentials when started with [`Influx::start_with_auth`].
    auth: Option<(String, String)>,
}

fn influxd_path() -> PathBuf {
    crate::process::require_program(
        "LOGPIPE_INFLUXD",
        "influxd",
        "version",
        "The tests need a real InfluxDB 1.x: run ./scripts/test (it installs Debian's influxdb \
         package) or `apt-get install influxdb`",
    )
}

impl Influx {
    /// Starts `influxd` and waits until `/ping` answers.
    pub fn start() -> Influx {
        Influx::start_inner(false)
    }

    /// A configuration on free ports (data in a tempdir) for an `influxd`
    /// someone else starts, e.g. a README recipe's `influxd &` with
    /// `INFLUXDB_CONFIG_PATH` set to [`Influx::config_path`]; the handle
    /// queries it at [`Influx::url`].
    pub fn unstarted() -> Influx {
        Influx::configure(false)
    }

    pub fn config_path(&self) -> &Path {
        &self.conf_path
    }

    /// Starts `influxd` with `auth-enabled = true` and an admin user
    /// `admin` / `secret`, used by the harness's own queries.
    pub fn start_with_auth() -> Influx {
        let mut i = Influx::start_inner(true);
        i.query_raw(
            None,
            "CREATE USER admin WITH PASSWORD 'secret' WITH ALL PRIVILEGES",
        );
        i.auth = Some(("admin".into(), "secret".into()));
        i
    }

    fn start_inner(auth: bool) -> Influx {
        // A port found free can be taken by another test before influxd binds
        // it: then start again on other ports.
        let mut last = String::new();
        for _ in 0..5 {
            let mut i = Influx::configure(auth);
            match i.try_resume() {
                Ok(()) => return i,
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("influxd did not start; log: {log}"),
            }
        }
        panic!("influxd found no free port in 5 tries; last log: {last}")
    }

    fn configure(auth: bool) -> Influx {
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
  auth-enabled = {auth}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"#
        );
        let conf_path = dir.path().join("influxdb.conf");
        std::fs::write(&conf_path, config).expect("write influxdb.conf");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Influx {
            url: format!("http://127.0.0.1:{http_port}"),
            http,
            child: None,
            conf_path,
            dir,
            auth: None,
        }
    }

    /// Stops the server (SIGTERM, data kept): writes fail until [`Influx::resume`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(20));
        }
    }

    /// Starts the server again on the same port and data and waits for `/ping`.
    pub fn resume(&mut self) {
        if let Err(log) = self.try_resume() {
            panic!("influxd did not answer /ping within 20 s; log: {log}");
        }
    }

    /// Starts influxd and waits for `/ping`; its log if it exits or stays silent.
    fn try_resume(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "influxd is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("influxd.log"))
            .expect("log file");
        self.child = Some(Child::spawn(
            "influxd",
            Command::new(influxd_path())
                .arg("-config")
                .arg(&self.conf_path)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        ));
        let ping = format!("{}/ping", self.url);
        let mut exited = false;
        let up = wait_until(Duration::from_secs(20), || {
            if self.child.as_mut().is_some_and(Child::exited) {
                exited = true;
                return Some(false);
            }
            self.http
                .get(&ping)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| true)
        });
        if up == Some(true) {
            return Ok(());
        }
        if exited {
            self.child = None;
        }
        Err(std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default())
    }

    /// Creates a database (unique per test) and returns its name.
    pub fn create_db(&self, name: &str) -> String {
        self.query_raw(None, &format!("CREATE DATABASE \"{name}\""));
        name.to_string()
    }

    /// Runs a statement outside any database (`DROP DATABASE "x"`, …).
    pub fn execute(&self, q: &str) {
        self.query_raw(None, q);
    }

    /// Writes line protocol (ms precision) to `db`.
    pub fn write(&self, db: &str, lp: &str) {
        let mut rb = self
            .http
            .post(format!("{}/write", self.url))
            .query(&[("db", db), ("precision", "ms")])
            .body(lp.to_string());
        if let Some((u, p)) = &self.auth {
            rb = rb.basic_auth(u, Some(p));
        }
        let resp = rb.send().expect("InfluxDB write");
        let status = resp.status();
        assert!(
            status.is_success(),
            "write failed: {status}: {}",
            resp.text().unwrap_or_default()
        );
    }

    fn query_raw(&self, db: Option<&str>, q: &str) -> serde_json::Value {
        let mut params = vec![("q", q), ("epoch", "ms")];
        if let Some(db) = db {
            params.push(("db", db));
        }
        let mut rb = self.http.post(format!("{}/query", self.url)).form(&params);
        if let Some((u, p)) = &self.auth {
            rb = rb.basic_auth(u, Some(p));
        }
        let resp = rb.send().expect("InfluxDB query");
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
