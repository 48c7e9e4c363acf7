//! Schema 6: a Refund's log record carries the grant lots it gave back, so a page of Refunds
//! reads one log record per Refund, and the views are exactly those its storage gives. The
//! audit names a Refund whose lots are missing or differ from its `allocations` row or its
//! generation, and any other record that carries some. A schema 5 file (whose records have no
//! such field, and which has a `refund_pages` table) reads as it is, and its first write
//! deletes the table and starts the lots at the next id.

mod common;

use std::path::Path;

use common::{assert_healthy, options, T0_MS};
use credit_ledger::{
    Clock, Credit, HistoryFilter, Invariant, Ledger, ManualClock, PageRequest, RefundReason,
    StartGeneration, TransactionView, TxnKind,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

const TRANSACTIONS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("transactions");
const REFUND_PAGES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("refund_pages");
const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
const MINUTE_MS: u64 = 60_000;

/// A log record as the ledger stores it, field for field (bincode encodes a nested struct as
/// its fields in order, so `Stored { head, refund_lots }` is the schema 6 layout and `head`
/// alone the schema 5 one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Head {
    id: u64,
    at_ms: u64,
    workspace: String,
    kind: TxnKind,
    amount_credits: u64,
    debit: bool,
    balance_before_credits: u64,
    balance_after_credits: u64,
    title: String,
    generation_id: Option<String>,
    refund: Option<Detail>,
    idempotency_key: Option<String>,
    memo: Option<String>,
    prev_crc: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Detail {
    reason: RefundReason,
    message: String,
    message_truncated: bool,
    usage_txn: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lot {
    grant_id: String,
    lot: u32,
    from_lot: u32,
    credits: u64,
    expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    head: Head,
    refund_lots: Option<Vec<Lot>>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// The framed record: format version 1, the payload, the CRC of both.
fn frame(payload: impl Serialize) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend(bincode::serde::encode_to_vec(payload, config()).unwrap());
    let crc = crc32fast::hash(&out);
    out.extend(crc.to_le_bytes());
    out
}

/// Every log record of the (closed) file at `path`, decoded in the schema 6 layout.
fn read_log(path: &Path) -> Vec<Stored> {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(TRANSACTIONS).unwrap();
    t.iter()
        .unwrap()
        .map(|e| {
            let (_, v) = e.unwrap();
            let b = v.value();
            let (rec, used): (Stored, usize) =
                bincode::serde::decode_from_slice(&b[1..b.len() - 4], config()).unwrap();
            assert_eq!(used, b.len() - 5);
            rec
        })
        .collect()
}

/// Write `log` back over the file's log, relinking the checksum chain, so that only the
/// records' meaning changes; `v5` writes the schema 5 layout (no `refund_lots`).
fn write_log(path: &Path, mut log: Vec<Stored>, v5: bool) {
    let db = redb::Database::open(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(TRANSACTIONS).unwrap();
        let mut prev = 0u32;
        for rec in &mut log {
            rec.head.prev_crc = prev;
            let bytes = if v5 { frame(&rec.head) } else { frame(&*rec) };
            prev = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
            t.insert(rec.head.id, bytes.as_slice()).unwrap();
        }
    }
    w.commit().unwrap();
}

fn meta_u64(path: &Path, key: &str) -> Option<u64> {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(META).unwrap();
    let v = t.get(key).unwrap()?;
    Some(u64::from_le_bytes(v.value().try_into().unwrap()))
}

fn schema(path: &Path) -> u8 {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(META).unwrap();
    let v = t.get("schema").unwrap().unwrap().value()[0];
    v
}

fn has_table(path: &Path, name: &str) -> bool {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let found = rtx
        .list_tables()
        .unwrap()
        .any(|h| redb::TableHandle::name(&h) == name);
    found
}

/// The public form of stored lots, as a view shows them.
fn shown(lots: &[Lot]) -> Vec<(String, u32, u64, Option<u64>)> {
    lots.iter()
        .map(|l| (l.grant_id.clone(), l.lot, l.credits, l.expires_at_ms))
        .collect()
}

fn view_lots(v: &TransactionView) -> Vec<(String, u32, u64, Option<u64>)> {
    v.allocations
        .iter()
        .map(|a| (a.grant_id.clone(), a.lot, a.credits, a.spendable_until_ms))
        .collect()
}

fn violations(l: &Ledger) -> Vec<(Invariant, String)> {
    l.verify()
        .unwrap()
        .violations
        .iter()
        .map(|v| (v.invariant, v.detail.clone()))
        .collect()
}

fn open(path: &Path, clock: &ManualClock) -> Ledger {
    Ledger::open_with(path, options(clock).sweep_on_open(false)).unwrap()
}

/// Refunds of every shape in `acme` and `globex`: to the lot that paid (no `allocations`
/// row), of a charge that spanned two grants, into a grace part of an expired grant, and by
/// the sweep at a deadline. `round` keeps the ids apart when called again.
fn refunds(l: &Ledger, clock: &ManualClock, round: u32) {
    let at = clock.now_ms();
    l.credit(Credit::grant("acme", 8, format!("trial-{round}")).expires_at_ms(at + 2 * MINUTE_MS))
        .unwrap();
    l.credit(Credit::purchase("acme", 100, format!("pack-{round}")))
        .unwrap();
    l.credit(Credit::purchase(
        "globex",
        50,
        format!("globex-pack-{round}"),
    ))
    .unwrap();
    let start = |id: String, ws: &str, cost: u64| {
        l.start_generation(StartGeneration::new(id, ws, "Quick Video", cost))
            .unwrap();
    };
    // Spans the trial (8) and the pack (4); the trial expires before the failure.
    start(format!("span-{round}"), "acme", 12);
    for i in 0..6 {
        start(format!("a{round}-{i}"), "acme", 2);
        start(format!("g{round}-{i}"), "globex", 3);
    }
    start(format!("late-{round}"), "globex", 1);
    clock.set_ms(at + 3 * MINUTE_MS);
    l.fail_generation(
        &format!("span-{round}"),
        RefundReason::ModelFailure,
        "no frames",
    )
    .unwrap();
    for i in 0..6 {
        if i % 2 == 0 {
            l.fail_generation(&format!("a{round}-{i}"), RefundReason::ModelFailure, "x")
                .unwrap();
            l.complete_generation(&format!("g{round}-{i}")).unwrap();
        } else {
            l.complete_generation(&format!("a{round}-{i}")).unwrap();
            l.fail_generation(&format!("g{round}-{i}"), RefundReason::ApiFailure, "y")
                .unwrap();
        }
    }
    // Past the default timeout: the sweep refunds the last one.
    clock.set_ms(at + 200 * MINUTE_MS);
    assert_eq!(l.sweep_expired(10).unwrap().refunds.len(), 1);
}

/// Every Refund of `ws` as the log gives it (`transaction`), newest first.
fn truth(l: &Ledger, ws: &str) -> Vec<TransactionView> {
    let all = l.changes(0, 1000).unwrap().entries;
    let mut out: Vec<TransactionView> = all
        .into_iter()
        .filter(|t| t.workspace == ws && t.kind == TxnKind::Refund)
        .map(|t| l.transaction(t.id).unwrap())
        .collect();
    out.reverse();
    out
}

/// Every page of Refunds of `ws`, `limit` at a time, in both orders, and the Refunds of the
/// unfiltered history, agree with the log.
fn assert_pages_agree(l: &Ledger, ws: &str) {
    let want = truth(l, ws);
    assert!(want.len() > 3, "{ws} has refunds");
    let refunds = HistoryFilter::all().kinds([TxnKind::Refund]);
    for limit in [1, 2, 5, 50] {
        let newest = common::paged_history(l, ws, &refunds, limit, false);
        assert_eq!(newest, want, "{ws}, newest first, {limit} a page");
        let mut oldest = common::paged_history(l, ws, &refunds, limit, true);
        oldest.reverse();
        assert_eq!(oldest, want, "{ws}, oldest first, {limit} a page");
    }
    let everything: Vec<TransactionView> =
        common::paged_history(l, ws, &HistoryFilter::all(), 7, false)
            .into_iter()
            .filter(|t| t.kind == TxnKind::Refund)
            .collect();
    assert_eq!(everything, want, "{ws}, unfiltered");
}

#[test]
fn a_page_of_refunds_is_what_the_log_says() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    let l = open(&path, &clock);
    refunds(&l, &clock, 0);
    assert_healthy(&l);
    // The shapes are there: a refund into a grace part, and one that spans two grants.
    let acme = truth(&l, "acme");
    assert!(acme.iter().any(|t| t.allocations.len() == 2), "{acme:#?}");
    assert!(acme.iter().any(|t| t.allocations.iter().any(|a| a.lot > 0)));
    for ws in ["acme", "globex"] {
        assert_pages_agree(&l, ws);
    }
    let other = HistoryFilter::all()
        .kinds([TxnKind::Refund])
        .feature("Quick Image");
    let page = l.history("acme", &other, &PageRequest::first(50)).unwrap();
    assert!(page.entries.is_empty());
    let views: Vec<TransactionView> = l.changes(0, 1000).unwrap().entries;
    drop(l);
    // Each Refund's record holds the lots its view shows, and no other record holds any.
    let log = read_log(&path);
    assert_eq!(log.len(), views.len());
    let mut refunds = 0;
    for (rec, view) in log.iter().zip(&views) {
        assert_eq!(rec.head.id, view.id);
        match rec.head.kind {
            TxnKind::Refund => {
                refunds += 1;
                let lots = rec
                    .refund_lots
                    .as_deref()
                    .expect("a Refund carries its lots");
                assert_eq!(shown(lots), view_lots(view), "Refund #{}", view.id);
                assert!(!lots.is_empty());
            }
            _ => assert_eq!(rec.refund_lots, None, "#{}", view.id),
        }
    }
    assert_eq!(refunds, 8);
    assert!(
        !has_table(&path, "refund_pages"),
        "schema 6 has no covering index"
    );
    assert_eq!(schema(&path), 6);
    assert_eq!(meta_u64(&path, "refund_lots_from"), Some(1));
}

/// A Refund whose lots differ from its storage, a Refund without its lots, another record
/// with lots, and a missing `meta` key are each named, and nothing else is (the chain is
/// relinked, so only the meaning changed). None of them makes a read panic.
#[test]
fn the_audit_names_lots_that_are_wrong_missing_or_foreign() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = open(&path, &clock);
        refunds(&l, &clock, 0);
        assert_healthy(&l);
    }
    let log = read_log(&path);
    let refund_at = log
        .iter()
        .position(|r| r.head.kind == TxnKind::Refund)
        .unwrap();
    let usage_at = log
        .iter()
        .position(|r| r.head.kind == TxnKind::Usage)
        .unwrap();
    let (refund_id, usage_id) = (log[refund_at].head.id, log[usage_at].head.id);
    let ws = log[refund_at].head.workspace.clone();
    let copies = std::cell::Cell::new(0);
    let damage = |edit: &dyn Fn(&mut Vec<Stored>)| {
        copies.set(copies.get() + 1);
        let copy = dir.path().join(format!("damaged-{}.redb", copies.get()));
        std::fs::copy(&path, &copy).unwrap();
        let mut changed = log.clone();
        edit(&mut changed);
        write_log(&copy, changed, false);
        open(&copy, &clock)
    };
    let only = |l: &Ledger, text: &str| {
        let found = violations(l);
        assert!(!found.is_empty(), "{text}");
        assert!(
            found.iter().all(|(i, _)| *i == Invariant::RefundLots),
            "{text}: {found:#?}"
        );
        assert!(
            found.iter().any(|(_, d)| d.contains(text)),
            "{text}: {found:#?}"
        );
        // A page shows what the record says; it neither fails nor panics.
        let refunds = HistoryFilter::all().kinds([TxnKind::Refund]);
        l.history(&ws, &refunds, &PageRequest::first(50)).unwrap();
        l.transaction(refund_id).unwrap();
    };

    let l = damage(&|log| {
        let lots = log[refund_at].refund_lots.as_mut().unwrap();
        lots[0].credits += 1;
    });
    only(
        &l,
        &format!("Refund #{refund_id} says it gave back other grant lots than its allocations say"),
    );

    let l = damage(&|log| log[refund_at].refund_lots = None);
    only(
        &l,
        &format!("Refund #{refund_id} does not say which grant lots it gave back"),
    );

    let l = damage(&|log| log[usage_at].refund_lots = Some(Vec::new()));
    only(&l, &format!("Usage #{usage_id} carries refund lots"));

    // Without the key the audit cannot tell where the lots start: named, not guessed.
    let copy = dir.path().join("no-key.redb");
    std::fs::copy(&path, &copy).unwrap();
    {
        let db = redb::Database::open(&copy).unwrap();
        let w = db.begin_write().unwrap();
        assert!(w
            .open_table(META)
            .unwrap()
            .remove("refund_lots_from")
            .unwrap()
            .is_some());
        w.commit().unwrap();
    }
    let l = open(&copy, &clock);
    only(&l, "refund_lots_from");

    // A key that is not a u64 is named the same way.
    let copy = dir.path().join("bad-key.redb");
    std::fs::copy(&path, &copy).unwrap();
    {
        let db = redb::Database::open(&copy).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(META)
            .unwrap()
            .insert("refund_lots_from", [1u8, 2, 3].as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let l = open(&copy, &clock);
    only(&l, "3 bytes where 8 were expected");
}

/// A schema 5 file: records without lots, and a `refund_pages` table. It reads as it is and a
/// read does not upgrade it; its first write records schema 6, deletes the table and its key,
/// and starts the lots at that write's first id, so later Refunds carry them and the older
/// ones are read the older way, on one page.
#[test]
fn a_schema_5_file_reads_as_it_is_and_its_first_write_upgrades_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = open(&path, &clock);
        refunds(&l, &clock, 0);
    }
    // Make it what a version 5 build wrote.
    let old = read_log(&path);
    write_log(&path, old.clone(), true);
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut pages = w.open_table(REFUND_PAGES).unwrap();
            for r in old.iter().filter(|r| r.head.kind == TxnKind::Refund) {
                pages.insert(r.head.id, [0u8; 8].as_slice()).unwrap();
            }
            let mut meta = w.open_table(META).unwrap();
            assert!(meta.remove("refund_lots_from").unwrap().is_some());
            meta.insert("refund_pages_from", 1u64.to_le_bytes().as_slice())
                .unwrap();
            meta.insert("schema", [5u8].as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let before: Vec<Vec<TransactionView>> = {
        let l = open(&path, &clock);
        assert_healthy(&l);
        for ws in ["acme", "globex"] {
            assert_pages_agree(&l, ws);
        }
        ["acme", "globex"].iter().map(|ws| truth(&l, ws)).collect()
    };
    assert_eq!(schema(&path), 5, "reads never upgrade");
    assert!(has_table(&path, "refund_pages"), "reads never delete");
    let l = open(&path, &clock);
    refunds(&l, &clock, 1);
    assert_healthy(&l);
    for ws in ["acme", "globex"] {
        assert_pages_agree(&l, ws);
    }
    // The older Refunds read as they did.
    for (ws, was) in ["acme", "globex"].iter().zip(&before) {
        let now = truth(&l, ws);
        assert_eq!(&now[now.len() - was.len()..], was.as_slice(), "{ws}");
    }
    drop(l);
    assert_eq!(schema(&path), 6);
    assert!(!has_table(&path, "refund_pages"));
    assert_eq!(meta_u64(&path, "refund_pages_from"), None);
    let from = meta_u64(&path, "refund_lots_from").unwrap();
    assert_eq!(from, old.len() as u64 + 1);
    for rec in read_log_any(&path) {
        let carries = rec.1;
        match rec.0.kind {
            TxnKind::Refund => assert_eq!(carries, rec.0.id >= from, "Refund #{}", rec.0.id),
            _ => assert!(!carries, "#{}", rec.0.id),
        }
    }
}

/// Every record of the file, in either layout, and whether it carries lots.
fn read_log_any(path: &Path) -> Vec<(Head, bool)> {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(TRANSACTIONS).unwrap();
    t.iter()
        .unwrap()
        .map(|e| {
            let (_, v) = e.unwrap();
            let b = &v.value()[1..v.value().len() - 4];
            match bincode::serde::decode_from_slice::<Stored, _>(b, config()) {
                Ok((s, n)) if n == b.len() => (s.head, s.refund_lots.is_some()),
                _ => {
                    let (h, n): (Head, usize) =
                        bincode::serde::decode_from_slice(b, config()).unwrap();
                    assert_eq!(n, b.len());
                    (h, false)
                }
            }
        })
        .collect()
}
