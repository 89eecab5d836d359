//! InfluxDB line protocol encoding of window points — pure, tested against
//! exact strings.
//!
//! Every point carries the full field set: InfluxDB merges a write with fewer
//! fields into the existing point instead of replacing it, so a partial field
//! set would leave stale values behind.

use crate::top::TopLists;
use crate::window::{Metrics, WindowValue};

/// Measurement of the per-window traffic points.
pub const ACCESS_LOG: &str = "access_log";
/// Measurement of the windows a source's baseline flags.
pub const ACCESS_ANOMALY: &str = "access_anomaly";
/// Measurement of the per-window top-K keys.
pub const ACCESS_TOP: &str = "access_top";
/// Measurement of an application log's per-window records.
pub const APP_LOG: &str = "app_log";
/// Measurement of records per logger and level.
pub const APP_LEVEL: &str = "app_level";
/// Measurement of the per-window top templates per level.
pub const APP_TEMPLATE: &str = "app_template";
/// Measurement of the templates first seen in a source's history.
pub const APP_TEMPLATE_NEW: &str = "app_template_new";
/// Measurement of the application windows a source's baseline flags.
pub const APP_ANOMALY: &str = "app_anomaly";
/// Measurement of the fleet roll-up's merged windows.
pub const ACCESS_FLEET: &str = "access_fleet";
/// Measurement of the fleet roll-up's top-K keys.
pub const ACCESS_FLEET_TOP: &str = "access_fleet_top";
/// Measurement of the analyzers' own health.
pub const SELF_METRICS: &str = "logpipe";

/// Appends `s` escaped as a tag key or value (`,`, `=`, space and `\` escaped;
/// line breaks, which line protocol cannot carry, become `\n` / `\r` text).
pub fn push_tag(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b',' | b'=' | b' ' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

pub(crate) fn push_int(out: &mut Vec<u8>, name: &str, v: impl itoa::Integer) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    out.push(b'i');
}

fn push_float(out: &mut Vec<u8>, name: &str, v: f64) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    // `{}` on f64 prints the shortest string that round-trips; never NaN here.
    out.extend_from_slice(format!("{v}").as_bytes());
}

/// Encodes one `access_log` point; the timestamp is the window start in ns.
pub fn encode_window(
    out: &mut Vec<u8>,
    host: &[u8],
    source: &[u8],
    window_ms: i64,
    v: &WindowValue,
) {
    encode_metrics(
        out,
        ACCESS_LOG,
        &[("host", host), ("source", source)],
        window_ms,
        v.start_ms,
        &v.metrics,
        &[],
    );
}

/// Appends `,name=value` for every tag (an empty value as `-`).
fn push_tags(out: &mut Vec<u8>, tags: &[(&str, &[u8])]) {
    for &(name, value) in tags {
        out.push(b',');
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        push_tag(out, if value.is_empty() { b"-" } else { value });
    }
}

/// Encodes one window's traffic point in `measurement` with `tags` (sorted
/// by name) and, after the window's fields, the integer fields `extra`.
pub fn encode_metrics(
    out: &mut Vec<u8>,
    measurement: &str,
    tags: &[(&str, &[u8])],
    window_ms: i64,
    start_ms: i64,
    m: &Metrics,
    extra: &[(&str, u64)],
) {
    out.extend_from_slice(measurement.as_bytes());
    push_tags(out, tags);
    out.push(b' ');
    push_int(out, "count", m.count);
    out.push(b',');
    push_float(
        out,
        "error_rate",
        if m.count == 0 {
            0.0
        } else {
            m.errors as f64 / m.count as f64
        },
    );
    out.push(b',');
    push_float(out, "qps", m.count as f64 * 1000.0 / window_ms as f64);
    for (i, n) in m.status.iter().enumerate() {
        out.push(b',');
        push_int(
            out,
            [
                "status_1xx",
                "status_2xx",
                "status_3xx",
                "status_4xx",
                "status_5xx",
            ][i],
            *n,
        );
    }
    out.push(b',');
    push_int(out, "traffic", m.traffic);
    out.push(b',');
    push_int(out, "unique_clients", m.unique_clients);
    if let Some(l) = &m.latency {
        for (name, v) in [
            ("latency_max", l.max),
            ("latency_p50", l.p50),
            ("latency_p90", l.p90),
            ("latency_p99", l.p99),
        ] {
            out.push(b',');
            push_float(out, name, v);
        }
    }
    for &(name, v) in extra {
        out.push(b',');
        push_int(out, name, v);
    }
    out.push(b' ');
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(i128::from(start_ms) * 1_000_000)
            .as_bytes(),
    );
    out.push(b'\n');
}

/// Appends `s` as the inside of a line-protocol string field (`"` and `\`
/// escaped; line breaks as `\n` / `\r` text, as in tags).
fn push_string_field(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Encodes a window's `access_top` points: one per dimension and rank
/// (tags `host`, `source`, `dim`, `rank`; fields `key`, `count`, `error`,
/// and `total`, the lines the dimension counted in the window), all at the
/// window start. Within a window the ranks a dimension fills only grow (a
/// summary never forgets a key without taking another), so each write
/// replaces every point the previous one wrote.
pub fn encode_top(out: &mut Vec<u8>, host: &[u8], source: &[u8], v: &WindowValue) {
    let Some(top) = &v.top else {
        return;
    };
    encode_top_lists(
        out,
        ACCESS_TOP,
        &[("host", host), ("source", source)],
        v.start_ms,
        top,
    );
}

/// Encodes ranked keys in `measurement`: tags `dim`, `tags` (sorted by
/// name, none before `dim`) and `rank` in its sorted place.
pub fn encode_top_lists(
    out: &mut Vec<u8>,
    measurement: &str,
    tags: &[(&str, &[u8])],
    start_ms: i64,
    top: &TopLists,
) {
    let ts = i128::from(start_ms) * 1_000_000;
    let split = tags.partition_point(|&(name, _)| name < "rank");
    for (dim, total, entries) in &top.dims {
        for (rank, e) in entries.iter().enumerate() {
            out.extend_from_slice(measurement.as_bytes());
            out.extend_from_slice(b",dim=");
            out.extend_from_slice(dim.name().as_bytes());
            push_tags(out, &tags[..split]);
            out.extend_from_slice(b",rank=");
            out.extend_from_slice(itoa::Buffer::new().format(rank + 1).as_bytes());
            push_tags(out, &tags[split..]);
            out.push(b' ');
            push_int(out, "count", e.count);
            out.push(b',');
            push_int(out, "error", e.error);
            out.extend_from_slice(b",key=\"");
            push_string_field(out, e.key.as_bytes());
            out.extend_from_slice(b"\",");
            push_int(out, "total", *total);
            out.push(b' ');
            out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
            out.push(b'\n');
        }
    }
}

/// Encodes a final window's `access_anomaly` points, one per flagged metric
/// (tags `host`, `metric`, `source`; fields `baseline`, `direction`,
/// `score`, `value`) at the window start.
///
/// An application log's go to `app_anomaly`, its metrics named `records`
/// and `error_share`.
pub fn encode_anomalies(out: &mut Vec<u8>, host: &[u8], source: &[u8], v: &WindowValue) {
    let ts = i128::from(v.start_ms) * 1_000_000;
    let app = v.app.is_some();
    for a in &v.anomalies {
        out.extend_from_slice(if app { APP_ANOMALY } else { ACCESS_ANOMALY }.as_bytes());
        out.extend_from_slice(b",host=");
        push_tag(out, if host.is_empty() { b"-" } else { host });
        if let Some(l) = &a.logger {
            out.extend_from_slice(b",logger=");
            push_tag(out, if l.is_empty() { b"-" } else { l.as_bytes() });
        }
        out.extend_from_slice(b",metric=");
        let metric = match (app, a.metric) {
            (true, crate::anomaly::Metric::Requests) => "records",
            (true, crate::anomaly::Metric::ErrorRate) => "error_share",
            (_, m) => m.name(),
        };
        out.extend_from_slice(metric.as_bytes());
        out.extend_from_slice(b",source=");
        push_tag(out, if source.is_empty() { b"-" } else { source });
        out.push(b' ');
        push_float(out, "baseline", a.baseline);
        out.extend_from_slice(b",direction=\"");
        out.extend_from_slice(a.direction.name().as_bytes());
        out.extend_from_slice(b"\",");
        push_float(out, "score", a.score);
        out.push(b',');
        push_float(out, "value", a.value);
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
        out.push(b'\n');
    }
}

/// Encodes an application log's window: one `app_log` point (tags `host`,
/// `source`; fields `records`, `lines`, `errors`, `error_share`), an
/// `app_level` point per logger and level with records (field `count`),
/// and `app_template` points per level and rank (fields `template`,
/// `template_id`, `count`, `error`, `total`), all at the window start.
/// Within a window the (logger, level) pairs and the ranks only grow, so
/// each write replaces every point the previous one wrote. A final window
/// also gets an `app_template_new` point per template its source had not
/// had before (tags `host`, `level`, `n`, `source`; fields `template`,
/// `template_id`, `count`).
pub fn encode_app(out: &mut Vec<u8>, host: &[u8], source: &[u8], v: &WindowValue) {
    let Some(app) = &v.app else {
        return;
    };
    let host = if host.is_empty() { &b"-"[..] } else { host };
    let source = if source.is_empty() { &b"-"[..] } else { source };
    let ts = i128::from(v.start_ms) * 1_000_000;
    let mut ts_buf = itoa::Buffer::new();
    let ts = ts_buf.format(ts).as_bytes();
    let m = &v.metrics;
    out.extend_from_slice(APP_LOG.as_bytes());
    out.extend_from_slice(b",host=");
    push_tag(out, host);
    out.extend_from_slice(b",source=");
    push_tag(out, source);
    out.push(b' ');
    push_float(out, "error_share", m.errors as f64 / m.count.max(1) as f64);
    out.push(b',');
    push_int(out, "errors", m.errors);
    out.push(b',');
    push_int(out, "lines", app.lines);
    out.push(b',');
    push_int(out, "records", m.count);
    out.push(b' ');
    out.extend_from_slice(ts);
    out.push(b'\n');
    for (logger, level, n) in &app.levels {
        out.extend_from_slice(APP_LEVEL.as_bytes());
        out.extend_from_slice(b",host=");
        push_tag(out, host);
        out.extend_from_slice(b",level=");
        out.extend_from_slice(level.name().as_bytes());
        out.extend_from_slice(b",logger=");
        push_tag(
            out,
            if logger.is_empty() {
                b"-"
            } else {
                logger.as_bytes()
            },
        );
        out.extend_from_slice(b",source=");
        push_tag(out, source);
        out.push(b' ');
        push_int(out, "count", *n);
        out.push(b' ');
        out.extend_from_slice(ts);
        out.push(b'\n');
    }
    for (level, total, entries) in &app.templates {
        for (rank, e) in entries.iter().enumerate() {
            out.extend_from_slice(APP_TEMPLATE.as_bytes());
            out.extend_from_slice(b",host=");
            push_tag(out, host);
            out.extend_from_slice(b",level=");
            out.extend_from_slice(level.name().as_bytes());
            out.extend_from_slice(b",rank=");
            out.extend_from_slice(itoa::Buffer::new().format(rank + 1).as_bytes());
            out.extend_from_slice(b",source=");
            push_tag(out, source);
            out.push(b' ');
            push_int(out, "count", e.count);
            out.push(b',');
            push_int(out, "error", e.error);
            out.extend_from_slice(b",template=\"");
            push_string_field(out, e.key.as_bytes());
            out.extend_from_slice(b"\",template_id=\"");
            out.extend_from_slice(crate::template::template_id(e.key.as_bytes()).as_bytes());
            out.extend_from_slice(b"\",");
            push_int(out, "total", *total);
            out.push(b' ');
            out.extend_from_slice(ts);
            out.push(b'\n');
        }
    }
    for (n, t) in app.new_templates.iter().enumerate() {
        out.extend_from_slice(APP_TEMPLATE_NEW.as_bytes());
        out.extend_from_slice(b",host=");
        push_tag(out, host);
        out.extend_from_slice(b",level=");
        out.extend_from_slice(t.level.name().as_bytes());
        out.extend_from_slice(b",n=");
        out.extend_from_slice(itoa::Buffer::new().format(n + 1).as_bytes());
        out.extend_from_slice(b",source=");
        push_tag(out, source);
        out.push(b' ');
        push_int(out, "count", t.count);
        out.extend_from_slice(b",template=\"");
        push_string_field(out, t.template.as_bytes());
        out.extend_from_slice(b"\",template_id=\"");
        out.extend_from_slice(t.id.as_bytes());
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(ts);
        out.push(b'\n');
    }
}

/// Encodes one point of integer fields (self-metrics) at `time_ns`.
pub fn encode_counters(
    out: &mut Vec<u8>,
    measurement: &str,
    tags: &[(&str, &str)],
    fields: &[(&str, u64)],
    time_ns: i64,
) {
    out.extend_from_slice(measurement.as_bytes());
    for (k, v) in tags {
        out.push(b',');
        push_tag(out, k.as_bytes());
        out.push(b'=');
        push_tag(out, v.as_bytes());
    }
    for (i, (k, v)) in fields.iter().enumerate() {
        out.push(if i == 0 { b' ' } else { b',' });
        push_int(out, k, *v);
    }
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(time_ns).as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Latency;

    #[test]
    fn window_point_has_full_field_set_and_escaped_tags() {
        let v = WindowValue {
            source: 0,
            start_ms: 1_431_857_100_000,
            metrics: Metrics {
                count: 4,
                traffic: 1234,
                errors: 1,
                status: [0, 2, 1, 1, 0],
                unique_clients: 3,
                latency: Some(Latency {
                    p50: 0.012,
                    p90: 0.5,
                    p99: 2.0,
                    max: 2.5,
                }),
            },
            top: None,
            app: None,
            anomalies: Vec::new(),
            is_final: true,
            sketch: None,
        };
        let mut out = vec![];
        encode_window(&mut out, b"web 1", b"/var/log/a,b=c.log", 10_000, &v);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "access_log,host=web\\ 1,source=/var/log/a\\,b\\=c.log count=4i,error_rate=0.25,qps=0.4,\
             status_1xx=0i,status_2xx=2i,status_3xx=1i,status_4xx=1i,status_5xx=0i,traffic=1234i,\
             unique_clients=3i,latency_max=2.5,latency_p50=0.012,latency_p90=0.5,latency_p99=2 \
             1431857100000000000\n"
        );
    }

    #[test]
    fn empty_tags_and_line_breaks_cannot_break_the_protocol() {
        let v = WindowValue {
            source: 0,
            start_ms: 0,
            metrics: Metrics {
                count: 1,
                ..Default::default()
            },
            top: None,
            app: None,
            anomalies: Vec::new(),
            is_final: false,
            sketch: None,
        };
        let mut out = vec![];
        encode_window(&mut out, b"", b"a\nb", 1000, &v);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("access_log,host=-,source=a\\nb count=1i,error_rate=0,qps=1,")
                && s.contains(",unique_clients=0i 0\n"),
            "{s}"
        );
        assert_eq!(s.matches('\n').count(), 1);
    }

    #[test]
    fn counters_point() {
        let mut out = vec![];
        encode_counters(
            &mut out,
            SELF_METRICS,
            &[("analyzer", "h-1")],
            &[("lines_read", 3), ("malformed", 1)],
            7,
        );
        assert_eq!(out, b"logpipe,analyzer=h-1 lines_read=3i,malformed=1i 7\n");
    }

    #[test]
    fn top_points_carry_rank_key_and_counts() {
        use crate::top::{Dim, TopEntry, TopLists};
        let entry = |key: &str, count, error| TopEntry {
            key: key.into(),
            count,
            error,
        };
        let v = WindowValue {
            source: 0,
            start_ms: 1000,
            metrics: Metrics::default(),
            top: Some(std::sync::Arc::new(TopLists {
                dims: vec![(
                    Dim::Path4xx,
                    9,
                    vec![entry("/a \"b\"\\", 5, 0), entry("/x\ny", 4, 1)],
                )],
            })),
            app: None,
            anomalies: Vec::new(),
            is_final: false,
            sketch: None,
        };
        let mut out = vec![];
        encode_top(&mut out, b"web 1", b"shop", &v);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "access_top,dim=path_4xx,host=web\\ 1,rank=1,source=shop \
             count=5i,error=0i,key=\"/a \\\"b\\\"\\\\\",total=9i 1000000000\n\
             access_top,dim=path_4xx,host=web\\ 1,rank=2,source=shop \
             count=4i,error=1i,key=\"/x\\ny\",total=9i 1000000000\n"
        );
    }
}
