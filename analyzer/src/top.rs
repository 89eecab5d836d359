//! Top-K per window: which paths, clients, user agents and referrers made a
//! window's traffic — pure, deterministic in the order of the lines.
//!
//! Each dimension of a window is a Space-Saving summary (Metwally, Agrawal,
//! El Abbadi, 2005) of at most `capacity` keys:
//!
//! - a key already held is counted (`count += 1`);
//! - a new key takes a free slot with `count = 1, error = 0`;
//! - when every slot is taken, the new key replaces a key with the smallest
//!   count `m`, and gets `count = m + 1, error = m`.
//!
//! Guarantees, for every key reported: `count − error ≤ true count ≤ count`;
//! every key whose true count exceeds `total / capacity` is held. While a
//! window's distinct keys of a dimension fit the capacity nothing is ever
//! replaced: every count is exact and every `error` is 0.
//!
//! **Deterministic.** Which slot is replaced when several share the smallest
//! count depends only on the order of the lines (the lowest slot index found
//! by the last scan), never on a hash seed or a clock, so a window rebuilt
//! from the same records — after a restart, a rebalance, on replay — holds
//! the same keys with the same counts. Reports rank by count (then key).
//!
//! **Mergeable** ([`SpaceSaving::merge`], Agarwal et al., "Mergeable
//! summaries", 2012): the fleet roll-up combines sources' summaries with the
//! same guarantees over the union of their lines.
//!
//! Written by hand because the crates at hand either take an owned key per
//! insert (an allocation per line and dimension) or seed their hash at
//! random (`topk`'s default `AHasher`), which breaks the determinism above.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

/// Keys longer than this are counted by their first bytes (cut at a UTF-8
/// character boundary when the key is UTF-8).
pub const MAX_KEY_BYTES: usize = 256;

/// The dimensions a window ranks, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    /// Request paths (see [`PathKey`]).
    Path,
    /// Client addresses.
    Client,
    /// User agents (`-` not counted).
    UserAgent,
    /// Referrers (`-` not counted).
    Referer,
    /// Paths of 4xx responses.
    Path4xx,
    /// Paths of 5xx responses.
    Path5xx,
}

impl Dim {
    pub const ALL: [Dim; 6] = [
        Dim::Path,
        Dim::Client,
        Dim::UserAgent,
        Dim::Referer,
        Dim::Path4xx,
        Dim::Path5xx,
    ];

    /// The `dim` tag of its points.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Path => "path",
            Dim::Client => "client",
            Dim::UserAgent => "user_agent",
            Dim::Referer => "referer",
            Dim::Path4xx => "path_4xx",
            Dim::Path5xx => "path_5xx",
        }
    }
}

/// How a request path becomes a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathKey {
    /// The path without its query string (`/search?q=x` → `/search`).
    #[default]
    Stripped,
    /// The request target as logged, query string included.
    Full,
    /// Stripped, and every segment that looks like an id (all digits, a
    /// UUID, a hex string of 8+ characters with a digit) becomes `{id}`:
    /// `/user/1234/orders` → `/user/{id}/orders`.
    Masked,
}

impl std::str::FromStr for PathKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stripped" => Ok(PathKey::Stripped),
            "full" => Ok(PathKey::Full),
            "masked" => Ok(PathKey::Masked),
            _ => Err(format!(
                "unknown path key {s:?}: expected stripped, full or masked"
            )),
        }
    }
}

/// Top-K settings, part of the [`crate::WindowSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopSpec {
    /// Keys reported per dimension and window (0: top-K off).
    pub k: u16,
    /// Keys held per dimension and window.
    pub capacity: u16,
    pub path: PathKey,
}

impl TopSpec {
    /// 10 of 64 keys, paths without query strings.
    pub const DEFAULT: TopSpec = TopSpec {
        k: 10,
        capacity: 64,
        path: PathKey::Stripped,
    };
    /// No top-K at all.
    pub const OFF: TopSpec = TopSpec {
        k: 0,
        capacity: 0,
        path: PathKey::Stripped,
    };

    pub fn enabled(&self) -> bool {
        self.k > 0
    }
}

impl Default for TopSpec {
    fn default() -> Self {
        TopSpec::DEFAULT
    }
}

#[derive(Debug, Clone)]
struct Slot {
    /// Reused when the slot takes another key (no allocation per eviction).
    key: Vec<u8>,
    hash: u64,
    count: u64,
    error: u64,
}

fn hash_key(key: &[u8]) -> u64 {
    std::hash::BuildHasherDefault::<wyhash::WyHash>::default().hash_one(key)
}

/// `key` cut to [`MAX_KEY_BYTES`], at a character boundary when it is UTF-8.
fn capped(key: &[u8]) -> &[u8] {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let mut end = MAX_KEY_BYTES;
    // Back up over UTF-8 continuation bytes (at most 3).
    while end > MAX_KEY_BYTES - 3 && key[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &key[..end]
}

/// One Space-Saving summary; see the module docs.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    slots: Vec<Slot>,
    /// Slot indices by key.
    index: HashTable<u32>,
    /// Every slot has at least this count once the summary is full.
    min_count: u64,
    /// Slots that had `min_count` at the last scan, lowest index last (some
    /// may have been counted since: checked when taken).
    min_slots: Vec<u32>,
    total: u64,
}

/// One ranked key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    /// The key as logged (bytes that are not UTF-8 shown as U+FFFD).
    pub key: String,
    /// Upper bound of its true count.
    pub count: u64,
    /// `count − error` is a lower bound of its true count.
    pub error: u64,
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> Self {
        SpaceSaving {
            capacity: capacity.max(1),
            slots: Vec::new(),
            index: HashTable::new(),
            min_count: 0,
            min_slots: Vec::new(),
            total: 0,
        }
    }

    /// Lines counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Keys held at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every key held with its count and error, in slot order (what the
    /// fleet record carries, see [`crate::fleet`]).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], u64, u64)> + '_ {
        self.slots.iter().map(|s| (&s.key[..], s.count, s.error))
    }

    /// A summary holding exactly `entries` (as [`SpaceSaving::entries`]
    /// gave them) after `total` lines. `None` when they cannot come from
    /// one: more keys than `capacity`, a key twice or too long, an error
    /// above its count, or counts above `total`.
    pub fn from_entries(
        capacity: usize,
        total: u64,
        entries: Vec<(Vec<u8>, u64, u64)>,
    ) -> Option<SpaceSaving> {
        let mut s = SpaceSaving::new(capacity);
        if entries.len() > s.capacity {
            return None;
        }
        s.total = total;
        let mut sum = 0u64;
        for (key, count, error) in entries {
            sum = sum.checked_add(count - error.min(count))?;
            let hash = hash_key(&key);
            if key.len() > MAX_KEY_BYTES
                || error > count
                || s.index
                    .find(hash, |&i| s.slots[i as usize].key == key)
                    .is_some()
            {
                return None;
            }
            let slots = &s.slots;
            let i = slots.len() as u32;
            s.index.insert_unique(hash, i, |&j| slots[j as usize].hash);
            s.slots.push(Slot {
                key,
                hash,
                count,
                error,
            });
        }
        // Lower bounds of distinct keys add up to at most the lines.
        (sum <= total).then_some(s)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Counts one occurrence of `key`.
    #[inline]
    pub fn insert(&mut self, key: &[u8]) {
        self.total += 1;
        let key = capped(key);
        let hash = hash_key(key);
        let slots = &mut self.slots;
        if let Some(&i) = self.index.find(hash, |&i| slots[i as usize].key == key) {
            slots[i as usize].count += 1;
            return;
        }
        self.insert_new(key, hash, 1, 0);
    }

    /// A key not held, with `count` (and `error`) to start from.
    fn insert_new(&mut self, key: &[u8], hash: u64, count: u64, error: u64) {
        if self.slots.len() < self.capacity {
            let i = self.slots.len() as u32;
            self.slots.push(Slot {
                key: key.into(),
                hash,
                count,
                error,
            });
            let slots = &self.slots;
            self.index
                .insert_unique(hash, i, |&j| slots[j as usize].hash);
            return;
        }
        let i = self.take_min();
        let old = &self.slots[i as usize];
        let (old_hash, min) = (old.hash, old.count);
        match self.index.find_entry(old_hash, |&j| j == i) {
            Ok(e) => {
                e.remove();
            }
            Err(_) => unreachable!("every slot is indexed"),
        }
        let slot = &mut self.slots[i as usize];
        slot.key.clear();
        slot.key.extend_from_slice(key);
        slot.hash = hash;
        slot.count = min + count;
        slot.error = min + error;
        let slots = &self.slots;
        self.index
            .insert_unique(hash, i, |&j| slots[j as usize].hash);
    }

    /// A slot with the smallest count (the summary is full).
    fn take_min(&mut self) -> u32 {
        loop {
            while let Some(i) = self.min_slots.pop() {
                if self.slots[i as usize].count == self.min_count {
                    return i;
                }
            }
            self.min_count = self.slots.iter().map(|s| s.count).min().unwrap_or(0);
            let m = self.min_count;
            self.min_slots.extend(
                (0..self.slots.len() as u32)
                    .rev()
                    .filter(|&i| self.slots[i as usize].count == m),
            );
        }
    }

    /// The `k` keys with the highest counts (ties by key), highest first.
    pub fn top(&self, k: usize) -> Vec<TopEntry> {
        let mut order: Vec<&Slot> = self.slots.iter().collect();
        order.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        order
            .into_iter()
            .take(k)
            .map(|s| TopEntry {
                key: String::from_utf8_lossy(&s.key).into_owned(),
                count: s.count,
                error: s.error,
            })
            .collect()
    }

    /// The summary of both inputs' lines (same capacity as `self`): a key's
    /// count is the sum of its counts, a side that does not hold it
    /// contributing its smallest count when full (0 otherwise), also as
    /// error; then the `capacity` highest counts are kept.
    pub fn merge(&mut self, other: &SpaceSaving) {
        let floor = |s: &SpaceSaving| {
            if s.slots.len() >= s.capacity {
                s.slots.iter().map(|x| x.count).min().unwrap_or(0)
            } else {
                0
            }
        };
        let (mine, theirs) = (floor(self), floor(other));
        let find = |s: &SpaceSaving, key: &[u8], hash: u64| {
            s.index
                .find(hash, |&i| s.slots[i as usize].key == key)
                .map(|&i| s.slots[i as usize].clone())
        };
        let mut all: Vec<Slot> = Vec::with_capacity(self.slots.len() + other.slots.len());
        for s in &self.slots {
            let (c, e) =
                find(other, &s.key, s.hash).map_or((theirs, theirs), |o| (o.count, o.error));
            all.push(Slot {
                count: s.count + c,
                error: s.error + e,
                ..s.clone()
            });
        }
        for o in &other.slots {
            if find(self, &o.key, o.hash).is_none() {
                all.push(Slot {
                    count: o.count + mine,
                    error: o.error + mine,
                    ..o.clone()
                });
            }
        }
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(self.capacity);
        let total = self.total + other.total;
        *self = SpaceSaving::new(self.capacity);
        self.total = total;
        for s in all {
            let slots = &self.slots;
            let i = slots.len() as u32;
            self.index
                .insert_unique(s.hash, i, |&j| slots[j as usize].hash);
            self.slots.push(s);
        }
    }
}

/// The top-K summaries of one window, one per [`Dim`].
#[derive(Debug, Clone)]
pub struct TopSet {
    dims: [SpaceSaving; 6],
    /// Scratch for a masked path.
    scratch: Vec<u8>,
}

/// What a window's top-K reports: per dimension, its ranked keys (at most
/// `k`) and the lines it counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLists {
    pub dims: Vec<(Dim, u64, Vec<TopEntry>)>,
}

impl TopSet {
    pub fn new(spec: &TopSpec) -> Self {
        let c = usize::from(spec.capacity.max(spec.k));
        TopSet {
            dims: std::array::from_fn(|_| SpaceSaving::new(c)),
            scratch: Vec::new(),
        }
    }

    /// Counts one request.
    #[inline]
    pub fn add(
        &mut self,
        spec: &TopSpec,
        client: &[u8],
        path: Option<&[u8]>,
        user_agent: Option<&[u8]>,
        referer: Option<&[u8]>,
        status: u16,
    ) {
        self.dims[1].insert(client);
        fn known(v: Option<&[u8]>) -> Option<&[u8]> {
            v.filter(|v| !v.is_empty() && *v != b"-")
        }
        if let Some(ua) = known(user_agent) {
            self.dims[2].insert(ua);
        }
        if let Some(r) = known(referer) {
            self.dims[3].insert(r);
        }
        if let Some(p) = path {
            let p = match spec.path {
                PathKey::Full => p,
                PathKey::Stripped => strip_query(p),
                PathKey::Masked => {
                    mask_path(strip_query(p), &mut self.scratch);
                    &self.scratch
                }
            };
            self.dims[0].insert(p);
            match status {
                400..=499 => self.dims[4].insert(p),
                500..=599 => self.dims[5].insert(p),
                _ => {}
            }
        }
    }

    /// The summaries, in [`Dim::ALL`] order.
    pub fn dims(&self) -> &[SpaceSaving; 6] {
        &self.dims
    }

    /// A set of these summaries (in [`Dim::ALL`] order).
    pub fn from_dims(dims: [SpaceSaving; 6]) -> TopSet {
        TopSet {
            dims,
            scratch: Vec::new(),
        }
    }

    /// Adds `other`'s lines, dimension by dimension ([`SpaceSaving::merge`]).
    pub fn merge(&mut self, other: &TopSet) {
        for (a, b) in self.dims.iter_mut().zip(&other.dims) {
            a.merge(b);
        }
    }

    /// The ranked keys of every dimension that counted a line.
    pub fn report(&self, k: usize) -> Arc<TopLists> {
        Arc::new(TopLists {
            dims: Dim::ALL
                .iter()
                .zip(&self.dims)
                .filter(|(_, s)| !s.is_empty())
                .map(|(&d, s)| (d, s.total(), s.top(k)))
                .collect(),
        })
    }
}

/// The path without `?query` (and without `#fragment`).
pub fn strip_query(p: &[u8]) -> &[u8] {
    match memchr::memchr2(b'?', b'#', p) {
        Some(i) => &p[..i],
        None => p,
    }
}

/// `path` with id-like segments replaced by `{id}`, into `out`.
pub fn mask_path(path: &[u8], out: &mut Vec<u8>) {
    out.clear();
    for (i, seg) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if is_id(seg) {
            out.extend_from_slice(b"{id}");
        } else {
            out.extend_from_slice(seg);
        }
    }
}

/// All digits; a UUID; or 8+ hex characters with at least one digit.
fn is_id(seg: &[u8]) -> bool {
    if seg.is_empty() {
        return false;
    }
    if seg.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let hex = |b: &u8| b.is_ascii_hexdigit();
    if seg.len() == 36
        && seg.iter().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *b == b'-'
            } else {
                hex(b)
            }
        })
    {
        return true;
    }
    seg.len() >= 8 && seg.iter().all(hex) && seg.iter().any(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn exact(keys: &[u8]) -> HashMap<Vec<u8>, u64> {
        let mut m = HashMap::new();
        for k in keys {
            *m.entry(vec![*k]).or_insert(0) += 1;
        }
        m
    }

    proptest! {
        /// While the distinct keys fit, every count is exact and the ranking
        /// is the exact ranking.
        #[test]
        fn exact_while_the_keys_fit(keys in prop::collection::vec(0u8..40, 0..2000)) {
            let mut s = SpaceSaving::new(40);
            for k in &keys {
                s.insert(&[*k]);
            }
            let truth = exact(&keys);
            let mut want: Vec<(u64, Vec<u8>)> = truth.iter().map(|(k, c)| (*c, k.clone())).collect();
            want.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let got: Vec<(u64, Vec<u8>)> = s.top(40).into_iter().map(|e| {
                prop_assert_eq!(e.error, 0);
                Ok((e.count, e.key.into_bytes()))
            }).collect::<Result<_, _>>()?;
            prop_assert_eq!(got, want);
            prop_assert_eq!(s.total(), keys.len() as u64);
        }

        /// Beyond the capacity: bounds hold and every heavy hitter is held.
        #[test]
        fn bounds_hold_beyond_the_capacity(
            keys in prop::collection::vec((0u8..200).prop_map(|k| k % 7 * (k / 100) + k / 2), 0..3000),
            cap in 1usize..30,
        ) {
            let mut s = SpaceSaving::new(cap);
            for k in &keys {
                s.insert(&[*k]);
            }
            let truth = exact(&keys);
            let held = s.top(cap);
            for e in &held {
                let t = truth.get(e.key.as_bytes()).copied().unwrap_or(0);
                prop_assert!(e.count >= t && e.count - e.error <= t, "{e:?} true {t}");
            }
            for (k, &t) in &truth {
                if t * cap as u64 > keys.len() as u64 {
                    prop_assert!(held.iter().any(|e| e.key.as_bytes() == k.as_slice()), "heavy {k:?} ({t}) missing");
                }
            }
        }

        /// Merging two summaries keeps the bounds over the union of their
        /// lines, and merging summaries that fit is exact.
        #[test]
        fn merged_summaries_keep_the_bounds(
            a in prop::collection::vec(0u8..60, 0..1500),
            b in prop::collection::vec(0u8..60, 0..1500),
            cap in 1usize..70,
        ) {
            let mut sa = SpaceSaving::new(cap);
            let mut sb = SpaceSaving::new(cap);
            a.iter().for_each(|k| sa.insert(&[*k]));
            b.iter().for_each(|k| sb.insert(&[*k]));
            sa.merge(&sb);
            let all: Vec<u8> = a.iter().chain(&b).copied().collect();
            let truth = exact(&all);
            prop_assert_eq!(sa.total(), all.len() as u64);
            for e in sa.top(cap) {
                let t = truth.get(e.key.as_bytes()).copied().unwrap_or(0);
                prop_assert!(e.count >= t && e.count - e.error <= t, "{e:?} true {t}");
                if truth.len() <= cap {
                    prop_assert_eq!((e.count, e.error), (t, 0));
                }
            }
        }
    }

    #[test]
    fn a_full_summary_replaces_the_lowest_slot_with_the_smallest_count() {
        let mut s = SpaceSaving::new(2);
        let top = |s: &SpaceSaving| -> Vec<(String, u64, u64)> {
            s.top(2)
                .into_iter()
                .map(|e| (e.key, e.count, e.error))
                .collect()
        };
        for k in ["a", "b", "c"] {
            s.insert(k.as_bytes());
        }
        // a and b both have 1: a (slot 0) goes, c starts from 1.
        assert_eq!(top(&s), [("c".into(), 2, 1), ("b".into(), 1, 0)]);
        s.insert(b"d");
        // b is the one left with the smallest count.
        assert_eq!(top(&s), [("c".into(), 2, 1), ("d".into(), 2, 1)]);
        s.insert(b"e");
        // A tie at 2 again: slot 0 (c) goes.
        assert_eq!(top(&s), [("e".into(), 3, 2), ("d".into(), 2, 1)]);
        assert_eq!(s.total(), 5);
    }

    #[test]
    fn paths_become_keys() {
        assert_eq!(strip_query(b"/search?q=a#x"), b"/search");
        assert_eq!(strip_query(b"/a#x"), b"/a");
        let mut out = Vec::new();
        mask_path(
            b"/user/1234/orders/3f2a9c0d1e/550e8400-e29b-41d4-a716-446655440000/deadbeef/v2",
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "/user/{id}/orders/{id}/{id}/deadbeef/v2"
        );
    }

    #[test]
    fn long_keys_are_cut_at_a_character_boundary() {
        let k = "é".repeat(200);
        let mut s = SpaceSaving::new(4);
        s.insert(k.as_bytes());
        let got = &s.top(1)[0].key;
        assert!(got.len() <= MAX_KEY_BYTES && got.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_set_counts_each_dimension() {
        let spec = TopSpec {
            path: PathKey::Masked,
            ..TopSpec::DEFAULT
        };
        let mut t = TopSet::new(&spec);
        t.add(
            &spec,
            b"10.0.0.1",
            Some(b"/u/12?x=1"),
            Some(b"curl"),
            Some(b"-"),
            200,
        );
        t.add(
            &spec,
            b"10.0.0.2",
            Some(b"/u/13"),
            Some(b"-"),
            Some(b"http://a/"),
            404,
        );
        t.add(&spec, b"10.0.0.1", Some(b"/boom"), None, None, 503);
        let r = t.report(10);
        let get = |d: Dim| {
            r.dims.iter().find(|x| x.0 == d).map(|x| {
                (
                    x.1,
                    x.2.iter()
                        .map(|e| (e.key.clone(), e.count))
                        .collect::<Vec<_>>(),
                )
            })
        };
        assert_eq!(
            get(Dim::Path),
            Some((3, vec![("/u/{id}".into(), 2), ("/boom".into(), 1)]))
        );
        assert_eq!(
            get(Dim::Client),
            Some((3, vec![("10.0.0.1".into(), 2), ("10.0.0.2".into(), 1)]))
        );
        assert_eq!(get(Dim::UserAgent), Some((1, vec![("curl".into(), 1)])));
        assert_eq!(get(Dim::Referer), Some((1, vec![("http://a/".into(), 1)])));
        assert_eq!(get(Dim::Path4xx), Some((1, vec![("/u/{id}".into(), 1)])));
        assert_eq!(get(Dim::Path5xx), Some((1, vec![("/boom".into(), 1)])));
    }
}
