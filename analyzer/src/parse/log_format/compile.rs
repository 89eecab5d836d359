//! Compiling a pasted `log_format` / `LogFormat` string into tokens.

use super::FormatError;
use crate::parse::line::intern;
use crate::parse::Escape;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Var {
    Client,
    /// `$http_x_forwarded_for`: the client when no address field is present.
    ForwardedFor,
    User,
    TimeLocal,
    TimeIso8601,
    /// Seconds since the epoch, maybe with a fraction (`$msec`, Apache `%{sec}t`).
    EpochSeconds,
    /// Apache `%{msec}t` / `%{usec}t`: whole milli- / microseconds since the epoch.
    EpochMillis,
    EpochMicros,
    /// Apache `%{FORMAT}t`, a strftime format (read with chrono); the token's
    /// name holds it. Without `%z` in it, the time is taken as UTC.
    TimeStrftime,
    Request,
    Method,
    Path,
    Status,
    BodyBytes,
    /// Seconds with a fraction (`$request_time`, Apache `%T`).
    RequestSeconds,
    /// Microseconds (Apache `%D`).
    RequestMicros,
    /// Milliseconds (Apache `%{ms}T`).
    RequestMillis,
    UpstreamSeconds,
    Host,
    Referer,
    UserAgent,
    Ignored,
    /// An `$upstream_*` value other than the response time: can be a list
    /// (`a, b : c`), ignored.
    IgnoredList,
}

impl Var {
    /// nginx writes one value per upstream tried, joined by `, ` and ` : `.
    pub(super) fn is_list(self) -> bool {
        matches!(self, Var::UpstreamSeconds | Var::IgnoredList)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    Lit(Vec<u8>),
    Var(Var, String),
}

/// What a parse error says is expected: the literal, and after which field.
pub(super) fn describe(toks: &[Tok], k: usize) -> &'static str {
    let Tok::Lit(l) = &toks[k] else {
        return "a field";
    };
    let lit = String::from_utf8_lossy(l);
    let s = match k.checked_sub(1).map(|j| &toks[j]) {
        Some(Tok::Var(_, name)) => format!("'{lit}' after {name}"),
        _ => format!("'{lit}'"),
    };
    intern(s)
}

/// Where a line ends when it ends at token `k`: inside a field, or after
/// the field before a literal.
pub(super) fn describe_end(toks: &[Tok], k: usize) -> &'static str {
    let s = match (&toks[k], k.checked_sub(1).map(|j| &toks[j])) {
        (Tok::Var(_, name), _) => format!("inside the {name} field"),
        (Tok::Lit(_), Some(Tok::Var(_, name))) => format!("after the {name} field"),
        (Tok::Lit(l), _) => format!("before '{}'", String::from_utf8_lossy(l)),
    };
    intern(s)
}

fn nginx_var(name: &str) -> Var {
    match name {
        "remote_addr" | "binary_remote_addr" | "realip_remote_addr" => Var::Client,
        "http_x_forwarded_for" | "proxy_add_x_forwarded_for" => Var::ForwardedFor,
        "remote_user" => Var::User,
        "time_local" => Var::TimeLocal,
        "time_iso8601" => Var::TimeIso8601,
        "msec" => Var::EpochSeconds,
        "request" => Var::Request,
        "request_method" => Var::Method,
        "request_uri" | "uri" | "document_uri" => Var::Path,
        "status" => Var::Status,
        "body_bytes_sent" | "bytes_sent" => Var::BodyBytes,
        "request_time" => Var::RequestSeconds,
        "upstream_response_time" => Var::UpstreamSeconds,
        "host" | "server_name" | "http_host" => Var::Host,
        "http_referer" => Var::Referer,
        "http_user_agent" => Var::UserAgent,
        n if n.starts_with("upstream_") => Var::IgnoredList,
        _ => Var::Ignored,
    }
}

pub(super) fn compile_nginx(spec: &str) -> Result<Vec<Tok>, FormatError> {
    let b = spec.as_bytes();
    let mut toks = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            lit.push(b[i]);
            i += 1;
            continue;
        }
        let braced = b.get(i + 1) == Some(&b'{');
        let start = i + 1 + usize::from(braced);
        let mut j = start;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
            j += 1;
        }
        if j == start {
            return Err(FormatError(format!(
                "'$' at byte {i} of the format is not followed by a variable name"
            )));
        }
        let name = &spec[start..j];
        if braced {
            if b.get(j) != Some(&b'}') {
                return Err(FormatError(format!("'${{{name}' is missing its '}}'")));
            }
            j += 1;
        }
        push_lit(&mut toks, &mut lit);
        toks.push(Tok::Var(nginx_var(name), format!("${name}")));
        i = j;
    }
    push_lit(&mut toks, &mut lit);
    Ok(toks)
}

pub(super) fn compile_apache(spec: &str) -> Result<Vec<Tok>, FormatError> {
    // A pasted LogFormat keeps its `\"` escapes; the log has plain quotes.
    let unescaped = spec.replace("\\\"", "\"");
    let b = unescaped.as_bytes();
    let mut toks = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            lit.push(b[i]);
            i += 1;
            continue;
        }
        let at = i;
        i += 1;
        if b.get(i) == Some(&b'%') {
            lit.push(b'%');
            i += 1;
            continue;
        }
        while matches!(b.get(i), Some(b'>' | b'<')) {
            i += 1;
        }
        let mut arg = None;
        if b.get(i) == Some(&b'{') {
            let close = b[i..].iter().position(|&c| c == b'}').ok_or_else(|| {
                FormatError(format!("'%{{' at byte {at} of the format has no '}}'"))
            })?;
            arg = Some(unescaped[i + 1..i + close].to_string());
            i += close + 1;
        }
        let Some(&d) = b.get(i) else {
            return Err(FormatError(format!(
                "the format ends inside the directive at byte {at}"
            )));
        };
        if !d.is_ascii_alphabetic() {
            return Err(FormatError(format!(
                "'%' at byte {at} of the format is not followed by a directive letter"
            )));
        }
        i += 1;
        let name = unescaped[at..i].to_string();
        let var = match (d, arg.as_deref().map(str::to_ascii_lowercase).as_deref()) {
            (b'h' | b'a', _) => Var::Client,
            (b'u', _) => Var::User,
            (b't', None) => {
                // `%t` is `[10/Oct/2000:13:55:36 -0700]`, brackets included.
                lit.push(b'[');
                push_lit(&mut toks, &mut lit);
                toks.push(Tok::Var(Var::TimeLocal, name));
                lit.push(b']');
                continue;
            }
            (b't', Some(_)) => {
                // `begin:`/`end:` say when the time was taken; either will do.
                let raw = arg.as_deref().unwrap_or_default();
                let raw = raw
                    .strip_prefix("begin:")
                    .or_else(|| raw.strip_prefix("end:"))
                    .unwrap_or(raw);
                match raw.to_ascii_lowercase().as_str() {
                    "sec" => Var::EpochSeconds,
                    "msec" => Var::EpochMillis,
                    "usec" => Var::EpochMicros,
                    "msec_frac" | "usec_frac" => Var::Ignored,
                    _ if raw.contains('%') => {
                        if chrono::format::StrftimeItems::new(raw)
                            .any(|i| matches!(i, chrono::format::Item::Error))
                        {
                            return Err(FormatError(format!(
                                "{name}: '{raw}' is not a strftime format chrono can read"
                            )));
                        }
                        push_lit(&mut toks, &mut lit);
                        toks.push(Tok::Var(Var::TimeStrftime, raw.to_string()));
                        continue;
                    }
                    f => {
                        return Err(FormatError(format!(
                            "{name}: the time directive knows %t, %{{sec}}t, %{{msec}}t, %{{usec}}t and %{{strftime format}}t, not '{f}'"
                        )))
                    }
                }
            }
            (b'r', _) => Var::Request,
            (b'm', _) => Var::Method,
            (b'U', _) => Var::Path,
            (b's', _) => Var::Status,
            (b'b' | b'B' | b'O', _) => Var::BodyBytes,
            (b'D', _) => Var::RequestMicros,
            (b'T', Some("ms")) => Var::RequestMillis,
            (b'T', Some("us")) => Var::RequestMicros,
            (b'T', _) => Var::RequestSeconds,
            (b'v' | b'V', _) => Var::Host,
            (b'i', Some("referer")) => Var::Referer,
            (b'i', Some("user-agent")) => Var::UserAgent,
            (b'i', Some("x-forwarded-for")) => Var::ForwardedFor,
            (b'i', Some("host")) => Var::Host,
            _ => Var::Ignored,
        };
        push_lit(&mut toks, &mut lit);
        toks.push(Tok::Var(var, name));
    }
    push_lit(&mut toks, &mut lit);
    Ok(toks)
}

fn push_lit(toks: &mut Vec<Tok>, lit: &mut Vec<u8>) {
    if !lit.is_empty() {
        toks.push(Tok::Lit(std::mem::take(lit)));
    }
}

/// The format string out of a line pasted from a server's config:
/// `log_format main [escape=json] '...' '...';` (nginx joins the quoted
/// pieces), `LogFormat "..." nickname` (Apache), or a bare `'...'`; with the
/// escaping the line declares.
pub(super) fn unwrap_config_line(line: &str) -> Result<(String, Escape), FormatError> {
    let mut s = line.trim().trim_end_matches(';').trim();
    if let Some(rest) = s.strip_prefix("log_format") {
        // name, then an optional escape= parameter
        let rest = rest.trim_start();
        let rest = rest
            .split_once(char::is_whitespace)
            .map_or("", |(_, r)| r)
            .trim_start();
        let mut escape = Escape::Default;
        s = match rest.strip_prefix("escape=") {
            Some(r) => {
                let (name, r) = r.split_once(char::is_whitespace).unwrap_or((r, ""));
                escape = match name {
                    "default" => Escape::Default,
                    "json" => Escape::Json,
                    "none" => Escape::None,
                    _ => {
                        return Err(FormatError(format!(
                            "escape={name}: nginx knows escape=default, escape=json and escape=none"
                        )))
                    }
                };
                r
            }
            None => rest,
        };
        let mut out = String::new();
        let mut pieces = s.split('\'');
        // Odd-numbered pieces are inside quotes.
        pieces.next();
        for (k, piece) in pieces.enumerate() {
            if k % 2 == 0 {
                out.push_str(piece);
            }
        }
        return Ok((if out.is_empty() { s.to_string() } else { out }, escape));
    }
    if let Some(rest) = s.strip_prefix("LogFormat") {
        let rest = rest.trim();
        if let Some(body) = rest.strip_prefix('"') {
            // Up to the last quote; a nickname may follow it.
            if let Some(end) = body.rfind('"') {
                return Ok((body[..end].to_string(), Escape::Default));
            }
        }
        return Ok((rest.to_string(), Escape::Default));
    }
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|t| t.strip_suffix(q)) {
            s = inner;
            break;
        }
    }
    Ok((s.to_string(), Escape::Default))
}
