//! `--exec DIR`: tcollector-style plugin programs.
//!
//! - `DIR/0/<name>`: long-running; started at once and kept running: when it
//!   exits it is started again after a back-off (`--exec-restart-backoff`,
//!   doubling up to a minute, back to the start after a minute of running);
//! - `DIR/<N>/<name>` (N > 0): run every N seconds; a run still going when
//!   the next is due has hung: it is killed (its whole process group) and
//!   reported, and the next run starts on time.
//!
//! Every line a plugin prints on stdout is a log line with source `<name>`;
//! what it prints on stderr goes to logpipe's own log. Each run is a stream
//! (its stdout offsets). Plugins run in a process group of their own, so
//! killing one also stops what it started; on shutdown every plugin gets
//! SIGTERM, then SIGKILL after 2 s, and what it printed is published.
//! Files that are not executable, and other directories, are skipped with a
//! warning. The directory is read once, at start-up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::process::{Child, Command};

use super::tcp::Splitter;
use super::{now_ms, Shared};

#[derive(Debug, Clone)]
pub(crate) struct Plugin {
    pub name: String,
    pub path: PathBuf,
    /// 0: long-running.
    pub interval: u64,
}

#[derive(Debug)]
pub(crate) struct Plugins(pub Vec<Plugin>);

impl Plugins {
    pub fn scan(dir: &Path) -> std::io::Result<Plugins> {
        use std::os::unix::fs::PermissionsExt;
        // Plugins run in their own directory: their paths must not be relative to ours.
        let dir = &std::fs::canonicalize(dir)?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(interval) = name.parse::<u64>() else {
                tracing::warn!(path = %e.path().display(), "--exec: not a number of seconds; skipped");
                continue;
            };
            if !e.file_type()?.is_dir() {
                continue;
            }
            for p in std::fs::read_dir(e.path())? {
                let p = p?;
                let md = std::fs::metadata(p.path())?;
                let pname = p.file_name().to_string_lossy().into_owned();
                if pname.starts_with('.') {
                    continue;
                }
                if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
                    tracing::warn!(path = %p.path().display(), "--exec: not an executable file; skipped");
                    continue;
                }
                out.push(Plugin {
                    name: pname,
                    path: p.path(),
                    interval,
                });
            }
        }
        out.sort_by(|a, b| (a.interval, &a.name).cmp(&(b.interval, &b.name)));
        if out.is_empty() {
            tracing::warn!(dir = %dir.display(), "--exec: no plugins (executables in DIR/0/ or DIR/<seconds>/)");
        }
        for p in &out {
            tracing::info!(plugin = %p.name, path = %p.path.display(), every_s = p.interval, "plugin");
        }
        Ok(Plugins(out))
    }
}

pub(crate) async fn run(shared: Arc<Shared>, plugins: Plugins) -> Result<(), std::io::Error> {
    let mut tasks = tokio::task::JoinSet::new();
    for p in plugins.0 {
        let shared = shared.clone();
        if p.interval == 0 {
            tasks.spawn(long_running(shared, p));
        } else {
            tasks.spawn(periodic(shared, p));
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn signal_group(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the plugin's own process group.
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    }
}

enum Ended {
    Exited(std::process::ExitStatus),
    /// Killed after its interval (periodic) — hung.
    Hung,
    Stopping,
}

/// One run: its stdout lines published, stderr logged, until it exits, hangs
/// past `deadline` or the producer stops.
async fn run_once(
    shared: &Arc<Shared>,
    p: &Plugin,
    deadline: Option<Instant>,
) -> std::io::Result<Ended> {
    let mut child = Command::new(&p.path)
        .current_dir(p.path.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let mut stream = shared
        .stream("exec")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tracing::debug!(plugin = %p.name, pid = ?child.id(), file = %stream.file_id, "plugin started");
    let mut out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let name = p.name.clone();
    let stderr_task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(err).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            tracing::warn!(plugin = %name, stderr = %l, "plugin wrote to stderr");
        }
    });
    let mut split = Splitter::new(shared.cfg.max_line_bytes);
    let mut buf = Vec::with_capacity(16 << 10);
    let mut stopping = shared.stopping.clone();
    let sleep_until = |d: Option<Instant>| async move {
        match d {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let mut ended = None;
    let mut stdout_open = true;
    let mut signalled_at: Option<Instant> = None;
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 << 10);
        }
        tokio::select! {
            r = out.read_buf(&mut buf), if stdout_open => match r {
                Ok(0) | Err(_) => stdout_open = false,
                Ok(_) => {
                    let sent = {
                        let ts = now_ms();
                        split.feed(&mut buf, &mut |v, o, e, m| stream.send(&p.name, v, o, e, m, ts))
                    };
                    let sent = stream.end_read(sent);
                    if let Err(e) = sent {
                        tracing::error!(plugin = %p.name, error = %e, "plugin lines could not be sent");
                        signal_group(&child, libc::SIGKILL);
                        ended = Some(Ended::Stopping);
                        stdout_open = false;
                    }
                }
            },
            status = child.wait(), if !stdout_open => {
                let status = status?;
                if ended.is_none() {
                    ended = Some(Ended::Exited(status));
                }
                break;
            }
            _ = sleep_until(deadline), if ended.is_none() => {
                tracing::error!(plugin = %p.name, interval_s = p.interval, "plugin still running when its next run is due: hung; killed");
                signal_group(&child, libc::SIGKILL);
                ended = Some(Ended::Hung);
            }
            _ = stopping.changed(), if signalled_at.is_none() => {
                signal_group(&child, libc::SIGTERM);
                signalled_at = Some(Instant::now());
                if ended.is_none() {
                    ended = Some(Ended::Stopping);
                }
            }
            _ = sleep_until(signalled_at.map(|t| t + Duration::from_secs(2))), if signalled_at.is_some() => {
                signal_group(&child, libc::SIGKILL);
                signalled_at = Some(Instant::now() + Duration::from_secs(3600));
            }
        }
    }
    // The group may still hold stderr open (a killed plugin's children).
    signal_group(&child, libc::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
    let r = {
        let ts = now_ms();
        split.finish(&mut buf, &mut |v, o, e, m| {
            stream.send(&p.name, v, o, e, m, ts)
        })
    };
    if let Err(e) = stream.end_read(r) {
        tracing::error!(plugin = %p.name, error = %e, "plugin lines could not be sent");
    }
    Ok(ended.expect("set before the loop ends"))
}

async fn long_running(shared: Arc<Shared>, p: Plugin) {
    let first = shared
        .cfg
        .exec_restart_backoff
        .max(Duration::from_millis(10));
    let mut backoff = first;
    loop {
        if shared.stopping() {
            return;
        }
        let started = Instant::now();
        match run_once(&shared, &p, None).await {
            Ok(Ended::Stopping) => return,
            Ok(Ended::Exited(status)) => {
                if started.elapsed() >= Duration::from_secs(60) {
                    backoff = first;
                }
                tracing::warn!(plugin = %p.name, %status, restart_in = ?backoff, "long-running plugin exited; restarting");
            }
            Ok(Ended::Hung) => {}
            Err(e) => {
                tracing::error!(plugin = %p.name, error = %e, restart_in = ?backoff, "plugin could not be started")
            }
        }
        let mut stopping = shared.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopping.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

async fn periodic(shared: Arc<Shared>, p: Plugin) {
    let every = Duration::from_secs(p.interval);
    let mut next = Instant::now();
    loop {
        if shared.stopping() {
            return;
        }
        let due = next + every;
        match run_once(&shared, &p, Some(due)).await {
            Ok(Ended::Stopping) => return,
            Ok(Ended::Exited(status)) if !status.success() => {
                tracing::warn!(plugin = %p.name, %status, "periodic plugin failed");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(plugin = %p.name, error = %e, "plugin could not be started"),
        }
        next = due.max(Instant::now());
        let mut stopping = shared.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stopping.changed() => return,
        }
    }
}
