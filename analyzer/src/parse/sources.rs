//! Which parser reads which source: one `--format` for all, or a formats
//! file (TOML) that maps source names — exact or glob — to formats, so one
//! analyzer group serves nginx, Apache and JSON sources at once.
//!
//! ```toml
//! default = "combined"            # sources no rule matches
//!
//! [[source]]
//! match = "/var/log/nginx/*.log"  # the `source` header; `*` also crosses `/`
//! format = '''log_format main '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time';'''
//!
//! [[source]]
//! match = "api"
//! format = "json"
//! json = { time = "ts", client = "ip" }   # field names; defaults for the rest
//! ```
//!
//! Rules are tried in file order; the first that matches wins. A source is
//! resolved once, when its first record arrives, into the [`SourceTable`].

use std::path::Path;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use rdkafka::message::Headers;
use serde::Deserialize;

use super::app::{AppFormat, Zone};
use super::json::{JsonFields, JsonFormat};
use super::log_format::{FormatError, LogFormat};
use super::{parse_combined, parse_combined_cut, AccessLine, ParseError};

/// A parser for one format.
#[derive(Debug, Clone)]
pub enum Parser {
    /// The hand-written nginx/Apache `combined` parser (also reads an
    /// optional trailing `$request_time`).
    Combined,
    /// A compiled `log_format` / `LogFormat` string.
    Compiled(LogFormat),
    /// JSON lines.
    Json(JsonFormat),
    /// Application logs (see [`AppFormat`]).
    App(AppFormat),
}

impl Parser {
    /// `combined`, `json` (default field names), an application format
    /// ([`AppFormat::new`], times without a zone in UTC) or anything
    /// [`LogFormat::new`] takes.
    pub fn new(spec: &str) -> Result<Parser, FormatError> {
        Parser::with_time(spec, None, Zone::Utc)
    }

    /// [`Parser::new`] with a Python `datefmt` and the zone of times
    /// written without one (application formats).
    pub fn with_time(spec: &str, datefmt: Option<&str>, zone: Zone) -> Result<Parser, FormatError> {
        if let Some(app) = AppFormat::new(spec, datefmt, zone) {
            return app.map(Parser::App);
        }
        match spec.trim() {
            "combined" => Ok(Parser::Combined),
            "json" => Parser::json(&JsonFields::default()),
            s => LogFormat::new(s).map(Parser::Compiled),
        }
    }

    /// The application format, when this is one (its records are read by
    /// [`AppFormat::parse`], not [`Parser::parse`]).
    pub fn app(&self) -> Option<&AppFormat> {
        match self {
            Parser::App(a) => Some(a),
            _ => None,
        }
    }

    /// JSON lines with these field names.
    pub fn json(fields: &JsonFields) -> Result<Parser, FormatError> {
        JsonFormat::new(fields)
            .map(Parser::Json)
            .map_err(|e| FormatError(e.0))
    }

    #[inline]
    pub fn parse<'a>(&self, line: &'a [u8]) -> Result<AccessLine<'a>, ParseError> {
        match self {
            Parser::Combined => parse_combined(line),
            Parser::Compiled(f) => f.parse(line),
            Parser::Json(j) => j.parse(line),
            Parser::App(_) => Err(ParseError::expected(
                0,
                "an access-log line (this source is an application log)",
            )),
        }
    }

    /// A line the producer cut at `--max-line-bytes` (its `cut` header):
    /// counted when the fields a request needs are whole before the cut
    /// (see [`LogFormat::parse_cut`]); a cut JSON object is never whole.
    #[inline]
    pub fn parse_cut<'a>(&self, line: &'a [u8]) -> Result<AccessLine<'a>, ParseError> {
        match self {
            Parser::Combined => parse_combined_cut(line),
            Parser::Compiled(f) => f.parse_cut(line),
            Parser::Json(_) | Parser::App(AppFormat::PythonJson) => Err(ParseError::ends(
                line.len(),
                "where the producer cut it (--max-line-bytes): a cut JSON object is not whole",
            )),
            Parser::App(_) => Err(ParseError::expected(
                0,
                "an access-log line (this source is an application log)",
            )),
        }
    }

    /// Short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Parser::Combined => "combined".into(),
            Parser::Compiled(f) => format!("'{}'", f.spec()),
            Parser::Json(_) => "json".into(),
            Parser::App(a) => a.describe(),
        }
    }
}

enum Pattern {
    Exact(String),
    Glob(GlobMatcher),
}

impl Pattern {
    fn matches(&self, source: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == source,
            Pattern::Glob(g) => g.is_match(source),
        }
    }
}

/// Source name → parser.
pub struct Formats {
    rules: Vec<(Pattern, Arc<Parser>)>,
    default: Arc<Parser>,
}

impl std::fmt::Debug for Formats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Formats {{ {} rules, default {} }}",
            self.rules.len(),
            self.default.describe()
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    /// Field names for every `json` rule without its own.
    json: Option<JsonFields>,
    /// The zone of application-log times written without one, for every
    /// rule without its own (default: the `--timezone` given).
    timezone: Option<String>,
    #[serde(default)]
    source: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(rename = "match")]
    pattern: String,
    format: String,
    json: Option<JsonFields>,
    /// Python `datefmt` of a Formatter string's `%(asctime)s`.
    datefmt: Option<String>,
    timezone: Option<String>,
}

impl Formats {
    /// One parser for every source.
    pub fn single(p: Parser) -> Formats {
        Formats {
            rules: Vec::new(),
            default: Arc::new(p),
        }
    }

    /// Reads a formats file; `default` is used when the file names none,
    /// `zone` when it names no `timezone`.
    pub fn load(path: &Path, default: Parser, zone: Zone) -> Result<Formats, FormatError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FormatError(format!("cannot read {}: {e}", path.display())))?;
        Formats::from_toml(&text, default, zone)
            .map_err(|e| FormatError(format!("{}: {}", path.display(), e.0)))
    }

    pub fn from_toml(text: &str, default: Parser, zone: Zone) -> Result<Formats, FormatError> {
        let file: File = toml::from_str(text).map_err(|e| FormatError(e.to_string()))?;
        let zone_of = |z: Option<&String>| -> Result<Zone, FormatError> {
            match z.or(file.timezone.as_ref()) {
                Some(z) => z.parse().map_err(FormatError),
                None => Ok(zone),
            }
        };
        let build = |spec: &str,
                     json: Option<&JsonFields>,
                     datefmt: Option<&str>,
                     zone: Zone|
         -> Result<Parser, FormatError> {
            match (spec.trim(), json.or(file.json.as_ref())) {
                ("json", Some(fields)) => Parser::json(fields),
                (_, _) => Parser::with_time(spec, datefmt, zone),
            }
        };
        let default = match &file.default {
            Some(spec) => build(spec, None, None, zone_of(None)?)
                .map_err(|e| FormatError(format!("default: {}", e.0)))?,
            None => default,
        };
        let mut rules = Vec::new();
        for (k, r) in file.source.iter().enumerate() {
            let what = format!("[[source]] #{} (match = {:?})", k + 1, r.pattern);
            if r.json.is_some() && r.format.trim() != "json" {
                return Err(FormatError(format!(
                    "{what}: `json` field names given for format {:?}, which is not json",
                    r.format
                )));
            }
            let zone = zone_of(r.timezone.as_ref())
                .map_err(|e| FormatError(format!("{what}: {}", e.0)))?;
            let parser = build(&r.format, r.json.as_ref(), r.datefmt.as_deref(), zone)
                .map_err(|e| FormatError(format!("{what}: {}", e.0)))?;
            let pattern = if r.pattern.contains(['*', '?', '[', '{']) {
                Pattern::Glob(
                    Glob::new(&r.pattern)
                        .map_err(|e| FormatError(format!("{what}: {e}")))?
                        .compile_matcher(),
                )
            } else {
                Pattern::Exact(r.pattern.clone())
            };
            rules.push((pattern, Arc::new(parser)));
        }
        Ok(Formats {
            rules,
            default: Arc::new(default),
        })
    }

    /// The parser for a source name.
    pub fn for_source(&self, source: &str) -> Arc<Parser> {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(source))
            .map_or_else(|| self.default.clone(), |(_, f)| f.clone())
    }
}

/// Index of a source (host, source name) in the analyzer's [`SourceTable`].
pub type SourceId = u32;

/// A source's names: from its first record's `host` and `source` headers
/// (else its key's halves), and its key as text (restore points use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceName {
    pub host: String,
    pub source: String,
    pub key: String,
}

/// The sources an analyzer has seen, by record key, each with its names
/// and its parser.
pub struct SourceTable {
    by_key: crate::FastMap<Box<[u8]>, SourceId>,
    names: Vec<SourceName>,
    /// The parser of each source, resolved when it is first seen.
    parsers: Vec<Arc<Parser>>,
    /// Whether each source has parsed a line, and its dead letters until then.
    parsed: Vec<Parsed>,
    /// The source of the previous record.
    last: Option<SourceId>,
    formats: Arc<Formats>,
}

impl SourceTable {
    pub fn new(formats: Arc<Formats>) -> Self {
        SourceTable {
            by_key: crate::FastMap::default(),
            names: Vec::new(),
            parsers: Vec::new(),
            parsed: Vec::new(),
            last: None,
            formats,
        }
    }

    /// The id of the source of a record with `key` and `headers`; a new
    /// source gets its names and parser here.
    pub fn id<H: Headers>(&mut self, key: &[u8], headers: Option<&H>) -> SourceId {
        // Records of one source come in runs: the previous key first.
        if let Some(last) = self.last {
            if self.names[last as usize].key.as_bytes() == key {
                return last;
            }
        }
        if let Some(&id) = self.by_key.get(key) {
            self.last = Some(id);
            return id;
        }
        let header = |name: &str| {
            headers
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let (kh, ks) = logpipe_wire::split_key(key).unwrap_or((b"-", key));
        let host =
            header(logpipe_wire::HOST).unwrap_or_else(|| String::from_utf8_lossy(kh).into_owned());
        let source = header(logpipe_wire::SOURCE)
            .unwrap_or_else(|| String::from_utf8_lossy(ks).into_owned());
        let id = self.names.len() as SourceId;
        let parser = self.formats.for_source(&source);
        tracing::debug!(%host, %source, format = %parser.describe(), "new source");
        self.parsers.push(parser);
        self.parsed.push(Parsed::default());
        self.names.push(SourceName {
            host,
            source,
            key: String::from_utf8_lossy(key).into_owned(),
        });
        self.by_key.insert(key.into(), id);
        self.last = Some(id);
        id
    }

    /// The id of a source known by its key alone (a restore point's).
    pub fn id_of_key(&mut self, key: &str) -> SourceId {
        self.id::<rdkafka::message::OwnedHeaders>(key.as_bytes(), None)
    }

    pub fn key(&self, id: SourceId) -> &str {
        &self.names[id as usize].key
    }

    pub fn name(&self, id: SourceId) -> &SourceName {
        &self.names[id as usize]
    }

    pub fn parser(&self, id: SourceId) -> &Parser {
        &self.parsers[id as usize]
    }

    /// Notes that a line of `id` parsed.
    pub fn parsed(&mut self, id: SourceId) {
        self.parsed[id as usize].any = true;
    }

    /// Counts a dead letter of `id`; true once, when the source reaches
    /// [`NOTHING_PARSES`] dead letters without a line parsed: most likely
    /// it is written in another format than its parser's.
    pub fn dead_lettered(&mut self, id: SourceId) -> bool {
        let p = &mut self.parsed[id as usize];
        if p.any {
            return false;
        }
        p.dead_letters += 1;
        p.dead_letters == NOTHING_PARSES
    }
}

/// Dead letters of a source without a line parsed after which the analyzer
/// says its format is likely wrong.
pub const NOTHING_PARSES: u64 = 100;

#[derive(Debug, Clone, Copy, Default)]
struct Parsed {
    any: bool,
    dead_letters: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_whose_lines_never_parse_is_named_once() {
        let mut t = SourceTable::new(Arc::new(Formats::single(Parser::Combined)));
        let bad = t.id_of_key("h\u{1f}app.json");
        let good = t.id_of_key("h\u{1f}shop.log");
        t.parsed(good);
        let said: Vec<u64> = (1..=3 * NOTHING_PARSES)
            .filter(|_| {
                let g = t.dead_lettered(good);
                t.dead_lettered(bad) || g
            })
            .collect();
        assert_eq!(said, vec![NOTHING_PARSES]);
        // A source that parses late is not named after it did.
        let late = t.id_of_key("h\u{1f}late.log");
        (1..NOTHING_PARSES).for_each(|_| assert!(!t.dead_lettered(late)));
        t.parsed(late);
        assert!(!t.dead_lettered(late));
    }

    const FILE: &str = r#"
default = "common"

[[source]]
match = "/var/log/nginx/*.log"
format = '''log_format main '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time';'''

[[source]]
match = "api"
format = "json"
json = { time = "ts" }

[[source]]
match = "/var/log/apache2/**"
format = '"%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-agent}i\" %D"'
"#;

    #[test]
    fn sources_resolve_to_their_rule_or_the_default() {
        let f = Formats::from_toml(FILE, Parser::Combined, Zone::Utc).unwrap();
        let nginx = f.for_source("/var/log/nginx/shop.log");
        let l = nginx
            .parse(br#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "ua" 0.125"#)
            .unwrap();
        assert_eq!(l.request_time_s, Some(0.125));
        let api = f.for_source("api");
        assert!(matches!(*api, Parser::Json(_)));
        assert_eq!(
            api.parse(br#"{"ts":1704067200,"status":200}"#)
                .unwrap()
                .status,
            200
        );
        // exact names do not match by prefix
        assert_eq!(
            f.for_source("api2").describe(),
            f.for_source("other").describe()
        );
        let apache = f.for_source("/var/log/apache2/site/access.log");
        let l = apache
            .parse(
                br#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "ua" 1500"#,
            )
            .unwrap();
        assert_eq!(l.request_time_s, Some(0.0015));
        assert!(f
            .for_source("web")
            .parse(br#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 5"#)
            .is_ok());
    }

    #[test]
    fn mistakes_name_the_rule() {
        let e = Formats::from_toml(
            "[[source]]\nmatch = \"x\"\nformat = '$remote_addr $request'\n",
            Parser::Combined,
            Zone::Utc,
        )
        .unwrap_err();
        assert!(e.0.starts_with("[[source]] #1 (match = \"x\"): "), "{e}");
        assert!(e.0.contains("has no status"), "{e}");
        let e = Formats::from_toml(
            "[[source]]\nmatch = \"x\"\nformat = 'combined'\njson = { time = \"t\" }\n",
            Parser::Combined,
            Zone::Utc,
        )
        .unwrap_err();
        assert!(e.0.contains("not json"), "{e}");
        let e = Formats::from_toml(
            "[[source]]\nmatch = \"a[\"\nformat = 'json'\n",
            Parser::Combined,
            Zone::Utc,
        )
        .unwrap_err();
        assert!(e.0.contains("#1"), "{e}");
        let e = Formats::from_toml("[[sources]]\nmatch = \"x\"\n", Parser::Combined, Zone::Utc)
            .unwrap_err();
        assert!(e.0.contains("sources"), "{e}");
    }
}
