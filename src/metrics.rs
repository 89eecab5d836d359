//! `--metrics-addr`: what each long-running role exposes to Prometheus and
//! how it answers `/ready` (the server is `logpipe-metrics`).
//!
//! Names follow Prometheus' conventions: `logpipe_<role>_<what>`, a unit
//! suffix where there is one (`_bytes`, `_seconds`), `_total` on counters.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::Result;
use logpipe_metrics::prometheus_client::registry::Unit;
use logpipe_metrics::{Out, Probe, Scrape};

/// Starts the endpoint when `addr` is given; an address that cannot be
/// bound is an error now.
pub fn serve(addr: Option<&str>, role: &str, scrape: Scrape, ready: Probe) -> Result<()> {
    if let Some(addr) = addr {
        logpipe_metrics::serve(addr, role, scrape, ready)?;
    }
    Ok(())
}

fn records() -> Option<Unit> {
    Some(Unit::Other("records".into()))
}

/// The producer's counters ([`logpipe_producer::Stats`]).
pub fn producer(stats: Arc<logpipe_producer::Stats>) -> (Scrape, Probe) {
    let ready = stats.clone();
    let scrape: Scrape = Box::new(move |o: &mut Out<'_>| {
        let s = stats.snapshot();
        let p = "producer_";
        o.counter(
            &format!("{p}lines_read"),
            "Lines read from the inputs",
            s.lines_read,
        )?;
        o.counter_in(
            &format!("{p}read"),
            "Bytes of lines read from the inputs",
            Some(Unit::Bytes),
            s.bytes_read,
        )?;
        o.counter(
            &format!("{p}lines_sent"),
            "Lines handed to the Kafka client",
            stats.lines_sent.load(Relaxed),
        )?;
        o.counter(
            &format!("{p}records_sent"),
            "Kafka records handed to the Kafka client",
            stats.records_sent.load(Relaxed),
        )?;
        o.counter(
            &format!("{p}lines_acked"),
            "Lines Kafka acknowledged (what a checkpoint may move past)",
            s.lines_acked,
        )?;
        o.counter_in(
            &format!("{p}acked"),
            "Bytes of lines Kafka acknowledged",
            Some(Unit::Bytes),
            stats.acked.bytes.load(Relaxed),
        )?;
        o.gauge(
            &format!("{p}lines_in_flight"),
            "Lines read and not yet acknowledged",
            None,
            s.in_flight as i64,
        )?;
        o.gauge(
            &format!("{p}in_flight"),
            "Bytes read and not yet acknowledged",
            Some(Unit::Bytes),
            s.in_flight_bytes as i64,
        )?;
        o.gauge(
            &format!("{p}in_flight_peak"),
            "The most bytes in flight at once",
            Some(Unit::Bytes),
            s.in_flight_bytes_peak as i64,
        )?;
        o.counter(
            &format!("{p}files_followed"),
            "Files started to be followed",
            s.files_followed,
        )?;
        o.counter(
            &format!("{p}rotations"),
            "Followed files found renamed or replaced",
            s.rotations,
        )?;
        o.counter(
            &format!("{p}truncations"),
            "Followed files found truncated",
            s.truncations,
        )?;
        o.counter(
            &format!("{p}deletions"),
            "Followed files found deleted",
            s.deletions,
        )?;
        o.counter(
            &format!("{p}lines_cut"),
            "Lines longer than --max-line-bytes, sent cut",
            s.lines_cut,
        )?;
        o.counter(
            &format!("{p}partial_lines"),
            "Incomplete lines sent after --partial-line-timeout or at the end of input",
            s.partial_lines,
        )?;
        o.counter(
            &format!("{p}kafka_outages"),
            "Times a Kafka broker became unreachable",
            s.outages,
        )?;
        o.counter_in(
            &format!("{p}paused"),
            "Time reading waited for room under --max-in-flight",
            Some(Unit::Seconds),
            s.paused_ms as f64 / 1000.0,
        )?;
        o.counter(&format!("{p}records_refused"), "Python logging records not published (refused by the safe decoder, too large, or not a record)", s.records_refused)
    });
    (scrape, Box::new(move || ready.ready()))
}

/// The analyzers' counters, lag per partition and write state
/// ([`logpipe_analyzer::Control::status`]), summed over the analyzers of
/// the process.
pub fn analyzer(control: Arc<logpipe_analyzer::Control>) -> (Scrape, Probe) {
    let ready = control.clone();
    let scrape: Scrape = Box::new(move |o: &mut Out<'_>| {
        let status = control.status();
        let mut c = logpipe_analyzer::Counters::default();
        let mut lag = Vec::new();
        let mut failing = 0;
        for (_, s) in &status {
            c.add(&s.counters);
            lag.extend(
                s.lag
                    .iter()
                    .filter_map(|(p, l)| Some((p.to_string(), (*l)? as i64))),
            );
            failing += i64::from(s.write_error.is_some());
        }
        let owned: i64 = status.iter().map(|(_, s)| s.lag.len() as i64).sum();
        let p = "analyzer_";
        o.counter(
            &format!("{p}records_consumed"),
            "Kafka records consumed from owned partitions",
            c.records,
        )?;
        o.counter(
            &format!("{p}lines_consumed"),
            "Lines consumed (a v2 record holds many)",
            c.consumed,
        )?;
        o.counter(
            &format!("{p}lines_parsed"),
            "Lines parsed into a request or an application record",
            c.parsed,
        )?;
        let k = c.dead_letter_kinds;
        o.counters_by(
            &format!("{p}lines_dead_lettered"),
            "Lines sent to the dead-letter topic, by why",
            "kind",
            &[
                ("malformed".into(), k.malformed),
                ("cut".into(), k.cut),
                ("damaged".into(), k.damaged),
                ("unjoined".into(), k.unjoined),
            ],
        )?;
        o.counter(
            &format!("{p}lines_duplicate"),
            "Lines dropped as producer re-sends",
            c.duplicates,
        )?;
        o.counter(
            &format!("{p}lines_counted"),
            "Parsed lines added to an open window",
            c.counted,
        )?;
        o.counter(
            &format!("{p}lines_late"),
            "Parsed lines whose window had already closed",
            c.late,
        )?;
        o.counter(
            &format!("{p}lines_replayed"),
            "Lines re-read after a restore whose window was already final",
            c.replayed,
        )?;
        o.counter(
            &format!("{p}pieces"),
            "Records that were pieces of a line joined later",
            c.pieces,
        )?;
        o.counter(
            &format!("{p}continuation_lines"),
            "Lines that continued an application record",
            c.continuation_lines,
        )?;
        o.counter(
            &format!("{p}windows_written"),
            "Final windows the sink accepted",
            c.windows_written,
        )?;
        o.counter(
            &format!("{p}sketches_published"),
            "Final windows' sketch records handed to the fleet topic",
            c.sketches_published,
        )?;
        o.counter(
            &format!("{p}write_retries"),
            "Sink writes that failed and were retried",
            c.write_retries,
        )?;
        o.counter(
            &format!("{p}offsets_skipped"),
            "Offsets the broker deleted before they were read",
            c.offsets_skipped,
        )?;
        o.gauges_by(
            &format!("{p}lag"),
            "Records on the broker not consumed yet, per owned partition",
            records(),
            "partition",
            &lag,
        )?;
        o.gauge(
            &format!("{p}partitions_owned"),
            "Partitions owned now",
            None,
            owned,
        )?;
        o.gauge(
            &format!("{p}writes_failing"),
            "Analyzers whose writes fail now (consuming paused)",
            None,
            failing,
        )
    });
    (scrape, Box::new(move || ready.ready()))
}

/// The archive's progress ([`logpipe_archive::Progress`]).
pub fn archive(progress: Arc<logpipe_archive::Progress>) -> (Scrape, Probe) {
    let ready = progress.clone();
    let scrape: Scrape = Box::new(move |o: &mut Out<'_>| {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        let p = "archive_";
        o.counter(
            &format!("{p}lines_archived"),
            "Lines written to the archive",
            g(&progress.archived),
        )?;
        o.counter(
            &format!("{p}lines_duplicate"),
            "Lines dropped as producer re-sends",
            g(&progress.duplicates),
        )?;
        o.counter(
            &format!("{p}offsets_skipped"),
            "Offsets the broker deleted before they were read",
            g(&progress.offsets_skipped),
        )?;
        o.gauge(
            &format!("{p}open_files"),
            "Day files open now",
            None,
            g(&progress.open_files) as i64,
        )?;
        o.gauge(
            &format!("{p}partitions_owned"),
            "Partitions owned now",
            None,
            g(&progress.partitions) as i64,
        )
    });
    let probe: Probe = Box::new(move || {
        if ready.partitions.load(Relaxed) == 0 {
            Err("no partitions assigned (not joined yet, a rebalance under way, or more members than partitions)".into())
        } else {
            Ok(())
        }
    });
    (scrape, probe)
}

/// A rollup member's counters ([`logpipe_analyzer::rollup::RollupStatus`]).
pub fn rollup(
    status: Arc<std::sync::Mutex<logpipe_analyzer::rollup::RollupStatus>>,
) -> (Scrape, Probe) {
    let ready = status.clone();
    let scrape: Scrape = Box::new(move |o: &mut Out<'_>| {
        let s = status.lock().unwrap().clone();
        let c = s.counters;
        let p = "rollup_";
        o.counter(
            &format!("{p}records_read"),
            "Fleet records (source-window sketches) read",
            c.records,
        )?;
        o.counter(
            &format!("{p}records_rejected"),
            "Records that are not sketches this rollup reads, or of another window length",
            c.rejected,
        )?;
        o.counter(
            &format!("{p}records_replaced"),
            "Records replacing a held record of the same source and window",
            c.replaced,
        )?;
        o.counter(
            &format!("{p}records_too_old"),
            "Records of windows already written and forgotten (older than --keep)",
            c.too_old,
        )?;
        o.counter(
            &format!("{p}records_replayed"),
            "Records re-read after a restore whose window was already forgotten",
            c.replayed,
        )?;
        o.counter(
            &format!("{p}windows_graced"),
            "Windows written without every expected source, after --grace",
            c.windows_graced,
        )?;
        o.counter(
            &format!("{p}points_written"),
            "Fleet points the sink accepted (a rewrite counts again)",
            c.points_written,
        )?;
        o.counter(
            &format!("{p}write_retries"),
            "Sink writes that failed and were retried",
            c.write_retries,
        )?;
        o.gauge(
            &format!("{p}windows_held"),
            "Windows held for rewrites or waiting for sources",
            None,
            s.windows_held as i64,
        )?;
        o.gauge(
            &format!("{p}partitions_owned"),
            "Partitions of the fleet topic owned now",
            None,
            s.owned as i64,
        )?;
        o.gauge(
            &format!("{p}writes_failing"),
            "1 while writes fail",
            None,
            i64::from(s.write_error.is_some()),
        )
    });
    (scrape, Box::new(move || ready.lock().unwrap().ready()))
}
