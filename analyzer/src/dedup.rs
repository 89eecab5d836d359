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
            capacity: capacity.max(2),
            tick: 0,
        }
    }

    /// `true` when (`file`, `offset`) was already seen: drop the record.
    pub fn is_duplicate(&mut self, file: &[u8], offset: u64) -> bool {
        self.tick += 1;
        let tick = self.tick;
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
    fn state_is_bounded_and_keeps_recent_files() {
        let mut d = Dedup::new(10);
        for i in 0..1000u32 {
            d.is_duplicate(&i.to_be_bytes(), 5);
            d.is_duplicate(b"busy", u64::from(i) + 1);
        }
        assert!(d.files() <= 10);
        assert!(d.is_duplicate(b"busy", 1000), "the busy file is remembered");
    }
}
