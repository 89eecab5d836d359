//! Window sketches for the fleet roll-up — pure: the record an analyzer
//! publishes for every final access-log window, and its merge.
//!
//! A [`WindowSketch`] is one source's final window with everything needed
//! to combine it with other sources' windows into true fleet numbers: the
//! exact counts, the distinct clients (exact hashes or a HyperLogLog), the
//! request-time DDSketch and the top-K summaries. `logpipe rollup` merges
//! them per window and group (see `crate::rollup`).
//!
//! **Encoding, version 1** (little-endian integers; strings are a `u16`
//! length and UTF-8 bytes):
//!
//! | field | bytes |
//! |---|---|
//! | magic `LPWS`, version `1` | 5 |
//! | window start, window length (ms, `i64`) | 16 |
//! | host, source | strings |
//! | count, traffic, errors, status 1xx…5xx (`u64`) | 64 |
//! | clients | see `Distinct::encode` |
//! | latency: `u32` length (0: no request times), DDSketch in the Java/DataDog encoding | 4 + n |
//! | top-K: `u8` summaries; each `u8` dimension, `u16` capacity, `u64` lines, `u16` keys, per key a string, `u64` count, `u64` error | … |
//!
//! The record key is `<window start ms>\0<host>\0<source>`: on a compacted
//! topic a re-published window replaces the earlier value. The partition is
//! the window's number modulo the topic's partitions, so one window of every
//! source lands in one partition (one rollup member merges it).

use sketches_ddsketch::DDSketch;

use crate::distinct::Distinct;
use crate::top::{Dim, SpaceSaving, TopSet};
use crate::window::{nearest_rank, Agg};

const MAGIC: &[u8; 4] = b"LPWS";
/// The encoding version this build writes and reads.
pub const VERSION: u8 = 1;

/// One source's final window, as published to the fleet topic.
#[derive(Clone)]
pub struct WindowSketch {
    pub host: String,
    pub source: String,
    pub start_ms: i64,
    pub window_ms: i64,
    pub agg: Agg,
}

/// Why a fleet record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window sketch record: {0}")]
pub struct DecodeError(String);

/// The Kafka key of a window's record.
pub fn record_key(host: &str, source: &str, start_ms: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + source.len() + 22);
    k.extend_from_slice(itoa::Buffer::new().format(start_ms).as_bytes());
    k.push(0);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(source.as_bytes());
    k
}

/// The partition of a window's records: its number modulo `partitions`.
pub fn partition_of(start_ms: i64, window_ms: i64, partitions: i32) -> i32 {
    (start_ms.div_euclid(window_ms.max(1))).rem_euclid(i64::from(partitions.max(1))) as i32
}

fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

/// Appends the version-1 encoding of one window (see the module docs).
pub fn encode(out: &mut Vec<u8>, host: &str, source: &str, start_ms: i64, window_ms: i64, a: &Agg) {
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&start_ms.to_le_bytes());
    out.extend_from_slice(&window_ms.to_le_bytes());
    push_str(out, host.as_bytes());
    push_str(out, source.as_bytes());
    for v in [a.count, a.traffic, a.errors].into_iter().chain(a.status) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    a.clients.encode(out);
    match &a.latency {
        Some(s) => {
            let b = s.to_java_bytes();
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(&b);
        }
        None => out.extend_from_slice(&0u32.to_le_bytes()),
    }
    match &a.top {
        None => out.push(0),
        Some(t) => {
            let held: Vec<(usize, &SpaceSaving)> = t
                .dims()
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .collect();
            out.push(held.len() as u8);
            for (i, s) in held {
                out.push(i as u8);
                out.extend_from_slice(
                    &(s.capacity().min(usize::from(u16::MAX)) as u16).to_le_bytes(),
                );
                out.extend_from_slice(&s.total().to_le_bytes());
                out.extend_from_slice(&(s.len() as u16).to_le_bytes());
                for (key, count, error) in s.entries() {
                    push_str(out, key);
                    out.extend_from_slice(&count.to_le_bytes());
                    out.extend_from_slice(&error.to_le_bytes());
                }
            }
        }
    }
}

/// A cursor over a record's bytes whose reads fail with what was missing.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError(format!("ends inside {what}")));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let n = usize::from(self.u16(what)?);
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }
    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, DecodeError> {
        let n = usize::from(self.u16(what)?);
        Ok(self.take(n, what)?.to_vec())
    }
}

/// The DataDog encoding's variable-length unsigned integer (at most 9 bytes).
fn var_u64(r: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let (&b, rest) = r.split_first().ok_or("ends inside a number")?;
        *r = rest;
        if b < 0x80 || shift == 56 {
            return Ok(value | (u64::from(b) << shift));
        }
        value |= (u64::from(b) & 0x7F) << shift;
        shift += 7;
    }
}

/// The DataDog encoding's variable-length double (at most 9 bytes).
fn var_f64(r: &mut &[u8]) -> Result<f64, String> {
    let mut bits = 0u64;
    let mut shift = 57i32;
    loop {
        let (&b, rest) = r.split_first().ok_or("ends inside a number")?;
        *r = rest;
        if shift == 1 {
            bits |= u64::from(b);
            break;
        }
        if b < 0x80 {
            bits |= u64::from(b) << shift;
            break;
        }
        bits |= (u64::from(b) & 0x7F) << shift;
        shift -= 7;
    }
    Ok(f64::from_bits(bits.rotate_right(6).wrapping_add(1f64.to_bits())) - 1.0)
}

/// Checks that a latency sketch's bytes are laid out as `to_java_bytes`
/// writes an analyzer's sketch — its count first, then min, max, sum, the
/// logarithmic index mapping, zero count and the positive bins (indices
/// within ±65 536, spanning fewer than 2 048) with whole, finite counts —
/// before `sketches-ddsketch` reads them: its reader panics on some
/// damaged stores (found by the `fleet_decode` fuzz target).
fn check_java_layout(b: &[u8]) -> Result<(), String> {
    const COUNT: u8 = 0xA0;
    const ZERO_COUNT: u8 = 0x04;
    const MIN: u8 = 0x88;
    const MAX: u8 = 0x8C;
    const SUM: u8 = 0x84;
    const MAPPING_LOG: u8 = 0x02;
    const POSITIVE_BINS: u8 = 0x05;
    const MAX_INDEX: i64 = 1 << 16;
    const MAX_COUNT: f64 = (1u64 << 53) as f64;
    let count = |v: f64| {
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < MAX_COUNT {
            Ok(())
        } else {
            Err(format!("count {v} is not a count"))
        }
    };
    let mut r = b;
    if b.first() != Some(&COUNT) {
        return Err("does not start with its count".into());
    }
    while let Some((&flag, rest)) = r.split_first() {
        r = rest;
        match flag {
            COUNT | ZERO_COUNT => count(var_f64(&mut r)?)?,
            MIN | MAX | SUM => r = r.get(8..).ok_or("ends inside a value")?,
            MAPPING_LOG => r = r.get(16..).ok_or("ends inside the index mapping")?,
            POSITIVE_BINS => {
                let n = var_u64(&mut r)?;
                if n > 2048 {
                    return Err(format!("{n} bins"));
                }
                let (mut index, mut lo, mut hi) = (0i64, i64::MAX, i64::MIN);
                for _ in 0..n {
                    let z = var_u64(&mut r)?;
                    let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
                    index = index.saturating_add(delta);
                    if index.abs() > MAX_INDEX {
                        return Err(format!("bin index {index}"));
                    }
                    (lo, hi) = (lo.min(index), hi.max(index));
                    count(var_f64(&mut r)?)?;
                }
                if n > 0 && hi - lo >= 2048 {
                    return Err(format!("bins from {lo} to {hi}"));
                }
            }
            f => {
                return Err(format!(
                    "part {f:#04x} is not written by logpipe (negative times, another layout)"
                ))
            }
        }
    }
    Ok(())
}

/// A decoded latency sketch must be what an analyzer writes: the same
/// relative accuracy (so it merges), request times finite and not negative
/// (a damaged one would answer NaN, which InfluxDB refuses).
fn check_latency(s: &DDSketch) -> Result<(), DecodeError> {
    static EMPTY: std::sync::OnceLock<DDSketch> = std::sync::OnceLock::new();
    let empty = EMPTY.get_or_init(|| {
        DDSketch::from_java_bytes(&crate::window::latency_sketch().to_java_bytes())
            .expect("an empty sketch reads back")
    });
    if empty.clone().merge(s).is_err() {
        return Err(DecodeError(
            "latency sketch of another relative accuracy".into(),
        ));
    }
    // Counts a double holds exactly (the encoding writes them as doubles).
    if s.count() as u64 >= 1 << 53 {
        return Err(DecodeError(format!(
            "a latency sketch of {} values",
            s.count()
        )));
    }
    if s.count() == 0 {
        // Analyzers write no sketch (length 0) for a window without times.
        return Err(DecodeError("an empty latency sketch".into()));
    }
    let values = [
        s.min(),
        s.max(),
        Some(nearest_rank(s, 500)),
        Some(nearest_rank(s, 990)),
    ];
    if values
        .iter()
        .any(|v| v.is_some_and(|v| !v.is_finite() || v < 0.0))
    {
        return Err(DecodeError(format!(
            "latency sketch with values that are not request times ({values:?})"
        )));
    }
    Ok(())
}

/// Reads a version-1 record; anything else is an error that says what.
pub fn decode(bytes: &[u8]) -> Result<WindowSketch, DecodeError> {
    let mut r = Reader(bytes);
    if r.take(4, "the magic")? != MAGIC {
        return Err(DecodeError("no LPWS magic: not a window sketch".into()));
    }
    let v = r.u8("the version")?;
    if v != VERSION {
        return Err(DecodeError(format!(
            "version {v}; this logpipe reads version {VERSION}"
        )));
    }
    let start_ms = r.u64("the window start")? as i64;
    let window_ms = r.u64("the window length")? as i64;
    if window_ms <= 0 {
        return Err(DecodeError(format!("window length {window_ms} ms")));
    }
    let host = r.string("the host")?;
    let source = r.string("the source")?;
    let mut agg = Agg::default();
    agg.count = r.u64("count")?;
    agg.traffic = r.u64("traffic")?;
    agg.errors = r.u64("errors")?;
    for s in &mut agg.status {
        *s = r.u64("the status classes")?;
    }
    if agg.errors > agg.count
        || agg
            .status
            .iter()
            .try_fold(0u64, |a, &b| a.checked_add(b))
            .is_none_or(|s| s > agg.count)
    {
        return Err(DecodeError(format!(
            "counts do not add up ({} requests, {} errors, status {:?})",
            agg.count, agg.errors, agg.status
        )));
    }
    agg.clients = Distinct::decode(&mut r.0).map_err(DecodeError)?;
    let n = r.u32("the latency length")? as usize;
    if n > 0 {
        let b = r.take(n, "the latency sketch")?;
        check_java_layout(b).map_err(|e| DecodeError(format!("latency sketch: {e}")))?;
        let s = DDSketch::from_java_bytes(b)
            .map_err(|e| DecodeError(format!("latency sketch: {e}")))?;
        check_latency(&s)?;
        if s.count() as u64 > agg.count {
            return Err(DecodeError(format!(
                "latency sketch of {} values in a window of {} requests",
                s.count(),
                agg.count
            )));
        }
        agg.latency = Some(Box::new(s));
    }
    let dims = r.u8("the top-K count")?;
    if dims > 0 {
        let mut set: [Option<SpaceSaving>; 6] = Default::default();
        let mut capacity = 0;
        for _ in 0..dims {
            let d = usize::from(r.u8("a top-K dimension")?);
            if d >= Dim::ALL.len() || set[d].is_some() {
                return Err(DecodeError(format!("top-K dimension {d} unknown or twice")));
            }
            let cap = usize::from(r.u16("a top-K capacity")?);
            capacity = capacity.max(cap);
            let total = r.u64("a top-K total")?;
            let keys = usize::from(r.u16("a top-K key count")?);
            let mut entries = Vec::with_capacity(keys.min(4096));
            for _ in 0..keys {
                let key = r.bytes("a top-K key")?;
                entries.push((key, r.u64("a top-K count")?, r.u64("a top-K error")?));
            }
            set[d] = Some(
                SpaceSaving::from_entries(cap, total, entries).ok_or_else(|| {
                    DecodeError(format!("top-K {}: not a summary", Dim::ALL[d].name()))
                })?,
            );
        }
        let dims = set.map(|s| s.unwrap_or_else(|| SpaceSaving::new(capacity)));
        agg.top = Some(Box::new(TopSet::from_dims(dims)));
    }
    if !r.0.is_empty() {
        return Err(DecodeError(format!("{} bytes after the end", r.0.len())));
    }
    Ok(WindowSketch {
        host,
        source,
        start_ms,
        window_ms,
        agg,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::window::latency_sketch;

    /// A window of `n` requests from `clients` clients with request times
    /// spread over two decades, and its exact request times.
    pub(crate) fn window(n: u64, clients: u64, scale: f64, top: bool) -> (Agg, Vec<f64>) {
        let mut a = Agg::default();
        let mut times = Vec::new();
        let spec = crate::top::TopSpec::DEFAULT;
        for i in 0..n {
            a.count += 1;
            a.traffic += 100 + i;
            let status = if i % 10 == 0 { 500 } else { 200 };
            a.status[usize::from(status / 100 - 1)] += 1;
            a.errors += u64::from(status >= 500);
            let client = format!("10.0.{}.{}", (i % clients) / 250, (i % clients) % 250);
            a.clients.insert(client.as_bytes());
            let t = scale * (1.0 + (i * 7919 % 1000) as f64 / 10.0);
            a.latency
                .get_or_insert_with(|| Box::new(latency_sketch()))
                .add(t);
            times.push(t);
            if top {
                let path = format!("/p/{}", i % 97 % (1 + i % 13));
                a.top
                    .get_or_insert_with(|| Box::new(TopSet::new(&spec)))
                    .add(
                        &spec,
                        client.as_bytes(),
                        Some(path.as_bytes()),
                        None,
                        None,
                        status,
                    );
            }
        }
        (a, times)
    }

    fn round_trip(a: &Agg) -> WindowSketch {
        let mut buf = Vec::new();
        encode(&mut buf, "web-1", "/var/log/a.log", 60_000, 10_000, a);
        decode(&buf).unwrap()
    }

    #[test]
    fn a_window_reads_back_with_the_same_summary_and_top() {
        for top in [false, true] {
            let (a, _) = window(5000, 900, 0.001, top);
            let w = round_trip(&a);
            assert_eq!(
                (w.host.as_str(), w.source.as_str()),
                ("web-1", "/var/log/a.log")
            );
            assert_eq!((w.start_ms, w.window_ms), (60_000, 10_000));
            assert_eq!(w.agg.summary(), a.summary());
            assert_eq!(w.agg.top(10), a.top(10));
        }
        // No request times, no top-K, no requests at all.
        let w = round_trip(&Agg::default());
        assert_eq!(w.agg.summary(), Agg::default().summary());
    }

    #[test]
    fn merged_windows_give_fleet_numbers_within_the_sketch_bounds() {
        let mut fleet = Agg::default();
        let mut all = Vec::new();
        let mut count = 0;
        for (i, scale) in [0.001, 0.01, 0.2].into_iter().enumerate() {
            let (a, t) = window(3000 + 1000 * i as u64, 2000, scale, true);
            count += a.count;
            all.extend(t);
            fleet.merge(&round_trip(&a).agg);
        }
        let m = fleet.summary();
        assert_eq!(m.count, count);
        all.sort_by(f64::total_cmp);
        let l = m.latency.unwrap();
        for (q, got) in [(500u64, l.p50), (900, l.p90), (990, l.p99)] {
            let exact = all[((q * all.len() as u64).div_ceil(1000) - 1) as usize];
            assert!(
                (got - exact).abs() <= exact * 0.01 + 1e-12,
                "p{q}: {got} vs exact {exact}"
            );
        }
        // The same 2 000 clients in every window.
        assert_eq!(m.unique_clients, 2000);
        let top = fleet.top(3).unwrap();
        assert_eq!(top.dims[0].1, count, "every request's path counted");
    }

    #[test]
    fn damaged_records_are_errors_never_panics() {
        let (a, _) = window(500, 100, 0.01, true);
        let mut buf = Vec::new();
        encode(&mut buf, "h", "s", 0, 10_000, &a);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x5A;
            let _ = decode(&b);
        }
        // A sketch of another accuracy, or with a value that is not a time.
        let mut other = Agg::default();
        other.count = 1;
        let mut s = DDSketch::new(sketches_ddsketch::Config::new(0.02, 2048, 1e-6));
        s.add(1.0);
        other.latency = Some(Box::new(s));
        let mut b = Vec::new();
        encode(&mut b, "h", "s", 0, 10_000, &other);
        assert!(decode(&b)
            .err()
            .unwrap()
            .to_string()
            .contains("another relative accuracy"));
        let mut s = latency_sketch();
        s.add(-1.0);
        other.latency = Some(Box::new(s));
        b.clear();
        encode(&mut b, "h", "s", 0, 10_000, &other);
        assert!(decode(&b)
            .err()
            .unwrap()
            .to_string()
            .contains("negative times"));
        // The fuzzer's findings: a damaged sketch whose quantiles were NaN,
        // one that made sketches-ddsketch's reader panic, an empty one and
        // one of 2^53 values (neither encodes as it was read).
        for crash in [
            &include_bytes!("../../fuzz/corpus/fleet_decode/nan-quantiles")[..],
            &include_bytes!("../../fuzz/corpus/fleet_decode/store-panic")[..],
            &include_bytes!("../../fuzz/corpus/fleet_decode/empty-sketch")[..],
            &include_bytes!("../../fuzz/corpus/fleet_decode/huge-count")[..],
        ] {
            assert!(decode(crash).is_err());
        }
        let mut v2 = buf.clone();
        v2[4] = 2;
        assert_eq!(
            decode(&v2).err().unwrap().to_string(),
            "window sketch record: version 2; this logpipe reads version 1"
        );
    }

    #[test]
    fn keys_and_partitions() {
        assert_eq!(record_key("h", "s", 10_000), b"10000\0h\0s");
        assert_eq!(partition_of(0, 10_000, 6), 0);
        assert_eq!(partition_of(70_000, 10_000, 6), 1);
        assert_eq!(partition_of(-10_000, 10_000, 6), 5);
    }
}
