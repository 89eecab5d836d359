//! `logpipe produce` with its network and plugin inputs, fed by real clients
//! nobody here wrote: Python's `logging.handlers`, `curl`, plain TCP
//! sockets, shell plugins. What lands on the topic is read back and
//! compared with what the clients sent.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logpipe_testkit::{
    free_port, in_ci, read_topic, unique, wait_until, Child, Kafka, LogpipeBroker, Record, Tap,
};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logpipe"))
}

/// A tool the test needs: present, or (under CI) a loud failure.
fn need(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !in_ci(),
            "{tool} is needed by this test and is not installed"
        );
        eprintln!("skipping: {tool} not installed");
    }
    ok
}

/// `logpipe produce` with `args`, its log in `dir/produce.log`.
struct Producer {
    child: Child,
    log: PathBuf,
}

impl Producer {
    fn start(brokers: &str, topic: &str, dir: &Path, args: &[&str]) -> Producer {
        let log = dir.join("produce.log");
        let mut cmd = Command::new(bin());
        cmd.args([
            "produce",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--host",
            "edge",
        ])
        .args(args)
        .env("LOGPIPE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        Producer {
            child: Child::spawn("logpipe produce", &mut cmd),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; it must exit 0.
    fn stop(&mut self) {
        let st = self.child.terminate(Duration::from_secs(60));
        assert!(st.success(), "produce exited {st}: {}", self.log());
    }
}

fn wait_listening(port: u16, p: &mut Producer) {
    wait_until(Duration::from_secs(20), || {
        assert!(!p.child.exited(), "produce exited: {}", p.log());
        TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .unwrap_or_else(|| panic!("nothing listens on {port}: {}", p.log()));
}

/// Records of `topic` once `n` have arrived (or after `timeout`).
fn records(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = read_topic(brokers, topic);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Drops producer re-sends by (`file`, `offset`), as analyzers do.
fn distinct(rs: &[Record]) -> Vec<&Record> {
    let mut seen = HashSet::new();
    rs.iter()
        .filter(|r| seen.insert(r.meta().position().expect("every line has file and offset")))
        .collect()
}

fn source(r: &Record) -> &str {
    r.header("source").unwrap()
}

const PY_CLIENT: &str = r#"
import logging, logging.handlers, os, sys, time
port, proc, n, n_udp = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tcp = logging.getLogger(f"app.tcp.p{proc}")
tcp.setLevel(logging.DEBUG)
tcp.propagate = False
tcp.addHandler(logging.handlers.SocketHandler("127.0.0.1", port))
udp = logging.getLogger(f"app.udp.p{proc}")
udp.setLevel(logging.DEBUG)
udp.propagate = False
udp.addHandler(logging.handlers.DatagramHandler("127.0.0.1", port))
for i in range(n):
    if i % 1000 == 7:
        try:
            {}["missing"]
        except KeyError:
            tcp.exception("failed %d — naïve café ☕ %s", i, "ünïcode")
    else:
        tcp.info("record %d of %s: ünïcode 日本語 %r", i, f"p{proc}", {"k": i})
for i in range(n_udp):
    udp.warning("udp %d of p%d", i, proc)
    if i % 50 == 49:
        time.sleep(0.001)
logging.shutdown()
"#;

/// Four Python processes log through SocketHandler (50 000 records each)
/// and DatagramHandler: every record arrives once, fields intact.
#[test]
fn python_socket_and_datagram_handlers_from_four_processes() {
    if !need("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("pylog");
    let broker = Kafka::with_topics(&[&topic], 4);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Read the 220 000 records as they come (the way a live reader would).
    let tap = Tap::start(&broker.bootstrap, &topic);
    let mut p = Producer::start(
        &broker.bootstrap,
        &topic,
        dir.path(),
        &["--python-logging", &addr],
    );
    wait_listening(port, &mut p);
    let script = dir.path().join("client.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let (n, n_udp) = (50_000usize, 5_000usize);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            Command::new("python3")
                .arg(&script)
                .args([
                    port.to_string(),
                    i.to_string(),
                    n.to_string(),
                    n_udp.to_string(),
                ])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<u32> = clients.iter().map(|c| c.id()).collect();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "python logging complained: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total = 4 * (n + n_udp);
    let all = tap.wait_for(total, Duration::from_secs(120));
    p.stop();
    let all = distinct(&all);
    let mut seen: HashMap<(String, usize), usize> = HashMap::new();
    for r in &all {
        let j: serde_json::Value = serde_json::from_slice(&r.value)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.value)));
        let name = j["name"].as_str().unwrap();
        assert_eq!(source(r), name, "source is the logger name");
        assert_eq!(r.header("host"), Some("edge"));
        let proc: usize = name.rsplit_once(".p").unwrap().1.parse().unwrap();
        assert_eq!(j["process"].as_u64(), Some(pids[proc] as u64), "{j}");
        assert!(
            j["thread"].as_u64().is_some() && j["threadName"] == "MainThread",
            "{j}"
        );
        let created = j["created"].as_f64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - created).abs() < 600.0, "created {created}");
        let msg = j["message"].as_str().unwrap();
        let i: usize = if name.contains(".udp.") {
            assert_eq!(j["levelname"], "WARNING");
            let i = msg.split(' ').nth(1).unwrap().parse().unwrap();
            assert_eq!(msg, format!("udp {i} of p{proc}"));
            i
        } else {
            let i: usize = msg.split(' ').nth(1).unwrap().parse().unwrap();
            if i % 1000 == 7 {
                assert_eq!(j["levelname"], "ERROR");
                assert_eq!(msg, format!("failed {i} — naïve café ☕ ünïcode"));
                let exc = j["exc_text"].as_str().unwrap();
                assert!(
                    exc.starts_with("Traceback (most recent call last):")
                        && exc.ends_with("KeyError: 'missing'"),
                    "{exc}"
                );
            } else {
                assert_eq!(j["levelname"], "INFO");
                assert_eq!(j["levelno"], 20);
                assert_eq!(
                    msg,
                    format!("record {i} of p{proc}: ünïcode 日本語 {{'k': {i}}}")
                );
                assert!(j["exc_text"].is_null());
            }
            assert_eq!(j["funcName"], "<module>");
            i
        };
        *seen.entry((name.to_string(), i)).or_default() += 1;
    }
    let mut report = String::new();
    for proc in 0..4 {
        for (kind, count) in [("tcp", n), ("udp", n_udp)] {
            let name = format!("app.{kind}.p{proc}");
            let missing: Vec<usize> = (0..count)
                .filter(|i| !seen.contains_key(&(name.clone(), *i)))
                .collect();
            if !missing.is_empty() {
                report.push_str(&format!(
                    "{name}: {} missing, first {:?}\n",
                    missing.len(),
                    &missing[..missing.len().min(8)]
                ));
            }
        }
    }
    assert!(report.is_empty(), "{report}{}", p.log());
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "records arrived twice: {:?}",
        &twice[..twice.len().min(5)]
    );
    assert_eq!(all.len(), total);
}

/// A pickle that would run `touch MARKER` under Python's `pickle.loads`
/// (GLOBAL/STACK_GLOBAL + REDUCE), over TCP and UDP: refused and logged,
/// nothing runs, and the connection's next, honest record still arrives.
#[test]
fn a_malicious_pickle_is_refused_and_nothing_runs() {
    if !need("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("PWNED");
    let topic = unique("pylog-evil");
    let broker = LogpipeBroker::start(&bin(), &[&topic], 1);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut p = Producer::start(
        &broker.bootstrap,
        &topic,
        dir.path(),
        &["--python-logging", &addr],
    );
    wait_listening(port, &mut p);
    let script = format!(
        r#"
import logging, os, pickle, socket, struct, sys
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
frames = [pickle.dumps(Evil(), proto) for proto in (0, 1, 2, 4, 5)]
frames.append(pickle.dumps({{"name": "evil", "msg": Evil()}}, 2))
honest = logging.makeLogRecord({{"name": "honest", "msg": "still here %s", "args": ("ok",), "levelname": "INFO"}})
frames.append(pickle.dumps(honest.__dict__, 1))
s = socket.create_connection(("127.0.0.1", {port}))
for f in frames:
    s.sendall(struct.pack(">L", len(f)) + f)
s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for f in frames:
    u.sendto(struct.pack(">L", len(f)) + f, ("127.0.0.1", {port}))
"#,
        marker = marker.display()
    );
    let st = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    let got = records(&broker.bootstrap, &topic, 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    p.stop();
    assert!(
        !marker.exists(),
        "the pickle ran code: {} exists",
        marker.display()
    );
    let honest: Vec<serde_json::Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    assert_eq!(
        honest.len(),
        2,
        "only the honest records (TCP and UDP) are published: {honest:?}"
    );
    for h in &honest {
        assert_eq!(
            h["message"], "still here ok",
            "args applied by the receiver: {h}"
        );
        assert_eq!(h["name"], "honest");
    }
    let log = p.log();
    for what in ["GLOBAL", "STACK_GLOBAL"] {
        assert!(
            log.contains(&format!("refused opcode {what}")),
            "log names the refused opcode {what}: {log}"
        );
    }
    assert!(
        log.contains("records_refused=12"),
        "12 refusals counted (6 over TCP, 6 over UDP): {log}"
    );
}

/// curl against `--http`: sources from the query and the header, a gzip
/// body, an oversized body refused with 413 and nothing of it published,
/// /health, and a 404.
#[test]
fn http_post_lines_with_curl() {
    if !need("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("http");
    let broker = Kafka::with_topics(&[&topic], 2);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut p = Producer::start(
        &broker.bootstrap,
        &topic,
        dir.path(),
        &["--http", &addr, "--http-max-body", "64KiB"],
    );
    wait_listening(port, &mut p);
    let url = |q: &str| format!("http://127.0.0.1:{port}{q}");
    let curl = |args: &[&str], stdin: Option<&[u8]>| -> (String, String) {
        let mut c = Command::new("curl")
            .args(["-s", "-S", "-w", "\n%{http_code}"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = c.stdin.take().unwrap();
        if let Some(b) = stdin {
            input.write_all(b).unwrap();
        }
        drop(input);
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.trim_end().to_string())
    };
    let (code, body) = curl(
        &[
            "-X",
            "POST",
            "--data-binary",
            "@-",
            &url("/lines?source=web%2F1"),
        ],
        Some(b"GET /a 200\nGET /b 404\r\nno newline at the end"),
    );
    assert_eq!((code.as_str(), body.as_str()), ("200", "{\"lines\":3}"));
    let (code, _) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "X-Logpipe-Source: api",
            "--data-binary",
            "@-",
            &url("/lines"),
        ],
        Some("ünïcode line\n\nafter an empty line\n".as_bytes()),
    );
    assert_eq!(code, "200");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..1000 {
        writeln!(gz, "gzip line {i}").unwrap();
    }
    let gz = gz.finish().unwrap();
    let (code, body) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "@-",
            &url("/lines?source=gz"),
        ],
        Some(&gz),
    );
    assert_eq!((code.as_str(), body.as_str()), ("200", "{\"lines\":1000}"));
    // 100 KiB plain, and a 13 KiB gzip body that inflates past the limit.
    let big = "x".repeat(1000) + "\n";
    let (code, body) = curl(
        &[
            "-X",
            "POST",
            "--data-binary",
            "@-",
            &url("/lines?source=big"),
        ],
        Some(big.repeat(100).as_bytes()),
    );
    assert_eq!(code, "413", "{body}");
    assert!(body.contains("--http-max-body"), "{body}");
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(big.repeat(1000).as_bytes()).unwrap();
    let (code, _) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "@-",
            &url("/lines?source=big"),
        ],
        Some(&bomb.finish().unwrap()),
    );
    assert_eq!(code, "413");
    let (code, body) = curl(&[&url("/health")], None);
    assert_eq!(code, "200");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["lines_acknowledged"], 1006, "{h}");
    assert_eq!(curl(&[&url("/nope")], None).0, "404");
    assert_eq!(curl(&[&url("/lines")], None).0, "405");
    // Acknowledged means stored: the records are there at once.
    let rs = read_topic(&broker.bootstrap, &topic);
    p.stop();
    let mut by_source: HashMap<&str, Vec<String>> = HashMap::new();
    for r in distinct(&rs) {
        by_source
            .entry(source(r))
            .or_default()
            .push(String::from_utf8(r.value.clone()).unwrap());
    }
    assert_eq!(
        by_source["web/1"],
        ["GET /a 200", "GET /b 404", "no newline at the end"]
    );
    assert_eq!(
        by_source["api"],
        ["ünïcode line", "", "after an empty line"]
    );
    assert_eq!(
        by_source["gz"],
        (0..1000)
            .map(|i| format!("gzip line {i}"))
            .collect::<Vec<_>>()
    );
    assert!(
        !by_source.contains_key("big"),
        "nothing of a refused body is published"
    );
    assert_eq!(rs.len(), 1006);
}

/// TCP clients writing lines in pieces across packets, many at once, one
/// disconnecting in the middle of a line: every complete line arrives,
/// in order per connection, and the unterminated piece is kept, marked.
#[test]
fn tcp_lines_split_across_packets_and_a_disconnect_mid_line() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("tcp");
    let broker = Kafka::with_topics(&[&topic], 3);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut p = Producer::start(
        &broker.bootstrap,
        &topic,
        dir.path(),
        &[
            "--tcp",
            &addr,
            "--tcp-source",
            "syslogish",
            "--max-line-bytes",
            "100",
        ],
    );
    wait_listening(port, &mut p);
    let writers: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let mut text = String::new();
                for i in 0..500 {
                    text.push_str(&format!("conn {c} line {i} {}\n", "y".repeat(i % 37)));
                }
                // A line over --max-line-bytes, then an unterminated end.
                text.push_str(&format!("conn {c} long {}\r\n", "z".repeat(300)));
                text.push_str(&format!("conn {c} cut off mid-li"));
                let b = text.as_bytes();
                let mut at = 0;
                let mut k = 0usize;
                while at < b.len() {
                    let n = (1 + (k * 7919) % 61).min(b.len() - at);
                    s.write_all(&b[at..at + n]).unwrap();
                    at += n;
                    k += 1;
                    if k % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // Closed here, in the middle of the last line.
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let rs = records(&broker.bootstrap, &topic, 8 * 502, Duration::from_secs(60));
    p.stop();
    let mut per_file: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in distinct(&rs) {
        assert_eq!(source(r), "syslogish");
        per_file
            .entry(r.header("file").unwrap())
            .or_default()
            .push(r);
    }
    assert_eq!(per_file.len(), 8, "one stream per connection");
    for (_, mut v) in per_file {
        v.sort_by_key(|r| r.header("offset").unwrap().parse::<u64>().unwrap());
        let first = String::from_utf8_lossy(&v[0].value).into_owned();
        let c: usize = first.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(v.len(), 502, "conn {c}");
        for (i, r) in v[..500].iter().enumerate() {
            assert_eq!(
                String::from_utf8_lossy(&r.value),
                format!("conn {c} line {i} {}", "y".repeat(i % 37))
            );
            assert_eq!(r.header("cut"), None);
        }
        let long = format!("conn {c} long {}", "z".repeat(300));
        assert_eq!(v[500].value, long.as_bytes()[..100]);
        assert_eq!(v[500].header("cut"), Some(long.len().to_string().as_str()));
        assert_eq!(
            String::from_utf8_lossy(&v[501].value),
            format!("conn {c} cut off mid-li")
        );
        assert_eq!(v[501].header("partial"), Some("eof"));
    }
}

/// `--exec`: a long-running plugin that dies is restarted, a periodic one
/// runs every second, one that hangs is killed at its next run, stderr goes
/// to the log, and no plugin process outlives the producer.
#[test]
fn exec_plugins_restart_run_periodically_and_hangs_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    // The hanging plugin's `sleep` has a number of this test run's own.
    let nap = format!("sleep {}", 900_000 + std::process::id() % 100_000);
    let write = |rel: &str, body: &str| {
        let p = plugins.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write("0/dies", "#!/bin/sh\necho \"start $$\"\necho 'dies: a warning' >&2\nsleep 0.2\necho \"end $$\"\nexit 1\n");
    write(
        "0/steady",
        "#!/bin/sh\ni=0\nwhile true; do echo \"steady $i\"; i=$((i+1)); sleep 0.05; done\n",
    );
    write("1/every", "#!/bin/sh\necho \"every $(date +%s%N)\"\n");
    write(
        "1/hangs",
        &format!("#!/bin/sh\necho \"hangs $$\"\nexec {nap}\n"),
    );
    std::fs::write(plugins.join("1/README"), "not executable").unwrap();
    let topic = unique("exec");
    let broker = LogpipeBroker::start(&bin(), &[&topic], 2);
    let plugin_dir = plugins.to_str().unwrap().to_string();
    let mut p = Producer::start(
        &broker.bootstrap,
        &topic,
        dir.path(),
        &["--exec", &plugin_dir, "--exec-restart-backoff", "100ms"],
    );
    std::thread::sleep(Duration::from_millis(4500));
    p.stop();
    let rs = read_topic(&broker.bootstrap, &topic);
    let log = p.log();
    let mut by_source: HashMap<&str, Vec<String>> = HashMap::new();
    for r in distinct(&rs) {
        by_source
            .entry(source(r))
            .or_default()
            .push(String::from_utf8(r.value.clone()).unwrap());
    }
    // dies: start/end pairs of several runs (distinct pids), restarted after 0.1, 0.2, 0.4 … s.
    let dies = &by_source["dies"];
    let runs: HashSet<&str> = dies.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert!(runs.len() >= 3, "restarted: {dies:?}");
    assert!(
        dies.iter().filter(|l| l.starts_with("end ")).count() >= 3,
        "{dies:?}"
    );
    assert!(
        log.contains("long-running plugin exited; restarting"),
        "{log}"
    );
    assert!(log.contains("dies: a warning"), "stderr logged: {log}");
    // steady: one run, lines in order, nothing lost or repeated.
    let steady = &by_source["steady"];
    assert!(steady.len() >= 30, "{}", steady.len());
    for (i, l) in steady.iter().enumerate() {
        assert_eq!(*l, format!("steady {i}"));
    }
    // every: about once a second.
    let every = by_source["every"].len();
    assert!((3..=6).contains(&every), "every ran {every} times");
    // hangs: killed at each next run, and run again.
    assert!(by_source["hangs"].len() >= 3, "{:?}", by_source["hangs"]);
    assert!(log.contains("hung; killed"), "{log}");
    assert!(log.contains("not an executable file; skipped"), "{log}");
    // Nothing left running: no shell running a plugin (its command line
    // holds the plugin's path) and no `sleep` a plugin started.
    let canonical = std::fs::canonicalize(&plugins).unwrap();
    let left = Command::new("pgrep").args(["-f", &nap]).output().unwrap();
    let left2 = Command::new("pgrep")
        .arg("-f")
        .arg(&canonical)
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty() && left2.stdout.is_empty(),
        "plugins outlived the producer: {:?} {:?}",
        left,
        left2
    );
}
