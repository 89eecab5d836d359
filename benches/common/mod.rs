//! What the benchmarks share: the binary, a `logpipe broker` process, a
//! measured wait for a child process, medians.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logpipe"))
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

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
