//! Crash consistency at every I/O event of a scripted workload.
//!
//! A fault-free run of a ~200-operation script (credits, starts, completions, failures,
//! sweeps, replays, lazy expiry, clock jumps) on a recording [`FaultyBackend`] counts its
//! storage events (writes and syncs), records every storage call, and records the ledger's
//! observable state after every operation. Then, for **every** event N of that run, in three
//! crash modes (every unsynced write lost; a random subset landed with one write torn; and, at
//! each sync, the sync completed but the caller never heard), it takes the image a crash at
//! event N leaves, reopens it and checks:
//!
//! 1. every acknowledged operation is there: the state is at least the state after the last
//!    acknowledged operation;
//! 2. the operation in flight is there whole or not at all: the state equals exactly the state
//!    before it or the state after it;
//! 3. `verify()` is clean and credits are conserved;
//! 4. retrying the in-flight operation with the same ids gives exactly one effect: the state
//!    then equals the fault-free state after it (one charge, one refund), and the receipt is
//!    the fault-free receipt (marked as a replay when the operation had landed). A sweep has no
//!    ids: retried, it may refund more expired generations, never one already refunded.
//!
//! The crash images are computed from the recorded calls ([`CrashImages`]): the script is
//! deterministic, so a run that crashes at event N issues exactly the calls of the fault-free
//! run up to N. A sample of crash points is also run live (the script runs on a backend that
//! really crashes at N, every acknowledged answer must equal the fault-free one, and a write
//! after the crash must fail), and the live image must equal the computed one byte for byte.
//! Computing the images keeps the test to seconds instead of re-running the script thousands
//! of times.
//!
//! A second reopen of the same image uses the default `sweep_on_open`, with the clock at the
//! in-flight operation's time: the catch-up sweep may refund what expired, but must not touch
//! anything that had finished; then (for one point in 16) the rest of the script runs to its
//! end, and the final balances and generation outcomes must match the fault-free run's.

#[path = "support/faulty.rs"]
mod faulty;

use std::collections::BTreeMap;
use std::time::Instant;

use credit_ledger::Ledger;
use credit_ledger::{
    Adjust, Credit, Durability, Error, GenerationState, GrantState, GrantView, HistoryFilter,
    LedgerTotals, ManualClock, Op, Options, Outcome, PageRequest, RefundReason, StartGeneration,
    TxnKind, VoidGrant, WorkspaceSummary,
};
use faulty::{CrashImages, CrashMode, FaultyBackend, IoLog, Plan, SplitMix64};

const T0_MS: u64 = 1_700_000_000_000;
const MINUTE_MS: u64 = 60_000;
const WORKSPACES: [&str; 3] = ["acme", "globex", "initech"];
const CONSUMERS: [&str; 2] = ["server-sync", "analytics"];

/// One scripted operation and the clock reading it runs at.
#[derive(Debug, Clone)]
struct Step {
    at_ms: u64,
    op: Op,
}

/// The scripted workload: deterministic, about 200 operations.
fn script() -> Vec<Step> {
    let mut rng = SplitMix64(0xC4A5_2026);
    let mut steps = Vec::new();
    let mut t = T0_MS;
    let mut credit_keys: Vec<Credit> = Vec::new();
    let mut starts: Vec<StartGeneration> = Vec::new();
    let reasons = [
        RefundReason::ModelFailure,
        RefundReason::ApiFailure,
        RefundReason::ServiceUnavailable,
        RefundReason::SystemError,
        RefundReason::InvalidInput,
    ];
    for (i, ws) in WORKSPACES.iter().enumerate() {
        let c = Credit::purchase(*ws, 2_000, format!("order-{i}"));
        credit_keys.push(c.clone());
        steps.push(Step {
            at_ms: t,
            op: Op::Credit(c),
        });
        // Balance alerts that the charges cross, so that notifications are written (and
        // must survive) in the same commits as the charges that cross them.
        steps.push(Step {
            at_ms: t,
            op: Op::SetAlert {
                workspace: ws.to_string(),
                // Near where grants and charges keep the balance, so that it crosses often.
                threshold_credits: Some([1_995, 2_040, 2_120][i]),
            },
        });
    }
    while steps.len() < 200 {
        t += MINUTE_MS;
        if rng.below(12) == 0 {
            // A jump: generations with short timeouts expire without anyone looking.
            t += (15 + rng.below(30)) * MINUTE_MS;
        }
        let pick_gen =
            |rng: &mut SplitMix64| starts[rng.below(starts.len() as u64) as usize].clone();
        let op = match rng.below(110) {
            // A consumer of the change feed acks a position that never goes back: mostly
            // forward, sometimes the same (a replay), sometimes past the end (refused).
            // Move a workspace's alert to near where its balance drifts (grants outweigh
            // charges, about 1.5 credits a step), so that charges cross it again and again.
            104..=109 => Op::SetAlert {
                workspace: WORKSPACES[rng.below(3) as usize].to_string(),
                threshold_credits: Some(2_000 + steps.len() as u64 * 3 / 2 + rng.below(10)),
            },
            100..=103 => Op::Ack {
                consumer: CONSUMERS[rng.below(2) as usize].to_string(),
                // Multiples of 10 that grow with the script: acks of the same position repeat.
                txn_id: steps.len() as u64 / 20 * 10,
            },
            0..=7 => {
                let mut c = Credit::grant(
                    WORKSPACES[rng.below(3) as usize],
                    20 + rng.below(60),
                    format!("grant-{}", steps.len()),
                );
                // Half the grants expire within the run (and are spent first while they
                // last), so sweeps write Expirations and refunds land in grace parts.
                if rng.coin() {
                    c = c
                        .priority(rng.below(2) as u32 * 100)
                        .expires_at_ms(t + (10 + rng.below(120)) * MINUTE_MS);
                }
                credit_keys.push(c.clone());
                Op::Credit(c)
            }
            8..=10 => Op::Credit(credit_keys[rng.below(credit_keys.len() as u64) as usize].clone()),
            11..=13 => {
                let ws = WORKSPACES[rng.below(3) as usize];
                let amount = if rng.coin() { 5 } else { -3 };
                Op::Adjust(Adjust::new(
                    ws,
                    amount,
                    format!("adj-{}", steps.len()),
                    "support fix",
                ))
            }
            14..=42 => {
                let mut s = StartGeneration::new(
                    format!("gen-{}", starts.len()),
                    WORKSPACES[rng.below(3) as usize],
                    ["Quick Video", "Image", "Upscale"][rng.below(3) as usize],
                    1 + rng.below(15),
                );
                match rng.below(3) {
                    0 => s = s.timeout_ms(5 * MINUTE_MS),
                    1 => s = s.timeout_ms(20 * MINUTE_MS),
                    _ => {} // the default, 150 minutes
                }
                starts.push(s.clone());
                Op::Start(s)
            }
            43..=46 if !starts.is_empty() => Op::Start(pick_gen(&mut rng)),
            47..=66 if !starts.is_empty() => {
                // Mostly recent generations, so that many complete before their deadline.
                let g = if rng.coin() {
                    starts[starts.len() - 1 - rng.below(starts.len().min(4) as u64) as usize]
                        .clone()
                } else {
                    pick_gen(&mut rng)
                };
                Op::Complete {
                    generation_id: g.generation_id,
                }
            }
            67..=88 if !starts.is_empty() => {
                let g = if rng.coin() {
                    starts[starts.len() - 1 - rng.below(starts.len().min(4) as u64) as usize]
                        .clone()
                } else {
                    pick_gen(&mut rng)
                };
                Op::Fail {
                    generation_id: g.generation_id,
                    reason: reasons[rng.below(reasons.len() as u64) as usize],
                    message: format!("upstream error {}", rng.below(1000)),
                }
            }
            89..=90 if credit_keys.len() > WORKSPACES.len() => {
                // A given grant, never a workspace's purchase: the script must not run dry.
                let given = &credit_keys[WORKSPACES.len()..];
                let c = &given[rng.below(given.len() as u64) as usize];
                Op::VoidGrant(VoidGrant::new(
                    c.workspace.clone(),
                    c.idempotency_key.clone(),
                    format!("void-{}", steps.len()),
                    "granted twice",
                ))
            }
            _ => Op::Sweep {
                limit: [1, 2, 100][rng.below(3) as usize],
            },
        };
        steps.push(Step { at_ms: t, op });
    }
    // Past every deadline: the final sweep refunds everything still running.
    t += 8 * 60 * MINUTE_MS;
    steps.push(Step {
        at_ms: t,
        op: Op::Sweep { limit: 1000 },
    });
    steps
}

fn exec(ledger: &Ledger, op: &Op) -> Result<Outcome, Error> {
    ledger.execute(op.clone())
}

/// The same outcome with every `replay` flag cleared.
fn unreplayed(r: &Result<Outcome, Error>) -> Result<Outcome, Error> {
    let mut r = r.clone();
    match &mut r {
        Ok(Outcome::Credit(x)) | Ok(Outcome::Adjust(x)) => x.replay = false,
        Ok(Outcome::Start(x)) => x.replay = false,
        Ok(Outcome::Complete(x)) => x.replay = false,
        Ok(Outcome::Fail(x)) => x.replay = false,
        Ok(Outcome::VoidGrant(x)) => x.replay = false,
        // A retry of a late complete whose refund landed did not write it: no receipt.
        Err(Error::GenerationRefunded { refunded_now, .. }) => *refunded_now = None,
        Ok(Outcome::Ack(x)) => x.replay = false,
        Ok(Outcome::Alert(x)) => x.replay = false,
        Ok(Outcome::Sweep(_)) | Err(_) => {}
    }
    r
}

/// Did this outcome write anything (as opposed to a replay or a refusal)?
fn wrote(r: &Result<Outcome, Error>) -> bool {
    match r {
        Ok(Outcome::Credit(x)) | Ok(Outcome::Adjust(x)) => !x.replay,
        Ok(Outcome::Start(x)) => !x.replay,
        Ok(Outcome::Complete(x)) => !x.replay,
        Ok(Outcome::Fail(x)) => !x.replay,
        Ok(Outcome::VoidGrant(x)) => !x.replay,
        Ok(Outcome::Ack(x)) => !x.replay,
        Ok(Outcome::Alert(x)) => !x.replay,
        Ok(Outcome::Sweep(s)) => !s.refunds.is_empty() || !s.expirations.is_empty(),
        // Lazy expiry: a late completion refunds in the same write, and says so.
        Err(Error::GenerationRefunded { refunded_now, .. }) => refunded_now.is_some(),
        Err(_) => false,
    }
}

/// A grant as the log leaves it: its view with the clock-dependent state replaced by whether
/// (and how) it was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GrantFacts {
    view: GrantView,
    closed: Option<GrantState>,
}

/// Everything a user can observe about the ledger's money and generations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    workspaces: Vec<WorkspaceSummary>,
    /// Every grant (and refund-grace part) of every workspace, with what the log decides
    /// (not what the clock does: whether it is spendable right now is left out).
    grants: Vec<GrantFacts>,
    generations: BTreeMap<String, GenerationState>,
    totals: LedgerTotals,
    /// Each consumer's stored position in the change feed.
    positions: Vec<u64>,
    /// Each workspace's balance alert threshold.
    alerts: Vec<Option<u64>>,
    /// The length of the log, notifications included.
    last_txn_id: u64,
    /// The `BalanceLow` notifications in the workspaces' histories.
    balance_low: usize,
    /// The `GrantExpiring` notices in the workspaces' histories.
    grant_expiring: usize,
}

fn snapshot(ledger: &Ledger, gen_ids: &[String]) -> Snapshot {
    let workspaces = ledger.workspaces(None, 1000).expect("list workspaces");
    let mut generations = BTreeMap::new();
    for id in gen_ids {
        match ledger.generation(id) {
            Ok(v) => {
                generations.insert(id.clone(), v.state);
            }
            Err(Error::UnknownGeneration { .. }) => {}
            Err(e) => panic!("reading generation {id}: {e}"),
        }
    }
    let grants = workspaces
        .iter()
        .flat_map(|w| ledger.grants(&w.workspace).expect("grants"))
        .map(|g| GrantFacts {
            closed: matches!(
                g.state,
                GrantState::Expired { .. } | GrantState::Voided { .. }
            )
            .then_some(g.state),
            view: GrantView {
                state: GrantState::Spendable,
                ..g
            },
        })
        .collect();
    // The split of each balance by the clock is a read-time view, not state.
    let workspaces = workspaces
        .into_iter()
        .map(|w| WorkspaceSummary {
            spendable_credits: 0,
            pending_credits: 0,
            expired_unswept_credits: 0,
            next_expiry: None,
            ..w
        })
        .collect();
    Snapshot {
        workspaces,
        grants,
        generations,
        totals: ledger.totals().expect("totals"),
        positions: CONSUMERS
            .iter()
            .map(|c| ledger.position(c).expect("position"))
            .collect(),
        alerts: WORKSPACES
            .iter()
            .map(|w| ledger.alert(w).expect("alert"))
            .collect(),
        last_txn_id: ledger.changes(0, 1).expect("changes").last_txn_id,
        balance_low: count_kind(ledger, TxnKind::BalanceLow),
        grant_expiring: count_kind(ledger, TxnKind::GrantExpiring),
    }
}

/// How many transactions of `kind` the workspaces' histories hold.
fn count_kind(ledger: &Ledger, kind: TxnKind) -> usize {
    WORKSPACES
        .iter()
        .map(|w| {
            match ledger.history(
                w,
                &HistoryFilter::all().kinds([kind]),
                &PageRequest::first(1000),
            ) {
                Ok(page) => page.entries.len(),
                Err(Error::UnknownWorkspace { .. }) => 0,
                Err(e) => panic!("history of {w}: {e}"),
            }
        })
        .sum()
}

/// The outcome of a generation with the refund's transaction id left out, for comparing runs
/// whose refunds were written in a different order.
fn outcome_kind(s: &GenerationState) -> String {
    match s {
        GenerationState::Running => "running".into(),
        GenerationState::Succeeded { .. } => "succeeded".into(),
        GenerationState::Refunded { reason, .. } => format!("refunded:{reason:?}"),
    }
}

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .durability(Durability::Immediate)
        // The script jumps the clock backwards on retries of an earlier operation.
        .max_clock_regression_ms(credit_ledger::limits::MAX_CLOCK_REGRESSION_MS)
        // Grants expire 10 to 130 minutes after they are credited: some get their notice at
        // once, the others from a sweep, and each must survive every crash exactly once.
        .grant_expiring_notice_ms(Some(30 * MINUTE_MS))
}

fn assert_healthy(ledger: &Ledger, ctx: &str) {
    let report = ledger
        .verify()
        .unwrap_or_else(|e| panic!("{ctx}: verify failed: {e}"));
    assert!(
        report.is_clean(),
        "{ctx}: audit found {:#?}",
        report.violations
    );
    let totals = ledger.totals().unwrap();
    assert!(
        totals.is_conserved(),
        "{ctx}: credits not conserved: {totals:?}"
    );
}

/// The fault-free run: outcomes, the state after each step, the event count before each step.
struct Reference {
    outcomes: Vec<Result<Outcome, Error>>,
    /// `snaps[0]` is the freshly opened ledger; `snaps[i + 1]` the state after step `i`.
    snaps: Vec<Snapshot>,
    /// `events_before[i]`: events issued before step `i` started; the last entry is the total.
    events_before: Vec<u64>,
    /// Every storage call of the run.
    log: IoLog,
}

fn gen_ids(steps: &[Step]) -> Vec<String> {
    let mut ids: Vec<String> = steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::Start(st) => Some(st.generation_id.clone()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn reference(steps: &[Step], ids: &[String]) -> Reference {
    let clock = ManualClock::new(T0_MS);
    let backend = FaultyBackend::recording();
    let ledger = Ledger::open_backend(backend.clone(), options(&clock)).unwrap();
    let mut r = Reference {
        outcomes: Vec::new(),
        snaps: vec![snapshot(&ledger, ids)],
        events_before: Vec::new(),
        log: IoLog::default(),
    };
    for step in steps {
        r.events_before.push(backend.events());
        clock.set_ms(step.at_ms);
        r.outcomes.push(exec(&ledger, &step.op));
        r.snaps.push(snapshot(&ledger, ids));
    }
    r.events_before.push(backend.events());
    r.log = backend.io_log();
    assert_healthy(&ledger, "fault-free run");
    r
}

/// What one crash point showed.
#[derive(Default)]
struct Tally {
    points: u64,
    landed: u64,
    not_landed: u64,
    during_open: u64,
    creation_unopenable: u64,
    retried_replays: u64,
    continued: u64,
}

/// Run the script on a backend that crashes at event `n`: the post-crash image, and the step in
/// flight (`None`: the crash hit while the ledger was being created). Every step answered
/// before the crash must answer exactly as in the fault-free run.
fn live_crash(
    steps: &[Step],
    ids: &[String],
    reference: &Reference,
    n: u64,
    mode: CrashMode,
) -> (Vec<u8>, Option<usize>) {
    let ctx = format!("live crash at event {n} ({mode:?})");
    let clock = ManualClock::new(T0_MS);
    let backend = FaultyBackend::with_plan(Plan::CrashAt { at: n, mode });
    let mut in_flight: Option<usize> = None;
    match Ledger::open_backend(backend.clone(), options(&clock)) {
        Err(e) => {
            assert!(backend.crashed(), "{ctx}: open failed without a crash: {e}");
        }
        Ok(ledger) => {
            assert_eq!(reference.snaps[0], snapshot(&ledger, ids));
            for (i, step) in steps.iter().enumerate() {
                clock.set_ms(step.at_ms);
                let r = exec(&ledger, &step.op);
                if backend.crashed() && r.is_err() {
                    in_flight = Some(i);
                    break;
                }
                // Acknowledged: exactly what the fault-free run answered.
                assert_eq!(
                    r, reference.outcomes[i],
                    "{ctx}: step {i} answered differently"
                );
            }
            assert!(in_flight.is_some(), "{ctx}: the workload never crashed");
            // After the crash every write fails, and nothing panics.
            let late = ledger.credit(Credit::purchase("acme", 1, "after-the-crash"));
            assert!(
                late.is_err(),
                "{ctx}: a write after the crash answered {late:?}"
            );
        }
    }
    assert!(backend.crashed());
    (backend.durable_image(), in_flight)
}

/// The step in flight at event `n` of the fault-free run (`None`: during creation).
fn in_flight_at(reference: &Reference, n: u64) -> Option<usize> {
    let eb = &reference.events_before;
    if n < eb[0] {
        return None;
    }
    Some(eb.partition_point(|e| *e <= n) - 1)
}

/// Reopen the image a crash at event `n` left, and check the four promises.
#[allow(clippy::too_many_arguments)]
fn check_crash_point(
    steps: &[Step],
    ids: &[String],
    reference: &Reference,
    n: u64,
    mode: CrashMode,
    image: Vec<u8>,
    in_flight: Option<usize>,
    continue_to_end: bool,
    tally: &mut Tally,
) {
    let ctx = format!("crash at event {n} ({mode:?}), in flight: step {in_flight:?}");
    let clock = ManualClock::new(T0_MS);
    tally.points += 1;

    // The state may be that before the in-flight step (index k) or after it (k + 1).
    let k = in_flight.map_or(0, |i| i);
    let before = &reference.snaps[if in_flight.is_some() { k } else { 0 }];
    let after = &reference.snaps[if in_flight.is_some() { k + 1 } else { 0 }];
    let at_ms = in_flight.map_or(T0_MS, |i| steps[i].at_ms);

    // Reopen 1: no catch-up sweep, so the state can be compared exactly.
    clock.set_ms(at_ms);
    let ledger = match Ledger::open_backend(
        FaultyBackend::from_image(image.clone()),
        options(&clock).sweep_on_open(false),
    ) {
        Ok(l) => l,
        Err(e) if in_flight.is_none() => {
            // A crash while the file was being created, before anything was acknowledged:
            // redb may find no valid header. That must be a typed error, not a panic.
            assert!(
                matches!(e, Error::Storage { .. } | Error::NotALedger { .. }),
                "{ctx}: a file whose creation crashed gave {e:?}"
            );
            tally.during_open += 1;
            tally.creation_unopenable += 1;
            return;
        }
        Err(e) => panic!("{ctx}: reopening the post-crash image failed: {e}"),
    };
    let got = snapshot(&ledger, ids);
    let landed = if got == *after {
        true
    } else if got == *before {
        false
    } else {
        panic!(
            "{ctx}: in flight: step {in_flight:?} {:?}; the reopened state is neither the state before it nor after it\n got: {got:#?}\n before: {before:#?}\n after: {after:#?}",
            in_flight.map(|i| &steps[i].op)
        );
    };
    assert_healthy(&ledger, &ctx);
    let Some(i) = in_flight else {
        tally.during_open += 1;
        return;
    };
    if landed && wrote(&reference.outcomes[i]) {
        tally.landed += 1;
    } else {
        tally.not_landed += 1;
    }

    // Retry the in-flight operation with the same ids: exactly one effect.
    let retried = exec(&ledger, &steps[i].op);
    let want = &reference.outcomes[i];
    if !matches!(steps[i].op, Op::Sweep { .. }) || !landed {
        assert_eq!(
            unreplayed(&retried),
            unreplayed(want),
            "{ctx}: retrying step {i} ({:?}) answered differently",
            steps[i].op
        );
    }
    if landed && wrote(want) && !matches!(steps[i].op, Op::Sweep { .. }) {
        // A landed write comes back as a replay, never as a second charge or refund.
        let replay = match &retried {
            Ok(Outcome::Credit(x)) | Ok(Outcome::Adjust(x)) => x.replay,
            Ok(Outcome::Start(x)) => x.replay,
            Ok(Outcome::Complete(x)) => x.replay,
            Ok(Outcome::Fail(x)) => x.replay,
            Ok(Outcome::VoidGrant(x)) => x.replay,
            Ok(Outcome::Ack(x)) => x.replay,
            Ok(Outcome::Alert(x)) => x.replay,
            Err(Error::GenerationRefunded { .. }) => true,
            other => panic!("{ctx}: unexpected retry outcome {other:?}"),
        };
        assert!(
            replay,
            "{ctx}: the landed step {i} was applied again: {retried:?}"
        );
        tally.retried_replays += 1;
    }
    if landed && matches!(steps[i].op, Op::Sweep { .. }) {
        // A sweep has no ids: run again, it sweeps again. It must only refund generations that
        // were still running, never one the landed sweep (or anyone) had refunded.
        let Ok(Outcome::Sweep(again)) = &retried else {
            panic!("{ctx}: retrying a sweep answered {retried:?}");
        };
        for r in &again.refunds {
            assert_eq!(
                after.generations.get(&r.generation_id),
                Some(&GenerationState::Running),
                "{ctx}: the retried sweep refunded {} again",
                r.generation_id
            );
        }
        tally.retried_replays += 1;
        assert_healthy(&ledger, &ctx);
    } else {
        assert_eq!(
            snapshot(&ledger, ids),
            reference.snaps[i + 1],
            "{ctx}: after retrying step {i} ({:?}) the state differs from the fault-free run",
            steps[i].op
        );
    }
    assert_healthy(&ledger, &ctx);
    drop(ledger);

    // Reopen 2: the default catch-up sweep, at the in-flight operation's time.
    clock.set_ms(at_ms);
    let ledger = Ledger::open_backend(FaultyBackend::from_image(image), options(&clock))
        .unwrap_or_else(|e| panic!("{ctx}: reopening with sweep_on_open failed: {e}"));
    assert_healthy(&ledger, &ctx);
    let swept = snapshot(&ledger, ids);
    let base = if landed { after } else { before };
    for (id, state) in &base.generations {
        let now = &swept.generations[id];
        match state {
            GenerationState::Running => assert!(
                matches!(now, GenerationState::Running)
                    || matches!(
                        now,
                        GenerationState::Refunded {
                            reason: RefundReason::Timeout,
                            ..
                        }
                    ),
                "{ctx}: catch-up sweep turned running {id} into {now:?}"
            ),
            finished => assert_eq!(finished, now, "{ctx}: catch-up sweep changed finished {id}"),
        }
    }
    if !continue_to_end {
        return;
    }
    for step in &steps[i..] {
        clock.set_ms(step.at_ms);
        let r = exec(&ledger, &step.op);
        assert!(
            !matches!(
                r,
                Err(Error::Storage { .. }
                    | Error::CommitUncertain { .. }
                    | Error::Corruption { .. }
                    | Error::InsufficientCredits { .. })
            ),
            "{ctx}: continuing with {:?} failed: {r:?}",
            step.op
        );
    }
    assert_healthy(&ledger, &ctx);
    let end = snapshot(&ledger, ids);
    let want = reference.snaps.last().unwrap();
    // With grants, when a refund lands decides which grant a later charge draws on: the
    // catch-up sweep at the reopen can write a timeout's refund earlier than the fault-free
    // run did, so what later expires or is voided (and so the balance) may move between
    // them. Every credit that came in or went out by a charge or a refund must match, and
    // what is left plus what lapsed.
    let kept = |t: &LedgerTotals| LedgerTotals {
        balance_credits: t.balance_credits + t.expired_credits + t.voided_credits,
        expired_credits: 0,
        voided_credits: 0,
        ..t.clone()
    };
    assert_eq!(
        kept(&end.totals),
        kept(&want.totals),
        "{ctx}: final totals differ"
    );
    let balances = |s: &Snapshot| -> Vec<(String, u64)> {
        s.workspaces
            .iter()
            .map(|w| {
                (
                    w.workspace.clone(),
                    w.balance_credits + w.expired_credits + w.voided_credits,
                )
            })
            .collect()
    };
    assert_eq!(
        balances(&end),
        balances(want),
        "{ctx}: final balances differ"
    );
    for (id, state) in &want.generations {
        assert_eq!(
            outcome_kind(&end.generations[id]),
            outcome_kind(state),
            "{ctx}: generation {id} ended differently"
        );
    }
    tally.continued += 1;
}

#[test]
fn every_crash_point_recovers_acknowledged_work_exactly_once() {
    let started = Instant::now();
    let steps = script();
    let ids = gen_ids(&steps);
    let reference = reference(&steps, &ids);
    println!("reference run: {:.3} s", started.elapsed().as_secs_f64());

    // The script must really cover what it claims to.
    let count = |f: &dyn Fn(&Op, &Result<Outcome, Error>) -> bool| {
        steps
            .iter()
            .zip(&reference.outcomes)
            .filter(|(s, r)| f(&s.op, r))
            .count()
    };
    let coverage = [
        (
            "credits",
            count(&|o, r| matches!(o, Op::Credit(_)) && wrote(r)),
        ),
        (
            "credit replays",
            count(&|o, r| matches!(o, Op::Credit(_)) && !wrote(r) && r.is_ok()),
        ),
        (
            "adjustments",
            count(&|o, r| matches!(o, Op::Adjust(_)) && wrote(r)),
        ),
        (
            "starts",
            count(&|o, r| matches!(o, Op::Start(_)) && wrote(r)),
        ),
        (
            "start replays",
            count(&|o, r| matches!(o, Op::Start(_)) && !wrote(r) && r.is_ok()),
        ),
        (
            "completions",
            count(&|_, r| matches!(r, Ok(Outcome::Complete(c)) if !c.replay)),
        ),
        (
            "completion replays",
            count(&|_, r| matches!(r, Ok(Outcome::Complete(c)) if c.replay)),
        ),
        (
            "failure refunds",
            count(
                &|_, r| matches!(r, Ok(Outcome::Fail(f)) if !f.replay && f.reason != RefundReason::Timeout),
            ),
        ),
        (
            "late failures (lazy expiry)",
            count(
                &|_, r| matches!(r, Ok(Outcome::Fail(f)) if !f.replay && f.reason == RefundReason::Timeout),
            ),
        ),
        (
            "late completions (lazy expiry)",
            count(&|o, r| {
                matches!(o, Op::Complete { .. })
                    && matches!(
                        r,
                        Err(Error::GenerationRefunded {
                            reason: RefundReason::Timeout,
                            ..
                        })
                    )
            }),
        ),
        (
            "refund replays",
            count(&|_, r| matches!(r, Ok(Outcome::Fail(f)) if f.replay)),
        ),
        (
            "sweeps that refunded",
            count(&|_, r| matches!(r, Ok(Outcome::Sweep(s)) if !s.refunds.is_empty())),
        ),
        (
            "sweeps that expired grants",
            count(&|_, r| matches!(r, Ok(Outcome::Sweep(s)) if !s.expirations.is_empty())),
        ),
        (
            "grant voids",
            count(&|_, r| matches!(r, Ok(Outcome::VoidGrant(v)) if !v.replay)),
        ),
        (
            "refunds into a grace part",
            count(
                &|_, r| matches!(r, Ok(Outcome::Fail(f)) if !f.replay && f.allocations.iter().any(|a| a.lot > 0)),
            ),
        ),
        (
            "fail after success (refused)",
            count(&|_, r| matches!(r, Err(Error::GenerationSucceeded { .. }))),
        ),
        (
            "consumer acks",
            count(&|_, r| matches!(r, Ok(Outcome::Ack(a)) if !a.replay)),
        ),
        (
            "ack replays",
            count(&|_, r| matches!(r, Ok(Outcome::Ack(a)) if a.replay)),
        ),
        (
            "balance alerts set",
            count(&|_, r| matches!(r, Ok(Outcome::Alert(a)) if !a.replay)),
        ),
    ];
    for (what, n) in coverage {
        assert!(n >= 1, "the script has no {what}: {coverage:?}");
    }
    let notifications = reference.snaps.last().unwrap().balance_low;
    assert!(
        notifications >= 3,
        "the script crosses too few alerts: {notifications}"
    );
    println!("balance-low notifications written: {notifications}");
    let notices = reference.snaps.last().unwrap().grant_expiring;
    assert!(
        notices >= 2,
        "the script writes too few grant notices: {notices}"
    );
    println!("grant-expiring notices written: {notices}");
    assert_eq!(
        count(&|_, r| matches!(r, Err(Error::InsufficientCredits { .. }))),
        0,
        "the script must not run out of credits"
    );
    let total = *reference.events_before.last().unwrap();
    println!(
        "script: {} operations, {} storage events (writes + syncs); coverage {coverage:?}",
        steps.len(),
        total
    );

    let mut tally = Tally::default();
    let mut images = CrashImages::new(reference.log.clone());
    assert_eq!(reference.log.events(), total);
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::Torn { seed: 0x70E2 },
        CrashMode::AfterSync,
    ];
    let mut live_checked = 0;
    for n in 0..total {
        for mode in modes {
            // A crash "after" a write is the same as dropping it: only syncs differ.
            if mode == CrashMode::AfterSync && !reference.log.is_sync(n) {
                continue;
            }
            let image = images.image_at(n, mode);
            let in_flight = in_flight_at(&reference, n);
            // The computed image must be the one a live crash leaves: confirm on a sample.
            if n % 41 == 0 || n < 24 {
                let (live_image, live_in_flight) = live_crash(&steps, &ids, &reference, n, mode);
                assert_eq!(
                    live_in_flight, in_flight,
                    "event {n} ({mode:?}): in-flight step"
                );
                assert!(
                    live_image == image,
                    "event {n} ({mode:?}): the live crash image differs"
                );
                live_checked += 1;
            }
            // Continuing to the end costs a full run: do it for a spread of points.
            let continue_to_end = n % 16 == 0;
            check_crash_point(
                &steps,
                &ids,
                &reference,
                n,
                mode,
                image,
                in_flight,
                continue_to_end,
                &mut tally,
            );
        }
    }
    println!(
        "crash points checked: {} ({} events: dropped and torn at each, synced-but-unacknowledged at each sync); in-flight landed: {}, not landed: {}, during creation: {} (of which {} left a file redb refuses, with a typed error); landed retries answered as replays: {}; continued to the end: {}; {:.1} s",
        tally.points,
        total,
        tally.landed,
        tally.not_landed,
        tally.during_open,
        tally.creation_unopenable,
        tally.retried_replays,
        tally.continued,
        started.elapsed().as_secs_f64()
    );
    println!("live crashes run (their images matched the computed ones): {live_checked}");
    assert!(tally.points >= 2 * total);
    assert!(tally.landed > 0 && tally.not_landed > 0);
}
