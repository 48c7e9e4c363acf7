//! Commit errors: the storage fails a sync or a write while an operation commits.
//!
//! redb's `commit()` docs say a failed commit may still have become durable. For each
//! operation that moves money (a credit, a charge, a failure refund, a lazy-expiry refund and a
//! sweep refund), each fault (the commit's last sync fails but its data landed; it fails and
//! the data is lost; the commit's first sync fails; the first write fails) must:
//!
//! - return an error (`CommitUncertain` or `Storage`), never a success;
//! - leave the same in-process `Ledger` refusing further writes with a clear storage error that
//!   says to reopen (redb latches every I/O error until the database is reopened); its reads
//!   still show the last commit known to have succeeded, never the uncertain one;
//! - after reopening from the durable image, show the operation either whole or not at all;
//!   and a retry with the same ids leaves exactly one charge or refund: the state then equals a
//!   fault-free run's, whether or not the failed commit had landed.

#[path = "support/faulty.rs"]
mod faulty;

use credit_ledger::{
    Credit, Durability, Error, GenerationState, HistoryFilter, Ledger, LedgerTotals, ManualClock,
    Op, Options, Outcome, PageRequest, RefundReason, StartGeneration, TxnKind, WorkspaceSummary,
};
use faulty::{Failure, FaultyBackend, Plan};

const T0_MS: u64 = 1_700_000_000_000;
const MINUTE_MS: u64 = 60_000;

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .durability(Durability::Immediate)
        .sweep_on_open(false)
}

fn exec(ledger: &Ledger, op: &Op) -> Result<Outcome, Error> {
    ledger.execute(op.clone())
}

/// The state before the operation under test: two workspaces, a few generations.
fn prepare(ledger: &Ledger, clock: &ManualClock) {
    clock.set_ms(T0_MS);
    ledger
        .credit(Credit::purchase("acme", 100, "order-1"))
        .unwrap();
    ledger
        .credit(Credit::purchase("globex", 50, "order-2"))
        .unwrap();
    for (id, ws, cost, timeout) in [
        ("g-run", "acme", 12, 150),
        ("g-short", "acme", 7, 5),
        ("g-other", "globex", 9, 5),
    ] {
        ledger
            .start_generation(
                StartGeneration::new(id, ws, "Quick Video", cost).timeout_ms(timeout * MINUTE_MS),
            )
            .unwrap();
    }
}

/// An operation under test, the time it runs at, and what it moves.
struct Case {
    name: &'static str,
    at_ms: u64,
    op: Op,
}

fn cases() -> Vec<Case> {
    let later = T0_MS + MINUTE_MS;
    let expired = T0_MS + 10 * MINUTE_MS;
    vec![
        Case {
            name: "credit",
            at_ms: later,
            op: Op::Credit(Credit::purchase("acme", 40, "order-3")),
        },
        Case {
            name: "charge (start)",
            at_ms: later,
            op: Op::Start(StartGeneration::new("g-new", "globex", "Image", 4)),
        },
        Case {
            name: "failure refund",
            at_ms: later,
            op: Op::Fail {
                generation_id: "g-run".into(),
                reason: RefundReason::ModelFailure,
                message: "model crashed".into(),
            },
        },
        Case {
            name: "lazy-expiry refund (late complete)",
            at_ms: expired,
            op: Op::Complete {
                generation_id: "g-short".into(),
            },
        },
        Case {
            name: "sweep refunds",
            at_ms: expired,
            op: Op::Sweep { limit: 100 },
        },
    ]
}

/// What the operation under test is about, for the "exactly one" checks.
fn generation_of(op: &Op) -> Option<&str> {
    match op {
        Op::Start(s) => Some(&s.generation_id),
        Op::Complete { generation_id } | Op::Fail { generation_id, .. } => Some(generation_id),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    workspaces: Vec<WorkspaceSummary>,
    generations: Vec<(String, Option<GenerationState>)>,
    totals: LedgerTotals,
    /// Refund transactions per workspace, with the generation each refunds.
    refunds: Vec<(String, Option<String>, i64)>,
    usages: Vec<(String, Option<String>, i64)>,
}

fn snapshot(ledger: &Ledger) -> Snapshot {
    let workspaces = ledger.workspaces(None, 100).unwrap();
    let generations = ["g-run", "g-short", "g-other", "g-new"]
        .iter()
        .map(|id| (id.to_string(), ledger.generation(id).ok().map(|g| g.state)))
        .collect();
    let mut refunds = Vec::new();
    let mut usages = Vec::new();
    for w in &workspaces {
        for (kind, out) in [
            (TxnKind::Refund, &mut refunds),
            (TxnKind::Usage, &mut usages),
        ] {
            let page = ledger
                .history(
                    &w.workspace,
                    &HistoryFilter::all().kinds([kind]),
                    &PageRequest::first(1000),
                )
                .unwrap();
            for t in page.entries {
                out.push((w.workspace.clone(), t.generation_id, t.amount_credits));
            }
        }
    }
    refunds.sort();
    usages.sort();
    Snapshot {
        workspaces,
        generations,
        totals: ledger.totals().unwrap(),
        refunds,
        usages,
    }
}

fn assert_healthy(ledger: &Ledger, ctx: &str) {
    let report = ledger.verify().unwrap();
    assert!(
        report.is_clean(),
        "{ctx}: audit found {:#?}",
        report.violations
    );
    assert!(
        ledger.totals().unwrap().is_conserved(),
        "{ctx}: credits not conserved"
    );
}

/// Run `prepare` + the case on a fault-free backend: the snapshot before and after, the
/// outcome, and the events of the operation's commit (first event, and its syncs).
struct Probe {
    before: Snapshot,
    after: Snapshot,
    outcome: Result<Outcome, Error>,
    first_event: u64,
    syncs: Vec<u64>,
}

fn probe(case: &Case) -> Probe {
    let clock = ManualClock::new(T0_MS);
    let backend = FaultyBackend::new();
    let ledger = Ledger::open_backend(backend.clone(), options(&clock)).unwrap();
    prepare(&ledger, &clock);
    let before = snapshot(&ledger);
    let first_event = backend.events();
    clock.set_ms(case.at_ms);
    let outcome = exec(&ledger, &case.op);
    let last_event = backend.events();
    let syncs: Vec<u64> = backend
        .report()
        .sync_events
        .into_iter()
        .filter(|e| (first_event..last_event).contains(e))
        .collect();
    assert!(
        !syncs.is_empty(),
        "{}: the operation did not commit",
        case.name
    );
    let after = snapshot(&ledger);
    assert_ne!(
        before, after,
        "{}: the operation changed nothing",
        case.name
    );
    assert_healthy(&ledger, case.name);
    Probe {
        before,
        after,
        outcome,
        first_event,
        syncs,
    }
}

fn unreplayed(r: &Result<Outcome, Error>) -> Result<Outcome, Error> {
    let mut r = r.clone();
    match &mut r {
        Ok(Outcome::Credit(x)) | Ok(Outcome::Adjust(x)) => x.replay = false,
        Ok(Outcome::Start(x)) => x.replay = false,
        Ok(Outcome::Complete(x)) => x.replay = false,
        Ok(Outcome::Fail(x)) => x.replay = false,
        Ok(Outcome::VoidGrant(x)) => x.replay = false,
        // A retry of a late complete whose refund landed finds it refunded: the retry did
        // not write it, so it carries no receipt (the analogue of `replay`).
        Err(Error::GenerationRefunded { refunded_now, .. }) => *refunded_now = None,
        Ok(Outcome::Ack(x)) => x.replay = false,
        Ok(Outcome::Alert(x)) => x.replay = false,
        Ok(Outcome::Sweep(_)) | Err(_) => {}
    }
    r
}

/// How a fault is aimed, and whether the commit must (Some(true)), must not (Some(false)) or
/// may (None) have landed.
struct Fault {
    name: &'static str,
    plan: Plan,
    lands: Option<bool>,
}

fn faults(p: &Probe) -> Vec<Fault> {
    let last_sync = *p.syncs.last().unwrap();
    let first_sync = p.syncs[0];
    let mut v = vec![
        Fault {
            name: "last sync fails, data landed",
            plan: Plan::FailAt {
                at: last_sync,
                failure: Failure::SyncFailsButLands,
            },
            lands: Some(true),
        },
        Fault {
            name: "last sync fails, data lost",
            plan: Plan::FailAt {
                at: last_sync,
                failure: Failure::SyncFailsAndIsLost,
            },
            lands: Some(false),
        },
        Fault {
            name: "first write fails",
            plan: Plan::FailAt {
                at: p.first_event,
                failure: Failure::WriteFails,
            },
            lands: Some(false),
        },
    ];
    if first_sync != last_sync {
        v.push(Fault {
            name: "first sync fails, data landed",
            plan: Plan::FailAt {
                at: first_sync,
                failure: Failure::SyncFailsButLands,
            },
            lands: None,
        });
    }
    v
}

fn is_clear_storage_error(e: &Error) -> bool {
    matches!(e, Error::Storage { .. } | Error::CommitUncertain { .. })
}

#[test]
fn failed_commits_leave_exactly_one_charge_or_refund_after_retry() {
    let mut checked = 0;
    let mut landed_count = 0;
    let mut lost_count = 0;
    let mut errors: std::collections::BTreeMap<String, u32> = Default::default();
    for case in cases() {
        let p = probe(&case);
        for fault in faults(&p) {
            let ctx = format!("{} / {}", case.name, fault.name);
            let clock = ManualClock::new(T0_MS);
            let backend = FaultyBackend::new();
            let ledger = Ledger::open_backend(backend.clone(), options(&clock)).unwrap();
            prepare(&ledger, &clock);
            assert_eq!(snapshot(&ledger), p.before, "{ctx}: preparation differs");
            backend.set_plan(fault.plan);
            clock.set_ms(case.at_ms);
            let r = exec(&ledger, &case.op);
            assert!(
                backend.report().failed_at.is_some(),
                "{ctx}: the fault never fired"
            );
            let e = match r {
                Ok(o) => panic!("{ctx}: a failed commit was acknowledged: {o:?}"),
                Err(e) => e,
            };
            assert!(is_clear_storage_error(&e), "{ctx}: unexpected error {e:?}");
            let kind = match &e {
                Error::CommitUncertain { .. } => "CommitUncertain",
                _ => "Storage",
            };
            *errors.entry(format!("{}: {kind}", fault.name)).or_insert(0) += 1;

            // In process: redb latches the I/O error, so this Ledger refuses every further
            // write and read with a storage error that says to reopen; it never answers wrongly.
            let again = exec(&ledger, &case.op);
            match &again {
                Err(Error::Storage { message }) => assert!(
                    message.contains("re-open") || message.contains("reopen"),
                    "{ctx}: the error after an I/O failure does not say to reopen: {message}"
                ),
                other => panic!("{ctx}: the same Ledger after a commit error answered {other:?}"),
            }
            let other_write = ledger.credit(Credit::purchase("acme", 1, "after-failure"));
            assert!(
                matches!(&other_write, Err(Error::Storage { .. })),
                "{ctx}: an unrelated write after the failure answered {other_write:?}"
            );
            // Reads may still be served (from redb's cache) but show only the last commit known
            // to have succeeded, never the uncertain one.
            let read = ledger.workspaces(None, 100);
            match &read {
                Ok(ws) => assert_eq!(
                    ws, &p.before.workspaces,
                    "{ctx}: a read shows the failed commit"
                ),
                Err(e) => assert!(is_clear_storage_error(e), "{ctx}: a read answered {e:?}"),
            }
            drop(ledger);

            // Reopen from what is on disk.
            let image = backend.durable_image();
            let ledger =
                Ledger::open_backend(FaultyBackend::from_image(image), options(&clock)).unwrap();
            assert_healthy(&ledger, &ctx);
            let got = snapshot(&ledger);
            let landed = if got == p.after {
                true
            } else {
                assert_eq!(
                    got, p.before,
                    "{ctx}: the failed commit is neither whole nor absent"
                );
                false
            };
            if let Some(want) = fault.lands {
                assert_eq!(landed, want, "{ctx}: landed = {landed}");
            }
            if landed {
                landed_count += 1;
            } else {
                lost_count += 1;
            }

            // Retry with the same ids: exactly one effect.
            let retried = exec(&ledger, &case.op);
            if !(landed && matches!(case.op, Op::Sweep { .. })) {
                assert_eq!(
                    unreplayed(&retried),
                    unreplayed(&p.outcome),
                    "{ctx}: retry answered differently"
                );
            }
            let after_retry = snapshot(&ledger);
            assert_eq!(
                after_retry, p.after,
                "{ctx}: retry did not leave exactly one effect"
            );
            if let Some(g) = generation_of(&case.op) {
                let refunds = after_retry
                    .refunds
                    .iter()
                    .filter(|r| r.1.as_deref() == Some(g))
                    .count();
                let usages = after_retry
                    .usages
                    .iter()
                    .filter(|r| r.1.as_deref() == Some(g))
                    .count();
                assert_eq!(usages, 1, "{ctx}: generation {g} charged {usages} times");
                assert!(
                    refunds <= 1,
                    "{ctx}: generation {g} refunded {refunds} times"
                );
            }
            // And once more, for good measure: still one.
            exec(&ledger, &case.op).ok();
            assert_eq!(
                snapshot(&ledger),
                p.after,
                "{ctx}: a second retry changed the state"
            );
            assert_healthy(&ledger, &ctx);
            checked += 1;
        }
    }
    println!(
        "commit-error cases checked: {checked} (the failed commit had landed in {landed_count}, not in {lost_count})"
    );
    println!("errors returned by the failing operation: {errors:?}");
    assert!(landed_count > 0 && lost_count > 0);
}
