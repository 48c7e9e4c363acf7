//! `GrantExpiring` notices: one notification per grant, `Options::grant_expiring_notice_ms`
//! before its expiry, for what it holds then; never twice, never for a grant that is spent,
//! voided or expired by then; moving nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use credit_ledger::limits::{MAX_GRANT_EXPIRING_NOTICE_MS, MIN_GRANT_EXPIRING_NOTICE_MS};
use credit_ledger::{
    Clock, Credit, Error, HistoryFilter, InvalidInput, Invariant, Ledger, ManualClock, Options,
    RefundReason, StartGeneration, Sweeper, SweeperOptions, TransactionView, TxnKind, VoidGrant,
};
use redb::ReadableTable;

use common::{all_history, assert_healthy, T0_MS};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const NOTICE_MS: u64 = 3 * DAY_MS;

fn options(clock: &ManualClock, notice_ms: Option<u64>) -> Options {
    Options::default()
        .clock(clock.clone())
        .grant_expiring_notice_ms(notice_ms)
}

fn ledger_with(notice_ms: Option<u64>) -> (Ledger, ManualClock) {
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::in_memory_with(options(&clock, notice_ms)).unwrap();
    (ledger, clock)
}

fn notices(ledger: &Ledger, ws: &str) -> Vec<TransactionView> {
    all_history(
        ledger,
        ws,
        &HistoryFilter::all().kinds([TxnKind::GrantExpiring]),
    )
}

/// (grant, credits, expiry) of each notice of `ws`, oldest first.
fn noticed(ledger: &Ledger, ws: &str) -> Vec<(String, u64, Option<u64>)> {
    let mut v: Vec<_> = notices(ledger, ws)
        .into_iter()
        .map(|n| {
            assert_eq!(n.allocations.len(), 1, "{n:?}");
            let a = &n.allocations[0];
            (a.grant_id.clone(), a.credits, a.spendable_until_ms)
        })
        .collect();
    v.reverse();
    v
}

fn sweep(ledger: &Ledger) -> credit_ledger::SweepReport {
    ledger.sweep_expired(1000).unwrap()
}

#[test]
fn the_sweep_writes_one_notice_when_it_is_due_and_it_moves_nothing() {
    let (l, clock) = ledger_with(Some(NOTICE_MS));
    let expires = T0_MS + 30 * DAY_MS;
    l.credit(
        Credit::grant("acme", 500, "monthly-12")
            .memo("Monthly credits")
            .expires_at_ms(expires),
    )
    .unwrap();
    l.credit(Credit::purchase("acme", 100, "pack-1")).unwrap();
    l.start_generation(StartGeneration::new("g1", "acme", "Quick Video", 120))
        .unwrap();
    l.complete_generation("g1").unwrap();
    // The sweeper wakes for it: nothing else is due before.
    assert_eq!(l.next_deadline_ms(), Some(expires - NOTICE_MS));
    clock.set_ms(expires - NOTICE_MS - 1);
    let r = sweep(&l);
    assert!(r.notices.is_empty(), "{r:?}");
    assert!(notices(&l, "acme").is_empty());

    clock.set_ms(expires - NOTICE_MS);
    let r = sweep(&l);
    assert_eq!(r.notices.len(), 1, "{r:?}");
    let n = &r.notices[0];
    assert_eq!(
        (
            n.grant_id.as_str(),
            n.expires_at_ms,
            n.expiring_credits,
            n.at_ms
        ),
        ("monthly-12", expires, 380, expires - NOTICE_MS)
    );
    // Next: the expiry itself.
    assert_eq!(r.next_deadline_ms, Some(expires));
    let view = l.transaction(n.txn_id).unwrap();
    assert_eq!(view.kind, TxnKind::GrantExpiring);
    assert_eq!(view.amount_credits, 0);
    assert_eq!(
        (view.balance_before_credits, view.balance_after_credits),
        (480, 480)
    );
    assert_eq!(view.title, "Monthly credits");
    assert_eq!(
        view.action,
        "380 credits of Monthly credits expire unless spent"
    );
    assert_eq!(
        noticed(&l, "acme"),
        vec![("monthly-12".into(), 380, Some(expires))]
    );
    // The feed carries it, as history does.
    let feed = l.changes(0, 100).unwrap();
    assert_eq!(
        feed.entries
            .iter()
            .filter(|e| e.kind == TxnKind::GrantExpiring)
            .count(),
        1
    );
    // Once only: later sweeps, up to and past the expiry, write no second notice.
    for at in [expires - NOTICE_MS + 1, expires - 1, expires + 1] {
        clock.set_ms(at);
        assert!(sweep(&l).notices.is_empty());
    }
    assert_eq!(notices(&l, "acme").len(), 1);
    let s = l.balance("acme").unwrap();
    assert_eq!(s.balance_credits, 100);
    assert_eq!(
        s.transactions, 5,
        "credit, credit, usage, notice, expiration"
    );
    assert_healthy(&l);
}

#[test]
fn a_grant_credited_inside_its_window_gets_its_notice_at_once() {
    let (l, clock) = ledger_with(Some(NOTICE_MS));
    let expires = T0_MS + DAY_MS;
    let credit = Credit::grant("acme", 50, "trial").expires_at_ms(expires);
    let r = l.credit(credit.clone()).unwrap();
    // In the same commit, right after the credit.
    let n = l.transaction(r.txn_id + 1).unwrap();
    assert_eq!(n.kind, TxnKind::GrantExpiring);
    assert_eq!(n.at_ms, r.at_ms);
    assert_eq!(
        noticed(&l, "acme"),
        vec![("trial".into(), 50, Some(expires))]
    );
    assert_eq!(l.next_deadline_ms(), Some(expires));
    // A retried credit is a replay and writes nothing; nor does any sweep.
    assert!(l.credit(credit).unwrap().replay);
    clock.advance_ms(DAY_MS / 2);
    assert!(sweep(&l).notices.is_empty());
    assert_eq!(notices(&l, "acme").len(), 1);
    assert_healthy(&l);
}

#[test]
fn a_grant_that_starts_inside_its_window_is_noticed_when_it_starts() {
    let (l, clock) = ledger_with(Some(NOTICE_MS));
    let starts = T0_MS + 10 * DAY_MS;
    let expires = starts + DAY_MS;
    l.credit(
        Credit::grant("acme", 40, "promo")
            .effective_at_ms(starts)
            .expires_at_ms(expires),
    )
    .unwrap();
    assert_eq!(l.next_deadline_ms(), Some(starts));
    clock.set_ms(starts - 1);
    assert!(sweep(&l).notices.is_empty());
    clock.set_ms(starts);
    assert_eq!(sweep(&l).notices.len(), 1);
    assert_eq!(
        noticed(&l, "acme"),
        vec![("promo".into(), 40, Some(expires))]
    );
    assert_healthy(&l);
}

/// What happens to a grant of 100 credits expiring in 10 days, with a 3-day notice, before
/// its notice is due at day 7; and how many credits its notice says (`None`: no notice).
#[test]
fn only_a_grant_spendable_with_credits_left_at_notice_time_gets_one() {
    #[derive(Debug, Clone, Copy)]
    enum Before {
        Nothing,
        SpendAll,
        SpendAllThenRefund,
        SpendSome,
        Void,
        /// No sweep runs until after the expiry.
        SleepPastExpiry,
    }
    let expires = T0_MS + 10 * DAY_MS;
    let due = expires - NOTICE_MS;
    for (before, want) in [
        (Before::Nothing, Some(100)),
        (Before::SpendAll, None),
        (Before::SpendAllThenRefund, Some(100)),
        (Before::SpendSome, Some(70)),
        (Before::Void, None),
        (Before::SleepPastExpiry, None),
    ] {
        let (l, clock) = ledger_with(Some(NOTICE_MS));
        l.credit(Credit::grant("acme", 100, "g").expires_at_ms(expires))
            .unwrap();
        let charge = |id: &str, cost| {
            l.start_generation(StartGeneration::new(id, "acme", "HD Video", cost))
                .unwrap();
        };
        match before {
            Before::Nothing => {}
            Before::SpendAll => {
                charge("a", 100);
                l.complete_generation("a").unwrap();
            }
            Before::SpendAllThenRefund => {
                charge("a", 100);
                l.fail_generation("a", RefundReason::ApiFailure, "503")
                    .unwrap();
            }
            Before::SpendSome => {
                charge("a", 30);
                l.complete_generation("a").unwrap();
            }
            Before::Void => {
                l.void_grant(VoidGrant::new("acme", "g", "void-1", "fraud"))
                    .unwrap();
            }
            Before::SleepPastExpiry => clock.set_ms(expires),
        }
        clock.set_ms(clock.now_ms().max(due));
        let r = sweep(&l);
        assert_eq!(
            r.notices
                .iter()
                .map(|n| n.expiring_credits)
                .collect::<Vec<_>>(),
            want.into_iter().collect::<Vec<_>>(),
            "{before:?}"
        );
        // Refunding credits back into it after its notice time writes no late notice.
        clock.set_ms(expires + 1);
        sweep(&l);
        assert_eq!(
            notices(&l, "acme").len(),
            usize::from(want.is_some()),
            "{before:?}"
        );
        assert_healthy(&l);
    }
}

#[test]
fn notices_are_off_by_default_and_the_window_is_checked_at_open() {
    let (l, clock) = ledger_with(None);
    l.credit(Credit::grant("acme", 10, "soon").expires_at_ms(T0_MS + DAY_MS))
        .unwrap();
    clock.advance_ms(DAY_MS - 1);
    assert!(sweep(&l).notices.is_empty());
    assert!(notices(&l, "acme").is_empty());
    assert_eq!(Options::default().grant_expiring_notice_ms, None);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.redb");
    for bad in [
        0,
        MIN_GRANT_EXPIRING_NOTICE_MS - 1,
        MAX_GRANT_EXPIRING_NOTICE_MS + 1,
    ] {
        let e = Ledger::open_with(&path, options(&clock, Some(bad))).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidInput(InvalidInput::OptionOutOfRange {
                    option: "grant_expiring_notice_ms",
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(!path.exists(), "a refused open created the file");
    }
    for good in [MIN_GRANT_EXPIRING_NOTICE_MS, MAX_GRANT_EXPIRING_NOTICE_MS] {
        Ledger::in_memory_with(options(&clock, Some(good))).unwrap();
    }
}

#[test]
fn the_notice_time_is_fixed_when_the_grant_is_credited_and_survives_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    let expires = T0_MS + 30 * DAY_MS;
    {
        let l = Ledger::open_with(&path, options(&clock, Some(NOTICE_MS))).unwrap();
        l.credit(Credit::grant("acme", 10, "three-days").expires_at_ms(expires))
            .unwrap();
    }
    {
        let l = Ledger::open_with(&path, options(&clock, Some(7 * DAY_MS))).unwrap();
        l.credit(Credit::grant("acme", 20, "seven-days").expires_at_ms(expires))
            .unwrap();
        assert_eq!(l.next_deadline_ms(), Some(expires - 7 * DAY_MS));
    }
    // Reopened with notices off: the two already scheduled still come, each once, at its time.
    for (at, want) in [
        (
            expires - 7 * DAY_MS,
            vec![("seven-days".to_string(), 20, Some(expires))],
        ),
        (
            expires - NOTICE_MS,
            vec![
                ("seven-days".to_string(), 20, Some(expires)),
                ("three-days".to_string(), 10, Some(expires)),
            ],
        ),
    ] {
        clock.set_ms(at);
        // The catch-up sweep of the open writes it.
        let l = Ledger::open_with(&path, options(&clock, None)).unwrap();
        assert_eq!(noticed(&l, "acme"), want);
        assert!(sweep(&l).notices.is_empty());
        assert_healthy(&l);
    }
}

#[test]
fn a_crash_copy_replays_its_notices_once_whatever_window_it_is_opened_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.redb");
    let copy = dir.path().join("copy.redb");
    let journal = |p: &std::path::Path| {
        let mut n = p.file_name().unwrap().to_os_string();
        n.push(".journal");
        p.with_file_name(n)
    };
    let clock = ManualClock::new(T0_MS);
    let l = Ledger::open_with(&path, options(&clock, Some(NOTICE_MS))).unwrap();
    // A first write starts the journal's epoch (a durable commit); the rest are journaled.
    l.credit(Credit::purchase("acme", 5, "seed")).unwrap();
    l.credit(Credit::grant("acme", 10, "at-once").expires_at_ms(T0_MS + DAY_MS))
        .unwrap();
    l.credit(Credit::grant("acme", 20, "swept").expires_at_ms(T0_MS + 5 * DAY_MS))
        .unwrap();
    clock.set_ms(T0_MS + 2 * DAY_MS);
    assert_eq!(sweep(&l).notices.len(), 1);
    let want = noticed(&l, "acme");
    assert_eq!(want.len(), 2);
    // A crash image: the file and its journal as they are while the ledger runs.
    std::fs::copy(&path, &copy).unwrap();
    std::fs::copy(journal(&path), journal(&copy)).unwrap();
    for window in [None, Some(NOTICE_MS), Some(MAX_GRANT_EXPIRING_NOTICE_MS)] {
        let c = dir.path().join("replayed.redb");
        let _ = std::fs::remove_file(journal(&c));
        std::fs::copy(&copy, &c).unwrap();
        std::fs::copy(journal(&copy), journal(&c)).unwrap();
        let r = Ledger::open_with(&c, options(&clock, window)).unwrap();
        assert_eq!(noticed(&r, "acme"), want, "window {window:?}");
        assert!(sweep(&r).notices.is_empty());
        assert_healthy(&r);
        drop(r);
        std::fs::remove_file(&c).unwrap();
    }
}

#[test]
fn sweeps_and_writes_racing_write_each_notice_exactly_once() {
    let clock = ManualClock::new(T0_MS);
    let l = Arc::new(Ledger::in_memory_with(options(&clock, Some(NOTICE_MS))).unwrap());
    let sweeper = Sweeper::start(Arc::clone(&l), SweeperOptions::default().batch(3)).unwrap();
    const THREADS: usize = 4;
    const GRANTS: usize = 30;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let l = Arc::clone(&l);
            let clock = clock.clone();
            s.spawn(move || {
                for i in 0..GRANTS {
                    // Some are credited inside their window, most before it. The main
                    // thread moves the clock on meanwhile: a thread descheduled between
                    // reading the clock and crediting can find its expiry already past,
                    // which the ledger rightly refuses; it then asks again with a fresh one.
                    loop {
                        let expires = clock.now_ms() + (i as u64 % 5 + 2) * DAY_MS;
                        let credit = Credit::grant(format!("ws-{t}"), 10, format!("g-{t}-{i}"))
                            .expires_at_ms(expires);
                        match l.credit(credit) {
                            Ok(_) => break,
                            Err(Error::InvalidInput(InvalidInput::ExpiryInPast { .. })) => {}
                            Err(e) => panic!("credit g-{t}-{i}: {e}"),
                        }
                    }
                    l.sweep_expired(2).unwrap();
                }
            });
        }
        for _ in 0..40 {
            clock.advance_ms(DAY_MS / 8);
            sweeper.wake();
            l.sweep_expired(5).unwrap();
        }
    });
    // Every notice is due by now (expiries are at most 6 days after the last credit).
    clock.advance_ms(3 * DAY_MS);
    assert!(sweeper.sweep_now(Duration::from_secs(60)));
    sweeper.stop().unwrap();
    for t in 0..THREADS {
        let mut got: Vec<String> = noticed(&l, &format!("ws-{t}"))
            .into_iter()
            .map(|n| n.0)
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..GRANTS).map(|i| format!("g-{t}-{i}")).collect();
        want.sort();
        assert_eq!(got, want, "ws-{t}: one notice per grant");
    }
    assert_healthy(&l);
}

#[test]
fn a_clock_far_ahead_or_behind_writes_no_notice_until_it_is_trusted() {
    let clock = ManualClock::new(T0_MS);
    let wall = ManualClock::new(T0_MS);
    let l =
        Ledger::in_memory_with(options(&clock, Some(NOTICE_MS)).wall_clock(wall.clone())).unwrap();
    let expires = T0_MS + 10 * DAY_MS;
    let due = expires - NOTICE_MS;
    l.credit(Credit::grant("acme", 10, "g").expires_at_ms(expires))
        .unwrap();
    l.credit(Credit::purchase("acme", 10, "p")).unwrap();
    l.start_generation(StartGeneration::new("late", "acme", "HD Video", 3).timeout_ms(60_000))
        .unwrap();
    // The notice is due by the wall clock, and a clock 2 h ahead of it is not trusted: the
    // sweep runs at the wall clock's time and refunds (refunds never wait for the clock), but
    // writes no notice.
    let hour = 60 * 60 * 1000;
    wall.set_ms(due + hour);
    clock.set_ms(due + 3 * hour);
    let r = sweep(&l);
    assert_eq!((r.refunds.len(), r.notices.len()), (1, 0), "{r:?}");
    assert_eq!(r.refunds[0].at_ms, due + hour);
    // A clock far behind the log: the sweep runs at the log's time, past the notice's, and
    // writes none either.
    clock.set_ms(T0_MS);
    let r = sweep(&l);
    assert!(r.notices.is_empty(), "{r:?}");
    assert!(notices(&l, "acme").is_empty());
    // Trusted again: the notice, stamped with the good clock.
    clock.set_ms(due + 2 * hour);
    wall.set_ms(due + 2 * hour);
    let r = sweep(&l);
    assert_eq!(r.notices.len(), 1);
    assert_eq!(r.notices[0].at_ms, due + 2 * hour);
    assert_healthy(&l);
}

/// The redb tables a test tampers with.
const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
const NOTICES: redb::TableDefinition<(u64, &str, &str), u64> =
    redb::TableDefinition::new("grant_notices");

fn schema_of(path: &std::path::Path) -> u8 {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    let v = {
        let meta = txn.open_table(META).unwrap();
        let v = meta.get("schema").unwrap().unwrap().value()[0];
        v
    };
    txn.abort().unwrap();
    v
}

#[test]
fn a_schema_3_file_gains_the_notice_index_with_its_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = Ledger::open_with(&path, options(&clock, None)).unwrap();
        l.credit(Credit::purchase("acme", 10, "p")).unwrap();
    }
    // Make it what a version 3 build wrote: no notice index, schema byte 3.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(NOTICES).unwrap());
        txn.open_table(META)
            .unwrap()
            .insert("schema", [3u8].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    {
        let l = Ledger::open_with(&path, options(&clock, Some(NOTICE_MS))).unwrap();
        // The first write records the current schema (from schema 6 on every record has a
        // field a version 3 build cannot read), which creates the notice index.
        l.credit(Credit::purchase("acme", 10, "p2")).unwrap();
        l.credit(Credit::grant("acme", 10, "no-expiry")).unwrap();
        l.sweep_expired(10).unwrap();
        assert_healthy(&l);
    }
    assert_eq!(schema_of(&path), 6);
    {
        let l = Ledger::open_with(&path, options(&clock, Some(NOTICE_MS))).unwrap();
        l.credit(Credit::grant("acme", 10, "monthly").expires_at_ms(T0_MS + 30 * DAY_MS))
            .unwrap();
        assert_healthy(&l);
    }
    assert_eq!(schema_of(&path), 6);
    clock.set_ms(T0_MS + 27 * DAY_MS);
    let l = Ledger::open_with(&path, options(&clock, None)).unwrap();
    assert_eq!(noticed(&l, "acme").len(), 1);
    assert_healthy(&l);
}

#[test]
fn verify_names_a_notice_index_that_disagrees_with_the_grants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    let expires = T0_MS + 30 * DAY_MS;
    {
        let l = Ledger::open_with(&path, options(&clock, Some(NOTICE_MS))).unwrap();
        l.credit(Credit::grant("acme", 10, "at-once").expires_at_ms(T0_MS + DAY_MS))
            .unwrap();
        l.credit(Credit::grant("acme", 10, "later").expires_at_ms(expires))
            .unwrap();
        assert_healthy(&l);
    }
    let tamper = |entry: (u64, &str, &str), value: u64| {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(NOTICES)
            .unwrap()
            .insert(entry, value)
            .unwrap();
        txn.commit().unwrap();
    };
    let found = || {
        let l = Ledger::open_with(&path, options(&clock, None).sweep_on_open(false)).unwrap();
        l.verify()
            .unwrap()
            .violations
            .into_iter()
            .map(|v| v.invariant)
            .collect::<Vec<_>>()
    };
    // A second notice scheduled for a grant that already has one.
    tamper((T0_MS + 1, "acme", "at-once"), T0_MS + DAY_MS);
    assert_eq!(found(), vec![Invariant::GrantNotice]);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(NOTICES)
        .unwrap()
        .remove((T0_MS + 1, "acme", "at-once"))
        .unwrap();
    txn.commit().unwrap();
    drop(db);
    assert_eq!(found(), vec![]);
    // An entry that names another expiry than its grant's.
    tamper((expires - NOTICE_MS, "acme", "later"), expires + 1);
    assert!(found().contains(&Invariant::GrantNotice));
}

#[test]
fn a_subscriber_hears_the_sweepers_notice_with_its_grant() {
    let clock = ManualClock::new(T0_MS);
    let l = Arc::new(Ledger::in_memory_with(options(&clock, Some(NOTICE_MS))).unwrap());
    let expires = T0_MS + 10 * DAY_MS;
    l.credit(Credit::grant("acme", 70, "trial").expires_at_ms(expires))
        .unwrap();
    let sub = l.subscribe().unwrap();
    let sweeper = Sweeper::start(Arc::clone(&l), SweeperOptions::default()).unwrap();
    clock.set_ms(expires - NOTICE_MS);
    assert!(sweeper.sweep_now(Duration::from_secs(60)));
    sweeper.stop().unwrap();
    // Delivered once the commit is durable, which sweep_now has waited for.
    match sub.try_recv() {
        Some(credit_ledger::FeedEvent::Entry(e)) => {
            assert_eq!(e.kind, TxnKind::GrantExpiring);
            assert_eq!(
                (e.allocations[0].grant_id.as_str(), e.allocations[0].credits),
                ("trial", 70)
            );
            assert_eq!(e.allocations[0].spendable_until_ms, Some(expires));
        }
        other => panic!("expected the notice, got {other:?}"),
    }
    assert!(sub.try_recv().is_none());
}

/// The whole notice index deleted (a careless tool, a half-restored backup): the notices it
/// held are owed and would never be written. The writable open refuses the file, naming the
/// table (it would otherwise create it empty), and a read-only open's `verify()` names the
/// loss; the balances still read.
#[test]
fn verify_names_the_notices_a_deleted_index_owed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = Ledger::open_with(&path, options(&clock, Some(NOTICE_MS))).unwrap();
        l.credit(Credit::grant("acme", 10, "later").expires_at_ms(T0_MS + 30 * DAY_MS))
            .unwrap();
        assert_healthy(&l);
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(NOTICES).unwrap());
        txn.commit().unwrap();
    }
    let refused = Ledger::open_with(&path, options(&clock, None))
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(&refused, Error::NotALedger { detail, .. } if detail.contains("`grant_notices`")),
        "{refused:?}"
    );
    let l = Ledger::open_read_only(&path).unwrap();
    let found: Vec<_> = l
        .verify()
        .unwrap()
        .violations
        .into_iter()
        .map(|v| v.invariant)
        .collect();
    assert!(found.contains(&Invariant::GrantNotice), "{found:?}");
    assert_eq!(l.balance("acme").unwrap().balance_credits, 10);
}

/// A notice written by the sweep of a batch says what the grant holds after the charges
/// earlier in that batch, which the grant table does not show until the batch ends (the
/// seeded model found the notice reporting the credits from before them).
#[test]
fn a_notice_in_the_batch_of_a_charge_counts_the_charge() {
    use credit_ledger::{Op, Outcome};
    let (l, clock) = ledger_with(Some(NOTICE_MS));
    let expires = T0_MS + 30 * DAY_MS;
    l.credit(Credit::grant("acme", 500, "monthly").expires_at_ms(expires))
        .unwrap();
    clock.set_ms(expires - NOTICE_MS + 1);
    let results = l.apply(&[
        Op::Start(StartGeneration::new("g1", "acme", "Quick Video", 12)),
        Op::Start(StartGeneration::new("g2", "acme", "Quick Video", 30)),
        Op::Sweep { limit: 10 },
    ]);
    let report = match &results[2] {
        Ok(Outcome::Sweep(r)) => r.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(report.notices.len(), 1, "{report:?}");
    // verify() names the wrong figure too ("says grant `monthly` holds 500 credits").
    assert_healthy(&l);
    assert_eq!(report.notices[0].expiring_credits, 500 - 12 - 30);
    assert_eq!(
        noticed(&l, "acme"),
        vec![("monthly".into(), 458, Some(expires))]
    );
}
