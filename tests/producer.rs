//! `logpipe produce` as a real process: killed with SIGKILL and restarted
//! while a writer appends and rotates, and through a 10 s broker outage.
//! The topic, de-duplicated by (`file`, `offset`) as the analyzers do, must
//! hold every line written, in order per source.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_testkit::{read_topic, wait_until, Child, LogpipeBroker, Record};
use rand::{Rng, SeedableRng};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logpipe"))
}

/// Appends numbered lines to `<dir>/<name>.log` for each name, and every
/// `rotate_every` lines renames the file logrotate-style (`x.log` → `x.log.N`,
/// a new `x.log` on the next write). Returns every line written per source.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<HashMap<String, Vec<String>>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(dir: &Path, names: &[&str], lines_per_sec: u64, rotate_every: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let (dir, names) = (
            dir.to_path_buf(),
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        let handle = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut seq = 0u64;
                let mut rotations = 0;
                let mut in_file = vec![0usize; names.len()];
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    for (i, name) in names.iter().enumerate() {
                        let path = dir.join(format!("{name}.log"));
                        if in_file[i] == rotate_every {
                            rotations += 1;
                            std::fs::rename(&path, dir.join(format!("{name}.log.{rotations}")))
                                .unwrap();
                            in_file[i] = 0;
                        }
                        seq += 1;
                        let line = format!(
                            "10.1.{i}.{} - - [{seq}] \"GET /{name}/{seq} HTTP/1.1\" 200 {}",
                            seq % 250,
                            seq * 3
                        );
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .unwrap();
                        writeln!(f, "{line}").unwrap();
                        in_file[i] += 1;
                        let source = path.display().to_string();
                        written
                            .lock()
                            .unwrap()
                            .entry(source)
                            .or_default()
                            .push(line);
                    }
                    // Pace: seq lines should have taken this long.
                    let due = Duration::from_secs_f64(seq as f64 / lines_per_sec as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        Writer {
            stop,
            written,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> HashMap<String, Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.written.lock().unwrap())
    }
}

fn produce(bootstrap: &str, dir: &Path, cp: &Path, log: &Path, extra: &[&str]) -> Child {
    let mut c = Command::new(bin());
    c.args(["produce", "--brokers", bootstrap, "--host", "h1"])
        .args(["--from-beginning", "--checkpoint-dir"])
        .arg(cp)
        .args(["--scan-interval", "100ms", "--poll-interval", "50ms"])
        .args(["--checkpoint-interval", "200ms", "--rotate-wait", "500ms"])
        .args(["--stats-interval", "1s"])
        .args(extra)
        .arg(dir.join("*.log"))
        .env("RUST_LOG", "logpipe_producer=info")
        .stdout(Stdio::null())
        .stderr(logpipe_testkit::append_to(log));
    Child::spawn("logpipe produce", &mut c)
}

/// Lines per source after dropping re-sends (a record whose offset is not
/// above the last one seen for its file), and the number dropped.
fn dedup(records: &[Record]) -> (HashMap<String, Vec<String>>, usize) {
    let mut last: HashMap<(i32, String), u64> = HashMap::new();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut dups = 0;
    for r in records {
        let file = r.header("file").expect("file header").to_string();
        let offset: u64 = r.header("offset").expect("offset header").parse().unwrap();
        let k = (r.partition, file);
        if last.get(&k).is_some_and(|&l| offset <= l) {
            dups += 1;
            continue;
        }
        last.insert(k, offset);
        let source = r.header("source").expect("source header").to_string();
        out.entry(source)
            .or_default()
            .push(String::from_utf8(r.value.clone()).unwrap());
    }
    (out, dups)
}

fn total(m: &HashMap<String, Vec<String>>) -> usize {
    m.values().map(Vec::len).sum()
}

/// Every line written is in the topic once, in order per source.
fn assert_same(got: &HashMap<String, Vec<String>>, written: &HashMap<String, Vec<String>>) {
    for (source, want) in written {
        let have = got.get(source).map(Vec::as_slice).unwrap_or(&[]);
        if have != want.as_slice() {
            let i = have.iter().zip(want).take_while(|(a, b)| a == b).count();
            panic!(
                "source {source}: {} lines in the topic, {} written; first difference at {i}: topic {:?}, written {:?}",
                have.len(),
                want.len(),
                have.get(i),
                want.get(i)
            );
        }
    }
    assert_eq!(total(got), total(written), "lines of unknown sources");
}

fn wait_for_all(bootstrap: &str, n: usize) -> Vec<Record> {
    let mut records = Vec::new();
    let ok = wait_until(Duration::from_secs(60), || {
        records = read_topic(bootstrap, "logs");
        (dedup(&records).0.values().map(Vec::len).sum::<usize>() >= n).then_some(())
    });
    assert!(
        ok.is_some(),
        "only {} of {n} lines arrived",
        total(&dedup(&records).0)
    );
    records
}

/// The producer binary `kill -9`ed ten times while three logs rotate every
/// 700 lines: every line written reaches the topic.
#[test]
fn killed_ten_times_during_rotations_loses_no_line() {
    let broker = LogpipeBroker::start(&bin(), &["logs"], 3);
    let dir = tempfile::tempdir().unwrap();
    let cp = tempfile::tempdir().unwrap();
    let log = cp.path().join("produce.log");
    let writer = Writer::start(dir.path(), &["a", "b", "c"], 1500, 700);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut p = produce(&broker.bootstrap, dir.path(), cp.path(), &log, &[]);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        p.kill();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        p = produce(&broker.bootstrap, dir.path(), cp.path(), &log, &[]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let written = writer.finish();
    let n = total(&written);
    let records = wait_for_all(&broker.bootstrap, n);
    assert!(p.terminate(Duration::from_secs(30)).success());
    let (got, dups) = dedup(&records);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("rotated") || text.contains("renamed"),
        "no rotation was seen:\n{text}"
    );
    assert_same(&got, &written);
    println!(
        "kill test: {n} lines written in {} files, 10 SIGKILLs, 0 missing, {dups} re-sent copies dropped by (file, offset)",
        std::fs::read_dir(dir.path()).unwrap().count()
    );
}

/// The broker down for ten seconds while lines are written: every line
/// arrives once it is back, and the producer's memory stays bounded.
#[test]
fn a_ten_second_broker_outage_loses_no_line_and_holds_memory() {
    use rdkafka::mocking::MockCluster;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("logs", 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let cp = tempfile::tempdir().unwrap();
    let log = cp.path().join("produce.log");
    let writer = Writer::start(dir.path(), &["a", "b"], 5000, 1_000_000);
    let limit = 1 << 20;
    let mut p = produce(
        &bootstrap,
        dir.path(),
        cp.path(),
        &log,
        &["--max-in-flight", "1MiB"],
    );
    std::thread::sleep(Duration::from_secs(2));
    cluster.broker_down(1).unwrap();
    let down = Instant::now();
    let mut peak_rss_kib = 0u64;
    while down.elapsed() < Duration::from_secs(10) {
        peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(p.id()));
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.broker_up(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let written = writer.finish();
    let n = total(&written);
    let records = wait_for_all(&bootstrap, n);
    peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(p.id()));
    assert!(p.terminate(Duration::from_secs(30)).success());
    let (got, dups) = dedup(&records);
    assert_same(&got, &written);
    assert_eq!(dups, 0, "no kill, so no re-sent line");
    let text = std::fs::read_to_string(&log).unwrap();
    let count = |s: &str| text.matches(s).count();
    assert_eq!(count("Kafka unreachable"), 1, "outage logged once:\n{text}");
    assert_eq!(
        count("Kafka reachable again"),
        1,
        "its end logged once:\n{text}"
    );
    // The producer's own account of its in-flight bytes (the last stats line).
    let peak: u64 = text
        .lines()
        .rev()
        .find_map(|l| l.split("in_flight_bytes_peak=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("stats line with in_flight_bytes_peak");
    assert!(
        peak <= limit,
        "in flight peaked at {peak} bytes, limit {limit}"
    );
    println!(
        "outage test: {n} lines, 10 s broker down, 0 missing, in-flight peak {peak} bytes (limit {limit}), producer peak RSS {:.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}
