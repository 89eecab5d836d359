//! `logpipe top` in a real terminal: tmux (Debian's package) runs it
//! against a real InfluxDB holding windows, top keys and an anomaly flag of
//! two sources; the captured pane shows them, `s` re-sorts, `q` quits.

use std::process::Command;
use std::time::Duration;

use logpipe_testkit::{unique, wait_until, Influx};

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
/// 2024-01-01T00:00:00Z, in ms (the test kit writes with precision ms).
const T0_NS: i64 = 1_704_067_200_000;
const W_NS: i64 = 10_000;

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux(String);

impl Tmux {
    fn new() -> Tmux {
        let found = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "tmux not found: ./scripts/test installs it (Debian package tmux); `apt-get install tmux`"
        );
        Tmux(unique("top"))
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }
    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn keys(&self, k: &str) {
        assert!(self
            .cmd()
            .args(["send-keys", "-t", "top", k])
            .status()
            .unwrap()
            .success());
    }
    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "top"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

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
    let tmux = Tmux::new();
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("top.err");
    let cmdline = format!(
        "{BIN} top --influx-url {} --influx-db {db} --refresh 500ms 2>{}",
        influx.url,
        err.display()
    );
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    let st = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "top", "-x", "140", "-y", "32"])
        .arg(&cmdline)
        .status()
        .unwrap();
    assert!(st.success(), "tmux new-session");
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
