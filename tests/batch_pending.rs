//! A batch writes its log records and its history entries at its end, in key order (see
//! `Ctx::flush` in `src/engine/mod.rs`): a retry later in the same batch must still see what
//! the batch wrote before it, and runs of history keys must land exactly once each, around
//! entries the file already holds.

mod common;

use common::{assert_healthy, fund, ledger, options, paged_history, T0_MS};
use credit_ledger::{
    Credit, Error, HistoryFilter, Ledger, ManualClock, Op, Outcome, RefundReason, StartGeneration,
    TxnKind,
};

fn start(id: &str, ws: &str, cost: u64) -> Op {
    Op::Start(StartGeneration::new(id, ws, "Quick Video", cost))
}

fn fail(id: &str) -> Op {
    Op::Fail {
        generation_id: id.into(),
        reason: RefundReason::ModelFailure,
        message: "x".into(),
    }
}

#[test]
fn a_retry_in_the_same_batch_reads_what_the_batch_wrote() {
    let (l, _clock) = ledger();
    let results = l.apply(&[
        Op::Credit(Credit::purchase("ws", 100, "pack")),
        Op::Credit(Credit::purchase("ws", 100, "pack")),
        Op::Credit(Credit::purchase("ws", 101, "pack")),
        start("g", "ws", 12),
        start("g", "ws", 12),
        start("g", "ws", 13),
        fail("g"),
        fail("g"),
    ]);
    let credit = |i: usize| match &results[i] {
        Ok(Outcome::Credit(r)) => r.clone(),
        other => panic!("#{i}: {other:?}"),
    };
    let (first, retry) = (credit(0), credit(1));
    assert!(!first.replay && retry.replay, "{first:?} {retry:?}");
    assert_eq!(first.txn_id, retry.txn_id);
    assert!(
        matches!(
            &results[2],
            Err(Error::Conflict {
                field: "amount",
                ..
            })
        ),
        "{:?}",
        results[2]
    );
    let charge = |i: usize| match &results[i] {
        Ok(Outcome::Start(c)) => c.clone(),
        other => panic!("#{i}: {other:?}"),
    };
    let (first, retry) = (charge(3), charge(4));
    assert!(!first.replay && retry.replay);
    assert_eq!(
        (first.usage_txn, first.balance_after_credits),
        (retry.usage_txn, retry.balance_after_credits)
    );
    assert!(
        matches!(&results[5], Err(Error::Conflict { .. })),
        "{:?}",
        results[5]
    );
    match (&results[6], &results[7]) {
        (Ok(Outcome::Fail(a)), Ok(Outcome::Fail(b))) => {
            assert!(!a.replay && b.replay);
            assert_eq!(a.refund_txn, b.refund_txn);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.balance("ws").unwrap().balance_credits, 100);
    assert_healthy(&l);
}

/// 40 starts on one workspace (a run for the cursor) and a few on others (single inserts),
/// then fails of every other one (runs of Refunds and of failed-Usage markers): every entry
/// is filed once, in a file that already held one of the batch's own keys (as a replay of a
/// torn write could leave it) and a stray key between two of them, which breaks the run.
#[test]
fn runs_of_history_keys_land_once_each_around_existing_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    let next_id = {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        for ws in ["big", "a", "b"] {
            fund(&l, ws, 10_000);
        }
        l.changes(0, 100).unwrap().entries.len() as u64 + 1
    };
    // The key the batch's sixth start will file, planted ahead of it, and a stray one where
    // the second start of another workspace goes, between the first two of `big`.
    const HISTORY: redb::TableDefinition<(&str, u8, u64), ()> =
        redb::TableDefinition::new("workspace_history");
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        // Category 2 is Usage (see `Category` in src/storage/tables.rs).
        let mut t = w.open_table(HISTORY).unwrap();
        t.insert(("big", 2u8, next_id + 5), ()).unwrap();
        t.insert(("big", 2u8, next_id + 1), ()).unwrap();
        drop(t);
        w.commit().unwrap();
    }
    let l = Ledger::open_with(&path, options(&clock)).unwrap();
    let mut ops = Vec::new();
    for i in 0..40 {
        ops.push(start(&format!("big-{i}"), "big", 3));
        if i % 10 == 0 {
            ops.push(start(&format!("a-{i}"), "a", 2));
            ops.push(start(&format!("b-{i}"), "b", 2));
        }
    }
    assert!(l.apply(&ops).iter().all(Result::is_ok));
    let fails: Vec<Op> = (0..40)
        .step_by(2)
        .map(|i| fail(&format!("big-{i}")))
        .collect();
    assert!(l.apply(&fails).iter().all(Result::is_ok));
    // The stray is named (and counted one too many), and nothing else is.
    let found = l.verify().unwrap().violations;
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0]
            .detail
            .contains(&format!("(big, 2, #{})", next_id + 1)),
        "{found:#?}"
    );
    assert!(found[1].detail.contains("entries where"), "{found:#?}");
    drop(l);
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        let gone = w
            .open_table(HISTORY)
            .unwrap()
            .remove(("big", 2u8, next_id + 1))
            .unwrap()
            .is_some();
        assert!(gone);
        w.commit().unwrap();
    }
    let l = Ledger::open_with(&path, options(&clock)).unwrap();
    assert_healthy(&l);
    let usages = paged_history(
        &l,
        "big",
        &HistoryFilter::all().kinds([TxnKind::Usage]),
        7,
        false,
    );
    assert_eq!(usages.len(), 40);
    assert_eq!(usages.iter().filter(|t| t.id == next_id + 5).count(), 1);
    let failed = paged_history(
        &l,
        "big",
        &HistoryFilter::all().statuses([credit_ledger::Status::Failed]),
        7,
        false,
    );
    assert_eq!(failed.len(), 20);
    let refunds = paged_history(
        &l,
        "big",
        &HistoryFilter::all().kinds([TxnKind::Refund]),
        7,
        true,
    );
    assert_eq!(refunds.len(), 20);
    for ws in ["a", "b"] {
        let all = paged_history(&l, ws, &HistoryFilter::all(), 3, false);
        assert_eq!(all.len(), 5, "{ws}: the credit and four starts");
    }
    assert_eq!(l.balance("big").unwrap().balance_credits, 10_000 - 20 * 3);
}

/// A batch longer than the records a transaction holds back writes them part way through:
/// retries on both sides of that point still find their records, and every entry is filed.
#[test]
fn a_batch_past_the_pending_bound_loses_nothing() {
    let (l, _clock) = ledger();
    fund(&l, "ws", 1_000_000);
    let n = 4_500;
    let mut ops: Vec<Op> = (0..n).map(|i| start(&format!("g{i}"), "ws", 1)).collect();
    for i in [0, 4_090, 4_095, 4_100, n - 1] {
        ops.push(start(&format!("g{i}"), "ws", 1));
    }
    let results = l.apply(&ops);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(Outcome::Start(c)) => assert_eq!(c.replay, i >= n, "#{i}"),
            other => panic!("#{i}: {other:?}"),
        }
    }
    assert_eq!(
        l.balance("ws").unwrap().balance_credits,
        1_000_000 - n as u64
    );
    let usages = paged_history(
        &l,
        "ws",
        &HistoryFilter::all().kinds([TxnKind::Usage]),
        500,
        false,
    );
    assert_eq!(usages.len(), n);
    assert_healthy(&l);
}
