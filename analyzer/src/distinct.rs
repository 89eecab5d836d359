//! Distinct counts per window (`unique_clients`, and every distinct count
//! added later) — pure.
//!
//! The rule: a distinct count is never more than the number of values it
//! counts, and it is exact while the window holds at most [`EXACT_LIMIT`]
//! distinct values. Beyond that it is a HyperLogLog estimate with 2^14
//! registers (standard error 1.04/√16384 ≈ 0.8 %), kept between the lower
//! bound the exact phase proved (`EXACT_LIMIT + 1`) and the number of values.
//!
//! Exact means exact up to 64-bit hash collisions: values are kept as their
//! WyHash, and two of [`EXACT_LIMIT`] addresses share one with a probability
//! of about `EXACT_LIMIT² / 2^65` ≈ 10⁻¹².
//!
//! Why 7 168: the exact set is a hash table of 8-byte hashes with one
//! control byte each, at most 8 192 slots (7/8 full) — 72 KiB at its
//! largest, then 12 KiB of registers. With the default 10 s windows and 30 s
//! lateness a source has about four windows open, so a hundred sources cost
//! at most ~29 MiB. The issue that asked for this saw windows of ~3 400
//! requests with nearly one client each; the old exact limit was 128.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use cardinality_estimator::CardinalityEstimator;

/// Distinct values counted exactly per window before the sketch takes over.
pub const EXACT_LIMIT: usize = 7 * 1024;

/// HyperLogLog precision beyond [`EXACT_LIMIT`]: 2^14 six-bit registers.
const PRECISION: usize = 14;

type Sketch = CardinalityEstimator<[u8], wyhash::WyHash, PRECISION, 6>;

/// The distinct values of one window.
#[derive(Clone)]
pub enum Distinct {
    /// At most [`EXACT_LIMIT`] hashes.
    Exact(HashSet<u64, BuildHasherDefault<wyhash::WyHash>>),
    /// More than [`EXACT_LIMIT`] distinct values were seen.
    Sketch(Box<Sketch>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(HashSet::default())
    }
}

impl Distinct {
    /// Adds one value (its bytes; hashed with a fixed seed, so every run
    /// counts the same).
    pub fn insert(&mut self, value: &[u8]) {
        self.insert_hash(wyhash::wyhash(value, 0));
    }

    /// Adds one value by its hash.
    fn insert_hash(&mut self, h: u64) {
        match self {
            // Full and a new value: the sketch takes over (checked before
            // inserting, so the table never grows past its 8 192 slots).
            Distinct::Exact(set) if set.len() == EXACT_LIMIT && !set.contains(&h) => {
                let mut sketch = Box::new(Sketch::new());
                for &x in set.iter() {
                    sketch.insert_hash(x);
                }
                sketch.insert_hash(h);
                *self = Distinct::Sketch(sketch);
            }
            Distinct::Exact(set) => {
                set.insert(h);
            }
            Distinct::Sketch(s) => s.insert_hash(h),
        }
    }

    /// Adds `other`'s values: the distinct values of both (exact while the
    /// union holds at most [`EXACT_LIMIT`], a merged sketch beyond).
    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Exact(set) => {
                // In hash order, so the result never depends on a table's
                // iteration order.
                let mut hs: Vec<u64> = set.iter().copied().collect();
                hs.sort_unstable();
                for h in hs {
                    self.insert_hash(h);
                }
            }
            Distinct::Sketch(theirs) => {
                if let Distinct::Exact(set) = self {
                    let mut sketch = Box::new(Sketch::new());
                    for &x in set.iter() {
                        sketch.insert_hash(x);
                    }
                    *self = Distinct::Sketch(sketch);
                }
                if let Distinct::Sketch(mine) = self {
                    mine.merge(theirs);
                }
            }
        }
    }

    /// Appends the fleet record's encoding (see docs/design.md, "Window
    /// sketches"): `0`, a `u32` count and the hashes in ascending order
    /// (little-endian `u64`s), or `1`, a `u32` length and the HyperLogLog
    /// as cardinality-estimator 1.x serializes it, in postcard.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Distinct::Exact(set) => {
                let mut hs: Vec<u64> = set.iter().copied().collect();
                hs.sort_unstable();
                out.push(0);
                out.extend_from_slice(&(hs.len() as u32).to_le_bytes());
                for h in hs {
                    out.extend_from_slice(&h.to_le_bytes());
                }
            }
            Distinct::Sketch(s) => {
                let bytes = postcard::to_allocvec(s.as_ref()).unwrap_or_default();
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// Reads what [`Distinct::encode`] wrote from the start of `input`,
    /// advancing it.
    pub fn decode(input: &mut &[u8]) -> Result<Distinct, String> {
        let (&kind, rest) = input.split_first().ok_or("clients: no kind byte")?;
        let (n, rest) = rest.split_first_chunk::<4>().ok_or("clients: no length")?;
        let n = u32::from_le_bytes(*n) as usize;
        match kind {
            0 => {
                if n > EXACT_LIMIT {
                    return Err(format!(
                        "clients: {n} exact hashes, more than {EXACT_LIMIT}"
                    ));
                }
                let bytes = rest
                    .get(..n * 8)
                    .ok_or("clients: fewer hashes than announced")?;
                let mut set = HashSet::with_capacity_and_hasher(n, Default::default());
                for c in bytes.chunks_exact(8) {
                    set.insert(u64::from_le_bytes(c.try_into().expect("8 bytes")));
                }
                if set.len() != n {
                    return Err("clients: a hash twice".into());
                }
                *input = &rest[n * 8..];
                Ok(Distinct::Exact(set))
            }
            1 => {
                let bytes = rest
                    .get(..n)
                    .ok_or("clients: sketch shorter than announced")?;
                let s: Sketch = postcard::from_bytes(bytes)
                    .map_err(|e| format!("clients: not a HyperLogLog ({e})"))?;
                *input = &rest[n..];
                Ok(Distinct::Sketch(Box::new(s)))
            }
            k => Err(format!("clients: unknown kind {k}")),
        }
    }

    /// Whether the count is exact (at most [`EXACT_LIMIT`] distinct values).
    #[cfg(test)]
    pub fn is_exact(&self) -> bool {
        matches!(self, Distinct::Exact(_))
    }

    /// The number of distinct values among the `values` inserted: exact up
    /// to [`EXACT_LIMIT`], never above `values`, never below what the exact
    /// phase proved.
    pub fn count(&self, values: u64) -> u64 {
        let n = match self {
            Distinct::Exact(set) => set.len() as u64,
            Distinct::Sketch(s) => (s.estimate() as u64).max(EXACT_LIMIT as u64 + 1),
        };
        n.min(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn count(values: &[u32]) -> (u64, usize, bool) {
        let mut d = Distinct::default();
        for v in values {
            d.insert(format!("10.{}.{}.{}", v >> 16, (v >> 8) & 255, v & 255).as_bytes());
        }
        let truth = values
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len();
        (d.count(values.len() as u64), truth, d.is_exact())
    }

    #[test]
    fn all_distinct_all_equal_and_the_edge() {
        let all: Vec<u32> = (0..EXACT_LIMIT as u32).collect();
        assert_eq!(count(&all), (EXACT_LIMIT as u64, EXACT_LIMIT, true));
        let one_more: Vec<u32> = (0..=EXACT_LIMIT as u32).collect();
        let (n, truth, exact) = count(&one_more);
        assert!(!exact);
        assert_eq!(
            n, truth as u64,
            "one past the limit: the lower bound is the count"
        );
        let same = vec![7u32; 100_000];
        assert_eq!(count(&same), (1, 1, true));
        assert_eq!(Distinct::default().count(0), 0);
    }

    #[test]
    fn beyond_the_limit_the_estimate_stays_near_and_never_above_the_values() {
        // 3 % is more than 3.5 standard errors of a 2^14-register sketch.
        for n in [10_000u32, 50_000, 200_000] {
            let all: Vec<u32> = (0..n).collect();
            let (got, truth, _) = count(&all);
            assert!(got <= n as u64, "{got} > {n} values");
            let err = (got as f64 - truth as f64).abs() / truth as f64;
            assert!(err < 0.03, "{n}: estimate {got}, error {err}");
        }
    }

    fn of(range: std::ops::Range<u32>) -> Distinct {
        let mut d = Distinct::default();
        for v in range {
            d.insert(&v.to_le_bytes());
        }
        d
    }

    fn round_trip(d: &Distinct) -> Distinct {
        let mut buf = Vec::new();
        d.encode(&mut buf);
        buf.push(0xAA);
        let mut input = &buf[..];
        let back = Distinct::decode(&mut input).unwrap();
        assert_eq!(input, [0xAA], "decode stops at its end");
        back
    }

    #[test]
    fn merged_sets_count_the_union_exact_below_the_limit_estimated_beyond() {
        // Overlapping exact sets: exact union.
        let mut a = of(0..3000);
        a.merge(&round_trip(&of(2000..5000)));
        assert!(a.is_exact());
        assert_eq!(a.count(u64::MAX), 5000);
        // Exact sets whose union passes the limit, and sketches on both sides.
        for (x, y, truth) in [
            (0..5000, 4000..9000, 9000u64),
            (0..20_000, 10_000..15_000, 20_000),
            (0..3000, 2000..40_000, 40_000),
            (0..30_000, 20_000..60_000, 60_000),
        ] {
            let mut m = round_trip(&of(x.clone()));
            m.merge(&round_trip(&of(y.clone())));
            let direct = of(x.start.min(y.start)..x.end.max(y.end));
            let got = m.count(u64::MAX);
            let err = (got as f64 - truth as f64).abs() / truth as f64;
            assert!(err < 0.03, "{x:?} ∪ {y:?}: {got} of {truth}");
            // The union of sketches is the sketch of the union.
            if !direct.is_exact() {
                assert_eq!(got, direct.count(u64::MAX), "{x:?} ∪ {y:?}");
            }
        }
    }

    #[test]
    fn damaged_encodings_are_errors() {
        let mut buf = Vec::new();
        of(0..10).encode(&mut buf);
        for cut in 0..buf.len() {
            assert!(Distinct::decode(&mut &buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut big = Vec::new();
        of(0..10_000).encode(&mut big);
        big[10] ^= 0xFF;
        let _ = Distinct::decode(&mut &big[..]); // no panic
        assert!(Distinct::decode(&mut &[7u8, 0, 0, 0, 0][..]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random streams: all distinct, all equal and mixtures of a few
        /// heavy clients with a long tail, below and above the exact limit.
        #[test]
        fn never_more_than_the_values_and_exact_below_the_limit(
            distinct in 1u32..20_000,
            heavy in 0u32..4,
            len in 1usize..30_000,
            seed in any::<u64>(),
        ) {
            let mut x = seed | 1;
            let values: Vec<u32> = (0..len).map(|i| {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                // Half the values from `heavy` clients, when there are any.
                if heavy > 0 && i % 2 == 0 { (x % u64::from(heavy)) as u32 } else { (x % u64::from(distinct)) as u32 }
            }).collect();
            let (got, truth, exact) = count(&values);
            prop_assert!(got <= len as u64);
            if truth <= EXACT_LIMIT {
                prop_assert!(exact);
                prop_assert_eq!(got, truth as u64);
            } else {
                prop_assert!(got > EXACT_LIMIT as u64);
                let err = (got as f64 - truth as f64).abs() / truth as f64;
                prop_assert!(err < 0.03, "estimate {} of {}", got, truth);
            }
        }
    }
}
