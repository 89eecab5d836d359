//! The documented command sequences, run as written: each ```sh block is
//! taken from the page itself (`docs/running.md`, `docs/replay.md`) and run
//! by bash, with only what a test must change —
//! the paths it names (`/var/log/nginx`, `/var/lib/logpipe`) moved into a
//! tempdir and InfluxDB's port `8086` replaced by a free one. `logpipe` on
//! the PATH is the binary under test; `influxd` is Debian's, pointed at a
//! configuration on free ports by `INFLUXDB_CONFIG_PATH`. Each must be exact.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use logpipe_testkit::{diff, wait_until, Child, Expected, Influx, Kafka};
use logpipe_traffic::Generator;

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");

/// The ```sh block of the page `page` (relative to the repository) that
/// contains `marker`.
fn doc_block(page: &str, marker: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page))
        .unwrap_or_else(|e| panic!("{page}: {e}"));
    let mut blocks = vec![];
    let mut cur: Option<String> = None;
    for l in text.lines() {
        match (&mut cur, l.trim_start()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    let found: Vec<String> = blocks.into_iter().filter(|b| b.contains(marker)).collect();
    assert_eq!(
        found.len(),
        1,
        "one block of {page} holds {marker:?}: {found:#?}"
    );
    found.into_iter().next().unwrap()
}

/// A tempdir standing in for the machine's paths, with `logpipe` on a PATH.
struct Machine {
    dir: tempfile::TempDir,
    influx: Influx,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "nginx", "lib", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::os::unix::fs::symlink(BIN, dir.path().join("bin/logpipe")).unwrap();
        Machine {
            dir,
            influx: Influx::unstarted(),
        }
    }

    fn nginx(&self) -> PathBuf {
        self.dir.path().join("nginx")
    }

    /// `block` with the machine's paths and InfluxDB's port.
    fn adapt(&self, block: &str) -> String {
        let p = self.dir.path().display();
        block
            .replace("/var/log/nginx", &format!("{p}/nginx"))
            .replace("/var/lib/logpipe", &format!("{p}/lib"))
            .replace("http://127.0.0.1:8086", &self.influx.url)
    }

    /// bash running `script` in its own process group, in `work/`, its
    /// output to `work/out.log`.
    fn bash(&self, script: &str, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new("bash");
        c.args(["-euc", script])
            .current_dir(self.dir.path().join("work"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.dir.path().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("INFLUXDB_CONFIG_PATH", self.influx.config_path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(self.out_file())
            .stderr(self.out_file())
            .process_group(0);
        c
    }

    fn out_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("work/out.log"))
            .unwrap()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("work/out.log")).unwrap_or_default()
    }
}

/// Kills a process group (the recipe's background jobs with it) on drop.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let pg = -(self.0 as i32);
        // SAFETY: kill(2) on the process group this test started.
        unsafe { libc::kill(pg, libc::SIGTERM) };
        std::thread::sleep(Duration::from_secs(2));
        unsafe { libc::kill(pg, libc::SIGKILL) };
    }
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// docs/running.md's multi-process pipeline on `logpipe broker`, exactly as
/// written; once it runs two sites start logging and one rotates (rename,
/// new file) while the second analyzer joins: every window in InfluxDB
/// equals the truth, nothing deleted unread.
#[test]
fn the_multi_process_recipe_on_the_development_broker_is_exact() {
    let m = Machine::new();
    let script = m.adapt(&doc_block(
        "docs/running.md",
        "logpipe broker > broker.addr",
    ));
    // 2024-01-01T00:00:00Z, 200 lines/s of event time per site.
    let start = 1_704_067_200_000;
    let mut truth = Expected::new(10_000);
    let mut lines: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (i, site) in ["shop", "api"].into_iter().enumerate() {
        let path = m.nginx().join(format!("{site}.log"));
        let g = Generator::new(50 + i as u64, start, 200.0).with_request_time();
        lines.insert(site, truth.generate(g, &path.display().to_string(), 12_000));
    }
    let mut child = m.bash(&script, &[]).spawn().expect("bash");
    let _group = Group(child.id());
    // The producer tails files that exist when it starts from their end (as
    // `tail -f`); the logs appear once it runs, so it reads them whole.
    wait_until(Duration::from_secs(60), || {
        m.output().contains("logpipe_producer").then_some(())
    })
    .unwrap_or_else(|| panic!("the producer did not start:\n{}", m.output()));
    // Written live, in 12 steps of 1 000 lines per site; shop rotates halfway.
    for step in 0..12 {
        for (site, l) in &lines {
            let path = m.nginx().join(format!("{site}.log"));
            if *site == "shop" && step == 6 {
                std::fs::rename(&path, m.nginx().join("shop.log.1")).unwrap();
            }
            append(&path, &l[step * 1_000..(step + 1) * 1_000]);
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the recipe stopped:\n{}",
            m.output()
        );
    }
    let mut got = BTreeMap::new();
    wait_until(Duration::from_secs(120), || {
        got = Expected::from_influx(&m.influx, "logs");
        (got == truth.windows).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "InfluxDB differs from the truth:\n{}\n--- the recipe's output:\n{}",
            diff(&truth.windows, &got),
            m.output()
        )
    });
    let out = m.output();
    assert!(!out.contains("deleted by the broker"), "{out}");
    let counted: u64 = got.values().map(|w| w.count).sum();
    eprintln!(
        "docs/running.md multi-process recipe: {} lines written ({} malformed), {counted} counted in {} windows",
        truth.lines,
        truth.malformed,
        got.len()
    );
}

/// docs/replay.md's backfill block (old rotations, gzipped ones among them, then
/// a replay from the earliest offset) and its recompute block (the database
/// lost: replay the last two days; a dry run with another format into
/// another database), on Apache Kafka: the windows equal the truth after
/// each.
#[test]
fn the_backfill_and_replay_recipes_on_apache_kafka_are_exact() {
    let kafka = Kafka::with_topics(&["logs"], 3);
    let m = Machine::new();
    // Event times from three hours ago, so "the last two days" holds them.
    let now = chrono::Utc::now().timestamp_millis();
    let start = (now - 3 * 3_600_000) / 10_000 * 10_000;
    let mut truth = Expected::new(10_000);
    for (i, site) in ["shop", "blog"].into_iter().enumerate() {
        let source = m.nginx().join(format!("{site}.access.log"));
        let g = Generator::new(70 + i as u64, start, 20.0).with_request_time();
        let all = truth.generate(g, &source.display().to_string(), 6_000);
        // Oldest first: .2.gz, .1, then the live file.
        let gz = std::fs::File::create(m.nginx().join(format!("{site}.access.log.2.gz"))).unwrap();
        let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::default());
        for l in &all[..2_000] {
            writeln!(enc, "{l}").unwrap();
        }
        enc.finish().unwrap();
        append(
            &m.nginx().join(format!("{site}.access.log.1")),
            &all[2_000..4_000],
        );
        append(&source, &all[4_000..]);
        // Modification times in the files' order.
        for (k, name) in [".2.gz", ".1", ""].iter().enumerate() {
            let p = m.nginx().join(format!("{site}.access.log{name}"));
            let t = std::time::SystemTime::now() - Duration::from_secs(3_000 - k as u64 * 1_000);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
    let _influxd = Child::spawn(
        "influxd",
        m.bash("exec influxd", &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(30), || {
        reqwest::blocking::get(format!("{}/ping", m.influx.url))
            .ok()
            .filter(|r| r.status().is_success())
    })
    .expect("influxd answers");
    let env = [("B", kafka.bootstrap.as_str()), ("NEW_FORMAT", "combined")];
    let run = |marker: &str| {
        let script = m.adapt(&doc_block("docs/replay.md", marker));
        let status = m.bash(&script, &env).status().expect("bash");
        assert!(
            status.success(),
            "the {marker:?} block failed:\n{}",
            m.output()
        );
    };
    let check = |what: &str| {
        let got = Expected::from_influx(&m.influx, "logs");
        assert!(
            got == truth.windows,
            "{what}: InfluxDB differs from the truth:\n{}\n--- output:\n{}",
            diff(&truth.windows, &got),
            m.output()
        );
    };
    run("# every rotation of every site");
    check("backfill, then replay --from-offsets earliest");
    m.influx.execute("DROP DATABASE logs");
    run("--from -2d");
    check("the database lost, replay --from -2d");
    let out = m.output();
    assert!(
        out.contains("logpipe replay: would write"),
        "the dry run ran:\n{out}"
    );
    eprintln!(
        "docs/replay.md backfill and replay recipes: {} lines in {} windows, rebuilt twice",
        truth.lines,
        truth.windows.len()
    );
}
