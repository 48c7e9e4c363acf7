//! `vs_sqlite/*`: the lifecycle, concurrency and history workloads of the `lifecycle`,
//! `concurrent` and `history` benches, on a hand-written SQLite ledger (see
//! `common/sqlite.rs`: rusqlite bundled, WAL, `synchronous=FULL`, an index on
//! `(workspace, kind, id)` and a partial index on the deadline of running generations).
//! Same names after the prefix, so each line pairs with its credit-ledger twin.
//!
//! Concurrency on SQLite: the threads share one connection behind a mutex, so commits queue
//! in process without SQLITE_BUSY back-off sleeps (a pool of connections with `busy_timeout`
//! was slower); each operation is still its own fsynced transaction.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;

mod common;

use common::sqlite::{SqlLedger, KIND_REFUND, STATUS_COMPLETED};

const BATCHES: [usize; 3] = [1, 64, 1000];
const THREADS: [usize; 3] = [1, 4, 16];
const NOW: i64 = common::T0_MS as i64;
const TIMEOUT_MS: i64 = 150 * 60_000;

fn fresh_ids(next: &mut u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            *next += 1;
            format!("life-{next:010}")
        })
        .collect()
}

fn starts(ids: &[String], timeout_ms: i64) -> Vec<(String, String, i64, i64)> {
    ids.iter()
        .map(|id| (id.clone(), "ws".to_string(), 3, timeout_ms))
        .collect()
}

fn lifecycle(c: &mut Criterion) {
    let dir = common::scratch();
    let db = SqlLedger::open(&dir.path().join("ledger.sqlite"));
    db.fund("ws", 1 << 50, NOW);
    // Setup and routine closures both use the database.
    let db = RefCell::new(db);
    let now = Cell::new(NOW);
    let mut next = 0u64;
    let mut group = c.benchmark_group("vs_sqlite/lifecycle");
    for batch in BATCHES {
        if batch >= 1000 {
            common::quick(&mut group);
        } else {
            common::durable(&mut group);
        }
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("start", batch), |b| {
            b.iter_batched(
                || starts(&fresh_ids(&mut next, batch), TIMEOUT_MS),
                |gens| assert_eq!(db.borrow_mut().start_batch(&gens, now.get()), batch),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(BenchmarkId::new("complete", batch), |b| {
            b.iter_batched(
                || {
                    let ids = fresh_ids(&mut next, batch);
                    assert_eq!(
                        db.borrow_mut()
                            .start_batch(&starts(&ids, TIMEOUT_MS), now.get()),
                        batch
                    );
                    ids
                },
                |ids| assert_eq!(db.borrow_mut().complete_batch(&ids, now.get()), batch),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(BenchmarkId::new("fail", batch), |b| {
            b.iter_batched(
                || {
                    let ids = fresh_ids(&mut next, batch);
                    assert_eq!(
                        db.borrow_mut()
                            .start_batch(&starts(&ids, TIMEOUT_MS), now.get()),
                        batch
                    );
                    ids
                },
                |ids| assert_eq!(db.borrow_mut().fail_batch(&ids, now.get()), batch),
                BatchSize::PerIteration,
            )
        });
    }
    common::quick(&mut group);
    group.throughput(Throughput::Elements(1000));
    group.bench_function(BenchmarkId::new("sweep", 1000), |b| {
        b.iter_batched(
            || {
                let ids = fresh_ids(&mut next, 1000);
                assert_eq!(
                    db.borrow_mut().start_batch(&starts(&ids, 1_000), now.get()),
                    1000
                );
                now.set(now.get() + 1_000);
            },
            |()| assert_eq!(db.borrow_mut().sweep(1000, now.get()), 1000),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn concurrent(c: &mut Criterion) {
    let dir = common::scratch();
    let db = SqlLedger::open(&dir.path().join("ledger.sqlite"));
    db.fund("ws", 1 << 50, NOW);
    let db = Arc::new(Mutex::new(db));
    let mut group = c.benchmark_group("vs_sqlite/concurrent");
    common::durable(&mut group);
    group.throughput(Throughput::Elements(1));
    let mut round = 0u64;
    for threads in THREADS {
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| {
                round += 1;
                let per_thread = iters.div_ceil(threads as u64).max(2);
                let started = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let db = Arc::clone(&db);
                        s.spawn(move || {
                            let mut k = 0;
                            while k < per_thread {
                                let id = format!("conc-{threads}-{round}-{t}-{k}");
                                let gen = [(id.clone(), "ws".to_string(), 3, TIMEOUT_MS)];
                                assert_eq!(db.lock().start_batch(&gen, NOW), 1);
                                assert_eq!(db.lock().complete_batch(&[id], NOW), 1);
                                k += 2;
                            }
                        });
                    }
                });
                let elapsed: Duration = started.elapsed();
                elapsed.mul_f64(iters as f64 / (per_thread * threads as u64) as f64)
            })
        });
    }
    group.finish();
}

fn history(c: &mut Criterion) {
    let mut group = c.benchmark_group("vs_sqlite/history");
    for (n, label) in [(10_000u64, "10k"), (1_000_000, "1M")] {
        let (_, shape) = common::history_workload(n);
        let db = SqlLedger::open(&common::sqlite_history_fixture(n));
        group.bench_function(BenchmarkId::new("first_refunds", label), |b| {
            b.iter(|| {
                let rows = db.history("hist", KIND_REFUND, None, 50);
                assert_eq!(rows.len(), 50);
                assert!(rows.iter().all(|r| r.status == STATUS_COMPLETED));
            })
        });
        // The same depth as the ledger's deep page: 90% of the way back through the refunds.
        let skip = shape.refunds * 9 / 10;
        let before: i64 = db
            .conn
            .query_row(
                "SELECT id FROM transactions WHERE workspace = 'hist' AND kind = ?1
                 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                rusqlite::params![KIND_REFUND, skip as i64 - 1],
                |r| r.get(0),
            )
            .unwrap();
        group.bench_function(BenchmarkId::new("deep_refunds", label), |b| {
            b.iter(|| {
                let rows = db.history("hist", KIND_REFUND, Some(before), 50);
                assert_eq!(rows.len(), 50);
                assert!(rows.iter().all(|r| r.kind == KIND_REFUND));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lifecycle, concurrent, history);
criterion_main!(benches);
