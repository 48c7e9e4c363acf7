//! After a failed commit the ledger reopens its storage by itself, and a retry with the same
//! ids finishes the job exactly once: no charge or refund is lost or paid twice.

mod common;
#[path = "support/faulty.rs"]
mod faulty;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{assert_healthy, refunds, T0_MS};
use credit_ledger::{Credit, Error, Ledger, ManualClock, Options, RefundReason, StartGeneration};
use faulty::{Failure, FaultyBackend, Plan};

/// The disk under a ledger: the backend in use now. Each reopen puts a new backend on the
/// durable image of the last one (what survives the failed fsync).
#[derive(Clone, Default)]
struct Disk(Arc<Mutex<Option<FaultyBackend>>>, Arc<AtomicUsize>);

impl Disk {
    fn current(&self) -> FaultyBackend {
        self.0.lock().unwrap().clone().expect("opened")
    }

    /// The next sync of the backend in use fails, per `failure`.
    fn fail_next_sync(&self, failure: Failure) {
        let b = self.current();
        b.set_plan(Plan::FailAt {
            at: b.events(),
            failure,
        });
    }
}

fn ledger_on(disk: &Disk, clock: &ManualClock) -> Ledger {
    let slot = disk.clone();
    let reopens = disk.1.clone();
    let factory = move || {
        let mut cur = slot.0.lock().unwrap();
        let next = match cur.take() {
            None => FaultyBackend::new(),
            Some(old) => {
                reopens.fetch_add(1, Ordering::SeqCst);
                FaultyBackend::from_image(old.durable_image())
            }
        };
        *cur = Some(next.clone());
        next
    };
    Ledger::open_backend_factory(factory, Options::default().clock(clock.clone())).unwrap()
}

fn is_uncertain(e: &Error) -> bool {
    matches!(e, Error::CommitUncertain { .. } | Error::Storage { .. })
}

#[test]
fn a_retried_charge_and_refund_land_exactly_once_on_the_same_ledger() {
    for failure in [Failure::SyncFailsButLands, Failure::SyncFailsAndIsLost] {
        let disk = Disk::default();
        let clock = ManualClock::new(T0_MS);
        let ledger = ledger_on(&disk, &clock);
        ledger
            .credit(Credit::purchase("ws", 100, "order-1"))
            .unwrap();

        // The charge's commit fails.
        disk.fail_next_sync(failure);
        let start = StartGeneration::new("g", "ws", "Quick Video", 12);
        let e = ledger.start_generation(start.clone()).unwrap_err();
        assert!(is_uncertain(&e), "{failure:?}: {e:?}");

        // The same ledger reopens and the retry settles it.
        // Whether the failed commit landed is redb's business (it may flush or roll back
        // while closing the failed handle); the retry is a replay if it did, and a new charge
        // if it did not. Either way there is exactly one.
        let charge = ledger.start_generation(start.clone()).unwrap();
        let again = ledger.start_generation(start.clone()).unwrap();
        assert!(again.replay && again.usage_txn == charge.usage_txn);
        assert_eq!(ledger.balance("ws").unwrap().balance_credits, 88);
        assert_eq!(ledger.balance("ws").unwrap().running_generations, 1);

        // The refund's commit fails too.
        disk.fail_next_sync(failure);
        let e = ledger
            .fail_generation("g", RefundReason::ApiFailure, "502")
            .unwrap_err();
        assert!(is_uncertain(&e), "{failure:?}: {e:?}");
        let refund = ledger
            .fail_generation("g", RefundReason::ApiFailure, "502")
            .unwrap();
        let again = ledger
            .fail_generation("g", RefundReason::ApiFailure, "502")
            .unwrap();
        assert!(again.replay && again.refund_txn == refund.refund_txn);

        assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);
        assert_eq!(refunds(&ledger, "ws").len(), 1, "{failure:?}");
        assert_healthy(&ledger);

        assert_eq!(
            disk.1.load(Ordering::SeqCst),
            2,
            "one reopen per failed commit"
        );
        // Other writes go on as normal.
        ledger.credit(Credit::purchase("ws", 5, "order-2")).unwrap();
        assert_eq!(ledger.balance("ws").unwrap().balance_credits, 105);
        assert_healthy(&ledger);
    }
}

#[test]
fn a_backend_without_a_factory_keeps_refusing_with_a_clear_error() {
    let disk = FaultyBackend::new();
    let clock = ManualClock::new(T0_MS);
    let ledger =
        Ledger::open_backend(disk.clone(), Options::default().clock(clock.clone())).unwrap();
    ledger
        .credit(Credit::purchase("ws", 100, "order-1"))
        .unwrap();
    disk.set_plan(Plan::FailAt {
        at: disk.events(),
        failure: Failure::SyncFailsAndIsLost,
    });
    assert!(ledger.credit(Credit::purchase("ws", 1, "k")).is_err());
    match ledger.credit(Credit::purchase("ws", 1, "k")) {
        Err(Error::Storage { message }) => {
            assert!(
                message.contains("re-open") || message.contains("reopen"),
                "{message}"
            )
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
}

#[test]
fn a_new_file_appears_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.redb");
    drop(Ledger::open(&path).unwrap());
    // Only the ledger is left in the folder: no temporary file.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["new.redb".to_string()]);
    let ledger = Ledger::open(&path).unwrap();
    assert!(ledger.verify().unwrap().is_clean());
    // A path in a folder that does not exist is a clear error, and creates nothing.
    let missing = dir.path().join("nope").join("x.redb");
    assert!(matches!(
        Ledger::open(&missing),
        Err(Error::Storage { .. } | Error::NotALedger { .. })
    ));
}
