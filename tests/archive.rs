//! `logpipe archive` as a real process against `logpipe broker`: killed
//! with SIGKILL mid-stream (and its producer too), its files must hold every
//! line exactly once, in order, per source and day.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipe_testkit::{produce_cmd, unique, wait_until, Child, Kafka, LogpipeBroker};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logpipe"))
}

fn archive_cmd(brokers: &str, topic: &str, dir: &Path, log: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["archive", "--brokers", brokers, "--topic", topic, "--dir"])
        .arg(dir)
        .args(["--group", &unique("archive"), "--commit-interval", "200ms"])
        .args([
            "--kafka",
            "session.timeout.ms=2000,heartbeat.interval.ms=500,fetch.wait.max.ms=10",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(logpipe_testkit::append_to(log));
    c
}

/// Every line under `dir/<source dir>/`, days in order (`.log.zst` frames
/// decompressed before the `.log` of the same day).
fn archived(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if !e.file_type().unwrap().is_dir() {
            continue;
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(e.path())
            .unwrap()
            .flatten()
            .map(|f| f.path())
            .collect();
        names.sort_by_key(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            (n[..10].to_string(), !n.ends_with(".zst"))
        });
        let mut lines = Vec::new();
        for p in names {
            let bytes = std::fs::read(&p).unwrap();
            let text = if p.extension().is_some_and(|x| x == "zst") {
                zstd::decode_all(&bytes[..]).unwrap()
            } else {
                bytes
            };
            lines.extend(String::from_utf8(text).unwrap().lines().map(str::to_string));
        }
        out.insert(e.file_name().to_string_lossy().into_owned(), lines);
    }
    out
}

/// The archive's directory name of a source, as its docs define it.
fn escaped(source: &str) -> String {
    source
        .bytes()
        .enumerate()
        .map(|(i, b)| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            b'.' if i > 0 => ".".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Three sources appended to while a producer (killed once) publishes them
/// and the archive is killed three times: each source's archive is exactly
/// the lines written, once each, in order.
#[test]
fn archive_killed_three_times_mid_stream_holds_every_line_once() {
    let work = tempfile::tempdir().unwrap();
    let (logs, cps, out) = (
        work.path().join("logs"),
        work.path().join("cp"),
        work.path().join("archive"),
    );
    std::fs::create_dir_all(&logs).unwrap();
    let topic = unique("archive");
    let broker = Kafka::with_topics(&[&topic], 3);
    let names = ["alpha", "beta", "gamma"];
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| logs.join(format!("{n}.log")))
        .collect();
    for p in &paths {
        std::fs::write(p, "").unwrap();
    }
    // The writer: 3 × 4000 lines over ~4 s.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (paths, stop) = (paths.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut files: Vec<_> = paths
                .iter()
                .map(|p| std::fs::OpenOptions::new().append(true).open(p).unwrap())
                .collect();
            let mut written: Vec<Vec<String>> = vec![Vec::new(); files.len()];
            for i in 0..4000 {
                for (k, f) in files.iter_mut().enumerate() {
                    let line = format!(
                        "10.0.{k}.{} - - [line {i} of {k}] \"GET /{i} HTTP/1.1\" 200 {}",
                        i % 250,
                        i * 7
                    );
                    writeln!(f, "{line}").unwrap();
                    written[k].push(line);
                }
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            written
        })
    };
    let mut pcmd = produce_cmd(&bin(), &broker.bootstrap, &topic, &cps, &paths, false);
    pcmd.stderr(Stdio::null());
    let mut producer = Child::spawn("produce", &mut pcmd);
    let log = work.path().join("archive.log");
    let mut archive = Child::spawn(
        "archive",
        &mut archive_cmd(&broker.bootstrap, &topic, &out, &log, &[]),
    );
    let started = Instant::now();
    for (k, at) in [900u64, 1900, 2700].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(at).saturating_sub(started.elapsed()));
        archive.kill(); // SIGKILL
        if k == 1 {
            // The producer too: it re-sends what was acknowledged after its last checkpoint.
            producer.kill();
            let mut pcmd = produce_cmd(&bin(), &broker.bootstrap, &topic, &cps, &paths, false);
            pcmd.stderr(Stdio::null());
            producer = Child::spawn("produce", &mut pcmd);
        }
        archive = Child::spawn(
            "archive",
            &mut archive_cmd(&broker.bootstrap, &topic, &out, &log, &[]),
        );
    }
    let written = writer.join().unwrap();
    let want: BTreeMap<String, Vec<String>> = written
        .into_iter()
        .enumerate()
        .map(|(k, lines)| (escaped(paths[k].to_str().unwrap()), lines))
        .collect();
    let done = wait_until(Duration::from_secs(60), || {
        assert!(
            !archive.exited(),
            "archive exited: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let got = archived(&out);
        let counts: Vec<usize> = got.values().map(Vec::len).collect();
        (got.len() == 3 && counts.iter().zip(want.values()).all(|(c, w)| *c >= w.len()))
            .then_some(())
    });
    // A moment for anything extra (a duplicate) to show up.
    std::thread::sleep(Duration::from_millis(800));
    let st = archive.terminate(Duration::from_secs(30));
    assert!(st.success(), "archive exit {st}");
    let _ = producer.terminate(Duration::from_secs(30));
    let got = archived(&out);
    let alog = std::fs::read_to_string(&log).unwrap();
    assert!(
        done.is_some(),
        "archive incomplete: {:?} of {:?}\n{alog}",
        got.values().map(Vec::len).collect::<Vec<_>>(),
        want.values().map(Vec::len).collect::<Vec<_>>()
    );
    for (src, lines) in &want {
        let g = &got[src];
        if g != lines {
            let first = g
                .iter()
                .zip(lines)
                .position(|(a, b)| a != b)
                .unwrap_or(lines.len().min(g.len()));
            panic!("{src}: {} lines archived, {} written; first difference at line {first}: {:?} vs {:?}", g.len(), lines.len(), g.get(first), lines.get(first));
        }
    }
    assert!(alog.contains("resuming from the saved state"), "{alog}");
}

fn produce_records(brokers: &str, topic: &str, records: &[(&str, &str, u64, i64, &str)]) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (source, file, offset, ts, value) in records {
        let key = format!("h:{source}");
        let off = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "host",
                value: Some("h"),
            })
            .insert(Header {
                key: "source",
                value: Some(*source),
            })
            .insert(Header {
                key: "file",
                value: Some(*file),
            })
            .insert(Header {
                key: "offset",
                value: Some(&off),
            });
        p.send(
            BaseRecord::to(topic)
                .key(&key)
                .payload(*value)
                .headers(headers)
                .timestamp(*ts),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

/// Days are UTC dates of the record time; a closed day is compressed, a
/// late line of it becomes another zstd frame; source names cannot leave
/// the directory; re-sends by (file, offset) are dropped.
#[test]
fn days_close_into_zstd_late_lines_append_a_frame_and_names_stay_inside() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("archive");
    let log = work.path().join("archive.log");
    let topic = unique("archive-days");
    let broker = LogpipeBroker::start(&bin(), &[&topic], 2);
    // 2025-11-30T23:59:59.500Z and 2025-12-01T00:00:00.250Z.
    let (d1, d2) = (1_764_547_199_500i64, 1_764_547_200_250i64);
    produce_records(
        &broker.bootstrap,
        &topic,
        &[
            ("web", "f1", 0, d1, "last of november"),
            ("web", "f1", 17, d2, "first of december"),
            ("web", "f1", 17, d2, "first of december"), // a producer re-send
            ("../../escape", "f2", 0, d1, "no way out"),
        ],
    );
    let mut a = Child::spawn(
        "archive",
        &mut archive_cmd(
            &broker.bootstrap,
            &topic,
            &out,
            &log,
            &["--compress", "--close-after", "0s"],
        ),
    );
    let web = out.join("web");
    wait_until(Duration::from_secs(30), || {
        (web.join("2025-12-01.log.zst").exists() && web.join("2025-11-30.log.zst").exists())
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "days not closed: {}",
            std::fs::read_to_string(&log).unwrap()
        )
    });
    // A late line for a closed day.
    produce_records(
        &broker.bootstrap,
        &topic,
        &[("web", "f1", 40, d2 + 5, "late december")],
    );
    wait_until(Duration::from_secs(30), || {
        let got = archived(&out);
        (got.get("web").map(Vec::len) == Some(3) && !web.join("2025-12-01.log").exists())
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "late line: {:?} {}",
            archived(&out),
            std::fs::read_to_string(&log).unwrap()
        )
    });
    assert!(a.terminate(Duration::from_secs(30)).success());
    let got = archived(&out);
    assert_eq!(
        got["web"],
        ["last of november", "first of december", "late december"]
    );
    let dec = std::fs::read(web.join("2025-12-01.log.zst")).unwrap();
    assert_eq!(
        zstd::decode_all(&dec[..]).unwrap(),
        b"first of december\nlate december\n"
    );
    // Two frames: the day as closed, then the late line.
    assert_eq!(
        dec.windows(4)
            .filter(|w| *w == [0x28, 0xb5, 0x2f, 0xfd])
            .count(),
        2
    );
    let escaped: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        escaped.contains(&"%2E.%2F..%2Fescape".to_string()),
        "{escaped:?}"
    );
    assert!(!work.path().join("escape").exists() && !out.parent().unwrap().join("escape").exists());
    assert_eq!(got["%2E.%2F..%2Fescape"], ["no way out"]);

    // A second archive into a directory with files but no state refuses.
    let other = work.path().join("foreign");
    std::fs::create_dir_all(other.join("web")).unwrap();
    std::fs::write(other.join("web/2025-12-01.log"), "someone else's\n").unwrap();
    let r = archive_cmd(&broker.bootstrap, &topic, &other, &log, &[])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("no .archive-state.json"), "{err}");
}
