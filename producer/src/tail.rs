//! Cutting one file's bytes into lines: partial lines held, `\r\n` stripped,
//! over-long lines cut (and marked), never dropped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// What is exceptional about a line, sent as headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// The line was longer than the limit: its full length.
    pub cut: Option<u64>,
    /// A piece of a line: `idle`, `eof` or `rest` (see `logpipe_wire::PARTIAL`).
    pub partial: Option<&'static str>,
}

/// A line handed out: bytes, first-byte offset, offset after its newline.
pub struct LineOut<'a> {
    pub value: &'a [u8],
    pub offset: u64,
    pub end: u64,
    pub marks: Marks,
}

/// The read state of one open file (or of a decompressed stream).
pub struct Tail<R = File> {
    pub file: R,
    /// Offset of the first byte of the next line to hand out.
    pub line_start: u64,
    /// Bytes read after the last newline, at most `max_line` of them.
    partial: Vec<u8>,
    /// Bytes of the current line read so far (more than `partial` holds when cut).
    partial_len: u64,
    /// The current line continues a piece already sent (marked `rest`).
    pub continues: bool,
    max_line: usize,
}

impl<R: Read + Seek> Tail<R> {
    /// Positioned at `offset`, which must be the start of a line.
    pub fn new(mut file: R, offset: u64, max_line: usize) -> std::io::Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        Ok(Tail::at(file, offset, max_line))
    }

    /// Starts over at offset 0 (the file was truncated).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.line_start = 0;
        self.partial.clear();
        self.partial_len = 0;
        self.continues = false;
        Ok(())
    }
}

impl<R: Read> Tail<R> {
    /// A reader already positioned at `offset`, the start of a line (a
    /// decompressing stream that cannot seek).
    pub fn at(file: R, offset: u64, max_line: usize) -> Self {
        Tail {
            file,
            line_start: offset,
            partial: Vec::new(),
            partial_len: 0,
            continues: false,
            max_line: max_line.max(1),
        }
    }

    /// Offset up to which bytes were read.
    pub fn read_pos(&self) -> u64 {
        self.line_start + self.partial_len
    }

    /// Bytes of an incomplete line held.
    pub fn holds_partial(&self) -> bool {
        self.partial_len > 0
    }

    /// Reads what is there (up to `buf`'s size) and calls `each` for every
    /// complete line. Returns bytes read (0: at the end).
    pub fn read_lines<E>(
        &mut self,
        buf: &mut [u8],
        mut each: impl FnMut(LineOut<'_>) -> Result<(), E>,
    ) -> Result<usize, ReadError<E>> {
        let n = loop {
            match self.file.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        };
        let mut chunk = &buf[..n];
        while let Some(nl) = memchr::memchr(b'\n', chunk) {
            let len = self.partial_len + nl as u64;
            let end = self.line_start + len + 1;
            let marks = Marks {
                cut: (len > self.max_line as u64).then_some(len),
                partial: self.continues.then_some("rest"),
            };
            let out = |value| LineOut {
                value,
                offset: self.line_start,
                end,
                marks,
            };
            if self.partial_len == 0 {
                let line = &chunk[..nl];
                let value = if marks.cut.is_some() {
                    &line[..self.max_line]
                } else {
                    trim_cr(line)
                };
                each(out(value)).map_err(ReadError::Sink)?;
            } else {
                let room = self.max_line - self.partial.len();
                self.partial.extend_from_slice(&chunk[..nl.min(room)]);
                let line = std::mem::take(&mut self.partial);
                let value = if marks.cut.is_some() {
                    &line[..]
                } else {
                    trim_cr(&line)
                };
                each(out(value)).map_err(ReadError::Sink)?;
                // Keep the allocation for the next partial line.
                self.partial = line;
                self.partial.clear();
            }
            self.line_start = end;
            self.partial_len = 0;
            self.continues = false;
            chunk = &chunk[nl + 1..];
        }
        let room = self.max_line - self.partial.len();
        self.partial
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.partial_len += chunk.len() as u64;
        Ok(n)
    }

    /// Hands out the incomplete line held, marked `why` (`idle` or `eof`); the
    /// bytes that follow it up to the newline come out marked `rest`.
    pub fn take_partial<E>(
        &mut self,
        why: &'static str,
        each: impl FnOnce(LineOut<'_>) -> Result<(), E>,
    ) -> Result<bool, E> {
        if self.partial_len == 0 {
            return Ok(false);
        }
        let len = self.partial_len;
        let end = self.line_start + len;
        let line = std::mem::take(&mut self.partial);
        each(LineOut {
            value: &line,
            offset: self.line_start,
            end,
            marks: Marks {
                cut: (len > self.max_line as u64).then_some(len),
                partial: Some(why),
            },
        })?;
        self.line_start = end;
        self.partial_len = 0;
        self.continues = true;
        Ok(true)
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

    type Out = (String, u64, u64, Marks);

    fn lines(t: &mut Tail) -> Vec<Out> {
        let mut buf = [0u8; 7]; // small on purpose: lines cross reads
        let mut out = vec![];
        while t
            .read_lines::<()>(&mut buf, |l| {
                out.push((
                    String::from_utf8(l.value.to_vec()).unwrap(),
                    l.offset,
                    l.end,
                    l.marks,
                ));
                Ok(())
            })
            .unwrap()
            > 0
        {}
        out
    }

    fn plain(s: &str, a: u64, b: u64) -> Out {
        (s.into(), a, b, Marks::default())
    }

    #[test]
    fn cuts_lines_across_reads_holds_partial_and_strips_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"first line\r\nsecond\n\nthird-partial")
            .unwrap();
        let mut t = Tail::new(File::open(&p).unwrap(), 0, 1 << 20).unwrap();
        assert_eq!(
            lines(&mut t),
            vec![
                plain("first line", 0, 12),
                plain("second", 12, 19),
                plain("", 19, 20)
            ]
        );
        assert!(t.holds_partial());
        assert_eq!(t.read_pos(), 33);
        f.write_all(b" done\n").unwrap();
        assert_eq!(lines(&mut t), vec![plain("third-partial done", 20, 39)]);
    }

    #[test]
    fn long_lines_are_cut_and_marked_with_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let long = "y".repeat(30);
        std::fs::write(&p, format!("short\n{long}\n0123456789\nz\n")).unwrap();
        let mut t = Tail::new(File::open(&p).unwrap(), 0, 10).unwrap();
        let cut = |n| Marks {
            cut: Some(n),
            partial: None,
        };
        assert_eq!(
            lines(&mut t),
            vec![
                plain("short", 0, 6),
                ("y".repeat(10), 6, 37, cut(30)),
                plain("0123456789", 37, 48),
                plain("z", 48, 50)
            ]
        );
        // Also when the whole line is in one read.
        let mut t = Tail::new(File::open(&p).unwrap(), 0, 10).unwrap();
        let mut got = vec![];
        t.read_lines::<()>(&mut [0u8; 4096], |l| {
            got.push((l.value.len(), l.marks.cut));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(5, None), (10, Some(30)), (10, None), (1, None)]);
    }

    #[test]
    fn a_partial_line_taken_early_leaves_a_marked_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"one\ntw").unwrap();
        let mut t = Tail::new(File::open(&p).unwrap(), 0, 100).unwrap();
        assert_eq!(lines(&mut t), vec![plain("one", 0, 4)]);
        let mut got = None;
        assert!(t
            .take_partial::<()>("idle", |l| {
                got = Some((l.value.to_vec(), l.offset, l.end, l.marks.partial));
                Ok(())
            })
            .unwrap());
        assert_eq!(got, Some((b"tw".to_vec(), 4, 6, Some("idle"))));
        f.write_all(b"o\nthree\n").unwrap();
        let rest = Marks {
            cut: None,
            partial: Some("rest"),
        };
        assert_eq!(
            lines(&mut t),
            vec![("o".into(), 6, 8, rest), plain("three", 8, 14)]
        );
    }
}
