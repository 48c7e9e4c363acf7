//! The workload of issue 14, the same for every store: 1,000 workspaces; N generations
//! started in batches of 1,000; 90 % completed and 7 % failed, mixed, in batches of 1,000;
//! the 3 % left refunded by the sweep once their deadline (150 minutes) has passed; then 100
//! first pages of 50 Refunds, one per workspace.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use credit_ledger::RefundReason;

use crate::common::{Rng, SEED, T0_MS};

pub const WORKSPACES: usize = 1_000;
/// Operations per write transaction in the start, finish and sweep phases.
pub const BATCH: usize = 1_000;
/// First pages read in the last phase, one per workspace.
pub const PAGES: usize = 100;
/// Entries per history page.
pub const PAGE_LIMIT: usize = 50;
/// Each workspace's credits: far beyond any run's charges.
pub const FUNDING_CREDITS: u64 = 1 << 50;
/// A generation's timeout: the ledger's default, so ours runs with its defaults.
pub const TIMEOUT_MS: u64 = 150 * 60_000;
/// The clock of each phase. Starts at T0; completions one minute later, well before any
/// deadline; the sweep one minute after every deadline.
pub const START_MS: u64 = T0_MS;
pub const FINISH_MS: u64 = T0_MS + 60_000;
pub const SWEEP_MS: u64 = T0_MS + TIMEOUT_MS + 60_000;
/// Per mille of generations completed, and failed; the rest expire.
const COMPLETE_PER_MILLE: u64 = 900;
const FAIL_PER_MILLE: u64 = 70;

/// How a generation of the plan ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Complete,
    Fail(RefundReason),
    /// Nobody reports it: the sweep refunds it.
    Expire,
}

/// One generation of the plan.
#[derive(Debug, Clone)]
pub struct Gen {
    pub id: String,
    pub workspace: String,
    pub cost_credits: u64,
    pub fate: Fate,
}

impl Gen {
    /// The failure's reason as SQLite and bare redb store it, `None` for a completion.
    pub fn failure_label(&self) -> Option<&'static str> {
        match self.fate {
            Fate::Fail(reason) => Some(reason.as_str()),
            Fate::Complete | Fate::Expire => None,
        }
    }
}

/// The whole workload for one N, from a fixed seed.
pub struct Plan {
    pub n: u64,
    pub workspaces: Vec<String>,
    /// In start order.
    pub gens: Vec<Gen>,
    /// Indexes into `gens` of the completed and failed ones, in the (shuffled) order they
    /// finish.
    pub finish_order: Vec<usize>,
}

/// The workload's workspaces: `ws-0000` to `ws-0999`.
pub fn workspaces() -> Vec<String> {
    (0..WORKSPACES).map(|w| format!("ws-{w:04}")).collect()
}

/// A random-looking id, like a UUID, so the B-trees are shaped as in real use.
pub fn gen_id(prefix: &str, rng: &mut Rng) -> String {
    format!(
        "{prefix}-{:016x}{:08x}",
        rng.next_u64(),
        rng.next_u64() as u32
    )
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

impl Plan {
    pub fn new(n: u64) -> Plan {
        let mut rng = Rng::new(SEED ^ n ^ 0x5CA1E);
        let workspaces = workspaces();
        let mut gens: Vec<Gen> = (0..n)
            .map(|_| Gen {
                id: gen_id("gen", &mut rng),
                workspace: workspaces[rng.below(WORKSPACES as u64) as usize].clone(),
                cost_credits: 1 + rng.below(50),
                fate: Fate::Expire,
            })
            .collect();
        let mut order: Vec<usize> = (0..gens.len()).collect();
        shuffle(&mut order, &mut rng);
        let completed = (n * COMPLETE_PER_MILLE / 1000) as usize;
        let finished = (n * (COMPLETE_PER_MILLE + FAIL_PER_MILLE) / 1000) as usize;
        for (rank, &i) in order.iter().enumerate() {
            gens[i].fate = if rank < completed {
                Fate::Complete
            } else if rank < finished {
                Fate::Fail(match rng.below(3) {
                    0 => RefundReason::ModelFailure,
                    1 => RefundReason::ApiFailure,
                    _ => RefundReason::ServiceUnavailable,
                })
            } else {
                Fate::Expire
            };
        }
        order.truncate(finished);
        shuffle(&mut order, &mut rng);
        Plan {
            n,
            workspaces,
            gens,
            finish_order: order,
        }
    }

    /// The finish phase's batches, as indexes into `gens`.
    pub fn finish_batches(&self) -> Vec<&[usize]> {
        self.finish_order.chunks(BATCH).collect()
    }

    /// How many Refunds each workspace holds after the sweep.
    pub fn refund_counts(&self) -> HashMap<&str, usize> {
        let mut counts = HashMap::new();
        for g in self.gens.iter().filter(|g| g.fate != Fate::Complete) {
            *counts.entry(g.workspace.as_str()).or_insert(0) += 1;
        }
        counts
    }

    pub fn expiring(&self) -> usize {
        self.gens.len() - self.finish_order.len()
    }
}

/// A store the workload runs on: ours, SQLite or bare redb.
pub trait Store: Sized {
    /// The name in bench ids and fixture names.
    const NAME: &'static str;
    /// A new store at `path` holding the plan's workspaces, funded, at `START_MS`.
    fn create(path: &Path, workspaces: &[String]) -> Self;
    /// Reopen the store at `path` with its clock at `now_ms`.
    fn open(path: &Path, now_ms: u64) -> Self;
    /// Set the clock the next operations see.
    fn set_now(&mut self, now_ms: u64);
    /// Start `gens` in one durable transaction; how many were charged.
    fn start(&mut self, gens: &[&Gen]) -> usize;
    /// Complete or fail `gens` (by their fate) in one durable transaction; how many finished.
    fn finish(&mut self, gens: &[&Gen]) -> usize;
    /// Refund up to `limit` expired generations in one durable transaction; how many.
    fn sweep(&mut self, limit: usize) -> usize;
    /// The first page of at most `PAGE_LIMIT` Refunds of `workspace`; how many entries.
    fn first_refunds(&self, workspace: &str) -> usize;
}

/// What one phase did and how long it took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub ops: u64,
    pub elapsed: Duration,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn run_start<S: Store>(store: &mut S, plan: &Plan) -> Measured {
    store.set_now(START_MS);
    let batches: Vec<Vec<&Gen>> = plan
        .gens
        .chunks(BATCH)
        .map(|c| c.iter().collect())
        .collect();
    let started = Instant::now();
    for batch in &batches {
        assert_eq!(
            store.start(batch),
            batch.len(),
            "{}: a start refused",
            S::NAME
        );
    }
    Measured {
        ops: plan.n,
        elapsed: started.elapsed(),
    }
}

pub fn run_finish<S: Store>(store: &mut S, plan: &Plan) -> Measured {
    store.set_now(FINISH_MS);
    let batches: Vec<Vec<&Gen>> = plan
        .finish_batches()
        .into_iter()
        .map(|c| c.iter().map(|&i| &plan.gens[i]).collect())
        .collect();
    let started = Instant::now();
    for batch in &batches {
        assert_eq!(
            store.finish(batch),
            batch.len(),
            "{}: a finish refused",
            S::NAME
        );
    }
    Measured {
        ops: plan.finish_order.len() as u64,
        elapsed: started.elapsed(),
    }
}

pub fn run_sweep<S: Store>(store: &mut S, plan: &Plan) -> Measured {
    store.set_now(SWEEP_MS);
    let started = Instant::now();
    let mut refunded = 0;
    loop {
        let got = store.sweep(BATCH);
        refunded += got;
        if got < BATCH {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(refunded, plan.expiring(), "{}: the sweep's count", S::NAME);
    Measured {
        ops: refunded as u64,
        elapsed,
    }
}

pub fn run_pages<S: Store>(store: &S, plan: &Plan) -> Measured {
    let counts = plan.refund_counts();
    let expected: Vec<usize> = plan.workspaces[..PAGES]
        .iter()
        .map(|ws| {
            counts
                .get(ws.as_str())
                .copied()
                .unwrap_or(0)
                .min(PAGE_LIMIT)
        })
        .collect();
    let started = Instant::now();
    for (ws, &want) in plan.workspaces[..PAGES].iter().zip(&expected) {
        assert_eq!(
            store.first_refunds(ws),
            want,
            "{}: the page of {ws}",
            S::NAME
        );
    }
    Measured {
        ops: PAGES as u64,
        elapsed: started.elapsed(),
    }
}
