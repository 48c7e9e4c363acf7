//! Group commit: many callers, one write transaction, one fsync.
//!
//! redb allows one writer at a time and a durable commit costs an fsync. Taking commits in turn
//! caps throughput at one fsync per operation. Instead each caller queues its operation; the
//! first caller to find no leader becomes the leader, takes the whole queue (up to
//! [`GROUP_COMMIT_MAX_OPS`]), applies it in one write transaction, commits once, and hands each
//! caller its own result. Nobody is told "done" before the commit returns.
//!
//! A new leader that finds fewer operations queued than the last commit saw callers (the last
//! batch plus those that queued during its commit) waits a little for the rest: at most half
//! the last commit's duration, capped at [`MAX_GATHER_WAIT`]. Without that wait the first
//! caller back after a commit would lead at once with a batch of one while the others are still
//! waking up, and batches shrink to about half the number of callers (measured: 8 operations
//! per fsync with 16 threads, 2 with 4). A lone caller never waits: its estimate is 1.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::Error;
use crate::model::limits::GROUP_COMMIT_MAX_OPS;
use crate::model::{Op, Outcome};

type OpResult = Result<Outcome, Error>;

#[derive(Default)]
struct Queue {
    pending: VecDeque<(u64, Op)>,
    done: HashMap<u64, OpResult>,
    next_ticket: u64,
    leader_active: bool,
    /// A leader is waiting for more operations to queue.
    leader_gathering: bool,
    /// Callers seen by the last commit: its batch plus those that queued meanwhile.
    callers: usize,
    /// How long the last commit took.
    last_commit: Duration,
}

/// The longest a leader waits for more operations to queue.
pub(crate) const MAX_GATHER_WAIT: Duration = Duration::from_millis(1);

/// The queue and its wake-up signal.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Signalled when an operation queues while a leader is gathering.
    arrivals: Condvar,
}

impl GroupCommit {
    /// Queue `op`, and either lead a commit or wait for one, until `op` has its result.
    /// `commit` applies a batch in one write transaction and returns one result per op.
    pub fn submit(&self, op: Op, commit: impl Fn(&[Op]) -> Vec<OpResult>) -> OpResult {
        let mut q = self.queue.lock();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push_back((ticket, op));
        if q.leader_gathering {
            self.arrivals.notify_one();
        }
        loop {
            if let Some(result) = q.done.remove(&ticket) {
                return result;
            }
            if q.leader_active {
                self.wake.wait(&mut q);
                continue;
            }
            self.lead(&mut q, &commit);
        }
    }

    fn lead(&self, q: &mut MutexGuard<'_, Queue>, commit: &impl Fn(&[Op]) -> Vec<OpResult>) {
        q.leader_active = true;
        let expected = q.callers.min(GROUP_COMMIT_MAX_OPS);
        if q.pending.len() < expected {
            let until = Instant::now() + (q.last_commit / 2).min(MAX_GATHER_WAIT);
            q.leader_gathering = true;
            while q.pending.len() < expected {
                if self.arrivals.wait_until(q, until).timed_out() {
                    break;
                }
            }
            q.leader_gathering = false;
        }
        let n = q.pending.len().min(GROUP_COMMIT_MAX_OPS);
        let (tickets, ops): (Vec<u64>, Vec<Op>) = q.pending.drain(..n).unzip();
        // A panic in the commit must not leave the other callers waiting forever: it becomes
        // an error for every operation of the batch.
        let started = Instant::now();
        let results = MutexGuard::unlocked(q, || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(&ops)))
        });
        q.last_commit = started.elapsed();
        q.callers = n + q.pending.len();
        let results = match results {
            Ok(r) if r.len() == ops.len() => r,
            _ => ops
                .iter()
                .map(|_| {
                    Err(Error::Poisoned {
                        message: "the group-commit leader panicked while committing".into(),
                    })
                })
                .collect(),
        };
        for (t, r) in tickets.into_iter().zip(results) {
            q.done.insert(t, r);
        }
        q.leader_active = false;
        self.wake.notify_all();
    }
}
