//! `--tcp ADDR`: newline-delimited lines over TCP, many connections at once.
//!
//! Each connection is a stream; its lines are published as they complete.
//! When the client closes (or the connection breaks, or the producer stops)
//! every complete line received is published, and an unterminated last piece
//! too, marked `partial: eof` — nothing received is dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{now_ms, Shared};
use crate::publish::PublishError;
use crate::tail::Marks;

/// Cuts a byte stream into lines the way files are cut: `\n` ends a line, a
/// `\r` before it is dropped, a line longer than `max` is sent as its first
/// `max` bytes with `cut` = its full length.
pub(crate) struct Splitter {
    max: usize,
    /// Stream offset of the first byte not yet handed out.
    pub base: u64,
    /// A line longer than `max` in progress: its start, first bytes, length
    /// so far (without a `\r` that may turn out to precede its newline).
    long: Option<(u64, Vec<u8>, u64, bool)>,
}

pub(crate) type Emit<'a> = dyn FnMut(&[u8], u64, u64, Marks) -> Result<(), PublishError> + 'a;

impl Splitter {
    pub fn new(max: usize) -> Self {
        Splitter {
            max: max.max(1),
            base: 0,
            long: None,
        }
    }

    /// Hands out every complete line at the start of `buf` and removes it
    /// (a long line's tail is consumed too; only its first bytes are kept).
    pub fn feed(&mut self, buf: &mut Vec<u8>, emit: &mut Emit<'_>) -> Result<(), PublishError> {
        let mut i = 0;
        let result = (|| {
            while i < buf.len() {
                let nl = memchr::memchr(b'\n', &buf[i..]).map(|j| i + j);
                if let Some((start, head, total, cr)) = &mut self.long {
                    match nl {
                        Some(j) => {
                            // The `\r` held back, and bytes up to one before `\n` (a `\r` there is dropped).
                            let piece = &buf[i..j];
                            *total += *cr as u64 + piece.len() as u64;
                            if piece.is_empty() && *cr || piece.last() == Some(&b'\r') {
                                *total -= 1;
                            }
                            let end = self.base + j as u64 + 1;
                            let marks = Marks {
                                cut: Some(*total),
                                partial: None,
                            };
                            emit(head, *start, end, marks)?;
                            self.long = None;
                            i = j + 1;
                        }
                        None => {
                            let piece = &buf[i..];
                            let ends_cr = piece.last() == Some(&b'\r');
                            *total += *cr as u64 + piece.len() as u64 - ends_cr as u64;
                            *cr = ends_cr;
                            i = buf.len();
                        }
                    }
                    continue;
                }
                match nl {
                    Some(j) => {
                        let mut line = &buf[i..j];
                        if line.last() == Some(&b'\r') {
                            line = &line[..line.len() - 1];
                        }
                        let (offset, end) = (self.base + i as u64, self.base + j as u64 + 1);
                        if line.len() > self.max {
                            let marks = Marks {
                                cut: Some(line.len() as u64),
                                partial: None,
                            };
                            emit(&line[..self.max], offset, end, marks)?;
                        } else {
                            emit(line, offset, end, Marks::default())?;
                        }
                        i = j + 1;
                    }
                    None => {
                        let piece = &buf[i..];
                        let ends_cr = piece.last() == Some(&b'\r');
                        // A final `\r` may be dropped with the newline to come.
                        if piece.len() - ends_cr as usize > self.max {
                            let head = piece[..self.max].to_vec();
                            let total = (piece.len() - ends_cr as usize) as u64;
                            self.long = Some((self.base + i as u64, head, total, ends_cr));
                            i = buf.len();
                        }
                        break;
                    }
                }
            }
            Ok(())
        })();
        buf.drain(..i);
        self.base += i as u64;
        result
    }

    /// The end of the stream: what is left is sent marked `partial: eof`.
    pub fn finish(&mut self, buf: &mut Vec<u8>, emit: &mut Emit<'_>) -> Result<(), PublishError> {
        self.feed(buf, emit)?;
        let end = self.base + buf.len() as u64;
        if let Some((start, head, total, cr)) = self.long.take() {
            let marks = Marks {
                cut: Some(total + cr as u64),
                partial: Some("eof"),
            };
            emit(&head, start, end, marks)?;
        } else if !buf.is_empty() {
            let marks = Marks {
                cut: None,
                partial: Some("eof"),
            };
            emit(buf, self.base, end, marks)?;
        }
        self.base = end;
        buf.clear();
        Ok(())
    }
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    l: std::net::TcpListener,
) -> Result<(), std::io::Error> {
    tracing::info!(addr = %l.local_addr()?, source = %shared.cfg.tcp_source, "TCP line input listening");
    super::accept_loop(shared, l, "TCP input", connection).await
}

async fn connection(shared: Arc<Shared>, mut sock: TcpStream, peer: SocketAddr) {
    let mut stream = match shared.stream("tcp") {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, error = %e, "TCP input: connection refused");
            return;
        }
    };
    tracing::debug!(%peer, file = %stream.file_id, "TCP input: connection");
    let source = shared.cfg.tcp_source.clone();
    let mut split = Splitter::new(shared.cfg.max_line_bytes);
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut stopping = shared.stopping.clone();
    let mut result = Ok(());
    loop {
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        let n = tokio::select! {
            r = sock.read_buf(&mut buf) => r,
            _ = stopping.changed() => break,
        };
        match n {
            Ok(0) => break,
            Ok(_) => {
                result = {
                    let ts = now_ms();
                    split.feed(&mut buf, &mut |v, o, e, m| {
                        stream.send(&source, v, o, e, m, ts)
                    })
                };
                result = stream.end_read(result);
                if result.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TCP input: connection broke");
                break;
            }
        }
    }
    if result.is_ok() {
        result = {
            let ts = now_ms();
            split.finish(&mut buf, &mut |v, o, e, m| {
                stream.send(&source, v, o, e, m, ts)
            })
        };
        result = stream.end_read(result);
    }
    if let Err(e) = result {
        if !matches!(e, PublishError::Stopping) {
            tracing::error!(%peer, error = %e, "TCP input: lines of this connection could not be sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(max: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, u64, u64, Marks)> {
        let mut s = Splitter::new(max);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            s.feed(&mut buf, &mut |v, o, e, m| {
                out.push((v.to_vec(), o, e, m));
                Ok(())
            })
            .unwrap();
        }
        s.finish(&mut buf, &mut |v, o, e, m| {
            out.push((v.to_vec(), o, e, m));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn lines_across_chunks_long_lines_and_the_unterminated_end() {
        let out = split_all(5, &[b"ab", b"c\r\nde", b"f\n0123456789", b"abc\nxy"]);
        let plain = Marks::default();
        assert_eq!(out[0], (b"abc".to_vec(), 0, 5, plain));
        assert_eq!(out[1], (b"def".to_vec(), 5, 9, plain));
        assert_eq!(
            out[2],
            (
                b"01234".to_vec(),
                9,
                23,
                Marks {
                    cut: Some(13),
                    partial: None
                }
            )
        );
        assert_eq!(
            out[3],
            (
                b"xy".to_vec(),
                23,
                25,
                Marks {
                    cut: None,
                    partial: Some("eof")
                }
            )
        );
        assert_eq!(out.len(), 4);
    }

    proptest::proptest! {
        /// However the bytes are cut into reads, the lines are the same and
        /// their offsets cover the stream exactly.
        #[test]
        fn chunking_does_not_change_the_lines(data in proptest::collection::vec(proptest::prop_oneof![Just(b'\n'), Just(b'a'), Just(b'\r')], 0..200), cuts in proptest::collection::vec(0usize..200, 0..10)) {
            use proptest::prelude::*;
            let whole = split_all(7, &[&data]);
            let mut cuts = cuts; cuts.push(0); cuts.push(data.len()); cuts.sort(); cuts.dedup();
            let chunks: Vec<&[u8]> = cuts.windows(2).filter(|w| w[1] <= data.len()).map(|w| &data[w[0]..w[1]]).collect();
            let pieces = split_all(7, &chunks);
            prop_assert_eq!(&whole, &pieces);
            let mut at = 0;
            for (_, o, e, _) in &whole { prop_assert_eq!(*o, at); at = *e; }
            prop_assert_eq!(at, data.len() as u64);
        }
    }
}
