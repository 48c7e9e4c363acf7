//! `verify()` on healthy and deliberately damaged ledgers.

mod common;

use std::path::Path;

use common::{fund, options, T0_MS};
use credit_ledger::{Credit, Error, Invariant, Ledger, ManualClock, RefundReason, StartGeneration};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const TRANSACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("transactions");
const WORKSPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("workspaces");

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    usage_txn: u64,
    refund_txn: u64,
}

/// A small healthy ledger on disk: a credit, a failed and a completed generation.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.redb");
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
    fund(&ledger, "ws", 100);
    let charge = ledger
        .start_generation(StartGeneration::new("g1", "ws", "Quick Video", 12))
        .unwrap();
    let refund = ledger
        .fail_generation("g1", RefundReason::ModelFailure, "model crashed")
        .unwrap();
    ledger
        .start_generation(StartGeneration::new("g2", "ws", "Image", 5))
        .unwrap();
    ledger.complete_generation("g2").unwrap();
    fund(&ledger, "ws", 7);
    let report = ledger.verify().unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
    assert_eq!(report.checked.transactions, 5);
    Fixture {
        _dir: dir,
        path,
        clock,
        usage_txn: charge.usage_txn,
        refund_txn: refund.refund_txn,
    }
}

/// Edit the stored bytes of one record with redb directly, as damage from outside would.
fn edit_txn(path: &Path, id: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let db = redb::Database::open(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(TRANSACTIONS).unwrap();
        let mut bytes = t.get(id).unwrap().unwrap().value().to_vec();
        f(&mut bytes);
        t.insert(id, bytes.as_slice()).unwrap();
    }
    w.commit().unwrap();
}

/// Recompute the frame checksum after a deliberate edit, so only the meaning is wrong.
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

fn reopen(f: &Fixture) -> Ledger {
    Ledger::open_with(&f.path, options(&f.clock).sweep_on_open(false)).unwrap()
}

fn invariants(ledger: &Ledger) -> Vec<Invariant> {
    let report = ledger.verify().unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.violation_count as usize, report.violations.len());
    report.violations.iter().map(|v| v.invariant).collect()
}

#[test]
fn a_healthy_ledger_gives_an_empty_report() {
    let f = fixture();
    let ledger = reopen(&f);
    let report = ledger.verify().unwrap();
    assert!(report.is_clean());
    assert!(report.violations.is_empty());
    assert_eq!(report.checked.generations, 2);
    assert_eq!(report.checked.history_entries, 5);
}

#[test]
fn a_changed_workspace_balance_is_named() {
    let f = fixture();
    {
        let db = redb::Database::open(&f.path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(WORKSPACES).unwrap();
            let mut bytes = t.get("ws").unwrap().unwrap().value().to_vec();
            // [version][balance as a one-byte varint]...: 102 credits becomes 200.
            assert_eq!(bytes[1], 102);
            bytes[1] = 200;
            reseal(&mut bytes);
            t.insert("ws", bytes.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let ledger = reopen(&f);
    assert_eq!(ledger.balance("ws").unwrap().balance_credits, 200);
    let report = ledger.verify().unwrap();
    let v = &report.violations[0];
    assert_eq!(v.invariant, Invariant::WorkspaceTotals);
    assert_eq!(v.workspace.as_deref(), Some("ws"));
    // In the user's terms: which total differs, both numbers, and by how much; nothing else.
    assert_eq!(
        v.detail,
        "workspace record disagrees: balance: stored 200, its last transaction leaves 102 (98 less)"
    );
    assert!(!ledger.totals().unwrap().is_conserved());
}

#[test]
fn a_changed_transaction_amount_is_named() {
    let f = fixture();
    // Change the Usage's balance-after and reseal the frame, so the checksum passes and
    // only the meaning is wrong.
    edit_txn(&f.path, f.usage_txn, |bytes| {
        let n = bytes.len();
        // Find the byte 88 (balance after 100 - 12) and make it 87.
        let pos = bytes[..n - 4].iter().rposition(|b| *b == 88).unwrap();
        bytes[pos] = 87;
        reseal(bytes);
    });
    let ledger = reopen(&f);
    let inv = invariants(&ledger);
    assert!(
        inv.contains(&Invariant::BalanceArithmetic) || inv.contains(&Invariant::BalanceChain),
        "{inv:?}"
    );
    // The resealed record also breaks the chain into the next transaction.
    assert!(inv.contains(&Invariant::ChainBroken), "{inv:?}");
}

#[test]
fn a_removed_refund_is_named() {
    let f = fixture();
    {
        let db = redb::Database::open(&f.path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(TRANSACTIONS)
            .unwrap()
            .remove(f.refund_txn)
            .unwrap();
        w.commit().unwrap();
    }
    let ledger = reopen(&f);
    let report = ledger.verify().unwrap();
    let inv: Vec<_> = report.violations.iter().map(|v| v.invariant).collect();
    for expected in [
        Invariant::IdsNotDense,
        Invariant::RefundLink,
        Invariant::HistoryIndex,
        Invariant::WorkspaceTotals,
    ] {
        assert!(inv.contains(&expected), "{expected:?} missing from {inv:?}");
    }
    let link = report
        .violations
        .iter()
        .find(|v| v.invariant == Invariant::RefundLink)
        .unwrap();
    assert_eq!(link.generation.as_deref(), Some("g1"));
    assert!(link.txn_ids.contains(&f.refund_txn));
    // Reading it gives a typed answer.
    assert!(matches!(
        ledger.transaction(f.refund_txn),
        Err(Error::UnknownTransaction { .. })
    ));
}

#[test]
fn a_flipped_byte_is_named_and_reads_fail_cleanly() {
    let f = fixture();
    edit_txn(&f.path, f.usage_txn, |bytes| bytes[3] ^= 0x40);
    let ledger = reopen(&f);
    let report = ledger.verify().unwrap();
    let v = report
        .violations
        .iter()
        .find(|v| v.invariant == Invariant::Corruption)
        .expect("a corruption violation");
    assert_eq!(v.txn_ids, vec![f.usage_txn]);
    assert!(v.detail.contains("transactions"), "{}", v.detail);
    match ledger.transaction(f.usage_txn) {
        Err(Error::Corruption { table, key, .. }) => {
            assert_eq!((table, key), ("transactions", f.usage_txn.to_string()));
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
    // History that has to read the damaged record says so, too.
    let r = ledger.history(
        "ws",
        &credit_ledger::HistoryFilter::all(),
        &credit_ledger::PageRequest::first(50),
    );
    assert!(matches!(r, Err(Error::Corruption { .. })), "{r:?}");
}

#[test]
fn damage_to_the_last_record_fails_the_open_with_a_named_error() {
    let f = fixture();
    let last = {
        let db = redb::Database::open(&f.path).unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(TRANSACTIONS).unwrap();
        let last = t.last().unwrap().unwrap().0.value();
        last
    };
    edit_txn(&f.path, last, |bytes| bytes[2] ^= 1);
    match Ledger::open_with(&f.path, options(&f.clock)) {
        Err(Error::Corruption { table, key, .. }) => {
            assert_eq!((table, key), ("transactions", last.to_string()));
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
}

const DEADLINES: TableDefinition<(u64, &str), ()> = TableDefinition::new("deadlines");
const HISTORY: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("workspace_history");
const IDEMPOTENCY: TableDefinition<&str, u64> = TableDefinition::new("idempotency");

#[test]
fn a_second_refund_of_the_same_generation_is_named() {
    let f = fixture();
    {
        let db = redb::Database::open(&f.path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(TRANSACTIONS).unwrap();
            let refund = t.get(f.refund_txn).unwrap().unwrap().value().to_vec();
            let last = t.last().unwrap().unwrap().0.value();
            t.insert(last + 1, refund.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let ledger = reopen(&f);
    let report = ledger.verify().unwrap();
    let dup = report
        .violations
        .iter()
        .find(|v| v.invariant == Invariant::DuplicateRefund)
        .unwrap_or_else(|| panic!("{:#?}", report.violations));
    assert_eq!(dup.generation.as_deref(), Some("g1"));
    assert!(dup.txn_ids.contains(&f.refund_txn), "{dup:?}");
}

#[test]
fn a_lost_deadline_entry_is_named() {
    let (dir, clock) = (tempfile::tempdir().unwrap(), ManualClock::new(T0_MS));
    let path = dir.path().join("d.redb");
    let deadline = {
        let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
        fund(&ledger, "ws", 100);
        ledger
            .start_generation(StartGeneration::new("run", "ws", "Image", 3))
            .unwrap()
            .deadline_ms
    };
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        assert!(w
            .open_table(DEADLINES)
            .unwrap()
            .remove((deadline, "run"))
            .unwrap()
            .is_some());
        w.commit().unwrap();
    }
    let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
    let report = ledger.verify().unwrap();
    assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);
    let v = &report.violations[0];
    assert_eq!(v.invariant, Invariant::DeadlineIndex);
    assert_eq!(v.generation.as_deref(), Some("run"));
}

#[test]
fn stray_index_entries_are_named() {
    let f = fixture();
    {
        let db = redb::Database::open(&f.path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(HISTORY)
            .unwrap()
            .insert(("ws", 5u8, f.usage_txn), ())
            .unwrap();
        w.open_table(IDEMPOTENCY)
            .unwrap()
            .insert("forged-key", f.refund_txn)
            .unwrap();
        w.open_table(DEADLINES)
            .unwrap()
            .insert((T0_MS, "g2"), ())
            .unwrap();
        w.commit().unwrap();
    }
    let ledger = reopen(&f);
    let report = ledger.verify().unwrap();
    let named = |inv: Invariant, needle: &str| {
        report
            .violations
            .iter()
            .any(|v| v.invariant == inv && v.detail.contains(needle))
    };
    assert!(
        named(Invariant::HistoryIndex, &format!("#{}", f.usage_txn)),
        "{report:#?}"
    );
    assert!(
        named(Invariant::IdempotencyIndex, "forged-key"),
        "{report:#?}"
    );
    assert!(named(Invariant::DeadlineIndex, "g2"), "{report:#?}");
}

const ALLOCATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("allocations");
type OrderKey = (&'static str, u32, u64, u64, &'static str, u32);
const GRANT_ORDER: TableDefinition<OrderKey, ()> = TableDefinition::new("grant_order");

/// A ledger with two grants, a 5-credit trial that expires (spent first) and a pack, and two
/// 5-credit charges: the first drawn from the trial, the second from the pack.
fn grants_fixture() -> (tempfile::TempDir, std::path::PathBuf, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grants.redb");
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
    ledger
        .credit(Credit::grant("ws", 5, "trial").expires_at_ms(T0_MS + 3_600_000))
        .unwrap();
    ledger.credit(Credit::purchase("ws", 50, "pack")).unwrap();
    for g in ["g1", "g2"] {
        let c = ledger
            .start_generation(StartGeneration::new(g, "ws", "Quick Video", 5))
            .unwrap();
        assert_eq!(c.allocations.len(), 1);
    }
    let report = ledger.verify().unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
    assert_eq!(report.checked.grant_lots, 2);
    drop(ledger);
    (dir, path, clock)
}

fn edit_allocations(path: &Path, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    let db = redb::Database::open(path).unwrap();
    let w = db.begin_write().unwrap();
    f(&mut w.open_table(ALLOCATIONS).unwrap());
    w.commit().unwrap();
}

fn grant_invariants(path: &Path, clock: &ManualClock) -> Vec<Invariant> {
    let ledger = Ledger::open_with(path, options(clock).sweep_on_open(false)).unwrap();
    invariants(&ledger)
}

/// The stored allocation of g1 (txn 3, from the trial) and g2 (txn 4, from the pack): each
/// paid by one lot, so held in its generation record.
fn fixture_tails() -> (Vec<u8>, Vec<u8>) {
    (
        common::single_allocation_tail("trial", 5, Some(T0_MS + 3_600_000)),
        common::single_allocation_tail("pack", 5, None),
    )
}

#[test]
fn a_charge_without_its_allocations_is_named() {
    let (_dir, path, clock) = grants_fixture();
    let (trial, _) = fixture_tails();
    common::edit_generation_tail(&path, "g1", &trial, &[0]);
    assert!(grant_invariants(&path, &clock).contains(&Invariant::AllocationSum));
}

#[test]
fn a_charge_that_skipped_an_earlier_spendable_grant_is_named() {
    let (_dir, path, clock) = grants_fixture();
    // Swap the two charges' allocations: the first now claims the pack while the trial,
    // earlier in the drawdown order and spendable, still held credits.
    let (trial, pack) = fixture_tails();
    common::edit_generation_tail(&path, "g1", &trial, &pack);
    common::edit_generation_tail(&path, "g2", &pack, &trial);
    let found = grant_invariants(&path, &clock);
    assert!(found.contains(&Invariant::DrawdownOrder), "{found:?}");
}

/// A charge that spans two grants keeps its allocations in the `allocations` table.
#[test]
fn a_spanning_charge_without_its_allocations_row_is_named() {
    let (_dir, path, clock) = grants_fixture();
    {
        let ledger = Ledger::open_with(&path, options(&clock)).unwrap();
        ledger.credit(Credit::purchase("ws", 3, "small")).unwrap();
        // The pack holds 45: a charge of 47 takes all of it and 2 of the small top-up.
        let c = ledger
            .start_generation(StartGeneration::new("g3", "ws", "Quick Video", 47))
            .unwrap();
        assert_eq!(c.allocations.len(), 2);
        assert!(ledger.verify().unwrap().is_clean());
        assert_eq!(c.usage_txn, 6);
    }
    edit_allocations(&path, |t| {
        assert!(t.remove(6).unwrap().is_some());
    });
    assert!(grant_invariants(&path, &clock).contains(&Invariant::AllocationSum));
}

#[test]
fn a_lost_grant_index_entry_is_named() {
    let (_dir, path, clock) = grants_fixture();
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(GRANT_ORDER).unwrap();
            let first: Vec<_> = t
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, _) = e.unwrap();
                    let (ws, p, x, f, id, lot) = k.value();
                    (ws.to_string(), p, x, f, id.to_string(), lot)
                })
                .collect();
            let (ws, p, x, f, id, lot) = &first[0];
            t.remove((ws.as_str(), *p, *x, *f, id.as_str(), *lot))
                .unwrap();
        }
        w.commit().unwrap();
    }
    let found = grant_invariants(&path, &clock);
    assert!(found.contains(&Invariant::GrantIndex), "{found:?}");
}
