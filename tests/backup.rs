//! Online backups (row 9 of issue 10): `Ledger::backup` and `credit-ledger backup` make a
//! consistent single-file copy while the ledger is open and written to, holding every write
//! acknowledged before the call, verifiable, durable, and never overwriting or following
//! anything at the destination.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use credit_ledger::{Credit, Durability, Error, Ledger, ManualClock, StartGeneration};

use common::{assert_healthy, options, T0_MS};

fn open(path: &Path) -> Ledger {
    Ledger::open_with(path, options(&ManualClock::new(T0_MS))).unwrap()
}

/// Row 9: the README's old recipe (copy the file, then the journal) loses everything when a
/// checkpoint falls between the two copies. A backup taken while writers run, across
/// checkpoints, holds every write acknowledged before it began.
#[test]
fn a_backup_under_load_holds_every_write_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    let ledger = Arc::new(open(&a));
    ledger
        .credit(Credit::purchase("ws", 1_000_000, "order-0"))
        .unwrap();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ledger, acknowledged, stop) = (ledger.clone(), acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                ledger
                    .start_generation(StartGeneration::new(format!("g{i}"), "ws", "Image", 1))
                    .unwrap();
                i += 1;
                acknowledged.store(i, Ordering::SeqCst);
                if i % 50 == 0 {
                    ledger.checkpoint().unwrap();
                }
            }
        })
    };
    for round in 0..3 {
        while acknowledged.load(Ordering::SeqCst) < 40 * (round + 1) {
            std::thread::yield_now();
        }
        let before = acknowledged.load(Ordering::SeqCst);
        let dest = dir.path().join(format!("backup-{round}.redb"));
        let bytes = ledger.backup(&dest).unwrap();
        assert_eq!(bytes, std::fs::metadata(&dest).unwrap().len());
        // One file: no journal next to the copy, and it reads read-only.
        assert!(!dir
            .path()
            .join(format!("backup-{round}.redb.journal"))
            .exists());
        let copy = Ledger::open_read_only(&dest).unwrap();
        let running = copy.totals().unwrap().running_generations;
        assert!(
            running >= before,
            "round {round}: the backup has {running} of the {before} generations acknowledged before it"
        );
        assert!(copy.generation(&format!("g{}", before - 1)).is_ok());
        assert_healthy(&copy);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
}

/// A backup never overwrites a file and never follows a symlink at its destination.
#[test]
fn a_backup_refuses_an_existing_destination_and_follows_no_link() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(&dir.path().join("a.redb"));
    ledger.credit(Credit::grant("ws", 5, "welcome")).unwrap();
    let existing = dir.path().join("existing");
    std::fs::write(&existing, b"keep me").unwrap();
    assert!(matches!(
        ledger.backup(&existing),
        Err(Error::DestinationExists { .. })
    ));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    // A dangling link: its target is not created.
    let link = dir.path().join("link.redb");
    let target = dir.path().join("target.redb");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(matches!(
        ledger.backup(&link),
        Err(Error::DestinationExists { .. })
    ));
    assert!(!target.exists());
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".backup-")), "{names:?}");
}

/// Without a journal (`Durability::None` keeps commits in memory) the backup still holds
/// every acknowledged write; the copy is a ledger of its own that opens for writing too.
#[test]
fn a_backup_of_a_ledger_without_a_journal_holds_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(&a, options(&clock).durability(Durability::None)).unwrap();
    for i in 0..20 {
        ledger
            .credit(Credit::purchase("ws", 10, format!("order-{i}")))
            .unwrap();
    }
    let dest = dir.path().join("copy.redb");
    ledger.backup(&dest).unwrap();
    drop(ledger);
    let copy = Ledger::open_with(&dest, options(&clock)).unwrap();
    assert_eq!(copy.balance("ws").unwrap().balance_credits, 200);
    copy.credit(Credit::grant("ws", 1, "after")).unwrap();
    assert_healthy(&copy);
}

/// `credit-ledger backup DEST`, then `--db DEST verify`: clean, and the balance is there.
#[test]
fn the_cli_backs_up_and_the_copy_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    {
        let l = open(&a);
        l.credit(Credit::purchase("ws", 42, "order-1")).unwrap();
    }
    let dest = dir.path().join("copy.redb");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
            .args(args)
            .env_remove("CREDIT_LEDGER_DB")
            .output()
            .unwrap()
    };
    let out = run(&[
        "--db",
        a.to_str().unwrap(),
        "backup",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(&["--db", dest.to_str().unwrap(), "verify"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    let out = run(&["--db", dest.to_str().unwrap(), "balance", "ws", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["balance"], 42);
    // Again to the same place: refused, exit 1, the copy untouched.
    let before = std::fs::read(&dest).unwrap();
    let out = run(&[
        "--db",
        a.to_str().unwrap(),
        "backup",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert!(std::fs::read(&dest).unwrap() == before);
}
