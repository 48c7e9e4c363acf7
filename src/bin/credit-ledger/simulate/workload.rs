//! The simulated workload: workspaces funded, then generations in waves, each through its
//! whole life on a simulated clock.
//!
//! Memory stays flat whatever `--generations` is: only the current wave's generations are
//! held, plus the few "late" timeouts still waiting for their deadline. Everything else is
//! tallied into counters, which the report compares with what the ledger says.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_ledger::{
    Credit, Error, Ledger, ManualClock, Op, Outcome, RefundReason, StartGeneration,
};

use super::rng::Rng;
use super::Params;

/// What is generated: name, cost in credits, timeout.
pub const FEATURES: [(&str, u64, u64); 5] = [
    ("Quick Image", 2, 30 * 60_000),
    ("HD Image", 4, 30 * 60_000),
    ("Upscale", 6, 60 * 60_000),
    ("Quick Video", 12, 150 * 60_000),
    ("HD Video", 40, 150 * 60_000),
];

/// The most expensive feature, for funding.
pub const MAX_COST: u64 = 40;

/// The five reasons a service reports, with a message each.
const FAILURES: [(RefundReason, &str); 5] = [
    (RefundReason::ModelFailure, "the model returned no frames"),
    (
        RefundReason::ApiFailure,
        "upstream API answered 502 Bad Gateway",
    ),
    (
        RefundReason::ServiceUnavailable,
        "AI service unreachable: connection refused",
    ),
    (RefundReason::SystemError, "worker ran out of memory"),
    (
        RefundReason::InvalidInput,
        "prompt image is smaller than 64x64",
    ),
];

/// Simulated time between waves.
pub const WAVE_STEP_MS: u64 = 15 * 60_000;
/// Simulated time from a wave's starts to its completions and failures.
const FINISH_AFTER_MS: u64 = 5 * 60_000;
/// One timed-out generation in this many reports back late, after its deadline, and is
/// refunded by lazy expiry rather than by the sweep.
const LATE_ONE_IN: u64 = 4;
/// Refunds per sweep call.
const SWEEP_LIMIT: u32 = 10_000;
/// Trial grant each workspace gets on top of its purchase: 7 simulated days long, and it
/// expires a third of the way through the run.
pub const TRIAL_GRANT: u64 = 100;
/// How long the trial lasts.
const TRIAL_MS: u64 = 7 * 24 * 60 * 60_000;
/// The monthly subscription grant, in credits per generation the workspace will run: more
/// than the first half of the run spends, so part of this period's lapses at its end (half way
/// through the run); the next period's (credited up front, not yet effective) starts then.
const SUBSCRIPTION_PER_GENERATION: u64 = 10;
/// A subscription period.
const PERIOD_MS: u64 = 30 * 24 * 60 * 60_000;
/// The trial and the subscription are spent before the top-up pack.
const INCLUDED_PRIORITY: u32 = 10;

#[derive(Clone, Copy)]
enum Fate {
    Complete,
    Fail(usize),
    Timeout { late: bool },
}

/// One phase of the run: what was done, how often, how long it took.
#[derive(Debug, Clone, Default)]
pub struct PhaseStat {
    pub ops: u64,
    pub elapsed: Duration,
}

/// What the simulation did, counted on its side, to compare with the ledger.
#[derive(Debug, Default)]
pub struct Tally {
    pub phases: BTreeMap<&'static str, PhaseStat>,
    pub granted: u128,
    pub spent: u128,
    pub refunded: u128,
    /// What the sweeps' Expirations took off.
    pub expired: u128,
    /// Refunds that gave credits back into a grant's refund-grace part (the grant had expired,
    /// or was about to, while the generation ran).
    pub grace_refunds: u64,
    pub started: u64,
    pub completed: u64,
    pub refunds_by_reason: BTreeMap<&'static str, u64>,
    /// What the fates drawn at the starts say the refunds must come to.
    pub expected_refunded: u128,
    pub expected_by_reason: BTreeMap<&'static str, u64>,
    pub expected_completed: u64,
    pub sweep_calls: u64,
    pub transactions: u64,
    /// Results that were not what the simulation expected (first few kept in full).
    pub unexpected: u64,
    pub unexpected_examples: Vec<String>,
    /// The simulated clock at the end.
    pub end_ms: u64,
}

impl Tally {
    fn time(&mut self, phase: &'static str, ops: u64, elapsed: Duration) {
        let p = self.phases.entry(phase).or_default();
        p.ops += ops;
        p.elapsed += elapsed;
    }

    fn unexpected(&mut self, what: String) {
        self.unexpected += 1;
        if self.unexpected_examples.len() < 10 {
            self.unexpected_examples.push(what);
        }
    }

    fn expect(&mut self, fate: Fate, cost: u64) {
        let reason = match fate {
            Fate::Complete => {
                self.expected_completed += 1;
                return;
            }
            Fate::Fail(f) => FAILURES[f].0,
            Fate::Timeout { .. } => RefundReason::Timeout,
        };
        *self.expected_by_reason.entry(reason.as_str()).or_default() += 1;
        self.expected_refunded += u128::from(cost);
    }

    fn refund(&mut self, reason: RefundReason, cost: u64) {
        *self.refunds_by_reason.entry(reason.as_str()).or_default() += 1;
        self.refunded += u128::from(cost);
        self.transactions += 1;
    }
}

pub fn workspace_id(i: u64) -> String {
    format!("ws-{i:04}")
}

fn generation_id(i: u64) -> String {
    format!("gen-{i:08}")
}

/// Runs operations the way the parameters say: each on its own from `threads` threads (group
/// commit), or in `Ledger::apply` batches spread over the threads.
struct Executor {
    ledger: Arc<Ledger>,
    threads: usize,
    batch: usize,
}

impl Executor {
    fn run(&self, ops: Vec<Op>) -> Vec<Result<Outcome, Error>> {
        if ops.is_empty() {
            return Vec::new();
        }
        let chunk = if self.batch > 1 {
            self.batch
        } else {
            // Individually durable calls: one slice of the work per thread.
            ops.len().div_ceil(self.threads)
        };
        let chunks: Vec<&[Op]> = ops.chunks(chunk).collect();
        if chunks.len() == 1 || self.threads == 1 {
            return chunks.iter().flat_map(|c| self.exec(c)).collect();
        }
        // Chunk c goes to thread c % threads; results come back in order.
        let mut per_chunk: Vec<Vec<Result<Outcome, Error>>> = Vec::with_capacity(chunks.len());
        per_chunk.resize_with(chunks.len(), Vec::new);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.threads.min(chunks.len()))
                .map(|t| {
                    let mine: Vec<(usize, &[Op])> = chunks
                        .iter()
                        .enumerate()
                        .filter(|(c, _)| c % self.threads == t)
                        .map(|(c, ops)| (c, *ops))
                        .collect();
                    s.spawn(move || {
                        mine.into_iter()
                            .map(|(c, ops)| (c, self.exec(ops)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                // A worker that panicked leaves its chunks empty: they count as unexpected.
                if let Ok(done) = h.join() {
                    for (c, r) in done {
                        per_chunk[c] = r;
                    }
                }
            }
        });
        let mut out = Vec::with_capacity(ops.len());
        for (c, r) in per_chunk.into_iter().enumerate() {
            if r.len() == chunks[c].len() {
                out.extend(r);
            } else {
                out.extend(chunks[c].iter().map(|_| {
                    Err(Error::Poisoned {
                        message: "a simulation worker thread panicked".into(),
                    })
                }));
            }
        }
        out
    }

    fn exec(&self, ops: &[Op]) -> Vec<Result<Outcome, Error>> {
        if self.batch > 1 {
            return self.ledger.apply(ops);
        }
        ops.iter().map(|op| self.one(op)).collect()
    }

    fn one(&self, op: &Op) -> Result<Outcome, Error> {
        self.ledger.execute(op.clone())
    }
}

/// A progress callback: generations started so far.
pub type Progress<'a> = &'a dyn Fn(u64);

/// Run the whole workload. Errors of individual operations are tallied as unexpected; only an
/// error that makes going on pointless (the storage failing) is returned.
pub fn run(
    ledger: Arc<Ledger>,
    clock: &ManualClock,
    p: &Params,
    progress: Progress<'_>,
) -> Result<Tally, Error> {
    let mut tally = Tally::default();
    let exec = Executor {
        ledger: Arc::clone(&ledger),
        threads: p.threads as usize,
        batch: p.batch as usize,
    };
    let start_ms = p.start_ms;
    clock.set_ms(start_ms);

    // Fund: a top-up pack without expiry big enough for every generation the workspace will
    // run, a 7-day trial that expires a third of the way through the run, this month's
    // subscription credits (expiring at the period's end, half way through) and next month's
    // (effective from then). The trial and the subscription are spent first, so refunds cross
    // their expiries. Generation i is paid by workspace i % workspaces.
    let run_ms = p.generations.div_ceil(wave_size(p.generations)) * WAVE_STEP_MS;
    let trial_ends = start_ms + run_ms / 3;
    let period_ends = start_ms + run_ms / 2;
    let per_ws = p.generations.div_ceil(u64::from(p.workspaces));
    let purchase = per_ws.saturating_mul(MAX_COST).max(1);
    let subscription = per_ws.saturating_mul(SUBSCRIPTION_PER_GENERATION).max(1);
    let workspaces = u64::from(p.workspaces);
    let mut w0 = 0;
    while w0 < workspaces {
        // In waves too, so that a million workspaces do not mean two million queued requests.
        let w1 = (w0 + 5_000).min(workspaces);
        let mut ops = Vec::with_capacity(((w1 - w0) * 4) as usize);
        for w in w0..w1 {
            let ws = workspace_id(w);
            ops.push(Op::Credit(
                Credit::purchase(&ws, purchase, format!("order-{w}")).memo("simulated purchase"),
            ));
            ops.push(Op::Credit(
                Credit::grant(&ws, TRIAL_GRANT, format!("trial-{w}"))
                    .memo("trial credits")
                    .priority(INCLUDED_PRIORITY)
                    .effective_at_ms(trial_ends.saturating_sub(TRIAL_MS))
                    .expires_at_ms(trial_ends),
            ));
            for (period, ends) in [("this", period_ends), ("next", period_ends + PERIOD_MS)] {
                ops.push(Op::Credit(
                    Credit::grant(&ws, subscription, format!("monthly-{period}-{w}"))
                        .memo("monthly credits")
                        .priority(INCLUDED_PRIORITY)
                        .effective_at_ms(ends - PERIOD_MS)
                        .expires_at_ms(ends),
                ));
            }
        }
        let n = ops.len() as u64;
        let t = Instant::now();
        let results = exec.run(ops);
        tally.time("fund", n, t.elapsed());
        for r in results {
            match r {
                Ok(Outcome::Credit(rc)) if !rc.replay => {
                    tally.granted += u128::from(rc.amount_credits.unsigned_abs());
                    tally.transactions += 1;
                }
                Err(e) if fatal(&e) => return Err(e),
                other => tally.unexpected(format!("fund: {other:?}")),
            }
        }
        w0 = w1;
    }

    let wave_size = wave_size(p.generations);
    // Timed-out generations that will report back after their deadline: (deadline, index, cost).
    let mut late: BinaryHeap<Reverse<(u64, u64, u64)>> = BinaryHeap::new();
    let mut now = start_ms;
    let mut first = 0u64;
    while first < p.generations {
        let last = (first + wave_size).min(p.generations);
        clock.set_ms(now);

        // Starts.
        let mut fates = Vec::with_capacity((last - first) as usize);
        let mut ops = Vec::with_capacity((last - first) as usize);
        for i in first..last {
            let mut rng = Rng::for_item(p.seed, i);
            let (feature, cost, timeout_ms) = FEATURES[rng.below(FEATURES.len() as u64) as usize];
            let u = rng.unit();
            let fate = if u < p.timeout_rate {
                Fate::Timeout {
                    late: rng.below(LATE_ONE_IN) == 0,
                }
            } else if u < p.timeout_rate + p.fail_rate {
                Fate::Fail(rng.below(FAILURES.len() as u64) as usize)
            } else {
                Fate::Complete
            };
            fates.push((i, cost, fate));
            ops.push(Op::Start(
                StartGeneration::new(
                    generation_id(i),
                    workspace_id(i % u64::from(p.workspaces)),
                    feature,
                    cost,
                )
                .timeout_ms(timeout_ms),
            ));
        }
        let n = ops.len() as u64;
        let t = Instant::now();
        let results = exec.run(ops);
        tally.time("start", n, t.elapsed());
        let mut started = vec![false; fates.len()];
        for (k, r) in results.into_iter().enumerate() {
            let (i, cost, fate) = fates[k];
            match r {
                Ok(Outcome::Start(c)) if !c.replay && c.cost_credits == cost => {
                    started[k] = true;
                    tally.started += 1;
                    tally.spent += u128::from(cost);
                    tally.transactions += 1;
                    tally.expect(fate, cost);
                    if let Fate::Timeout { late: true } = fate {
                        late.push(Reverse((c.deadline_ms, i, cost)));
                    }
                }
                Err(e) if fatal(&e) => return Err(e),
                other => tally.unexpected(format!("start gen-{i:08}: {other:?}")),
            }
        }
        progress(last);

        // Completions and failures, a few minutes later.
        now += FINISH_AFTER_MS;
        clock.set_ms(now);
        let mut complete_ops = Vec::new();
        let mut complete_idx = Vec::new();
        let mut fail_ops = Vec::new();
        let mut fail_idx = Vec::new();
        for (k, &(i, cost, fate)) in fates.iter().enumerate() {
            if !started[k] {
                continue;
            }
            match fate {
                Fate::Complete => {
                    complete_ops.push(Op::Complete {
                        generation_id: generation_id(i),
                    });
                    complete_idx.push(i);
                }
                Fate::Fail(f) => {
                    let (reason, message) = FAILURES[f];
                    fail_ops.push(Op::Fail {
                        generation_id: generation_id(i),
                        reason,
                        message: message.to_string(),
                    });
                    fail_idx.push((i, cost, reason));
                }
                Fate::Timeout { .. } => {}
            }
        }
        let n = complete_ops.len() as u64;
        let t = Instant::now();
        let results = exec.run(complete_ops);
        tally.time("complete", n, t.elapsed());
        for (r, i) in results.into_iter().zip(complete_idx) {
            match r {
                Ok(Outcome::Complete(c)) if !c.replay => tally.completed += 1,
                Err(e) if fatal(&e) => return Err(e),
                other => tally.unexpected(format!("complete gen-{i:08}: {other:?}")),
            }
        }
        let n = fail_ops.len() as u64;
        let t = Instant::now();
        let results = exec.run(fail_ops);
        tally.time("fail", n, t.elapsed());
        for (r, (i, cost, reason)) in results.into_iter().zip(fail_idx) {
            match r {
                Ok(Outcome::Fail(f))
                    if !f.replay && f.reason == reason && f.amount_credits == cost =>
                {
                    tally.refund(reason, cost);
                    tally.grace_refunds += u64::from(f.allocations.iter().any(|a| a.lot > 0));
                }
                Err(e) if fatal(&e) => return Err(e),
                other => tally.unexpected(format!("fail gen-{i:08}: {other:?}")),
            }
        }

        // The clock has moved: late reports first (lazy expiry), then the periodic sweep.
        late_reports(&exec, &mut late, now, &mut tally)?;
        sweep(&ledger, &mut tally)?;

        first = last;
        now += WAVE_STEP_MS - FINISH_AFTER_MS;
    }

    // Let every remaining deadline pass, then the last reports and sweeps.
    now += FEATURES.iter().map(|f| f.2).max().unwrap_or(0);
    clock.set_ms(now);
    late_reports(&exec, &mut late, now, &mut tally)?;
    sweep(&ledger, &mut tally)?;
    tally.end_ms = now;
    Ok(tally)
}

/// The number of generations started together: about 50 waves, 100 to 5000 each.
pub fn wave_size(generations: u64) -> u64 {
    (generations / 50).clamp(100, 5_000)
}

/// Errors after which going on makes no sense.
fn fatal(e: &Error) -> bool {
    matches!(
        e.category(),
        credit_ledger::ErrorCategory::Storage | credit_ledger::ErrorCategory::Corruption
    )
}

/// Late `complete` calls for timed-out generations whose deadline has passed: each must come
/// back as `GenerationRefunded` with reason `Timeout`, the refund written by that very call.
fn late_reports(
    exec: &Executor,
    late: &mut BinaryHeap<Reverse<(u64, u64, u64)>>,
    now: u64,
    tally: &mut Tally,
) -> Result<(), Error> {
    let mut due = Vec::new();
    while let Some(Reverse((deadline, i, cost))) = late.peek().copied() {
        if deadline > now {
            break;
        }
        late.pop();
        due.push((i, cost));
    }
    let ops: Vec<Op> = due
        .iter()
        .map(|&(i, _)| Op::Complete {
            generation_id: generation_id(i),
        })
        .collect();
    let n = ops.len() as u64;
    let t = Instant::now();
    let results = exec.run(ops);
    tally.time("late report", n, t.elapsed());
    for (r, (i, cost)) in results.into_iter().zip(due) {
        match r {
            Err(Error::GenerationRefunded {
                reason: RefundReason::Timeout,
                ..
            }) => tally.refund(RefundReason::Timeout, cost),
            Err(e) if fatal(&e) => return Err(e),
            other => tally.unexpected(format!("late complete gen-{i:08}: {other:?}")),
        }
    }
    Ok(())
}

/// Sweep until nothing expired is left.
fn sweep(ledger: &Ledger, tally: &mut Tally) -> Result<(), Error> {
    let t = Instant::now();
    let mut refunds = 0u64;
    loop {
        tally.sweep_calls += 1;
        let report = ledger.sweep_expired(SWEEP_LIMIT)?;
        for r in &report.refunds {
            refunds += 1;
            if r.reason == RefundReason::Timeout && !r.replay {
                tally.refund(RefundReason::Timeout, r.amount_credits);
                tally.grace_refunds += u64::from(r.allocations.iter().any(|a| a.lot > 0));
            } else {
                tally.unexpected(format!("sweep refund {r:?}"));
            }
        }
        for e in &report.expirations {
            tally.expired += u128::from(e.amount_credits);
            tally.transactions += 1;
        }
        if !report.more_expired {
            break;
        }
    }
    tally.time("sweep", refunds, t.elapsed());
    Ok(())
}
