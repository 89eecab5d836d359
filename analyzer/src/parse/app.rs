//! Application logs: Python `logging` JSON records (what
//! `produce --python-logging` publishes), text written by a Python
//! `logging.Formatter` whose format string is pasted as-is, and a generic
//! `time level [logger] message` layout. See docs/formats.md,
//! "Application logs".
//!
//! A text record may span lines (a traceback, a stack trace): a line that
//! does not parse as the start of a record continues the record before it.
//! The parsers here read one line, the start of a record; joining the lines
//! that follow is the ingest's (`crate::run`), which holds a record's first
//! offset in the restore point until the record is complete.

use std::borrow::Cow;

use chrono::{NaiveDateTime, TimeZone};
use serde::Deserialize;

use super::line::intern;
use super::time::days_from_civil;
use super::{FormatError, ParseError};

/// A record's level, in Python's order (`levelno` 10, 20, … 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    /// A level name the analyzer does not know (a custom level).
    Other,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warning,
        Level::Error,
        Level::Critical,
        Level::Other,
    ];

    /// The name written to InfluxDB (`level` tag).
    pub fn name(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
            Level::Other => "OTHER",
        }
    }

    /// A level name as loggers write it, in any case: Python's, log4j's,
    /// syslog's (`WARN`, `FATAL`, `ERR`, `CRIT`, `NOTICE`, …).
    pub fn from_name(n: &[u8]) -> Option<Level> {
        if n.is_empty() || n.len() > 9 {
            return None;
        }
        let mut b = [0u8; 9];
        for (d, s) in b.iter_mut().zip(n) {
            *d = s.to_ascii_uppercase();
        }
        Some(match &b[..n.len()] {
            b"TRACE" | b"FINEST" | b"FINER" => Level::Trace,
            b"DEBUG" | b"FINE" => Level::Debug,
            b"INFO" | b"NOTICE" | b"CONFIG" => Level::Info,
            b"WARNING" | b"WARN" => Level::Warning,
            b"ERROR" | b"ERR" | b"SEVERE" => Level::Error,
            b"CRITICAL" | b"CRIT" | b"FATAL" | b"ALERT" | b"EMERG" | b"PANIC" => Level::Critical,
            _ => return None,
        })
    }

    /// Python's `levelno`: below 10 trace, 10 debug, 20 info, 30 warning,
    /// 40 error, 50 and above critical.
    pub fn from_no(n: i64) -> Level {
        match n {
            i64::MIN..=9 => Level::Trace,
            10..=19 => Level::Debug,
            20..=29 => Level::Info,
            30..=39 => Level::Warning,
            40..=49 => Level::Error,
            _ => Level::Critical,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        Level::from_name(s.as_bytes()).ok_or_else(|| {
            format!("unknown level {s:?} (trace, debug, info, warning, error, critical)")
        })
    }
}

/// One application record's start, borrowing from the line where it can.
#[derive(Debug, Clone, PartialEq)]
pub struct AppLine<'a> {
    /// Event time, ms since the epoch (UTC); `i64::MIN` when the format
    /// has none (the record timestamp stands in).
    pub time_ms: i64,
    pub level: Level,
    /// The logger's name (`-` when the format has none).
    pub logger: Cow<'a, [u8]>,
    /// The message (its first line for the start of a text record).
    pub message: Cow<'a, [u8]>,
    /// The exception a JSON record carries (`exc_text`), whole.
    pub exception: Option<Cow<'a, [u8]>>,
}

/// The zone of times written without one (Python's `asctime` is local
/// time): UTC, a fixed offset (`+02:00`) or an IANA name (`Europe/Berlin`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Zone {
    #[default]
    Utc,
    Fixed(chrono::FixedOffset),
    Named(chrono_tz::Tz),
}

impl std::str::FromStr for Zone {
    type Err = String;
    fn from_str(s: &str) -> Result<Zone, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" {
            return Ok(Zone::Utc);
        }
        if let Some(sign) = t.strip_prefix(['+', '-']).map(|_| t.as_bytes()[0]) {
            let d: Vec<u8> = t[1..].bytes().filter(|&b| b != b':').collect();
            let ok = d.len() == 4 && d.iter().all(u8::is_ascii_digit);
            if ok {
                let v = |i: usize| i32::from(d[i] - b'0');
                let secs = (v(0) * 10 + v(1)) * 3600 + (v(2) * 10 + v(3)) * 60;
                let secs = if sign == b'-' { -secs } else { secs };
                if let Some(o) = chrono::FixedOffset::east_opt(secs) {
                    return Ok(Zone::Fixed(o));
                }
            }
            return Err(format!("{s:?} is not an offset like +02:00"));
        }
        t.parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
            format!("unknown time zone {s:?}: UTC, an offset like +02:00, or an IANA name like Europe/Berlin")
        })
    }
}

impl Zone {
    /// A local wall-clock time in this zone → ms since the epoch. In the
    /// hour a clock is set back, the earlier of the two instants; a time
    /// the clock skipped has none.
    fn to_utc_ms(self, local_ms: i64) -> Option<i64> {
        match self {
            Zone::Utc => Some(local_ms),
            Zone::Fixed(o) => Some(local_ms - i64::from(o.local_minus_utc()) * 1000),
            Zone::Named(tz) => {
                let naive = chrono::DateTime::from_timestamp_millis(local_ms)?.naive_utc();
                let t = tz.from_local_datetime(&naive).earliest()?;
                Some(t.timestamp_millis())
            }
        }
    }
}

/// Which application format a source is written in.
#[derive(Debug, Clone)]
pub enum AppFormat {
    /// One JSON object per record, Python `logging`'s attributes.
    PythonJson,
    /// A Python `logging.Formatter` format string.
    Python(PyFormat),
    /// `time level [logger] message` or `time level logger - message`.
    Layout(Zone),
}

impl AppFormat {
    /// `python-json`, `app`, or a Python `%(...)s` format string.
    pub fn new(
        spec: &str,
        datefmt: Option<&str>,
        zone: Zone,
    ) -> Option<Result<AppFormat, FormatError>> {
        match spec.trim() {
            "python-json" => Some(Ok(AppFormat::PythonJson)),
            "app" => Some(Ok(AppFormat::Layout(zone))),
            s if s.contains("%(") => Some(PyFormat::new(s, datefmt, zone).map(AppFormat::Python)),
            _ => None,
        }
    }

    /// Whether records may span lines (text formats).
    pub fn multiline(&self) -> bool {
        !matches!(self, AppFormat::PythonJson)
    }

    /// A record's first line (or a JSON record).
    pub fn parse<'a>(&self, line: &'a [u8]) -> Result<AppLine<'a>, ParseError> {
        if let Some(e) = ParseError::nul_byte(line) {
            return Err(e);
        }
        match self {
            AppFormat::PythonJson => parse_python_json(line),
            AppFormat::Python(f) => f.parse(line),
            AppFormat::Layout(zone) => parse_layout(line, *zone),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            AppFormat::PythonJson => "python-json".into(),
            AppFormat::Python(f) => format!("python '{}'", f.spec),
            AppFormat::Layout(_) => "app".into(),
        }
    }
}

#[derive(Deserialize)]
struct PyRecord<'a> {
    created: Option<f64>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    levelname: Option<Cow<'a, str>>,
    levelno: Option<i64>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    msg: Option<Cow<'a, str>>,
    #[serde(borrow)]
    exc_text: Option<Cow<'a, str>>,
}

/// `created` (float seconds) → ms, as Python computes `msecs`.
fn created_ms(c: f64) -> Option<i64> {
    if !c.is_finite() || c.abs() > 1e13 {
        return None;
    }
    let secs = c.trunc();
    Some(secs as i64 * 1000 + ((c - secs) * 1000.0) as i64)
}

fn cow_bytes(c: Cow<'_, str>) -> Cow<'_, [u8]> {
    match c {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

fn parse_python_json(line: &[u8]) -> Result<AppLine<'_>, ParseError> {
    let r: PyRecord<'_> = serde_json::from_slice(line).map_err(|e| {
        if e.is_eof() {
            ParseError::ends(line.len(), "inside the JSON object")
        } else {
            ParseError::expected(
                e.column().saturating_sub(1),
                "a JSON object of a Python logging record",
            )
        }
    })?;
    let level = match (&r.levelname, r.levelno) {
        (Some(n), _) if Level::from_name(n.as_bytes()).is_some() => {
            Level::from_name(n.as_bytes()).expect("checked")
        }
        (_, Some(no)) => Level::from_no(no),
        (Some(_), None) => Level::Other,
        (None, None) => return Err(ParseError::expected(0, "a levelname or levelno field")),
    };
    let time_ms = match r.created {
        Some(c) => created_ms(c).ok_or(ParseError::expected(0, "a `created` time in seconds"))?,
        None => i64::MIN,
    };
    let message = r
        .message
        .or(r.msg)
        .ok_or(ParseError::expected(0, "a message (or msg) field"))?;
    Ok(AppLine {
        time_ms,
        level,
        logger: r.name.map_or(Cow::Borrowed(&b"root"[..]), cow_bytes),
        message: cow_bytes(message),
        exception: r.exc_text.filter(|e| !e.is_empty()).map(cow_bytes),
    })
}

/// `YYYY-MM-DD[T ]HH:MM:SS[(.|,)fraction][Z|±HH[:]MM]` at the start of `b`:
/// (ms since the epoch, whether the time named its zone, bytes read). The
/// shape of ISO 8601, of Python's default `asctime` and of most loggers.
fn iso_prefix(b: &[u8], zone: Zone) -> Option<(i64, usize)> {
    let d = |i: usize| -> Option<i64> {
        let c = *b.get(i)?;
        c.is_ascii_digit().then(|| i64::from(c - b'0'))
    };
    let n2 = |i: usize| Some(d(i)? * 10 + d(i + 1)?);
    let year = n2(0)? * 100 + n2(2)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b' '))
    {
        return None;
    }
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let (mon, day, h, m, s) = (n2(5)?, n2(8)?, n2(11)?, n2(14)?, n2(17)?);
    if !(1..=12).contains(&mon) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if matches!(b.get(i), Some(b'.' | b',')) && d(i + 1).is_some() {
        i += 1;
        let mut scale = 100;
        while let Some(v) = d(i) {
            ms += v * scale;
            scale /= 10;
            i += 1;
        }
    }
    let local = (days_from_civil(year, mon, day) * 86_400 + h * 3600 + m * 60 + s) * 1000 + ms;
    let offset = match b.get(i) {
        Some(b'Z') => {
            i += 1;
            Some(0)
        }
        Some(&c @ (b'+' | b'-')) if d(i + 1).is_some() => {
            let hh = n2(i + 1)?;
            let j = if b.get(i + 3) == Some(&b':') {
                i + 4
            } else {
                i + 3
            };
            let mm = n2(j)?;
            i = j + 2;
            let o = (hh * 60 + mm) * 60_000;
            Some(if c == b'-' { -o } else { o })
        }
        _ => None,
    };
    let t = match offset {
        Some(o) => local - o,
        None => zone.to_utc_ms(local)?,
    };
    Some((t, i))
}

fn parse_layout(line: &[u8], zone: Zone) -> Result<AppLine<'_>, ParseError> {
    let (time_ms, mut i) = iso_prefix(line, zone).ok_or(ParseError::expected(
        0,
        "a time (2024-05-01T12:00:00.123Z) starting the record",
    ))?;
    let skip_spaces = |i: &mut usize| {
        let s = *i;
        while line.get(*i) == Some(&b' ') {
            *i += 1;
        }
        *i > s
    };
    if !skip_spaces(&mut i) {
        return Err(ParseError::expected(i, "a space after the time"));
    }
    let word_end =
        |from: usize| memchr::memchr(b' ', &line[from..]).map_or(line.len(), |e| from + e);
    let e = word_end(i);
    let word = &line[i..e];
    let name = word
        .strip_prefix(b"[")
        .and_then(|w| w.strip_suffix(b"]"))
        .unwrap_or(word);
    let level = Level::from_name(name).ok_or(ParseError::expected(
        i,
        "a level (INFO, WARN, ERROR, …) after the time",
    ))?;
    i = e;
    skip_spaces(&mut i);
    let mut logger: &[u8] = b"-";
    if line.get(i) == Some(&b'[') {
        if let Some(close) = memchr::memchr(b']', &line[i..]) {
            logger = &line[i + 1..i + close];
            i += close + 1;
            skip_spaces(&mut i);
        }
    } else {
        let e = word_end(i);
        if line.get(e..e + 3) == Some(b" - ") || (e + 2 == line.len() && &line[e..] == b" -") {
            logger = &line[i..e];
            i = (e + 3).min(line.len());
        }
    }
    Ok(AppLine {
        time_ms,
        level,
        logger: Cow::Borrowed(logger),
        message: Cow::Borrowed(&line[i..]),
        exception: None,
    })
}

/// The `LogRecord` attributes a format string may name that the analyzer
/// reads; others are matched and left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    Asctime,
    Created,
    Msecs,
    Name,
    Levelname,
    Levelno,
    Message,
    Other,
}

#[derive(Debug, Clone)]
enum Item {
    Lit(Vec<u8>),
    /// A field, and whether it has a width (padded with spaces).
    Field(Attr, bool),
}

/// A compiled Python `%`-style `logging.Formatter` string.
#[derive(Debug, Clone)]
pub struct PyFormat {
    spec: String,
    items: Vec<Item>,
    /// `datefmt` (strftime) for `%(asctime)s`; `None`: Python's default
    /// `2023-12-12 11:02:09,123`.
    datefmt: Option<String>,
    zone: Zone,
}

impl PyFormat {
    pub fn new(spec: &str, datefmt: Option<&str>, zone: Zone) -> Result<PyFormat, FormatError> {
        let err = |m: String| FormatError(format!("Python format {spec:?}: {m}"));
        let b = spec.as_bytes();
        let mut items: Vec<Item> = Vec::new();
        let mut lit = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            match b.get(i + 1) {
                Some(b'%') => {
                    lit.push(b'%');
                    i += 2;
                    continue;
                }
                Some(b'(') => {}
                _ => {
                    return Err(err(format!(
                        "a `%` at byte {i} that is not `%%` or `%(name)s`"
                    )))
                }
            }
            let close = memchr::memchr(b')', &b[i..])
                .ok_or_else(|| err(format!("`%(` at byte {i} without `)`")))?;
            let name = &spec[i + 2..i + close];
            let mut j = i + close + 1;
            // Conversion flags, width, precision, then the type.
            let flags_from = j;
            while j < b.len() && b"-+ #0123456789.".contains(&b[j]) {
                j += 1;
            }
            let padded = b[flags_from..j].iter().any(u8::is_ascii_digit);
            let ty = *b
                .get(j)
                .ok_or_else(|| err(format!("`%({name})` at byte {i} has no type (s, d, f)")))?;
            if !b"sdifrxXeEgGc".contains(&ty) {
                return Err(err(format!(
                    "`%({name})` has the unknown type {:?}",
                    ty as char
                )));
            }
            let attr = match name {
                "asctime" => Attr::Asctime,
                "created" => Attr::Created,
                "msecs" => Attr::Msecs,
                "name" => Attr::Name,
                "levelname" => Attr::Levelname,
                "levelno" => Attr::Levelno,
                "message" => Attr::Message,
                _ => Attr::Other,
            };
            if !lit.is_empty() {
                items.push(Item::Lit(std::mem::take(&mut lit)));
            }
            if let Some(Item::Field(prev, _)) = items.last() {
                if *prev != Attr::Asctime {
                    return Err(err(format!(
                        "`%({name})` follows another field with nothing between them: where one ends cannot be told"
                    )));
                }
            }
            items.push(Item::Field(attr, padded));
            i = j + 1;
        }
        if !lit.is_empty() {
            items.push(Item::Lit(lit));
        }
        let has = |a: Attr| {
            items
                .iter()
                .any(|it| matches!(it, Item::Field(x, _) if *x == a))
        };
        if !has(Attr::Levelname) && !has(Attr::Levelno) {
            return Err(err(
                "has no %(levelname)s or %(levelno)d: records could not be counted per level"
                    .into(),
            ));
        }
        if !has(Attr::Message) {
            return Err(err("has no %(message)s".into()));
        }
        if !has(Attr::Asctime) && !has(Attr::Created) {
            return Err(err(
                "has no %(asctime)s or %(created)f: every record would take the time it was read"
                    .into(),
            ));
        }
        if let Some(f) = datefmt {
            // chrono reads strftime as Python writes it; refuse what it cannot.
            use chrono::format::{Item as CItem, StrftimeItems};
            if StrftimeItems::new(f).any(|x| matches!(x, CItem::Error)) {
                return Err(err(format!("datefmt {f:?} is not a strftime format")));
            }
        }
        Ok(PyFormat {
            spec: spec.to_string(),
            items,
            datefmt: datefmt.map(str::to_string),
            zone,
        })
    }

    fn parse<'a>(&self, line: &'a [u8]) -> Result<AppLine<'a>, ParseError> {
        let mut at = 0;
        let mut time_ms = i64::MIN;
        let mut msecs: Option<i64> = None;
        let mut level = None;
        let mut logger: &[u8] = b"-";
        let mut message: &[u8] = b"";
        // After a padded field, the padding before the next field.
        let mut pad_carry = false;
        let mut k = 0;
        while k < self.items.len() {
            match &self.items[k] {
                Item::Lit(l) => {
                    if !line[at..].starts_with(l) {
                        return Err(if line.len() - at < l.len() && l.starts_with(&line[at..]) {
                            ParseError::ends(line.len(), "before the format does")
                        } else {
                            ParseError::expected(
                                at,
                                intern(format!("{:?}", String::from_utf8_lossy(l))),
                            )
                        });
                    }
                    at += l.len();
                    pad_carry &= l.iter().all(|&c| c == b' ');
                }
                Item::Field(Attr::Asctime, _) => {
                    pad_carry = false;
                    let (t, n) = self.asctime(&line[at..])?;
                    time_ms = t;
                    at += n;
                }
                &Item::Field(attr, padded) => {
                    let end = match self.items.get(k + 1) {
                        None => line.len(),
                        Some(Item::Lit(l)) => {
                            let rest = &line[at..];
                            let found = if attr == Attr::Message {
                                memchr::memmem::rfind(rest, l)
                            } else {
                                memchr::memmem::find(rest, l)
                            };
                            at + found.ok_or(ParseError::expected(
                                at,
                                intern(format!("{:?} after a field", String::from_utf8_lossy(l))),
                            ))?
                        }
                        Some(Item::Field(..)) => unreachable!("refused when compiled"),
                    };
                    let mut v = &line[at..end];
                    if padded {
                        v = v.trim_ascii();
                    } else if pad_carry {
                        v = v.trim_ascii_start();
                    }
                    pad_carry = padded;
                    match attr {
                        Attr::Name => logger = v,
                        Attr::Message => message = v,
                        Attr::Levelname => {
                            if v.is_empty() || v.contains(&b' ') {
                                return Err(ParseError::expected(at, "a level name"));
                            }
                            level = Some(Level::from_name(v).unwrap_or(Level::Other));
                        }
                        Attr::Levelno => {
                            let n = std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| s.parse::<i64>().ok());
                            let n = n.ok_or(ParseError::expected(at, "a level number"))?;
                            level = level.or(Some(Level::from_no(n)));
                        }
                        Attr::Created => {
                            let c = std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| s.parse::<f64>().ok());
                            time_ms = c.and_then(created_ms).ok_or(ParseError::expected(
                                at,
                                "a time in seconds (%(created)f)",
                            ))?;
                        }
                        Attr::Msecs => {
                            let n = std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| s.parse::<f64>().ok());
                            msecs = Some(
                                n.filter(|n| (0.0..1000.0).contains(n))
                                    .ok_or(ParseError::expected(at, "milliseconds (%(msecs)d)"))?
                                    as i64,
                            );
                        }
                        Attr::Asctime | Attr::Other => {}
                    }
                    at = end;
                }
            }
            k += 1;
        }
        if at != line.len() {
            return Err(ParseError::expected(
                at,
                "the end of the record's first line",
            ));
        }
        // A `datefmt` has whole seconds; a %(msecs)d field adds the rest.
        if let (Some(ms), true) = (msecs, self.datefmt.is_some()) {
            if time_ms != i64::MIN {
                time_ms += ms;
            }
        }
        Ok(AppLine {
            time_ms,
            level: level.ok_or(ParseError::expected(0, "a level"))?,
            logger: Cow::Borrowed(logger),
            message: Cow::Borrowed(message),
            exception: None,
        })
    }

    /// `%(asctime)s` at the start of `b`: (ms since the epoch, bytes read).
    fn asctime(&self, b: &[u8]) -> Result<(i64, usize), ParseError> {
        const WHAT: &str = "the time (%(asctime)s)";
        match &self.datefmt {
            None => {
                // Python's default: `2023-12-12 11:02:09,123`, local time.
                if b.len() < 23 || b[10] != b' ' || b[19] != b',' {
                    return Err(ParseError::expected(0, WHAT));
                }
                let (t, n) =
                    iso_prefix(&b[..23], self.zone).ok_or(ParseError::expected(0, WHAT))?;
                Ok((t, n))
            }
            Some(f) => {
                let s = std::str::from_utf8(b).map_err(|_| ParseError::expected(0, WHAT))?;
                if let Ok((t, rest)) = chrono::DateTime::parse_and_remainder(s, f) {
                    return Ok((t.timestamp_millis(), s.len() - rest.len()));
                }
                let (t, rest) = NaiveDateTime::parse_and_remainder(s, f)
                    .map_err(|_| ParseError::expected(0, WHAT))?;
                let t = self.zone.to_utc_ms(t.and_utc().timestamp_millis()).ok_or(
                    ParseError::expected(0, "a local time that exists (not in a skipped hour)"),
                )?;
                Ok((t, s.len() - rest.len()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "%(asctime)s - %(name)s - %(levelname)s - %(message)s";

    fn py(spec: &str) -> AppFormat {
        AppFormat::new(spec, None, Zone::Utc).unwrap().unwrap()
    }

    #[test]
    fn the_seeds_formatter_reads_python_lines() {
        let f = py(SEED);
        let l = f
            .parse(b"2023-12-12 11:02:09,123 - shop.checkout - WARNING - slow payment p-17: 3.2 s")
            .unwrap();
        assert_eq!(l.time_ms, 1_702_378_929_123);
        assert_eq!(l.level, Level::Warning);
        assert_eq!(&*l.logger, b"shop.checkout");
        assert_eq!(&*l.message, b"slow payment p-17: 3.2 s");
        // A message holding the separator: the message is the rest.
        let l = f
            .parse(b"2023-12-12 11:02:09,123 - a - ERROR - x - y")
            .unwrap();
        assert_eq!(&*l.message, b"x - y");
        // Continuation lines are not a record's start.
        assert!(f.parse(b"Traceback (most recent call last):").is_err());
        assert!(f.parse(b"  File \"app.py\", line 3, in <module>").is_err());
        assert!(f.parse(b"ZeroDivisionError: division by zero").is_err());
        assert!(f.parse(b"").is_err());
    }

    #[test]
    fn padding_datefmt_msecs_and_zones() {
        let f = AppFormat::new(
            "[%(asctime)s.%(msecs)03d] %(levelname)-8s %(name)s: %(message)s",
            Some("%d/%m/%Y %H:%M:%S"),
            "Europe/Berlin".parse().unwrap(),
        )
        .unwrap()
        .unwrap();
        let l = f
            .parse(b"[12/12/2023 12:02:09.045] INFO     web.app: started")
            .unwrap();
        // 12:02:09 in Berlin (winter, +01:00) is 11:02:09 UTC.
        assert_eq!(l.time_ms, 1_702_378_929_045);
        assert_eq!(l.level, Level::Info);
        assert_eq!(&*l.logger, b"web.app");
        assert_eq!(&*l.message, b"started");
        // Summer time: +02:00.
        let l = f.parse(b"[01/07/2024 12:00:00.000] ERROR    a: b").unwrap();
        assert_eq!(l.time_ms, 1_719_828_000_000);
        let seed = AppFormat::new(SEED, None, "+05:30".parse().unwrap())
            .unwrap()
            .unwrap();
        let l = seed
            .parse(b"2023-12-12 16:32:09,123 - a - INFO - m")
            .unwrap();
        assert_eq!(l.time_ms, 1_702_378_929_123);
        // levelno and created.
        let f = py("%(created)f %(levelno)s %(message)s");
        let l = f.parse(b"1702378929.123456 40 boom").unwrap();
        assert_eq!((l.time_ms, l.level), (1_702_378_929_123, Level::Error));
        // A custom level name counts as OTHER.
        assert_eq!(
            py(SEED)
                .parse(b"2023-12-12 11:02:09,123 - a - AUDIT - m")
                .unwrap()
                .level,
            Level::Other
        );
    }

    #[test]
    fn formats_that_cannot_work_are_refused_with_the_reason() {
        let e = |s: &str| AppFormat::new(s, None, Zone::Utc).unwrap().unwrap_err().0;
        assert!(
            e("%(asctime)s %(message)s").contains("levelname"),
            "{}",
            e("%(asctime)s %(message)s")
        );
        assert!(e("%(asctime)s %(levelname)s").contains("message"));
        assert!(e("%(levelname)s %(message)s").contains("asctime"));
        assert!(e("%(asctime)s %(name)s%(levelname)s %(message)s").contains("nothing between"));
        assert!(e("%(asctime)s %(levelname)q %(message)s").contains("unknown type"));
        assert!(
            e("%(asctime)s %(levelname %(message)s").contains("type")
                || e("%(asctime)s %(levelname %(message)s").contains(")")
        );
        assert!(AppFormat::new(SEED, Some("%Y-%Q"), Zone::Utc)
            .unwrap()
            .is_err());
        assert!("Mars/Olympus".parse::<Zone>().is_err());
        assert!("+2:00".parse::<Zone>().is_err());
        assert!(AppFormat::new("combined", None, Zone::Utc).is_none());
    }

    #[test]
    fn the_generic_layout() {
        let f = AppFormat::Layout(Zone::Utc);
        let l = f
            .parse(b"2024-05-01T12:00:00.123Z INFO [billing] charged 3 cards")
            .unwrap();
        assert_eq!(l.time_ms, 1_714_564_800_123);
        assert_eq!(
            (l.level, &*l.logger, &*l.message),
            (Level::Info, &b"billing"[..], &b"charged 3 cards"[..])
        );
        let l = f
            .parse(b"2024-05-01 14:00:00,5+02:00 [WARN] com.example.Cart - empty cart")
            .unwrap();
        assert_eq!(l.time_ms, 1_714_564_800_500);
        assert_eq!(
            (l.level, &*l.logger, &*l.message),
            (Level::Warning, &b"com.example.Cart"[..], &b"empty cart"[..])
        );
        let l = f.parse(b"2024-05-01T12:00:00Z error disk full").unwrap();
        assert_eq!(
            (l.level, &*l.logger, &*l.message),
            (Level::Error, &b"-"[..], &b"disk full"[..])
        );
        assert!(f.parse(b"2024-05-01T12:00:00Z hello world").is_err());
        assert!(f.parse(b"\tat com.example.Cart.add(Cart.java:17)").is_err());
        assert!(f.parse(b"2024-13-01T12:00:00Z INFO x").is_err());
    }

    #[test]
    fn python_json_records() {
        let f = AppFormat::PythonJson;
        let l = f
            .parse(br#"{"created":1702378929.125,"name":"shop","levelname":"ERROR","levelno":40,"message":"no stock for \"sku-1\"","exc_text":"Traceback (most recent call last):\n  File \"a.py\"\nKeyError: 'x'"}"#)
            .unwrap();
        assert_eq!(l.time_ms, 1_702_378_929_125);
        assert_eq!((l.level, &*l.logger), (Level::Error, &b"shop"[..]));
        // As Python 3.11 computes msecs: int((created - int(created)) * 1000).
        assert_eq!(created_ms(1702378929.123), Some(1_702_378_929_122));
        assert_eq!(&*l.message, b"no stock for \"sku-1\"");
        assert!(l.exception.unwrap().ends_with(b"KeyError: 'x'"));
        let l = f
            .parse(br#"{"levelno":25,"msg":"m","exc_text":null}"#)
            .unwrap();
        assert_eq!(
            (l.level, l.time_ms, &*l.logger),
            (Level::Info, i64::MIN, &b"root"[..])
        );
        assert_eq!(
            f.parse(br#"{"created":1,"levelno":20"#).unwrap_err().kind,
            crate::ErrorKind::Ends
        );
        assert!(f.parse(br#"{"created":1,"message":"m"}"#).is_err());
        assert!(f.parse(b"[1,2]").is_err());
    }

    #[test]
    fn no_line_panics_any_parser() {
        use proptest::prelude::*;
        let formats = [
            py(SEED),
            py("%(asctime)s.%(msecs)03d %(levelname)-8s [%(name)s] %(message)s (%(filename)s:%(lineno)d)"),
            AppFormat::new(SEED, Some("%b %d %H:%M:%S"), "America/New_York".parse().unwrap()).unwrap().unwrap(),
            AppFormat::Layout("Europe/Berlin".parse().unwrap()),
            AppFormat::PythonJson,
        ];
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 2000,
            ..Default::default()
        });
        let line = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            "2023-12-12 11:02:0[0-9],[0-9]{3} - [a-z.]{0,5} - [A-Z]{0,9} - .{0,20}".prop_map(String::into_bytes),
            "20[0-9]{2}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}[.,]?[0-9]{0,9}[Z+-]?[0-9:]{0,5} .{0,20}"
                .prop_map(String::into_bytes),
        ];
        runner
            .run(&line, |l| {
                for f in &formats {
                    let _ = f.parse(&l);
                }
                Ok(())
            })
            .unwrap();
    }
}
