//! A flush, planned without I/O: which window values and restore points of
//! the owned partitions go into the next write, and its line protocol.
//!
//! The shell (`run`) then writes the batch, and only after the sink accepted
//! it marks the restore points written and commits.

use std::collections::{BTreeMap, HashMap};

use super::ingest::Part;
use crate::line_protocol;
use crate::parse::sources::SourceTable;
use crate::replay::Replay;
use crate::window::{RestorePoint, SourceId, WindowSpec, WindowValue};

/// What the sink has not accepted yet: the pending write, retried as a
/// whole, newest values win.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) windows: BTreeMap<(i32, SourceId, i64), WindowValue>,
    /// Per partition, the restore point to store, with the sources whose max
    /// changed since the last accepted write.
    pub(super) state: BTreeMap<i32, RestorePoint<String>>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.state.is_empty()
    }

    pub(super) fn drop_partitions(&mut self, ps: &[i32]) {
        self.windows.retain(|k, _| !ps.contains(&k.0));
        self.state.retain(|p, _| !ps.contains(p));
    }

    /// Final windows in the batch.
    pub(super) fn finals(&self) -> impl Iterator<Item = &WindowValue> {
        self.windows.values().filter(|v| v.is_final)
    }

    /// The batch's window points as line protocol (restore points are the
    /// sink's to encode, after them).
    pub(super) fn encode(&self, sources: &SourceTable, spec: WindowSpec, out: &mut Vec<u8>) {
        for v in self.windows.values() {
            let n = sources.name(v.source);
            if v.app.is_some() {
                line_protocol::encode_app(out, n.host.as_bytes(), n.source.as_bytes(), v);
                line_protocol::encode_anomalies(out, n.host.as_bytes(), n.source.as_bytes(), v);
                continue;
            }
            line_protocol::encode_window(
                out,
                n.host.as_bytes(),
                n.source.as_bytes(),
                spec.window_ms,
                v,
            );
            line_protocol::encode_top(out, n.host.as_bytes(), n.source.as_bytes(), v);
            line_protocol::encode_anomalies(out, n.host.as_bytes(), n.source.as_bytes(), v);
        }
    }
}

/// Moves into `batch` every closed window (every window, as final, with
/// `close_all`), every open window's changed partial value, and the restore
/// point each partition's windows allow when it changed since the last
/// accepted write. A replay takes final windows inside its range only and
/// no restore points. Returns the windows a replay left out (outside its
/// range).
pub(super) fn plan(
    parts: &mut HashMap<i32, Part>,
    sources: &SourceTable,
    spec: WindowSpec,
    replay: Option<&Replay>,
    close_all: bool,
    batch: &mut Pending,
) -> u64 {
    let mut outside = 0;
    let mut values = Vec::new();
    let mut changed = Vec::new();
    for (&partition, part) in parts.iter_mut() {
        values.clear();
        changed.clear();
        if let Some(r) = replay {
            part.windows.drain(false, close_all, &mut values);
            for v in &values {
                if r.range.holds_window(v.start_ms, spec.window_ms) {
                    batch
                        .windows
                        .insert((partition, v.source, v.start_ms), v.clone());
                } else {
                    outside += 1;
                }
            }
            continue;
        }
        part.windows.drain(true, close_all, &mut values);
        part.windows.take_changed_sources(&mut changed);
        for v in &values {
            batch
                .windows
                .insert((partition, v.source, v.start_ms), v.clone());
        }
        let Some(point) = part.windows.restore_point() else {
            continue;
        };
        if changed.is_empty()
            && part.written == Some((point.offset, point.next_offset))
            && !batch.state.contains_key(&partition)
        {
            continue;
        }
        let u = batch.state.entry(partition).or_default();
        u.offset = point.offset;
        u.next_offset = point.next_offset;
        for &(s, m) in &changed {
            let key = sources.key(s);
            match u.max_event_ms.iter_mut().find(|(k, _)| k == key) {
                Some(e) => e.1 = m,
                None => u.max_event_ms.push((key.to_string(), m)),
            }
            // A source's windows close only when its max moves, so its
            // baseline changed only if it is here; stored in the same point.
            if let Some(b) = part.windows.baseline_text(s) {
                match u.baselines.iter_mut().find(|(k, _)| k == key) {
                    Some(e) => e.1 = b,
                    None => u.baselines.push((key.to_string(), b)),
                }
            }
            // Its template history, when a final window added to it.
            if let Some(t) = part.windows.take_history_text(s) {
                match u.templates.iter_mut().find(|(k, _)| k == key) {
                    Some(e) => e.1 = t,
                    None => u.templates.push((key.to_string(), t)),
                }
            }
        }
    }
    outside
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::parse::{Formats, Parser};
    use crate::replay::Range;
    use crate::window::{Hit, PartitionWindows};

    const SPEC: WindowSpec = WindowSpec {
        window_ms: 10_000,
        lateness_ms: 0,
        error_status: 500,
        error_level: crate::parse::Level::Error,
        top: crate::top::TopSpec::DEFAULT,
        anomaly: Some(crate::anomaly::AnomalySpec::DEFAULT),
    };

    fn setup() -> (HashMap<i32, Part>, SourceTable, SourceId) {
        let mut sources =
            SourceTable::new(Arc::new(Formats::single(Parser::new("combined").unwrap())));
        let s = sources.id_of_key(&logpipe_wire::record_key("web1", "/var/log/a.log"));
        let part = Part::new(PartitionWindows::new(SPEC), 16, 1_000, Some(0), 0);
        (HashMap::from([(3, part)]), sources, s)
    }

    fn hit(parts: &mut HashMap<i32, Part>, source: SourceId, offset: i64, time_ms: i64) {
        let line: &[u8] =
            b"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] \"GET /a HTTP/1.1\" 200 5 \"-\" \"curl\"";
        let mut l = crate::parse::parse_combined(line).unwrap();
        l.time_ms = time_ms;
        let w = &mut parts.get_mut(&3).unwrap().windows;
        w.record(&Hit::from_line(source, &l, offset));
    }

    #[test]
    fn a_flush_carries_closed_and_partial_windows_and_the_restore_point_once() {
        let (mut parts, sources, s) = setup();
        hit(&mut parts, s, 0, 1_000);
        hit(&mut parts, s, 1, 12_000);
        let mut batch = Pending::default();
        assert_eq!(plan(&mut parts, &sources, SPEC, None, false, &mut batch), 0);
        let finals: Vec<i64> = batch.finals().map(|v| v.start_ms).collect();
        assert_eq!(
            finals,
            vec![0],
            "the first window closed at the second's line"
        );
        assert_eq!(
            batch.windows.len(),
            2,
            "the second window's partial value too"
        );
        let p = &batch.state[&3];
        assert_eq!((p.offset, p.next_offset), (1, 2));
        assert_eq!(p.max_event_ms, vec![(sources.key(s).to_string(), 12_000)]);
        let mut lp = Vec::new();
        batch.encode(&sources, SPEC, &mut lp);
        let text = String::from_utf8(lp).unwrap();
        let count = |m: &str| text.lines().filter(|l| l.starts_with(m)).count();
        assert_eq!(count("access_log,"), 2, "{text}");
        // Per window: path, client and user agent (the referrer is `-`).
        assert_eq!(count("access_top,"), 6, "{text}");
        assert_eq!(text.lines().count(), 8, "{text}");
        assert!(text.contains("host=web1"), "{text}");

        // Accepted: nothing changed since, so the next flush has nothing.
        parts.get_mut(&3).unwrap().written = Some((p.offset, p.next_offset));
        let mut next = Pending::default();
        plan(&mut parts, &sources, SPEC, None, false, &mut next);
        assert!(next.is_empty(), "{next:?}");

        // The end of input closes the open window as final.
        plan(&mut parts, &sources, SPEC, None, true, &mut next);
        assert_eq!(
            next.finals().map(|v| v.start_ms).collect::<Vec<_>>(),
            vec![10_000]
        );
        let p = &next.state[&3];
        assert_eq!((p.offset, p.next_offset), (2, 2), "nothing open any more");
        next.drop_partitions(&[3]);
        assert!(next.is_empty());
    }

    #[test]
    fn a_replay_writes_final_windows_inside_its_range_and_no_restore_point() {
        let (mut parts, sources, s) = setup();
        for (o, t) in [(0, 1_000), (1, 12_000), (2, 25_000)] {
            hit(&mut parts, s, o, t);
        }
        let replay = Replay {
            range: Range {
                from_ms: Some(10_000),
                to_ms: None,
            },
            ..Replay::default()
        };
        let mut batch = Pending::default();
        let outside = plan(&mut parts, &sources, SPEC, Some(&replay), true, &mut batch);
        assert_eq!(outside, 1, "the window at 0 is before the range");
        let starts: Vec<i64> = batch.windows.values().map(|v| v.start_ms).collect();
        assert_eq!(starts, vec![10_000, 20_000]);
        assert!(batch.finals().count() == 2 && batch.state.is_empty());
    }
}
