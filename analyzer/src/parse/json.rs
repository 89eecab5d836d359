//! JSON lines: one object per line, as nginx writes with an `escape=json`
//! template or as an application logs. Field names are configurable; the
//! defaults are the nginx variable names those templates use
//! (`"remote_addr":"$remote_addr"`), plus common alternatives.
//!
//! The line is walked by `serde_json` (full JSON validity), values are kept
//! as borrowed raw JSON (`RawValue`), so parsing copies nothing: a string's
//! content stays JSON-escaped and is decoded on demand ([`Escape::Json`]).
//! Values may be strings or numbers (`"status":"200"` and `"status":200`
//! both work); `null` and `"-"` are absent. When several names of one field
//! are present, the first in its list wins.
//!
//! Time: absent → the record timestamp; a string in `$time_local` form (`10/Oct/2000:13:55:36 -0700`, with
//! or without brackets) or ISO 8601, or a number of seconds since the epoch
//! (`$msec`; a number above 10^11 is taken as milliseconds).

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::line::intern;
use super::scan::{parse_seconds, split_request};
use super::time::{parse_clf_time, parse_iso8601};
use super::{AccessLine, Escape, ParseError};

/// The fields logpipe reads from a JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Client,
    ForwardedFor,
    User,
    Time,
    Request,
    Method,
    Path,
    Status,
    Bytes,
    RequestTime,
    UpstreamTime,
    Host,
    Referer,
    UserAgent,
}

const FIELDS: usize = 14;

/// Field names of a JSON format, each a list of names tried in order.
/// In a formats file: `[source.json]` with `time = "ts"` or `time = ["ts", "time"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsonFields {
    pub client: Names,
    pub forwarded_for: Names,
    pub user: Names,
    pub time: Names,
    pub request: Names,
    pub method: Names,
    pub path: Names,
    pub status: Names,
    pub bytes: Names,
    /// Seconds with a fraction, like `$request_time`.
    pub request_time: Names,
    /// Seconds; a `$upstream_response_time` list is summed.
    pub upstream_time: Names,
    pub host: Names,
    pub referer: Names,
    pub user_agent: Names,
}

/// One name or a list of names.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "OneOrMany")]
pub struct Names(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Names {
    fn from(v: OneOrMany) -> Names {
        match v {
            OneOrMany::One(s) => Names(vec![s]),
            OneOrMany::Many(v) => Names(v),
        }
    }
}

fn names(v: &[&str]) -> Names {
    Names(v.iter().map(|s| s.to_string()).collect())
}

impl Default for JsonFields {
    fn default() -> Self {
        JsonFields {
            client: names(&["remote_addr", "client", "client_ip", "ip"]),
            forwarded_for: names(&["http_x_forwarded_for", "x_forwarded_for"]),
            user: names(&["remote_user", "user"]),
            time: names(&[
                "time_local",
                "time_iso8601",
                "time",
                "timestamp",
                "@timestamp",
                "ts",
                "msec",
            ]),
            request: names(&["request"]),
            method: names(&["request_method", "method"]),
            path: names(&["request_uri", "uri", "path"]),
            status: names(&["status", "status_code"]),
            bytes: names(&["body_bytes_sent", "bytes_sent", "bytes", "size"]),
            request_time: names(&["request_time"]),
            upstream_time: names(&["upstream_response_time"]),
            host: names(&["host", "http_host", "server_name", "vhost"]),
            referer: names(&["http_referer", "http_referrer", "referer", "referrer"]),
            user_agent: names(&["http_user_agent", "user_agent", "agent"]),
        }
    }
}

/// Key → (field, priority), bucketed by key length: a line's keys are
/// looked up without hashing (a few candidates share a length).
#[derive(Debug, Clone, Default)]
struct Keys {
    by_len: Vec<Vec<(Box<str>, Field, u8)>>,
}

impl Keys {
    /// Adds a name; returns the field it already had, if any.
    fn insert(&mut self, name: &str, field: Field, prio: u8) -> Option<Field> {
        if self.by_len.len() <= name.len() {
            self.by_len.resize(name.len() + 1, Vec::new());
        }
        let bucket = &mut self.by_len[name.len()];
        if let Some(e) = bucket.iter_mut().find(|e| &*e.0 == name) {
            let old = e.1;
            (e.1, e.2) = (field, prio);
            return Some(old);
        }
        bucket.push((name.into(), field, prio));
        None
    }

    #[inline]
    fn get(&self, key: &str) -> Option<(Field, u8)> {
        self.by_len
            .get(key.len())?
            .iter()
            .find(|e| &*e.0 == key)
            .map(|e| (e.1, e.2))
    }
}

/// A compiled JSON lines format: key → (field, priority).
#[derive(Debug, Clone)]
pub struct JsonFormat {
    keys: Keys,
    missing_status: &'static str,
}

/// Why a JSON format cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFormatError(pub String);

impl fmt::Display for JsonFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonFormat {
    pub fn new(fields: &JsonFields) -> Result<JsonFormat, JsonFormatError> {
        let lists: [(Field, &Names); FIELDS] = [
            (Field::Client, &fields.client),
            (Field::ForwardedFor, &fields.forwarded_for),
            (Field::User, &fields.user),
            (Field::Time, &fields.time),
            (Field::Request, &fields.request),
            (Field::Method, &fields.method),
            (Field::Path, &fields.path),
            (Field::Status, &fields.status),
            (Field::Bytes, &fields.bytes),
            (Field::RequestTime, &fields.request_time),
            (Field::UpstreamTime, &fields.upstream_time),
            (Field::Host, &fields.host),
            (Field::Referer, &fields.referer),
            (Field::UserAgent, &fields.user_agent),
        ];
        let mut keys = Keys::default();
        for (field, list) in lists {
            for (prio, name) in list.0.iter().enumerate() {
                if let Some(other) = keys.insert(name, field, prio as u8) {
                    if other != field {
                        return Err(JsonFormatError(format!(
                            "JSON key '{name}' is named for two fields ({other:?} and {field:?})"
                        )));
                    }
                }
            }
        }
        if fields.time.0.is_empty() || fields.status.0.is_empty() {
            return Err(JsonFormatError(
                "a JSON format needs at least one name for `time` and for `status`".into(),
            ));
        }
        Ok(JsonFormat {
            keys,
            missing_status: intern(format!("a status field ({})", fields.status.0.join(", "))),
        })
    }

    /// Parses one line.
    pub fn parse<'a>(&self, line: &'a [u8]) -> Result<AccessLine<'a>, ParseError> {
        let start = line.iter().position(|b| !b.is_ascii_whitespace());
        if start.is_none_or(|i| line[i] != b'{') {
            return Err(match start {
                None => ParseError::ends(line.len(), "before the JSON object (empty line)"),
                Some(at) => ParseError::expected(at, "'{' opening a JSON object (one per line)"),
            });
        }
        let mut de = serde_json::Deserializer::from_slice(line);
        let mut found: [Option<(&'a RawValue, u8)>; FIELDS] = [None; FIELDS];
        de.deserialize_map(Collect {
            keys: &self.keys,
            found: &mut found,
        })
        .and_then(|()| de.end())
        .map_err(|e| {
            // serde_json counts columns in bytes on the (only) line.
            let at = if e.line() <= 1 {
                e.column().saturating_sub(1).min(line.len())
            } else {
                line.len()
            };
            if e.classify() == serde_json::error::Category::Eof {
                ParseError::ends(line.len(), "inside the JSON object")
            } else {
                ParseError::expected(at, json_expected(&e))
            }
        })?;
        let at = |r: &RawValue| (r.get().as_ptr() as usize).saturating_sub(line.as_ptr() as usize);
        let value = |f: Field| -> Option<(&'a [u8], usize)> {
            let (raw, _) = found[f as usize]?;
            let s = raw.get().as_bytes();
            let v = match s.first()? {
                b'"' => &s[1..s.len() - 1],
                b'n' => return None, // null
                _ => s,
            };
            (v != b"-" && !v.is_empty()).then_some((v, at(raw)))
        };
        let text = |f: Field| value(f).map(|(v, _)| v);
        let err = ParseError::expected;

        // No time field: the record timestamp is used (see AccessLine::time_ms).
        let time_ms = match value(Field::Time) {
            None => i64::MIN,
            Some((t, t_at)) => json_time(t).ok_or(err(
                t_at,
                "a time like 10/Oct/2000:13:55:36 -0700, 2000-10-10T13:55:36Z or epoch seconds",
            ))?,
        };
        let (s, s_at) = value(Field::Status).ok_or(err(line.len(), self.missing_status))?;
        let status = std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..=999).contains(s))
            .ok_or(err(s_at, "a 3-digit status"))?;
        let body_bytes = match value(Field::Bytes) {
            None => 0,
            Some((b, b_at)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(err(b_at, "body bytes as a whole number"))?,
        };
        let request = text(Field::Request).unwrap_or(b"");
        let (m, p) = split_request(request);
        let mut client = text(Field::Client).unwrap_or(b"");
        if client.is_empty() {
            if let Some(xff) = text(Field::ForwardedFor) {
                client = xff.split(|&c| c == b',').next().unwrap_or(xff).trim_ascii();
            }
        }
        Ok(AccessLine {
            client,
            user: text(Field::User),
            time_ms,
            request,
            method: text(Field::Method).or(m),
            path: text(Field::Path).or(p),
            status,
            body_bytes,
            referer: text(Field::Referer),
            user_agent: text(Field::UserAgent),
            request_time_s: text(Field::RequestTime).and_then(parse_seconds),
            upstream_time_s: text(Field::UpstreamTime).and_then(super::scan::upstream_sum),
            host: text(Field::Host),
            escape: Escape::Json,
        })
    }
}

fn json_expected(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax if e.to_string().starts_with("trailing") => {
            "the end of the line after the JSON object"
        }
        _ if e.to_string().starts_with("invalid type") => "a JSON object",
        _ => "valid JSON (one object per line)",
    }
}

/// `10/Oct/2000:13:55:36 -0700` (maybe in brackets), ISO 8601, or epoch
/// seconds (milliseconds above 10^11).
fn json_time(v: &[u8]) -> Option<i64> {
    let v = v
        .strip_prefix(b"[")
        .and_then(|v| v.strip_suffix(b"]"))
        .unwrap_or(v);
    match v.first()? {
        b'0'..=b'9' if v.len() > 4 && v[4] == b'-' => parse_iso8601(v),
        b'0'..=b'9' if v.len() > 2 && v[2] == b'/' => parse_clf_time(v),
        b'0'..=b'9' => {
            let n = parse_seconds(v)?;
            let ms = if n > 1e11 { n } else { n * 1000.0 };
            (ms < 1e15).then_some(ms.round() as i64)
        }
        _ => None,
    }
}

/// Visits the top-level object, keeping the raw values of known keys.
struct Collect<'k, 'f, 'a> {
    keys: &'k Keys,
    found: &'f mut [Option<(&'a RawValue, u8)>; FIELDS],
}

impl<'de> Visitor<'de> for Collect<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys borrow from the line unless they contain escapes.
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.keys.get(key.as_ref()) {
                Some((field, prio)) => {
                    let raw: &'de RawValue = map.next_value()?;
                    let slot = &mut self.found[field as usize];
                    if slot.is_none_or(|(_, p)| prio < p) {
                        *slot = Some((raw, prio));
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> JsonFormat {
        JsonFormat::new(&JsonFields::default()).unwrap()
    }

    #[test]
    fn nginx_escape_json_template_parses_with_default_names() {
        let line = br#"{"time_local":"01/Jan/2024:00:00:07 +0100","remote_addr":"2001:db8::1","remote_user":"-","request":"GET /a?q=\"x\" HTTP/1.1","status": "404","body_bytes_sent":"12","request_time":"0.250","http_referrer":"-","http_user_agent":"curl/8 \u00e9"}"#;
        let l = f().parse(line).unwrap();
        assert_eq!(l.time_ms, 1_704_063_607_000);
        assert_eq!(l.client, b"2001:db8::1");
        assert_eq!(l.user, None);
        assert_eq!(l.status, 404);
        assert_eq!(l.body_bytes, 12);
        assert_eq!(l.request_time_s, Some(0.25));
        assert_eq!(l.method, Some(&b"GET"[..]));
        assert_eq!(&*l.decoded(l.path.unwrap()), br#"/a?q="x""#);
        assert_eq!(&*l.decoded(l.user_agent.unwrap()), "curl/8 é".as_bytes());
        assert_eq!(l.referer, None);
    }

    #[test]
    fn numbers_epoch_time_and_configured_names() {
        let fields: JsonFields = toml::from_str(
            r#"
            time = "ts"
            status = ["code", "status"]
            client = "ip"
            "#,
        )
        .unwrap();
        let j = JsonFormat::new(&fields).unwrap();
        let l = j
            .parse(br#"{"ts":1704067200123,"code":503,"status":200,"ip":"10.0.0.1","nested":{"a":[1,2]}}"#)
            .unwrap();
        assert_eq!(
            (l.time_ms, l.status, l.client),
            (1_704_067_200_123, 503, &b"10.0.0.1"[..])
        );
        let l = j.parse(br#"{"ts":1704067200.5,"status":201}"#).unwrap();
        assert_eq!((l.time_ms, l.status), (1_704_067_200_500, 201));
    }

    #[test]
    fn bad_lines_say_what_and_where() {
        let j = f();
        let e = j
            .parse(br#"{"time_local":"01/Jan/2024:00:00:07 +0000","status":"abc"}"#)
            .unwrap_err();
        assert_eq!(e.to_string(), "expected a 3-digit status at byte 52");
        assert_eq!(j.parse(br#"{"status":200}"#).unwrap().time_ms, i64::MIN);
        let e = j
            .parse(br#"{"time":"yesterday","status":200}"#)
            .unwrap_err();
        assert!(e.expected.starts_with("a time like"), "{e}");
        let e = j.parse(br#"{"status":200,"time_local""#).unwrap_err();
        assert_eq!(e.to_string(), "line ends inside the JSON object at byte 26");
        let e = j
            .parse(b"127.0.0.1 - - [01/Jan/2024:00:00:07 +0000]")
            .unwrap_err();
        assert_eq!(e.at, 0, "{e}");
        let e = j.parse(br#"{"status":200} x"#).unwrap_err();
        assert!(e.expected.contains("end of the line"), "{e}");
        assert!(j.parse(b"").is_err());
        assert!(j.parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn one_key_for_two_fields_is_rejected() {
        let fields: JsonFields = toml::from_str(r#"client = "time""#).unwrap();
        let e = JsonFormat::new(&fields).unwrap_err();
        assert!(e.0.contains("'time'"), "{e}");
    }

    mod fuzzish {
        use super::*;
        use proptest::prelude::*;

        const GOOD: &str = r#"{"time_iso8601":"2024-01-01T00:00:07+01:00","remote_addr":"2001:db8::1","request":"GET /a?q=\"x\"\u00e9 HTTP/1.1","status":404,"body_bytes_sent":"12","request_time":0.25,"upstream_response_time":"0.1, 0.2","http_user_agent":"ua \ud83d\ude00","extra":[1,{"a":null}]}"#;

        fn line() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                (0..GOOD.len(), any::<u8>()).prop_map(|(i, b)| {
                    let mut v = GOOD.as_bytes().to_vec();
                    v[i] = b;
                    v
                }),
                (0..GOOD.len()).prop_map(|i| GOOD.as_bytes()[..i].to_vec()),
            ]
        }

        #[test]
        fn the_unmutated_line_parses() {
            let l = f().parse(GOOD.as_bytes()).unwrap();
            assert_eq!(
                (l.status, l.upstream_time_s),
                (404, Some(0.30000000000000004))
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]
            #[test]
            fn parsing_and_decoding_never_panic(line in line()) {
                match f().parse(&line) {
                    Ok(l) => {
                        for x in [Some(l.client), l.user, l.method, l.path, l.referer, l.user_agent, l.host]
                            .into_iter()
                            .flatten()
                        {
                            let _ = l.decoded(x);
                        }
                    }
                    Err(e) => prop_assert!(e.at <= line.len()),
                }
            }
        }
    }
}
