//! The `refund_pages` index of schema 5: a page of Refunds reads their views from it, one
//! entry each, and they are exactly the views the log gives; the audit names an
//! entry that is missing, tampered with or stale; a file from schema 4 reads its older Refunds
//! from the log and covers those written after its upgrade.

mod common;

use std::path::Path;

use common::{assert_healthy, options, T0_MS};
use credit_ledger::{
    Clock, Credit, Error, HistoryFilter, Invariant, Ledger, ManualClock, PageRequest, RefundReason,
    StartGeneration, TransactionView, TxnKind,
};

const REFUND_PAGES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("refund_pages");
const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
const MINUTE_MS: u64 = 60_000;

type PagesTable<'t> = redb::Table<'t, u64, &'static [u8]>;

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

fn entries(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let db = redb::Database::open(path).unwrap();
    let rtx = redb::ReadableDatabase::begin_read(&db).unwrap();
    let t = rtx.open_table(REFUND_PAGES).unwrap();
    redb::ReadableTable::iter(&t)
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect()
}

fn refund_page_violations(l: &Ledger) -> Vec<String> {
    l.verify()
        .unwrap()
        .violations
        .iter()
        .filter(|v| v.invariant == Invariant::RefundPageIndex)
        .map(|v| v.detail.clone())
        .collect()
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
    // The feature filter applies to covered Refunds too.
    let other = HistoryFilter::all()
        .kinds([TxnKind::Refund])
        .feature("Quick Image");
    let page = l.history("acme", &other, &PageRequest::first(50)).unwrap();
    assert!(page.entries.is_empty());
    drop(l);
    // Every Refund has its entry, and only Refunds.
    let covered = entries(&path);
    let l = open(&path, &clock);
    let n = ["acme", "globex"]
        .iter()
        .map(|ws| truth(&l, ws).len())
        .sum();
    assert_eq!(covered.len(), n);
}

/// A deleted, a tampered and a stale entry are each named; a damaged one makes the page a
/// `Corruption` error, never a wrong page or a panic.
#[test]
fn the_audit_names_a_missing_tampered_or_stale_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    let (usage, first_ws) = {
        let l = open(&path, &clock);
        refunds(&l, &clock, 0);
        assert_healthy(&l);
        assert!(refund_page_violations(&l).is_empty());
        let all = l.changes(0, 1000).unwrap().entries;
        let usage = all.iter().find(|t| t.kind == TxnKind::Usage).unwrap().id;
        let first = all.iter().find(|t| t.kind == TxnKind::Refund).unwrap();
        (usage, first.workspace.clone())
    };
    let covered = entries(&path);
    let (first_id, _) = covered[0].clone();
    let (_, second) = covered[1].clone();
    let copies = std::cell::Cell::new(0);
    let damage = |edit: &dyn Fn(&mut PagesTable)| {
        copies.set(copies.get() + 1);
        let copy = dir.path().join(format!("damaged-{}.redb", copies.get()));
        std::fs::copy(&path, &copy).unwrap();
        let db = redb::Database::open(&copy).unwrap();
        let w = db.begin_write().unwrap();
        edit(&mut w.open_table(REFUND_PAGES).unwrap());
        w.commit().unwrap();
        drop(db);
        open(&copy, &clock)
    };
    let has = |found: &[String], text: &str| {
        assert!(found.iter().any(|d| d.contains(text)), "{text}: {found:#?}");
    };
    let refunds = HistoryFilter::all().kinds([TxnKind::Refund]);
    let page_is_corruption = |l: &Ledger| {
        let read = l.history(&first_ws, &refunds, &PageRequest::first(50));
        assert!(
            matches!(
                read,
                Err(Error::Corruption {
                    table: "refund_pages",
                    ..
                })
            ),
            "{read:?}"
        );
    };

    let l = damage(&|t| {
        t.remove(first_id).unwrap();
    });
    let found = refund_page_violations(&l);
    has(
        &found,
        &format!("Refund #{first_id} has no refund_pages entry"),
    );
    has(&found, "refund_pages entries where the log has");
    page_is_corruption(&l);

    // Another Refund's entry, well framed, under this one's key.
    let l = damage(&|t| {
        t.insert(first_id, second.as_slice()).unwrap();
    });
    has(
        &refund_page_violations(&l),
        &format!("the refund_pages entry of Refund #{first_id} differs"),
    );
    page_is_corruption(&l);

    // An entry for a Usage, and one for no transaction.
    let l = damage(&|t| {
        t.insert(usage, second.as_slice()).unwrap();
        t.insert(1 << 40, second.as_slice()).unwrap();
    });
    let found = refund_page_violations(&l);
    has(&found, &format!("entry #{usage} is stale: for a Usage"));
    has(
        &found,
        &format!(
            "entry #{} is stale: for no readable transaction",
            1u64 << 40
        ),
    );
    assert!(l
        .history(&first_ws, &refunds, &PageRequest::first(50))
        .is_ok());

    // Bytes that are no record at all.
    let l = damage(&|t| {
        t.insert(first_id, [7u8; 9].as_slice()).unwrap();
    });
    has(
        &refund_page_violations(&l),
        &format!("the refund_pages entry of Refund #{first_id}"),
    );
    page_is_corruption(&l);
}

/// A schema 4 file (no covering index) reads its Refunds from the log; its first refund
/// records schema 5 and starts the index at its own id, so later pages merge the covered
/// Refunds with the older ones, and the audit asks entries only of those.
#[test]
fn a_schema_4_file_covers_the_refunds_after_its_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = open(&path, &clock);
        refunds(&l, &clock, 0);
    }
    // Make it what a version 4 build wrote: no covering index, schema byte 4.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        assert!(w.delete_table(REFUND_PAGES).unwrap());
        {
            let mut meta = w.open_table(META).unwrap();
            assert!(meta.remove("refund_pages_from").unwrap().is_some());
            meta.insert("schema", [4u8].as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let schema = |path: &Path| {
        let db = redb::Database::open(path).unwrap();
        let rtx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = rtx.open_table(META).unwrap();
        let v = redb::ReadableTable::get(&t, "schema")
            .unwrap()
            .unwrap()
            .value()[0];
        v
    };
    let before: Vec<Vec<TransactionView>> = {
        let l = open(&path, &clock);
        assert_healthy(&l);
        for ws in ["acme", "globex"] {
            assert_pages_agree(&l, ws);
        }
        ["acme", "globex"].iter().map(|ws| truth(&l, ws)).collect()
    };
    assert_eq!(schema(&path), 4, "reads never upgrade");
    let l = open(&path, &clock);
    refunds(&l, &clock, 1);
    assert_healthy(&l);
    for ws in ["acme", "globex"] {
        assert_pages_agree(&l, ws);
    }
    drop(l);
    assert_eq!(schema(&path), 5);
    let covered = entries(&path);
    let oldest_before = before.iter().flatten().map(|t| t.id).max().unwrap();
    assert!(covered.iter().all(|(id, _)| *id > oldest_before));
    let l = open(&path, &clock);
    let n: usize = ["acme", "globex"]
        .iter()
        .map(|ws| truth(&l, ws).len())
        .sum();
    let older: usize = before.iter().map(Vec::len).sum();
    assert_eq!(covered.len(), n - older);
    // An entry for a Refund from before the upgrade is stale.
    drop(l);
    let (key, bytes) = covered[0].clone();
    let old_refund = before[0][0].id;
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(REFUND_PAGES)
            .unwrap()
            .insert(old_refund, bytes.as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let l = open(&path, &clock);
    let found = refund_page_violations(&l);
    assert!(
        found
            .iter()
            .any(|d| d.contains(&format!("entry #{old_refund} is stale: before #"))),
        "{key:?} {found:#?}"
    );
}
