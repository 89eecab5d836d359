//! `logpipe top` in a real terminal: tmux (Debian's package) runs it
//! against a real InfluxDB holding windows, top keys and an anomaly flag of
//! two sources; the captured pane shows them, `s` re-sorts, `q` quits. And
//! `logpipe demo`, which shows the same view over its own windows on a
//! terminal (and its table with `--plain`).

use std::time::Duration;

use logpipe_testkit::{unique, wait_until, Influx, Tmux};

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
/// 2024-01-01T00:00:00Z, in ms (the test kit writes with precision ms).
const T0_NS: i64 = 1_704_067_200_000;
const W_NS: i64 = 10_000;

fn points() -> String {
    let mut lp = String::new();
    // shop: steady 50 qps, few errors; api: rising to 120 qps with 5xx.
    for i in 0..6 {
        let t = T0_NS + i * W_NS;
        let (shop, api) = (500, 100 + i * 220);
        lp += &format!(
            "access_log,host=web-1,source=shop count={shop}i,qps={},error_rate=0.01,latency_p99=0.12,status_1xx=0i,status_2xx=450i,status_3xx=45i,status_4xx=5i,status_5xx=0i,traffic=1000i,unique_clients=40i {t}\n",
            shop as f64 / 10.0
        );
        lp += &format!(
            "access_log,host=web-2,source=api count={api}i,qps={},error_rate=0.3,latency_p99=2.5,status_1xx=0i,status_2xx={}i,status_3xx=0i,status_4xx=0i,status_5xx={}i,traffic=1000i,unique_clients=40i {t}\n",
            api as f64 / 10.0,
            api * 7 / 10,
            api - api * 7 / 10
        );
    }
    let t = T0_NS + 5 * W_NS;
    for (rank, key, n) in [(1, "/v1/orders", 700), (2, "/v1/login", 300)] {
        lp += &format!("access_top,dim=path,host=web-2,rank={rank},source=api key=\"{key}\",count={n}i,error=0i,total=1200i {t}\n");
    }
    lp += &format!("access_top,dim=client,host=web-2,rank=1,source=api key=\"203.0.113.7\",count=90i,error=0i,total=1200i {t}\n");
    lp += &format!("access_anomaly,host=web-2,metric=error_rate,source=api value=0.3,baseline=0.01,score=12.0,direction=\"up\" {t}\n");
    lp
}

#[test]
fn top_in_a_real_terminal_shows_sources_sorts_and_quits() {
    let influx = Influx::start();
    let db = influx.create_db(&unique("top"));
    influx.write(&db, &points());
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("top.err");
    let cmdline = format!(
        "{BIN} top --influx-url {} --influx-db {db} --refresh 500ms 2>{}",
        influx.url,
        err.display()
    );
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    let tmux = Tmux::run(&cmdline, 140, 32);
    // The newest window of api is selected first (highest QPS): its top keys.
    let mut pane = String::new();
    wait_until(Duration::from_secs(30), || {
        pane = tmux.capture();
        (pane.contains("/v1/orders") && pane.contains("shop")).then_some(())
    })
    .unwrap_or_else(|| panic!("top did not draw:\n{pane}\nstderr: {}", stderr()));
    println!("{pane}");
    for want in [
        "logpipe top  2 sources · sorted by qps",
        "web-2",
        "120.0",
        "30.00",
        "2.500",
        "70/0/0/30",
        "! 1",
        "700  /v1/orders",
        "90  203.0.113.7",
    ] {
        assert!(pane.contains(want), "{want:?} not in the pane:\n{pane}");
    }
    assert!(
        pane.find("api").unwrap() < pane.find("shop").unwrap(),
        "{pane}"
    );
    // s: sorted by error rate; twice more: by name (shop's host web-1 first).
    tmux.keys("s");
    wait_until(Duration::from_secs(10), || {
        tmux.capture().contains("sorted by err%").then_some(())
    })
    .unwrap_or_else(|| panic!("no re-sort:\n{}", tmux.capture()));
    tmux.keys("s");
    tmux.keys("s");
    wait_until(Duration::from_secs(10), || {
        let p = tmux.capture();
        (p.contains("sorted by name")
            && p.find("web-1").unwrap_or(usize::MAX) < p.find("web-2").unwrap_or(0))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("not sorted by name:\n{}", tmux.capture()));
    tmux.keys("q");
    wait_until(Duration::from_secs(10), || (!tmux.alive()).then_some(()))
        .unwrap_or_else(|| panic!("q did not quit:\n{}", tmux.capture()));
}

/// The `access_log` points of a demo's line-protocol file: (source, qps,
/// error rate) of each.
fn demo_points(path: &std::path::Path) -> Vec<(String, f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("access_log,"))
        .filter_map(|l| {
            let (series, rest) = l.split_once(' ')?;
            let source = series.split(',').find_map(|t| t.strip_prefix("source="))?;
            let field = |name: &str| -> Option<f64> {
                rest.split([',', ' '])
                    .find_map(|f| f.strip_prefix(&format!("{name}=")))?
                    .trim_end_matches('i')
                    .parse()
                    .ok()
            };
            Some((source.to_string(), field("qps")?, field("error_rate")?))
        })
        .collect()
}

/// A row of the view: (qps, err%) as shown, read from the right (the
/// sparkline before them may hold spaces).
fn shown(pane: &str, source: &str) -> Option<(f64, f64)> {
    let row = pane
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(source))?;
    let cols: Vec<&str> = row.split_whitespace().collect();
    let mix = cols.iter().rposition(|c| c.matches('/').count() == 3)?;
    Some((cols[mix - 3].parse().ok()?, cols[mix - 2].parse().ok()?))
}

/// `logpipe demo ARGS` in a 140×34 tmux terminal, its points, stderr and
/// exit status in a directory of its own.
struct DemoInTmux {
    dir: tempfile::TempDir,
    tmux: Tmux,
}

impl DemoInTmux {
    fn start(args: &str) -> DemoInTmux {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let cmdline = format!(
            "env -u LOGPIPE_LOG TMPDIR={d} {BIN} demo {args} --window 2s --lp-out {d}/points.lp \
             2>{d}/stderr </dev/null; echo \"exit=$?\" >{d}/status; sleep 60"
        );
        let tmux = Tmux::run(&cmdline, 140, 34);
        DemoInTmux { dir, tmux }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Waits for the pane to satisfy `ready`; returns it.
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let mut pane = String::new();
        wait_until(Duration::from_secs(60), || {
            pane = self.tmux.capture();
            ready(&pane).then_some(())
        })
        .unwrap_or_else(|| panic!("{what}:\n{pane}\nstderr: {}", self.read("stderr")));
        pane
    }

    /// Waits for the demo to exit; its exit status line and stderr.
    fn exited(&self) -> (String, String) {
        self.wait_for("the demo did not stop", |_| {
            self.read("status").contains("exit=")
        });
        (self.read("status").trim().to_string(), self.read("stderr"))
    }
}

#[test]
fn the_demo_on_a_terminal_is_top_over_its_own_windows() {
    let demo = DemoInTmux::start("--rate 600");
    // The dead-letter summary (every 10 s) shows under the table, not over it.
    let pane = demo.wait_for("the demo's view", |pane| {
        [
            "shop",
            "api",
            "blog",
            "dead letters so far: ",
            "top keys of ",
        ]
        .iter()
        .all(|w| pane.contains(w))
    });
    println!("{pane}");
    assert!(
        pane.starts_with("logpipe demo  3 sources · sorted by qps · points to line-protocol file"),
        "{pane}"
    );
    assert!(
        !pane.contains("window (UTC)"),
        "the view, not the table:\n{pane}"
    );
    // What the view shows is what the analyzers wrote.
    let points = demo_points(&demo.dir.path().join("points.lp"));
    for source in ["shop", "api", "blog"] {
        let (qps, err) =
            shown(&pane, source).unwrap_or_else(|| panic!("no row of {source}:\n{pane}"));
        assert!(
            points.iter().any(|(s, q, e)| s == source
                && (q - qps).abs() < 0.05
                && (e * 100.0 - err).abs() < 0.005),
            "{source}: {qps} qps, {err} % errors are no window written to the points file:\n{pane}"
        );
    }
    // A filter, then q stops the demo as Ctrl-C does.
    for k in ["/", "b", "l", "o", "g", "Enter"] {
        demo.tmux.keys(k);
    }
    demo.wait_for("not filtered", |p| {
        p.contains("filter \"blog\"") && shown(p, "shop").is_none() && shown(p, "blog").is_some()
    });
    demo.tmux.keys("q");
    let (status, stderr) = demo.exited();
    assert_eq!(status, "exit=0", "{stderr}");
    // The messages the view held are written out when it gives the terminal back.
    assert!(stderr.contains("dead letters so far: "), "{stderr}");
    assert!(stderr.contains("lines produced;"), "{stderr}");
    for bad in [" WARN ", " ERROR ", "panicked", "logpipe: error"] {
        assert!(!stderr.contains(bad), "{bad:?} at a clean stop:\n{stderr}");
    }
}

#[test]
fn the_demo_on_a_terminal_prints_its_table_with_plain() {
    let demo = DemoInTmux::start("--plain --rate 300");
    demo.wait_for("no table", |p| {
        p.starts_with("window (UTC)") && p.contains("shop")
    });
    demo.tmux.keys("C-c");
    let (status, stderr) = demo.exited();
    assert_eq!(status, "exit=0", "{stderr}");
}
