//! Which file is which: device + inode + a fingerprint of the first line.
//!
//! # The choice and why
//!
//! - **Not the path.** logrotate renames `access.log` to `access.log.1` and
//!   creates a new `access.log`. Keyed by path, a shipper either re-reads the
//!   renamed file from 0 or applies the old offset to the new file
//!   (influxdata/telegraf#4614). A file keeps its inode through a rename, so
//!   device + inode follow it.
//! - **Not device + inode alone.** After `access.log.1` is deleted, the new
//!   file may get the same inode. An offset stored for the old one would skip
//!   the head of the new one (fluent/fluent-bit#4895,
//!   logstash-plugins/logstash-input-file#251). So a file is also known by a
//!   fingerprint: the xxh3 hash of its first line (through the newline, at most
//!   [`FINGERPRINT_MAX`] bytes). An access-log line starts with a client and a
//!   time, so two files' first lines practically never agree — and the check
//!   also catches a file that was truncated and rewritten past the old read
//!   position between two looks (vectordotdev/vector#23619), which a size
//!   check alone misses.
//! - **Why the first line and not the first N bytes.** The fingerprint must not
//!   change while the file grows, because it is part of the `file` header and
//!   of the checkpoint. The first line is complete once its newline is written
//!   and never changes after that; a fixed byte count would not exist yet for a
//!   young file. Nothing can be sent from a file before its first newline
//!   anyway, so waiting for it costs nothing. (A file whose only bytes are an
//!   unterminated line sent by `--exit-on-eof` or the idle flush is
//!   fingerprinted over what is there; the identity is stored in the
//!   checkpoint, so it does not change afterwards.)
//! - **Generation.** A truncation (copytruncate) keeps device, inode and often
//!   the first line's shape; it bumps the generation, so (`file`, `offset`)
//!   of new lines never equals that of old ones and the analyzers'
//!   de-duplication cannot mistake new lines for re-sent old ones.
//!
//! The `file` header is `<dev>:<inode>:<fingerprint>:<generation>` in hex
//! (generation decimal). It is decided when the file is first identified and
//! stored in the checkpoint, so a re-sent line after a crash carries exactly
//! the header of its first copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// At most this many bytes of the first line are hashed.
pub const FINGERPRINT_MAX: usize = 1024;

/// Hash of a file's first line (or of its first [`FINGERPRINT_MAX`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Bytes hashed, counted from offset 0.
    pub len: u32,
    pub hash: u64,
}

impl Fingerprint {
    /// The fingerprint of `file` as it is now. `None` while its first line is
    /// incomplete and shorter than [`FINGERPRINT_MAX`], unless `whole` (the
    /// input is complete): then the bytes there are, if any.
    pub fn of(file: &File, whole: bool) -> io::Result<Option<Fingerprint>> {
        let mut buf = [0u8; FINGERPRINT_MAX];
        let n = read_head(file, &mut buf)?;
        let len = match memchr::memchr(b'\n', &buf[..n]) {
            Some(nl) => nl + 1,
            None if n == FINGERPRINT_MAX || (whole && n > 0) => n,
            None => return Ok(None),
        };
        Ok(Some(Fingerprint {
            len: len as u32,
            hash: xxhash_rust::xxh3::xxh3_64(&buf[..len]),
        }))
    }

    /// True when `file` still starts with the bytes this fingerprint hashed.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        let mut buf = [0u8; FINGERPRINT_MAX];
        let want = (self.len as usize).min(FINGERPRINT_MAX);
        let n = read_head(file, &mut buf[..want])?;
        Ok(n == want && xxhash_rust::xxh3::xxh3_64(&buf[..n]) == self.hash)
    }
}

/// Reads from offset 0 without moving the file position.
fn read_head(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The `file` header value.
pub fn file_id(dev: u64, ino: u64, fp: Fingerprint, generation: u32) -> String {
    format!("{dev:x}:{ino:x}:{:016x}:{generation}", fp.hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn first_line_identifies_a_file_and_growth_does_not_change_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"first li").unwrap();
        let r = File::open(&p).unwrap();
        assert_eq!(Fingerprint::of(&r, false).unwrap(), None);
        assert_eq!(Fingerprint::of(&r, true).unwrap().unwrap().len, 8);
        f.write_all(b"ne\nsecond\n").unwrap();
        let fp = Fingerprint::of(&r, false).unwrap().unwrap();
        assert_eq!(fp.len, 11);
        f.write_all(b"third\n").unwrap();
        assert_eq!(Fingerprint::of(&r, false).unwrap(), Some(fp));
        assert!(fp.matches(&r).unwrap());
        // Truncated and rewritten: another first line.
        f.set_len(0).unwrap();
        assert!(!fp.matches(&r).unwrap());
        std::fs::write(&p, b"other line\nsecond\nthird\n").unwrap();
        assert!(!fp.matches(&r).unwrap());
    }

    #[test]
    fn a_long_first_line_is_hashed_over_its_first_kib() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        let fp = Fingerprint::of(&File::open(&p).unwrap(), false)
            .unwrap()
            .unwrap();
        assert_eq!(fp.len as usize, FINGERPRINT_MAX);
    }
}
