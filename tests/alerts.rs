//! Balance alerts: one `BalanceLow` notification per crossing from at or above the threshold
//! to below it, written in the same commit as the transaction that crossed, moving nothing.

mod common;

use credit_ledger::{
    limits::MAX_AMOUNT_CREDITS, Adjust, Credit, Error, HistoryFilter, InvalidInput, Ledger, Op,
    RefundReason, StartGeneration, Status, TxnKind,
};

use common::{all_history, assert_healthy, ledger, MINUTE_MS};

/// One step of a balance path.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// Charge a generation of this cost.
    Charge(u64),
    /// Fail the most recent running generation: its refund lifts the balance.
    FailLast,
    /// Complete the most recent running generation.
    CompleteLast,
    /// Add credits.
    Credit(u64),
    /// An operator's correction.
    Adjust(i64),
    /// Let every running generation time out, and sweep.
    Expire,
}

/// Run `path` on a workspace funded with `start` and alerted at `threshold`; return, after each
/// move, how many notifications that move wrote.
fn run_path(start: u64, threshold: u64, path: &[Move]) -> Vec<usize> {
    let (ledger, clock) = ledger();
    ledger
        .credit(Credit::purchase("ws", start, "fund"))
        .unwrap();
    ledger.set_alert("ws", threshold).unwrap();
    let mut running: Vec<String> = Vec::new();
    let mut fired = Vec::new();
    let count =
        |l: &Ledger| all_history(l, "ws", &HistoryFilter::all().kinds([TxnKind::BalanceLow])).len();
    for (i, m) in path.iter().enumerate() {
        let before = count(&ledger);
        match *m {
            Move::Charge(cost) => {
                let g = format!("g-{i}");
                ledger
                    .start_generation(StartGeneration::new(&g, "ws", "HD Video", cost))
                    .unwrap();
                running.push(g);
            }
            Move::FailLast => {
                let g = running.pop().unwrap();
                ledger
                    .fail_generation(&g, RefundReason::ModelFailure, "no frames")
                    .unwrap();
            }
            Move::CompleteLast => {
                let g = running.pop().unwrap();
                ledger.complete_generation(&g).unwrap();
            }
            Move::Credit(n) => {
                ledger
                    .credit(Credit::purchase("ws", n, format!("top-up-{i}")))
                    .unwrap();
            }
            Move::Adjust(n) => {
                ledger
                    .adjust(Adjust::new("ws", n, format!("adj-{i}"), "support"))
                    .unwrap();
            }
            Move::Expire => {
                clock.advance_ms(200 * MINUTE_MS);
                ledger.sweep_expired(100).unwrap();
                running.clear();
            }
        }
        fired.push(count(&ledger) - before);
    }
    assert_healthy(&ledger);
    fired
}

#[test]
fn alerts_fire_once_per_crossing_over_a_table_of_balance_paths() {
    use Move::*;
    // (name, start balance, threshold, path, notifications written by each move)
    type Case = (&'static str, u64, u64, Vec<Move>, Vec<usize>);
    let table: Vec<Case> = vec![
        (
            "down through the line, further down, up, down again",
            100,
            50,
            vec![Charge(30), Charge(30), Charge(10), Credit(100), Charge(81)],
            vec![0, 1, 0, 0, 1],
        ),
        (
            "landing exactly on the line is not below it",
            100,
            50,
            vec![Charge(50), Charge(1), Charge(1)],
            vec![0, 1, 0],
        ),
        (
            "one charge jumping from far above to far below",
            1_000,
            500,
            vec![Charge(990), Charge(5)],
            vec![1, 0],
        ),
        (
            "refunds lift it back, the next charge crosses again",
            100,
            50,
            vec![Charge(60), FailLast, Charge(60), FailLast, Charge(60)],
            vec![1, 0, 1, 0, 1],
        ),
        (
            "a refund that stays below does not re-arm it",
            100,
            50,
            vec![Charge(40), Charge(30), FailLast, Charge(5)],
            vec![0, 1, 0, 0],
        ),
        (
            "completions move nothing; timeouts refund and re-arm",
            100,
            50,
            vec![Charge(60), CompleteLast, Charge(10), Expire, Charge(20)],
            vec![1, 0, 0, 0, 0],
        ),
        (
            "an operator's debit crosses like a charge",
            100,
            50,
            vec![Adjust(-60), Adjust(20), Adjust(-1), Adjust(-20)],
            vec![1, 0, 0, 1],
        ),
        (
            "starting below the line: nothing until it has come back up",
            30,
            50,
            vec![Charge(10), Credit(40), Charge(15)],
            vec![0, 0, 1],
        ),
    ];
    for (name, start, threshold, path, want) in table {
        assert_eq!(run_path(start, threshold, &path), want, "{name}");
    }
}

#[test]
fn a_notification_is_its_own_entry_in_the_same_commit_and_moves_nothing() {
    let (ledger, _clock) = ledger();
    ledger.credit(Credit::purchase("ws", 100, "fund")).unwrap();
    ledger
        .credit(Credit::purchase("other", 100, "fund-2"))
        .unwrap();
    ledger.set_alert("ws", 50).unwrap();
    ledger.set_alert("other", 90).unwrap();
    // One batch: a charge that crosses, then one on another workspace that crosses there.
    let results = ledger.apply(&[
        Op::Start(StartGeneration::new("g-1", "ws", "HD Video", 60)),
        Op::Start(StartGeneration::new("g-2", "other", "Image", 20)),
    ]);
    let usage_1 = match &results[0] {
        Ok(credit_ledger::Outcome::Start(c)) => c.usage_txn,
        other => panic!("{other:?}"),
    };
    let feed = ledger.changes(0, 100).unwrap().entries;
    let kinds: Vec<(u64, &str, TxnKind)> = feed
        .iter()
        .map(|e| (e.id, e.workspace.as_str(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, "ws", TxnKind::Purchase),
            (2, "other", TxnKind::Purchase),
            (3, "ws", TxnKind::Usage),
            (4, "ws", TxnKind::BalanceLow),
            (5, "other", TxnKind::Usage),
            (6, "other", TxnKind::BalanceLow),
        ]
    );
    assert_eq!(
        usage_1, 3,
        "the notification follows the charge that crossed"
    );
    let n = &feed[3];
    assert_eq!(
        (
            n.amount_credits,
            n.balance_before_credits,
            n.balance_after_credits,
            n.status,
            n.alert_threshold_credits,
            n.generation_id.as_deref(),
            n.at_ms,
        ),
        (
            0,
            40,
            40,
            Status::Completed,
            Some(50),
            Some("g-1"),
            feed[2].at_ms
        )
    );
    assert_eq!(n.action, "Balance fell below 50 credits");
    assert_eq!(n.memo, None);
    // In history, under its own type, and counted as a transaction of the workspace.
    let lows = all_history(
        &ledger,
        "ws",
        &HistoryFilter::all().kinds([TxnKind::BalanceLow]),
    );
    assert_eq!(lows, vec![n.clone()]);
    let s = ledger.balance("ws").unwrap();
    assert_eq!((s.balance_credits, s.transactions), (40, 3));
    assert_eq!(ledger.transaction(4).unwrap(), *n);
    // A failure filter does not pick notifications; the Usage is still the one that failed.
    ledger
        .fail_generation("g-1", RefundReason::ApiFailure, "502")
        .unwrap();
    let failed = all_history(
        &ledger,
        "ws",
        &HistoryFilter::all().statuses([Status::Failed]),
    );
    assert_eq!(failed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3]);
    assert_healthy(&ledger);
}

#[test]
fn alert_settings_are_validated_replayed_and_removable() {
    let (ledger, _clock) = ledger();
    ledger.credit(Credit::purchase("ws", 100, "fund")).unwrap();
    assert_eq!(
        ledger.set_alert("ws", 0),
        Err(Error::InvalidInput(InvalidInput::ZeroAmount {
            field: "alert threshold"
        }))
    );
    assert!(matches!(
        ledger.set_alert("ws", MAX_AMOUNT_CREDITS + 1),
        Err(Error::InvalidInput(InvalidInput::AmountTooLarge { .. }))
    ));
    assert_eq!(
        ledger.set_alert("nobody", 10),
        Err(Error::UnknownWorkspace {
            workspace: "nobody".into()
        })
    );
    assert!(matches!(
        ledger.set_alert("", 10),
        Err(Error::InvalidInput(InvalidInput::Empty { .. }))
    ));
    assert_eq!(ledger.alert("ws"), Ok(None), "refusals changed nothing");
    assert!(!ledger.set_alert("ws", MAX_AMOUNT_CREDITS).unwrap().replay);
    let first = ledger.set_alert("ws", 60).unwrap();
    let again = ledger.set_alert("ws", 60).unwrap();
    assert!(!first.replay && again.replay);
    assert_eq!(ledger.alert("ws"), Ok(Some(60)));
    let removed = ledger.remove_alert("ws").unwrap();
    assert_eq!((removed.threshold_credits, removed.replay), (None, false));
    assert!(ledger.remove_alert("ws").unwrap().replay);
    // Removed: a crossing writes nothing.
    ledger
        .start_generation(StartGeneration::new("g", "ws", "HD Video", 90))
        .unwrap();
    assert!(all_history(
        &ledger,
        "ws",
        &HistoryFilter::all().kinds([TxnKind::BalanceLow])
    )
    .is_empty());
    assert_eq!(ledger.changes(0, 10).unwrap().last_txn_id, 2);
    assert_healthy(&ledger);
}

/// A notification edited to name a threshold the balance is not below is named by `verify()`,
/// even with its checksum recomputed.
#[test]
fn verify_names_a_notification_that_does_not_fit_its_balance() {
    use credit_ledger::{Invariant, ManualClock, Options};
    use redb::{ReadableTable, TableDefinition};
    const TRANSACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("transactions");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.redb");
    let clock = ManualClock::new(common::T0_MS);
    {
        let ledger = Ledger::open_with(&path, Options::default().clock(clock.clone())).unwrap();
        ledger.credit(Credit::purchase("ws", 100, "fund")).unwrap();
        ledger.set_alert("ws", 50).unwrap();
        ledger
            .start_generation(StartGeneration::new("g", "ws", "HD Video", 60))
            .unwrap();
        assert_eq!(ledger.transaction(3).unwrap().kind, TxnKind::BalanceLow);
        assert!(ledger.verify().unwrap().is_clean());
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(TRANSACTIONS).unwrap();
            let mut bytes = t.get(3).unwrap().unwrap().value().to_vec();
            // The threshold "50" (length 2, then the digits) becomes "30": above a balance of 40.
            let at = bytes
                .windows(3)
                .position(|w| w == b"\x0250")
                .expect("the stored threshold");
            bytes[at + 1] = b'3';
            let n = bytes.len();
            let crc = crc32fast::hash(&bytes[..n - 4]);
            bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
            t.insert(3, bytes.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let ledger = Ledger::open_with(&path, Options::default().clock(clock)).unwrap();
    let report = ledger.verify().unwrap();
    let found: Vec<Invariant> = report.violations.iter().map(|v| v.invariant).collect();
    assert_eq!(found, vec![Invariant::BalanceArithmetic], "{report:#?}");
    assert_eq!(report.violations[0].txn_ids, vec![3]);
}
