//! `grants/*`: what credit grants cost.
//!
//! - `start/{N}`: one durable `start_generation` (batch 1, as `lifecycle/start/1`) against a
//!   workspace holding N grants, N = 1, 10, 100. Each grant is large, spendable and expires at
//!   a different far-off time, so every charge takes from the first grant in drawdown order:
//!   one short range read of `grant_order` whatever N is. Compare with `lifecycle/start/1`.
//! - `start_spanning/{N}`: one durable start whose cost spans all N grants (each holds exactly
//!   what one charge takes from it), the worst case of the drawdown: N lots read and written.
//! - `sweep_expired_10k`: one sweep call that writes 10,000 Expirations (10,000 grants of one
//!   workspace past their expiry), one durable write; O(expired) through `grant_expiries`.

use credit_ledger::{Clock, Credit, Op, StartGeneration};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

mod common;

const GRANT_COUNTS: [u64; 3] = [1, 10, 100];
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn grants(c: &mut Criterion) {
    let mut group = c.benchmark_group("grants");
    let mut next = 0u64;
    for n in GRANT_COUNTS {
        let dir = common::scratch();
        let (ledger, _clock) = common::fresh_ledger(dir.path(), "other");
        let ws = format!("ws-{n}");
        let ops: Vec<Op> = (0..n)
            .map(|i| {
                Op::Credit(
                    Credit::grant(&ws, 1 << 40, format!("{ws}-grant-{i}"))
                        .expires_at_ms(common::T0_MS + (365 + i) * DAY_MS),
                )
            })
            .collect();
        common::apply_all(&ledger, ops);
        common::durable(&mut group);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("start", n), |b| {
            b.iter(|| {
                next += 1;
                let c = ledger
                    .start_generation(StartGeneration::new(
                        format!("g-{next}"),
                        &ws,
                        "Quick Video",
                        3,
                    ))
                    .unwrap();
                assert_eq!(c.allocations.len(), 1);
            })
        });

        let spanning = format!("span-{n}");
        group.bench_function(BenchmarkId::new("start_spanning", n), |b| {
            b.iter_batched(
                || {
                    // A fresh workspace whose N grants of 2 credits each pay one charge.
                    next += 1;
                    let w = format!("{spanning}-{next}");
                    let ops: Vec<Op> = (0..n)
                        .map(|i| Op::Credit(Credit::grant(&w, 2, format!("{w}-{i}"))))
                        .collect();
                    common::apply_all(&ledger, ops);
                    w
                },
                |w| {
                    let c = ledger
                        .start_generation(StartGeneration::new(
                            format!("g-{w}"),
                            &w,
                            "Quick Video",
                            2 * n,
                        ))
                        .unwrap();
                    assert_eq!(c.allocations.len() as u64, n);
                },
                BatchSize::PerIteration,
            )
        });
        drop(ledger);
    }

    // 10k grants of one workspace past their expiry, expired by one sweep call.
    let dir = common::scratch();
    let (ledger, clock) = common::fresh_ledger(dir.path(), "other");
    common::quick(&mut group);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("sweep_expired_10k", |b| {
        b.iter_batched(
            || {
                let at = clock.now_ms() + 1_000;
                let ops: Vec<Op> = (0..10_000)
                    .map(|_| {
                        next += 1;
                        Op::Credit(Credit::grant("ws", 5, format!("exp-{next}")).expires_at_ms(at))
                    })
                    .collect();
                common::apply_all(&ledger, ops);
                clock.advance_ms(1_000);
            },
            |()| {
                let report = ledger.sweep_expired(10_000).unwrap();
                assert_eq!(report.expirations.len(), 10_000);
                assert!(!report.more_expired);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, grants);
criterion_main!(benches);
