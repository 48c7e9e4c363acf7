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

/// The stored form of a generation record's single allocation (schema 4): the last field of
/// the record, `Some` entry of `credits` from lot 0 of `grant`, as bincode's standard
/// configuration writes it (an option tag, varints, a length-prefixed string). Tests that
/// damage or age a record on purpose edit exactly these bytes.
pub fn single_allocation_tail(grant: &str, credits: u64, expires_at_ms: Option<u64>) -> Vec<u8> {
    fn varint(n: u64) -> Vec<u8> {
        match n {
            0..=250 => vec![n as u8],
            251..=0xffff => [vec![251], (n as u16).to_le_bytes().to_vec()].concat(),
            0x1_0000..=0xffff_ffff => [vec![252], (n as u32).to_le_bytes().to_vec()].concat(),
            _ => [vec![253], n.to_le_bytes().to_vec()].concat(),
        }
    }
    let mut t = vec![1];
    t.extend(varint(grant.len() as u64));
    t.extend(grant.as_bytes());
    t.extend([0, 0]); // lot, from_lot
    t.extend(varint(credits));
    match expires_at_ms {
        Some(e) => {
            t.push(1);
            t.extend(varint(e));
        }
        None => t.push(0),
    }
    t
}

/// The record of generation `id` in the (closed) ledger file at `path`, with its payload's
/// last bytes `from` replaced by `to` and its frame checksum recomputed, so that only the
/// meaning changes. Panics if the record does not end with `from`.
pub fn edit_generation_tail(path: &std::path::Path, id: &str, from: &[u8], to: &[u8]) {
    use redb::ReadableTable;
    const GENERATIONS: redb::TableDefinition<&str, &[u8]> =
        redb::TableDefinition::new("generations");
    let db = redb::Database::open(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(GENERATIONS).unwrap();
        let bytes = t.get(id).unwrap().unwrap().value().to_vec();
        let body = &bytes[..bytes.len() - 4];
        assert!(
            body.ends_with(from),
            "generation `{id}`: {body:?} does not end with {from:?}"
        );
        let mut out = body[..body.len() - from.len()].to_vec();
        out.extend_from_slice(to);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        t.insert(id, out.as_slice()).unwrap();
    }
    w.commit().unwrap();
}

/// Delete each table named in `names` from a ledger file opened with redb itself (to make the
/// file an older schema's), asserting that each was there.
pub fn delete_tables(txn: &redb::WriteTransaction, names: &[&str]) {
    for name in names {
        let handle = txn
            .list_tables()
            .unwrap()
            .find(|h| redb::TableHandle::name(h) == *name)
            .unwrap_or_else(|| panic!("no table `{name}` to delete"));
        assert!(txn.delete_table(handle).unwrap(), "{name}");
    }
}

/// The grant tables schema 3 added.
pub const GRANT_TABLES: [&str; 5] = [
    "grants",
    "grant_order",
    "grant_expiries",
    "allocations",
    "grant_books",
];
