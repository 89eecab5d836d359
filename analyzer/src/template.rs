//! Message templates: a message with its variable parts masked, so that
//! `user 17 logged in from 10.0.0.1` and `user 4 logged in from 10.0.0.9`
//! are one template, `user <num> logged in from <ip>`. Pure and free of
//! state: a message always gets the same template, live, after a restart
//! and on replay. A template's id is a stable hash of its text
//! ([`template_id`]).
//!
//! What is masked, in a message cut into words at spaces and at
//! `,;:()[]{}<>/=|"'`:
//!
//! | part | becomes |
//! |---|---|
//! | a quoted string (`'…'`, `"…"`, opened after a space or `=(:[,{`) | `<str>` |
//! | the value of `key=value` | `key=<*>` |
//! | an IPv4 address (with a port) or an IPv6 address | `<ip>` |
//! | a UUID | `<uuid>` |
//! | `0x…` hex, or 8+ hex digits holding a digit | `<hex>` |
//! | any other run of digits (with a sign, a fraction) inside a word | `<num>` |
//!
//! A record with an exception gets `message | exception` where the
//! exception is its type and message line (Python's last traceback line,
//! Java's first), masked the same way.

/// Longest template kept (bytes); longer ones are cut at a character
/// boundary.
pub const MAX_TEMPLATE_BYTES: usize = crate::top::MAX_KEY_BYTES;

fn is_sep(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b','
            | b';'
            | b':'
            | b'('
            | b')'
            | b'['
            | b']'
            | b'{'
            | b'}'
            | b'<'
            | b'>'
            | b'/'
            | b'='
            | b'|'
            | b'"'
            | b'\''
    )
}

/// The template of `msg`, appended to `out` (cleared first).
pub fn template(msg: &[u8], out: &mut Vec<u8>) {
    out.clear();
    mask_into(msg, out);
    cut(out);
}

/// The template of a message and its exception (see the module docs).
pub fn template_with_exception(msg: &[u8], exception: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    mask_into(first_line(msg), out);
    if let Some(line) = exception.and_then(exception_line) {
        out.extend_from_slice(b" | ");
        mask_into(line, out);
    }
    cut(out);
}

fn first_line(b: &[u8]) -> &[u8] {
    let b = memchr::memchr(b'\n', b).map_or(b, |i| &b[..i]);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// The line of an exception's text that names it: after a Python
/// `Traceback (most recent call last):`, the last line that is not
/// indented; otherwise (Java) the first such line.
pub fn exception_line(text: &[u8]) -> Option<&[u8]> {
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with(b" ") && !l.starts_with(b"\t"));
    let first = lines.next()?;
    if first.starts_with(b"Traceback (most recent call last)") {
        lines
            .rfind(|l| {
                !l.starts_with(b"During handling of the above exception")
                    && !l.starts_with(b"The above exception was the direct cause")
                    && !l.starts_with(b"Traceback (most recent call last)")
            })
            .or(Some(first))
    } else {
        Some(first)
    }
}

fn cut(out: &mut Vec<u8>) {
    if out.len() > MAX_TEMPLATE_BYTES {
        let mut end = MAX_TEMPLATE_BYTES;
        while end > MAX_TEMPLATE_BYTES - 3 && out[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        out.truncate(end);
    }
}

fn mask_into(msg: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < msg.len() {
        let b = msg[i];
        // A quoted string opened after a separator (not an apostrophe).
        if (b == b'"' || b == b'\'')
            && (i == 0 || matches!(msg[i - 1], b' ' | b'=' | b'(' | b':' | b'[' | b',' | b'{'))
        {
            if let Some(close) = memchr::memchr(b, &msg[i + 1..]) {
                let after = msg.get(i + close + 2).copied();
                if after.is_none_or(|a| !a.is_ascii_alphanumeric()) {
                    out.extend_from_slice(b"<str>");
                    i += close + 2;
                    continue;
                }
            }
        }
        if b == b'=' {
            out.push(b'=');
            i += 1;
            // key=value: the value up to a space or a separator that ends it.
            let start = i;
            if msg.get(i).is_some_and(|&c| c == b'"' || c == b'\'') {
                continue; // a quoted value: masked as a string above
            }
            while i < msg.len() && !matches!(msg[i], b' ' | b',' | b';' | b')' | b']' | b'}' | b'&')
            {
                i += 1;
            }
            if i > start {
                out.extend_from_slice(b"<*>");
            }
            continue;
        }
        // `::1`, `::ffff:10.0.0.1`: an IPv6 address that starts with a colon.
        if b == b':'
            && msg.get(i + 1) == Some(&b':')
            && (i == 0 || matches!(msg[i - 1], b' ' | b'(' | b'[' | b'='))
        {
            if let Some(n) = ip_len(&msg[i..]) {
                out.extend_from_slice(b"<ip>");
                i += n;
                continue;
            }
        }
        if is_sep(b) {
            out.push(b);
            i += 1;
            continue;
        }
        // A word: up to the next separator, but an IP address keeps its
        // colons (IPv6, a port) and dots.
        let mut end = i;
        while end < msg.len() && !is_sep(msg[end]) {
            end += 1;
        }
        if let Some(n) = ip_len(&msg[i..]) {
            out.extend_from_slice(b"<ip>");
            i += n;
            continue;
        }
        mask_word(&msg[i..end], out);
        i = end;
    }
}

/// The length of an IP address (v4 with an optional port, or v6) at the
/// start of `b`, when it is one and ends at a separator.
fn ip_len(b: &[u8]) -> Option<usize> {
    let ends = |n: usize| {
        b.get(n)
            .is_none_or(|&c| is_sep(c) || c == b'.' && b.get(n + 1).is_none_or(|&d| d == b' '))
    };
    // IPv4: four dot-separated groups of 1–3 digits.
    let v4 = |from: usize| -> Option<usize> {
        let mut i = from;
        for g in 0..4 {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() && i - s < 3 {
                i += 1;
            }
            if i == s {
                return None;
            }
            if g < 3 {
                if b.get(i) != Some(&b'.') {
                    return None;
                }
                i += 1;
            }
        }
        Some(i)
    };
    if let Some(mut n) = v4(0) {
        if b.get(n) == Some(&b':') && b.get(n + 1).is_some_and(u8::is_ascii_digit) {
            n += 1;
            while b.get(n).is_some_and(u8::is_ascii_digit) {
                n += 1;
            }
        }
        return ends(n).then_some(n);
    }
    // IPv6: hex groups and colons, at least two colons, a hex digit first
    // or `::`.
    let mut n = 0;
    let mut colons = 0;
    while n < b.len() && (b[n].is_ascii_hexdigit() || b[n] == b':' || (b[n] == b'.' && colons >= 2))
    {
        colons += usize::from(b[n] == b':');
        n += 1;
    }
    let hexish = b[..n]
        .split(|&c| c == b':')
        .all(|g| g.len() <= 4 || g.contains(&b'.'));
    (colons >= 2 && hexish && n >= 3 && ends(n) && b[..n].iter().any(|c| c.is_ascii_hexdigit()))
        .then_some(n)
}

fn is_uuid(w: &[u8]) -> bool {
    w.len() == 36
        && w.iter().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

fn mask_word(w: &[u8], out: &mut Vec<u8>) {
    if is_uuid(w) {
        out.extend_from_slice(b"<uuid>");
        return;
    }
    let hex_digits = |h: &[u8]| !h.is_empty() && h.iter().all(u8::is_ascii_hexdigit);
    if (w.len() > 2 && (w.starts_with(b"0x") || w.starts_with(b"0X")) && hex_digits(&w[2..]))
        || (w.len() >= 8
            && hex_digits(w)
            && w.iter().any(u8::is_ascii_digit)
            && w.iter().any(u8::is_ascii_alphabetic))
    {
        out.extend_from_slice(b"<hex>");
        return;
    }
    // Digit runs (with a sign before and a fraction after) become <num>.
    let mut i = 0;
    while i < w.len() {
        let c = w[i];
        let signed =
            (c == b'-' || c == b'+') && (i == 0) && w.get(i + 1).is_some_and(u8::is_ascii_digit);
        if c.is_ascii_digit() || signed {
            i += 1;
            while i < w.len() && w[i].is_ascii_digit() {
                i += 1;
            }
            if w.get(i) == Some(&b'.') && w.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i += 1;
                while i < w.len() && w[i].is_ascii_digit() {
                    i += 1;
                }
            }
            out.extend_from_slice(b"<num>");
        } else {
            out.push(c);
            i += 1;
        }
    }
}

/// A template's id: its text's 64-bit wyhash (seed 0), 16 hex digits.
pub fn template_id(template: &[u8]) -> String {
    format!("{:016x}", template_hash(template))
}

/// The number behind [`template_id`].
#[inline]
pub fn template_hash(template: &[u8]) -> u64 {
    wyhash::wyhash(template, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(m: &str) -> String {
        let mut out = Vec::new();
        template(m.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn variable_parts_are_masked() {
        let cases = [
            (
                "user 17 logged in from 10.0.0.1",
                "user <num> logged in from <ip>",
            ),
            (
                "user 4 logged in from 192.168.1.200:8080",
                "user <num> logged in from <ip>",
            ),
            ("peer 2001:db8::1 closed", "peer <ip> closed"),
            ("peer ::1 closed", "peer <ip> closed"),
            (
                "order 3fa85f64-5717-4562-b3fc-2c963f66afa6 paid",
                "order <uuid> paid",
            ),
            ("object at 0x7f3a2c1b9e80", "object at <hex>"),
            ("commit deadbeef12 pushed", "commit <hex> pushed"),
            ("slow payment p-17: 3.2 s", "slow payment p-<num>: <num> s"),
            ("took 120ms (limit -5)", "took <num>ms (limit <num>)"),
            (
                "GET /user/42/cart?x=1 failed",
                "GET /user/<num>/cart?x=<*> failed",
            ),
            (
                "retry user=bob attempt=3, backoff=0.5s",
                "retry user=<*> attempt=<*>, backoff=<*>",
            ),
            (
                "no stock for 'sku-1' in \"main\"",
                "no stock for <str> in <str>",
            ),
            ("key=\"a b\" done", "key=<str> done"),
            ("can't connect, it's down", "can't connect, it's down"),
            (
                "version 3.11.4 on node12",
                "version <num>.<num> on node<num>",
            ),
            ("", ""),
        ];
        for (m, want) in cases {
            assert_eq!(t(m), want, "{m}");
        }
        // The same message always gets the same template and id.
        assert_eq!(
            t("user 17 logged in from 10.0.0.1"),
            t("user 99 logged in from 10.1.2.3")
        );
        assert_eq!(template_id(b"abc"), template_id(b"abc"));
        assert_eq!(template_id(b"abc").len(), 16);
        assert_ne!(template_id(b"abc"), template_id(b"abd"));
    }

    #[test]
    fn exceptions_are_named_by_their_line() {
        let py = b"Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    1/0\nZeroDivisionError: division by zero";
        assert_eq!(
            exception_line(py),
            Some(&b"ZeroDivisionError: division by zero"[..])
        );
        let chained = b"Traceback (most recent call last):\n  File \"a\"\nKeyError: 'k'\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"b\"\nValueError: bad 7";
        assert_eq!(exception_line(chained), Some(&b"ValueError: bad 7"[..]));
        let java = b"java.lang.IllegalStateException: cart 17 empty\n\tat com.x.Cart.add(Cart.java:17)\nCaused by: java.io.IOException";
        assert_eq!(
            exception_line(java),
            Some(&b"java.lang.IllegalStateException: cart 17 empty"[..])
        );
        let mut out = Vec::new();
        template_with_exception(b"payment 7 failed", Some(py), &mut out);
        assert_eq!(
            out,
            b"payment <num> failed | ZeroDivisionError: division by zero"
        );
        template_with_exception(b"payment 7 failed\nsecond line 9", None, &mut out);
        assert_eq!(out, b"payment <num> failed");
    }

    #[test]
    fn any_message_gets_a_bounded_template_without_panicking() {
        use proptest::prelude::*;
        proptest!(|(m in proptest::collection::vec(any::<u8>(), 0..400))| {
            let mut a = Vec::new();
            let mut b = Vec::new();
            template(&m, &mut a);
            template(&m, &mut b);
            prop_assert_eq!(&a, &b);
            prop_assert!(a.len() <= MAX_TEMPLATE_BYTES);
            template_with_exception(&m, Some(&m), &mut a);
            prop_assert!(a.len() <= MAX_TEMPLATE_BYTES);
        });
    }
}
