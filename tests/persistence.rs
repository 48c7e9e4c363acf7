//! Close and reopen: reads are identical, ids continue, time never goes backwards.

mod common;

use common::{all_history, fund, options, MINUTE_MS, T0_MS};
use credit_ledger::{
    Credit, Error, HistoryFilter, Ledger, ManualClock, RefundReason, StartGeneration, TimeWindow,
};

/// Everything a user can read, as text, for comparison across a restart.
fn everything(ledger: &Ledger) -> String {
    let mut out = String::new();
    for ws in ledger.workspaces(None, 1000).unwrap() {
        out += &format!("{ws:?}\n");
        for t in all_history(ledger, &ws.workspace, &HistoryFilter::all()) {
            out += &format!("{t:?}\n{:?}\n", ledger.transaction(t.id).unwrap());
        }
    }
    for g in ["g0", "g1", "g2", "g3"] {
        out += &format!(
            "{:?}\n",
            ledger.generation(g).map(|mut v| {
                v.overdue = false; // depends on the clock at read time
                v
            })
        );
    }
    out += &format!("{:?}\n", ledger.stats(TimeWindow::all()).unwrap());
    out += &format!("{:?}\n", ledger.totals().unwrap());
    out
}

#[test]
fn reads_survive_a_restart_and_ids_and_time_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.redb");
    let clock = ManualClock::new(T0_MS);
    let (before, last_id) = {
        let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
        fund(&ledger, "a", 100);
        fund(&ledger, "b", 50);
        for i in 0..4 {
            clock.advance_ms(MINUTE_MS);
            ledger
                .start_generation(StartGeneration::new(
                    format!("g{i}"),
                    "a",
                    "Quick Video",
                    12,
                ))
                .unwrap();
        }
        ledger.complete_generation("g0").unwrap();
        ledger
            .fail_generation("g1", RefundReason::InvalidInput, "bad prompt")
            .unwrap();
        let last = ledger
            .credit(Credit::grant("b", 5, "promo"))
            .unwrap()
            .txn_id;
        (everything(&ledger), last)
    };

    // The clock steps back across the restart, within the tolerance.
    clock.set_ms(T0_MS + 4 * MINUTE_MS - 30_000);
    let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
    assert_eq!(everything(&ledger), before);

    let next = ledger.credit(Credit::grant("b", 1, "promo-2")).unwrap();
    assert_eq!(next.txn_id, last_id + 1, "ids continue");
    assert_eq!(next.at_ms, T0_MS + 4 * MINUTE_MS, "time does not go back");
    let prev = ledger.transaction(last_id).unwrap();
    assert!(next.at_ms >= prev.at_ms);

    // Far back across a restart, with a generation overdue: the ledger opens, writes other
    // than refunds are refused until the clock is fixed, and the catch-up sweep refunds the
    // overdue generation anyway, stamped with the log's last time.
    drop(ledger);
    clock.set_ms(T0_MS + 400 * MINUTE_MS);
    {
        let ledger = Ledger::open_with(&path, options(&clock).sweep_on_open(false)).unwrap();
        ledger
            .start_generation(StartGeneration::new("g9", "b", "Image", 1).timeout_ms(60_000))
            .unwrap();
        clock.set_ms(T0_MS + 402 * MINUTE_MS);
        ledger.credit(Credit::grant("b", 1, "promo-2b")).unwrap();
    }
    clock.set_ms(T0_MS - 24 * 60 * MINUTE_MS);
    let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
    assert!(matches!(
        ledger.credit(Credit::grant("b", 1, "promo-3")),
        Err(Error::ClockRegressed { .. })
    ));
    let g9 = ledger.generation("g9").unwrap();
    let credit_ledger::GenerationState::Refunded {
        refunded_at_ms,
        refund_txn,
        ..
    } = g9.state
    else {
        panic!("the overdue generation was not refunded on open: {g9:?}");
    };
    assert_eq!(refunded_at_ms, T0_MS + 402 * MINUTE_MS);
    assert_eq!(
        ledger.transaction(refund_txn).unwrap().untrusted_clock_ms,
        Some(T0_MS - 24 * 60 * MINUTE_MS)
    );
    assert!(ledger.sweep_expired(10).unwrap().refunds.is_empty());
    // Every transaction since the grant is a refund of the catch-up sweep (g9 and the other
    // generations overdue by then), each with the note of what the clock read.
    let checked = ledger.verify().unwrap().checked.transactions;
    assert!(checked >= last_id + 4, "{checked}");
    for id in last_id + 4..=checked {
        let v = ledger.transaction(id).unwrap();
        assert_eq!(v.kind, credit_ledger::TxnKind::Refund, "#{id}");
        assert_eq!(
            v.untrusted_clock_ms,
            Some(T0_MS - 24 * 60 * MINUTE_MS),
            "#{id}"
        );
    }
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn the_file_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.redb");
    let first = Ledger::open(&path).unwrap();
    match Ledger::open(&path) {
        Err(e @ Error::AlreadyOpen { .. }) => {
            assert!(e.to_string().contains("open in another process"), "{e}");
        }
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
    drop(first);
    Ledger::open(&path).unwrap();
}

#[test]
fn an_empty_file_is_not_silently_a_new_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.redb");
    std::fs::write(&path, b"").unwrap();
    match Ledger::open(&path) {
        Err(Error::NotALedger { detail, .. }) => assert!(detail.contains("empty"), "{detail}"),
        other => panic!("expected NotALedger, got {other:?}"),
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "nothing written"
    );
}
