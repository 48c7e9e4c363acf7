//! Credit grants: drawdown order, refunds across expiry, lazy expiry, the sweep's
//! Expirations, operator voids, and the balance split.

mod common;

use common::{ledger, options, MINUTE_MS, T0_MS};
use credit_ledger::limits::{DEFAULT_GRANT_PRIORITY, DEFAULT_REFUND_GRACE_MS};
use credit_ledger::{
    Allocation, Credit, Error, GrantState, HistoryFilter, Ledger, ManualClock, PageRequest,
    RefundReason, StartGeneration, TxnKind, VoidGrant,
};

const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// `(grant id, credits)` of each allocation, in order.
fn drawn(allocations: &[Allocation]) -> Vec<(&str, u64)> {
    allocations
        .iter()
        .map(|a| (a.grant_id.as_str(), a.credits))
        .collect()
}

fn remaining(ledger: &Ledger, ws: &str) -> Vec<(String, u32, u64)> {
    ledger
        .grants(ws)
        .unwrap()
        .into_iter()
        .map(|g| (g.grant_id, g.lot, g.remaining_credits))
        .collect()
}

fn start(ledger: &Ledger, id: &str, ws: &str, cost: u64) -> Vec<(String, u64)> {
    let c = ledger
        .start_generation(StartGeneration::new(id, ws, "Quick Video", cost))
        .unwrap();
    drawn(&c.allocations)
        .into_iter()
        .map(|(g, n)| (g.to_string(), n))
        .collect()
}

fn owned(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(g, n)| (g.to_string(), *n)).collect()
}

fn assert_clean(ledger: &Ledger) {
    let report = ledger.verify().unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
    assert!(ledger.totals().unwrap().is_conserved());
}

#[test]
fn a_credit_with_no_terms_is_one_grant_spent_as_before() {
    let (l, _) = ledger();
    let r = l.credit(Credit::purchase("acme", 100, "order-1")).unwrap();
    assert_eq!(r.balance_after_credits, 100);
    assert_eq!(start(&l, "g1", "acme", 12), owned(&[("order-1", 12)]));
    let g = &l.grants("acme").unwrap()[0];
    assert_eq!(
        (g.amount_credits, g.remaining_credits, g.priority, g.state),
        (100, 88, DEFAULT_GRANT_PRIORITY, GrantState::Spendable)
    );
    let s = l.balance("acme").unwrap();
    assert_eq!((s.balance_credits, s.spendable_credits), (88, 88));
    assert_clean(&l);
}

#[test]
fn drawdown_goes_by_priority_then_expiry_then_start_then_id() {
    let (l, _) = ledger();
    let ws = "acme";
    // Credited in an order unlike the drawdown order.
    l.credit(Credit::purchase(ws, 10, "d-no-expiry")).unwrap();
    l.credit(Credit::purchase(ws, 10, "c-late").expires_at_ms(T0_MS + 9 * DAY_MS))
        .unwrap();
    l.credit(Credit::purchase(ws, 10, "b-soon").expires_at_ms(T0_MS + 2 * DAY_MS))
        .unwrap();
    l.credit(Credit::purchase(ws, 10, "e-urgent").priority(DEFAULT_GRANT_PRIORITY + 1))
        .unwrap();
    l.credit(Credit::grant(ws, 10, "a-first").priority(0))
        .unwrap();
    // Ties on priority and expiry: the earlier start wins (none counts as the earliest),
    // then the smaller id.
    l.credit(
        Credit::purchase(ws, 10, "z-started")
            .expires_at_ms(T0_MS + 2 * DAY_MS)
            .effective_at_ms(T0_MS - DAY_MS),
    )
    .unwrap();
    l.credit(Credit::purchase(ws, 10, "a-tie").expires_at_ms(T0_MS + 9 * DAY_MS))
        .unwrap();

    // One charge spans every grant, in order.
    assert_eq!(
        start(&l, "g1", ws, 70),
        owned(&[
            ("a-first", 10),
            ("b-soon", 10),
            ("z-started", 10),
            ("a-tie", 10),
            ("c-late", 10),
            ("d-no-expiry", 10),
            ("e-urgent", 10),
        ])
    );
    assert_eq!(l.balance(ws).unwrap().balance_credits, 0);
    assert_clean(&l);
}

#[test]
fn a_charge_spans_grants_and_takes_what_it_needs_from_the_last() {
    let (l, _) = ledger();
    l.credit(Credit::grant("acme", 5, "trial").expires_at_ms(T0_MS + 7 * DAY_MS))
        .unwrap();
    l.credit(Credit::purchase("acme", 100, "pack")).unwrap();
    assert_eq!(
        start(&l, "g1", "acme", 12),
        owned(&[("trial", 5), ("pack", 7)])
    );
    assert_eq!(start(&l, "g2", "acme", 3), owned(&[("pack", 3)]));
    assert_eq!(
        remaining(&l, "acme"),
        vec![("trial".into(), 0, 0), ("pack".into(), 0, 90)]
    );
    // The Usage's view carries the same allocations.
    let usage = l.transaction(3).unwrap();
    assert_eq!(usage.kind, TxnKind::Usage);
    assert_eq!(drawn(&usage.allocations), vec![("trial", 5), ("pack", 7)]);
    assert_clean(&l);
}

#[test]
fn future_dated_grants_are_not_spendable_until_their_start() {
    let (l, clock) = ledger();
    l.credit(Credit::purchase("acme", 10, "now")).unwrap();
    l.credit(Credit::grant("acme", 50, "next-month").effective_at_ms(T0_MS + DAY_MS))
        .unwrap();
    let s = l.balance("acme").unwrap();
    assert_eq!(
        (s.balance_credits, s.spendable_credits, s.pending_credits),
        (60, 10, 50)
    );
    let err = l
        .start_generation(StartGeneration::new("g1", "acme", "HD Video", 20))
        .unwrap_err();
    assert_eq!(
        err,
        Error::InsufficientCredits {
            workspace: "acme".into(),
            balance_credits: 10,
            required_credits: 20,
        }
    );
    assert!(err.to_string().contains("10 spendable credits"), "{err}");
    clock.advance_ms(DAY_MS);
    assert_eq!(
        start(&l, "g1", "acme", 20),
        owned(&[("now", 10), ("next-month", 10)])
    );
    assert_clean(&l);
}

#[test]
fn expiry_is_lazy_and_the_sweep_writes_one_expiration_for_what_lapsed() {
    // The same steps with and without a sweep at the expiry: the charge outcome is the same.
    for sweep_first in [false, true] {
        let (l, clock) = ledger();
        l.credit(Credit::grant("acme", 30, "trial").expires_at_ms(T0_MS + HOUR_MS))
            .unwrap();
        l.credit(Credit::purchase("acme", 5, "pack")).unwrap();
        start(&l, "g1", "acme", 10);
        clock.set_ms(T0_MS + HOUR_MS);
        if sweep_first {
            let report = l.sweep_expired(100).unwrap();
            assert_eq!(report.expirations.len(), 1);
            let e = &report.expirations[0];
            assert_eq!(
                (
                    e.kind,
                    e.grant_id.as_str(),
                    e.amount_credits,
                    e.balance_before_credits,
                    e.balance_after_credits
                ),
                (TxnKind::Expiration, "trial", 20, 25, 5)
            );
        } else {
            let s = l.balance("acme").unwrap();
            assert_eq!(
                (
                    s.balance_credits,
                    s.spendable_credits,
                    s.expired_unswept_credits
                ),
                (25, 5, 20)
            );
        }
        // Either way the expired credits cannot be spent.
        let err = l
            .start_generation(StartGeneration::new("g2", "acme", "Quick Video", 6))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InsufficientCredits {
                    balance_credits: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(start(&l, "g3", "acme", 5), owned(&[("pack", 5)]));
        // The sweep expires the lapsed part once, whenever it runs.
        l.sweep_expired(100).unwrap();
        assert!(l.sweep_expired(100).unwrap().expirations.is_empty());
        let expirations = l
            .history(
                "acme",
                &HistoryFilter::all().kinds([TxnKind::Expiration]),
                &PageRequest::first(10),
            )
            .unwrap()
            .entries;
        assert_eq!(expirations.len(), 1);
        assert_eq!(expirations[0].amount_credits, -20);
        assert_eq!(expirations[0].action, "Expired 20 credits of Grant");
        let s = l.balance("acme").unwrap();
        assert_eq!((s.balance_credits, s.expired_credits), (0, 20));
        assert!(matches!(
            l.grants("acme").unwrap()[0].state,
            GrantState::Expired { credits: 20, .. }
        ));
        assert_clean(&l);
    }
}

#[test]
fn a_grant_spent_to_zero_expires_without_a_transaction() {
    let (l, clock) = ledger();
    l.credit(Credit::grant("acme", 10, "trial").expires_at_ms(T0_MS + HOUR_MS))
        .unwrap();
    l.start_generation(StartGeneration::new("g1", "acme", "Quick Video", 10))
        .unwrap();
    l.complete_generation("g1").unwrap();
    clock.set_ms(T0_MS + 2 * HOUR_MS);
    let report = l.sweep_expired(100).unwrap();
    assert!(report.expirations.is_empty());
    assert_eq!(report.next_deadline_ms, None);
    assert!(matches!(
        l.grants("acme").unwrap()[0].state,
        GrantState::Expired { txn: 0, credits: 0 }
    ));
    assert_clean(&l);
}

/// Refunds across an expiry, table-driven. A 12-credit Quick Video is charged 8 from a trial
/// grant and 4 from a pack; the trial expires at `expiry`; the generation fails at `fail_at`.
#[test]
fn refunds_across_expiry_keep_the_credits_spendable_for_the_grace() {
    struct Case {
        name: &'static str,
        expiry: u64,
        fail_at: u64,
        /// Where the 8 trial credits go back: lot 0 (the grant itself) or a grace lot.
        grace_lot: bool,
    }
    let cases = [
        Case {
            name: "fails long before the trial expires",
            expiry: T0_MS + 7 * DAY_MS,
            fail_at: T0_MS + MINUTE_MS,
            grace_lot: false,
        },
        Case {
            name: "trial expires within the grace after the refund",
            expiry: T0_MS + HOUR_MS,
            fail_at: T0_MS + 30 * MINUTE_MS,
            grace_lot: true,
        },
        Case {
            name: "trial expired while the generation ran",
            expiry: T0_MS + 10 * MINUTE_MS,
            fail_at: T0_MS + 20 * MINUTE_MS,
            grace_lot: true,
        },
        Case {
            name: "trial expired and was swept before the failure",
            expiry: T0_MS + MINUTE_MS,
            fail_at: T0_MS + 100 * MINUTE_MS,
            grace_lot: true,
        },
    ];
    for c in cases {
        let (l, clock) = ledger();
        l.credit(
            Credit::grant("acme", 8, "trial")
                .memo("Trial credits")
                .expires_at_ms(c.expiry),
        )
        .unwrap();
        l.credit(Credit::purchase("acme", 100, "pack").memo("Top-up pack"))
            .unwrap();
        assert_eq!(
            start(&l, "g1", "acme", 12),
            owned(&[("trial", 8), ("pack", 4)]),
            "{}",
            c.name
        );
        clock.set_ms(c.fail_at);
        l.sweep_expired(100).unwrap();
        let r = l
            .fail_generation("g1", RefundReason::ModelFailure, "no frames")
            .unwrap();
        assert_eq!(r.amount_credits, 12, "{}", c.name);
        let trial = &r.allocations[0];
        assert_eq!(
            (trial.grant_id.as_str(), trial.credits),
            ("trial", 8),
            "{}",
            c.name
        );
        let grace_until = c.fail_at + DEFAULT_REFUND_GRACE_MS;
        if c.grace_lot {
            assert_eq!(
                (trial.lot, trial.spendable_until_ms),
                (1, Some(grace_until)),
                "{}",
                c.name
            );
        } else {
            assert_eq!(
                (trial.lot, trial.spendable_until_ms),
                (0, Some(c.expiry)),
                "{}",
                c.name
            );
        }
        assert_eq!(
            (r.allocations[1].grant_id.as_str(), r.allocations[1].lot),
            ("pack", 0)
        );
        // The user can retry at once, with all 12 credits: the trial's first.
        assert_eq!(
            start(&l, "g2", "acme", 12),
            owned(&[("trial", 8), ("pack", 4)]),
            "{}",
            c.name
        );
        l.fail_generation("g2", RefundReason::ApiFailure, "503")
            .unwrap();
        // After the grace the returned trial credits expire like any others.
        clock.set_ms(grace_until.max(c.expiry) + 1);
        let report = l.sweep_expired(100).unwrap();
        let lapsed: u64 = report.expirations.iter().map(|e| e.amount_credits).sum();
        assert_eq!(lapsed, 8, "{}", c.name);
        let s = l.balance("acme").unwrap();
        assert_eq!(
            (s.balance_credits, s.spendable_credits),
            (100, 100),
            "{}",
            c.name
        );
        assert_clean(&l);
    }
}

#[test]
fn a_reused_key_with_other_terms_is_a_conflict_naming_the_field() {
    let (l, _) = ledger();
    let base = Credit::grant("acme", 50, "monthly-2026-11")
        .priority(10)
        .expires_at_ms(T0_MS + 30 * DAY_MS);
    l.credit(base.clone()).unwrap();
    assert!(l.credit(base.clone()).unwrap().replay);
    for (changed, field) in [
        (base.clone().priority(11), "priority"),
        (
            base.clone().expires_at_ms(T0_MS + 31 * DAY_MS),
            "expires_at_ms",
        ),
        (base.clone().effective_at_ms(T0_MS), "effective_at_ms"),
        (
            Credit {
                amount_credits: 51,
                ..base.clone()
            },
            "amount",
        ),
    ] {
        match l.credit(changed) {
            Err(Error::Conflict { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(l.balance("acme").unwrap().balance_credits, 50);
    assert_clean(&l);
}

#[test]
fn an_operator_voids_what_remains_of_a_grant_once() {
    let (l, _) = ledger();
    l.credit(Credit::grant("acme", 40, "dup-trial").memo("Trial credits"))
        .unwrap();
    l.credit(Credit::purchase("acme", 10, "pack")).unwrap();
    start(&l, "g1", "acme", 15);
    let void = VoidGrant::new("acme", "dup-trial", "void-1", "duplicate trial grant");
    let v = l.void_grant(void.clone()).unwrap();
    assert_eq!(
        (
            v.kind,
            v.amount_credits,
            v.balance_before_credits,
            v.balance_after_credits,
            v.replay
        ),
        (TxnKind::Void, 25, 35, 10, false)
    );
    let again = l.void_grant(void.clone()).unwrap();
    assert!(again.replay && again.txn_id == v.txn_id);
    assert!(matches!(
        l.void_grant(VoidGrant::new(
            "acme",
            "pack",
            "void-1",
            "duplicate trial grant"
        )),
        Err(Error::Conflict { field: "grant", .. })
    ));
    assert!(matches!(
        l.void_grant(VoidGrant::new("acme", "dup-trial", "void-2", "again")),
        Err(Error::NothingToVoid { .. })
    ));
    // A refund of a charge the voided grant paid comes back in a grace lot.
    let r = l
        .fail_generation("g1", RefundReason::SystemError, "oom")
        .unwrap();
    assert_eq!(r.allocations[0].lot, 1);
    let s = l.balance("acme").unwrap();
    assert_eq!((s.balance_credits, s.voided_credits), (25, 25));
    assert_eq!(
        l.transaction(v.txn_id).unwrap().action,
        "Voided 25 credits of Trial credits"
    );
    assert_clean(&l);
}

#[test]
fn expiring_lists_what_expires_soon_and_balance_names_the_next_expiry() {
    let (l, _) = ledger();
    l.credit(Credit::grant("acme", 8, "trial").expires_at_ms(T0_MS + 7 * DAY_MS))
        .unwrap();
    l.credit(Credit::grant("acme", 500, "monthly").expires_at_ms(T0_MS + 30 * DAY_MS))
        .unwrap();
    l.credit(Credit::purchase("acme", 100, "pack")).unwrap();
    let soon: Vec<String> = l
        .expiring("acme", 10 * DAY_MS)
        .unwrap()
        .into_iter()
        .map(|g| g.grant_id)
        .collect();
    assert_eq!(soon, vec!["trial"]);
    assert_eq!(l.expiring("acme", 31 * DAY_MS).unwrap().len(), 2);
    let next = l.balance("acme").unwrap().next_expiry.unwrap();
    assert_eq!((next.at_ms, next.credits), (T0_MS + 7 * DAY_MS, 8));
}

#[test]
fn grants_and_expirations_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grants.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::grant("acme", 30, "trial").expires_at_ms(T0_MS + HOUR_MS))
            .unwrap();
        l.credit(Credit::purchase("acme", 10, "pack")).unwrap();
        start(&l, "g1", "acme", 35);
    }
    clock.set_ms(T0_MS + 3 * HOUR_MS);
    // Opening sweeps: the generation times out (its 30 trial credits go to a grace lot) and
    // nothing of the trial was left to expire at its expiry.
    let l = Ledger::open_with(&path, options(&clock)).unwrap();
    let g = l.generation("g1").unwrap();
    assert!(matches!(
        g.state,
        credit_ledger::GenerationState::Refunded { .. }
    ));
    assert_eq!(
        remaining(&l, "acme"),
        vec![
            ("trial".into(), 0, 0),
            ("trial".into(), 1, 30),
            ("pack".into(), 0, 10)
        ]
    );
    assert_clean(&l);
}

/// The README's worked example: the guide's Quick Video refund, charged across a trial grant
/// and a purchased pack, the trial expiring while the generation runs.
#[test]
fn the_readme_example_holds() {
    let (l, clock) = ledger();
    let t = |minutes: u64| T0_MS + minutes * MINUTE_MS;
    l.credit(
        Credit::grant("acme", 8, "trial-acme")
            .memo("Trial credits")
            .expires_at_ms(t(2)),
    )
    .unwrap();
    l.credit(Credit::purchase("acme", 100, "order-1001").memo("Top-up pack"))
        .unwrap();
    let charge = l
        .start_generation(StartGeneration::new("gen-1", "acme", "Quick Video", 12))
        .unwrap();
    assert_eq!(
        drawn(&charge.allocations),
        vec![("trial-acme", 8), ("order-1001", 4)]
    );
    assert_eq!(
        (charge.balance_before_credits, charge.balance_after_credits),
        (108, 96)
    );
    clock.set_ms(t(3));
    let refund = l
        .fail_generation("gen-1", RefundReason::ModelFailure, "no frames")
        .unwrap();
    assert_eq!(
        drawn(&refund.allocations),
        vec![("trial-acme", 8), ("order-1001", 4)]
    );
    assert_eq!(refund.allocations[0].lot, 1);
    assert_eq!(
        refund.allocations[0].spendable_until_ms,
        Some(t(3) + DAY_MS)
    );
    assert_eq!(
        (refund.balance_before_credits, refund.balance_after_credits),
        (96, 108)
    );
    assert_eq!(l.balance("acme").unwrap().spendable_credits, 108);
    clock.set_ms(t(4));
    assert_eq!(
        start(&l, "gen-2", "acme", 12),
        owned(&[("trial-acme", 8), ("order-1001", 4)])
    );
    assert_clean(&l);
}

/// A file from before grants: its Usage records have no allocations and its workspaces no
/// grants. It opens and reads as it is (all of a balance spendable); the first write to a
/// workspace moves its balance into one carried-over grant, a refund of a charge made before
/// grants gives the credits back to it, and `verify()` stays clean throughout.
#[test]
fn a_file_from_before_grants_carries_its_balances_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::purchase("acme", 100, "order-1")).unwrap();
        start(&l, "g1", "acme", 12);
    }
    // Make it what schema 1 wrote: none of the grant tables, schema byte 1...
    {
        let rdb = redb::Database::open(&path).unwrap();
        let txn = rdb.begin_write().unwrap();
        {
            common::delete_tables(&txn, &common::GRANT_TABLES);
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            txn.open_table(meta)
                .unwrap()
                .insert("schema", [1u8].as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    // And its generation record as schema 3 and earlier wrote it: no single allocation.
    common::edit_generation_tail(
        &path,
        "g1",
        &common::single_allocation_tail("order-1", 12, None),
        &[],
    );
    let l = Ledger::open_with(&path, options(&clock).sweep_on_open(false)).unwrap();
    let s = l.balance("acme").unwrap();
    assert_eq!((s.balance_credits, s.spendable_credits), (88, 88));
    assert!(l.grants("acme").unwrap().is_empty());
    assert!(l.transaction(2).unwrap().allocations.is_empty());
    assert_clean(&l);
    // The first write: a new expiring grant. The old balance is carried over beside it.
    l.credit(Credit::grant("acme", 10, "trial").expires_at_ms(T0_MS + DAY_MS))
        .unwrap();
    let carried = &l.grants("acme").unwrap()[1];
    assert_eq!(
        (carried.grant_id.as_str(), carried.remaining_credits),
        ("(carried over)", 88)
    );
    // The charge made before grants is refunded into the carried-over grant.
    let r = l
        .fail_generation("g1", RefundReason::ModelFailure, "no frames")
        .unwrap();
    assert_eq!(r.allocations.len(), 1);
    assert_eq!(r.allocations[0].credits, 12);
    assert_eq!(
        remaining(&l, "acme"),
        vec![("trial".into(), 0, 10), ("(carried over)".into(), 0, 100)]
    );
    assert_eq!(
        start(&l, "g2", "acme", 15),
        vec![("trial".to_string(), 10), ("(carried over)".to_string(), 5)]
    );
    assert_clean(&l);
}

// The fast path of one-grant charges (schema 4): a charge paid by one grant lot, and a refund
// that gives it back to that lot, keep the allocation in the generation record and write no
// `allocations` row. These tests pin what users see at its boundaries, and which
// transactions have a row.

const ALLOCATIONS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("allocations");

/// The txn ids with an `allocations` row in the (closed) ledger file at `path`.
fn allocation_rows(path: &std::path::Path) -> Vec<u64> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::open(path).unwrap();
    let r = db.begin_read().unwrap();
    let t = r.open_table(ALLOCATIONS).unwrap();
    t.iter().unwrap().map(|e| e.unwrap().0.value()).collect()
}

/// `(grant id, lot, credits)` of each allocation.
fn lots(allocations: &[Allocation]) -> Vec<(String, u32, u64)> {
    allocations
        .iter()
        .map(|a| (a.grant_id.clone(), a.lot, a.credits))
        .collect()
}

/// The allocations a transaction's view shows, as `(grant id, lot, credits)`.
fn view_lots(ledger: &Ledger, txn_id: u64) -> Vec<(String, u32, u64)> {
    lots(&ledger.transaction(txn_id).unwrap().allocations)
}

fn lot(id: &str, lot: u32, credits: u64) -> (String, u32, u64) {
    (id.to_string(), lot, credits)
}

#[test]
fn a_charge_paid_by_one_grant_and_its_refund_write_no_allocations_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fast.redb");
    let clock = ManualClock::new(T0_MS);
    let spanning;
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::purchase("acme", 20, "pack")).unwrap();
        let c1 = l
            .start_generation(StartGeneration::new("g1", "acme", "Quick Video", 12))
            .unwrap();
        let r1 = l
            .fail_generation("g1", RefundReason::ModelFailure, "no frames")
            .unwrap();
        assert_eq!(lots(&c1.allocations), vec![lot("pack", 0, 12)]);
        assert_eq!(lots(&r1.allocations), vec![lot("pack", 0, 12)]);
        assert_eq!(view_lots(&l, c1.usage_txn), vec![lot("pack", 0, 12)]);
        assert_eq!(view_lots(&l, r1.refund_txn), vec![lot("pack", 0, 12)]);
        // A retried start and fail replay the same allocations.
        let again = l
            .start_generation(StartGeneration::new("g1", "acme", "Quick Video", 12))
            .unwrap();
        assert!(again.replay);
        assert_eq!(lots(&again.allocations), vec![lot("pack", 0, 12)]);
        let again = l
            .fail_generation("g1", RefundReason::ModelFailure, "no frames")
            .unwrap();
        assert!(again.replay);
        assert_eq!(lots(&again.allocations), vec![lot("pack", 0, 12)]);
        // A charge that spans two grants, and its refund, keep their rows.
        l.credit(Credit::purchase("acme", 5, "small")).unwrap();
        let c2 = l
            .start_generation(StartGeneration::new("g2", "acme", "Quick Video", 22))
            .unwrap();
        assert_eq!(
            lots(&c2.allocations),
            vec![lot("pack", 0, 20), lot("small", 0, 2)]
        );
        let r2 = l
            .fail_generation("g2", RefundReason::ApiFailure, "502")
            .unwrap();
        assert_eq!(lots(&r2.allocations), lots(&c2.allocations));
        assert_eq!(view_lots(&l, r2.refund_txn), lots(&c2.allocations));
        spanning = vec![c2.usage_txn, r2.refund_txn];
        assert_clean(&l);
    }
    assert_eq!(allocation_rows(&path), spanning);
}

/// The common case of a grant arriving: a workspace spends one grant, a second (spent first)
/// arrives while charges of the first still run, and the first expires before the last of
/// them fails. Each refund goes back where its charge came from; only the one into a grace
/// lot needs an `allocations` row.
#[test]
fn charges_made_before_a_second_grant_arrived_refund_to_their_grant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.redb");
    let clock = ManualClock::new(T0_MS);
    // Past the refund grace from now, so a refund before it goes back to the trial itself.
    let trial_expiry = T0_MS + 2 * DAY_MS;
    let grace_refund;
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::grant("acme", 20, "trial").expires_at_ms(trial_expiry))
            .unwrap();
        assert_eq!(start(&l, "g1", "acme", 10), owned(&[("trial", 10)]));
        // g2 runs past the trial's expiry (its deadline is after it).
        let c2 = l
            .start_generation(
                StartGeneration::new("g2", "acme", "Quick Video", 5).timeout_ms(3 * DAY_MS),
            )
            .unwrap();
        assert_eq!(lots(&c2.allocations), vec![lot("trial", 0, 5)]);
        clock.advance_ms(MINUTE_MS);
        l.credit(Credit::purchase("acme", 100, "pack").priority(50))
            .unwrap();
        assert_eq!(start(&l, "g3", "acme", 5), owned(&[("pack", 5)]));
        // g1 was charged to the trial before the pack existed: it goes back to the trial.
        let r1 = l
            .fail_generation("g1", RefundReason::ModelFailure, "no frames")
            .unwrap();
        assert_eq!(lots(&r1.allocations), vec![lot("trial", 0, 10)]);
        assert_eq!(
            remaining(&l, "acme"),
            vec![("pack".into(), 0, 95), ("trial".into(), 0, 15)]
        );
        let r3 = l
            .fail_generation("g3", RefundReason::ModelFailure, "no frames")
            .unwrap();
        assert_eq!(lots(&r3.allocations), vec![lot("pack", 0, 5)]);
        // The trial expires while g2 runs: its refund goes into a grace lot of the trial.
        clock.set_ms(trial_expiry + MINUTE_MS);
        let r2 = l
            .fail_generation("g2", RefundReason::SystemError, "oom")
            .unwrap();
        assert_eq!(lots(&r2.allocations), vec![lot("trial", 1, 5)]);
        assert_eq!(
            r2.allocations[0].spendable_until_ms,
            Some(trial_expiry + MINUTE_MS + DEFAULT_REFUND_GRACE_MS)
        );
        assert_eq!(view_lots(&l, r2.refund_txn), vec![lot("trial", 1, 5)]);
        assert_eq!(view_lots(&l, r1.refund_txn), vec![lot("trial", 0, 10)]);
        // The pack, first in the drawdown order, pays the next charge alone.
        assert_eq!(
            lots(
                &l.start_generation(StartGeneration::new("g4", "acme", "Quick Video", 3))
                    .unwrap()
                    .allocations
            ),
            vec![lot("pack", 0, 3)]
        );
        assert_clean(&l);
        grace_refund = r2.refund_txn;
    }
    assert_eq!(allocation_rows(&path), vec![grace_refund]);
}

/// A workspace's only grant voided while a charge of it runs: the refund cannot go back to
/// the closed lot, so a grace lot takes it; a charge paid by that grace lot alone, and its
/// refund back to it, are again one-lot charges.
#[test]
fn a_voided_single_grant_refunds_into_a_grace_lot_that_then_pays_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("void.redb");
    let clock = ManualClock::new(T0_MS);
    let rows;
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::grant("acme", 10, "only")).unwrap();
        assert_eq!(start(&l, "g1", "acme", 4), owned(&[("only", 4)]));
        let v = l
            .void_grant(VoidGrant::new("acme", "only", "void-1", "revoked"))
            .unwrap();
        assert_eq!(v.amount_credits, 6);
        let r1 = l
            .fail_generation("g1", RefundReason::ModelFailure, "no frames")
            .unwrap();
        assert_eq!(lots(&r1.allocations), vec![lot("only", 1, 4)]);
        let c2 = l
            .start_generation(StartGeneration::new("g2", "acme", "Quick Video", 4))
            .unwrap();
        assert_eq!(lots(&c2.allocations), vec![lot("only", 1, 4)]);
        let r2 = l
            .fail_generation("g2", RefundReason::ModelFailure, "no frames")
            .unwrap();
        assert_eq!(lots(&r2.allocations), vec![lot("only", 1, 4)]);
        assert_eq!(view_lots(&l, c2.usage_txn), vec![lot("only", 1, 4)]);
        assert_eq!(view_lots(&l, r2.refund_txn), vec![lot("only", 1, 4)]);
        assert_eq!(
            remaining(&l, "acme"),
            vec![("only".into(), 1, 4), ("only".into(), 0, 0)]
        );
        assert_clean(&l);
        // The void (what it closed) and the refund into the grace lot have rows.
        rows = vec![v.txn_id, r1.refund_txn];
    }
    assert_eq!(allocation_rows(&path), rows);
}

/// The journal replays the fast path exactly: a crash image (the file as of its last
/// checkpoint, plus the journal) taken after one-lot charges, a second grant, refunds to
/// both, a void and a grace lot reopens to the same views, grants and audit.
#[test]
fn the_journal_replays_one_lot_charges_across_a_second_grant_and_a_void() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.redb");
    let clock = ManualClock::new(T0_MS);
    let l = Ledger::open_with(&path, options(&clock)).unwrap();
    l.credit(Credit::purchase("acme", 30, "pack")).unwrap();
    start(&l, "g1", "acme", 7);
    start(&l, "g2", "acme", 7);
    l.credit(Credit::grant("acme", 10, "bonus").priority(10))
        .unwrap();
    start(&l, "g3", "acme", 4);
    l.fail_generation("g1", RefundReason::ModelFailure, "x")
        .unwrap();
    l.void_grant(VoidGrant::new("acme", "bonus", "void-1", "revoked"))
        .unwrap();
    l.fail_generation("g3", RefundReason::ModelFailure, "x")
        .unwrap();
    l.complete_generation("g2").unwrap();
    start(&l, "g4", "acme", 5);
    let seen = |l: &Ledger| {
        format!(
            "{:?}\n{:?}\n{:?}",
            common::all_history(l, "acme", &HistoryFilter::all()),
            l.grants("acme").unwrap(),
            l.balance("acme").unwrap()
        )
    };
    let live = seen(&l);
    let image = dir.path().join("image.redb");
    std::fs::copy(&path, &image).unwrap();
    std::fs::copy(
        dir.path().join("live.redb.journal"),
        dir.path().join("image.redb.journal"),
    )
    .unwrap();
    drop(l);
    let replayed = Ledger::open_with(&image, options(&clock).sweep_on_open(false)).unwrap();
    assert_eq!(seen(&replayed), live);
    assert_clean(&replayed);
    drop(replayed);
    // Rows: the void, g3's refund into a grace lot of the voided bonus, and g4, which takes
    // that grace lot's 4 credits (priority 10) and 1 from the pack.
    assert_eq!(allocation_rows(&image), vec![7, 8, 9]);
}

/// A generation record has schema 4's layout and every transaction record schema 6's: the
/// first write to a schema 3 file, a credit here, records the current version, so that an
/// older build refuses the file instead of failing to decode it, and generations then work
/// as in any current file.
#[test]
fn the_first_write_to_a_schema_3_file_records_the_current_schema() {
    use redb::ReadableDatabase;
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let schema = |path: &std::path::Path| {
        let db = redb::Database::open(path).unwrap();
        let r = db.begin_read().unwrap();
        let v = r
            .open_table(META)
            .unwrap()
            .get("schema")
            .unwrap()
            .unwrap()
            .value()[0];
        v
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::purchase("acme", 100, "pack")).unwrap();
    }
    // What a version 3 build wrote: no notice index, schema byte 3.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let notices: redb::TableDefinition<(u64, &str, &str), u64> =
            redb::TableDefinition::new("grant_notices");
        assert!(txn.delete_table(notices).unwrap());
        txn.open_table(META)
            .unwrap()
            .insert("schema", [3u8].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::purchase("acme", 5, "more")).unwrap();
    }
    assert_eq!(
        schema(&path),
        6,
        "a credit appends a record of schema 6's layout"
    );
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        assert_eq!(start(&l, "g1", "acme", 4), owned(&[("more", 4)]));
        assert_clean(&l);
    }
    assert_eq!(schema(&path), 6);
    let l = Ledger::open_with(&path, options(&clock)).unwrap();
    l.fail_generation("g1", RefundReason::ModelFailure, "x")
        .unwrap();
    assert_eq!(
        remaining(&l, "acme"),
        vec![("more".into(), 0, 5), ("pack".into(), 0, 100)]
    );
    assert_clean(&l);
}
