//! Model test: random sequences of writes, partial writes, rename rotations,
//! copytruncates, deletions, producer restarts and producer kills against a
//! real directory and librdkafka's mock cluster. After each sequence the
//! topic, de-duplicated by (`file`, `offset`) as the analyzers do, must hold
//! exactly the lines written, in order per source — and without kills, no
//! duplicate at all.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 12).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use logpipe_producer::discover::InputSpec;
use logpipe_producer::{Control, ProduceError, ProduceSummary, ProducerConfig};
use proptest::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const SOURCES: usize = 3;
const TOPIC: &str = "logs";

#[derive(Debug, Clone)]
enum Op {
    Write { src: usize, lines: usize },
    Partial { src: usize },
    Rotate { src: usize },
    CopyTruncate { src: usize },
    Delete { src: usize },
    Restart,
    Kill,
    Start,
}

fn op() -> impl Strategy<Value = Op> {
    let src = 0..SOURCES;
    prop_oneof![
        6 => (src.clone(), 1..30usize).prop_map(|(src, lines)| Op::Write { src, lines }),
        2 => src.clone().prop_map(|src| Op::Partial { src }),
        2 => src.clone().prop_map(|src| Op::Rotate { src }),
        1 => src.clone().prop_map(|src| Op::CopyTruncate { src }),
        1 => src.prop_map(|src| Op::Delete { src }),
        1 => Just(Op::Restart),
        1 => Just(Op::Kill),
        1 => Just(Op::Start),
    ]
}

/// Every record of the topic read so far (one partition).
struct Collector {
    consumer: BaseConsumer,
    /// (file, offset, value) in topic order.
    records: Vec<(String, u64, String)>,
}

impl Collector {
    fn new(bootstrap: &str) -> Collector {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "model-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        Collector {
            consumer,
            records: Vec::new(),
        }
    }

    fn poll(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(m) = self
            .consumer
            .poll(deadline.saturating_duration_since(Instant::now()))
        {
            let m = m.expect("consume");
            // Every line of the record (a v2 run holds several), each with
            // its own offset.
            let meta = logpipe_wire::RecordMeta::from_headers(m.headers());
            for l in meta
                .lines(m.payload().unwrap_or(b""))
                .expect("a record that reads")
            {
                self.records.push((
                    String::from_utf8(l.file.expect("file").to_vec()).unwrap(),
                    l.offset.expect("offset"),
                    String::from_utf8(l.value.to_vec()).unwrap(),
                ));
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }

    /// Lines after de-duplication (drop a record whose offset is not above
    /// the last one of its file, as the analyzers do), and the raw count.
    fn lines(&self) -> (Vec<String>, usize) {
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut out = Vec::new();
        for (file, offset, value) in &self.records {
            match last.get(file.as_str()) {
                Some(&l) if *offset <= l => continue,
                _ => {}
            }
            last.insert(file, *offset);
            out.push(value.clone());
        }
        (out, self.records.len())
    }

    /// Waits until `n` distinct lines arrived.
    fn wait_for(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines().0.len() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.poll(Duration::from_millis(100));
        }
    }
}

struct Live {
    path: PathBuf,
    /// Text written since the last newline.
    partial: String,
    /// Has complete lines and the producer has read them (a sync happened
    /// while it ran): its checkpoint knows the file.
    known: bool,
    complete_lines: usize,
}

struct World {
    dir: tempfile::TempDir,
    cp: tempfile::TempDir,
    bootstrap: String,
    live: Vec<Live>,
    /// Complete lines written, per source, in order.
    expected: Vec<Vec<String>>,
    running: Option<(Control, JoinHandle<Result<ProduceSummary, ProduceError>>)>,
    seq: u64,
    rotated: u64,
    killed: bool,
    /// A sync happened since the producer (re)started: it has every known
    /// file open.
    synced_this_run: bool,
    collector: Collector,
}

impl World {
    fn new(bootstrap: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let live = (0..SOURCES)
            .map(|i| Live {
                path: dir.path().join(format!("s{i}.log")),
                partial: String::new(),
                known: false,
                complete_lines: 0,
            })
            .collect();
        World {
            dir,
            cp: tempfile::tempdir().unwrap(),
            bootstrap: bootstrap.into(),
            live,
            expected: vec![Vec::new(); SOURCES],
            running: None,
            seq: 0,
            rotated: 0,
            killed: false,
            synced_this_run: false,
            collector: Collector::new(bootstrap),
        }
    }

    fn total(&self) -> usize {
        self.expected.iter().map(Vec::len).sum()
    }

    fn append(&mut self, src: usize, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.live[src].path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn write(&mut self, src: usize, lines: usize) {
        let mut text = String::new();
        for _ in 0..lines {
            self.seq += 1;
            let l = &mut self.live[src];
            // The partial piece is in the file already; it starts this line.
            let prefix = std::mem::take(&mut l.partial);
            let rest = format!(
                "10.0.{src}.{} - - [line {}] \"GET /x HTTP/1.1\" 200 {}",
                self.seq % 250,
                self.seq,
                self.seq * 7
            );
            text.push_str(&rest);
            text.push('\n');
            self.expected[src].push(prefix + &rest);
            l.complete_lines += 1;
        }
        self.append(src, &text);
    }

    fn partial(&mut self, src: usize) {
        self.seq += 1;
        let piece = format!("part{}-", self.seq);
        self.live[src].partial.push_str(&piece);
        self.append(src, &piece);
    }

    fn start(&mut self) {
        if self.running.is_some() {
            return;
        }
        let mut cfg = ProducerConfig::new(
            &self.bootstrap,
            TOPIC,
            "model",
            vec![InputSpec {
                paths: vec![format!("{}/*.log", self.dir.path().display())],
                ..Default::default()
            }],
        );
        cfg.from_beginning = true;
        cfg.checkpoint_dir = Some(self.cp.path().to_path_buf());
        cfg.poll_interval = Duration::from_millis(20);
        cfg.scan_interval = Duration::from_millis(50);
        cfg.checkpoint_interval = Duration::from_millis(50);
        cfg.rotate_wait = Duration::from_millis(300);
        cfg.shutdown_timeout = Duration::from_secs(20);
        self.synced_this_run = false;
        let ctl = Control::default();
        let c = ctl.clone();
        let h = std::thread::spawn(move || logpipe_producer::run_with(cfg, c));
        self.running = Some((ctl, h));
    }

    fn stop(&mut self, kill: bool) {
        if let Some((ctl, h)) = self.running.take() {
            if kill {
                self.killed = true;
                ctl.shutdown.abort();
            } else {
                ctl.shutdown.stop();
            }
            h.join().unwrap().expect("producer run");
        }
    }

    /// Until every complete line written is in the topic (the producer runs).
    fn sync(&mut self) {
        self.start();
        let n = self.total();
        if !self.collector.wait_for(n, Duration::from_secs(30)) {
            let ls: Vec<String> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let m = e.metadata().unwrap();
                    use std::os::unix::fs::MetadataExt;
                    format!("{:?} ino {:x} {} bytes", e.file_name(), m.ino(), m.len())
                })
                .collect();
            panic!(
                "{n} lines written, {} arrived; files: {ls:?}",
                self.collector.lines().0.len()
            );
        }
        for l in &mut self.live {
            if l.complete_lines > 0 {
                l.known = true;
            }
        }
        self.synced_this_run = true;
        // Two checkpoint intervals: the checkpoint names every file read.
        std::thread::sleep(Duration::from_millis(150));
    }

    fn new_live(&mut self, src: usize) {
        let l = &mut self.live[src];
        l.partial.clear();
        l.known = false;
        l.complete_lines = 0;
    }

    fn apply(&mut self, op: &Op) {
        tracing::debug!(?op, "model");
        match *op {
            Op::Write { src, lines } => self.write(src, lines),
            Op::Partial { src } => self.partial(src),
            Op::Rotate { src } => {
                if !self.live[src].path.exists() {
                    return;
                }
                if !self.live[src].partial.is_empty() {
                    self.write(src, 1);
                }
                if !self.live[src].known {
                    // Renamed away before the producer ever saw it, to a name
                    // outside the glob: nobody could find it. Let it look first.
                    if self.running.is_none() {
                        return;
                    }
                    self.sync();
                }
                self.rotated += 1;
                let to = self.dir.path().join(format!("s{src}.log.{}", self.rotated));
                std::fs::rename(&self.live[src].path, to).unwrap();
                self.new_live(src);
            }
            Op::CopyTruncate { src } => {
                if !self.live[src].path.exists() {
                    return;
                }
                // What is only in the copy is lost by design of copytruncate:
                // the producer must have read it all first.
                if !self.live[src].partial.is_empty() {
                    self.write(src, 1);
                }
                self.sync();
                self.rotated += 1;
                let to = self.dir.path().join(format!("s{src}.log.{}", self.rotated));
                std::fs::copy(&self.live[src].path, to).unwrap();
                File::options()
                    .write(true)
                    .open(&self.live[src].path)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                let l = &mut self.live[src];
                l.complete_lines = 0;
                l.known = false;
            }
            Op::Delete { src } => {
                if !self.live[src].path.exists() {
                    return;
                }
                if !self.live[src].partial.is_empty() {
                    self.write(src, 1);
                }
                if self.running.is_some() && self.synced_this_run && self.live[src].known {
                    // The producer holds it open: what is left is still read,
                    // as long as it runs — a deleted file cannot be read after
                    // a restart, so wait for that before any kill.
                    std::fs::remove_file(&self.live[src].path).unwrap();
                    self.new_live(src);
                    self.sync();
                } else {
                    // Deleting a file nobody opened loses it; make sure it was read.
                    self.sync();
                    std::fs::remove_file(&self.live[src].path).unwrap();
                    self.new_live(src);
                }
            }
            Op::Restart => {
                self.stop(false);
                self.start();
            }
            Op::Kill => self.stop(true),
            Op::Start => self.start(),
        }
    }

    fn check(mut self) {
        for src in 0..SOURCES {
            if !self.live[src].partial.is_empty() {
                self.write(src, 1);
            }
        }
        self.sync();
        self.stop(false);
        self.collector.poll(Duration::from_millis(300));
        let (lines, raw) = self.collector.lines();
        // Per source, in order: the lines carry their source in the address.
        for (src, expected) in self.expected.iter().enumerate() {
            let tag = format!("10.0.{src}.");
            let got: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains(&tag) && l.find(&tag) < l.find(" - - "))
                .collect();
            let want: Vec<&String> = expected.iter().collect();
            if got != want {
                let i = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                panic!(
                    "source {src}: {} lines in the topic, {} written; first difference at {i}: topic {:?}, written {:?}",
                    got.len(),
                    want.len(),
                    got.get(i),
                    want.get(i)
                );
            }
        }
        assert_eq!(lines.len(), self.total(), "lines no source wrote");
        if !self.killed {
            assert_eq!(raw, lines.len(), "duplicates without any kill");
        }
    }
}

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "logpipe_producer=info".into()),
        )
        .with_test_writer()
        .try_init();
    let c = MockCluster::new(1).unwrap();
    c.create_topic(TOPIC, 1, 1).unwrap();
    c
}

/// The model test's operations (write, rotate, truncate, delete, start,
/// stop, kill, outage) in one fixed order: the topic holds every line once.
#[test]
fn a_fixed_sequence_with_every_operation() {
    let c = cluster();
    let mut w = World::new(&c.bootstrap_servers());
    use Op::*;
    for op in [
        Write { src: 0, lines: 5 },
        Start,
        Write { src: 1, lines: 3 },
        Partial { src: 0 },
        Rotate { src: 0 },
        Write { src: 0, lines: 4 },
        CopyTruncate { src: 1 },
        Write { src: 1, lines: 2 },
        Kill,
        Write { src: 2, lines: 7 },
        Rotate { src: 1 },
        Restart,
        Delete { src: 2 },
        Write { src: 2, lines: 3 },
        Restart,
    ] {
        w.apply(&op);
    }
    w.check();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(12),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random sequences of the model's operations: the topic holds every
    /// complete line written, once (after dropping re-sends by file and offset).
    #[test]
    fn random_sequences_lose_nothing_and_repeat_nothing(ops in prop::collection::vec(op(), 1..25)) {
        let c = cluster();
        let mut w = World::new(&c.bootstrap_servers());
        for op in &ops {
            w.apply(op);
        }
        w.check();
    }
}
