//! Restore points as stored next to the data — see docs/design.md, "Where the
//! restore point lives".
//!
//! In InfluxDB, per (group, topic, partition):
//!
//! ```text
//! logpipe_state,group=G,partition=P,topic=T analyzer="a1",next_offset=812i,restore_offset=640i 0
//! logpipe_state_source,group=G,partition=P,src=web1:/var/log/a.log,topic=T max_event_ms=1704067290000i,next_offset=812i 0
//! ```
//!
//! All at timestamp 0, so each write replaces the previous value of its series
//! and the state never grows with time. A source's point is written only when
//! its max event time changed; the latest value of every series together is
//! the restore point. These lines are appended after the window points of the
//! same request, so a restore point is never stored before the windows it
//! vouches for.

use std::collections::HashMap;

use crate::line_protocol::{push_int, push_tag};
use crate::store::{Scope, StateBatch, StoredPoint};

/// Measurement of the per-partition restore offsets.
pub const STATE: &str = "logpipe_state";
/// Measurement of the per-source max event times.
pub const STATE_SOURCE: &str = "logpipe_state_source";

fn push_scope_tags(out: &mut Vec<u8>, scope: &Scope, partition: i32) {
    out.extend_from_slice(b",group=");
    push_tag(out, scope.group.as_bytes());
    out.extend_from_slice(b",partition=");
    out.extend_from_slice(itoa::Buffer::new().format(partition).as_bytes());
}

/// Appends the batch's state points as line protocol.
pub fn encode(out: &mut Vec<u8>, st: &StateBatch<'_>) {
    for (&partition, u) in st.points {
        for (key, m) in &u.max_event_ms {
            out.extend_from_slice(STATE_SOURCE.as_bytes());
            push_scope_tags(out, st.scope, partition);
            out.extend_from_slice(b",src=");
            push_tag(out, if key.is_empty() { b"-" } else { key.as_bytes() });
            out.extend_from_slice(b",topic=");
            push_tag(out, st.scope.topic.as_bytes());
            out.push(b' ');
            if let Some((_, b)) = u.baselines.iter().find(|(k, _)| k == key) {
                // Base-10 numbers and `;` `,` only: nothing to escape.
                out.extend_from_slice(b"baseline=\"");
                out.extend_from_slice(b.as_bytes());
                out.extend_from_slice(b"\",");
            }
            push_int(out, "max_event_ms", *m);
            out.push(b',');
            push_int(out, "next_offset", u.next_offset);
            if let Some((_, t)) = u.templates.iter().find(|(k, _)| k == key) {
                // `t1:` and hex digits: nothing to escape. Written only when
                // it changed; the point's other writes leave it as it is
                // (InfluxDB merges the fields of one series and time).
                out.extend_from_slice(b",templates=\"");
                out.extend_from_slice(t.as_bytes());
                out.push(b'"');
            }
            out.extend_from_slice(b" 0\n");
        }
        out.extend_from_slice(STATE.as_bytes());
        push_scope_tags(out, st.scope, partition);
        out.extend_from_slice(b",topic=");
        push_tag(out, st.scope.topic.as_bytes());
        out.extend_from_slice(b" analyzer=\"");
        for c in st.analyzer.bytes() {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.extend_from_slice(b"\",");
        push_int(out, "next_offset", u.next_offset);
        out.push(b',');
        push_int(out, "restore_offset", u.offset);
        out.extend_from_slice(b" 0\n");
    }
}

/// `"name"` for InfluxQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The two InfluxQL queries that read a scope's restore points.
pub fn queries(scope: &Scope) -> (String, String) {
    let filter = format!(
        "WHERE \"group\" = {} AND \"topic\" = {}",
        quote_str(&scope.group),
        quote_str(&scope.topic)
    );
    (
        format!("SELECT \"restore_offset\", \"next_offset\" FROM \"{STATE}\" {filter} GROUP BY \"partition\""),
        format!("SELECT \"max_event_ms\", \"next_offset\", \"baseline\", \"templates\" FROM \"{STATE_SOURCE}\" {filter} GROUP BY \"partition\", \"src\""),
    )
}

/// Builds restore points from the two queries' series (JSON as InfluxDB
/// answers), keeping only `partitions`.
pub fn from_series(
    parts: &[serde_json::Value],
    sources: &[serde_json::Value],
    partitions: &[i32],
) -> HashMap<i32, StoredPoint> {
    let partition_of = |s: &serde_json::Value| -> Option<i32> {
        let p: i32 = s["tags"]["partition"].as_str()?.parse().ok()?;
        partitions.contains(&p).then_some(p)
    };
    // The newest row: time, then the selected fields.
    fn last_row(s: &serde_json::Value) -> Option<&[serde_json::Value]> {
        Some(s["values"].as_array()?.last()?.as_array()?)
    }
    // A missing field (a point from before the field existed) reads as -1.
    let int = |v: &serde_json::Value| v.as_i64().unwrap_or(-1);
    let mut out: HashMap<i32, StoredPoint> = HashMap::new();
    for s in parts {
        if let (Some(p), Some([_, offset, next_offset])) = (partition_of(s), last_row(s)) {
            let e = out.entry(p).or_default();
            e.offset = int(offset);
            e.next_offset = int(next_offset);
        }
    }
    for s in sources {
        if let (Some(p), Some(row)) = (partition_of(s), last_row(s)) {
            let key = s["tags"]["src"].as_str().unwrap_or_default().to_string();
            // Source points without a partition point are not trusted: the
            // request that wrote them did not complete.
            if let (Some(e), [_, m, at, rest @ ..]) = (out.get_mut(&p), row) {
                if int(at) > e.next_offset {
                    e.ahead.push((key.clone(), int(at)));
                }
                if let Some(b) = rest.first().and_then(|b| b.as_str()) {
                    e.baselines.push((key.clone(), b.to_string()));
                }
                if let Some(t) = rest.get(1).and_then(|t| t.as_str()) {
                    e.templates.push((key.clone(), t.to_string()));
                }
                e.max_event_ms.push((key, int(m)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::scope;
    use std::collections::BTreeMap;

    #[test]
    fn state_lines_are_exact_and_escaped() {
        let s = scope();
        let points = BTreeMap::from([(
            3,
            StoredPoint {
                offset: 640,
                next_offset: 812,
                max_event_ms: vec![("web 1:/var/log/a,b.log".into(), 1_704_067_290_000)],
                ahead: vec![],
                baselines: vec![("web 1:/var/log/a,b.log".into(), "1;20;3,4;0.5;".into())],
                templates: vec![(
                    "web 1:/var/log/a,b.log".into(),
                    "t1:00000000000000ff".into(),
                )],
            },
        )]);
        let mut out = vec![];
        encode(
            &mut out,
            &StateBatch {
                scope: &s,
                analyzer: "a\"1",
                points: &points,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "logpipe_state_source,group=logpipe-analyzers,partition=3,src=web\\ 1:/var/log/a\\,b.log,topic=logs baseline=\"1;20;3,4;0.5;\",max_event_ms=1704067290000i,next_offset=812i,templates=\"t1:00000000000000ff\" 0\n\
             logpipe_state,group=logpipe-analyzers,partition=3,topic=logs analyzer=\"a\\\"1\",next_offset=812i,restore_offset=640i 0\n"
        );
    }

    #[test]
    fn restore_points_round_trip_through_influx_json() {
        let parts: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"name":"logpipe_state","tags":{"partition":"3"},"columns":["time","restore_offset","next_offset"],"values":[[0,640,812]]},
                {"name":"logpipe_state","tags":{"partition":"4"},"columns":["time","restore_offset","next_offset"],"values":[[0,1,2]]}]"#,
        )
        .unwrap();
        let srcs: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"name":"logpipe_state_source","tags":{"partition":"3","src":"web 1:/a"},"columns":["time","max_event_ms","next_offset","baseline","templates"],"values":[[0,1704067290000,700,"1;;;;","t1:"]]},
                {"name":"logpipe_state_source","tags":{"partition":"3","src":"zombie"},"columns":["time","max_event_ms","next_offset"],"values":[[0,1704067300000,900]]},
                {"name":"logpipe_state_source","tags":{"partition":"3","src":"old"},"columns":["time","max_event_ms","next_offset"],"values":[[0,1704067280000,null]]},
                {"name":"logpipe_state_source","tags":{"partition":"5","src":"orphan"},"columns":["time","max_event_ms","next_offset"],"values":[[0,1,1]]}]"#,
        )
        .unwrap();
        let got = from_series(&parts, &srcs, &[3, 5]);
        assert_eq!(
            got.len(),
            1,
            "partition 4 not asked for, 5 has no partition point"
        );
        assert_eq!(
            got[&3],
            StoredPoint {
                offset: 640,
                next_offset: 812,
                max_event_ms: vec![
                    ("web 1:/a".into(), 1_704_067_290_000),
                    ("zombie".into(), 1_704_067_300_000),
                    ("old".into(), 1_704_067_280_000),
                ],
                ahead: vec![("zombie".into(), 900)],
                baselines: vec![("web 1:/a".into(), "1;;;;".into())],
                templates: vec![("web 1:/a".into(), "t1:".into())],
            }
        );
    }
}
