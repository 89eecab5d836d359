//! `--config FILE` as an operator uses it: a producer reads its brokers,
//! topic and `[[input]]` tables from the file and publishes under the
//! file's source names; flags and environment variables override the file;
//! an unknown key stops the command with its file and line.

use std::path::Path;
use std::process::{Command, Output};

use logpipe_testkit::{free_port, read_topic, LogpipeBroker};

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");

fn run(c: &mut Command) -> (Output, String) {
    let out = c.output().expect("run logpipe");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

#[test]
fn a_config_file_sets_every_flag_and_flags_and_variables_win() {
    let dir = tempfile::tempdir().unwrap();
    let broker = LogpipeBroker::start(Path::new(BIN), &["cfglogs"], 2);
    let log = dir.path().join("shop.log");
    std::fs::write(&log, "a line\nanother line\n").unwrap();
    let closed = free_port();
    let file = dir.path().join("logpipe.toml");
    std::fs::write(
        &file,
        format!(
            "brokers = \"{}\"\ntopic = \"cfglogs\"\n\n[produce]\nfrom-beginning = true\nexit-on-eof = true\ncheckpoint-dir = \"{}\"\n\n[[input]]\npaths = [\"{}\"]\nsource = \"shop\"\n\n[analyze]\ninflux-url = \"http://127.0.0.1:{closed}\"\ninflux-db = \"logs\"\n",
            broker.bootstrap,
            dir.path().join("checkpoints").display(),
            log.display()
        ),
    )
    .unwrap();

    // The producer takes everything from the file.
    let (out, err) = run(Command::new(BIN).arg("produce").arg("--config").arg(&file));
    assert!(out.status.success(), "{err}");
    let records = read_topic(&broker.bootstrap, "cfglogs");
    let lines: Vec<(String, String)> = records.iter().map(|r| r.source_and_line()).collect();
    assert_eq!(
        lines,
        [
            ("shop".to_string(), "a line".to_string()),
            ("shop".to_string(), "another line".to_string())
        ],
        "{err}"
    );

    // The analyzer's InfluxDB from the file; a variable overrides it, a flag
    // overrides both (each named in the start-up error: nothing listens).
    let analyze = || {
        let mut c = Command::new(BIN);
        c.args(["analyze", "--config"])
            .arg(&file)
            .env_remove("LOGPIPE_INFLUX_URL");
        c
    };
    let (out, err) = run(&mut analyze());
    assert!(!out.status.success());
    assert!(err.contains(&format!("127.0.0.1:{closed}")), "{err}");
    let (env_port, flag_port) = (free_port(), free_port());
    let (_, err) = run(analyze().env("LOGPIPE_INFLUX_URL", format!("http://127.0.0.1:{env_port}")));
    assert!(err.contains(&format!("127.0.0.1:{env_port}")), "{err}");
    let (_, err) = run(analyze()
        .env("LOGPIPE_INFLUX_URL", format!("http://127.0.0.1:{env_port}"))
        .args(["--influx-url", &format!("http://127.0.0.1:{flag_port}")]));
    assert!(err.contains(&format!("127.0.0.1:{flag_port}")), "{err}");

    // A typo: the file, its line, the key; exit status 2 (usage).
    std::fs::write(
        &file,
        "brokers = \"x:1\"\n\n[analyze]\ninflux-ulr = \"http://i\"\n",
    )
    .unwrap();
    let (out, err) = run(&mut analyze());
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("logpipe.toml:4: unknown key `influx-ulr` for `logpipe analyze`"),
        "{err}"
    );
}

/// SIGHUP makes a following producer read its `[[input]]` tables again:
/// a new input's file is followed under its source name, the removed
/// input's file is read to its end first; nothing is lost or repeated.
#[test]
fn sighup_reloads_the_producers_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = LogpipeBroker::start(Path::new(BIN), &["hup"], 1);
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    std::fs::write(&a, "a1\na2\n").unwrap();
    std::fs::write(&b, "b1\n").unwrap();
    let file = dir.path().join("logpipe.toml");
    let config = |input: &Path, source: &str| {
        std::fs::write(
            &file,
            format!(
                "brokers = \"{}\"\ntopic = \"hup\"\n\n[produce]\nfrom-beginning = true\npoll-interval = \"50ms\"\ncheckpoint-dir = \"{}\"\n\n[[input]]\npaths = [\"{}\"]\nsource = \"{source}\"\n",
                broker.bootstrap,
                dir.path().join("checkpoints").display(),
                input.display()
            ),
        )
        .unwrap()
    };
    config(&a, "a");
    let log = dir.path().join("producer.log");
    let mut producer = logpipe_testkit::Child::spawn(
        "logpipe produce",
        Command::new(BIN)
            .args(["produce", "--config"])
            .arg(&file)
            .stderr(logpipe_testkit::append_to(&log)),
    );
    let read = || -> Vec<(String, String)> {
        let mut v: Vec<_> = read_topic(&broker.bootstrap, "hup")
            .iter()
            .map(|r| r.source_and_line())
            .collect();
        v.sort();
        v
    };
    let pair = |s: &str, l: &str| (s.to_string(), l.to_string());
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    logpipe_testkit::wait_until(std::time::Duration::from_secs(30), || {
        (read().len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("a.log not published: {:?}\n{}", read(), logs()));
    // a.log grows, then the inputs change to b.log only.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&a)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"a3\n"))
        .unwrap();
    config(&b, "b");
    // SAFETY: kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(producer.id() as i32, libc::SIGHUP) }, 0);
    let want = vec![
        pair("a", "a1"),
        pair("a", "a2"),
        pair("a", "a3"),
        pair("b", "b1"),
    ];
    logpipe_testkit::wait_until(std::time::Duration::from_secs(30), || {
        (read() == want).then_some(())
    })
    .unwrap_or_else(|| panic!("after SIGHUP: {:?}\n{}", read(), logs()));
    assert!(logs().contains("inputs reloaded"), "{}", logs());
    assert!(
        producer
            .terminate(std::time::Duration::from_secs(30))
            .success(),
        "{}",
        logs()
    );
    assert_eq!(read(), want, "nothing repeated or lost at the stop");
}
