//! Python's `str()`, `repr()` and `%`-formatting of decoded pickle values,
//! for `LogRecord.getMessage()` (`msg % args`) on records whose client left
//! the arguments unapplied. (The standard `SocketHandler` applies them before
//! pickling and sends `args = None`; other clients do not.)

use super::pickle::Value;

/// `str(v)` as Python prints it.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        v => py_repr(v),
    }
}

/// `repr(v)` as Python prints it.
pub fn py_repr(v: &Value) -> String {
    let mut s = String::new();
    repr_into(v, &mut s);
    s
}

fn repr_into(v: &Value, out: &mut String) {
    let seq = |items: &[Value], open: &str, close: &str, out: &mut String| {
        out.push_str(open);
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            repr_into(x, out);
        }
        out.push_str(close);
    };
    match v {
        Value::None => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int(n) => out.push_str(&n.to_string()),
        Value::BigInt(s) => out.push_str(s),
        Value::Float(f) => out.push_str(&float_repr(*f)),
        Value::Str(s) => str_repr(s, out),
        Value::Bytes(b) => {
            out.push('b');
            let q = if b.contains(&b'\'') && !b.contains(&b'"') {
                '"'
            } else {
                '\''
            };
            out.push(q);
            for &c in b {
                match c {
                    b'\\' => out.push_str("\\\\"),
                    b'\n' => out.push_str("\\n"),
                    b'\r' => out.push_str("\\r"),
                    b'\t' => out.push_str("\\t"),
                    c if c as char == q => {
                        out.push('\\');
                        out.push(q)
                    }
                    0x20..=0x7e => out.push(c as char),
                    c => out.push_str(&format!("\\x{c:02x}")),
                }
            }
            out.push(q);
        }
        Value::Tuple(items) if items.len() == 1 => {
            out.push('(');
            repr_into(&items[0], out);
            out.push_str(",)");
        }
        Value::Tuple(items) => seq(items, "(", ")", out),
        Value::List(items) => seq(items, "[", "]", out),
        Value::Set(items) if items.is_empty() => out.push_str("set()"),
        Value::Set(items) => seq(items, "{", "}", out),
        Value::Dict(kv) => {
            out.push('{');
            for (i, (k, v)) in kv.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(k, out);
                out.push_str(": ");
                repr_into(v, out);
            }
            out.push('}');
        }
    }
}

fn str_repr(s: &str, out: &mut String) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(q)
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
}

/// `repr(float)`: the shortest text that reads back, fixed notation for
/// exponents −4 ≤ e < 16, otherwise scientific with a signed two-digit exponent.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip digits: "1.2345e-5".
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent digits");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            for _ in 0..(-exp - 1) {
                s.push('0');
            }
            s.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                for _ in digits.len()..int_len {
                    s.push('0');
                }
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    s
}

/// `fmt % args` as Python computes it for `str` formats: a tuple gives the
/// positional arguments, a dict the `%(name)s` mapping, anything else is
/// one argument. The error is Python's complaint, roughly.
pub fn percent_format(fmt: &str, args: &Value) -> Result<String, String> {
    let positional: Vec<&Value> = match args {
        Value::Tuple(items) => items.iter().collect(),
        other => vec![other],
    };
    let mapping = match args {
        Value::Dict(_) => Some(args),
        _ => None,
    };
    let mut next = 0usize;
    let mut out = String::with_capacity(fmt.len() + 16);
    let b = fmt.as_bytes();
    let mut i = 0;
    let mut used_mapping = false;
    while i < b.len() {
        let Some(j) = memchr::memchr(b'%', &b[i..]) else {
            out.push_str(&fmt[i..]);
            break;
        };
        out.push_str(&fmt[i..i + j]);
        i += j + 1;
        // %[(key)][flags][width][.precision][length]type
        let mut key = None;
        if b.get(i) == Some(&b'(') {
            let mut depth = 1;
            let start = i + 1;
            let mut k = start;
            while k < b.len() && depth > 0 {
                match b[k] {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    _ => {}
                }
                k += 1;
            }
            if depth > 0 {
                return Err("incomplete format key".into());
            }
            key = Some(&fmt[start..k - 1]);
            i = k;
        }
        let mut flags = Flags::default();
        while let Some(&c) = b.get(i) {
            match c {
                b'-' => flags.left = true,
                b'+' => flags.plus = true,
                b' ' => flags.space = true,
                b'#' => flags.alt = true,
                b'0' => flags.zero = true,
                _ => break,
            }
            i += 1;
        }
        let take_arg = |next: &mut usize| -> Result<&Value, String> {
            let v = positional
                .get(*next)
                .copied()
                .ok_or_else(|| "not enough arguments for format string".to_string())?;
            *next += 1;
            Ok(v)
        };
        let number = |i: &mut usize, next: &mut usize| -> Result<Option<usize>, String> {
            if b.get(*i) == Some(&b'*') {
                *i += 1;
                return match take_arg(next)? {
                    Value::Int(n) => Ok(Some(n.unsigned_abs() as usize)),
                    _ => Err("* wants int".into()),
                };
            }
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            if s == *i {
                return Ok(None);
            }
            fmt[s..*i]
                .parse()
                .map(Some)
                .map_err(|_| "width too big".to_string())
        };
        let width = number(&mut i, &mut next)?;
        let precision = if b.get(i) == Some(&b'.') {
            i += 1;
            Some(number(&mut i, &mut next)?.unwrap_or(0))
        } else {
            None
        };
        // A record's format cannot make the receiver allocate without bound
        // (found by the fuzzer: "%999999999999s").
        if width.max(precision).is_some_and(|n| n > MAX_WIDTH) {
            return Err(format!("width or precision over {MAX_WIDTH}"));
        }
        while matches!(b.get(i), Some(b'h' | b'l' | b'L')) {
            i += 1;
        }
        let Some(&conv) = b.get(i) else {
            return Err("incomplete format".into());
        };
        i += 1;
        if conv == b'%' {
            out.push('%');
            continue;
        }
        let v: &Value = match key {
            Some(k) => {
                used_mapping = true;
                let m = mapping.ok_or("format requires a mapping")?;
                m.get(k).ok_or_else(|| format!("KeyError: {k:?}"))?
            }
            None => take_arg(&mut next)?,
        };
        let body = convert(conv, v, precision, &flags)?;
        pad(
            &mut out,
            body,
            width,
            &flags,
            matches!(conv, b's' | b'r' | b'a' | b'c'),
        );
    }
    if !used_mapping && mapping.is_none() && next < positional.len() {
        return Err("not all arguments converted during string formatting".into());
    }
    Ok(out)
}

/// Largest width or precision a format may ask for.
pub const MAX_WIDTH: usize = 10_000;

#[derive(Default)]
struct Flags {
    left: bool,
    plus: bool,
    space: bool,
    alt: bool,
    zero: bool,
}

fn as_f64(v: &Value) -> Result<f64, String> {
    match v {
        Value::Int(n) => Ok(*n as f64),
        Value::BigInt(s) => s.parse().map_err(|_| "bad integer".to_string()),
        Value::Bool(b) => Ok(*b as i64 as f64),
        Value::Float(f) => Ok(*f),
        _ => Err("must be real number".into()),
    }
}

/// The digits of an integer argument (`%d` truncates floats as Python does).
fn as_int_text(v: &Value) -> Result<(bool, String), String> {
    let s = match v {
        Value::Int(n) => n.to_string(),
        Value::BigInt(s) => s.clone(),
        Value::Bool(b) => (*b as i64).to_string(),
        Value::Float(f) if f.is_finite() => format!("{:.0}", f.trunc()),
        Value::Float(_) => return Err("cannot convert float infinity or NaN to integer".into()),
        _ => return Err("a number is required".into()),
    };
    Ok(match s.strip_prefix('-') {
        Some(d) => (true, d.to_string()),
        None => (false, s),
    })
}

fn sign(neg: bool, f: &Flags) -> &'static str {
    if neg {
        "-"
    } else if f.plus {
        "+"
    } else if f.space {
        " "
    } else {
        ""
    }
}

/// Python's `%e` exponent: sign and at least two digits.
fn fix_exp(s: String) -> String {
    match s.split_once('e') {
        Some((m, e)) => {
            let n: i32 = e.parse().unwrap_or(0);
            format!("{m}e{}{:02}", if n < 0 { '-' } else { '+' }, n.abs())
        }
        None => s,
    }
}

fn convert(conv: u8, v: &Value, precision: Option<usize>, f: &Flags) -> Result<String, String> {
    Ok(match conv {
        b's' => {
            let s = py_str(v);
            match precision {
                Some(p) => s.chars().take(p).collect(),
                None => s,
            }
        }
        b'r' | b'a' => {
            let s = py_repr(v);
            match precision {
                Some(p) => s.chars().take(p).collect(),
                None => s,
            }
        }
        b'd' | b'i' | b'u' => {
            let (neg, digits) = as_int_text(v)?;
            format!("{}{digits}", sign(neg, f))
        }
        b'x' | b'X' | b'o' => {
            let n = match v {
                Value::Int(n) => *n as i128,
                Value::Bool(b) => *b as i128,
                _ => return Err(format!("%{} format: an integer is required", conv as char)),
            };
            let (neg, m) = (n < 0, n.unsigned_abs());
            let body = match conv {
                b'x' => format!("{}{m:x}", if f.alt { "0x" } else { "" }),
                b'X' => format!("{}{m:X}", if f.alt { "0X" } else { "" }),
                _ => format!("{}{m:o}", if f.alt { "0o" } else { "" }),
            };
            format!("{}{body}", sign(neg, f))
        }
        b'f' | b'F' => {
            let x = as_f64(v)?;
            let p = precision.unwrap_or(6);
            if !x.is_finite() {
                return Ok(float_repr(x));
            }
            format!("{}{:.*}", sign(x.is_sign_negative(), f), p, x.abs())
        }
        b'e' | b'E' => {
            let x = as_f64(v)?;
            let p = precision.unwrap_or(6);
            let s = fix_exp(format!("{:.*e}", p, x.abs()));
            let s = format!("{}{s}", sign(x.is_sign_negative(), f));
            if conv == b'E' {
                s.to_uppercase()
            } else {
                s
            }
        }
        b'g' | b'G' => {
            let x = as_f64(v)?;
            let p = precision.unwrap_or(6).max(1);
            if !x.is_finite() {
                return Ok(float_repr(x));
            }
            let e = format!("{:.*e}", p - 1, x.abs());
            let exp: i32 = e.split_once('e').map_or(0, |(_, e)| e.parse().unwrap_or(0));
            let mut s = if exp >= -4 && exp < p as i32 {
                format!("{:.*}", (p as i32 - 1 - exp).max(0) as usize, x.abs())
            } else {
                fix_exp(e)
            };
            if !f.alt {
                // Strip trailing zeros of the fraction.
                let (m, rest) = match s.find('e') {
                    Some(k) => (s[..k].to_string(), s[k..].to_string()),
                    None => (s.clone(), String::new()),
                };
                let m = if m.contains('.') {
                    m.trim_end_matches('0').trim_end_matches('.').to_string()
                } else {
                    m
                };
                s = m + &rest;
            }
            let s = format!("{}{s}", sign(x.is_sign_negative(), f));
            if conv == b'G' {
                s.to_uppercase()
            } else {
                s
            }
        }
        b'c' => match v {
            Value::Int(n) => char::from_u32(*n as u32)
                .ok_or("%c arg not in range")?
                .to_string(),
            Value::Str(s) if s.chars().count() == 1 => s.clone(),
            _ => return Err("%c requires int or char".into()),
        },
        c => {
            return Err(format!(
                "unsupported format character {:?} (0x{c:x})",
                c as char
            ))
        }
    })
}

fn pad(out: &mut String, body: String, width: Option<usize>, f: &Flags, text: bool) {
    let len = body.chars().count();
    let Some(w) = width.filter(|w| *w > len) else {
        out.push_str(&body);
        return;
    };
    let fill = w - len;
    if f.left {
        out.push_str(&body);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if f.zero && !text {
        // Zeros go after the sign.
        let (s, rest) = match body.chars().next() {
            Some(c @ ('-' | '+' | ' ')) => (Some(c), &body[1..]),
            _ => (None, &body[..]),
        };
        if let Some(s) = s {
            out.push(s);
        }
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(rest);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn positional_and_mapping_formats_as_python() {
        let args = Value::Tuple(vec![s("bob"), Value::Int(3), Value::Float(0.5)]);
        assert_eq!(
            percent_format("user %s has %d items (%.1f%%)", &args).unwrap(),
            "user bob has 3 items (0.5%)"
        );
        let m = Value::Dict(vec![(s("who"), s("ann")), (s("n"), Value::Int(7))]);
        assert_eq!(percent_format("%(who)s:%(n)03d", &m).unwrap(), "ann:007");
        assert_eq!(
            percent_format("%r", &Value::Tuple(vec![s("a'b")])).unwrap(),
            "\"a'b\""
        );
        assert_eq!(
            percent_format("%5s|%-5s|", &Value::Tuple(vec![s("a"), s("b")])).unwrap(),
            "    a|b    |"
        );
        assert_eq!(
            percent_format(
                "%x %X %o",
                &Value::Tuple(vec![Value::Int(255), Value::Int(255), Value::Int(8)])
            )
            .unwrap(),
            "ff FF 10"
        );
        assert!(percent_format("%s %s", &Value::Tuple(vec![s("a")])).is_err());
        assert!(percent_format("%999999999999s", &Value::Tuple(vec![s("a")])).is_err());
        assert!(percent_format("%.99999999f", &Value::Tuple(vec![Value::Float(1.0)])).is_err());
        assert!(percent_format("%*s", &Value::Tuple(vec![Value::Int(1 << 40), s("a")])).is_err());
        assert!(percent_format("%s", &Value::Tuple(vec![s("a"), s("b")])).is_err());
    }

    #[test]
    fn floats_print_as_python_repr() {
        for (f, t) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(float_repr(f), t);
        }
        let g = |x: f64| percent_format("%g", &Value::Float(x)).unwrap();
        assert_eq!(g(0.5), "0.5");
        assert_eq!(g(1234567.0), "1.23457e+06");
        assert_eq!(g(100.0), "100");
        assert_eq!(
            percent_format("%e", &Value::Float(12345.678)).unwrap(),
            "1.234568e+04"
        );
    }
}
