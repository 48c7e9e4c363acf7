//! Durable change-feed consumers: positions stored in the ledger file by a write of their own,
//! forward-only, bounded in number, kept across a close and a crash copy, and the upgrade of a
//! schema 1 file that has no table for them.

mod common;

use credit_ledger::{
    limits::MAX_CONSUMERS, Credit, Error, InvalidInput, Ledger, ManualClock, Options,
    StartGeneration,
};

use common::{assert_healthy, ledger, T0_MS};

#[test]
fn acks_move_forward_only_and_replay_when_repeated() {
    let (ledger, _clock) = ledger();
    assert_eq!(ledger.position("sync"), Ok(0), "a new consumer starts at 0");
    // Acking 0 before anything exists is a replay of the empty position, not an error.
    assert!(ledger.ack("sync", 0).unwrap().replay);
    assert_eq!(
        ledger.ack("sync", 1),
        Err(Error::AckBeyondEnd {
            consumer: "sync".into(),
            txn_id: 1,
            last_txn_id: 0
        })
    );
    ledger.credit(Credit::purchase("ws", 10, "o-1")).unwrap();
    ledger.credit(Credit::purchase("ws", 10, "o-2")).unwrap();
    let r = ledger.ack("sync", 2).unwrap();
    assert_eq!((r.txn_id, r.replay), (2, false));
    assert_eq!(
        ledger.ack("sync", 2).unwrap(),
        credit_ledger::AckReceipt { replay: true, ..r }
    );
    assert_eq!(
        ledger.ack("sync", 1),
        Err(Error::AckBackwards {
            consumer: "sync".into(),
            txn_id: 1,
            position_txn_id: 2
        })
    );
    assert_eq!(ledger.position("sync"), Ok(2), "refusals change nothing");
    assert_eq!(
        ledger.position("other"),
        Ok(0),
        "each consumer has its own position"
    );
    for bad in ["", "a\nb"] {
        assert!(matches!(
            ledger.ack(bad, 1),
            Err(Error::InvalidInput(
                InvalidInput::Empty { .. } | InvalidInput::ControlCharacter { .. }
            ))
        ));
        assert!(ledger.position(bad).is_err());
    }
    // An ack is a write of its own: it adds no transaction to the log.
    assert_eq!(ledger.changes(0, 10).unwrap().last_txn_id, 2);
    assert_healthy(&ledger);
}

#[test]
fn the_number_of_consumers_is_bounded() {
    let (ledger, _clock) = ledger();
    ledger.credit(Credit::purchase("ws", 10, "o-1")).unwrap();
    for i in 0..MAX_CONSUMERS {
        ledger.ack(&format!("c-{i}"), 1).unwrap();
    }
    assert_eq!(
        ledger.ack("one-too-many", 1),
        Err(Error::TooManyConsumers {
            consumer: "one-too-many".into(),
            count_after: MAX_CONSUMERS as u64 + 1,
            max: MAX_CONSUMERS as u64,
        })
    );
    assert_eq!(ledger.position("one-too-many"), Ok(0));
    // Existing consumers go on acking, and acking 0 for a new name registers nothing.
    assert!(ledger.ack("c-0", 1).unwrap().replay);
    assert!(ledger.ack("fresh", 0).unwrap().replay);
}

#[test]
fn positions_and_alerts_survive_a_close_and_a_crash_copy_with_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.redb");
    let clock = ManualClock::new(T0_MS);
    let options = || Options::default().clock(clock.clone());
    {
        let ledger = Ledger::open_with(&db, options()).unwrap();
        ledger.credit(Credit::purchase("ws", 100, "o-1")).unwrap();
        ledger.set_alert("ws", 50).unwrap();
        ledger.ack("sync", 1).unwrap();
    }
    let ledger = Ledger::open_with(&db, options()).unwrap();
    assert_eq!(
        (ledger.position("sync"), ledger.alert("ws")),
        (Ok(1), Ok(Some(50)))
    );
    ledger
        .start_generation(StartGeneration::new("g-1", "ws", "HD Video", 60))
        .unwrap();
    ledger.ack("sync", 3).unwrap();
    // The bytes a kill -9 leaves: the file and its journal, copied while the ledger is open.
    let copy = dir.path().join("copy.redb");
    std::fs::copy(&db, &copy).unwrap();
    std::fs::copy(Ledger::journal_path(&db), Ledger::journal_path(&copy)).unwrap();
    drop(ledger);
    let ledger = Ledger::open_with(&copy, options()).unwrap();
    assert_eq!(ledger.position("sync"), Ok(3));
    let feed = ledger.changes(0, 10).unwrap();
    assert_eq!(
        feed.last_txn_id, 3,
        "the charge and its notification were replayed"
    );
    assert_eq!(feed.entries[2].kind, credit_ledger::TxnKind::BalanceLow);
    assert_healthy(&ledger);
}

#[test]
fn a_schema_1_file_reads_and_gains_the_consumer_and_alert_tables_on_its_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.redb");
    {
        let ledger = Ledger::open(&db).unwrap();
        ledger.credit(Credit::purchase("ws", 100, "o-1")).unwrap();
    }
    // Make it what version 1 wrote: no consumers or alerts table, schema byte 1.
    {
        let rdb = redb::Database::open(&db).unwrap();
        let txn = rdb.begin_write().unwrap();
        {
            let consumers: redb::TableDefinition<&str, u64> =
                redb::TableDefinition::new("consumers");
            let alerts: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("alerts");
            assert!(txn.delete_table(consumers).unwrap());
            assert!(txn.delete_table(alerts).unwrap());
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            txn.open_table(meta)
                .unwrap()
                .insert("schema", [1u8].as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let schema = || {
        let rdb = redb::Database::open(&db).unwrap();
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let rtx = redb::ReadableDatabase::begin_read(&rdb).unwrap();
        let v = rtx
            .open_table(meta)
            .unwrap()
            .get("schema")
            .unwrap()
            .unwrap()
            .value()[0];
        v
    };
    let ledger = Ledger::open(&db).unwrap();
    assert_eq!(
        ledger.position("sync"),
        Ok(0),
        "a missing table reads as empty"
    );
    assert_eq!(ledger.alert("ws"), Ok(None));
    assert_healthy(&ledger);
    drop(ledger);
    assert_eq!(schema(), 1, "opening and reading never write");
    let ledger = Ledger::open(&db).unwrap();
    ledger.ack("sync", 1).unwrap();
    ledger.set_alert("ws", 10).unwrap();
    assert_eq!(
        (ledger.position("sync"), ledger.alert("ws")),
        (Ok(1), Ok(Some(10)))
    );
    assert_healthy(&ledger);
    drop(ledger);
    assert_eq!(
        schema(),
        6,
        "the first write records the upgrade, to the current schema"
    );
    let ledger = Ledger::open(&db).unwrap();
    assert_eq!(ledger.position("sync"), Ok(1));
}

/// Make the (closed) ledger at `db` what schema 2 wrote: the consumers and alerts tables, but
/// none of the grant or notice tables, and schema byte 2.
fn make_schema_2(db: &std::path::Path) {
    let rdb = redb::Database::open(db).unwrap();
    let txn = rdb.begin_write().unwrap();
    {
        common::delete_tables(&txn, &common::GRANT_TABLES);
        let n: redb::TableDefinition<(u64, &str, &str), u64> =
            redb::TableDefinition::new("grant_notices");
        let _ = txn.delete_table(n).unwrap();
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        txn.open_table(meta)
            .unwrap()
            .insert("schema", [2u8].as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
}

/// A schema 2 file has consumer positions and alerts: a batch of acks or alerts alone (which
/// opens no grant table) must see them, so that an ack behind a stored position is refused
/// and a consumer is counted once.
#[test]
fn a_schema_2_file_keeps_its_consumer_positions_through_acks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.redb");
    {
        let ledger = Ledger::open(&db).unwrap();
        ledger.credit(Credit::purchase("ws", 100, "o-1")).unwrap();
        ledger.credit(Credit::purchase("ws", 50, "o-2")).unwrap();
        ledger.ack("sync", 2).unwrap();
        ledger.set_alert("ws", 30).unwrap();
    }
    make_schema_2(&db);
    let ledger = Ledger::open(&db).unwrap();
    assert_eq!(ledger.position("sync"), Ok(2));
    assert!(
        matches!(
            ledger.ack("sync", 1),
            Err(Error::AckBackwards {
                position_txn_id: 2,
                ..
            })
        ),
        "an ack behind the stored position is refused"
    );
    assert_eq!(ledger.position("sync"), Ok(2), "and the position stays");
    assert_eq!(ledger.ack("sync", 2).map(|r| r.replay), Ok(true));
    assert_eq!(ledger.alert("ws"), Ok(Some(30)));
    ledger.set_alert("ws", 40).unwrap();
    assert_eq!(ledger.totals().unwrap().workspaces, 1);
    assert_healthy(&ledger);
    // The first write of money upgrades it, positions and alerts kept.
    ledger.credit(Credit::purchase("ws", 5, "o-3")).unwrap();
    ledger.ack("sync", 3).unwrap();
    assert_eq!(
        (ledger.position("sync"), ledger.alert("ws")),
        (Ok(3), Ok(Some(40)))
    );
    assert_healthy(&ledger);
}
