//! How a run is asked to end: one [`Shutdown`] for every role (producer,
//! analyzer, archive) and for whoever controls it (a signal, a test, the
//! demo).
//!
//! A request only moves forward: run → stop or finish → abort (a stop after
//! a finish is ignored; a finish after a stop wins, so a replay that reached
//! its end still closes its windows). Workers look at it between steps;
//! [`Shutdown::wait_timeout`] sleeps until a request or a timeout, so a loop
//! that idles wakes at once instead of at its next poll.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Request {
    /// Graceful: stop taking input, hand on and save what there is, return.
    /// What is still open (an analyzer's windows) is rebuilt by whoever
    /// takes over.
    Stop,
    /// The input is complete: close everything as final, save, return.
    Finish,
    /// Abrupt, as `kill -9`: return at once, no drain, nothing saved (tests).
    Abort,
}

const RUN: u8 = 0;
const STOP: u8 = 1;
const FINISH: u8 = 2;
const ABORT: u8 = 3;

/// A shared switch that ends a run; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: AtomicU8,
    lock: Mutex<()>,
    asked: Condvar,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Asks for a graceful stop ([`Request::Stop`]), unless more was asked.
    pub fn stop(&self) {
        self.raise(STOP, RUN);
    }

    /// Says the input is complete ([`Request::Finish`]), unless aborted.
    pub fn finish(&self) {
        self.raise(FINISH, STOP);
    }

    /// Asks to return at once ([`Request::Abort`]).
    pub fn abort(&self) {
        self.raise(ABORT, FINISH);
    }

    /// Moves to `to` when the state is at most `from`.
    fn raise(&self, to: u8, from: u8) {
        let s = &self.0.state;
        let mut cur = s.load(Ordering::SeqCst);
        while cur <= from {
            match s.compare_exchange(cur, to, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // Taking the lock orders this notification after any waiter's check.
        drop(self.0.lock.lock().unwrap_or_else(|e| e.into_inner()));
        self.0.asked.notify_all();
    }

    /// What was asked, if anything.
    pub fn requested(&self) -> Option<Request> {
        match self.0.state.load(Ordering::SeqCst) {
            RUN => None,
            STOP => Some(Request::Stop),
            FINISH => Some(Request::Finish),
            _ => Some(Request::Abort),
        }
    }

    /// Whether any end was asked.
    pub fn is_requested(&self) -> bool {
        self.0.state.load(Ordering::Relaxed) != RUN
    }

    /// Whether an abort was asked.
    pub fn is_aborted(&self) -> bool {
        self.0.state.load(Ordering::Relaxed) == ABORT
    }

    /// Sleeps until a request or `timeout`; true when one was made.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_requested() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = match self.0.asked.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Sleeps until a request is made, and returns it.
    pub fn wait(&self) -> Request {
        let mut guard = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = self.requested() {
                return r;
            }
            guard = self.0.asked.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_only_move_forward() {
        let s = Shutdown::new();
        assert_eq!(s.requested(), None);
        s.stop();
        assert_eq!(s.requested(), Some(Request::Stop));
        s.finish();
        assert_eq!(
            s.requested(),
            Some(Request::Finish),
            "a finish after a stop wins"
        );
        s.stop();
        assert_eq!(
            s.requested(),
            Some(Request::Finish),
            "a stop after a finish is ignored"
        );
        s.abort();
        assert!(s.is_aborted());
        s.finish();
        s.stop();
        assert_eq!(s.requested(), Some(Request::Abort));
    }

    #[test]
    fn a_waiter_wakes_at_the_request_not_at_its_timeout() {
        let s = Shutdown::new();
        assert!(!s.wait_timeout(Duration::from_millis(10)));
        let t = {
            let s = s.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (s.wait_timeout(Duration::from_secs(600)), started.elapsed())
            })
        };
        let w = {
            let s = s.clone();
            std::thread::spawn(move || s.wait())
        };
        std::thread::sleep(Duration::from_millis(50));
        s.stop();
        let (woke, after) = t.join().unwrap();
        assert!(woke);
        assert!(after < Duration::from_secs(600), "{after:?}");
        assert_eq!(w.join().unwrap(), Request::Stop);
    }
}
