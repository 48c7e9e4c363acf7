//! Helpers shared by the engine integration tests.
#![allow(dead_code)]

use credit_ledger::{
    Credit, HistoryFilter, Ledger, ManualClock, Options, PageRequest, TransactionView, TxnKind,
};

/// 2023-11-14T22:13:20Z: an arbitrary, fixed start time.
pub const T0_MS: u64 = 1_700_000_000_000;
pub const MINUTE_MS: u64 = 60_000;

/// An in-memory ledger on a manual clock at `T0_MS`.
pub fn ledger() -> (Ledger, ManualClock) {
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::in_memory_with(Options::default().clock(clock.clone())).unwrap();
    (ledger, clock)
}

/// Options on a manual clock at `T0_MS`.
pub fn options(clock: &ManualClock) -> Options {
    Options::default().clock(clock.clone())
}

/// Give `ws` `amount` credits with a fresh key.
pub fn fund(ledger: &Ledger, ws: &str, amount: u64) {
    let key = format!(
        "fund-{ws}-{}",
        ledger.totals().unwrap().workspaces + rand_suffix()
    );
    ledger.credit(Credit::purchase(ws, amount, key)).unwrap();
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1000
}

/// Every history entry of `ws` matching `filter`, newest first, read in pages of 100.
pub fn all_history(ledger: &Ledger, ws: &str, filter: &HistoryFilter) -> Vec<TransactionView> {
    paged_history(ledger, ws, filter, 100, false)
}

/// Every history entry of `ws` matching `filter`, read in pages of `limit`, following cursors.
pub fn paged_history(
    ledger: &Ledger,
    ws: &str,
    filter: &HistoryFilter,
    limit: u32,
    oldest_first: bool,
) -> Vec<TransactionView> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = ledger
            .history(
                ws,
                filter,
                &PageRequest {
                    limit,
                    cursor: cursor.take(),
                    oldest_first,
                },
            )
            .unwrap();
        out.extend(page.entries);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// The refunds of `ws`.
pub fn refunds(ledger: &Ledger, ws: &str) -> Vec<TransactionView> {
    all_history(ledger, ws, &HistoryFilter::all().kinds([TxnKind::Refund]))
}

/// verify() is clean and credits are conserved.
pub fn assert_healthy(ledger: &Ledger) {
    let report = ledger.verify().unwrap();
    assert!(report.is_clean(), "audit found: {:#?}", report.violations);
    assert!(ledger.totals().unwrap().is_conserved());
}
