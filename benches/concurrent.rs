//! `concurrent/{1,4,16}`: threads sharing one `Arc<Ledger>`, each operation individually
//! durable: a caller is told "done" only after the fsync of the commit that holds its
//! operation. Group commit folds the operations that queue up meanwhile into one commit.
//!
//! Each thread alternates `start_generation` and `complete_generation` of its own
//! generations. Throughput is per operation, over all threads.
//!
//! `concurrent_subscribed/{slow,keen}-16` is the 16-thread case on a ledger with one
//! subscription (`Ledger::subscribe`): `slow` never reads it (it falls behind after
//! `SUBSCRIPTION_CAPACITY` entries and stays behind, which must cost the writer nothing it
//! can measure against `concurrent/16`), `keen` drains it on a thread of its own (what an
//! app's live view costs the writer).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_ledger::{Ledger, StartGeneration};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;

pub const THREADS: [usize; 3] = [1, 4, 16];

/// Run `ops` operations split over `threads` threads; the time for all of them.
fn run(ledger: &Arc<Ledger>, threads: usize, ops: u64, round: u64) -> Duration {
    let per_thread = ops.div_ceil(threads as u64).max(2);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let ledger = Arc::clone(ledger);
            s.spawn(move || {
                let mut k = 0;
                while k < per_thread {
                    let id = format!("conc-{threads}-{round}-{t}-{k}");
                    let charge = ledger
                        .start_generation(StartGeneration::new(&id, "ws", "Quick Video", 3))
                        .unwrap();
                    assert!(!charge.replay);
                    assert!(!ledger.complete_generation(&id).unwrap().replay);
                    k += 2;
                }
            });
        }
    });
    // Report the time of exactly `ops` operations.
    started
        .elapsed()
        .mul_f64(ops as f64 / (per_thread * threads as u64) as f64)
}

fn concurrent(c: &mut Criterion) {
    let dir = common::scratch();
    let (ledger, _clock) = common::fresh_ledger(dir.path(), "ws");
    let ledger = Arc::new(ledger);
    let mut group = c.benchmark_group("concurrent");
    common::durable(&mut group);
    group.throughput(Throughput::Elements(1));
    let mut round = 0u64;
    for threads in THREADS {
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| {
                round += 1;
                run(&ledger, threads, iters, round)
            })
        });
    }
    group.finish();
    let totals = ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");
    assert_eq!(totals.running_generations, 0);
}

fn concurrent_subscribed(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent_subscribed");
    common::durable(&mut group);
    group.throughput(Throughput::Elements(1));
    for keen in [false, true] {
        let dir = common::scratch();
        let (ledger, _clock) = common::fresh_ledger(dir.path(), "ws");
        let ledger = Arc::new(ledger);
        let sub = ledger.subscribe().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = keen.then(|| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    if sub.recv_timeout(Duration::from_millis(50)).is_some() {
                        n += 1;
                    }
                }
                n
            })
        });
        let name = if keen { "keen-16" } else { "slow-16" };
        let mut round = 0u64;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                round += 1;
                run(&ledger, 16, iters, round)
            })
        });
        stop.store(true, Ordering::SeqCst);
        if let Some(r) = reader {
            assert!(
                r.join().unwrap() > 0,
                "the keen subscriber received nothing"
            );
        }
        let totals = ledger.totals().unwrap();
        assert!(totals.is_conserved(), "{totals:?}");
    }
    group.finish();
}

criterion_group!(benches, concurrent, concurrent_subscribed);
criterion_main!(benches);
