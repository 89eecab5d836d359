//! The tail-producer as operators run it: `logpipe produce` as its own
//! process publishing into a `logpipe broker` process over loopback.
//!
//! `cargo bench --bench produce` prints, as medians of `LOGPIPE_BENCH_RUNS`
//! (default 3) runs:
//! - a 1 M-line generated access log (cached in `target/bench-data/`) read
//!   with `--from-beginning --exit-on-eof`: lines/s and peak RSS of the
//!   producer process;
//! - 1000 idle followed files: RSS and CPU seconds over 10 s.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, log_file, median, runs, wait_measured, Broker, LINES};

fn produce_once(log: &Path) -> (f64, f64, f64) {
    let broker = Broker::start("logs", 6);
    let cp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["produce", "--brokers", &broker.bootstrap, "--host", "bench"])
        .args(["--from-beginning", "--exit-on-eof", "--checkpoint-dir"])
        .arg(cp.path())
        .arg(log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = wait_measured(&mut child, started);
    drop(broker);
    r
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after "(comm) ".
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn proc_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse::<f64>()
        .unwrap();
    kb / 1024.0
}

/// Follows 1000 files that nobody writes to; (peak RSS MiB, CPU s over 10 s).
fn idle_files() -> (f64, f64) {
    let broker = Broker::start("logs", 6);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        std::fs::write(
            dir.path().join(format!("site{i:04}.log")),
            "127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"\n",
        )
        .unwrap();
    }
    let cp = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["produce", "--brokers", &broker.bootstrap, "--host", "bench"])
        .arg("--checkpoint-dir")
        .arg(cp.path())
        .arg(dir.path().join("*.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let cpu0 = proc_cpu_secs(child.id());
    std::thread::sleep(Duration::from_secs(10));
    let cpu = proc_cpu_secs(child.id()) - cpu0;
    let rss = proc_rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (rss, cpu)
}

fn main() {
    let runs = runs(3);
    let log = log_file();
    let size = std::fs::metadata(&log).unwrap().len();
    println!(
        "produce: {} lines, {:.0} MB, into a `logpipe broker` process ({runs} runs)",
        LINES,
        size as f64 / 1e6
    );
    let mut rates = vec![];
    let mut rss = vec![];
    let mut cpus = vec![];
    for i in 0..runs {
        let (wall, cpu, peak) = produce_once(&log);
        let rate = LINES as f64 / wall;
        println!(
            "  run {}: {wall:.2} s, {rate:.0} lines/s, CPU {cpu:.2} s, peak RSS {peak:.1} MiB",
            i + 1
        );
        rates.push(rate);
        rss.push(peak);
        cpus.push(cpu);
    }
    println!(
        "produce 1M lines: median {:.0} lines/s, CPU {:.2} s, peak RSS {:.1} MiB",
        median(rates),
        median(cpus),
        median(rss)
    );
    if std::env::var_os("LOGPIPE_BENCH_SKIP_IDLE").is_none() {
        let (rss, cpu) = idle_files();
        println!("1000 idle files: RSS {rss:.1} MiB, CPU {cpu:.3} s over 10 s");
    }
}
