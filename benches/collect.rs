//! Network inputs of `logpipe produce` against `logpipe broker`, release build:
//!
//! - **python-logging**: 4 Python processes, each logging 50 000 records
//!   through `logging.handlers.SocketHandler` (the stdlib client, pickling
//!   every record) into `--python-logging`; timed from the clients' start
//!   until the producer reports every record acknowledged by Kafka
//!   (`GET /health` of an idle `--http` beside it).
//! - **baseline**: the same clients into `bench/baseline/pylog_server.py`,
//!   the logging cookbook's receiver (`pickle.loads`, a FileHandler): the
//!   kind of server `--python-logging` replaces.
//! - **frames**: the receiver alone — SocketHandler frames Python made once
//!   (`SocketHandler.makePickle` of 250 000 records) written by 4 connections
//!   from the bench process at full speed, until all are acknowledged.
//! - **http**: 4 client threads POSTing the 1 M-line benchmark log to
//!   `/lines` in batches of 1000 lines over keep-alive connections; each
//!   answer comes after Kafka acknowledged its lines, so the last answer
//!   is the end.
//!
//! Both share the 2 cores with their clients. Prints per run and the median
//! (`LOGPIPE_BENCH_RUNS`, default 3); `LOGPIPE_BENCH_ONLY=python|baseline|frames|http`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, median, runs, wait_measured, Broker};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Producer {
    child: std::process::Child,
    http: u16,
}

impl Producer {
    fn start(broker: &Broker, args: &[String]) -> Producer {
        let http = free_port();
        let child = Command::new(bin())
            .args([
                "produce",
                "--brokers",
                &broker.bootstrap,
                "--topic",
                "logs",
                "--host",
                "bench",
            ])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(args)
            .env("LOGPIPE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start logpipe produce");
        let p = Producer { child, http };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(Instant::now() < deadline, "produce did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn acknowledged(&self, client: &reqwest::blocking::Client) -> u64 {
        let body = client
            .get(format!("http://127.0.0.1:{}/health", self.http))
            .send()
            .and_then(|r| r.text())
            .expect("GET /health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        h["lines_acknowledged"].as_u64().unwrap()
    }

    /// SIGTERM; (CPU seconds, peak RSS MiB) of the whole run. The peak is
    /// the process's own `VmHWM`: wait4's maxrss of a child forked from a
    /// bench holding the 1 M-line log in memory counts the bench's pages.
    fn stop(mut self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let hwm_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let (_, cpu, _) = wait_measured(&mut self.child, Instant::now());
        (cpu, hwm_kb / 1024.0)
    }
}

const PY_CLIENT: &str = r#"
import logging, logging.handlers, sys
port, proc, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
log = logging.getLogger(f"bench.p{proc}")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(logging.handlers.SocketHandler("127.0.0.1", port))
for i in range(n):
    log.info("request %d handled for %s in %.3f ms", i, "user-%d" % (i % 97), i % 1000 / 7)
logging.shutdown()
"#;

/// Runs `clients` processes of `script` (`PY_CLIENT`), `per` records each, to the end.
fn run_clients(script: &std::path::Path, port: u16, clients: usize, per: usize) {
    let kids: Vec<_> = (0..clients)
        .map(|i| {
            Command::new("python3")
                .arg(script)
                .args([port.to_string(), i.to_string(), per.to_string()])
                .spawn()
                .expect("python3")
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
}

fn python_row(runs: usize) {
    let (clients, per) = (4usize, 50_000usize);
    let total = (clients * per) as u64;
    let script = std::env::temp_dir().join("logpipe-bench-pylog.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let http = reqwest::blocking::Client::new();
    let (mut rates, mut cpus, mut rsss, mut client_s) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let broker = Broker::start("logs", 6);
        let port = free_port();
        let p = Producer::start(
            &broker,
            &["--python-logging".into(), format!("127.0.0.1:{port}")],
        );
        let started = Instant::now();
        run_clients(&script, port, clients, per);
        let clients_done = started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(300);
        while p.acknowledged(&http) < total {
            assert!(
                Instant::now() < deadline,
                "not every record was acknowledged"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let wall = started.elapsed().as_secs_f64();
        let (cpu, rss) = p.stop();
        let rate = total as f64 / wall;
        println!("python-logging run {}: {total} records in {wall:.2} s = {rate:.0} records/s (clients done after {clients_done:.2} s); producer {cpu:.2} CPU-s, peak RSS {rss:.1} MiB", run + 1);
        rates.push(rate);
        cpus.push(cpu);
        rsss.push(rss);
        client_s.push(clients_done);
    }
    println!(
        "python-logging median: {:.0} records/s (4 SocketHandler processes × 50 000), producer {:.2} CPU-s, {:.1} MiB; clients alone {:.2} s",
        median(rates),
        median(cpus),
        median(rsss),
        median(client_s)
    );
}

const PY_FRAMES: &str = r#"
import logging, logging.handlers, sys
out, n = sys.argv[1], int(sys.argv[2])
h = logging.handlers.SocketHandler("127.0.0.1", 1)
with open(out, "wb") as f:
    for i in range(n):
        r = logging.LogRecord(f"bench.p{i % 4}", logging.INFO, __file__, 7, "request %d handled for %s in %.3f ms", (i, "user-%d" % (i % 97), i % 1000 / 7), None)
        f.write(h.makePickle(r))
"#;

/// The server logpipe replaces (`bench/baseline/pylog_server.py`, the
/// logging cookbook's receiver: `pickle.loads` and a FileHandler), fed by
/// the same 4 clients.
fn python_baseline_row(runs: usize) {
    let (clients, per) = (4usize, 50_000usize);
    let script = std::env::temp_dir().join("logpipe-bench-pylog.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let server =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/baseline/pylog_server.py");
    let mut rates = vec![];
    for run in 0..runs {
        let port = free_port();
        let out = std::env::temp_dir().join("logpipe-bench-pylog-server.log");
        let _ = std::fs::remove_file(&out);
        let mut srv = Command::new("python3")
            .arg(&server)
            .arg(port.to_string())
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = std::io::BufReader::new(srv.stdout.take().unwrap());
        let mut l = String::new();
        std::io::BufRead::read_line(&mut lines, &mut l).unwrap();
        assert_eq!(l.trim(), "ready");
        let started = Instant::now();
        run_clients(&script, port, clients, per);
        // Done when the file stops growing (records the server never got are
        // lost: SocketHandler drops one whenever a send blocks for 1 s).
        let count = || std::fs::read_to_string(&out).map_or(0, |t| t.lines().count());
        let (mut written, mut last_growth) = (count(), Instant::now());
        let mut wall = started.elapsed().as_secs_f64();
        while last_growth.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
            let n = count();
            if n != written {
                written = n;
                last_growth = Instant::now();
                wall = started.elapsed().as_secs_f64();
            }
        }
        let _ = srv.kill();
        let _ = srv.wait();
        let rate = written as f64 / wall;
        println!("python baseline server run {}: {written} of {} records written in {wall:.2} s = {rate:.0} records/s ({} lost)", run + 1, clients * per, clients * per - written);
        rates.push(rate);
    }
    println!("python baseline server median: {:.0} records/s (same 4 clients; pickle.loads + FileHandler)", median(rates));
}

/// The receiver alone: SocketHandler frames made by Python once
/// (`SocketHandler.makePickle`), replayed by 4 connections from this process.
fn frames_row(runs: usize) {
    let (conns, per) = (4usize, 250_000usize);
    let file = std::env::temp_dir().join("logpipe-bench-frames.bin");
    let script = std::env::temp_dir().join("logpipe-bench-frames.py");
    std::fs::write(&script, PY_FRAMES).unwrap();
    let st = Command::new("python3")
        .arg(&script)
        .arg(&file)
        .arg(per.to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let frames = std::fs::read(&file).unwrap();
    let total = (conns * per) as u64;
    let http = reqwest::blocking::Client::new();
    let (mut rates, mut cpus, mut rsss) = (vec![], vec![], vec![]);
    for run in 0..runs {
        let broker = Broker::start("logs", 6);
        let port = free_port();
        let p = Producer::start(
            &broker,
            &["--python-logging".into(), format!("127.0.0.1:{port}")],
        );
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..conns {
                let frames = &frames;
                s.spawn(move || {
                    use std::io::Write;
                    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    c.write_all(frames).unwrap();
                });
            }
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        while p.acknowledged(&http) < total {
            assert!(
                Instant::now() < deadline,
                "not every record was acknowledged"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let wall = started.elapsed().as_secs_f64();
        let (cpu, rss) = p.stop();
        let rate = total as f64 / wall;
        println!("python-logging frames run {}: {total} records in {wall:.2} s = {rate:.0} records/s; producer {cpu:.2} CPU-s, peak RSS {rss:.1} MiB", run + 1);
        rates.push(rate);
        cpus.push(cpu);
        rsss.push(rss);
    }
    println!(
        "python-logging frames median: {:.0} records/s (4 connections × 250 000 pre-pickled records), producer {:.2} CPU-s, {:.1} MiB",
        median(rates),
        median(cpus),
        median(rsss)
    );
}

fn http_row(runs: usize) {
    let text = std::fs::read(common::log_file()).unwrap();
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let batches: Vec<Vec<u8>> = lines.chunks(1000).map(|c| c.concat()).collect();
    let total = lines.len() as f64;
    let threads = 4;
    let (mut rates, mut cpus, mut rsss) = (vec![], vec![], vec![]);
    for run in 0..runs {
        let broker = Broker::start("logs", 6);
        let p = Producer::start(&broker, &[]);
        let url = format!("http://127.0.0.1:{}/lines?source=bench", p.http);
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (batches, url) = (&batches, &url);
                s.spawn(move || {
                    let c = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(120))
                        .build()
                        .unwrap();
                    for b in batches.iter().skip(t).step_by(threads) {
                        let r = c.post(url).body(b.clone()).send().expect("POST /lines");
                        assert!(r.status().is_success(), "{}", r.status());
                    }
                });
            }
        });
        let wall = started.elapsed().as_secs_f64();
        let (cpu, rss) = p.stop();
        let rate = total / wall;
        println!("http run {}: {total} lines in {wall:.2} s = {rate:.0} lines/s; producer {cpu:.2} CPU-s, peak RSS {rss:.1} MiB", run + 1);
        rates.push(rate);
        cpus.push(cpu);
        rsss.push(rss);
    }
    println!(
        "http median: {:.0} lines/s (4 clients, 1000 lines per POST), producer {:.2} CPU-s, {:.1} MiB",
        median(rates),
        median(cpus),
        median(rsss)
    );
}

fn main() {
    let only = std::env::var("LOGPIPE_BENCH_ONLY").unwrap_or_default();
    let n = runs(3);
    if only.is_empty() || only == "python" {
        python_row(n);
    }
    if only.is_empty() || only == "baseline" {
        python_baseline_row(n);
    }
    if only.is_empty() || only == "frames" {
        frames_row(n);
    }
    if only.is_empty() || only == "http" {
        http_row(n);
    }
}
