//! `logpipe replay`: plan the offsets to read, run an analyzer in replay
//! mode over them, show progress, report what was written.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logpipe_analyzer::{AnalyzerConfig, Control, DryRunSink, Range, Replay, Sink, WindowReport};
use logpipe_consumer::{Found, GroupConfig, Probe};
use logpipe_wire::Request;

use crate::cli::{self, ReplayArgs};

/// Where each partition starts and ends, and how the starts were found.
struct Plan {
    replay: Replay,
    /// Per partition: (start, end, how the start was found).
    rows: BTreeMap<i32, (i64, i64, &'static str)>,
    /// Per partition: how far back it goes.
    kept: BTreeMap<i32, Kept>,
}

/// What a partition still holds: its log start and end offsets and when
/// its first and last records were ingested (Kafka timestamps).
#[derive(Debug, Clone, Copy, Default)]
struct Kept {
    log_start: i64,
    end: i64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

/// What a replay did, for [`explain`].
struct Outcome<'a> {
    by_time: bool,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    max_delay_ms: i64,
    records_planned: u64,
    lines: u64,
    parsed: u64,
    windows: u64,
    outside: u64,
    max_event_ms: Option<i64>,
    kept: &'a BTreeMap<i32, Kept>,
}

/// Why a replay read nothing or wrote no window, in words an operator can
/// act on; `None` when it wrote windows.
fn explain(o: &Outcome<'_>) -> Option<String> {
    if o.windows > 0 {
        return None;
    }
    let range = match (o.from_ms, o.to_ms) {
        (Some(f), Some(t)) => format!("{}..{}", fmt_ms(f), fmt_ms(t)),
        (Some(f), None) => format!("from {}", fmt_ms(f)),
        (None, Some(t)) => format!("up to {}", fmt_ms(t)),
        (None, None) => "the whole topic".into(),
    };
    let deleted: i64 = o.kept.values().map(|k| k.log_start).sum();
    if o.records_planned == 0 {
        if o.kept.values().all(|k| k.log_start >= k.end) {
            return Some(if deleted > 0 {
                format!("nothing to read: the topic holds no records; retention deleted all {deleted} it had")
            } else {
                "nothing to read: the topic holds no records".into()
            });
        }
        let newest = o.kept.values().filter_map(|k| k.last_ms).max();
        if let (true, Some(f), Some(newest)) = (o.by_time, o.from_ms, newest) {
            let start = f - o.max_delay_ms;
            if newest < start {
                return Some(format!(
                    "nothing to read: --from and --to choose records by the time Kafka stamped them (ingest time), and the newest record was stamped {}, before {} (--from minus --max-delay). Lines backfilled from old logs carry old event times but the ingest time of their backfill; to recompute windows by event time, read every record: --from-offsets earliest (with --from/--to to keep the windows of the range)",
                    fmt_ms(newest),
                    fmt_ms(start)
                ));
            }
        }
        return Some("nothing to read: the planned offsets hold no records".into());
    }
    if o.parsed == 0 {
        return Some(format!(
            "no window written: none of the {} lines read parsed (they are dead letters: check --format, and `logpipe dlq`)",
            o.lines
        ));
    }
    let mut why = format!(
        "no window written: {} lines parsed, but every window they fell in straddles or lies outside {range} ({} windows left alone{})",
        o.parsed,
        o.outside,
        o.max_event_ms
            .map(|m| format!("; the newest event time read was {}", fmt_ms(m)))
            .unwrap_or_default()
    );
    if o.by_time {
        why.push_str(
            ". Records are chosen by ingest time, windows kept by event time: lines backfilled from old logs were ingested long after their event time. --from-offsets earliest reads every record and keeps the windows inside the range",
        );
    }
    Some(why)
}

/// `earliest` or `P:O,P:O`.
fn parse_from_offsets(s: &str) -> Result<Option<Vec<(i32, i64)>>> {
    if s.trim() == "earliest" {
        return Ok(None);
    }
    s.split(',')
        .map(|part| {
            let (p, o) = part.trim().split_once(':').with_context(|| {
                format!("--from-offsets: expected `earliest` or PARTITION:OFFSET,..., got {part:?}")
            })?;
            Ok((
                p.parse()
                    .with_context(|| format!("--from-offsets: bad partition {p:?}"))?,
                o.parse()
                    .with_context(|| format!("--from-offsets: bad offset {o:?}"))?,
            ))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn plan(a: &ReplayArgs, probe: &Probe) -> Result<Plan> {
    let topic = &a.kafka.topic;
    let all = probe.partitions().with_context(|| {
        format!(
            "reading the partitions of topic {topic} at {}",
            a.kafka.brokers
        )
    })?;
    if all.is_empty() {
        bail!("topic {topic} does not exist at {}", a.kafka.brokers);
    }
    let mut partitions = match &a.partitions {
        Some(ps) => {
            if let Some(p) = ps.iter().find(|p| !all.contains(p)) {
                bail!("--partitions: topic {topic} has no partition {p} (it has {all:?})");
            }
            ps.clone()
        }
        None => all.clone(),
    };
    let explicit = match &a.from_offsets {
        Some(s) => parse_from_offsets(s)?,
        None => None,
    };
    if let Some(list) = &explicit {
        partitions = list.iter().map(|&(p, _)| p).collect();
        if let Some(p) = partitions.iter().find(|p| !all.contains(p)) {
            bail!("--from-offsets: topic {topic} has no partition {p} (it has {all:?})");
        }
    }
    partitions.sort_unstable();
    partitions.dedup();
    let by_time = a.from_offsets.is_none();
    let from_ts = match (by_time, a.from) {
        (true, Some(f)) => Some(f.saturating_sub(a.max_delay.as_millis() as i64)),
        (true, None) => bail!(
            "say where to start: --from TIME, or --from-offsets earliest (or PARTITION:OFFSET,...)"
        ),
        (false, _) => None,
    };
    let mut replay = Replay {
        range: Range {
            from_ms: a.from,
            to_ms: a.to,
        },
        stop_after_ts_ms: match (by_time, a.to) {
            (true, Some(t)) => Some(t.saturating_add(a.max_delay.as_millis() as i64)),
            _ => None,
        },
        dead_letter: a.dead_letter,
        ..Replay::default()
    };
    let mut rows = BTreeMap::new();
    let mut kept = BTreeMap::new();
    for &p in &partitions {
        let (lo, hi) = probe
            .watermarks(p)
            .with_context(|| format!("reading the offsets of partition {p}"))?;
        let stamp = |o: i64| {
            (o >= lo && o < hi)
                .then(|| probe.record_at(p, o).ok().flatten().map(|(_, ts)| ts))
                .flatten()
        };
        kept.insert(
            p,
            Kept {
                log_start: lo,
                end: hi,
                first_ms: stamp(lo),
                last_ms: stamp(hi - 1),
            },
        );
        let (start, how) = if let Some(ts) = from_ts {
            let (o, found) = probe
                .offset_for_time(p, ts)
                .with_context(|| format!("finding the start offset of partition {p} by time"))?;
            // The range begins before what retention kept: lines of its first
            // windows may be gone, and nothing can count them.
            if o == lo && lo > 0 {
                if let Ok(Some((_, first_ts))) = probe.record_at(p, lo) {
                    if first_ts > ts {
                        tracing::warn!(
                            partition = p,
                            log_start = lo,
                            "partition {p}: records before offset {lo} were deleted by the broker (retention) and its oldest record was ingested at {}, after the range begins: windows before then may be short of lines",
                            fmt_ms(first_ts)
                        );
                    }
                }
            }
            (
                o,
                match found {
                    Found::Broker => "offsets-for-times",
                    Found::Search => "binary search over record timestamps",
                    Found::Empty => "empty partition",
                },
            )
        } else if let Some(list) = &explicit {
            let o = list
                .iter()
                .find(|&&(q, _)| q == p)
                .map(|&(_, o)| o)
                .unwrap_or(lo);
            if o < lo || o > hi {
                bail!("--from-offsets: offset {o} of partition {p} is outside what the broker holds ({lo}..{hi}){}",
                    if o < lo { ": the records before it were deleted (retention)" } else { "" });
            }
            (o, "--from-offsets")
        } else {
            (lo, "earliest")
        };
        replay.starts.insert(p, start);
        replay.ends.insert(p, hi);
        rows.insert(p, (start, hi, how));
    }
    Ok(Plan { replay, rows, kept })
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Records read so far over the plan.
fn done(control: &Control, starts: &HashMap<i32, i64>, ends: &HashMap<i32, i64>) -> u64 {
    let progress = control.progress();
    starts
        .iter()
        .map(|(p, &s)| {
            let n = progress.get(p).copied().unwrap_or(s).min(ends[p]);
            (n - s).max(0) as u64
        })
        .sum()
}

/// A bar on a terminal, a log line every 5 s otherwise; until `finished`.
fn show_progress(
    control: Arc<Control>,
    replay: &Replay,
    finished: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let total = replay.total_records();
    let (starts, ends) = (replay.starts.clone(), replay.ends.clone());
    let range = replay.range;
    std::thread::spawn(move || {
        let when = |c: &Control| {
            let reached = c.event_ms().map(fmt_ms).unwrap_or_else(|| "-".into());
            match range.to_ms {
                Some(t) => format!("event time {reached} (range ends {})", fmt_ms(t)),
                None => format!("event time {reached}"),
            }
        };
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} records, {per_sec}, ETA {eta}\n{msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            while !finished.load(Ordering::Relaxed) {
                bar.set_position(done(&control, &starts, &ends));
                bar.set_message(when(&control));
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.set_position(done(&control, &starts, &ends));
            bar.finish();
        } else {
            let begun = Instant::now();
            let mut last = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() < Duration::from_secs(5) {
                    continue;
                }
                last = Instant::now();
                let n = done(&control, &starts, &ends);
                let rate = n as f64 / begun.elapsed().as_secs_f64().max(1e-3);
                let eta = if rate > 0.0 {
                    humantime::format_duration(Duration::from_secs(
                        ((total - n.min(total)) as f64 / rate) as u64,
                    ))
                    .to_string()
                } else {
                    "-".into()
                };
                tracing::info!(
                    "replay progress: {n}/{total} records ({:.1} %), {:.0} records/s, ETA {eta}, {}",
                    n as f64 * 100.0 / total.max(1) as f64,
                    rate,
                    when(&control)
                );
            }
        }
    })
}

/// Final windows written per (host, source): count, first and last start.
type Written = Arc<Mutex<BTreeMap<(String, String), (u64, i64, i64)>>>;

pub fn run(a: ReplayArgs) -> Result<()> {
    let spec = crate::window_spec(&a.analysis.window)?;
    let formats = crate::formats(&a.analysis.parse)?;
    if let (Some(f), Some(t)) = (a.from, a.to) {
        if f >= t {
            bail!("--from ({}) must be before --to ({})", fmt_ms(f), fmt_ms(t));
        }
    }
    let extra = cli::flat(a.kafka.kafka.clone());
    let probe = Probe::new(&a.kafka.brokers, &a.kafka.topic, &extra)
        .context("creating the Kafka client")?;
    let sink: Box<dyn Sink> = if a.dry_run {
        Box::new(DryRunSink::default())
    } else {
        let sink = crate::influx_sink(&a.analysis.influx)?.context(
            "logpipe replay needs --influx-url and --influx-db (or --influx-bucket), or --dry-run",
        )?;
        sink.check_ready(a.analysis.influx.influx_create_db)?;
        Box::new(sink)
    };
    let began = Instant::now();
    let Plan { replay, rows, kept } = plan(&a, &probe)?;
    drop(probe);
    let searched = rows.values().any(|r| r.2.starts_with("binary"));
    if searched {
        tracing::warn!("the broker's offsets-for-times answers do not match the record timestamps (librdkafka's mock cluster never answers them); start offsets were found by binary search over record timestamps");
    }
    let total = replay.total_records();
    crate::errln!(
        "logpipe replay: topic {}, windows of {} s {}{}, {} records in {} partitions (planned in {:.1} s):",
        a.kafka.topic,
        spec.window_ms / 1000,
        a.from.map(|f| format!("from {}", fmt_ms(f))).unwrap_or_else(|| "from the start".into()),
        a.to.map(|t| format!(" to {}", fmt_ms(t))).unwrap_or_default(),
        total,
        rows.len(),
        began.elapsed().as_secs_f64()
    );
    for (p, (s, e, how)) in &rows {
        let k = kept.get(p).copied().unwrap_or_default();
        let back = match (k.first_ms, k.last_ms) {
            (Some(f), Some(l)) => format!(
                "; the partition keeps offsets {}..{}, ingested {} to {}",
                k.log_start,
                k.end,
                fmt_ms(f),
                fmt_ms(l)
            ),
            _ => format!(
                "; the partition keeps offsets {}..{} (empty)",
                k.log_start, k.end
            ),
        };
        crate::errln!(
            "  partition {p}: offsets {s}..{e} ({} records; start by {how}){back}",
            (e - s).max(0)
        );
    }
    let written: Written = Arc::default();
    let w2 = written.clone();
    let observer = Box::new(move |r: &WindowReport<'_>| {
        let mut w = w2.lock().unwrap();
        let e = w
            .entry((r.host.to_string(), r.source.to_string()))
            .or_insert((0, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 = e.1.min(r.value.start_ms);
        e.2 = e.2.max(r.value.start_ms);
    });
    let group = GroupConfig {
        brokers: a.kafka.brokers.clone(),
        topic: a.kafka.topic.clone(),
        group: "logpipe-replay".into(),
        extra,
        partitions: None,
    };
    let default_id = format!("replay-{}-{}", crate::hostname(), std::process::id());
    let cfg = AnalyzerConfig {
        commit_interval: Duration::from_secs(3600),
        replay: Some(replay.clone()),
        ..a.analysis.config(group, spec, formats, default_id)
    };
    // The process's switch: a signal stops the replay; reaching the end of
    // every partition finishes it.
    let shutdown = crate::shutdown()?;
    let control = Control::with_shutdown(shutdown.clone());
    let finished = Arc::new(AtomicBool::new(false));
    let progress = show_progress(control.clone(), &replay, finished.clone());
    let started = Instant::now();
    let result = logpipe_analyzer::run(cfg, sink, Some(observer), control.clone());
    finished.store(true, Ordering::Relaxed);
    let _ = progress.join();
    let counters = result?;
    let secs = started.elapsed().as_secs_f64();
    let w = written.lock().unwrap();
    let verb = if a.dry_run { "would write" } else { "wrote" };
    crate::errln!(
        "logpipe replay: read {} lines in {} records in {:.1} s ({:.0} lines/s): {} parsed, {} duplicates dropped, {} do not parse{}, {} late",
        counters.consumed,
        counters.records,
        secs,
        counters.consumed as f64 / secs.max(1e-3),
        counters.parsed,
        counters.duplicates,
        counters.dead_lettered,
        if a.dead_letter { " (sent to the dead-letter topic)" } else { " (not sent again; --dead-letter to send)" },
        counters.late,
    );
    crate::errln!(
        "logpipe replay: {verb} {} final windows of {} sources; {} windows straddle or lie outside the range and were left alone",
        w.values().map(|e| e.0).sum::<u64>(),
        w.len(),
        counters.windows_outside_range
    );
    let windows = w.values().map(|e| e.0).sum::<u64>();
    if let Some(why) = explain(&Outcome {
        by_time: a.from_offsets.is_none(),
        from_ms: a.from,
        to_ms: a.to,
        max_delay_ms: a.max_delay.as_millis() as i64,
        records_planned: total,
        lines: counters.consumed,
        parsed: counters.parsed,
        windows,
        outside: counters.windows_outside_range,
        max_event_ms: control.event_ms(),
        kept: &kept,
    }) {
        crate::errln!("logpipe replay: {why}");
    }
    if counters.offsets_skipped > 0 {
        crate::errln!(
            "logpipe replay: {} records were deleted by the broker before they were read (retention): the windows they fell in are short of their lines",
            counters.offsets_skipped
        );
    }
    if a.dry_run {
        for ((host, source), (n, first, last)) in w.iter() {
            crate::outln!(
                "{host}\t{source}\t{n} windows\t{} .. {}",
                fmt_ms(*first),
                fmt_ms(*last + spec.window_ms)
            );
        }
    }
    // The reader closed the output (`| head`): a stop it asked for.
    if shutdown.requested() == Some(Request::Stop) && !crate::output::closed() {
        bail!("interrupted: only windows closed before the interruption were written; run the same replay again to complete it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05T12:00:00Z.
    const NOW: i64 = 1_796_486_400_000;

    fn outcome(kept: &BTreeMap<i32, Kept>) -> Outcome<'_> {
        Outcome {
            by_time: true,
            from_ms: Some(NOW - 86_400_000),
            to_ms: Some(NOW),
            max_delay_ms: 60_000,
            records_planned: 0,
            lines: 0,
            parsed: 0,
            windows: 0,
            outside: 0,
            max_event_ms: None,
            kept,
        }
    }

    #[test]
    fn a_replay_that_writes_nothing_says_why() {
        let kept: BTreeMap<i32, Kept> = [(
            0,
            Kept {
                log_start: 0,
                end: 10,
                first_ms: Some(NOW - 3 * 86_400_000),
                last_ms: Some(NOW - 2 * 86_400_000),
            },
        )]
        .into();
        // Everything was ingested before the range: by ingest time, nothing.
        let why = explain(&outcome(&kept)).unwrap();
        assert!(
            why.contains("ingest time") && why.contains("--from-offsets earliest"),
            "{why}"
        );
        assert!(why.contains("2026-12-03T16:00:00.000Z"), "{why}");
        // Backfilled history: read in the range, but its windows lie outside.
        let mut o = outcome(&kept);
        (o.records_planned, o.lines, o.parsed, o.outside) = (10, 500, 500, 7);
        o.max_event_ms = Some(1_704_067_200_000);
        let why = explain(&o).unwrap();
        assert!(
            why.contains("7 windows left alone") && why.contains("2024-01-01"),
            "{why}"
        );
        assert!(why.contains("--from-offsets earliest"), "{why}");
        // Nothing parsed.
        o.parsed = 0;
        assert!(explain(&o)
            .unwrap()
            .contains("none of the 500 lines read parsed"));
        // Windows written: nothing to explain.
        o.windows = 3;
        assert!(explain(&o).is_none());
        // An empty topic, and one that retention emptied.
        let empty: BTreeMap<i32, Kept> = [(
            0,
            Kept {
                log_start: 40,
                end: 40,
                ..Kept::default()
            },
        )]
        .into();
        assert!(explain(&outcome(&empty))
            .unwrap()
            .contains("retention deleted all 40"));
    }

    #[test]
    fn from_offsets_is_earliest_or_a_partition_list() {
        assert_eq!(parse_from_offsets("earliest").unwrap(), None);
        assert_eq!(
            parse_from_offsets("0:10, 3:0").unwrap(),
            Some(vec![(0, 10), (3, 0)])
        );
        let e = parse_from_offsets("0=10").unwrap_err().to_string();
        assert!(e.contains("PARTITION:OFFSET"), "{e}");
        assert!(parse_from_offsets("x:1").is_err());
    }
}
