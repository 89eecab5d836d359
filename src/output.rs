//! Printing that never panics, and a closed reader as a normal stop.
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader has gone (`logpipe
//! demo | head -1`) fails with EPIPE, and `println!` panics on it. Printing
//! here goes through [`out`] and [`err`] instead: a failed write marks the
//! stream gone, prints nothing more to it, and — for the subcommands that
//! exist to print (`demo`, `dlq`, `replay`; see [`stop_when_closed`]) —
//! asks the process's [`shutdown`] to stop, so the command stops as it does on
//! SIGTERM (drain, commit, remove its temporary files) and exits 0, as
//! ripgrep does on a broken pipe. Daemons (`analyze`, `produce`, `archive`)
//! keep running when their log reader goes: losing the logs must not stop
//! the pipeline.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use logpipe_wire::Shutdown;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use anyhow::{Context, Result};

static SHUTDOWN: OnceLock<Shutdown> = OnceLock::new();
/// Set once the signal thread runs.
static SIGNALS: OnceLock<()> = OnceLock::new();
static STOP_WHEN_CLOSED: AtomicBool = AtomicBool::new(false);
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// The process's [`Shutdown`]: asked to stop by SIGTERM, SIGINT and (after
/// [`stop_when_closed`]) by stdout or stderr going away. The signals are
/// read on a thread that sleeps until one arrives.
pub fn shutdown() -> Result<Shutdown> {
    let s = process_shutdown();
    if SIGNALS.get().is_none() {
        let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
        let on_signal = s.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    tracing::info!(signal = sig, "stopping");
                    on_signal.stop();
                }
            })
            .context("starting the signal thread")?;
        let _ = SIGNALS.set(());
    }
    Ok(s)
}

/// The one [`Shutdown`] of the process, created by whichever asks first: a
/// reader that goes before the command took it (a `head -1` that closes
/// between two writes of the first lines) still stops the command.
fn process_shutdown() -> Shutdown {
    SHUTDOWN.get_or_init(Shutdown::new).clone()
}

/// From now on, stdout or stderr going away stops the process as SIGTERM does.
pub fn stop_when_closed() {
    STOP_WHEN_CLOSED.store(true, Ordering::SeqCst);
}

/// Whether stdout has gone (a write to it failed).
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// Whether stdout or stderr has gone: a stop that is the reader's choice,
/// not an interruption.
pub fn closed() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed) || STDERR_GONE.load(Ordering::Relaxed)
}

fn gone(stream: &AtomicBool) {
    stream.store(true, Ordering::Relaxed);
    if STOP_WHEN_CLOSED.load(Ordering::SeqCst) {
        process_shutdown().stop();
    }
}

fn write_to(mut w: impl Write, stream: &AtomicBool, args: fmt::Arguments<'_>) -> bool {
    if stream.load(Ordering::Relaxed) {
        return false;
    }
    if w.write_fmt(args).and_then(|()| w.flush()).is_err() {
        gone(stream);
        return false;
    }
    true
}

/// Writes to stdout and flushes; `false` once stdout is gone.
pub fn out(args: fmt::Arguments<'_>) -> bool {
    write_to(std::io::stdout().lock(), &STDOUT_GONE, args)
}

/// Writes to stderr; `false` once stderr is gone. While a full-screen view
/// holds the terminal, kept for it instead (see [`capture_stderr`]).
pub fn err(args: fmt::Arguments<'_>) -> bool {
    if capture(&args.to_string()) {
        return true;
    }
    write_to(std::io::stderr().lock(), &STDERR_GONE, args)
}

/// Lines a full-screen view took from stderr, while it holds the terminal.
static CAPTURED: Mutex<Option<Captured>> = Mutex::new(None);
/// Lines kept at most; earlier ones are counted.
const CAPTURE_LINES: usize = 1000;

#[derive(Default)]
struct Captured {
    lines: VecDeque<String>,
    dropped: u64,
}

/// From now on, what the process writes to stderr (its messages and its
/// log) is kept instead of written: a full-screen view (`logpipe demo` on a
/// terminal) shows the newest lines, and [`release_stderr`] writes them
/// all out when the view gives the terminal back.
pub fn capture_stderr() {
    *CAPTURED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Captured::default());
}

/// Keeps `text` if stderr is captured.
fn capture(text: &str) -> bool {
    let mut c = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = c.as_mut() else {
        return false;
    };
    for line in text.lines() {
        c.lines.push_back(strip_ansi(line));
        if c.lines.len() > CAPTURE_LINES {
            c.lines.pop_front();
            c.dropped += 1;
        }
    }
    true
}

/// The newest `n` captured lines, oldest first.
pub fn captured_newest(n: usize) -> Vec<String> {
    let c = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
    c.as_ref().map_or_else(Vec::new, |c| {
        c.lines
            .iter()
            .skip(c.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    })
}

/// Ends the capture and writes what it kept to stderr.
pub fn release_stderr() {
    let taken = CAPTURED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(c) = taken {
        if c.dropped > 0 {
            err(format_args!(
                "({} earlier lines of this run's messages were not kept)\n",
                c.dropped
            ));
        }
        for line in c.lines {
            err(format_args!("{line}\n"));
        }
    }
}

/// `line` without terminal escape sequences (the log's colours).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `println!` that never panics (see the module).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::out(format_args!("{}\n", format_args!($($t)*))) };
}

/// `eprintln!` that never panics (see the module).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => { $crate::output::err(format_args!("{}\n", format_args!($($t)*))) };
}

/// The log's writer: stderr, marked gone (and stopping a printing command)
/// when a write fails.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if STDERR_GONE.load(Ordering::Relaxed) || capture(&String::from_utf8_lossy(buf)) {
            return Ok(buf.len());
        }
        let r = std::io::stderr().lock().write_all(buf);
        if r.is_err() {
            gone(&STDERR_GONE);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_stripped_from_captured_lines() {
        assert_eq!(
            strip_ansi("\x1b[2m2026\x1b[0m \x1b[33m WARN\x1b[0m x"),
            "2026  WARN x"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
