//! The generation lifecycle: charges, refunds, timeouts, replays.

mod common;

use common::{assert_healthy, fund, ledger, refunds, MINUTE_MS, T0_MS};
use credit_ledger::{
    Error, GenerationState, HistoryFilter, Ledger, ManualClock, Op, Outcome, PageRequest,
    RefundReason, StartGeneration, Status, TxnKind,
};

fn quick_video(id: &str) -> StartGeneration {
    StartGeneration::new(id, "ws", "Quick Video", 12)
}

#[test]
fn seed_example_refund_shows_in_history() {
    let (ledger, _clock) = ledger();
    fund(&ledger, "ws", 100);

    let charge = ledger.start_generation(quick_video("gen-1")).unwrap();
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 88);
    assert_eq!(
        (charge.balance_before_credits, charge.balance_after_credits),
        (100, 88)
    );
    let usage_page = ledger
        .history(
            "ws",
            &HistoryFilter::all().kinds([TxnKind::Usage]),
            &PageRequest::first(50),
        )
        .unwrap();
    assert_eq!(usage_page.entries.len(), 1);
    let usage = &usage_page.entries[0];
    assert_eq!(
        (usage.amount_credits, usage.status, usage.title.as_str()),
        (-12, Status::Pending, "Quick Video")
    );

    let refund = ledger
        .fail_generation("gen-1", RefundReason::ModelFailure, "model crashed")
        .unwrap();
    assert!(!refund.replay);
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);

    let page = ledger
        .history(
            "ws",
            &HistoryFilter::all().kinds([TxnKind::Refund]),
            &PageRequest::first(50),
        )
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.next_cursor, None);
    let r = &page.entries[0];
    assert_eq!(r.kind, TxnKind::Refund);
    assert_eq!(r.amount_credits, 12);
    assert_eq!(r.status, Status::Completed);
    assert_eq!(
        (r.balance_before_credits, r.balance_after_credits),
        (88, 100)
    );
    assert_eq!(r.reason, Some(RefundReason::ModelFailure));
    assert_eq!(r.message.as_deref(), Some("model crashed"));
    assert_eq!(r.refund_of, Some(charge.usage_txn));
    assert_eq!(r.title, "Quick Video");
    assert!(r.action.starts_with("Refunded 12 credits"), "{}", r.action);

    let usage = ledger.transaction(charge.usage_txn).unwrap();
    assert_eq!(usage.status, Status::Failed);
    assert_eq!(usage.refunded_by, Some(r.id));
    let failed = ledger
        .history(
            "ws",
            &HistoryFilter::all().statuses([Status::Failed]),
            &PageRequest::first(50),
        )
        .unwrap();
    assert_eq!(failed.entries.len(), 1);
    assert_eq!(failed.entries[0].id, charge.usage_txn);
    assert_healthy(&ledger);
}

#[test]
fn timeout_sweep_refunds_once_and_only_after_the_deadline() {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 100);
    ledger.start_generation(quick_video("slow")).unwrap();

    clock.set_ms(T0_MS + 149 * MINUTE_MS);
    let early = ledger.sweep_expired(100).unwrap();
    assert!(early.refunds.is_empty());
    assert_eq!(early.next_deadline_ms, Some(T0_MS + 150 * MINUTE_MS));
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 88);

    clock.set_ms(T0_MS + 160 * MINUTE_MS);
    let swept = ledger.sweep_expired(100).unwrap();
    assert_eq!(swept.refunds.len(), 1);
    assert_eq!(swept.refunds[0].reason, RefundReason::Timeout);
    assert_eq!(swept.refunds[0].amount_credits, 12);
    assert!(!swept.more_expired);
    assert_eq!(swept.next_deadline_ms, None);
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);

    let again = ledger.sweep_expired(100).unwrap();
    assert!(again.refunds.is_empty());
    assert_eq!(refunds(&ledger, "ws").len(), 1);
    assert_eq!(
        refunds(&ledger, "ws")[0].reason,
        Some(RefundReason::Timeout)
    );
    assert_healthy(&ledger);
}

#[test]
fn sweep_respects_its_limit_and_reports_what_is_left() {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 1000);
    for i in 0..25 {
        ledger
            .start_generation(quick_video(&format!("g{i}")).timeout_ms(60_000 + i))
            .unwrap();
    }
    clock.advance_ms(10 * MINUTE_MS);
    let first = ledger.sweep_expired(10).unwrap();
    assert_eq!(first.refunds.len(), 10);
    assert!(first.more_expired);
    // Earliest deadline first.
    assert_eq!(first.refunds[0].generation_id, "g0");
    let second = ledger.sweep_expired(10).unwrap();
    let third = ledger.sweep_expired(10).unwrap();
    assert_eq!((second.refunds.len(), third.refunds.len()), (10, 5));
    assert!(!third.more_expired);
    assert_eq!(refunds(&ledger, "ws").len(), 25);
    assert!(matches!(
        ledger.sweep_expired(0),
        Err(Error::InvalidInput(_))
    ));
    assert_healthy(&ledger);
}

#[test]
fn expired_while_closed_is_refunded_by_the_first_sweep_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let ledger = Ledger::open_with(&path, common::options(&clock)).unwrap();
        fund(&ledger, "ws", 100);
        ledger.start_generation(quick_video("offline")).unwrap();
    }
    clock.set_ms(T0_MS + 200 * MINUTE_MS);
    // The catch-up sweep runs when the ledger opens.
    let ledger = Ledger::open_with(&path, common::options(&clock)).unwrap();
    let gen = ledger.generation("offline").unwrap();
    assert!(matches!(
        gen.state,
        GenerationState::Refunded {
            reason: RefundReason::Timeout,
            ..
        }
    ));
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);
    assert!(ledger.sweep_expired(100).unwrap().refunds.is_empty());

    // Without the catch-up sweep, the first explicit sweep does it.
    let path2 = dir.path().join("ledger2.redb");
    clock.set_ms(T0_MS);
    {
        let ledger = Ledger::open_with(&path2, common::options(&clock)).unwrap();
        fund(&ledger, "ws", 100);
        ledger.start_generation(quick_video("offline")).unwrap();
    }
    clock.set_ms(T0_MS + 200 * MINUTE_MS);
    let ledger = Ledger::open_with(&path2, common::options(&clock).sweep_on_open(false)).unwrap();
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 88);
    let swept = ledger.sweep_expired(100).unwrap();
    assert_eq!(swept.refunds.len(), 1);
    assert_eq!(swept.refunds[0].reason, RefundReason::Timeout);
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);
    assert_healthy(&ledger);
}

#[test]
fn lazy_expiry_complete_after_deadline_refunds_with_timeout() {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 100);
    let charge = ledger.start_generation(quick_video("late")).unwrap();
    clock.set_ms(T0_MS + 151 * MINUTE_MS);
    let err = ledger.complete_generation("late").unwrap_err();
    let Error::GenerationRefunded {
        reason, refund_txn, ..
    } = err.clone()
    else {
        panic!("expected GenerationRefunded, got {err:?}");
    };
    assert_eq!(reason, RefundReason::Timeout);
    assert!(err.to_string().contains("Processing Timeout"), "{err}");
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);
    let refund = ledger.transaction(refund_txn).unwrap();
    assert_eq!(refund.refund_of, Some(charge.usage_txn));
    // No sweep has run, and there is nothing left for one.
    assert!(ledger.sweep_expired(100).unwrap().refunds.is_empty());
    // This call wrote the refund, and the error hands over its receipt.
    let Error::GenerationRefunded {
        refunded_now: Some(receipt),
        ..
    } = &err
    else {
        panic!("the late complete did not say it wrote the refund: {err:?}");
    };
    assert_eq!(
        (receipt.refund_txn, receipt.amount_credits, receipt.replay),
        (refund_txn, 12, false)
    );
    assert_eq!(receipt.balance_after_credits, 100);
    assert!(err.to_string().contains("by this call"), "{err}");
    // The same refund again, without a second one, and this time not written by the call.
    let again = ledger.complete_generation("late").unwrap_err();
    assert!(
        matches!(&again, Error::GenerationRefunded { refund_txn: t, refunded_now: None, .. } if *t == refund_txn),
        "{again:?}"
    );
    assert!(!again.to_string().contains("by this call"), "{again}");
    assert_eq!(refunds(&ledger, "ws").len(), 1);
    assert_healthy(&ledger);
}

#[test]
fn a_repeated_start_after_the_deadline_refunds_it_and_says_so() {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 100);
    let charge = ledger.start_generation(quick_video("late")).unwrap();
    // Before the deadline, a repeated start is a replay.
    clock.set_ms(T0_MS + 149 * MINUTE_MS);
    assert!(ledger.start_generation(quick_video("late")).unwrap().replay);
    clock.set_ms(T0_MS + 150 * MINUTE_MS); // exactly at the deadline
    let err = ledger.start_generation(quick_video("late")).unwrap_err();
    let Error::GenerationRefunded {
        reason,
        refund_txn,
        refunded_now: Some(receipt),
        ..
    } = &err
    else {
        panic!("expected a lazy refund, got {err:?}");
    };
    assert_eq!(*reason, RefundReason::Timeout);
    assert_eq!(
        (receipt.refund_txn, receipt.usage_txn),
        (*refund_txn, charge.usage_txn)
    );
    assert!(
        receipt.message.contains("start repeated"),
        "{}",
        receipt.message
    );
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);
    assert!(matches!(
        ledger.generation("late").unwrap().state,
        GenerationState::Refunded {
            reason: RefundReason::Timeout,
            ..
        }
    ));
    // Nothing left for a sweep; a third start replays the charge (the refund stands).
    assert!(ledger.sweep_expired(100).unwrap().refunds.is_empty());
    assert!(ledger.start_generation(quick_video("late")).unwrap().replay);
    assert_eq!(refunds(&ledger, "ws").len(), 1);
    assert_healthy(&ledger);
}

#[test]
fn lazy_expiry_fail_after_deadline_refunds_with_timeout() {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 100);
    ledger.start_generation(quick_video("late")).unwrap();
    clock.set_ms(T0_MS + 150 * MINUTE_MS); // exactly at the deadline
    let r = ledger
        .fail_generation("late", RefundReason::ApiFailure, "502 from provider")
        .unwrap();
    assert_eq!(r.reason, RefundReason::Timeout);
    assert!(r.message.contains("502 from provider"));
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);
    assert_healthy(&ledger);
}

/// Runs `steps` on a fresh generation, returns (refund count, balance).
fn exactly_once(steps: &[&str]) -> (usize, u64) {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 100);
    ledger.start_generation(quick_video("g")).unwrap();
    for step in steps {
        let _ = match *step {
            "fail" => ledger
                .fail_generation("g", RefundReason::SystemError, "boom")
                .map(drop),
            "complete" => ledger.complete_generation("g").map(drop),
            "sweep" => {
                clock.set_ms(T0_MS + 151 * MINUTE_MS);
                ledger.sweep_expired(100).map(drop)
            }
            other => panic!("unknown step {other}"),
        };
    }
    assert_healthy(&ledger);
    (
        refunds(&ledger, "ws").len(),
        ledger.balance("ws").unwrap().balance_credits,
    )
}

#[test]
fn exactly_once_across_every_pair_of_terminal_calls() {
    assert_eq!(exactly_once(&["fail", "fail"]), (1, 100));
    assert_eq!(exactly_once(&["fail", "sweep"]), (1, 100));
    assert_eq!(exactly_once(&["sweep", "sweep"]), (1, 100));
    assert_eq!(exactly_once(&["complete", "fail"]), (0, 88));
    assert_eq!(exactly_once(&["fail", "complete"]), (1, 100));
    assert_eq!(exactly_once(&["complete", "sweep"]), (0, 88));
    assert_eq!(exactly_once(&["sweep", "complete"]), (1, 100));
}

#[test]
fn contradicting_calls_name_the_state() {
    let (ledger, _clock) = ledger();
    fund(&ledger, "ws", 100);
    ledger.start_generation(quick_video("ok")).unwrap();
    let done = ledger.complete_generation("ok").unwrap();
    assert!(!done.replay);
    assert!(ledger.complete_generation("ok").unwrap().replay);
    let err = ledger
        .fail_generation("ok", RefundReason::ModelFailure, "x")
        .unwrap_err();
    assert!(matches!(err, Error::GenerationSucceeded { .. }), "{err:?}");
    assert!(err.to_string().contains("completed successfully"));

    ledger.start_generation(quick_video("bad")).unwrap();
    let first = ledger
        .fail_generation("bad", RefundReason::InvalidInput, "prompt too long")
        .unwrap();
    let replay = ledger
        .fail_generation("bad", RefundReason::ModelFailure, "other text")
        .unwrap();
    assert!(replay.replay);
    assert_eq!(replay.refund_txn, first.refund_txn);
    assert_eq!(replay.reason, RefundReason::InvalidInput);
    let err = ledger.complete_generation("bad").unwrap_err();
    assert!(matches!(
        err,
        Error::GenerationRefunded {
            reason: RefundReason::InvalidInput,
            ..
        }
    ));
    assert_healthy(&ledger);
}

#[test]
fn a_thousand_mixed_replays_leave_one_refund() {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 100);
    let charge = ledger.start_generation(quick_video("g")).unwrap();
    let first = ledger
        .fail_generation("g", RefundReason::ServiceUnavailable, "503")
        .unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..1000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        match state % 5 {
            0 => {
                let r = ledger
                    .fail_generation("g", RefundReason::ModelFailure, "again")
                    .unwrap();
                assert!(r.replay && r.refund_txn == first.refund_txn);
            }
            1 => assert!(matches!(
                ledger.complete_generation("g"),
                Err(Error::GenerationRefunded { .. })
            )),
            2 => {
                clock.advance_ms(MINUTE_MS);
                ledger.sweep_expired(1000).unwrap();
            }
            3 => {
                let c = ledger.start_generation(quick_video("g")).unwrap();
                assert!(c.replay && c.usage_txn == charge.usage_txn);
            }
            _ => {
                let batch = ledger.apply(&[
                    Op::Fail {
                        generation_id: "g".into(),
                        reason: RefundReason::SystemError,
                        message: format!("batch {i}"),
                    },
                    Op::Sweep { limit: 10 },
                ]);
                assert!(matches!(&batch[0], Ok(Outcome::Fail(r)) if r.replay));
            }
        }
    }
    assert_eq!(refunds(&ledger, "ws").len(), 1);
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 100);
    assert_healthy(&ledger);
}

#[test]
fn idempotent_start_charges_once_and_conflicts_name_the_field() {
    let (ledger, _clock) = ledger();
    fund(&ledger, "ws", 100);
    fund(&ledger, "other", 100);
    let first = ledger.start_generation(quick_video("g")).unwrap();
    let again = ledger.start_generation(quick_video("g")).unwrap();
    assert!(again.replay);
    assert_eq!(again.usage_txn, first.usage_txn);
    assert_eq!(again.balance_after_credits, 88);
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 88);

    let cases = [
        (StartGeneration::new("g", "ws", "Quick Video", 13), "cost"),
        (StartGeneration::new("g", "ws", "Slow Video", 12), "feature"),
        (
            StartGeneration::new("g", "other", "Quick Video", 12),
            "workspace",
        ),
        (quick_video("g").timeout_ms(5 * MINUTE_MS), "timeout_ms"),
    ];
    for (req, field) in cases {
        match ledger.start_generation(req) {
            Err(Error::Conflict {
                field: f, entity, ..
            }) => {
                assert_eq!((f, entity), (field, "generation"));
            }
            other => panic!("expected a conflict on {field}, got {other:?}"),
        }
    }
    let err = ledger
        .start_generation(StartGeneration::new("g", "ws", "Quick Video", 13))
        .unwrap_err();
    assert!(err.to_string().contains("cost = 12, not 13"), "{err}");
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 88);
    assert_eq!(ledger.balance("other").unwrap().balance_credits, 100);
    assert_healthy(&ledger);
}

#[test]
fn a_batch_applies_each_operation_on_its_own_merits() {
    let (ledger, _clock) = ledger();
    fund(&ledger, "ws", 20);
    let results = ledger.apply(&[
        Op::Start(quick_video("a")),
        Op::Start(quick_video("b")), // 8 left: insufficient
        Op::Complete {
            generation_id: "a".into(),
        },
        Op::Start(StartGeneration::new("c", "ws", "Image", 8)),
        Op::Fail {
            generation_id: "c".into(),
            reason: RefundReason::ModelFailure,
            message: "x".into(),
        },
        Op::Complete {
            generation_id: "nope".into(),
        },
    ]);
    assert!(results[0].is_ok());
    assert!(matches!(
        results[1],
        Err(Error::InsufficientCredits {
            balance_credits: 8,
            required_credits: 12,
            ..
        })
    ));
    assert!(results[2].is_ok() && results[3].is_ok() && results[4].is_ok());
    assert!(matches!(results[5], Err(Error::UnknownGeneration { .. })));
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 8);
    assert!(matches!(
        ledger.generation("b"),
        Err(Error::UnknownGeneration { .. })
    ));
    assert_healthy(&ledger);
}

#[test]
fn stats_count_refunds_by_reason_and_feature() {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 1000);
    for (i, reason) in [
        RefundReason::ModelFailure,
        RefundReason::ModelFailure,
        RefundReason::ApiFailure,
    ]
    .into_iter()
    .enumerate()
    {
        ledger
            .start_generation(quick_video(&format!("f{i}")))
            .unwrap();
        ledger
            .fail_generation(&format!("f{i}"), reason, "x")
            .unwrap();
    }
    ledger
        .start_generation(StartGeneration::new("img", "ws", "Image", 2))
        .unwrap();
    ledger.complete_generation("img").unwrap();
    ledger
        .start_generation(StartGeneration::new("t", "ws", "Image", 2).timeout_ms(60_000))
        .unwrap();
    clock.advance_ms(2 * MINUTE_MS);
    ledger.sweep_expired(10).unwrap();

    let s = ledger.stats(credit_ledger::TimeWindow::all()).unwrap();
    assert_eq!((s.started, s.refunds, s.refunded_credits), (5, 4, 38));
    assert_eq!(s.by_reason["model-failure"].refunds, 2);
    assert_eq!(s.by_reason["api-failure"].refunds, 1);
    assert_eq!(s.by_reason["timeout"].refunded_credits, 2);
    assert_eq!(s.by_feature["Quick Video"].refunds, 3);
    assert_eq!(s.by_feature["Image"].started, 2);
    assert!((s.failure_rate - 0.8).abs() < 1e-9);

    // A window that holds only the sweep.
    let late = ledger
        .stats(credit_ledger::TimeWindow::between(
            T0_MS + MINUTE_MS,
            u64::MAX,
        ))
        .unwrap();
    assert_eq!((late.started, late.refunds), (0, 1));
    assert!(ledger
        .stats(credit_ledger::TimeWindow::between(10, 5))
        .is_err());
}

/// A ledger on a file whose log reached `T0_MS + 2 h`, with generations in every state a
/// refund can come from, and the clock then set back to `T0_MS`: two hours behind the log,
/// far beyond the one-minute tolerance.
fn ledger_with_clock_behind(dir: &std::path::Path) -> (Ledger, ManualClock) {
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(dir.join("l.redb"), common::options(&clock)).unwrap();
    fund(&ledger, "ws", 1000);
    for (id, timeout_min) in [("fail-me", 150), ("late-complete", 30), ("swept", 60)] {
        ledger
            .start_generation(quick_video(id).timeout_ms(timeout_min * MINUTE_MS))
            .unwrap();
    }
    ledger
        .start_generation(quick_video("late-start").timeout_ms(30 * MINUTE_MS))
        .unwrap();
    ledger.start_generation(quick_video("runs-on")).unwrap();
    clock.set_ms(T0_MS + 120 * MINUTE_MS);
    fund(&ledger, "ws", 1); // the log's last time is now T0 + 2 h
    clock.set_ms(T0_MS);
    (ledger, clock)
}

#[test]
fn refunds_are_never_refused_because_of_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _clock) = ledger_with_clock_behind(dir.path());
    let log_ms = T0_MS + 120 * MINUTE_MS;
    let balance = ledger.balance("ws").unwrap().balance_credits;

    // Writes that are not refunds are refused, and say so.
    let err = ledger
        .credit(credit_ledger::Credit::purchase("ws", 5, "k"))
        .unwrap_err();
    assert!(matches!(err, Error::ClockRegressed { behind_ms, .. } if behind_ms == 120 * MINUTE_MS));
    assert!(
        err.to_string().contains("refunds are still written"),
        "{err}"
    );
    assert!(matches!(
        ledger.start_generation(quick_video("new")),
        Err(Error::ClockRegressed { .. })
    ));
    // A completion is not a refund either (and "runs-on" has not reached its deadline).
    assert!(matches!(
        ledger.complete_generation("runs-on"),
        Err(Error::ClockRegressed { .. })
    ));

    // A failure report.
    let r = ledger
        .fail_generation("fail-me", RefundReason::ModelFailure, "model crashed")
        .unwrap();
    assert_eq!(
        (r.at_ms, r.reason, r.replay),
        (log_ms, RefundReason::ModelFailure, false)
    );
    // Lazy expiry by a late complete, and by a repeated start.
    let Err(Error::GenerationRefunded {
        refunded_now: Some(late),
        ..
    }) = ledger.complete_generation("late-complete")
    else {
        panic!("the late complete was not refunded");
    };
    assert_eq!(late.at_ms, log_ms);
    let Err(Error::GenerationRefunded {
        refunded_now: Some(restart),
        ..
    }) = ledger.start_generation(quick_video("late-start").timeout_ms(30 * MINUTE_MS))
    else {
        panic!("the repeated start was not refunded");
    };
    // The sweep.
    let swept = ledger.sweep_expired(100).unwrap();
    assert_eq!(
        swept
            .refunds
            .iter()
            .map(|r| r.generation_id.as_str())
            .collect::<Vec<_>>(),
        ["swept"]
    );
    assert_eq!(
        ledger.balance("ws").unwrap().balance_credits,
        balance + 4 * 12,
        "four refunds in full"
    );

    // Each refund is stamped with the log's time and says what the clock read.
    let refund_ids = [
        r.refund_txn,
        late.refund_txn,
        restart.refund_txn,
        swept.refunds[0].refund_txn,
    ];
    for id in refund_ids {
        let v = ledger.transaction(id).unwrap();
        assert_eq!(
            (v.at_ms, v.untrusted_clock_ms),
            (log_ms, Some(T0_MS)),
            "refund #{id}"
        );
    }
    let rows = refunds(&ledger, "ws");
    assert!(
        rows.iter().all(|v| v.untrusted_clock_ms == Some(T0_MS)),
        "{rows:#?}"
    );
    assert_healthy(&ledger);

    // The refunds are durable: they were committed to the file, not to the journal.
    drop(ledger);
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(dir.path().join("l.redb"), common::options(&clock)).unwrap();
    for id in refund_ids {
        assert_eq!(
            ledger.transaction(id).unwrap().untrusted_clock_ms,
            Some(T0_MS)
        );
    }
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, balance + 48);
    assert_healthy(&ledger);
}

#[test]
fn a_ledger_whose_log_is_in_the_future_has_a_way_out() {
    // A mistyped year, written with the ahead guard off: the log is a year ahead.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let year_ms = 365 * 24 * 60 * MINUTE_MS;
    let typo = ManualClock::new(T0_MS + year_ms);
    {
        let ledger =
            Ledger::open_with(&path, common::options(&typo).max_clock_ahead_ms(None)).unwrap();
        fund(&ledger, "ws", 100);
        ledger.start_generation(quick_video("g")).unwrap();
    }
    // With the right clock, writes other than refunds are refused with what to do...
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(&path, common::options(&clock)).unwrap();
    let err = ledger
        .credit(credit_ledger::Credit::purchase("ws", 5, "k"))
        .unwrap_err();
    assert!(err.to_string().contains("max_clock_regression_ms"), "{err}");
    // ...and refunds keep working.
    let r = ledger
        .fail_generation("g", RefundReason::SystemError, "oom")
        .unwrap();
    assert_eq!(r.at_ms, T0_MS + year_ms);
    drop(ledger);
    // The way out: a tolerance that covers the gap stamps new writes with the log's time.
    let ledger = Ledger::open_with(
        &path,
        common::options(&clock).max_clock_regression_ms(year_ms + MINUTE_MS),
    )
    .unwrap();
    let receipt = ledger
        .credit(credit_ledger::Credit::purchase("ws", 5, "k"))
        .unwrap();
    assert_eq!(receipt.at_ms, T0_MS + year_ms);
    assert_healthy(&ledger);
}

#[test]
fn a_clock_far_ahead_of_the_wall_clock_writes_only_refunds() {
    let wall = ManualClock::new(T0_MS);
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::in_memory_with(common::options(&clock).wall_clock(wall.clone())).unwrap();
    fund(&ledger, "ws", 100);
    ledger.start_generation(quick_video("g")).unwrap();
    ledger.start_generation(quick_video("h")).unwrap();
    // Within the tolerance (one hour by default), the clock is used as it is.
    clock.set_ms(T0_MS + 60 * MINUTE_MS);
    assert_eq!(
        ledger
            .credit(credit_ledger::Credit::purchase("ws", 1, "a"))
            .unwrap()
            .at_ms,
        T0_MS + 60 * MINUTE_MS
    );
    // A year ahead: a typo. Nothing but refunds is written, and the log's time stays put.
    clock.set_ms(T0_MS + 365 * 24 * 60 * MINUTE_MS);
    let err = ledger
        .credit(credit_ledger::Credit::purchase("ws", 1, "b"))
        .unwrap_err();
    assert!(
        matches!(err, Error::ClockAhead { wall_ms, .. } if wall_ms == T0_MS),
        "{err:?}"
    );
    assert_eq!(err.category(), credit_ledger::ErrorCategory::Invalid);
    assert!(matches!(
        ledger.start_generation(quick_video("new")),
        Err(Error::ClockAhead { .. })
    ));
    assert!(matches!(
        ledger.complete_generation("h"),
        Err(Error::ClockAhead { .. })
    ));
    let r = ledger
        .fail_generation("g", RefundReason::ApiFailure, "502")
        .unwrap();
    // Stamped at the log's last time (later than the wall clock here), not a year ahead; and
    // not refunded as Timeout, although the untrusted clock is far past the deadline.
    assert_eq!(
        (r.at_ms, r.reason),
        (T0_MS + 60 * MINUTE_MS, RefundReason::ApiFailure)
    );
    assert_eq!(
        ledger.transaction(r.refund_txn).unwrap().untrusted_clock_ms,
        Some(T0_MS + 365 * 24 * 60 * MINUTE_MS)
    );
    assert!(
        ledger.sweep_expired(100).unwrap().refunds.is_empty(),
        "nothing is due by the wall clock"
    );
    // Back to the right time: writes go on.
    wall.set_ms(T0_MS + 61 * MINUTE_MS);
    clock.set_ms(T0_MS + 61 * MINUTE_MS);
    ledger.complete_generation("h").unwrap();
    assert_healthy(&ledger);
}
