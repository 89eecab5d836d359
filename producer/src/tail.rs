//! Following one file: read new bytes, cut complete lines, notice truncation.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An open file being followed.
pub struct Tailed {
    pub path: PathBuf,
    pub file: File,
    pub dev: u64,
    pub ino: u64,
    /// Bumped on truncation, so (`file`, `offset`) never repeats for new lines.
    pub generation: u32,
    /// Offset of the first byte of `partial` (the next line to send).
    pub line_start: u64,
    /// Bytes read after the last newline: a line not yet complete.
    pub partial: Vec<u8>,
}

impl Tailed {
    /// Opens `path` positioned at `offset`.
    pub fn open(path: &Path, offset: u64, generation: u32) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        let md = file.metadata()?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Tailed {
            path: path.into(),
            file,
            dev: md.dev(),
            ino: md.ino(),
            generation,
            line_start: offset,
            partial: Vec::new(),
        })
    }

    /// The `file` header value: device, inode and generation.
    pub fn file_id(&self) -> String {
        format!("{:x}:{:x}:{}", self.dev, self.ino, self.generation)
    }

    /// Reads what is there (up to `buf`'s size) and calls `each(line, offset, end)` for
    /// every complete line (without `\n` / `\r\n`). Returns bytes read.
    pub fn read_lines<E>(
        &mut self,
        buf: &mut [u8],
        mut each: impl FnMut(&[u8], u64, u64) -> Result<(), E>,
    ) -> Result<usize, ReadError<E>> {
        let n = self.file.read(buf).map_err(ReadError::Io)?;
        let mut chunk = &buf[..n];
        while let Some(nl) = memchr::memchr(b'\n', chunk) {
            let end = self.line_start + self.partial.len() as u64 + nl as u64 + 1;
            if self.partial.is_empty() {
                each(trim_cr(&chunk[..nl]), self.line_start, end).map_err(ReadError::Sink)?;
            } else {
                self.partial.extend_from_slice(&chunk[..nl]);
                let line = std::mem::take(&mut self.partial);
                each(trim_cr(&line), self.line_start, end).map_err(ReadError::Sink)?;
            }
            self.line_start = end;
            chunk = &chunk[nl + 1..];
        }
        self.partial.extend_from_slice(chunk);
        Ok(n)
    }

    /// Hands out a last line that has no newline (end of input only).
    pub fn take_unterminated(&mut self) -> Option<(Vec<u8>, u64, u64)> {
        if self.partial.is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.partial);
        let start = self.line_start;
        self.line_start += line.len() as u64;
        Some((line, start, self.line_start))
    }

    /// True when the file is now shorter than what was read: copytruncate.
    pub fn was_truncated(&self) -> std::io::Result<bool> {
        let len = self.file.metadata()?.len();
        Ok(len < self.line_start + self.partial.len() as u64)
    }

    /// Starts over at 0 as a new generation.
    pub fn restart_after_truncation(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.generation += 1;
        self.line_start = 0;
        self.partial.clear();
        Ok(())
    }
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// A read failed, or the callback did.
#[derive(Debug)]
pub enum ReadError<E> {
    Io(std::io::Error),
    Sink(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(t: &mut Tailed) -> Vec<(String, u64, u64)> {
        let mut buf = [0u8; 7]; // small on purpose: lines cross reads
        let mut out = vec![];
        while t
            .read_lines::<()>(&mut buf, |l, s, e| {
                out.push((String::from_utf8(l.to_vec()).unwrap(), s, e));
                Ok(())
            })
            .unwrap()
            > 0
        {}
        out
    }

    #[test]
    fn cuts_lines_across_reads_holds_partial_and_strips_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"first line\r\nsecond\n\nthird-partial")
            .unwrap();
        let mut t = Tailed::open(&p, 0, 0).unwrap();
        assert_eq!(
            lines(&mut t),
            vec![
                ("first line".into(), 0, 12),
                ("second".into(), 12, 19),
                ("".into(), 19, 20)
            ]
        );
        f.write_all(b" done\n").unwrap();
        assert_eq!(lines(&mut t), vec![("third-partial done".into(), 20, 39)]);
        assert!(!t.was_truncated().unwrap());
        f.set_len(0).unwrap();
        assert!(t.was_truncated().unwrap());
        t.restart_after_truncation().unwrap();
        assert!(t.file_id().ends_with(":1"));
    }
}
