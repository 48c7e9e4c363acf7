//! Single durable starts: each its own call, durable when it returns, from 1, 4 or 16
//! threads, on a fresh store of 1,000 funded workspaces. Ours shares one `Arc<Ledger>` (its
//! group commit folds the calls that queue up into one journal sync); SQLite shares one
//! connection behind a mutex, as in `vs_sqlite/concurrent` (its best case in one process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_ledger::StartGeneration;
use parking_lot::Mutex;

use crate::common::{Rng, SEED};
use crate::stores::{Ours, Sqlite};
use crate::workload::{Store, START_MS, TIMEOUT_MS, WORKSPACES};

pub const THREADS: [usize; 3] = [1, 4, 16];
/// Starts per measurement in the table.
pub const TABLE_STARTS: u64 = 6_000;

/// Run `ops` calls of `call(thread, k, workspace)` split over `threads` threads; the time for
/// all of them and how many ran (`ops` rounded up to a multiple of `threads`).
fn run_threads(
    threads: usize,
    ops: u64,
    call: impl Fn(usize, u64, &str) + Sync,
) -> (Duration, u64) {
    let per_thread = ops.div_ceil(threads as u64);
    let workspaces = crate::workload::workspaces();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (call, workspaces) = (&call, &workspaces);
            s.spawn(move || {
                let mut rng = Rng::new(SEED ^ t as u64);
                for k in 0..per_thread {
                    call(t, k, &workspaces[rng.below(WORKSPACES as u64) as usize]);
                }
            });
        }
    });
    (started.elapsed(), per_thread * threads as u64)
}

/// Durable single starts on ours; `round` keeps the ids of successive calls apart.
pub fn ours(store: &Ours, threads: usize, ops: u64, round: u64) -> (Duration, u64) {
    run_threads(threads, ops, |t, k, ws| {
        let charge = store
            .ledger
            .start_generation(StartGeneration::new(
                format!("single-{threads}-{round}-{t}-{k}"),
                ws,
                "Quick Video",
                3,
            ))
            .expect("a single start");
        assert!(!charge.replay);
    })
}

/// Durable single starts on SQLite.
pub fn sqlite(store: &Arc<Mutex<Sqlite>>, threads: usize, ops: u64, round: u64) -> (Duration, u64) {
    run_threads(threads, ops, |t, k, ws| {
        let start = [(
            format!("single-{threads}-{round}-{t}-{k}"),
            ws.to_string(),
            3,
            TIMEOUT_MS as i64,
        )];
        let mut store = store.lock();
        assert_eq!(store.db.start_batch(&start, START_MS as i64), 1);
    })
}

/// A fresh store of `S` with the workload's workspaces, in `dir`.
pub fn fresh<S: Store>(dir: &std::path::Path) -> S {
    S::create(&dir.join(S::NAME), &crate::workload::workspaces())
}
