//! The fleet roll-up end to end on Apache Kafka: three hosts × two sources
//! with different request-time distributions, analyzers publishing their
//! final windows' sketches, `logpipe rollup` merging them. Fleet counts
//! equal the sums of the generated requests exactly; p50/p90/p99 are within
//! the DDSketch's 1 % of the exact percentiles over all of a group's
//! requests; unique clients are exact below 7 168 and within the
//! HyperLogLog's error above; the top paths equal the truth. The rollup and
//! an analyzer are killed mid-run; a recompute of the whole fleet topic
//! writes exactly the points the killed-and-restarted run wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logpipe_testkit::{
    rollup_cmd, unique, wait_for_group, wait_until, Analyzer, Child, Influx, Kafka, Membership,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
const WINDOW_MS: i64 = 10_000;
/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;
const SECONDS: i64 = 120;
/// The window where every source also serves 1 500 clients never seen
/// elsewhere: the fleet's distinct clients pass the exact limit.
const SPIKE_MS: i64 = START_MS + 60_000;
const HOSTS: [&str; 3] = ["web-1", "web-2", "web-3"];
const SOURCES: [&str; 2] = ["shop", "api"];
const GROUPS_FILE: &str = "[[group]]\nname = \"eu\"\nhosts = [\"web-1\", \"web-2\"]\n\n[[group]]\nname = \"api\"\nsources = [\"*api*\"]\n";

struct Req {
    ms: i64,
    client: String,
    path: String,
    status: u16,
    bytes: u64,
    /// Seconds, as logged (three decimals).
    rt: f64,
}

/// What a group's window must hold.
#[derive(Default)]
struct Truth {
    count: u64,
    traffic: u64,
    status: [u64; 5],
    errors: u64,
    times: Vec<f64>,
    clients: BTreeSet<String>,
    paths: BTreeMap<String, u64>,
    sources: BTreeSet<String>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A source's requests: 20 per second, 70 % from 300 clients every source
/// shares, request times log-normal around `scale` seconds.
fn requests(seed: u64, scale: f64, api: bool) -> Vec<Req> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    for s in 0..SECONDS {
        let spike = START_MS + s * 1000 >= SPIKE_MS && START_MS + s * 1000 < SPIKE_MS + WINDOW_MS;
        let n = if spike { 20 + 150 } else { 20 };
        for i in 0..n {
            let ms = START_MS + s * 1000 + i * 1000 / n;
            let client = if spike && i >= 20 {
                format!("2001:db8:{seed:x}::{s:x}:{i:x}")
            } else if r.unit() < 0.7 {
                format!("10.1.{}.{}", r.next() % 2, r.next() % 150)
            } else {
                format!("172.16.{seed}.{}", r.next() % 200)
            };
            // Paths by a Zipf-like rank; errors more often on the API.
            let rank = (1.0 / (0.05 + r.unit())) as u64 % 15;
            let path = if api {
                format!("/api/v1/items/{rank}")
            } else {
                format!("/shop/{rank}")
            };
            let u = r.unit();
            let status = if u < if api { 0.06 } else { 0.01 } {
                500
            } else if u < 0.09 {
                404
            } else if u < 0.12 {
                302
            } else {
                200
            };
            // exp of a sum of uniforms: a skewed, heavy-ish tail.
            let z = (r.unit() + r.unit() + r.unit() - 1.5) * 2.0;
            let rt = ((scale * z.exp() * 1000.0).round() / 1000.0).max(0.001);
            out.push(Req {
                ms,
                client,
                path,
                status,
                bytes: 200 + r.next() % 5000,
                rt,
            });
        }
    }
    out
}

fn line(q: &Req) -> String {
    let t = chrono::DateTime::from_timestamp_millis(q.ms).unwrap();
    format!(
        "{} - - [{}] \"GET {} HTTP/1.1\" {} {} \"-\" \"fleet-test\" {:.3}",
        q.client,
        t.format("%d/%b/%Y:%H:%M:%S +0000"),
        q.path,
        q.status,
        q.bytes,
        q.rt
    )
}

/// The (scope, group) names a source belongs to, as the groups file says.
fn groups_of(host: &str, source: &str) -> Vec<(String, String)> {
    let mut g = vec![
        ("all".to_string(), "all".to_string()),
        ("host".to_string(), host.to_string()),
    ];
    if host != "web-3" {
        g.push(("group".into(), "eu".into()));
    }
    if source.contains("api") {
        g.push(("group".into(), "api".into()));
    }
    g
}

/// The nearest-rank quantile of sorted `v`.
fn rank(v: &[f64], per_mille: u64) -> f64 {
    v[((per_mille * v.len() as u64).div_ceil(1000) - 1) as usize]
}

/// `access_fleet` rows by (scope, group, window start): column → value.
type Rows = BTreeMap<(String, String, i64), BTreeMap<String, Value>>;

fn fleet_rows(influx: &Influx, db: &str, measurement: &str, by: &str) -> Rows {
    let mut out = Rows::new();
    for s in influx.query(db, &format!("SELECT * FROM {measurement} GROUP BY {by}")) {
        let cols: Vec<String> = s["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let tag = |k: &str| s["tags"][k].as_str().unwrap_or_default().to_string();
        for v in s["values"].as_array().unwrap() {
            let mut row: BTreeMap<String, Value> = cols
                .iter()
                .cloned()
                .zip(v.as_array().unwrap().iter().cloned())
                .collect();
            let t = row.remove("time").unwrap().as_i64().unwrap();
            let mut key = (tag("scope"), tag("group"), t);
            if measurement.ends_with("top") {
                // One row per dimension and rank.
                key.1 = format!("{}/{}/{}", tag("group"), tag("dim"), tag("rank"));
            }
            out.insert(key, row);
        }
    }
    out
}

fn produce(bootstrap: &str, topic: &str, dir: &Path, host: &str, paths: &[PathBuf]) {
    let out = Command::new(BIN)
        .args(["produce", "--brokers", bootstrap, "--topic", topic])
        .args(["--host", host, "--from-beginning", "--exit-on-eof"])
        .arg("--checkpoint-dir")
        .arg(dir.join(format!("cp-{host}")))
        .args(["--poll-interval", "100ms"])
        .args(paths)
        .output()
        .expect("logpipe produce");
    assert!(
        out.status.success(),
        "produce {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_rollup(
    bootstrap: &str,
    fleet: &str,
    group: &str,
    influx: &Influx,
    db: &str,
    dir: &Path,
    log: &str,
) -> (Child, PathBuf) {
    let path = dir.join(log);
    let f = std::fs::File::create(&path).unwrap();
    let child = Child::spawn(
        "logpipe rollup",
        rollup_cmd(Path::new(BIN), bootstrap, fleet, group, &influx.url, db)
            .args(["--metrics-addr", "127.0.0.1:0", "--grace", "3s", "--groups"])
            .arg(dir.join("groups.toml"))
            .stderr(f),
    );
    (child, path)
}

#[test]
fn fleet_percentiles_clients_and_top_paths_merge_across_hosts_exactly_after_kills() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("groups.toml"), GROUPS_FILE).unwrap();
    // Request-time scales from 2 ms to 2.5 s: very different distributions.
    let scales = [0.002, 0.01, 0.05, 0.2, 0.8, 2.5];
    let mut files = Vec::new();
    let mut truth: BTreeMap<(String, String, i64), Truth> = BTreeMap::new();
    for (h, host) in HOSTS.iter().enumerate() {
        for (s, name) in SOURCES.iter().enumerate() {
            let i = h * 2 + s;
            let reqs = requests(i as u64 + 1, scales[i], *name == "api");
            let path = dir.path().join(format!("{host}-{name}.log"));
            let source = path.display().to_string();
            // Every window but the last closes (lateness 0: by the next line).
            for q in reqs
                .iter()
                .filter(|q| q.ms < START_MS + (SECONDS - 10) * 1000)
            {
                let w = q.ms.div_euclid(WINDOW_MS) * WINDOW_MS;
                for (scope, g) in groups_of(host, name) {
                    let t = truth.entry((scope, g, w)).or_default();
                    t.count += 1;
                    t.traffic += q.bytes;
                    t.status[usize::from(q.status / 100 - 1)] += 1;
                    t.errors += u64::from(q.status >= 400);
                    t.times.push(q.rt);
                    t.clients.insert(q.client.clone());
                    *t.paths.entry(q.path.clone()).or_default() += 1;
                    t.sources.insert(format!("{host}:{source}"));
                }
            }
            files.push((host.to_string(), path, reqs));
        }
    }
    let topic = unique("fleet");
    let fleet = format!("{topic}.windows");
    let kafka = Kafka::with_topics(&[&topic], 3);
    kafka.create_topic_with(&fleet, 3, &[("cleanup.policy", "compact")]);
    let influx = Influx::start();
    let db = influx.create_db(&unique("fleet"));
    let m = Membership::new(&kafka.bootstrap, &topic);
    let analyzer = |id: &str, log: &str| {
        Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
            .id(id)
            .log_name(log)
            .args(&["--lateness", "0s", "--fleet-topic", &fleet])
            .start()
    };
    let analyzers = vec![analyzer("a0", "a0"), analyzer("a1", "a1")];
    wait_for_group(&analyzers, 3);
    let rollup_group = unique("rollup");
    // Two rollups share the fleet topic's partitions.
    let rollup = |log: &str| {
        start_rollup(
            &kafka.bootstrap,
            &fleet,
            &rollup_group,
            &influx,
            &db,
            dir.path(),
            log,
        )
    };
    let mut rollups = vec![rollup("rollup-0.log"), rollup("rollup-1.log")];
    let logs = |rollups: &[(Child, PathBuf)]| {
        rollups
            .iter()
            .map(|(_, p)| format!("{}:\n{}", p.display(), std::fs::read_to_string(p).unwrap()))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    // The first 60 s of every log.
    let write_until = |until_ms: i64, append: bool| {
        for (_, path, reqs) in &files {
            let text: String = reqs
                .iter()
                .filter(|q| (q.ms < until_ms) && (!append || q.ms >= SPIKE_MS))
                .map(|q| line(q) + "\n")
                .collect();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        }
    };
    let produce_all = || {
        for host in HOSTS {
            let paths: Vec<PathBuf> = files
                .iter()
                .filter(|(h, _, _)| h == host)
                .map(|(_, p, _)| p.clone())
                .collect();
            produce(&kafka.bootstrap, &topic, dir.path(), host, &paths);
        }
    };
    write_until(SPIKE_MS, false);
    produce_all();
    // Fleet points of the first windows, then kill the rollup and an analyzer.
    wait_until(Duration::from_secs(60), || {
        let rows = fleet_rows(&influx, &db, "access_fleet", "\"scope\",\"group\"");
        (rows.keys().filter(|k| k.0 == "all").count() >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("no fleet points: {}", logs(&rollups)));
    // kill -9 one rollup (the other takes its partitions over from their
    // restore points) and one analyzer; both come back while the rest of
    // the logs is published.
    rollups[0].0.kill();
    let mut analyzers = analyzers;
    analyzers[1].child.kill();
    write_until(i64::MAX, true);
    analyzers.push(analyzer("a1", "a1-restarted"));
    produce_all();
    rollups.push(rollup("rollup-0-restarted.log"));
    // Every closed window of every group, with every source.
    let done = wait_until(Duration::from_secs(120), || {
        let rows = fleet_rows(&influx, &db, "access_fleet", "\"scope\",\"group\"");
        truth
            .iter()
            .all(|(k, t)| {
                rows.get(k).is_some_and(|r| {
                    r["count"] == t.count && r["sources"] == t.sources.len() as u64
                })
            })
            .then_some(rows)
    });
    let Some(rows) = done else {
        let rows = fleet_rows(&influx, &db, "access_fleet", "\"scope\",\"group\"");
        let missing: Vec<_> = truth
            .iter()
            .filter(|(k, t)| rows.get(*k).is_none_or(|r| r["count"] != t.count))
            .map(|(k, t)| (k.clone(), t.count, rows.get(k).map(|r| r["count"].clone())))
            .collect();
        panic!(
            "fleet points never matched the requests: {missing:?}\n{}",
            logs(&rollups)
        );
    };
    // Nothing but the truth's windows (the last, open one is not final).
    let extra: Vec<_> = rows.keys().filter(|k| !truth.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "fleet points for windows not closed: {extra:?}"
    );
    let mut worst_rel = 0f64;
    let mut worst_hll = (0f64, 0usize);
    let mut exact_clients = 0;
    for (k, t) in &mut truth {
        let r = &rows[k];
        let f = |c: &str| {
            r[c].as_f64()
                .unwrap_or_else(|| panic!("{k:?} {c}: {:?}", r[c]))
        };
        assert_eq!(f("traffic") as u64, t.traffic, "{k:?}");
        for (i, c) in [
            "status_1xx",
            "status_2xx",
            "status_3xx",
            "status_4xx",
            "status_5xx",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(f(c) as u64, t.status[i], "{k:?} {c}");
        }
        assert!((f("error_rate") - t.errors as f64 / t.count as f64).abs() < 1e-12);
        t.times.sort_by(f64::total_cmp);
        for (q, c) in [
            (500, "latency_p50"),
            (900, "latency_p90"),
            (990, "latency_p99"),
        ] {
            let exact = rank(&t.times, q);
            let rel = (f(c) - exact).abs() / exact;
            assert!(rel <= 0.01 + 1e-9, "{k:?} {c}: {} vs exact {exact}", f(c));
            worst_rel = worst_rel.max(rel);
        }
        assert_eq!(f("latency_max"), *t.times.last().unwrap(), "{k:?}");
        let n = t.clients.len() as f64;
        let got = f("unique_clients");
        if t.clients.len() <= 7168 {
            assert_eq!(got, n, "{k:?}: unique clients");
            exact_clients += 1;
        } else {
            // 3 % is more than 3.5 standard errors of 2^14 registers.
            let err = (got - n).abs() / n;
            assert!(err < 0.03, "{k:?}: {got} unique clients of {n}");
            if err >= worst_hll.0 {
                worst_hll = (err, t.clients.len());
            }
        }
    }
    assert!(
        worst_hll.1 > 0,
        "the spike window's clients pass the exact limit"
    );
    // Top paths: few distinct paths per group, so exact.
    let tops = fleet_rows(
        &influx,
        &db,
        "access_fleet_top",
        "\"scope\",\"group\",\"dim\",\"rank\"",
    );
    for ((scope, g, w), t) in &truth {
        let mut want: Vec<(&String, &u64)> = t.paths.iter().collect();
        want.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (path, count)) in want.iter().take(10).enumerate() {
            let r = tops
                .get(&(scope.clone(), format!("{g}/path/{}", i + 1), *w))
                .unwrap_or_else(|| panic!("{scope} {g} {w}: no path rank {}", i + 1));
            assert_eq!(
                r["key"].as_str(),
                Some(path.as_str()),
                "{g} {w} rank {}",
                i + 1
            );
            assert_eq!(r["count"].as_u64(), Some(**count));
            assert_eq!(r["error"].as_u64(), Some(0));
        }
    }
    println!(
        "fleet: {} group-windows; percentiles within {:.4} % of exact; unique clients exact in {exact_clients}, HyperLogLog error {:.3} % of {} clients at worst",
        truth.len(),
        worst_rel * 100.0,
        worst_hll.0 * 100.0,
        worst_hll.1
    );
    // The live rollups' own metrics (`--metrics-addr` on a port of their
    // choosing, named in their logs): together they own every partition of
    // the fleet topic, each wrote points and is ready.
    let mut owned = 0;
    for (_, log) in &rollups[1..] {
        let text = std::fs::read_to_string(log).unwrap();
        let base = text
            .split("metrics on http://")
            .nth(1)
            .and_then(|r| r.split("/metrics").next())
            .unwrap_or_else(|| panic!("no metrics address in {}:\n{text}", log.display()));
        let get = |path: &str| {
            let r = reqwest::blocking::get(format!("http://{base}{path}")).unwrap();
            (r.status().as_u16(), r.text().unwrap())
        };
        let (status, metrics) = get("/metrics");
        assert_eq!(status, 200, "{metrics}");
        let value = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
        };
        assert!(
            value("logpipe_rollup_points_written_total") > 0,
            "{metrics}"
        );
        assert_eq!(value("logpipe_rollup_writes_failing"), 0, "{metrics}");
        owned += value("logpipe_rollup_partitions_owned");
        assert_eq!(get("/ready").0, 200, "{metrics}");
    }
    assert_eq!(owned, 3, "every fleet partition owned");
    for (r, _) in &mut rollups[1..] {
        let st = r.terminate(Duration::from_secs(20));
        assert!(st.success(), "rollup exit {st:?}: {}", logs(&rollups));
    }
    let log = logs(&rollups);
    assert!(!log.contains("fleet record skipped"), "{log}");
    assert!(!log.contains("will be ignored"), "{log}");
    // Partitions were taken over from the killed rollup's restore points.
    assert!(
        log.lines()
            .any(|l| l.contains("restore points loaded") && !l.contains("restored=0")),
        "{log}"
    );
    println!(
        "{}",
        log.lines()
            .filter(|l| l.contains("restore points loaded") || l.contains("rollup stopped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Recomputed from the whole fleet topic: the same points, every one.
    let again = influx.create_db(&unique("fleet_recompute"));
    let out = rollup_cmd(
        Path::new(BIN),
        &kafka.bootstrap,
        &fleet,
        &unique("recompute"),
        &influx.url,
        &again,
    )
    .args(["--recompute", "--groups"])
    .arg(dir.path().join("groups.toml"))
    .output()
    .expect("logpipe rollup --recompute");
    assert!(
        out.status.success(),
        "recompute: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (m, by) in [
        ("access_fleet", "\"scope\",\"group\""),
        ("access_fleet_top", "\"scope\",\"group\",\"dim\",\"rank\""),
    ] {
        let live = fleet_rows(&influx, &db, m, by);
        let re = fleet_rows(&influx, &again, m, by);
        assert_eq!(live.len(), re.len(), "{m}: rows");
        for (k, v) in &live {
            assert_eq!(
                Some(v),
                re.get(k),
                "{m} {k:?}: live (after kills) and recompute differ"
            );
        }
    }
    // The analyzers that are still running stop cleanly.
    for i in [0, 2] {
        let a = &mut analyzers[i];
        let st = a.child.terminate(Duration::from_secs(20));
        assert!(st.success(), "{}", a.log());
    }
}
