//! What the process's Kafka clients say about the brokers they cannot reach:
//! one line when a broker becomes unreachable and one when it is back,
//! however many connection attempts fail in between and however many clients
//! (group member, dead-letter producer, probes) see it.
//!
//! librdkafka reports a broker that refuses connections or lets them time
//! out through its log (`FAIL`) and its error callback
//! (`BrokerTransportFailure`), each on every attempt; those go to [`log`]
//! and [`error`]. Its return is not reported at all, and a client whose
//! partitions moved to another leader stops connecting to it, so the first
//! failure starts a watcher thread that asks the broker itself for metadata
//! every second (a client of its own, bootstrapped to that broker only, with
//! the process's security settings, [`set_client_config`]) and logs the
//! return when it answers. The state is process-wide.
//!
//! A broker that has just come back may refuse a connection or two more
//! (a Kafka node restarting under a frozen controller did, 0.1 s after it
//! answered): a failure within [`SETTLE`] of a return is logged only if the
//! broker still does not answer [`CONFIRM`] later; a flap shorter than that
//! is a debug line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// How long after a broker's return a new failure waits for confirmation.
const SETTLE: Duration = Duration::from_secs(10);
/// How long such a failure must last to be logged as an outage.
const CONFIRM: Duration = Duration::from_secs(3);

struct Outage {
    since: Instant,
    attempts: u64,
    /// Whether its beginning was logged (a failure soon after a return
    /// is logged only once it has lasted [`CONFIRM`]).
    logged: bool,
    reason: String,
}

#[derive(Default)]
struct Brokers {
    down: HashMap<String, Outage>,
    /// When each broker last came back.
    back: HashMap<String, Instant>,
}

/// Outages logged by this process.
static OUTAGES: AtomicU64 = AtomicU64::new(0);

/// How many times a broker became unreachable (and it was logged) in this
/// process.
pub fn outages() -> u64 {
    OUTAGES.load(Ordering::Relaxed)
}

/// The brokers this process has logged unreachable and not back yet, with
/// how long ago each outage began and why.
pub fn unreachable() -> Vec<(String, Duration, String)> {
    let s = state().lock().unwrap();
    let mut v: Vec<_> = s
        .down
        .iter()
        .filter(|(_, o)| o.logged)
        .map(|(a, o)| (a.clone(), o.since.elapsed(), o.reason.clone()))
        .collect();
    v.sort();
    v
}

fn state() -> &'static Mutex<Brokers> {
    static S: OnceLock<Mutex<Brokers>> = OnceLock::new();
    S.get_or_init(Default::default)
}

static NOTE: OnceLock<&'static str> = OnceLock::new();
static CLIENT: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// The process's librdkafka properties (`--kafka`): the watcher's client
/// takes those that reach a broker (`security.*`, `ssl.*`, `sasl.*`,
/// `socket.*`, `broker.address.family`, `client.dns.lookup`). The first
/// call wins.
pub fn set_client_config(extra: &[(String, String)]) {
    let keep = |k: &str| {
        ["security.", "ssl.", "sasl.", "socket."]
            .iter()
            .any(|p| k.starts_with(p))
            || matches!(k, "broker.address.family" | "client.dns.lookup")
    };
    let _ = CLIENT.set(extra.iter().filter(|(k, _)| keep(k)).cloned().collect());
}

/// What this process does while a broker is unreachable (e.g. the producer:
/// "holding lines and retrying; nothing is dropped"), appended to the outage
/// line. The first call wins.
pub fn set_note(note: &'static str) {
    let _ = NOTE.set(note);
}

fn note() -> &'static str {
    NOTE.get().copied().unwrap_or("retrying")
}

/// The broker address (`host:port`) a librdkafka message is about, from its
/// `host:port/id: …` or `GroupCoordinator: host:port: …` prefix.
fn broker_of(msg: &str) -> Option<&str> {
    let msg = strip_prefixes(msg);
    let (name, _) = msg.split_once(": ")?;
    let addr = name.split_once('/').map_or(name, |(a, _)| a);
    addr.contains(':').then_some(addr)
}

/// The message without the log's `[thrd:…]: ` and the logical broker's
/// `GroupCoordinator: `.
fn strip_prefixes(msg: &str) -> &str {
    let msg = match msg.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ").map_or(msg, |(_, m)| m),
        None => msg,
    };
    msg.strip_prefix("GroupCoordinator: ").unwrap_or(msg)
}

/// The message without its broker prefix.
fn reason_of(msg: &str) -> &str {
    let rest = strip_prefixes(msg);
    rest.split_once(": ").map_or(msg, |(_, r)| r)
}

/// A connection to a broker failed. Returns true when this began an outage
/// of that broker and it was logged (not when it is one soon after a return,
/// which the watcher logs if it lasts). A connection the broker closed
/// (`Disconnected`, e.g. idle for `connections.max.idle.ms`) is not an outage
/// by itself: the reconnect that follows fails if the broker is gone.
pub fn failed(msg: &str) -> bool {
    let Some(addr) = broker_of(msg) else {
        tracing::debug!(target: "librdkafka", "{msg}");
        return false;
    };
    if !(msg.contains("failed") || msg.contains("timed out") || msg.contains("refused")) {
        tracing::debug!(target: "librdkafka", "{msg}");
        return false;
    }
    let mut s = state().lock().unwrap();
    if let Some(o) = s.down.get_mut(addr) {
        o.attempts += 1;
        tracing::debug!(target: "librdkafka", broker = addr, "still unreachable: {msg}");
        return false;
    }
    let settling = s.back.get(addr).is_some_and(|t| t.elapsed() < SETTLE);
    s.down.insert(
        addr.to_string(),
        Outage {
            since: Instant::now(),
            attempts: 1,
            logged: !settling,
            reason: reason_of(msg).to_string(),
        },
    );
    if settling {
        tracing::debug!(target: "librdkafka", broker = addr, "refused soon after its return: {msg}");
    } else {
        log_outage(addr, reason_of(msg));
    }
    drop(s);
    watch(addr.to_string());
    !settling
}

fn log_outage(addr: &str, reason: &str) {
    OUTAGES.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        "Kafka unreachable: broker {addr}: {reason}; {} (logged again when it is back)",
        note()
    );
}

/// Asks `addr` for metadata every second until it answers, then logs its
/// return and ends the outage.
fn watch(addr: String) {
    let spawned = std::thread::Builder::new()
        .name("kafka-watch".into())
        .spawn(move || {
            let mut cc = rdkafka::ClientConfig::new();
            cc.set("bootstrap.servers", &addr)
                .set("reconnect.backoff.ms", "200")
                .set("reconnect.backoff.max.ms", "1000")
                .set("log_level", "3");
            for (k, v) in CLIENT.get().into_iter().flatten() {
                cc.set(k, v);
            }
            use rdkafka::consumer::Consumer;
            let client: Result<rdkafka::consumer::BaseConsumer<Quiet>, _> =
                cc.create_with_context(Quiet);
            let Ok(client) = client else { return };
            loop {
                {
                    let mut s = state().lock().unwrap();
                    let Some(o) = s.down.get_mut(&addr) else {
                        return;
                    };
                    if !o.logged && o.since.elapsed() >= CONFIRM {
                        o.logged = true;
                        log_outage(&addr, &o.reason);
                    }
                }
                if client.fetch_metadata(None, Duration::from_secs(1)).is_ok() {
                    back(&addr);
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no thread to watch a broker's return");
    }
}

/// `addr` answered again: log the outage's end, once (a flap whose
/// beginning was not logged ends in a debug line).
fn back(addr: &str) {
    let mut s = state().lock().unwrap();
    let Some(o) = s.down.remove(addr) else {
        return;
    };
    let after = humanize(o.since.elapsed());
    if o.logged {
        s.back.insert(addr.to_string(), Instant::now());
        tracing::info!(
            after = %after,
            failed_attempts = o.attempts,
            "Kafka reachable again: broker {addr}"
        );
    } else {
        tracing::debug!(%after, failed_attempts = o.attempts, "broker {addr} answers again after a flap");
    }
}

/// The watcher's context: its own failures are the outage already logged.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: RDKafkaLogLevel, fac: &str, msg: &str) {
        tracing::trace!(target: "librdkafka", "watcher: {fac} {msg}");
    }
    fn error(&self, e: KafkaError, reason: &str) {
        tracing::trace!(target: "librdkafka", "watcher: {e}: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// librdkafka's log, routed: a broker's failed connection (`FAIL` at
/// warning level or above) to the outage state, a commit refused while the group rebalances to debug
/// (harmless: the restore point is what a new owner resumes from, and the
/// next commit supersedes it), everything else at its own level. Returns
/// true when this began an outage of a broker.
pub fn log(level: RDKafkaLogLevel, fac: &str, msg: &str) -> bool {
    use RDKafkaLogLevel::*;
    if fac == "FAIL"
        && broker_of(msg).is_some()
        && matches!(level, Emerg | Alert | Critical | Error | Warning)
    {
        return failed(msg);
    }
    if fac == "COMMITFAIL" && msg.contains("Group rebalance in progress") {
        tracing::debug!(target: "librdkafka", "librdkafka: {fac} {msg}");
        return false;
    }
    match level {
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {fac} {msg}")
        }
        Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {msg}"),
        Notice | Info => tracing::info!(target: "librdkafka", "librdkafka: {fac} {msg}"),
        Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {msg}"),
    }
    false
}

/// Whether an error is a broker connection failure that [`error`] accounts
/// for (so a caller that also receives it, e.g. from `poll`, need not log it).
pub fn is_transport(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// An error a consumer's `poll` returned: logged as a warning unless it is
/// a broker connection failure, which the error callback has accounted for.
pub fn consumer_error(e: &KafkaError) {
    if is_transport(e) {
        tracing::debug!(error = %e, "Kafka consumer error");
    } else {
        tracing::warn!(error = %e, "Kafka consumer error");
    }
}

/// librdkafka's error callback, routed. Returns true when this began an
/// outage of a broker.
pub fn error(e: &KafkaError, reason: &str) -> bool {
    match e.rdkafka_error_code() {
        // Said after each broker's own failure, which was logged.
        Some(RDKafkaErrorCode::AllBrokersDown) => {
            tracing::debug!(target: "librdkafka", "{reason}");
            false
        }
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
            failed(reason)
        }
        _ => {
            tracing::error!("librdkafka: {e}: {reason}");
            false
        }
    }
}

fn humanize(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A client context that only routes librdkafka's log and errors through
/// this module: for the short-lived and auxiliary clients (probes, the
/// dead-letter reader).
#[derive(Default, Clone, Copy)]
pub struct Logged;

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log(level, fac, msg);
    }
    fn error(&self, e: KafkaError, reason: &str) {
        error(&e, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Logged {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_is_read_from_both_prefixes() {
        let m = "127.0.0.1:41957/1: Connect to ipv4#127.0.0.1:41957 failed: Connection refused";
        assert_eq!(broker_of(m), Some("127.0.0.1:41957"));
        assert_eq!(
            reason_of(m),
            "Connect to ipv4#127.0.0.1:41957 failed: Connection refused"
        );
        let g = "GroupCoordinator: 127.0.0.1:41957: Connect to ipv4#127.0.0.1:41957 failed";
        assert_eq!(broker_of(g), Some("127.0.0.1:41957"));
        let t =
            "[thrd:127.0.0.1:43115/1]: 127.0.0.1:43115/1: Connect to ipv4#127.0.0.1:43115 failed";
        assert_eq!(broker_of(t), Some("127.0.0.1:43115"));
        assert_eq!(reason_of(t), "Connect to ipv4#127.0.0.1:43115 failed");
        assert_eq!(
            broker_of("kafka-1:9092/bootstrap: Disconnected"),
            Some("kafka-1:9092")
        );
        assert_eq!(broker_of("3/3 brokers are down"), None);
        assert_eq!(broker_of("no prefix here"), None);
        assert!(!failed(
            "10.9.8.6:9092/1: Disconnected (after 600005ms in state UP)"
        ));
    }

    #[test]
    fn an_outage_is_logged_once_and_ends_when_the_broker_answers_again() {
        let broker = crate::MockBroker::start(1).unwrap();
        let addr = broker.bootstrap().to_string();
        let m = format!("{addr}/1: Connect to ipv4#{addr} failed: Connection refused");
        assert!(failed(&m), "the first failure begins the outage");
        assert!(!failed(&m), "the second does not");
        // The watcher asks the broker, which answers: the outage ends.
        wait_until_up(&addr);
        // Refused again just after the return, by a broker that answers:
        // a flap, not logged.
        let logged = outages();
        assert!(!failed(&m), "a failure soon after a return waits");
        wait_until_up(&addr);
        assert_eq!(outages(), logged, "the flap was not logged");
        // Gone for good: logged once it has lasted CONFIRM.
        drop(broker);
        assert!(!failed(&m));
        let t = Instant::now();
        while outages() == logged {
            assert!(t.elapsed() < Duration::from_secs(20), "outage not logged");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(t.elapsed() >= CONFIRM - Duration::from_millis(100));
        assert!(state().lock().unwrap().down[&addr].logged);
    }

    fn wait_until_up(addr: &str) {
        let t = Instant::now();
        while state().lock().unwrap().down.contains_key(addr) {
            assert!(t.elapsed() < Duration::from_secs(20), "no return seen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
