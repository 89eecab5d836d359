//! Drops records a producer sent twice — pure, bounded.
//!
//! A producer that crashed after Kafka stored some lines but before its
//! checkpoint recorded them sends those lines again on restart. Every record
//! carries the identity of its file (`file` header: device, inode and
//! generation — a truncated file gets a new one) and the byte `offset` of its
//! line. A producer publishes each file in order and resumes from a
//! checkpoint at or before what it sent, so within one partition a record is
//! a re-send exactly when its offset is not beyond the highest offset already
//! seen for its file.
//!
//! The state is one entry per file seen on the partition; above `capacity`
//! files the half not seen for longest is forgotten (a file that silent has
//! been rotated away long ago). After a restore the state is rebuilt from the
//! records re-read from the restore offset, which is enough: a re-send whose
//! first copy lies before the restore offset belongs to a window that was
//! already final (the first copy is older than every open window), so the
//! window core skips it anyway.

use crate::FastMap;

/// Highest line offset seen per file, for one partition.
#[derive(Debug)]
pub struct Dedup {
    last: FastMap<Box<[u8]>, Seen>,
    /// The file of the previous record and its newest position, newer than
    /// its entry in `last`: records of one file come in runs, and comparing
    /// with the previous file is cheaper than hashing it.
    recent: Option<(Box<[u8]>, Seen)>,
    capacity: usize,
    tick: u64,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    offset: u64,
    tick: u64,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            last: FastMap::default(),
            recent: None,
            capacity: capacity.max(2),
            tick: 0,
        }
    }

    /// `true` when (`file`, `offset`) was already seen: drop the record.
    pub fn is_duplicate(&mut self, file: &[u8], offset: u64) -> bool {
        self.tick += 1;
        let tick = self.tick;
        if let Some((f, s)) = &mut self.recent {
            if **f == *file {
                if offset <= s.offset {
                    return true;
                }
                *s = Seen { offset, tick };
                return false;
            }
        }
        // Another file: the previous one's position goes back to the map.
        if let Some((f, s)) = self.recent.take() {
            match self.last.get_mut(&*f) {
                Some(e) => *e = s,
                None => {
                    self.last.insert(f, s);
                }
            }
        }
        let dup = self.lookup(file, offset, tick);
        let seen = self.last[file];
        self.recent = Some((file.into(), seen));
        dup
    }

    fn lookup(&mut self, file: &[u8], offset: u64, tick: u64) -> bool {
        if let Some(s) = self.last.get_mut(file) {
            if offset <= s.offset {
                return true;
            }
            *s = Seen { offset, tick };
            return false;
        }
        if self.last.len() >= self.capacity {
            self.forget_oldest_half();
        }
        self.last.insert(file.into(), Seen { offset, tick });
        false
    }

    fn forget_oldest_half(&mut self) {
        let mut ticks: Vec<u64> = self.last.values().map(|s| s.tick).collect();
        let mid = ticks.len() / 2;
        let (_, &mut cut, _) = ticks.select_nth_unstable(mid);
        self.last.retain(|_, s| s.tick > cut);
    }

    pub fn files(&self) -> usize {
        self.last.len()
    }

    /// Every file's highest offset, least recently seen first (for saving
    /// the state; [`Dedup::restore`] rebuilds it).
    pub fn entries(&self) -> Vec<(&[u8], u64)> {
        let mut v: Vec<(&[u8], Seen)> = self.last.iter().map(|(f, s)| (&**f, *s)).collect();
        if let Some((f, s)) = &self.recent {
            match v.iter_mut().find(|(g, _)| *g == &**f) {
                Some(e) => e.1 = *s,
                None => v.push((f, *s)),
            }
        }
        v.sort_by_key(|(_, s)| s.tick);
        v.into_iter().map(|(f, s)| (f, s.offset)).collect()
    }

    /// A state holding `entries` (least recently seen first), as saved by
    /// [`Dedup::entries`].
    pub fn restore<'a>(
        capacity: usize,
        entries: impl IntoIterator<Item = (&'a [u8], u64)>,
    ) -> Self {
        let mut d = Dedup::new(capacity);
        for (f, offset) in entries {
            d.tick += 1;
            if d.last.len() >= d.capacity {
                d.forget_oldest_half();
            }
            d.last.insert(
                f.into(),
                Seen {
                    offset,
                    tick: d.tick,
                },
            );
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_is_dropped_new_lines_and_other_files_are_not() {
        let mut d = Dedup::new(100);
        assert!(!d.is_duplicate(b"801:1f:0", 0));
        assert!(!d.is_duplicate(b"801:1f:0", 120));
        assert!(!d.is_duplicate(b"801:20:0", 0), "another file");
        // The producer restarted from its checkpoint at 0: both come again.
        assert!(d.is_duplicate(b"801:1f:0", 0));
        assert!(d.is_duplicate(b"801:1f:0", 120));
        assert!(!d.is_duplicate(b"801:1f:0", 240));
        // Truncated: new generation, offsets start again at 0.
        assert!(!d.is_duplicate(b"801:1f:1", 0));
    }

    #[test]
    fn a_saved_and_restored_state_drops_the_same_records() {
        let mut d = Dedup::new(100);
        for (f, o) in [(&b"a"[..], 5), (b"b", 7), (b"a", 9), (b"c", 1)] {
            d.is_duplicate(f, o);
        }
        let saved: Vec<(Vec<u8>, u64)> = d
            .entries()
            .into_iter()
            .map(|(f, o)| (f.to_vec(), o))
            .collect();
        assert_eq!(
            saved,
            [(b"b".to_vec(), 7), (b"a".to_vec(), 9), (b"c".to_vec(), 1)]
        );
        let mut r = Dedup::restore(100, saved.iter().map(|(f, o)| (&f[..], *o)));
        for (f, o) in [(&b"a"[..], 9), (b"a", 10), (b"b", 7), (b"c", 2), (b"d", 0)] {
            assert_eq!(r.is_duplicate(f, o), d.is_duplicate(f, o), "{f:?} {o}");
        }
    }

    #[test]
    fn state_is_bounded_and_keeps_recent_files() {
        let mut d = Dedup::new(10);
        for i in 0..1000u32 {
            d.is_duplicate(&i.to_be_bytes(), 5);
            d.is_duplicate(b"busy", u64::from(i) + 1);
        }
        assert!(d.files() <= 10);
        assert!(d.is_duplicate(b"busy", 1000), "the busy file is remembered");
    }

    /// Runs of one file, switches between files and re-sent runs give the
    /// answers of a plain "largest offset seen per file" map.
    #[test]
    fn the_recent_file_shortcut_answers_like_a_plain_map() {
        let mut d = Dedup::new(100);
        let mut reference: std::collections::HashMap<u8, u64> = Default::default();
        let mut next = [0u64; 5];
        let mut x: u64 = 7;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let f = ((x >> 33) % 5) as u8;
            let run = 1 + (x >> 40) % 8;
            for _ in 0..run {
                // One time in eight the producer re-sends from a bit back.
                let off = if (x >> 20).is_multiple_of(8) {
                    next[f as usize].saturating_sub((x >> 50) % 5)
                } else {
                    next[f as usize]
                };
                next[f as usize] = next[f as usize].max(off + 1);
                let want = reference.get(&f).is_some_and(|&m| off <= m);
                if !want {
                    reference.insert(f, off);
                }
                assert_eq!(
                    d.is_duplicate(&[b'f', f], off),
                    want,
                    "file {f} offset {off}"
                );
            }
        }
    }
}
