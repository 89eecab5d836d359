//! Times as servers write them: `$time_local`, ISO 8601, strftime formats.

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

#[inline]
fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |v, &c| v * 10 + i64::from(c - b'0')))
}

/// Parses `$time_local`: `10/Oct/2000:13:55:36 -0700` → ms since the epoch (UTC).
#[inline]
pub fn parse_clf_time(t: &[u8]) -> Option<i64> {
    if t.len() != 26 || t[2] != b'/' || t[6] != b'/' || t[11] != b':' || t[20] != b' ' {
        return None;
    }
    let days = clf_days(&t[..11])?;
    let (h, mi, s) = (
        digits(&t[12..14])?,
        digits(&t[15..17])?,
        digits(&t[18..20])?,
    );
    if t[14] != b':' || t[17] != b':' || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let sign = match t[21] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (zh, zm) = (digits(&t[22..24])?, digits(&t[24..26])?);
    let offset_s = sign * (zh * 3600 + zm * 60);
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) - offset_s) * 1000)
}

/// Days since the epoch of `10/Oct/2000`. Lines come in time order, so the
/// last date is remembered (per thread) and most lines skip the arithmetic.
#[inline]
fn clf_days(date: &[u8]) -> Option<i64> {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<([u8; 11], i64)> = const { Cell::new(([0; 11], 0)) };
    }
    let key: [u8; 11] = date.try_into().ok()?;
    let (k, d) = LAST.get();
    if k == key {
        return Some(d);
    }
    let day = digits(&date[0..2])?;
    let month = MONTHS.iter().position(|m| &date[3..6] == *m)? as i64 + 1;
    let year = digits(&date[7..11])?;
    if !(1..=31).contains(&day) {
        return None;
    }
    let d = days_from_civil(year, month, day);
    LAST.set((key, d));
    Some(d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
#[inline]
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time in an Apache `%{FORMAT}t` strftime format; UTC when it has no zone.
pub(crate) fn strftime_time(f: &[u8], fmt: &str) -> Option<i64> {
    let s = std::str::from_utf8(f).ok()?;
    if let Ok(t) = chrono::DateTime::parse_from_str(s, fmt) {
        return Some(t.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(s, fmt)
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// `2000-10-10T13:55:36-07:00` (also `Z`, `+0000`, and a fraction after the
/// seconds) → ms since the epoch (UTC).
pub fn parse_iso8601(t: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(t).ok()?;
    let dt = chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()?;
    Some(dt.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parsing_handles_offsets_and_rejects_nonsense() {
        assert_eq!(parse_clf_time(b"01/Jan/1970:00:00:00 +0000"), Some(0));
        assert_eq!(parse_clf_time(b"01/Jan/1970:01:00:00 +0100"), Some(0));
        assert_eq!(
            parse_clf_time(b"29/Feb/2024:23:59:59 -0530"),
            Some(1_709_270_999_000)
        );
        assert_eq!(parse_clf_time(b"01/Foo/2024:00:00:00 +0000"), None);
        assert_eq!(parse_clf_time(b"01/Jan/2024:25:00:00 +0000"), None);
        assert_eq!(parse_clf_time(b"01/Jan/2024:00:00:00 +00"), None);
    }
}
