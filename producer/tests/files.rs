//! The producer against real files and librdkafka's mock cluster, one case
//! each: symlink swap, `--ignore-older`, over-long lines, `\r\n` and invalid
//! UTF-8, idle partial lines, start at the end for files already there.

use std::io::Write;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use logpipe_producer::discover::InputSpec;
use logpipe_producer::{Control, ProduceError, ProduceSummary, ProducerConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// One record: value and headers.
#[derive(Debug, Clone)]
struct Rec {
    value: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// The lines of a record (v1: itself; v2: each line of the run), each with
/// the headers a v1 record of it alone would carry.
fn lines_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Vec<Rec> {
    let meta = logpipe_wire::RecordMeta::from_headers(m.headers());
    let headers = || {
        m.headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value))
    };
    meta.lines(m.payload().unwrap_or(b""))
        .expect("the producer's records read")
        .map(|l| Rec {
            value: l.value.to_vec(),
            headers: meta
                .line_headers(headers(), &l)
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        String::from_utf8_lossy(&v.unwrap_or_default()).into_owned(),
                    )
                })
                .collect(),
        })
        .collect()
}

impl Rec {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

struct Setup {
    // Dropped in this order: the reader before the cluster it talks to.
    reader: BaseConsumer,
    got: Vec<Rec>,
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl Setup {
    fn new() -> Setup {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("logs", 1, 1).unwrap();
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "files-test")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("logs", 0, Offset::Beginning)
            .unwrap();
        reader.assign(&tpl).unwrap();
        Setup {
            cluster,
            reader,
            got: Vec::new(),
        }
    }

    fn config(&self, paths: Vec<String>) -> ProducerConfig {
        let mut cfg = ProducerConfig::new(
            &self.cluster.bootstrap_servers(),
            "logs",
            "t",
            vec![InputSpec {
                paths,
                ..Default::default()
            }],
        );
        cfg.poll_interval = Duration::from_millis(20);
        cfg.scan_interval = Duration::from_millis(50);
        cfg.rotate_wait = Duration::from_millis(200);
        cfg
    }

    /// Waits until `n` lines arrived in all.
    fn wait_for(&mut self, n: usize) -> &[Rec] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.got.len() < n && Instant::now() < deadline {
            if let Some(m) = self.reader.poll(Duration::from_millis(100)) {
                // Transport errors while the broker is down are not records.
                let Ok(m) = m else { continue };
                self.got.extend(lines_of(&m));
            }
        }
        assert_eq!(self.got.len(), n, "records: {:?}", self.got);
        &self.got
    }

    /// Reads what arrives for up to a second, at least `n` records if they come.
    fn wait_for_at_least(&mut self, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.got.len() < n && Instant::now() < deadline {
            if let Some(m) = self.reader.poll(Duration::from_millis(100)) {
                let Ok(m) = m else { continue };
                self.got.extend(lines_of(&m));
            }
        }
        self.got.len()
    }

    /// Nothing more arrives for a moment.
    fn assert_quiet(&mut self) {
        let n = self.got.len();
        if let Some(m) = self.reader.poll(Duration::from_millis(500)) {
            panic!(
                "unexpected record after {n}: {:?}",
                m.unwrap().payload().map(String::from_utf8_lossy)
            );
        }
    }
}

fn start(cfg: ProducerConfig) -> (Control, JoinHandle<Result<ProduceSummary, ProduceError>>) {
    let ctl = Control::default();
    let c = ctl.clone();
    (
        ctl,
        std::thread::spawn(move || logpipe_producer::run_with(cfg, c)),
    )
}

fn stop(p: (Control, JoinHandle<Result<ProduceSummary, ProduceError>>)) -> ProduceSummary {
    p.0.shutdown.stop();
    p.1.join().unwrap().unwrap()
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// A symlink pointed at another file: the old target is read to its end,
/// then the new one from its start; no line lost or sent twice.
#[test]
fn a_symlink_swapped_to_another_file_drains_the_old_one_and_reads_the_new() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, link) = (
        dir.path().join("a.log"),
        dir.path().join("b.log"),
        dir.path().join("current.log"),
    );
    append(&a, b"a1\na2\n");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let mut cfg = s.config(vec![link.display().to_string()]);
    cfg.from_beginning = true;
    let p = start(cfg);
    s.wait_for(2);
    append(&b, b"b1\n");
    // Swap atomically, as deploy tools do: a new link renamed over the old.
    let tmp = dir.path().join("current.tmp");
    std::os::unix::fs::symlink(&b, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    append(&a, b"a3\n"); // the old file's writer is not done yet
    append(&b, b"b2\n");
    let got: Vec<String> = s.wait_for(5).iter().map(Rec::text).collect();
    let a_lines: Vec<&String> = got.iter().filter(|l| l.starts_with('a')).collect();
    let b_lines: Vec<&String> = got.iter().filter(|l| l.starts_with('b')).collect();
    assert_eq!(a_lines, ["a1", "a2", "a3"]);
    assert_eq!(b_lines, ["b1", "b2"]);
    // Both published under the link's path: one source.
    let sources: std::collections::BTreeSet<&str> =
        s.got.iter().filter_map(|r| r.header("source")).collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    s.assert_quiet();
    stop(p);
}

/// `--ignore-older`: a file unchanged for a week is not followed; once it
/// changes, only the lines written after that are sent.
#[test]
fn ignore_older_skips_stale_files_until_they_change_then_reads_only_new_lines() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let (old, fresh) = (dir.path().join("old.log"), dir.path().join("fresh.log"));
    append(&old, b"stale 1\nstale 2\n");
    let week_ago = SystemTime::now() - Duration::from_secs(7 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(week_ago)
        .unwrap();
    append(&fresh, b"fresh 1\n");
    let mut cfg = s.config(vec![format!("{}/*.log", dir.path().display())]);
    cfg.from_beginning = true;
    cfg.ignore_older = Some(Duration::from_secs(86400));
    let p = start(cfg);
    assert_eq!(s.wait_for(1)[0].text(), "fresh 1");
    s.assert_quiet();
    append(&old, b"new 1\n");
    assert_eq!(s.wait_for(2)[1].text(), "new 1");
    s.assert_quiet();
    stop(p);
}

/// A line over `--max-line-bytes` goes out cut with its `cut` header, `\r\n`
/// loses its `\r`, and bytes that are not UTF-8 are sent as they are.
#[test]
fn long_lines_are_cut_and_marked_crlf_stripped_bytes_kept() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.log");
    let mut content = b"dos line\r\n".to_vec();
    content.extend_from_slice(&[b'L'; 5000]);
    content.extend_from_slice(b"\n\xff\xfe not utf-8\nlast\n");
    append(&f, &content);
    let mut cfg = s.config(vec![f.display().to_string()]);
    cfg.from_beginning = true;
    cfg.max_line_bytes = 1000;
    let p = start(cfg);
    let got = s.wait_for(4).to_vec();
    assert_eq!(got[0].value, b"dos line");
    assert_eq!(got[1].value, vec![b'L'; 1000]);
    assert_eq!(got[1].header("cut"), Some("5000"));
    assert_eq!(got[1].header("offset"), Some("10"));
    assert_eq!(got[2].value, b"\xff\xfe not utf-8");
    assert_eq!(got[2].header("cut"), None);
    assert_eq!(got[3].header("offset"), Some("5024"));
    assert_eq!(stop(p).lines, 4);
}

/// A last line without its newline is sent as `partial: idle` after the
/// timeout, and its rest follows as `partial: rest`.
#[test]
fn an_idle_partial_line_is_sent_marked_and_its_rest_follows_marked() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.log");
    append(&f, b"whole\nhalf a li");
    let mut cfg = s.config(vec![f.display().to_string()]);
    cfg.from_beginning = true;
    cfg.partial_line_timeout = Some(Duration::from_millis(300));
    let p = start(cfg);
    let got = s.wait_for(2).to_vec();
    assert_eq!(got[1].text(), "half a li");
    assert_eq!(got[1].header("partial"), Some("idle"));
    append(&f, b"ne\nnext\n");
    let got = s.wait_for(4).to_vec();
    assert_eq!(got[2].text(), "ne");
    assert_eq!(got[2].header("partial"), Some("rest"));
    assert_eq!(got[3].header("partial"), None);
    stop(p);
}

/// Without `--from-beginning`, files present at start-up are followed from
/// their last whole line; a file with no whole line yet is read from 0.
#[test]
fn files_already_there_start_at_their_last_whole_line_by_default() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.log");
    append(&f, b"old 1\nold 2\nhalf");
    // A file whose first line is not complete yet: that line is whole later.
    let g = dir.path().join("w.log");
    append(&g, b"first ha");
    let p = start(s.config(vec![format!("{}/*.log", dir.path().display())]));
    std::thread::sleep(Duration::from_millis(300));
    append(&f, b" done\nnew\n");
    let got: Vec<String> = s.wait_for(2).iter().map(Rec::text).collect();
    assert_eq!(got, ["half done", "new"]);
    append(&g, b"lf\n");
    assert_eq!(s.wait_for(3)[2].text(), "first half");
    // A file created while running is read from its beginning.
    append(&dir.path().join("y.log"), b"y1\n");
    assert_eq!(s.wait_for(4)[3].text(), "y1");
    stop(p);
}

/// A file that is empty when first seen (a log just created by rotation)
/// is followed as soon as its first line is complete, not at the next
/// directory scan — here an hour away, so without the look-again the lines
/// would not come at all.
#[test]
fn a_file_empty_when_seen_is_followed_once_its_first_line_is_written() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("access.log");
    append(&f, b"");
    let mut cfg = s.config(vec![f.display().to_string()]);
    cfg.scan_interval = Duration::from_secs(3600);
    let p = start(cfg);
    std::thread::sleep(Duration::from_millis(300));
    append(&f, b"first\nsecond\n");
    let got: Vec<String> = s.wait_for(2).iter().map(Rec::text).collect();
    assert_eq!(got, ["first", "second"]);
    stop(p);
}

/// A shutdown while Kafka is down returns within its timeout with the
/// checkpoint before the unacknowledged lines; the restart sends them all.
#[test]
fn shutdown_during_an_outage_exits_cleanly_and_the_restart_sends_everything() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let cp = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.log");
    append(&f, b"before\n");
    let mut cfg = s.config(vec![f.display().to_string()]);
    cfg.from_beginning = true;
    cfg.checkpoint_dir = Some(cp.path().to_path_buf());
    cfg.max_in_flight_bytes = 64 << 10;
    cfg.shutdown_timeout = Duration::from_secs(1);
    let p = start(cfg.clone());
    s.wait_for(1);
    s.cluster.broker_down(1).unwrap();
    let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    append(&f, text.as_bytes());
    // Reading pauses at the in-flight limit; the shutdown must not hang on it.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    stop(p);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    s.cluster.broker_up(1).unwrap();
    let p = start(cfg);
    // Every line once (the first copy of a re-sent line counts; none is lost).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let distinct: std::collections::BTreeSet<String> = s.got.iter().map(Rec::text).collect();
        if distinct.len() == 5001 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 5001 lines",
            distinct.len()
        );
        let n = s.got.len();
        let _ = s.wait_for_at_least(n + 1);
    }
    stop(p);
}

/// A followed file rotated and gzipped while the producer was stopped: the
/// backfill finds the `.gz` by its first line and sends only what the
/// checkpoint had not acknowledged, under the file's own identity and
/// offsets; then the new file. A second backfill sends nothing.
#[test]
fn a_file_compressed_while_stopped_continues_where_its_checkpoint_was() {
    let mut s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let glob = format!("{}/access.log*", dir.path().display());
    let line = |i: usize| format!("line {i:04} of the first file\n");
    let first: String = (0..100).map(line).collect();
    std::fs::write(&log, &first).unwrap();
    let mut cfg = s_config(&s, &glob, dir.path());
    cfg.exit_on_eof = true;
    let run = || logpipe_producer::run_with(cfg.clone(), Control::default()).unwrap();
    assert_eq!(run().lines, 100);
    // More lines, then rotated and compressed (the original removed), and a
    // new live file — all while the producer is not running.
    let more: String = (100..150).map(line).collect();
    append(&log, more.as_bytes());
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(dir.path().join("access.log.1.gz")).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(std::fs::read(&log).unwrap().as_slice())
        .unwrap();
    enc.finish().unwrap();
    std::fs::remove_file(&log).unwrap();
    std::fs::write(&log, "new file line 1\nnew file line 2\n").unwrap();
    assert_eq!(run().lines, 52);
    let got = s.wait_for(152).to_vec();
    let file_of = |r: &Rec| r.header("file").unwrap().to_string();
    assert!(
        got[..150].iter().all(|r| file_of(r) == file_of(&got[0])),
        "one identity for the first file"
    );
    for (i, r) in got[..150].iter().enumerate() {
        assert_eq!(r.text(), line(i).trim_end());
        assert_eq!(
            r.header("offset"),
            Some((i * line(0).len()).to_string().as_str())
        );
        assert_eq!(r.header("source"), Some(log.display().to_string().as_str()));
    }
    assert_ne!(file_of(&got[150]), file_of(&got[0]));
    assert_eq!(got[151].text(), "new file line 2");
    assert_eq!(run().lines, 0, "a second backfill sends nothing");
    s.assert_quiet();
}

fn s_config(s: &Setup, glob: &str, dir: &Path) -> ProducerConfig {
    let mut cfg = s.config(vec![glob.to_string()]);
    cfg.from_beginning = true;
    cfg.checkpoint_dir = Some(dir.join("checkpoints"));
    cfg
}
