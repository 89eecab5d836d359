//! What the benchmarks share: the binary, a `logpipe broker` process, a
//! measured wait for a child process, medians.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};
use std::time::Instant;

use logpipe_traffic::Generator;

/// Lines in the benchmark log.
pub const LINES: usize = 1_000_000;
/// Its generator: seed, first time, lines per second of event time.
pub const SEED: u64 = 7;
pub const START_MS: i64 = 1_704_067_200_000;
pub const RATE: f64 = 2_000.0;

/// The logpipe binary: this build's, or `LOGPIPE_BENCH_BIN` (to measure
/// another build, e.g. an older commit's, with the same bench).
pub fn bin() -> PathBuf {
    std::env::var_os("LOGPIPE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_logpipe")))
}

pub struct Broker {
    child: std::process::Child,
    pub bootstrap: String,
}

impl Broker {
    pub fn start(topic: &str, partitions: u32) -> Broker {
        let mut child = Command::new(bin())
            .args(["broker", "--topic", topic, "--partitions"])
            .arg(partitions.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start logpipe broker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Broker {
            child,
            bootstrap: line.trim().to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child`; returns (wall, user+sys CPU seconds, peak RSS in MiB).
pub fn wait_measured(child: &mut std::process::Child, started: Instant) -> (f64, f64, f64) {
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{:?} failed: status {status}",
        child.id()
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(ru.ru_utime) + secs(ru.ru_stime);
    (wall, cpu, ru.ru_maxrss as f64 / 1024.0)
}

/// Runs per row: `LOGPIPE_BENCH_RUNS`, else `default`.
pub fn runs(default: usize) -> usize {
    std::env::var("LOGPIPE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The cached 1 M-line log (seed 7, 2 000 lines/s of event time).
pub fn log_file() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access-1m.log");
    if !path.exists() {
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        let mut g = Generator::new(SEED, START_MS, RATE).malformed_one_in(0);
        for _ in 0..LINES {
            writeln!(f, "{}", g.next_line().0).unwrap();
        }
        f.flush().unwrap();
        drop(f);
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}
