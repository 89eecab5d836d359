//! The record format on the `logs` topic — the contract between producers and
//! analyzers (see `docs/design.md`, "Wire contract").
//!
//! v1, one Kafka record per log line:
//! - key `<host>:<source>`, so every line of one source lands in one partition;
//! - value: the raw line bytes without the trailing `\n` / `\r\n`;
//! - timestamp: when the producer read the line (CreateTime, ms);
//! - headers [`HOST`], [`SOURCE`], [`FILE`], [`OFFSET`]; on exceptional
//!   lines also [`CUT`] and [`PARTIAL`].
//!
//! v2 ([`lines`]), one record per run of consecutive lines of one file: the
//! same key, timestamp and first four headers, the lines joined by `\n`, a
//! [`LINES`] count, and the exceptional lines in [`MARKS`]. Readers take
//! both through [`RecordMeta::lines`].
//!
//! This crate holds those names and what every side needs of them: the key
//! encoders, one reader of the headers ([`RecordMeta`]), the re-send filter
//! keyed by them ([`Dedup`]), the atomic versioned [`state_file`]s every
//! role keeps, and the [`Shutdown`] every role is ended by.

mod dedup;
pub mod lines;
mod meta;
pub mod shutdown;
pub mod state_file;

pub use dedup::Dedup;
pub use lines::{
    Lines, RunEncoder, RunError, WireLine, EOL, EOL_C, LINES, LINES_C, MARKS, MARKS_C, RUN_HEADERS,
};
pub use meta::{parse_decimal, HeaderLookup, RecordMeta};
pub use shutdown::{Request, Shutdown};

/// A hash map for keys that come from logpipe's own producers (record keys,
/// `file` headers), looked up once or twice per record: wyhash instead of
/// SipHash, which was 6 % of the polling thread at a million records a second.
pub type FastMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<wyhash::WyHash>>;

/// Default topic for raw lines.
pub const DEFAULT_TOPIC: &str = "logs";
/// Default topic for lines the analyzers could not parse.
pub const DEFAULT_DLQ_TOPIC: &str = "logs.dlq";
/// Topic of the final windows' sketches (`analyze --fleet-topic`, `rollup`).
pub const DEFAULT_FLEET_TOPIC: &str = "logs.windows";
/// Default consumer group of the live analyzers.
pub const DEFAULT_GROUP: &str = "logpipe-analyzers";

/// Header: the producer's node name.
pub const HOST: &str = "host";
/// Header: the logical source name (default: the file path).
pub const SOURCE: &str = "source";
/// Header: stable identity of the file generation the line came from.
pub const FILE: &str = "file";
/// Header: byte offset of the line's first byte in that file, decimal.
pub const OFFSET: &str = "offset";

/// [`FILE`] and [`OFFSET`] as C strings, for librdkafka's look-up of a
/// header by name (read for every record).
pub const FILE_C: &std::ffi::CStr = c"file";
pub const OFFSET_C: &std::ffi::CStr = c"offset";
/// [`CUT`] and [`PARTIAL`] as C strings (looked up on records with more
/// headers than the four every line has).
pub const CUT_C: &std::ffi::CStr = c"cut";
pub const PARTIAL_C: &std::ffi::CStr = c"partial";
/// Headers every line carries: [`HOST`], [`SOURCE`], [`FILE`], [`OFFSET`].
pub const LINE_HEADERS: usize = 4;

/// Header, only on a line longer than the producer's `--max-line-bytes`: the
/// line's full length in bytes (decimal); the value holds its first bytes.
pub const CUT: &str = "cut";
/// Header, only on a piece of a line: `idle` (a line without newline sent after
/// the idle timeout), `eof` (the unterminated end of a file read with
/// `--exit-on-eof`), `rest` (what followed such a piece up to the newline).
pub const PARTIAL: &str = "partial";

/// The record key of a source: `<host>:<source>`.
pub fn record_key(host: &str, source: &str) -> String {
    let mut k = String::with_capacity(host.len() + 1 + source.len());
    k.push_str(host);
    k.push(':');
    k.push_str(source);
    k
}

/// Splits a record key back into `(host, source)` at the first `:`.
///
/// Host names cannot contain `:`, source names (paths) may, so the first one is
/// the separator. Returns `None` for a key without one.
pub fn split_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = key.iter().position(|&b| b == b':')?;
    Some((&key[..i], &key[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_string_header_names_equal_the_names() {
        assert_eq!(FILE_C.to_str(), Ok(FILE));
        assert_eq!(OFFSET_C.to_str(), Ok(OFFSET));
        assert_eq!(CUT_C.to_str(), Ok(CUT));
        assert_eq!(PARTIAL_C.to_str(), Ok(PARTIAL));
        assert_eq!(LINES_C.to_str(), Ok(LINES));
        assert_eq!(EOL_C.to_str(), Ok(EOL));
        assert_eq!(MARKS_C.to_str(), Ok(MARKS));
    }

    #[test]
    fn key_round_trips_with_colons_in_source() {
        let k = record_key("web-1", "C:/logs/a:b.log");
        assert_eq!(k, "web-1:C:/logs/a:b.log");
        let (h, s) = split_key(k.as_bytes()).unwrap();
        assert_eq!((h, s), (&b"web-1"[..], &b"C:/logs/a:b.log"[..]));
        assert_eq!(split_key(b"nocolon"), None);
    }
}
