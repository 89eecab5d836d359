//! Lines published in pieces, end to end: a writer that pauses in the
//! middle of a line longer than the producer's `--partial-line-timeout`
//! makes the producer publish the piece it has (`partial: idle`) and later
//! the rest; the analyzer must count that line once, whole, with its real
//! bytes — also when it is killed with SIGKILL between the two pieces.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logpipe_testkit::{
    diff, dlq_topic, produce_cmd, read_topic, unique, wait_until, Analyzer, Child, Expected,
    Influx, LogpipeBroker, Membership,
};
use logpipe_traffic::{Generator, Request};
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
const WINDOW_MS: i64 = 10_000;
const START_MS: i64 = 1_704_067_200_000;

fn add_truth(expected: &mut Expected, source: &str, r: &Request) {
    let start = r.time_ms.div_euclid(WINDOW_MS) * WINDOW_MS;
    let w = expected
        .windows
        .entry((source.to_string(), start))
        .or_default();
    w.count += 1;
    w.traffic += r.body_bytes.unwrap_or(0);
    w.status[(r.status / 100 - 1) as usize] += 1;
    expected.lines += 1;
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
}

/// Three files of one source (`--source web`), each with one line split at
/// a random byte (a different one per file, seeded and printed) across a
/// pause of 1.5 s with `--partial-line-timeout 300ms`. While the first
/// pieces wait, a fourth file of the source moves its event time on, so
/// every window open at the pieces closes and the restore offset would pass
/// them if nothing held it. The analyzer that read the first pieces is
/// killed with SIGKILL before the rests are written and another takes over.
/// Every window equals the truth, the split lines counted once with their
/// bytes, and the dead-letter topic holds exactly the damaged lines.
#[test]
fn a_line_written_in_two_pieces_is_counted_once_whole_across_a_kill() {
    let seed: u64 = std::env::var("LOGPIPE_PIECES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("LOGPIPE_PIECES_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let topic = unique("pieces");
    let broker = LogpipeBroker::start(Path::new(BIN), &[&topic], 2);
    let influx = Influx::start();
    let db = influx.create_db(&unique("pieces"));
    let m = Membership::new(&broker.bootstrap, &topic);
    let fetch = ["--kafka".to_string(), "fetch.wait.max.ms=10".to_string()];
    const SOURCE: &str = "web";

    let mut expected = Expected::new(WINDOW_MS);
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut splits: Vec<(PathBuf, String, usize)> = Vec::new();
    for (i, name) in ["shop", "api", "blog"].iter().enumerate() {
        let p = dir.path().join(format!("{name}.log"));
        // 400 lines (damaged ones among them), then the line to split,
        // in a window of its own well after everything else.
        let body = expected.generate(Generator::new(200 + i as u64, START_MS, 20.0), SOURCE, 400);
        std::fs::write(&p, body.join("\n") + "\n").unwrap();
        let mut g = Generator::new(300 + i as u64, START_MS + 300_000, 20.0)
            .malformed_one_in(0)
            .with_request_time();
        let (line, req) = g.next_line();
        add_truth(&mut expected, SOURCE, &req.expect("valid"));
        let at = rng.random_range(1..line.len());
        splits.push((p.clone(), line, at));
        paths.push(p);
    }
    // Written once the first pieces are out: event time 100–150 s.
    let later = dir.path().join("later.log");
    std::fs::write(&later, "").unwrap();
    let later_lines = expected.generate(
        Generator::new(400, START_MS + 100_000, 2.0).malformed_one_in(0),
        SOURCE,
        100,
    );
    paths.push(later.clone());

    let mut analyzer = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .args(&fetch)
        .start();
    let producer_log = std::fs::File::create(dir.path().join("producer.log")).unwrap();
    let mut producer = Child::spawn(
        "logpipe produce",
        produce_cmd(
            Path::new(BIN),
            &m.brokers,
            &topic,
            &dir.path().join("checkpoints"),
            &paths,
            false,
        )
        .args(["--partial-line-timeout", "300ms", "--source", SOURCE])
        .stderr(producer_log),
    );

    // The first pieces: published as `partial: idle` once the writer paused.
    for (p, line, at) in &splits {
        append(p, &line.as_bytes()[..*at]);
    }
    let idle = wait_until(Duration::from_secs(30), || {
        let n = read_topic(&m.brokers, &topic)
            .iter()
            .filter(|r| r.header("partial") == Some("idle"))
            .count();
        (n == splits.len()).then_some(n)
    });
    assert!(
        idle.is_some(),
        "the producer did not publish the first pieces:\n{}",
        std::fs::read_to_string(dir.path().join("producer.log")).unwrap_or_default()
    );
    append(&later, (later_lines.join("\n") + "\n").as_bytes());
    // The analyzer reads them and writes restore points (300 ms flushes),
    // then dies before the rests are written.
    std::thread::sleep(Duration::from_millis(2000));
    analyzer.child.kill();
    let first_log = analyzer.log();
    assert!(
        !first_log.contains("partial:") && !first_log.contains("joined from pieces"),
        "a piece was dead-lettered:\n{first_log}"
    );
    let mut analyzer = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .id("a1")
        .args(&fetch)
        .start();
    for (p, line, at) in &splits {
        append(p, &[&line.as_bytes()[*at..], b"\n"].concat());
    }

    let mut got = BTreeMap::new();
    let matched = wait_until(Duration::from_secs(60), || {
        got = Expected::from_influx(&influx, &db);
        (got == expected.windows).then_some(())
    });
    assert!(
        matched.is_some(),
        "InfluxDB does not match the truth (seed {seed}, splits at {:?}):\n{}\nanalyzer logs:\n{first_log}\n---\n{}",
        splits.iter().map(|s| s.2).collect::<Vec<_>>(),
        diff(&expected.windows, &got),
        analyzer.log()
    );
    // Exactly the damaged lines are dead letters; no piece is among them.
    let mut dead: Vec<(String, String)> = read_topic(&m.brokers, &dlq_topic(&topic))
        .iter()
        .map(|r| r.source_and_line())
        .collect();
    dead.sort();
    let want = expected.malformed_sorted();
    assert_eq!(dead, want, "dead letters differ from the damaged lines");
    assert!(expected.malformed > 0, "the workload has damaged lines");
    // The pieces were read twice (once by each analyzer) and joined.
    let pieces: u64 = influx
        .query(
            &db,
            "SELECT last(pieces) FROM logpipe WHERE analyzer = 'a1'",
        )
        .iter()
        .map(|s| s["values"][0][1].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(pieces, splits.len() as u64, "a1 joined every split line");
    producer.terminate(Duration::from_secs(10));
    let st = analyzer.child.terminate(Duration::from_secs(20));
    assert!(st.success(), "analyzer exit {st:?}: {}", analyzer.log());
}
