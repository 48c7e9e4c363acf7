//! `history/*`: the "Transactions" view of a workspace with 10k and 1M transactions:
//! the first page of 50 Refunds, and a page of 50 Refunds deep in the history (90% of the way
//! back), reached with the cursor of the page before it. Fixtures are built once under
//! `target/bench-fixtures/`.

use credit_ledger::{HistoryFilter, Ledger, ManualClock, PageRequest, TxnKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

mod common;

pub const SIZES: [(u64, &str); 2] = [(10_000, "10k"), (1_000_000, "1M")];

/// The cursor of the page that ends 90% of the way back through `ws`'s Refunds, found by
/// paging (untimed).
fn deep_cursor(ledger: &Ledger, refunds: u64) -> String {
    let filter = HistoryFilter::all().kinds([TxnKind::Refund]);
    let target = refunds * 9 / 10;
    let mut seen = 0u64;
    let mut page = PageRequest::first(1000);
    loop {
        let want = (target - seen).min(1000) as u32;
        page.limit = want;
        let p = ledger.history("hist", &filter, &page).unwrap();
        seen += p.entries.len() as u64;
        let cursor = p.next_cursor.expect("more pages");
        if seen >= target {
            return cursor;
        }
        page = PageRequest::after(1000, cursor);
    }
}

fn history(c: &mut Criterion) {
    let mut group = c.benchmark_group("history");
    let refunds = HistoryFilter::all().kinds([TxnKind::Refund]);
    for (n, label) in SIZES {
        let (path, shape) = common::history_fixture(n);
        let clock = ManualClock::new(common::T0_MS);
        let ledger = Ledger::open_with(&path, common::options(&clock)).unwrap();
        assert_eq!(ledger.balance("hist").unwrap().transactions, shape.txns);

        group.bench_function(BenchmarkId::new("first_refunds", label), |b| {
            b.iter(|| {
                let page = ledger
                    .history("hist", &refunds, &PageRequest::first(50))
                    .unwrap();
                assert_eq!(page.entries.len(), 50);
                assert!(page.next_cursor.is_some());
            })
        });
        let cursor = deep_cursor(&ledger, shape.refunds);
        group.bench_function(BenchmarkId::new("deep_refunds", label), |b| {
            b.iter(|| {
                let page = ledger
                    .history("hist", &refunds, &PageRequest::after(50, cursor.clone()))
                    .unwrap();
                assert_eq!(page.entries.len(), 50);
                assert!(page.entries.iter().all(|e| e.kind == TxnKind::Refund));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, history);
criterion_main!(benches);
