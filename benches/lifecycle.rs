//! `lifecycle/*`: start, complete and fail at batch 1, 64 and 1000, plus a sweep that refunds
//! 1000 expired generations; every commit durable (fsync), on a real file.
//!
//! Batch 1 uses the single-operation calls (`start_generation`, ...), which go through group
//! commit; larger batches use `Ledger::apply`, one write transaction and one fsync per batch.
//! Throughput is per operation.

use credit_ledger::{Ledger, Op, Outcome, RefundReason, StartGeneration};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

mod common;

const BATCHES: [usize; 3] = [1, 64, 1000];

/// `n` fresh generation ids.
fn fresh_ids(next: &mut u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            *next += 1;
            format!("life-{next:010}")
        })
        .collect()
}

fn start_op(id: &str) -> StartGeneration {
    StartGeneration::new(id, "ws", "Quick Video", 3)
}

/// Start `ids` (untimed setup for complete and fail).
fn start_all(ledger: &Ledger, ids: &[String], timeout_ms: Option<u64>) {
    let ops: Vec<Op> = ids
        .iter()
        .map(|id| {
            let s = start_op(id);
            Op::Start(match timeout_ms {
                Some(t) => s.timeout_ms(t),
                None => s,
            })
        })
        .collect();
    for r in ledger.apply(&ops) {
        assert!(matches!(r, Ok(Outcome::Start(_))));
    }
}

fn lifecycle(c: &mut Criterion) {
    let dir = common::scratch();
    let (ledger, clock) = common::fresh_ledger(dir.path(), "ws");
    let mut next = 0u64;
    let mut group = c.benchmark_group("lifecycle");
    for batch in BATCHES {
        if batch >= 1000 {
            common::quick(&mut group);
        } else {
            common::durable(&mut group);
        }
        group.throughput(Throughput::Elements(batch as u64));

        group.bench_function(BenchmarkId::new("start", batch), |b| {
            b.iter_batched(
                || fresh_ids(&mut next, batch),
                |ids| {
                    if batch == 1 {
                        let charge = ledger.start_generation(start_op(&ids[0])).unwrap();
                        assert!(!charge.replay);
                    } else {
                        let ops: Vec<Op> = ids.iter().map(|id| Op::Start(start_op(id))).collect();
                        for r in ledger.apply(&ops) {
                            assert!(matches!(r, Ok(Outcome::Start(c)) if !c.replay));
                        }
                    }
                },
                BatchSize::PerIteration,
            )
        });

        group.bench_function(BenchmarkId::new("complete", batch), |b| {
            b.iter_batched(
                || {
                    let ids = fresh_ids(&mut next, batch);
                    start_all(&ledger, &ids, None);
                    ids
                },
                |ids| {
                    if batch == 1 {
                        assert!(!ledger.complete_generation(&ids[0]).unwrap().replay);
                    } else {
                        let ops: Vec<Op> = ids
                            .iter()
                            .map(|id| Op::Complete {
                                generation_id: id.clone(),
                            })
                            .collect();
                        for r in ledger.apply(&ops) {
                            assert!(matches!(r, Ok(Outcome::Complete(c)) if !c.replay));
                        }
                    }
                },
                BatchSize::PerIteration,
            )
        });

        group.bench_function(BenchmarkId::new("fail", batch), |b| {
            b.iter_batched(
                || {
                    let ids = fresh_ids(&mut next, batch);
                    start_all(&ledger, &ids, None);
                    ids
                },
                |ids| {
                    if batch == 1 {
                        let r = ledger
                            .fail_generation(&ids[0], RefundReason::ModelFailure, "model crashed")
                            .unwrap();
                        assert_eq!(r.amount_credits, 3);
                    } else {
                        let ops: Vec<Op> = ids
                            .iter()
                            .map(|id| Op::Fail {
                                generation_id: id.clone(),
                                reason: RefundReason::ModelFailure,
                                message: "model crashed".into(),
                            })
                            .collect();
                        for r in ledger.apply(&ops) {
                            assert!(matches!(r, Ok(Outcome::Fail(f)) if f.amount_credits == 3));
                        }
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }

    // The sweep refunds a batch of 1000 expired generations in one write.
    common::quick(&mut group);
    group.throughput(Throughput::Elements(1000));
    group.bench_function(BenchmarkId::new("sweep", 1000), |b| {
        b.iter_batched(
            || {
                let ids = fresh_ids(&mut next, 1000);
                start_all(&ledger, &ids, Some(1_000));
                clock.advance_ms(1_000);
            },
            |()| {
                let report = ledger.sweep_expired(1000).unwrap();
                assert_eq!(report.refunds.len(), 1000);
                assert!(!report.more_expired);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let totals = ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
