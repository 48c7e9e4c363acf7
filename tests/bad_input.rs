//! Bad input: one test per class. Each gets a typed error, the balances stay as they were, and
//! `verify()` is still clean.

mod common;

use common::{assert_healthy, fund, ledger, MINUTE_MS, T0_MS};
use credit_ledger::limits::{MAX_AMOUNT_CREDITS, MAX_ID_BYTES, MAX_MESSAGE_BYTES};
use credit_ledger::{
    Adjust, Credit, Error, InvalidInput, Ledger, ManualClock, RefundReason, StartGeneration,
};

/// Balances and transaction count, to show that nothing changed.
fn snapshot(ledger: &Ledger) -> (u128, u64) {
    let t = ledger.totals().unwrap();
    let last = ledger.verify().unwrap().checked.transactions;
    (t.balance_credits, last)
}

fn setup() -> (Ledger, ManualClock) {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 100);
    ledger
        .start_generation(StartGeneration::new("running", "ws", "Quick Video", 12))
        .unwrap();
    (ledger, clock)
}

fn assert_unchanged(ledger: &Ledger, before: (u128, u64)) {
    assert_eq!(snapshot(ledger), before);
    assert_healthy(ledger);
}

#[test]
fn empty_ids_are_refused() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    for r in [
        ledger.credit(Credit::purchase("", 5, "k")).map(drop),
        ledger.credit(Credit::purchase("ws", 5, "")).map(drop),
        ledger
            .start_generation(StartGeneration::new("", "ws", "Quick Video", 1))
            .map(drop),
        ledger
            .start_generation(StartGeneration::new("g", "ws", "", 1))
            .map(drop),
        ledger.complete_generation("").map(drop),
    ] {
        assert!(
            matches!(r, Err(Error::InvalidInput(InvalidInput::Empty { .. }))),
            "{r:?}"
        );
    }
    assert_unchanged(&ledger, before);
}

#[test]
fn oversized_ids_are_refused() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    let long = "x".repeat(MAX_ID_BYTES + 1);
    let fits = "x".repeat(MAX_ID_BYTES);
    for r in [
        ledger.credit(Credit::purchase(&long, 5, "k")).map(drop),
        ledger.credit(Credit::purchase("ws", 5, &long)).map(drop),
        ledger
            .start_generation(StartGeneration::new(&long, "ws", "Quick Video", 1))
            .map(drop),
        ledger
            .fail_generation(&long, RefundReason::ModelFailure, "")
            .map(drop),
    ] {
        let Err(Error::InvalidInput(InvalidInput::TooLong { len, max, .. })) = r else {
            panic!("expected TooLong, got {r:?}");
        };
        assert_eq!((len, max), (MAX_ID_BYTES + 1, MAX_ID_BYTES));
    }
    assert_unchanged(&ledger, before);
    // The limit itself is fine.
    ledger.credit(Credit::purchase(&fits, 5, &fits)).unwrap();
}

#[test]
fn control_characters_in_ids_are_refused() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    for bad in ["ws\n", "a\0b", "\u{1b}[31m", "tab\there"] {
        let r = ledger.credit(Credit::purchase(bad, 5, "k"));
        assert!(
            matches!(
                r,
                Err(Error::InvalidInput(InvalidInput::ControlCharacter {
                    field: "workspace"
                }))
            ),
            "{r:?}"
        );
    }
    let r = ledger.credit(Credit::purchase("ws", 5, "k").memo("line\nbreak"));
    assert!(matches!(
        r,
        Err(Error::InvalidInput(InvalidInput::ControlCharacter {
            field: "memo"
        }))
    ));
    assert_unchanged(&ledger, before);
}

#[test]
fn zero_amounts_are_refused() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    let zero = |r: Result<(), Error>| {
        assert!(
            matches!(r, Err(Error::InvalidInput(InvalidInput::ZeroAmount { .. }))),
            "{r:?}"
        )
    };
    zero(ledger.credit(Credit::purchase("ws", 0, "k")).map(drop));
    zero(ledger.adjust(Adjust::new("ws", 0, "k", "fix")).map(drop));
    zero(
        ledger
            .start_generation(StartGeneration::new("g", "ws", "Quick Video", 0))
            .map(drop),
    );
    assert_unchanged(&ledger, before);
}

#[test]
fn amounts_that_overflow_are_refused() {
    let (ledger, _c) = setup();
    // Above the single-amount limit.
    let r = ledger.credit(Credit::purchase("ws", MAX_AMOUNT_CREDITS + 1, "big"));
    assert!(matches!(
        r,
        Err(Error::InvalidInput(InvalidInput::AmountTooLarge { .. }))
    ));
    let r = ledger.adjust(Adjust::new("ws", i64::MIN, "min", "fix"));
    assert!(matches!(
        r,
        Err(Error::InvalidInput(InvalidInput::AmountTooLarge { .. }))
    ));
    // Within the limit, but the balance would pass u64::MAX.
    ledger
        .credit(Credit::purchase("rich", MAX_AMOUNT_CREDITS, "m1"))
        .unwrap();
    ledger
        .credit(Credit::purchase("rich", MAX_AMOUNT_CREDITS, "m2"))
        .unwrap();
    assert_eq!(
        ledger.balance("rich").unwrap().balance_credits,
        u64::MAX - 1
    );
    let before = snapshot(&ledger);
    let r = ledger.credit(Credit::purchase("rich", 2, "m3"));
    assert!(
        matches!(
            r,
            Err(Error::Overflow {
                what: "the balance",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(r.unwrap_err().to_string().contains("overflow"));
    assert_unchanged(&ledger, before);
}

#[test]
fn unknown_workspaces_and_generations_are_refused() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    assert!(matches!(
        ledger.start_generation(StartGeneration::new("g", "nobody", "Quick Video", 1)),
        Err(Error::UnknownWorkspace { .. })
    ));
    assert!(matches!(
        ledger.adjust(Adjust::new("nobody", 5, "k", "fix")),
        Err(Error::UnknownWorkspace { .. })
    ));
    assert!(matches!(
        ledger.balance("nobody"),
        Err(Error::UnknownWorkspace { .. })
    ));
    assert!(matches!(
        ledger.complete_generation("ghost"),
        Err(Error::UnknownGeneration { .. })
    ));
    assert!(matches!(
        ledger.fail_generation("ghost", RefundReason::SystemError, "x"),
        Err(Error::UnknownGeneration { .. })
    ));
    assert!(matches!(
        ledger.transaction(9999),
        Err(Error::UnknownTransaction { txn_id: 9999 })
    ));
    assert_unchanged(&ledger, before);
}

#[test]
fn insufficient_credits_are_refused() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    let r = ledger.start_generation(StartGeneration::new("g", "ws", "Long Video", 89));
    let Err(Error::InsufficientCredits {
        balance_credits,
        required_credits,
        ..
    }) = r
    else {
        panic!("{r:?}")
    };
    assert_eq!((balance_credits, required_credits), (88, 89));
    assert!(matches!(
        ledger.adjust(Adjust::new("ws", -89, "k", "chargeback")),
        Err(Error::InsufficientCredits { .. })
    ));
    assert_unchanged(&ledger, before);
    // The refused id is still free to use.
    ledger
        .start_generation(StartGeneration::new("g", "ws", "Long Video", 88))
        .unwrap();
}

#[test]
fn unknown_and_reserved_reasons_are_refused() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    let r = "melted".parse::<RefundReason>();
    assert!(matches!(
        r,
        Err(Error::InvalidInput(InvalidInput::UnknownName {
            field: "reason",
            ..
        }))
    ));
    assert_eq!(
        "service-unavailable".parse::<RefundReason>().unwrap(),
        RefundReason::ServiceUnavailable
    );
    // Timeout is the ledger's to assign.
    assert!(matches!(
        ledger.fail_generation("running", RefundReason::Timeout, "x"),
        Err(Error::InvalidInput(InvalidInput::ReservedReason))
    ));
    assert_unchanged(&ledger, before);
}

#[test]
fn a_clock_that_goes_backwards_is_refused_beyond_the_tolerance() {
    let (ledger, clock) = setup();
    let before = snapshot(&ledger);
    clock.set_ms(T0_MS - 60 * MINUTE_MS);
    let r = ledger.credit(Credit::purchase("ws", 5, "k"));
    let Err(Error::ClockRegressed {
        behind_ms, last_ms, ..
    }) = r
    else {
        panic!("{r:?}")
    };
    assert_eq!((behind_ms, last_ms), (60 * MINUTE_MS, T0_MS));
    assert_unchanged(&ledger, before);

    // A small step back is absorbed: the write is stamped with the last committed time.
    clock.set_ms(T0_MS - 1_000);
    let r = ledger.credit(Credit::purchase("ws", 5, "k")).unwrap();
    assert_eq!(r.at_ms, T0_MS);
    assert_healthy(&ledger);
}

#[test]
fn other_limits_are_enforced() {
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    assert!(matches!(
        ledger.start_generation(StartGeneration::new("g", "ws", "Quick Video", 1).timeout_ms(10)),
        Err(Error::InvalidInput(InvalidInput::TimeoutOutOfRange { .. }))
    ));
    assert!(matches!(
        ledger.adjust(Adjust::new("ws", 5, "k", "")),
        Err(Error::InvalidInput(InvalidInput::Empty {
            field: "memo",
            ..
        }))
    ));
    let too_many: Vec<_> = (0..credit_ledger::limits::MAX_BATCH_OPS + 1)
        .map(|_| credit_ledger::Op::Sweep { limit: 1 })
        .collect();
    assert!(ledger.apply(&too_many).iter().all(|r| matches!(
        r,
        Err(Error::InvalidInput(InvalidInput::LimitOutOfRange { .. }))
    )));
    assert_unchanged(&ledger, before);

    // A long message is kept, cut at a char boundary and marked.
    let long = "é".repeat(MAX_MESSAGE_BYTES);
    let r = ledger
        .fail_generation("running", RefundReason::SystemError, &long)
        .unwrap();
    assert!(r.message.len() <= MAX_MESSAGE_BYTES && long.starts_with(&r.message));
    assert!(ledger.transaction(r.refund_txn).unwrap().message_truncated);
}

#[test]
fn reused_credit_keys_replay_or_conflict() {
    let (ledger, _c) = setup();
    let first = ledger
        .credit(Credit::purchase("ws", 10, "order-7").memo("pack"))
        .unwrap();
    let again = ledger
        .credit(Credit::purchase("ws", 10, "order-7").memo("pack"))
        .unwrap();
    assert!(again.replay && again.txn_id == first.txn_id);
    let before = snapshot(&ledger);
    for (req, field) in [
        (Credit::purchase("ws", 11, "order-7").memo("pack"), "amount"),
        (Credit::grant("ws", 10, "order-7").memo("pack"), "kind"),
        (
            Credit::purchase("ws2", 10, "order-7").memo("pack"),
            "workspace",
        ),
        (Credit::purchase("ws", 10, "order-7"), "memo"),
    ] {
        match ledger.credit(req) {
            Err(Error::Conflict { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected conflict on {field}: {other:?}"),
        }
    }
    assert!(matches!(
        ledger.adjust(Adjust::new("ws", 10, "order-7", "pack")),
        Err(Error::Conflict { field: "kind", .. })
    ));
    assert_unchanged(&ledger, before);
}

#[test]
fn a_credit_that_would_leave_no_room_for_refunds_is_refused() {
    let (ledger, _c) = ledger();
    ledger
        .credit(Credit::purchase("rich", MAX_AMOUNT_CREDITS, "m1"))
        .unwrap();
    ledger
        .start_generation(StartGeneration::new("g", "rich", "Quick Video", 10))
        .unwrap();
    ledger
        .credit(Credit::purchase("rich", MAX_AMOUNT_CREDITS, "m2"))
        .unwrap();
    assert_eq!(ledger.balance("rich").unwrap().held_credits, 10);
    // u64::MAX - 11 now; 2 more would still fit the balance, but not the refund of 10.
    let before = snapshot(&ledger);
    let r = ledger.credit(Credit::purchase("rich", 2, "m3"));
    assert!(matches!(r, Err(Error::Overflow { .. })), "{r:?}");
    assert_unchanged(&ledger, before);
    let refund = ledger
        .fail_generation("g", RefundReason::SystemError, "x")
        .unwrap();
    assert_eq!(refund.balance_after_credits, u64::MAX - 1);
    assert_eq!(ledger.balance("rich").unwrap().held_credits, 0);
    assert_healthy(&ledger);
}

#[test]
fn every_option_is_checked_at_open_at_both_ends_of_its_range() {
    use credit_ledger::limits::{
        MAX_CACHE_SIZE_BYTES, MAX_CLOCK_AHEAD_MS, MAX_CLOCK_REGRESSION_MS, MAX_TIMEOUT_MS,
        MIN_CACHE_SIZE_BYTES, MIN_CLOCK_AHEAD_MS, MIN_TIMEOUT_MS,
    };
    use credit_ledger::Options;
    let clock = ManualClock::new(T0_MS);
    let base = || common::options(&clock);
    // (option, just inside, just outside)
    type Set = fn(Options, u64) -> Options;
    let cases: [(&str, Set, u64, u64); 8] = [
        (
            "default_timeout_ms",
            |o, v| o.default_timeout_ms(v),
            MIN_TIMEOUT_MS,
            MIN_TIMEOUT_MS - 1,
        ),
        (
            "default_timeout_ms",
            |o, v| o.default_timeout_ms(v),
            MAX_TIMEOUT_MS,
            MAX_TIMEOUT_MS + 1,
        ),
        (
            "cache_size_bytes",
            |o, v| o.cache_size_bytes(v as usize),
            MIN_CACHE_SIZE_BYTES,
            MIN_CACHE_SIZE_BYTES - 1,
        ),
        (
            "cache_size_bytes",
            |o, v| o.cache_size_bytes(v as usize),
            MAX_CACHE_SIZE_BYTES,
            MAX_CACHE_SIZE_BYTES + 1,
        ),
        (
            "max_clock_regression_ms",
            |o, v| o.max_clock_regression_ms(v),
            MAX_CLOCK_REGRESSION_MS,
            MAX_CLOCK_REGRESSION_MS + 1,
        ),
        (
            "max_clock_regression_ms",
            |o, v| o.max_clock_regression_ms(v),
            0,
            u64::MAX,
        ),
        (
            "max_clock_ahead_ms",
            |o, v| o.max_clock_ahead_ms(Some(v)),
            MIN_CLOCK_AHEAD_MS,
            MIN_CLOCK_AHEAD_MS - 1,
        ),
        (
            "max_clock_ahead_ms",
            |o, v| o.max_clock_ahead_ms(Some(v)),
            MAX_CLOCK_AHEAD_MS,
            MAX_CLOCK_AHEAD_MS + 1,
        ),
    ];
    for (name, set, inside, outside) in cases {
        assert_eq!(set(base(), inside).validate(), Ok(()), "{name} = {inside}");
        let Err(e) = set(base(), outside).validate() else {
            panic!("{name} = {outside} was accepted");
        };
        assert!(
            matches!(&e, InvalidInput::OptionOutOfRange { option, value, .. } if *option == name && *value == outside),
            "{name} = {outside}: {e:?}"
        );
        // Every way to open refuses it, and a file open creates nothing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let err = Ledger::open_with(&path, set(base(), outside)).unwrap_err();
        assert_eq!(err, Error::InvalidInput(e.clone()));
        assert!(!path.exists(), "{name}: a refused open created the file");
        assert_eq!(
            Ledger::in_memory_with(set(base(), outside)).unwrap_err(),
            Error::InvalidInput(e)
        );
    }
    // The ahead guard can be turned off; the one value with no range.
    assert_eq!(base().max_clock_ahead_ms(None).validate(), Ok(()));
    // A zero timeout would refund every success the moment it is reported.
    assert!(Ledger::in_memory_with(base().default_timeout_ms(0)).is_err());
    // Inside the range the ledger opens and works with the setting.
    let ledger = Ledger::in_memory_with(base().default_timeout_ms(MIN_TIMEOUT_MS)).unwrap();
    fund(&ledger, "ws", 10);
    let c = ledger
        .start_generation(StartGeneration::new("g", "ws", "Quick Video", 1))
        .unwrap();
    assert_eq!(c.deadline_ms - c.started_at_ms, MIN_TIMEOUT_MS);
}

#[test]
fn ids_that_print_like_other_ids_are_refused() {
    let (ledger, _c) = setup();
    fund(&ledger, "acme", 10);
    let before = snapshot(&ledger);
    for bad in [
        "acme ",
        " acme",
        "ac\u{200b}me",
        "\u{202e}emca",
        "acme\u{2066}",
        "ac\u{a0}me",
    ] {
        let results = [
            ledger.credit(Credit::purchase(bad, 5, "k-new")).map(drop),
            ledger.credit(Credit::purchase("acme", 5, bad)).map(drop),
            ledger
                .adjust(Adjust::new(bad, 5, "k-new", "memo"))
                .map(drop),
            ledger.adjust(Adjust::new("acme", 5, bad, "memo")).map(drop),
            ledger
                .start_generation(StartGeneration::new(bad, "acme", "Quick Video", 1))
                .map(drop),
            ledger
                .start_generation(StartGeneration::new("g-new", bad, "Quick Video", 1))
                .map(drop),
            ledger
                .start_generation(StartGeneration::new("g-new", "acme", bad, 1))
                .map(drop),
        ];
        for (i, r) in results.into_iter().enumerate() {
            let Err(Error::InvalidInput(InvalidInput::InvisibleCharacter { shown, what, .. })) = r
            else {
                panic!("{bad:?} in place {i}: {r:?}");
            };
            // The message shows the hidden character, so the operator can see it.
            assert!(
                shown.contains("\\u{") || what.contains("whitespace"),
                "{bad:?}: {shown} / {what}"
            );
        }
    }
    assert_unchanged(&ledger, before);
    // Inner plain spaces and non-Latin letters are fine.
    ledger
        .credit(Credit::purchase("acme corp", 5, "order é-1"))
        .unwrap();
    ledger
        .start_generation(StartGeneration::new("gen-東京", "acme corp", "HD Video", 1))
        .unwrap();
}

#[test]
fn stats_sums_are_exact_past_u64() {
    // Three workspaces each refunded i64::MAX credits: 3 * (2^63 - 1) > u64::MAX.
    let (ledger, _c) = ledger();
    for ws in ["a", "b", "c"] {
        fund(&ledger, ws, MAX_AMOUNT_CREDITS);
        let gen = format!("g-{ws}");
        ledger
            .start_generation(StartGeneration::new(
                &gen,
                ws,
                "HD Video",
                MAX_AMOUNT_CREDITS,
            ))
            .unwrap();
        ledger
            .fail_generation(&gen, RefundReason::ModelFailure, "crashed")
            .unwrap();
    }
    let exact = 3 * u128::from(MAX_AMOUNT_CREDITS);
    assert!(exact > u128::from(u64::MAX));
    assert_eq!(ledger.totals().unwrap().refunded_credits, exact);
    let s = ledger.stats(credit_ledger::TimeWindow::all()).unwrap();
    assert_eq!(s.refunded_credits, exact);
    assert_eq!(s.by_reason["model-failure"].refunded_credits, exact);
    assert_eq!(s.by_feature["HD Video"].refunded_credits, exact);
    assert_eq!(s.by_feature["HD Video"].charged_credits, exact);
    assert_healthy(&ledger);
}

/// Grant terms that make no sense, and a void of a grant that does not exist: each a typed
/// error that writes nothing (not even a workspace or a grant for a new key).
#[test]
fn bad_grant_terms_and_unknown_grants_are_refused() {
    use credit_ledger::limits::MAX_GRANT_PRIORITY;
    use credit_ledger::VoidGrant;
    let (ledger, _c) = setup();
    let before = snapshot(&ledger);
    let grants_before = ledger.grants("ws").unwrap();

    let r = ledger.credit(
        Credit::grant("ws", 5, "backwards")
            .effective_at_ms(T0_MS + 2 * MINUTE_MS)
            .expires_at_ms(T0_MS + MINUTE_MS),
    );
    assert_eq!(
        r,
        Err(Error::InvalidInput(InvalidInput::ExpiryNotAfterStart {
            effective_at_ms: T0_MS + 2 * MINUTE_MS,
            expires_at_ms: T0_MS + MINUTE_MS,
        }))
    );

    let r = ledger.credit(Credit::grant("new-ws", 5, "stale").expires_at_ms(T0_MS - 1));
    assert_eq!(
        r,
        Err(Error::InvalidInput(InvalidInput::ExpiryInPast {
            expires_at_ms: T0_MS - 1,
            now_ms: T0_MS,
        }))
    );
    // An expiry equal to now is already past: the grant would never be spendable.
    let r = ledger.credit(Credit::grant("ws", 5, "now").expires_at_ms(T0_MS));
    assert!(matches!(
        r,
        Err(Error::InvalidInput(InvalidInput::ExpiryInPast { .. }))
    ));

    let r = ledger.credit(Credit::grant("ws", 5, "vip").priority(MAX_GRANT_PRIORITY + 1));
    assert_eq!(
        r,
        Err(Error::InvalidInput(InvalidInput::PriorityOutOfRange {
            priority: MAX_GRANT_PRIORITY + 1,
            max: MAX_GRANT_PRIORITY,
        }))
    );

    let r = ledger.void_grant(VoidGrant::new("ws", "no-such-grant", "void-1", "typo"));
    assert_eq!(
        r,
        Err(Error::UnknownGrant {
            grant: "no-such-grant".into()
        })
    );
    let r = ledger.void_grant(VoidGrant::new("ws", "g", "void-2", ""));
    assert!(matches!(
        r,
        Err(Error::InvalidInput(InvalidInput::Empty {
            field: "memo",
            ..
        }))
    ));

    assert_unchanged(&ledger, before);
    assert_eq!(ledger.grants("ws").unwrap(), grants_before);
    assert!(matches!(
        ledger.balance("new-ws"),
        Err(Error::UnknownWorkspace { .. })
    ));
    // None of the refused keys was taken: each can still be used properly.
    ledger
        .credit(Credit::grant("ws", 5, "backwards").expires_at_ms(T0_MS + MINUTE_MS))
        .unwrap();
}

/// A charge or negative adjustment that would span more grant lots than one record holds is
/// refused before anything is written. Before the bound, a start over 600 one-credit grants
/// was accepted and its refund then failed, forever, on an `allocations` record over the
/// decoder's 64 KiB limit. At the bound, with the longest grant ids and the longest failure
/// message, the charge and its refund (whose log record carries the 256 lots) read back.
#[test]
fn a_charge_over_more_grant_lots_than_a_record_holds_is_refused() {
    use credit_ledger::limits::MAX_LOTS_PER_TRANSACTION;
    use credit_ledger::Op;
    let (l, _clock) = ledger();
    let max = MAX_LOTS_PER_TRANSACTION;
    let id = |i: usize| format!("{i:0>width$}", width = MAX_ID_BYTES);
    let ops: Vec<Op> = (0..=max)
        .map(|i| Op::Credit(Credit::grant("ws", 1, id(i))))
        .collect();
    assert!(l.apply(&ops).iter().all(Result::is_ok));
    let before = snapshot(&l);
    let over = (max + 1) as u64;
    let r = l.start_generation(StartGeneration::new("g", "ws", "Quick Video", over));
    assert!(
        matches!(&r, Err(Error::TooManyLots { max_lots, .. }) if *max_lots == max),
        "{r:?}"
    );
    let r = l.adjust(Adjust::new("ws", -(over as i64), "adj", "too wide"));
    assert!(matches!(&r, Err(Error::TooManyLots { .. })), "{r:?}");
    assert_eq!(snapshot(&l), before);
    assert!(l.generation("g").is_err());

    let charge = l
        .start_generation(StartGeneration::new("g", "ws", "Quick Video", max as u64))
        .unwrap();
    assert_eq!(charge.allocations.len(), max);
    let refund = l
        .fail_generation(
            "g",
            RefundReason::ModelFailure,
            &"x".repeat(MAX_MESSAGE_BYTES),
        )
        .unwrap();
    assert_eq!(refund.allocations.len(), max);
    let shown = l.transaction(refund.refund_txn).unwrap();
    assert_eq!(shown.allocations.len(), max);
    assert_eq!(l.balance("ws").unwrap().balance_credits, over);
    assert_healthy(&l);
}
