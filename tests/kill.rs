//! A real `kill -9` in the middle of a workload, again and again on the same file.
//!
//! The test binary re-executes itself as a child process (`current_exe()` with
//! `--exact kill_child_workload` and the [`CHILD_ENV`] variable set). The child opens the ledger
//! file and runs one round of a deterministic mixed workload (credits, starts, completions,
//! failures, sweeps, replays, lazy expiry), printing each acknowledged operation to stdout and
//! flushing. The parent SIGKILLs it at a moment chosen by a fixed-seed PRNG, then:
//!
//! - reopens the file (timing it: recovery after `kill -9`, including redb's repair and the
//!   catch-up sweep);
//! - checks `verify()` is clean and credits are conserved;
//! - checks that every operation the child acknowledged is there, with the ids it reported;
//! - replays the whole round with the same ids (acknowledged operations come back as replays
//!   with the same ids), then sweeps;
//! - checks that no generation has more than one refund, and that the balances and every
//!   generation's outcome equal those of a reference ledger that ran the same rounds without
//!   any kill.
//!
//! Both processes use a manual clock that reads a time fixed by the round and the operation
//! index, so no one sleeps for a timeout and the outcome does not depend on timing.

#[path = "support/faulty.rs"]
mod faulty;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use credit_ledger::{
    Credit, Error, GenerationState, HistoryFilter, Ledger, ManualClock, Op, Options, Outcome,
    PageRequest, RefundReason, StartGeneration, TxnKind,
};
use faulty::SplitMix64;

/// Set in the child: `<ledger path>|<round>`.
const CHILD_ENV: &str = "CREDIT_LEDGER_KILL_CHILD";
/// Children killed in the middle of their workload (besides those killed while opening the
/// file, and one calibration round that runs whole).
const ROUNDS: u64 = 22;
const OPS_PER_ROUND: u64 = 120;
const T0_MS: u64 = 1_700_000_000_000;
const MINUTE_MS: u64 = 60_000;
/// Clock time between two operations.
const STEP_MS: u64 = 2 * MINUTE_MS;
/// Each round gets this much clock time (operations plus occasional jumps).
const ROUND_MS: u64 = 4 * OPS_PER_ROUND * STEP_MS;
const WORKSPACES: [&str; 4] = ["ws-0", "ws-1", "ws-2", "ws-3"];

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        // A replay runs an earlier operation at its own, earlier time.
        .max_clock_regression_ms(credit_ledger::limits::MAX_CLOCK_REGRESSION_MS)
        // Grants expire 5 to 45 minutes after they are credited: some get their notice at
        // once, the others from a sweep.
        .grant_expiring_notice_ms(Some(20 * MINUTE_MS))
}

/// The operations of round `round`, each with the clock time it runs at.
fn round_ops(round: u64) -> Vec<(u64, Op)> {
    let mut rng = SplitMix64(0x5EED_0000 + round);
    let mut t = T0_MS + round * ROUND_MS;
    let mut ops = Vec::new();
    let mut credits: Vec<Credit> = Vec::new();
    let mut starts: Vec<StartGeneration> = Vec::new();
    let reasons = [
        RefundReason::ModelFailure,
        RefundReason::ApiFailure,
        RefundReason::ServiceUnavailable,
        RefundReason::SystemError,
        RefundReason::InvalidInput,
    ];
    for ws in WORKSPACES {
        let c = Credit::purchase(ws, 1_000, format!("r{round}-fund-{ws}"));
        credits.push(c.clone());
        ops.push((t, Op::Credit(c)));
    }
    while (ops.len() as u64) < OPS_PER_ROUND {
        t += STEP_MS;
        if rng.below(16) == 0 {
            t += 25 * MINUTE_MS;
        }
        let recent = |rng: &mut SplitMix64, starts: &[StartGeneration]| {
            let back = rng.below(starts.len().min(5) as u64) as usize;
            starts[starts.len() - 1 - back].generation_id.clone()
        };
        let op = match rng.below(100) {
            0..=5 => {
                let mut c = Credit::grant(
                    WORKSPACES[rng.below(4) as usize],
                    10 + rng.below(50),
                    format!("r{round}-grant-{}", ops.len()),
                );
                // Half the grants expire within the round: they are spent first, refunds of
                // their charges land in grace parts, and sweeps write their Expirations.
                if rng.coin() {
                    c = c.expires_at_ms(t + (5 + rng.below(40)) * MINUTE_MS);
                }
                credits.push(c.clone());
                Op::Credit(c)
            }
            6..=8 => Op::Credit(credits[rng.below(credits.len() as u64) as usize].clone()),
            9..=50 => {
                let mut s = StartGeneration::new(
                    format!("r{round}-g{}", starts.len()),
                    WORKSPACES[rng.below(4) as usize],
                    ["Quick Video", "Image", "Upscale"][rng.below(3) as usize],
                    1 + rng.below(20),
                );
                if rng.coin() {
                    s = s.timeout_ms((5 + rng.below(20)) * MINUTE_MS);
                }
                starts.push(s.clone());
                Op::Start(s)
            }
            51..=54 if !starts.is_empty() => {
                Op::Start(starts[rng.below(starts.len() as u64) as usize].clone())
            }
            55..=72 if !starts.is_empty() => Op::Complete {
                generation_id: recent(&mut rng, &starts),
            },
            73..=92 if !starts.is_empty() => Op::Fail {
                generation_id: if rng.below(4) == 0 {
                    starts[rng.below(starts.len() as u64) as usize]
                        .generation_id
                        .clone()
                } else {
                    recent(&mut rng, &starts)
                },
                reason: reasons[rng.below(reasons.len() as u64) as usize],
                message: format!("upstream error {}", rng.below(1000)),
            },
            _ => Op::Sweep {
                limit: [1, 3, 500][rng.below(3) as usize],
            },
        };
        ops.push((t, op));
    }
    assert!(
        t < T0_MS + (round + 1) * ROUND_MS,
        "round {round} overruns its time"
    );
    ops
}

fn exec(ledger: &Ledger, op: &Op) -> Result<Outcome, Error> {
    ledger.execute(op.clone())
}

/// What the child reports for one acknowledged operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ack {
    /// A credit, with its transaction id.
    Credit(u64),
    /// A charge, with the Usage transaction id.
    Start(u64),
    /// A successful completion.
    Complete,
    /// A refund (a failure, or a late completion refunded by lazy expiry), with its id.
    Refund(u64),
    /// A sweep: the generations it refunded and their refund ids.
    Sweep(Vec<(String, u64)>),
    /// A refusal that wrote nothing (e.g. failing a generation that had succeeded).
    Refused(String),
}

fn ack_of(r: &Result<Outcome, Error>) -> Ack {
    match r {
        Ok(Outcome::Credit(x)) | Ok(Outcome::Adjust(x)) => Ack::Credit(x.txn_id),
        Ok(Outcome::VoidGrant(x)) => Ack::Credit(x.txn_id),
        Ok(Outcome::Start(c)) => Ack::Start(c.usage_txn),
        Ok(Outcome::Complete(_)) => Ack::Complete,
        Ok(Outcome::Fail(f)) => Ack::Refund(f.refund_txn),
        Ok(Outcome::Sweep(s)) => Ack::Sweep(
            s.refunds
                .iter()
                .map(|f| (f.generation_id.clone(), f.refund_txn))
                .collect(),
        ),
        Err(Error::GenerationRefunded { refund_txn, .. }) => Ack::Refund(*refund_txn),
        Err(e @ (Error::GenerationSucceeded { .. } | Error::Conflict { .. })) => {
            Ack::Refused(format!("{:?}", e.category()))
        }
        Err(e) => panic!("the workload got an unexpected error: {e}"),
        Ok(other) => panic!("the workload sends no operation that answers {other:?}"),
    }
}

fn encode(i: usize, ack: &Ack) -> String {
    match ack {
        Ack::Credit(t) => format!("ACK {i} credit {t}"),
        Ack::Start(t) => format!("ACK {i} start {t}"),
        Ack::Complete => format!("ACK {i} complete"),
        Ack::Refund(t) => format!("ACK {i} refund {t}"),
        Ack::Sweep(v) => {
            let items: Vec<String> = v.iter().map(|(g, t)| format!("{g}={t}")).collect();
            format!("ACK {i} sweep {}", items.join(","))
        }
        Ack::Refused(c) => format!("ACK {i} refused {c}"),
    }
}

fn decode(line: &str) -> Option<(usize, Ack)> {
    let mut parts = line.strip_prefix("ACK ")?.splitn(3, ' ');
    let i: usize = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let rest = parts.next().unwrap_or("");
    let ack = match kind {
        "credit" => Ack::Credit(rest.parse().ok()?),
        "start" => Ack::Start(rest.parse().ok()?),
        "complete" => Ack::Complete,
        "refund" => Ack::Refund(rest.parse().ok()?),
        "sweep" => Ack::Sweep(
            rest.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (g, t) = s.split_once('=')?;
                    Some((g.to_string(), t.parse().ok()?))
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        "refused" => Ack::Refused(rest.to_string()),
        _ => return None,
    };
    Some((i, ack))
}

/// The child's side: run round `round` on the file, printing each acknowledged operation. It
/// does nothing unless [`CHILD_ENV`] is set, i.e. unless the parent test spawned it.
#[test]
fn kill_child_workload() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // Not a child: this entry point only exists for the kill test to re-execute.
    };
    let (path, round) = spec.rsplit_once('|').expect("CHILD_ENV is <path>|<round>");
    let round: u64 = round.parse().expect("round number");
    let ops = round_ops(round);
    let clock = ManualClock::new(ops[0].0);
    let ledger = Ledger::open_with(path, options(&clock)).expect("child: open");
    let mut out = std::io::stdout().lock();
    writeln!(out, "OPEN").unwrap();
    out.flush().unwrap();
    for (i, (at_ms, op)) in ops.iter().enumerate() {
        clock.set_ms(*at_ms);
        let ack = ack_of(&exec(&ledger, op));
        writeln!(out, "{}", encode(i, &ack)).unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
}

/// What the parent has read of the child's output.
#[derive(Default)]
struct Seen {
    acks: Vec<Ack>,
    opened: bool,
    done: bool,
}

impl Seen {
    /// Read one line; false at the end of the output.
    fn read_line(
        &mut self,
        lines: &mut impl Iterator<Item = std::io::Result<String>>,
        ctx: &str,
    ) -> bool {
        let Some(line) = lines.next() else {
            return false;
        };
        let line = line.expect("reading the child's output");
        // libtest may print "test kill_child_workload ... " on the same line first.
        if line.ends_with("OPEN") {
            self.opened = true;
        } else if line == "DONE" {
            self.done = true;
        } else if let Some((i, ack)) = decode(&line) {
            assert_eq!(i, self.acks.len(), "{ctx}: acknowledgements out of order");
            self.acks.push(ack);
        }
        true
    }
}

/// Every refund in the ledger, by generation.
/// The `GrantExpiring` notices of every workspace, by (workspace, grant).
fn notices_by_grant(ledger: &Ledger) -> BTreeMap<(String, String), Vec<u64>> {
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for ws in WORKSPACES {
        let page = match ledger.history(
            ws,
            &HistoryFilter::all().kinds([TxnKind::GrantExpiring]),
            &PageRequest::first(1000),
        ) {
            Ok(p) => p,
            Err(Error::UnknownWorkspace { .. }) => continue,
            Err(e) => panic!("history of {ws}: {e}"),
        };
        assert!(page.next_cursor.is_none(), "more than a page of notices");
        for t in page.entries {
            let grant = t.allocations[0].grant_id.clone();
            out.entry((ws.to_string(), grant)).or_default().push(t.id);
        }
    }
    out
}

fn refunds_by_generation(ledger: &Ledger) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for ws in WORKSPACES {
        let mut cursor = None;
        loop {
            let page = ledger
                .history(
                    ws,
                    &HistoryFilter::all().kinds([TxnKind::Refund]),
                    &PageRequest {
                        limit: 1000,
                        cursor: cursor.take(),
                        oldest_first: false,
                    },
                )
                .unwrap();
            for t in page.entries {
                out.entry(
                    t.generation_id
                        .clone()
                        .expect("a refund names its generation"),
                )
                .or_default()
                .push(t.id);
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    out
}

fn assert_healthy(ledger: &Ledger, ctx: &str) {
    let report = ledger.verify().unwrap();
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

/// Check that an acknowledged operation's effect is in the ledger.
fn assert_ack_present(ledger: &Ledger, op: &Op, ack: &Ack, ctx: &str) {
    let gen_state = |id: &str| ledger.generation(id).map(|g| g.state);
    match (op, ack) {
        (Op::Credit(c), Ack::Credit(txn)) => {
            let t = ledger
                .transaction(*txn)
                .unwrap_or_else(|e| panic!("{ctx}: acknowledged credit #{txn} is missing: {e}"));
            assert_eq!(t.workspace, c.workspace, "{ctx}");
            assert_eq!(
                t.idempotency_key.as_deref(),
                Some(c.idempotency_key.as_str()),
                "{ctx}"
            );
        }
        (Op::Start(s), Ack::Start(usage)) => {
            let g = ledger
                .generation(&s.generation_id)
                .unwrap_or_else(|e| panic!("{ctx}: acknowledged start is missing: {e}"));
            assert_eq!(g.usage_txn, *usage, "{ctx}");
            assert_eq!(g.cost_credits, s.cost_credits, "{ctx}");
        }
        (Op::Complete { generation_id }, Ack::Complete) => {
            assert!(
                matches!(
                    gen_state(generation_id),
                    Ok(GenerationState::Succeeded { .. })
                ),
                "{ctx}: acknowledged completion of {generation_id} is missing"
            );
        }
        // A late complete, a failure report, or a repeated start past the deadline.
        (
            Op::Complete { generation_id }
            | Op::Fail { generation_id, .. }
            | Op::Start(StartGeneration { generation_id, .. }),
            Ack::Refund(txn),
        ) => match gen_state(generation_id) {
            Ok(GenerationState::Refunded { refund_txn, .. }) => {
                assert_eq!(refund_txn, *txn, "{ctx}: {generation_id}")
            }
            other => {
                panic!("{ctx}: acknowledged refund of {generation_id} is missing: {other:?}")
            }
        },
        (Op::Sweep { .. }, Ack::Sweep(list)) => {
            for (g, txn) in list {
                match gen_state(g) {
                    Ok(GenerationState::Refunded { refund_txn, .. }) => {
                        assert_eq!(refund_txn, *txn, "{ctx}: swept {g}")
                    }
                    other => {
                        panic!("{ctx}: acknowledged sweep refund of {g} is missing: {other:?}")
                    }
                }
            }
        }
        (_, Ack::Refused(_)) => {}
        (op, ack) => panic!("{ctx}: acknowledgement {ack:?} does not fit {op:?}"),
    }
}

/// Replaying an acknowledged operation must give the same ids back, and write nothing new.
fn assert_replay_matches(op: &Op, ack: &Ack, replay: &Result<Outcome, Error>, ctx: &str) {
    match (ack, replay) {
        (Ack::Credit(t), Ok(Outcome::Credit(r))) => {
            assert!(r.replay && r.txn_id == *t, "{ctx}: credit replay {r:?}")
        }
        (Ack::Start(t), Ok(Outcome::Start(c))) => {
            assert!(c.replay && c.usage_txn == *t, "{ctx}: start replay {c:?}")
        }
        (Ack::Complete, Ok(Outcome::Complete(c))) => assert!(c.replay, "{ctx}: {c:?}"),
        (Ack::Refund(t), Ok(Outcome::Fail(f))) => {
            assert!(f.replay && f.refund_txn == *t, "{ctx}: refund replay {f:?}")
        }
        (Ack::Refund(t), Err(Error::GenerationRefunded { refund_txn, .. })) => {
            assert_eq!(refund_txn, t, "{ctx}")
        }
        // A repeated start that refunded its expired generation: starting it yet again
        // replays the charge (the refund stands, checked against the ledger above).
        (Ack::Refund(_), Ok(Outcome::Start(c))) if matches!(op, Op::Start(_)) => {
            assert!(c.replay, "{ctx}: start replay {c:?}")
        }
        // A sweep replayed later may find other expired generations; it never re-refunds
        // (checked through the refund counts).
        (Ack::Sweep(_), Ok(Outcome::Sweep(_))) => {}
        (Ack::Refused(_), Err(e)) => assert!(
            matches!(
                e,
                Error::GenerationSucceeded { .. } | Error::Conflict { .. }
            ),
            "{ctx}: {e:?}"
        ),
        _ => panic!("{ctx}: {op:?} was acknowledged as {ack:?}, its replay answered {replay:?}"),
    }
}

/// Balances and each generation's outcome (refund ids aside).
fn outcome(ledger: &Ledger, rounds: u64) -> (Vec<(String, u64)>, BTreeMap<String, String>) {
    let balances = ledger
        .workspaces(None, 100)
        .unwrap()
        .into_iter()
        // What is left plus what lapsed: with expiring grants, when a timeout's refund is
        // written (at a reopen's catch-up sweep, or later) decides which grant a later charge
        // draws on, and so how much later expires.
        .map(|w| {
            (
                w.workspace,
                w.balance_credits + w.expired_credits + w.voided_credits,
            )
        })
        .collect();
    let mut gens = BTreeMap::new();
    for r in 0..rounds {
        for (_, op) in round_ops(r) {
            if let Op::Start(s) = op {
                let state = match ledger.generation(&s.generation_id).map(|g| g.state) {
                    Ok(GenerationState::Running) => "running".to_string(),
                    Ok(GenerationState::Succeeded { .. }) => "succeeded".to_string(),
                    Ok(GenerationState::Refunded { reason, .. }) => format!("refunded:{reason:?}"),
                    Err(e) => format!("error:{e}"),
                };
                gens.insert(s.generation_id, state);
            }
        }
    }
    (balances, gens)
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.redb");
    let exe = std::env::current_exe().unwrap();
    let mut rng = SplitMix64(0x0B1D_4B11);

    // The same rounds, never killed, on an in-memory ledger.
    let ref_clock = ManualClock::new(T0_MS);
    let reference = Ledger::in_memory_with(options(&ref_clock)).unwrap();

    let mut reopen_ms: Vec<f64> = Vec::new();
    let mut killed_mid_op = 0;
    let mut killed_before_open = 0;
    let mut finished_before_kill = 0;
    let mut acked_total = 0;
    let mut round_us = 0;
    let mut round = 0;
    // Rounds continue until ROUNDS children were killed mid-workload: a child that finished before its
    // kill moment does not count (and the kill window shrinks, as the machine is faster than
    // the calibration round suggested).
    while killed_mid_op < ROUNDS {
        assert!(
            round <= 3 * ROUNDS,
            "too few kills landed: {killed_mid_op} after {round} rounds"
        );
        let ops = round_ops(round);
        let ctx = format!("round {round}");

        // The child, killed at a pseudo-random moment.
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_child_workload",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{round}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Seen::default();
        // Round 0 runs whole, to measure how long a round takes; later rounds are killed at a
        // pseudo-random moment within that time (a few while still opening the file).
        let kill_during_open = round > 0 && rng.below(8) == 0;
        if kill_during_open {
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        } else {
            while !seen.opened && seen.read_line(&mut lines, &ctx) {}
            let open_at = Instant::now();
            if round == 0 {
                while !seen.done && seen.read_line(&mut lines, &ctx) {}
                round_us = open_at.elapsed().as_micros().max(1000) as u64;
            } else {
                std::thread::sleep(Duration::from_micros(rng.below(round_us)));
            }
        }
        child.kill().unwrap(); // SIGKILL on unix
        let status = child.wait().unwrap();
        // What the child printed before it died was acknowledged too.
        while seen.read_line(&mut lines, &ctx) {}
        let Seen { acks, opened, done } = seen;
        if done {
            assert!(
                status.success() || status.code().is_none(),
                "{ctx}: child failed: {status:?}"
            );
            if round > 0 {
                finished_before_kill += 1;
                round_us = (round_us * 3 / 4).max(1000);
            }
        } else {
            assert!(
                status.code().is_none(),
                "{ctx}: the child died by itself: {status:?}"
            );
            if opened {
                killed_mid_op += 1;
            } else {
                killed_before_open += 1;
            }
        }
        acked_total += acks.len();

        // Reopen after the kill, at the time of the operation that was in flight.
        let clock = ManualClock::new(ops[acks.len().min(ops.len() - 1)].0);
        let started = Instant::now();
        let ledger = Ledger::open_with(&path, options(&clock))
            .unwrap_or_else(|e| panic!("{ctx}: reopening after kill -9 failed: {e}"));
        reopen_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_healthy(&ledger, &ctx);
        for (i, ack) in acks.iter().enumerate() {
            assert_ack_present(&ledger, &ops[i].1, ack, &format!("{ctx}, op {i}"));
        }

        // Replay the whole round with the same ids, then sweep.
        for (i, (at_ms, op)) in ops.iter().enumerate() {
            clock.set_ms(*at_ms);
            let r = exec(&ledger, op);
            match acks.get(i) {
                Some(ack) => {
                    assert_replay_matches(op, ack, &r, &format!("{ctx}, replay of op {i}"))
                }
                None => {
                    ack_of(&r); // panics on a storage or other unexpected error
                }
            }
        }
        let end_ms = T0_MS + (round + 1) * ROUND_MS - 1;
        clock.set_ms(end_ms);
        ledger.sweep_expired(10_000).unwrap();
        assert_healthy(&ledger, &ctx);

        // No refund paid twice, and every refunded generation has its one refund.
        let refunds = refunds_by_generation(&ledger);
        for (g, ids) in &refunds {
            assert_eq!(
                ids.len(),
                1,
                "{ctx}: generation {g} refunded {} times: {ids:?}",
                ids.len()
            );
        }

        // No grant told twice that it expires.
        for (g, ids) in notices_by_grant(&ledger) {
            assert_eq!(
                ids.len(),
                1,
                "{ctx}: grant {g:?} noticed {} times: {ids:?}",
                ids.len()
            );
        }

        // The reference runs the round whole.
        for (at_ms, op) in &ops {
            ref_clock.set_ms(*at_ms);
            ack_of(&exec(&reference, op));
        }
        ref_clock.set_ms(end_ms);
        reference.sweep_expired(10_000).unwrap();
        let (got, want) = (outcome(&ledger, round + 1), outcome(&reference, round + 1));
        assert_eq!(
            got.0, want.0,
            "{ctx}: balances differ from the never-killed run"
        );
        assert_eq!(
            got.1, want.1,
            "{ctx}: generation outcomes differ from the never-killed run"
        );
        let refunded = got.1.values().filter(|s| s.starts_with("refunded")).count();
        assert_eq!(
            refunded,
            refunds.len(),
            "{ctx}: refunded generations vs refund transactions"
        );
        drop(ledger);
        round += 1;
    }
    assert!(path.exists() && Path::new(&path).metadata().unwrap().len() > 0);
    let notices = notices_by_grant(&reference).len();
    assert!(notices > 0, "the rounds wrote no grant-expiring notice");
    println!("grant-expiring notices in the never-killed run: {notices}");
    reopen_ms.sort_by(f64::total_cmp);
    println!(
        "kill -9 rounds: {} killed ({killed_mid_op} mid-workload, {killed_before_open} while opening) in {round} rounds after one whole calibration round ({finished_before_kill} children finished before their kill; kill window now {round_us} us); {acked_total} acknowledged operations checked; file {} KiB",
        killed_mid_op + killed_before_open,
        std::fs::metadata(&path).unwrap().len() / 1024
    );
    println!(
        "reopen after kill -9: min {:.1} ms, median {:.1} ms, max {:.1} ms (includes redb recovery and the catch-up sweep)",
        reopen_ms[0],
        reopen_ms[reopen_ms.len() / 2],
        reopen_ms[reopen_ms.len() - 1]
    );
    assert!(killed_mid_op >= 20 && killed_mid_op + killed_before_open >= ROUNDS);
}
