//! Where a line goes in the archive directory: `<source>/<YYYY-MM-DD>.log`,
//! names escaped so that none leaves the directory.

/// `source` as a directory name: `A-Za-z0-9._-` kept, other bytes and a
/// leading `.` as `%XX`; never empty, at most ~200 bytes (a longer name is
/// cut and given a hash of the whole, so names stay distinct).
pub fn dir_name(source: &[u8]) -> String {
    let mut s = String::with_capacity(source.len());
    for (i, &b) in source.iter().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() {
        s.push_str("%00");
    }
    if s.len() > 200 {
        let h = crc32fast::hash(source);
        s.truncate(180);
        while s.ends_with('%') || s[s.len().saturating_sub(2)..].starts_with('%') {
            s.pop();
        }
        s.push_str(&format!("~{h:08x}"));
    }
    s
}

/// `YYYY-MM-DD` (UTC) of a record time in ms.
pub(crate) fn day_of(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The end of day `d` (UTC), in ms.
pub(crate) fn day_end_ms(d: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?;
    Some(
        date.succ_opt()?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp_millis(),
    )
}

/// Is `rel` a name the archive writes (`<dir>/<YYYY-MM-DD>.log[.zst]`)?
pub(crate) fn is_archive_name(rel: &str) -> Option<(&str, &str, bool)> {
    let (dir, name) = rel.split_once('/')?;
    let (day, zst) = match name.strip_suffix(".log.zst") {
        Some(d) => (d, true),
        None => (name.strip_suffix(".log")?, false),
    };
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some((dir, day, zst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_never_leave_the_directory_and_stay_distinct() {
        assert_eq!(dir_name(b"nginx"), "nginx");
        assert_eq!(
            dir_name(b"/var/log/nginx/access.log"),
            "%2Fvar%2Flog%2Fnginx%2Faccess.log"
        );
        assert_eq!(dir_name(b".."), "%2E.");
        assert_eq!(dir_name(b"."), "%2E");
        assert_eq!(dir_name(b""), "%00");
        assert_eq!(dir_name(b"a/b"), "a%2Fb");
        assert_ne!(dir_name(b"a/b"), dir_name(b"a_b"));
        assert_eq!(dir_name("ü".as_bytes()), "%C3%BC");
        let long = vec![b'x'; 500];
        let mut other = long.clone();
        other[499] = b'y';
        assert!(dir_name(&long).len() <= 200);
        assert_ne!(dir_name(&long), dir_name(&other));
        for s in [&b"../../etc"[..], b"a/../../b", b"\0", b"~root"] {
            let d = dir_name(s);
            assert!(
                !d.contains('/') && d != "." && d != ".." && !d.starts_with('.'),
                "{d}"
            );
        }
    }

    #[test]
    fn days_are_utc_dates_of_the_record_time() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_764_633_599_999), "2025-12-01");
        assert_eq!(day_of(1_764_633_600_000), "2025-12-02");
        assert_eq!(day_end_ms("2025-12-01"), Some(1_764_633_600_000));
        assert_eq!(
            is_archive_name("web/2025-12-01.log"),
            Some(("web", "2025-12-01", false))
        );
        assert_eq!(
            is_archive_name("web/2025-12-01.log.zst"),
            Some(("web", "2025-12-01", true))
        );
        assert_eq!(is_archive_name("web/notes.txt"), None);
    }
}
