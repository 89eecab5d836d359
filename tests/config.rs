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
