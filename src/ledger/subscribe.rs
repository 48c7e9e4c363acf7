//! In-process subscriptions: committed entries pushed to bounded receivers.
//!
//! The writer never waits for a subscriber. After a durable commit it takes the entries the
//! commit appended and pushes each into every subscriber's queue, up to
//! [`SUBSCRIPTION_CAPACITY`]. A queue that is full is not written to: the subscriber is marked
//! as having fallen behind, from which id, and by how many entries, and it is told so (a
//! [`FeedEvent::Lagged`]) once it has read what was queued before the gap. It then catches up
//! from [`Ledger::changes`]. While every subscriber is behind, a commit costs one lock and a
//! counter per subscriber: no read, no view is built.
//!
//! Deliveries happen in commit order: the committing thread takes the subscriber lock before
//! it lets go of the writer lock. What has been delivered is tracked by id, so entries that
//! landed in a commit reported as uncertain (and that the next commit finds on disk) are
//! delivered with the next successful commit rather than never.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::Ledger;
use crate::error::Result;
use crate::model::limits::{MAX_PAGE_LIMIT, SUBSCRIPTION_CAPACITY};
use crate::query::TransactionView;

/// What a [`Subscription`] receives.
// Nearly every event is an entry: boxing it would add an allocation to each to shrink the
// rare `Lagged`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A committed entry, durable before it was delivered. Ids increase by one from entry to
    /// entry, except across a [`FeedEvent::Lagged`].
    Entry(TransactionView),
    /// The subscriber fell [`SUBSCRIPTION_CAPACITY`] entries behind and `missed` entries were
    /// not queued for it. Read them with `ledger.changes(resume_after_txn_id, ..)` until the
    /// feed's end; the entries that follow this event may overlap what that read returns, so
    /// skip ids already seen.
    Lagged {
        /// The last id delivered before the gap: read on after it.
        resume_after_txn_id: u64,
        /// How many entries were not delivered.
        missed: u64,
    },
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<TransactionView>,
    /// Set when entries were dropped: (the last id queued before them, how many).
    lagged: Option<(u64, u64)>,
    /// The id of the last entry queued (or skipped as missed).
    last_txn_id: u64,
    /// The ledger is gone: nothing more will come.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// A bounded receiver of committed entries, from [`Ledger::subscribe`]. Dropping it
/// unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
    started_after_txn_id: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("started_after_txn_id", &self.started_after_txn_id)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The last entry committed before the subscription began: it receives every entry after
    /// it, and [`Ledger::changes`] has everything up to it.
    pub fn started_after_txn_id(&self) -> u64 {
        self.started_after_txn_id
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<FeedEvent> {
        Self::take(&mut self.shared.queue.lock())
    }

    /// Wait up to `timeout` for the next event. `None` when nothing came in time, or when
    /// the ledger was dropped and everything queued has been read.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<FeedEvent> {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.queue.lock();
        loop {
            if let Some(e) = Self::take(&mut q) {
                return Some(e);
            }
            if q.closed || self.shared.ready.wait_until(&mut q, deadline).timed_out() {
                return Self::take(&mut q);
            }
        }
    }

    /// Wait for the next event; `None` once the ledger was dropped and everything queued has
    /// been read.
    pub fn recv(&self) -> Option<FeedEvent> {
        let mut q = self.shared.queue.lock();
        loop {
            if let Some(e) = Self::take(&mut q) {
                return Some(e);
            }
            if q.closed {
                return None;
            }
            self.shared.ready.wait(&mut q);
        }
    }

    fn take(q: &mut Queue) -> Option<FeedEvent> {
        if let Some(e) = q.entries.pop_front() {
            return Some(FeedEvent::Entry(e));
        }
        q.lagged
            .take()
            .map(|(resume_after_txn_id, missed)| FeedEvent::Lagged {
                resume_after_txn_id,
                missed,
            })
    }
}

struct Registry {
    subscribers: Vec<Weak<Shared>>,
    /// Every entry up to this id has been delivered to every subscriber.
    delivered_txn_id: u64,
}

/// The ledger's subscribers.
pub(super) struct Subscribers {
    registry: Mutex<Registry>,
    /// Registered subscribers (including dropped ones not yet pruned): zero means a commit
    /// skips the whole delivery.
    count: AtomicUsize,
}

impl Default for Subscribers {
    fn default() -> Self {
        Subscribers {
            registry: Mutex::new(Registry {
                subscribers: Vec::new(),
                delivered_txn_id: 0,
            }),
            count: AtomicUsize::new(0),
        }
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for s in self.registry.get_mut().subscribers.drain(..) {
            if let Some(s) = s.upgrade() {
                s.queue.lock().closed = true;
                s.ready.notify_all();
            }
        }
    }
}

/// A delivery in progress: the subscriber lock, taken before the writer lock is released.
pub(super) struct Delivery<'a> {
    registry: MutexGuard<'a, Registry>,
    last_txn_id: u64,
}

impl Subscribers {
    /// Start delivering up to `last_txn_id`, or `None` when nobody subscribes. Call with the
    /// writer lock held, and release it before [`Ledger::deliver`].
    pub fn begin(&self, last_txn_id: u64) -> Option<Delivery<'_>> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        Some(Delivery {
            registry: self.registry.lock(),
            last_txn_id,
        })
    }
}

impl Ledger {
    /// Subscribe to the entries committed from now on, across every workspace: the views the
    /// change feed returns, each delivered after its commit is durable, in commit order. The
    /// receiver is bounded ([`SUBSCRIPTION_CAPACITY`]); a subscriber that does not keep up
    /// never blocks or slows the writer, it is told how far it fell behind
    /// ([`FeedEvent::Lagged`]) and catches up from [`changes`](Self::changes). Refunds the
    /// [`Sweeper`](crate::Sweeper) writes arrive like any others.
    ///
    /// ```
    /// use credit_ledger::{Credit, FeedEvent, Ledger};
    /// let ledger = Ledger::in_memory()?;
    /// let sub = ledger.subscribe()?;
    /// ledger.credit(Credit::purchase("ws", 10, "o-1"))?;
    /// match sub.try_recv() {
    ///     Some(FeedEvent::Entry(e)) => assert_eq!((e.id, e.amount_credits), (1, 10)),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), credit_ledger::Error>(())
    /// ```
    pub fn subscribe(&self) -> Result<Subscription> {
        let mut registry = self.feed.registry.lock();
        let last = self.changes(u64::MAX, 1)?.last_txn_id;
        registry.subscribers.retain(|s| s.strong_count() > 0);
        if registry.subscribers.is_empty() {
            registry.delivered_txn_id = last;
        }
        let start = registry.delivered_txn_id;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                last_txn_id: start,
                ..Queue::default()
            }),
            ready: Condvar::new(),
        });
        registry.subscribers.push(Arc::downgrade(&shared));
        self.feed
            .count
            .store(registry.subscribers.len(), Ordering::SeqCst);
        Ok(Subscription {
            shared,
            started_after_txn_id: start,
        })
    }

    /// Push the entries after the last delivered one, up to the delivery's end, to every
    /// subscriber. A read error (a damaged record) leaves them undelivered: the next commit
    /// tries again, and a subscriber can always read them from the change feed.
    pub(super) fn deliver(&self, mut d: Delivery<'_>) {
        let reg = &mut *d.registry;
        reg.subscribers.retain(|s| s.strong_count() > 0);
        self.feed
            .count
            .store(reg.subscribers.len(), Ordering::SeqCst);
        let subs: Vec<Arc<Shared>> = reg.subscribers.iter().filter_map(Weak::upgrade).collect();
        let (from, to) = (reg.delivered_txn_id, d.last_txn_id);
        if subs.is_empty() || to <= from {
            reg.delivered_txn_id = reg.delivered_txn_id.max(to);
            return;
        }
        let room = subs.iter().any(|s| {
            let q = s.queue.lock();
            q.lagged.is_none() && q.entries.len() < SUBSCRIPTION_CAPACITY
        });
        let mut entries = Vec::new();
        if room {
            let mut after = from;
            while after < to {
                let page = self.changes(after, MAX_PAGE_LIMIT);
                match page {
                    Ok(p) if !p.entries.is_empty() => {
                        after = p.next_after(after);
                        entries.extend(p.entries.into_iter().filter(|e| e.id <= to));
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read committed entries for subscribers");
                        return;
                    }
                }
            }
        }
        for s in &subs {
            let mut q = s.queue.lock();
            for id in from + 1..=to {
                if id <= q.last_txn_id {
                    continue;
                }
                let fits = q.lagged.is_none() && q.entries.len() < SUBSCRIPTION_CAPACITY;
                match entries.get((id - from - 1) as usize) {
                    Some(e) if fits && e.id == id => q.entries.push_back(e.clone()),
                    _ => {
                        let resume = q.last_txn_id_before_gap();
                        let missed = q.lagged.map_or(0, |(_, m)| m) + 1;
                        q.lagged = Some((resume, missed));
                    }
                }
                q.last_txn_id = id;
            }
            drop(q);
            s.ready.notify_all();
        }
        reg.delivered_txn_id = to;
    }
}

impl Queue {
    /// The id after which a subscriber that is missing entries must read on.
    fn last_txn_id_before_gap(&self) -> u64 {
        match self.lagged {
            Some((resume, _)) => resume,
            None => self.last_txn_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Credit;

    #[test]
    fn a_subscriber_that_never_reads_is_told_how_far_it_fell_behind() {
        let ledger = Ledger::in_memory().unwrap();
        let sub = ledger.subscribe().unwrap();
        let n = SUBSCRIPTION_CAPACITY as u64 + 10;
        let ops: Vec<_> = (0..n)
            .map(|i| crate::Op::Credit(Credit::purchase("ws", 1, format!("k-{i}"))))
            .collect();
        for chunk in ops.chunks(1000) {
            assert!(ledger.apply(chunk).iter().all(|r| r.is_ok()));
        }
        for id in 1..=SUBSCRIPTION_CAPACITY as u64 {
            match sub.try_recv() {
                Some(FeedEvent::Entry(e)) => assert_eq!(e.id, id),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            sub.try_recv(),
            Some(FeedEvent::Lagged {
                resume_after_txn_id: SUBSCRIPTION_CAPACITY as u64,
                missed: 10
            })
        );
        assert_eq!(sub.try_recv(), None);
        // Caught up: the next commit is delivered again.
        ledger.credit(Credit::purchase("ws", 1, "after")).unwrap();
        assert!(matches!(sub.try_recv(), Some(FeedEvent::Entry(e)) if e.id == n + 1));
    }
}
