//! [`Sweeper`]: the background thread that refunds generations nobody reported, and writes
//! the grant expiry notices and Expirations that are due.
//!
//! Lazy expiry already refunds a late `complete` or `fail`; the sweeper finds the generations
//! that nobody touches again (a render worker that crashed, a lost webhook). It sleeps until
//! the earlier of its interval and the next running deadline, grant expiry or grant notice
//! (kept in memory by the ledger, so an idle wake-up costs no I/O), refunds at most [`SweeperOptions::batch`] generations per
//! write transaction, and sweeps again while more have expired.
//!
//! Its sleep is measured in real time, but its notion of "now" is the ledger's
//! [`Clock`](crate::Clock): with a [`ManualClock`](crate::ManualClock), advance the clock and call
//! [`Sweeper::sweep_now`] (or [`Sweeper::wake`] and [`Sweeper::wait_for_passes`]) instead of
//! waiting.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use credit_ledger::{Credit, Ledger, ManualClock, Options, StartGeneration, Sweeper, SweeperOptions};
//!
//! let clock = ManualClock::new(1_700_000_000_000);
//! let ledger = Arc::new(Ledger::in_memory_with(Options::default().clock(clock.clone()))?);
//! ledger.credit(Credit::purchase("acme", 100, "order-1"))?;
//! ledger.start_generation(StartGeneration::new("g1", "acme", "Quick Video", 10).timeout_ms(60_000))?;
//!
//! let sweeper = Sweeper::start(Arc::clone(&ledger), SweeperOptions::default())?;
//! clock.advance_ms(60_000);
//! assert!(sweeper.sweep_now(Duration::from_secs(60)));
//! assert_eq!(sweeper.refunded(), 1);
//! assert_eq!(ledger.balance("acme")?.balance_credits, 100);
//! sweeper.stop()?;
//! # Ok::<(), credit_ledger::Error>(())
//! ```

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::model::limits::MAX_SWEEP_LIMIT;

/// How a [`Sweeper`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweeperOptions {
    /// The longest it sleeps between passes, in milliseconds, even when no deadline is due.
    /// Default: one second.
    pub interval_ms: u64,
    /// Most refunds per write transaction, 1..=[`MAX_SWEEP_LIMIT`]; a pass sweeps again while
    /// more have expired. Default: 1000.
    pub batch: u32,
    /// The thread's name. Default: `credit-ledger-sweeper`.
    pub thread_name: String,
}

impl Default for SweeperOptions {
    fn default() -> Self {
        SweeperOptions {
            interval_ms: 1_000,
            batch: 1_000,
            thread_name: "credit-ledger-sweeper".into(),
        }
    }
}

impl SweeperOptions {
    /// Use this interval.
    pub fn interval_ms(mut self, interval_ms: u64) -> Self {
        self.interval_ms = interval_ms;
        self
    }

    /// Use this batch size (clamped to 1..=[`MAX_SWEEP_LIMIT`]).
    pub fn batch(mut self, batch: u32) -> Self {
        self.batch = batch;
        self
    }
}

/// What the thread and its handle share.
#[derive(Default)]
struct State {
    stop: bool,
    /// Wake-ups asked for; a pass records the last one it has seen.
    wake_requests: u64,
    /// The highest wake-up request a finished pass started after.
    served: u64,
    passes: u64,
    refunded: u64,
    errors: u64,
    last_error: Option<Error>,
    /// The thread panicked; the message is also the ledger's poison.
    panicked: Option<String>,
    exited: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    signal: Condvar,
}

/// A background thread that refunds expired generations. Stops and joins on
/// [`stop`](Sweeper::stop) or drop.
///
/// If the thread panics, the ledger is poisoned: every later call returns
/// [`Error::Poisoned`] naming the panic, rather than running on without its sweeper.
pub struct Sweeper {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.state.lock();
        f.debug_struct("Sweeper")
            .field("passes", &s.passes)
            .field("refunded", &s.refunded)
            .field("errors", &s.errors)
            .field("panicked", &s.panicked)
            .finish_non_exhaustive()
    }
}

impl Sweeper {
    /// Start the thread. It makes a first pass at once.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the thread name is empty, longer than
    /// [`MAX_ID_BYTES`](crate::limits::MAX_ID_BYTES) or holds a control character;
    /// [`Error::ThreadSpawn`] if the operating system cannot start a thread.
    pub fn start(ledger: Arc<Ledger>, options: SweeperOptions) -> Result<Sweeper> {
        // The OS takes the name as a C string: a NUL in it would make `spawn` panic.
        crate::model::validate::text(
            "sweeper thread name",
            &options.thread_name,
            crate::model::limits::MAX_ID_BYTES,
            false,
        )?;
        let shared = Arc::new(Shared::default());
        let batch = options.batch.clamp(1, MAX_SWEEP_LIMIT);
        let interval = Duration::from_millis(options.interval_ms.max(1));
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(options.thread_name.clone())
            .spawn(move || {
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&ledger, &thread_shared, batch, interval)
                }));
                let mut s = thread_shared.state.lock();
                if let Err(payload) = run {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|m| (*m).to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-text panic".into());
                    let message = format!("the background sweeper thread panicked: {what}");
                    tracing::error!(panic = %what, "sweeper panicked; the ledger is poisoned");
                    ledger.set_poison(message.clone());
                    s.panicked = Some(message);
                }
                s.exited = true;
                thread_shared.signal.notify_all();
            })
            .map_err(|e| Error::ThreadSpawn {
                thread: options.thread_name.clone(),
                message: e.to_string(),
            })?;
        Ok(Sweeper {
            shared,
            handle: Some(handle),
        })
    }

    /// Ask for a pass now, without waiting for it.
    pub fn wake(&self) {
        let mut s = self.shared.state.lock();
        s.wake_requests += 1;
        self.shared.signal.notify_all();
    }

    /// Wake the thread and wait until a pass that began after this call has finished, at most
    /// `timeout` (real time). Returns false on timeout or when the thread is no longer running.
    pub fn sweep_now(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut s = self.shared.state.lock();
        s.wake_requests += 1;
        let ticket = s.wake_requests;
        self.shared.signal.notify_all();
        while s.served < ticket {
            if s.exited || self.shared.signal.wait_until(&mut s, until).timed_out() {
                return s.served >= ticket;
            }
        }
        true
    }

    /// Passes finished so far (a pass may sweep several batches).
    pub fn passes(&self) -> u64 {
        self.shared.state.lock().passes
    }

    /// Wait until at least `passes` passes have finished, at most `timeout` (real time).
    /// Returns whether they have.
    pub fn wait_for_passes(&self, passes: u64, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut s = self.shared.state.lock();
        while s.passes < passes {
            if s.exited || self.shared.signal.wait_until(&mut s, until).timed_out() {
                return s.passes >= passes;
            }
        }
        true
    }

    /// Generations refunded by this sweeper so far.
    pub fn refunded(&self) -> u64 {
        self.shared.state.lock().refunded
    }

    /// Sweeps that failed so far (the thread logs each one and tries again at its next pass).
    pub fn errors(&self) -> u64 {
        self.shared.state.lock().errors
    }

    /// The last sweep error, if any.
    pub fn last_error(&self) -> Option<Error> {
        self.shared.state.lock().last_error.clone()
    }

    /// Stop the thread and wait for it. Returns [`Error::Poisoned`] if it had panicked.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        {
            let mut s = self.shared.state.lock();
            s.stop = true;
            self.shared.signal.notify_all();
        }
        if let Some(handle) = self.handle.take() {
            // The thread catches its own panics, so join only fails if that handler panicked.
            let _ = handle.join();
        }
        match &self.shared.state.lock().panicked {
            Some(message) => Err(Error::Poisoned {
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The thread's loop: a pass, then sleep until the interval, the next deadline, a wake-up or
/// stop.
fn run(ledger: &Ledger, shared: &Shared, batch: u32, interval: Duration) {
    loop {
        let ticket = {
            let s = shared.state.lock();
            if s.stop {
                return;
            }
            s.wake_requests
        };
        let began_ms = ledger.now_ms();
        let (refunded, wrote, result) = pass(ledger, shared, batch);
        let failed = result.is_err();
        {
            let mut s = shared.state.lock();
            s.passes += 1;
            s.refunded += refunded;
            s.served = s.served.max(ticket);
            if let Err(e) = result {
                tracing::warn!(error = %e, "sweep failed; retrying at the next pass");
                s.errors += 1;
                s.last_error = Some(e);
            }
            shared.signal.notify_all();
        }

        // After a failure, a full interval (the old rule); otherwise see `sleep_after`.
        let sleep = if failed {
            interval
        } else {
            let idle_since_ms = (!wrote).then_some(began_ms);
            sleep_after(
                interval,
                idle_since_ms,
                ledger.next_deadline_ms(),
                ledger.now_ms(),
            )
        };
        let until = Instant::now() + sleep;
        let mut s = shared.state.lock();
        while !s.stop && s.wake_requests == ticket {
            if shared.signal.wait_until(&mut s, until).timed_out() {
                break;
            }
        }
    }
}

/// How long the thread sleeps after a pass, in real time: until the earlier of `interval` and
/// the next deadline, grant expiry or notice (`next_ms`, in the ledger's clock, which reads
/// `now_ms`), but at least a millisecond.
///
/// `idle_since_ms`: the pass began at that time and wrote nothing. A deadline that was due
/// when it began is then not looked at again a millisecond later but after the whole
/// interval: the pass saw it due and could not clear it, so something time will not fix within
/// a millisecond holds it (a clock the ledger does not trust writes refunds but leaves
/// Expirations and notices for a trusted one), and looking again every millisecond would spin
/// a write transaction a millisecond. A deadline that fell due during the pass is looked at
/// again at once, as before; a wake-up ends any sleep.
fn sleep_after(
    interval: Duration,
    idle_since_ms: Option<u64>,
    next_ms: Option<u64>,
    now_ms: u64,
) -> Duration {
    let Some(next_ms) = next_ms else {
        return interval;
    };
    if idle_since_ms.is_some_and(|began_ms| next_ms <= began_ms) {
        return interval;
    }
    let until_due = Duration::from_millis(next_ms.saturating_sub(now_ms));
    interval.min(until_due.max(Duration::from_millis(1)))
}

/// Sweep in batches until nothing more has expired (or stop is asked for). Returns the number
/// refunded, whether anything was written, and the first error.
fn pass(ledger: &Ledger, shared: &Shared, batch: u32) -> (u64, bool, Result<()>) {
    let started = Instant::now();
    let mut refunded = 0u64;
    let mut wrote = false;
    let mut batches = 0u32;
    let result = loop {
        let report = match ledger.sweep_expired(batch) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        batches += 1;
        refunded += report.refunds.len() as u64;
        wrote |= !(report.refunds.is_empty()
            && report.expirations.is_empty()
            && report.notices.is_empty());
        if !report.more_expired || shared.state.lock().stop {
            tracing::debug!(
                refunded,
                batches,
                next_deadline_ms = report.next_deadline_ms,
                more_expired = report.more_expired,
                elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "sweep pass"
            );
            break Ok(());
        }
    };
    (refunded, wrote, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_due_deadline_that_a_pass_could_not_clear_waits_the_interval() {
        let now = 1_000_000;
        let ms = Duration::from_millis;
        // Nothing due: the interval.
        assert_eq!(sleep_after(SECOND, None, None, now), SECOND);
        // Due soon: until then, and at least a millisecond, whatever the pass wrote.
        assert_eq!(sleep_after(SECOND, None, Some(now + 250), now), ms(250));
        assert_eq!(
            sleep_after(SECOND, Some(now), Some(now + 250), now),
            ms(250)
        );
        assert_eq!(sleep_after(SECOND, None, Some(now + 5_000), now), SECOND);
        // Due after a pass that wrote (it may have stopped at its batch limit): at once.
        assert_eq!(sleep_after(SECOND, None, Some(now), now), ms(1));
        assert_eq!(sleep_after(SECOND, None, Some(now - 10), now), ms(1));
        // Fell due during a pass that wrote nothing (it began before the deadline): at once.
        assert_eq!(
            sleep_after(SECOND, Some(now - 20), Some(now - 10), now),
            ms(1)
        );
        // Due when a pass began that then wrote nothing: not every millisecond.
        assert_eq!(
            sleep_after(SECOND, Some(now - 10), Some(now - 10), now),
            SECOND
        );
        assert_eq!(sleep_after(SECOND, Some(now), Some(now - 10), now), SECOND);
    }
}
