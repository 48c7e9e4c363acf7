//! `sweep/*`: what the sweeper costs when nothing is due, and when a lot is.
//!
//! - `idle_check/{N}`: `sweep_expired` when the earliest running deadline (kept in memory) is
//!   still ahead: no I/O at all. This is what the sweeper does at almost every wake-up.
//! - `zero_expired/{N}`: a real sweep through a write transaction (`apply(&[Op::Sweep])`,
//!   which skips the in-memory check): it reads the first entry of the `deadlines` index,
//!   finds it in the future, writes nothing and aborts. It shows that the sweep's cost does not
//!   grow with the number of running generations.
//! - `expired_10k`: refund 10,000 expired generations in one durable write.
//!
//! The 10k, 100k and 1M ledgers are fixtures built once under `target/bench-fixtures/`.

use credit_ledger::{Ledger, ManualClock, Op, Outcome, StartGeneration};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

mod common;

const SIZES: [(u64, &str); 3] = [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1M")];

fn sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("sweep");
    for (n, label) in SIZES {
        let path = common::running_fixture(n);
        let clock = ManualClock::new(common::T0_MS);
        // Nothing in the fixture expires before T0 + 1 h, and nothing here writes to it.
        let ledger = Ledger::open_with(&path, common::options(&clock)).unwrap();
        assert!(ledger.next_deadline_ms().unwrap() > common::T0_MS);

        group.bench_function(BenchmarkId::new("idle_check", label), |b| {
            b.iter(|| {
                let report = ledger.sweep_expired(1000).unwrap();
                assert!(report.refunds.is_empty() && !report.more_expired);
            })
        });
        group.bench_function(BenchmarkId::new("zero_expired", label), |b| {
            b.iter(|| {
                let r = ledger.apply(&[Op::Sweep { limit: 1000 }]);
                assert!(matches!(&r[0], Ok(Outcome::Sweep(s)) if s.refunds.is_empty()));
            })
        });
        drop(ledger);
    }

    // 10k expired among 10k running, refunded by one sweep call (one durable write).
    let dir = common::scratch();
    let (ledger, clock) = common::fresh_ledger(dir.path(), "ws");
    let mut next = 0u64;
    common::quick(&mut group);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("expired_10k", |b| {
        b.iter_batched(
            || {
                let ops: Vec<Op> = (0..10_000)
                    .map(|_| {
                        next += 1;
                        Op::Start(
                            StartGeneration::new(format!("exp-{next}"), "ws", "Quick Video", 3)
                                .timeout_ms(1_000),
                        )
                    })
                    .collect();
                common::apply_all(&ledger, ops);
                clock.advance_ms(1_000);
            },
            |()| {
                let report = ledger.sweep_expired(10_000).unwrap();
                assert_eq!(report.refunds.len(), 10_000);
                assert!(!report.more_expired);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, sweep);
criterion_main!(benches);
