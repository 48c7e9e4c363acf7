//! In-process subscriptions: every committed entry reaches a subscriber once, in commit order,
//! only after its commit; the sweeper's refunds arrive like any others; a slow subscriber
//! loses nothing it cannot read back from the change feed; a failed commit delivers nothing.

mod common;
#[path = "support/faulty.rs"]
mod faulty;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use credit_ledger::{
    limits::SUBSCRIPTION_CAPACITY, Credit, Error, FeedEvent, Ledger, ManualClock, Op, Options,
    RefundReason, StartGeneration, Subscription, Sweeper, SweeperOptions, TransactionView, TxnKind,
};
use faulty::{Failure, FaultyBackend, Plan};

use common::{ledger, MINUTE_MS, T0_MS};

/// A generous real-time bound for a thread to hand over an entry; never reached when healthy.
const PATIENCE: Duration = Duration::from_secs(60);

/// Read entries until `last` has been seen, catching up from the change feed after a lag and
/// skipping ids already seen, as the docs of `FeedEvent::Lagged` say to.
fn drain_until(ledger: &Ledger, sub: &Subscription, last: u64) -> (Vec<TransactionView>, u64) {
    let (mut seen, mut lags) = (Vec::<TransactionView>::new(), 0);
    let mut at = sub.started_after_txn_id();
    while at < last {
        match sub
            .recv_timeout(PATIENCE)
            .expect("an entry within the bound")
        {
            FeedEvent::Entry(e) => {
                if e.id > at {
                    assert_eq!(e.id, at + 1, "entries arrive in id order without gaps");
                    at = e.id;
                    seen.push(e);
                }
            }
            FeedEvent::Lagged {
                resume_after_txn_id,
                missed,
            } => {
                lags += 1;
                assert!(missed > 0);
                assert_eq!(resume_after_txn_id, at, "resume where delivery stopped");
                loop {
                    let page = ledger.changes(at, 1000).unwrap();
                    if page.entries.is_empty() {
                        break;
                    }
                    at = page.next_after(at);
                    seen.extend(page.entries);
                }
            }
        }
    }
    (seen, lags)
}

#[test]
fn entries_from_many_writers_arrive_once_in_commit_order() {
    let (ledger, _clock) = ledger();
    let ledger = Arc::new(ledger);
    ledger
        .credit(Credit::purchase("ws-0", 10, "before"))
        .unwrap();
    let sub = ledger.subscribe().unwrap();
    assert_eq!(
        sub.started_after_txn_id(),
        1,
        "only what commits from now on"
    );
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || {
                for i in 0..100 {
                    let ws = format!("ws-{}", (t + i) % 3);
                    if i % 10 == 0 {
                        let ops: Vec<Op> = (0..5)
                            .map(|j| Op::Credit(Credit::grant(&ws, 2, format!("b-{t}-{i}-{j}"))))
                            .collect();
                        assert!(ledger.apply(&ops).iter().all(|r| r.is_ok()));
                    } else {
                        ledger
                            .credit(Credit::purchase(&ws, 3, format!("k-{t}-{i}")))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let last = ledger.changes(0, 1).unwrap().last_txn_id;
    assert_eq!(last, 1 + 4 * (90 + 10 * 5));
    let (seen, lags) = drain_until(&ledger, &sub, last);
    assert_eq!(lags, 0, "{} entries fit the queue", last - 1);
    let feed: Vec<TransactionView> = {
        let mut v = Vec::new();
        let mut after = 1;
        while after < last {
            let p = ledger.changes(after, 1000).unwrap();
            after = p.next_after(after);
            v.extend(p.entries);
        }
        v
    };
    assert_eq!(seen, feed, "the same views as the change feed");
    assert_eq!(sub.try_recv(), None, "nothing twice");
}

#[test]
fn the_sweepers_refunds_reach_subscribers() {
    let clock = ManualClock::new(T0_MS);
    let ledger = Arc::new(Ledger::in_memory_with(Options::default().clock(clock.clone())).unwrap());
    ledger.credit(Credit::purchase("ws", 100, "fund")).unwrap();
    ledger
        .start_generation(StartGeneration::new("g", "ws", "Quick Video", 30).timeout_ms(MINUTE_MS))
        .unwrap();
    let sub = ledger.subscribe().unwrap();
    let sweeper = Sweeper::start(Arc::clone(&ledger), SweeperOptions::default()).unwrap();
    clock.advance_ms(MINUTE_MS);
    assert!(sweeper.sweep_now(PATIENCE));
    assert_eq!(sweeper.refunded(), 1);
    match sub.recv_timeout(PATIENCE) {
        Some(FeedEvent::Entry(e)) => {
            assert_eq!(
                (e.kind, e.amount_credits, e.refund_of),
                (TxnKind::Refund, 30, Some(2))
            );
            assert_eq!(e.reason, Some(RefundReason::Timeout));
            assert_eq!(e.balance_after_credits, 100);
        }
        other => panic!("{other:?}"),
    }
    sweeper.stop().unwrap();
}

#[test]
fn a_subscriber_that_fell_behind_catches_up_from_the_feed_and_the_writer_never_waits() {
    let (ledger, _clock) = ledger();
    let slow = ledger.subscribe().unwrap();
    let keen = ledger.subscribe().unwrap();
    let n = SUBSCRIPTION_CAPACITY + 500;
    // The slow subscriber reads nothing while all of this commits: the writer does not wait.
    let ops: Vec<Op> = (0..n)
        .map(|i| {
            Op::Credit(Credit::purchase(
                format!("ws-{}", i % 7),
                1,
                format!("k-{i}"),
            ))
        })
        .collect();
    let (mut keen_seen, mut at) = (0u64, 0u64);
    for chunk in ops.chunks(250) {
        assert!(ledger.apply(chunk).iter().all(|r| r.is_ok()));
        while let Some(FeedEvent::Entry(e)) = keen.try_recv() {
            assert_eq!(e.id, at + 1);
            at = e.id;
            keen_seen += 1;
        }
    }
    assert_eq!(
        keen_seen, n as u64,
        "a subscriber that keeps up misses nothing"
    );
    let (seen, lags) = drain_until(&ledger, &slow, n as u64);
    assert_eq!(lags, 1);
    let ids: Vec<u64> = seen.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=n as u64).collect::<Vec<_>>(),
        "every entry once, in order"
    );
    // After catching up it is delivered to again.
    ledger.credit(Credit::purchase("ws-0", 1, "later")).unwrap();
    assert!(matches!(slow.try_recv(), Some(FeedEvent::Entry(e)) if e.id == n as u64 + 1));
}

#[test]
fn a_failed_commit_delivers_nothing_and_its_retry_delivers_once() {
    let slot: Arc<Mutex<Option<FaultyBackend>>> = Arc::default();
    let factory = {
        let slot = Arc::clone(&slot);
        move || {
            let mut cur = slot.lock().unwrap();
            let next = match cur.take() {
                None => FaultyBackend::new(),
                Some(old) => FaultyBackend::from_image(old.durable_image()),
            };
            *cur = Some(next.clone());
            next
        }
    };
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_backend_factory(factory, Options::default().clock(clock)).unwrap();
    ledger.credit(Credit::purchase("ws", 100, "fund")).unwrap();
    let sub = ledger.subscribe().unwrap();
    for failure in [Failure::SyncFailsAndIsLost, Failure::SyncFailsButLands] {
        let b = slot.lock().unwrap().clone().unwrap();
        b.set_plan(Plan::FailAt {
            at: b.events(),
            failure,
        });
        let key = format!("k-{failure:?}");
        let e = ledger.credit(Credit::purchase("ws", 5, &key)).unwrap_err();
        assert!(
            matches!(e, Error::CommitUncertain { .. } | Error::Storage { .. }),
            "{e:?}"
        );
        assert_eq!(
            sub.try_recv(),
            None,
            "{failure:?}: nothing before a durable commit"
        );
        let r = ledger.credit(Credit::purchase("ws", 5, &key)).unwrap();
        match sub.try_recv() {
            Some(FeedEvent::Entry(e)) => assert_eq!(e.id, r.txn_id, "{failure:?}"),
            other => panic!("{failure:?}: {other:?}"),
        }
        assert_eq!(sub.try_recv(), None, "{failure:?}: once");
    }
}

#[test]
fn dropping_the_ledger_ends_the_subscription() {
    let (ledger, _clock) = ledger();
    let sub = ledger.subscribe().unwrap();
    ledger.credit(Credit::purchase("ws", 1, "k")).unwrap();
    drop(ledger);
    assert!(
        matches!(sub.recv(), Some(FeedEvent::Entry(_))),
        "what was queued stays"
    );
    assert_eq!(sub.recv(), None);
    assert_eq!(sub.recv_timeout(PATIENCE), None);
}
