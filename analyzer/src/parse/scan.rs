//! Byte scanning shared by every parser: finding the few-byte literals
//! between fields, absent (`-`) fields, seconds, the request line.

/// Where literal `lit` first occurs in `hay`. Literals between fields are a
/// few bytes long: a `memchr` for the first byte and a compare beat building
/// a substring searcher per call.
#[inline]
pub(crate) fn find_lit(hay: &[u8], lit: &[u8]) -> Option<usize> {
    let (&first, tail) = lit.split_first()?;
    let mut j = 0;
    while let Some(n) = memchr::memchr(first, &hay[j..]) {
        let at = j + n;
        if starts_with(&hay[at + 1..], tail) {
            return Some(at);
        }
        j = at + 1;
    }
    None
}

/// `hay.starts_with(lit)` for the few-byte literals of a format, without a
/// `memcmp` call.
#[inline]
pub(crate) fn starts_with(hay: &[u8], lit: &[u8]) -> bool {
    hay.len() >= lit.len() && hay.iter().zip(lit).all(|(a, b)| a == b)
}

/// A field's value: `-` (and an empty field) mean absent.
#[inline]
pub(crate) fn opt_dash(f: &[u8]) -> Option<&[u8]> {
    (f != b"-" && !f.is_empty()).then_some(f)
}

/// `0.123`, `12`, `1.5` → seconds; anything else (`-`, names) → `None`.
#[inline]
pub(crate) fn parse_seconds(b: &[u8]) -> Option<f64> {
    let ok = !b.is_empty()
        && b[0].is_ascii_digit()
        && b.iter().all(|&c| c.is_ascii_digit() || c == b'.')
        && b.iter().filter(|&&c| c == b'.').count() <= 1;
    if !ok {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `GET /path HTTP/1.1` → method and path; `None` for `-` or garbage.
#[inline]
pub(crate) fn split_request(req: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let Some(sp) = memchr::memchr(b' ', req) else {
        return (None, None);
    };
    let method = &req[..sp];
    if method.is_empty() || !method.iter().all(|c| c.is_ascii_uppercase()) {
        return (None, None);
    }
    let rest = &req[sp + 1..];
    let path = match memchr::memrchr(b' ', rest) {
        Some(e) if rest[e + 1..].starts_with(b"HTTP/") => &rest[..e],
        _ => rest,
    };
    (Some(method), Some(path))
}

/// `0.002, 0.010 : 0.5` → 0.512; `-` entries count as 0; `None` if nothing
/// is a number.
#[inline]
pub(crate) fn upstream_sum(f: &[u8]) -> Option<f64> {
    let mut sum = 0.0;
    let mut any = false;
    for part in f.split(|&c| c == b',' || c == b':') {
        if let Some(s) = parse_seconds(part.trim_ascii()) {
            sum += s;
            any = true;
        }
    }
    any.then_some(sum)
}
