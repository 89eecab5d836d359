//! `logpipe status`: one screen for whoever is on call. Per partition of the
//! topic: the group member that owns it, committed and end offsets, lag and
//! how it moved over a short sample, the restore point and how old its
//! record is, the newest window written for its sources; per source its
//! newest event time and lines/s; dead letters of the last hour; and
//! warnings for what is wrong. Read from Kafka (the group, offsets,
//! records) and, with `--influx-url`, from the analyzers' InfluxDB.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use logpipe_consumer::props::{self, ClientKind};
use logpipe_consumer::Probe;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::cli::StatusArgs;

/// What `status` found; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct Report {
    pub topic: String,
    pub group: String,
    /// The group's state as the coordinator says it (`Stable`,
    /// `PreparingRebalance`, `Empty`, `Dead`, …).
    pub group_state: String,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionRow>,
    /// Empty without `--influx-url`.
    pub sources: Vec<SourceRow>,
    pub dead_letter_topic: String,
    /// Dead letters written in the last hour (`None`: the topic is missing).
    pub dead_letters_last_hour: Option<u64>,
    pub warnings: Vec<String>,
    /// When the report was made, ms since the Unix epoch.
    pub at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct Member {
    /// The member's `client.id` (an analyzer's id) and host.
    pub client_id: String,
    pub host: String,
    pub partitions: Vec<i32>,
}

#[derive(Debug, Serialize)]
pub struct PartitionRow {
    pub partition: i32,
    pub owner: Option<String>,
    /// The group's committed offset (an analyzer commits its restore
    /// point's next offset).
    pub committed: Option<i64>,
    /// The earliest offset the broker still keeps, and the end.
    pub log_start: i64,
    pub end: i64,
    pub lag: Option<i64>,
    /// Records committed per second over the sample, and the lag's change.
    pub committed_per_s: Option<f64>,
    pub lag_change: Option<i64>,
    /// The restore point in InfluxDB: where a new owner starts reading.
    pub restore_offset: Option<i64>,
    /// Age of the record at the restore offset (its Kafka timestamp).
    pub restore_age_s: Option<f64>,
    /// The newest window written for the partition's sources (start, ms).
    pub newest_window_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct SourceRow {
    pub host: String,
    pub source: String,
    pub partition: i32,
    /// The newest event time the analyzers saw for it (restore point).
    pub newest_event_ms: i64,
    /// Requests (or records) per second in its newest window.
    pub lines_per_s: Option<f64>,
    pub newest_window_ms: Option<i64>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The group's members and what each is assigned (classic protocol: the
/// consumer protocol's assignment decoded).
fn members(consumer: &BaseConsumer, group: &str, topic: &str) -> Result<(String, Vec<Member>)> {
    let list = consumer
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .context("describing the consumer group")?;
    let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(("Dead".into(), Vec::new()));
    };
    let members = g
        .members()
        .iter()
        .map(|m| Member {
            client_id: m.client_id().to_string(),
            host: m.client_host().trim_start_matches('/').to_string(),
            partitions: m
                .assignment()
                .map(|a| assigned(a, topic))
                .unwrap_or_default(),
        })
        .collect();
    Ok((g.state().to_string(), members))
}

/// The partitions of `topic` in a consumer protocol assignment: version
/// (i16), topics [(name: i16-length string, partitions: [i32])], user data.
fn assigned(bytes: &[u8], topic: &str) -> Vec<i32> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = b;
            Some(a)
        }
        fn i16(&mut self) -> Option<i16> {
            Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
        }
        fn i32(&mut self) -> Option<i32> {
            Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
    }
    let mut r = R(bytes);
    let mut out = Vec::new();
    let mut read = || -> Option<()> {
        r.i16()?;
        for _ in 0..r.i32()?.max(0) {
            let len = r.i16()?.max(0) as usize;
            let name = r.take(len)?.to_vec();
            let n = r.i32()?.max(0);
            for _ in 0..n {
                let p = r.i32()?;
                if name == topic.as_bytes() {
                    out.push(p);
                }
            }
        }
        Some(())
    };
    // A damaged assignment shows what could be read of it.
    let _ = read();
    out.sort_unstable();
    out
}

/// Offsets of one moment: (log start, end) per partition and the group's
/// committed offsets.
struct Sample {
    marks: BTreeMap<i32, (i64, i64)>,
    committed: BTreeMap<i32, i64>,
}

fn sample(probe: &Probe, consumer: &BaseConsumer, topic: &str, ps: &[i32]) -> Result<Sample> {
    let mut marks = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in ps {
        marks.insert(
            p,
            probe
                .watermarks(p)
                .with_context(|| format!("offsets of {topic} [{p}]"))?,
        );
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .context("reading the group's committed offsets")?;
    let committed = got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    Ok(Sample { marks, committed })
}

/// Restore points and sources from the analyzers' InfluxDB.
#[derive(Default)]
struct Stored {
    restore: BTreeMap<i32, i64>,
    /// (partition, host, source) → newest event time.
    sources: Vec<(i32, String, String, i64)>,
    /// (host, source) → (newest window start, its qps).
    windows: BTreeMap<(String, String), (i64, Option<f64>)>,
}

fn stored(a: &StatusArgs) -> Result<Option<Stored>> {
    let Some(sink) = crate::influx_sink(&a.influx)? else {
        return Ok(None);
    };
    let scope = format!(
        "\"group\" = '{}' AND \"topic\" = '{}'",
        a.group.replace('\'', "\\'"),
        a.kafka.topic.replace('\'', "\\'")
    );
    let mut s = Stored::default();
    let q = |q: &str| {
        sink.select(q)
            .map_err(|e| anyhow::anyhow!("reading InfluxDB ({q}): {e}"))
    };
    for series in q(&format!(
        "SELECT last(restore_offset) FROM logpipe_state WHERE {scope} GROUP BY \"partition\""
    ))? {
        let p = series["tags"]["partition"]
            .as_str()
            .and_then(|p| p.parse().ok());
        let o = series["values"][0][1].as_i64();
        if let (Some(p), Some(o)) = (p, o) {
            s.restore.insert(p, o);
        }
    }
    for series in q(&format!(
        "SELECT last(max_event_ms) FROM logpipe_state_source WHERE {scope} GROUP BY \"partition\", \"src\""
    ))? {
        let p = series["tags"]["partition"].as_str().and_then(|p| p.parse().ok());
        let src = series["tags"]["src"].as_str().unwrap_or("");
        let m = series["values"][0][1].as_i64();
        // The record key is `host:source`.
        let (host, source) = src.split_once(':').unwrap_or(("", src));
        if let (Some(p), Some(m)) = (p, m) {
            s.sources.push((p, host.to_string(), source.to_string(), m));
        }
    }
    for series in q("SELECT last(qps) FROM access_log GROUP BY \"host\", \"source\"")? {
        let host = series["tags"]["host"].as_str().unwrap_or("").to_string();
        let source = series["tags"]["source"].as_str().unwrap_or("").to_string();
        let t = series["values"][0][0].as_i64();
        let qps = series["values"][0][1].as_f64();
        if let Some(t) = t {
            s.windows.insert((host, source), (t, qps));
        }
    }
    Ok(Some(s))
}

/// Builds the report: two samples of the offsets `--sample` apart.
pub fn report(a: &StatusArgs) -> Result<Report> {
    let topic = a.kafka.topic.as_str();
    let extra = crate::cli::flat(a.kafka.kafka.clone());
    let probe = Probe::new(&a.kafka.brokers, topic, &extra)?;
    let ps = probe
        .partitions()
        .with_context(|| format!("reading the partitions of {topic}"))?;
    if ps.is_empty() {
        anyhow::bail!(
            "topic {topic} does not exist on {} (or the brokers do not answer)",
            a.kafka.brokers
        );
    }
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &a.kafka.brokers)
        .set("group.id", &a.group)
        .set("enable.auto.commit", "false");
    props::set_for(&mut cc, ClientKind::Consumer, &extra);
    // Never subscribes: reading the group's offsets does not join it.
    let consumer: BaseConsumer = cc.create().context("creating the Kafka client")?;
    let (group_state, members) = members(&consumer, &a.group, topic)?;
    let first = sample(&probe, &consumer, topic, &ps)?;
    let secs = a.sample.as_secs_f64();
    let second = if secs > 0.0 {
        std::thread::sleep(a.sample);
        Some(sample(&probe, &consumer, topic, &ps)?)
    } else {
        None
    };
    let last = second.as_ref().unwrap_or(&first);
    let stored = stored(a)?;
    let now = now_ms();

    let owner_of: BTreeMap<i32, String> = members
        .iter()
        .flat_map(|m| {
            let name = if m.host.is_empty() {
                m.client_id.clone()
            } else {
                format!("{} ({})", m.client_id, m.host)
            };
            m.partitions.iter().map(move |&p| (p, name.clone()))
        })
        .collect();
    let mut warnings = Vec::new();
    if members.is_empty() {
        warnings.push(format!(
            "group {} has no members: nothing consumes {topic} (state {group_state})",
            a.group
        ));
    }
    let mut partitions = Vec::new();
    for &p in &ps {
        let (log_start, end) = last.marks[&p];
        let committed = last.committed.get(&p).copied();
        // Without a commit the group starts at the earliest record kept.
        let lag_at = |marks: (i64, i64), c: Option<i64>| (marks.1 - c.unwrap_or(marks.0)).max(0);
        let lag = Some(lag_at((log_start, end), committed));
        let (committed_per_s, lag_change) = match &second {
            Some(_) => {
                let c1 = first.committed.get(&p).copied();
                let lag1 = lag_at(first.marks[&p], c1);
                (
                    c1.zip(committed).map(|(c1, c2)| (c2 - c1) as f64 / secs),
                    lag.map(|l2| l2 - lag1),
                )
            }
            None => (None, None),
        };
        let owner = owner_of.get(&p).cloned();
        let restore_offset = stored.as_ref().and_then(|s| s.restore.get(&p).copied());
        let mut restore_age_s = None;
        if let Some(o) = restore_offset.filter(|&o| o >= log_start && o < end) {
            if let Ok(Some((_, ts))) = probe.record_at(p, o) {
                restore_age_s = Some((now - ts).max(0) as f64 / 1000.0);
            }
        }
        let newest_window_ms = stored.as_ref().and_then(|s| {
            s.sources
                .iter()
                .filter(|x| x.0 == p)
                .filter_map(|(_, h, src, _)| s.windows.get(&(h.clone(), src.clone())).map(|w| w.0))
                .max()
        });
        partitions.push(PartitionRow {
            partition: p,
            owner,
            committed,
            log_start,
            end,
            lag,
            committed_per_s,
            lag_change,
            restore_offset,
            restore_age_s,
            newest_window_ms,
        });
    }
    for row in &partitions {
        warnings.extend(partition_warnings(row, !members.is_empty(), topic, secs));
    }
    let sources = stored
        .as_ref()
        .map(|s| {
            s.sources
                .iter()
                .map(|(p, h, src, m)| {
                    let w = s.windows.get(&(h.clone(), src.clone()));
                    SourceRow {
                        host: h.clone(),
                        source: src.clone(),
                        partition: *p,
                        newest_event_ms: *m,
                        lines_per_s: w.and_then(|w| w.1),
                        newest_window_ms: w.map(|w| w.0),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let dead_letter_topic = a.dlq_topic.clone();
    let dead_letters_last_hour = dead_letters(a, &extra, now - 3_600_000);
    Ok(Report {
        topic: topic.to_string(),
        group: a.group.clone(),
        group_state,
        members,
        partitions,
        sources,
        dead_letter_topic,
        dead_letters_last_hour,
        warnings,
        at_ms: now,
    })
}

/// What is wrong with one partition: no owner while the group has members,
/// a lag that grew over the sample while nothing was committed, a restore
/// point before the log start (retention deleted records that open windows
/// still need), no commit at all.
fn partition_warnings(r: &PartitionRow, has_members: bool, topic: &str, secs: f64) -> Vec<String> {
    let p = r.partition;
    let mut w = Vec::new();
    if r.owner.is_none() && has_members {
        w.push(format!(
            "partition {p}: no member owns it (a rebalance under way, or members that do not consume {topic})"
        ));
    }
    if let (Some(ch), Some(l)) = (r.lag_change, r.lag) {
        if ch > 0 && l > 0 && r.committed_per_s.is_none_or(|c| c <= 0.0) {
            w.push(format!(
                "partition {p}: lag {l} grew by {ch} in {secs:.0} s and nothing was committed"
            ));
        }
    }
    if let Some(o) = r.restore_offset.filter(|&o| o < r.log_start) {
        w.push(format!(
            "partition {p}: restore point at offset {o} is before the log start {}: retention deleted records the open windows still need (a restart cannot rebuild them)",
            r.log_start
        ));
    }
    if r.committed.is_none() && r.end > r.log_start {
        w.push(format!(
            "partition {p}: the group has committed no offset (never consumed, or its offsets expired)"
        ));
    }
    w
}

/// Records of the dead-letter topic stamped at or after `since_ms`.
fn dead_letters(a: &StatusArgs, extra: &[(String, String)], since_ms: i64) -> Option<u64> {
    let probe = Probe::new(&a.kafka.brokers, &a.dlq_topic, extra).ok()?;
    let ps = probe.partitions().ok()?;
    if ps.is_empty() {
        return None;
    }
    let mut n = 0;
    for p in ps {
        let (_, end) = probe.watermarks(p).ok()?;
        let (from, _) = probe.offset_for_time(p, since_ms).ok()?;
        n += (end - from).max(0) as u64;
    }
    Some(n)
}

fn ago(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The report as the screen shows it.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "group {} on {} — {} member{}, {}",
        r.group,
        r.topic,
        r.members.len(),
        if r.members.len() == 1 { "" } else { "s" },
        r.group_state
    );
    let row = |o: &mut String, c: [&str; 10]| {
        let _ = writeln!(
            o,
            "{:>4}  {:<28} {:>12} {:>12} {:>9} {:>8} {:>9} {:>12} {:>12}  {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
        );
    };
    row(
        &mut o,
        [
            "part",
            "owner",
            "committed",
            "end",
            "lag",
            "lag Δ",
            "commit/s",
            "restore at",
            "restore age",
            "newest window",
        ],
    );
    for p in &r.partitions {
        let cells = [
            p.partition.to_string(),
            p.owner.clone().unwrap_or_else(|| "(none)".into()),
            opt(p.committed),
            p.end.to_string(),
            opt(p.lag),
            p.lag_change.map_or("-".into(), |c| format!("{c:+}")),
            p.committed_per_s.map_or("-".into(), |c| format!("{c:.1}")),
            opt(p.restore_offset),
            p.restore_age_s
                .map_or("-".into(), |s| ago(r.at_ms - (s * 1000.0) as i64, r.at_ms)),
            p.newest_window_ms.map_or("-".into(), time),
        ];
        row(&mut o, cells.each_ref().map(String::as_str));
    }
    if !r.sources.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<16} {:<32} {:>4}  {:<33}  {:>9}",
            "host", "source", "part", "newest event (UTC)", "lines/s"
        );
        for s in &r.sources {
            let _ = writeln!(
                o,
                "{:<16} {:<32} {:>4}  {:<20} {:>12}  {:>9}",
                s.host,
                s.source,
                s.partition,
                time(s.newest_event_ms),
                ago(s.newest_event_ms, r.at_ms),
                s.lines_per_s.map_or("-".into(), |q| format!("{q:.1}")),
            );
        }
    }
    let _ = writeln!(o);
    match r.dead_letters_last_hour {
        Some(n) => {
            let _ = writeln!(
                o,
                "dead letters in the last hour: {n} ({}; `logpipe dlq` shows them)",
                r.dead_letter_topic
            );
        }
        None => {
            let _ = writeln!(o, "dead letters: topic {} not found", r.dead_letter_topic);
        }
    }
    if r.warnings.is_empty() {
        let _ = writeln!(o, "no warnings");
    } else {
        let _ = writeln!(o, "warnings:");
        for w in &r.warnings {
            let _ = writeln!(o, "  ! {w}");
        }
    }
    o
}

pub fn run(a: StatusArgs) -> Result<()> {
    let r = report(&a)?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        crate::outln!("{}", render(&r).trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer protocol assignment as Kafka clients write it.
    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend_from_slice(&(t.len() as i16).to_be_bytes());
            b.extend_from_slice(t.as_bytes());
            b.extend_from_slice(&(ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b
    }

    #[test]
    fn assignments_decode_per_topic_and_survive_damage() {
        let a = assignment(&[("logs", &[4, 1]), ("other", &[0])]);
        assert_eq!(assigned(&a, "logs"), vec![1, 4]);
        assert_eq!(assigned(&a, "other"), vec![0]);
        assert_eq!(assigned(&a, "none"), Vec::<i32>::new());
        for cut in 0..a.len() {
            let _ = assigned(&a[..cut], "logs");
        }
        assert_eq!(assigned(&a[..a.len() - 8], "logs"), vec![1, 4]);
    }

    fn row() -> PartitionRow {
        PartitionRow {
            partition: 2,
            owner: Some("a0".into()),
            committed: Some(100),
            log_start: 50,
            end: 100,
            lag: Some(0),
            committed_per_s: Some(10.0),
            lag_change: Some(0),
            restore_offset: Some(60),
            restore_age_s: Some(3.0),
            newest_window_ms: None,
        }
    }

    #[test]
    fn warnings_name_what_is_wrong_and_only_that() {
        let w = |r: &PartitionRow, members: bool| partition_warnings(r, members, "logs", 2.0);
        assert_eq!(w(&row(), true), Vec::<String>::new());
        let mut r = row();
        r.owner = None;
        assert!(w(&r, true)[0].contains("no member owns it"));
        assert_eq!(
            w(&r, false),
            Vec::<String>::new(),
            "said once for the group"
        );
        let mut r = row();
        (r.lag, r.lag_change, r.committed_per_s) = (Some(40), Some(15), Some(0.0));
        assert!(w(&r, true)[0].contains("lag 40 grew by 15 in 2 s"));
        r.committed_per_s = Some(3.0);
        assert_eq!(w(&r, true), Vec::<String>::new(), "consuming, only slower");
        let mut r = row();
        r.restore_offset = Some(40);
        assert!(w(&r, true)[0].contains("before the log start 50"));
        let mut r = row();
        r.committed = None;
        assert!(w(&r, true)[0].contains("committed no offset"));
    }

    #[test]
    fn the_screen_names_owners_lag_and_warnings() {
        let r = Report {
            topic: "logs".into(),
            group: "g".into(),
            group_state: "Stable".into(),
            members: vec![],
            partitions: vec![PartitionRow {
                partition: 0,
                owner: None,
                committed: Some(10),
                log_start: 0,
                end: 25,
                lag: Some(15),
                committed_per_s: Some(0.0),
                lag_change: Some(5),
                restore_offset: Some(8),
                restore_age_s: Some(90.0),
                newest_window_ms: Some(1_704_067_200_000),
            }],
            sources: vec![],
            dead_letter_topic: "logs.dlq".into(),
            dead_letters_last_hour: Some(3),
            warnings: vec!["partition 0: lag 15 grew".into()],
            at_ms: 1_704_067_300_000,
        };
        let s = render(&r);
        for want in [
            "group g on logs — 0 members, Stable",
            "(none)",
            "+5",
            "90 s ago",
            "2024-01-01 00:00:00",
            "dead letters in the last hour: 3",
            "  ! partition 0: lag 15 grew",
        ] {
            assert!(s.contains(want), "{want:?} in\n{s}");
        }
    }
}
