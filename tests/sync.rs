//! `examples/sync.rs` under `kill -9`: a worker ships the change feed to a central SQLite store
//! and acks each batch after the store committed it. The test binary re-executes itself as the
//! worker (like `tests/kill.rs`); each round the worker writes new transactions to the ledger
//! (some of them crossing a balance alert), then syncs, and stops at a seeded point: after
//! reading a batch, after inserting it in the open SQLite transaction, after the SQLite commit
//! and before the ack, or after the ack. There it waits, and the parent kills it with SIGKILL.
//!
//! Afterwards:
//! - each restarted worker starts at least at the last position its predecessor acked (the
//!   position survived the kill), and at most at the end of the log;
//! - a kill between the store's commit and the ack made the next worker read that batch again
//!   (at least once), and the store's key made it change nothing;
//! - after a final sync, the store holds every entry of the ledger exactly once, equal to the
//!   feed, and the consumer's position is the end of the log.

#[path = "support/faulty.rs"]
mod faulty;
#[path = "../examples/sync.rs"]
#[allow(dead_code)]
mod sync_example;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use credit_ledger::{
    Credit, Ledger, ManualClock, Options, RefundReason, StartGeneration, TransactionView, TxnKind,
};
use faulty::SplitMix64;
use sync_example::{open_store, sync_all, sync_batch, Phase, CONSUMER};

const CHILD_ENV: &str = "CREDIT_LEDGER_SYNC_CHILD";
const LEDGER_ID: &str = "install-under-test";
const ROUNDS: u64 = 12;
const T0_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;
const PHASES: [Phase; 4] = [Phase::Read, Phase::Applied, Phase::Committed, Phase::Acked];

fn options(round: u64) -> Options {
    Options::default().clock(ManualClock::new(T0_MS + round * HOUR_MS))
}

/// The round's writes: a purchase, four charges of which one fails and is refunded, and an alert
/// set just below the balance, which the charges cross twice.
fn write_round(ledger: &Ledger, round: u64) {
    let ws = format!("ws-{}", round % 3);
    ledger
        .credit(Credit::purchase(&ws, 60, format!("order-{round}")))
        .unwrap();
    let balance = ledger.balance(&ws).unwrap().balance_credits;
    ledger.set_alert(&ws, balance - 10).unwrap();
    for i in 0..4 {
        let g = format!("gen-{round}-{i}");
        ledger
            .start_generation(StartGeneration::new(&g, &ws, "HD Image", 6))
            .unwrap();
        if i == 1 {
            ledger
                .fail_generation(&g, RefundReason::ApiFailure, "HTTP 502")
                .unwrap();
        } else {
            ledger.complete_generation(&g).unwrap();
        }
    }
}

/// The worker: `<ledger>|<store>|<round>|<stop batch>|<stop phase>`. Does nothing unless the
/// parent test spawned it.
#[test]
fn sync_child_worker() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [ledger_path, store_path, round, stop_batch, stop_phase] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let round: u64 = round.parse().unwrap();
    let stop_batch: usize = stop_batch.parse().unwrap();
    let stop_phase = PHASES[stop_phase.parse::<usize>().unwrap()];
    let ledger = Ledger::open_with(ledger_path, options(round)).expect("child: open");
    let mut store = open_store(Path::new(store_path)).expect("child: store");
    let mut out = std::io::stdout().lock();
    writeln!(out, "START {}", ledger.position(CONSUMER).unwrap()).unwrap();
    write_round(&ledger, round);
    out.flush().unwrap();
    for batch in 0.. {
        let mut stop = |phase: Phase| {
            if phase == Phase::Acked {
                let _ = writeln!(
                    std::io::stdout(),
                    "ACKED {}",
                    ledger.position(CONSUMER).unwrap()
                );
            }
            if batch == stop_batch && phase == stop_phase {
                let mut o = std::io::stdout();
                let _ = writeln!(o, "PAUSE {batch} {phase:?}");
                let _ = o.flush();
                // Wait here for the SIGKILL.
                let _ = std::io::stdin().lock().read_line(&mut String::new());
                panic!("the parent was meant to kill this worker");
            }
        };
        let s = sync_batch(&ledger, LEDGER_ID, &mut store, &mut stop).expect("child: sync");
        writeln!(out, "SYNCED {} {}", s.read, s.inserted).unwrap();
        out.flush().unwrap();
        if s.read == 0 {
            break;
        }
    }
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
}

#[test]
fn a_worker_killed_anywhere_leaves_every_entry_in_the_store_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("install.redb");
    let store_path = dir.path().join("central.sqlite");
    drop(Ledger::open_with(&ledger_path, options(0)).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut rng = SplitMix64(0x57AC_2026);
    let (mut last_acked, mut redelivered, mut killed, mut phases_hit) = (0u64, 0usize, 0, [0; 4]);
    for round in 0..ROUNDS {
        let (stop_batch, stop_phase) = (rng.below(2) as usize, rng.below(4) as usize);
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sync_child_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{}|{}|{round}|{stop_batch}|{stop_phase}",
                    ledger_path.display(),
                    store_path.display()
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut paused, mut first_read_inserted) = (false, None);
        while let Some(Ok(line)) = lines.next() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["START", pos] => {
                    let pos: u64 = pos.parse().unwrap();
                    assert!(
                        pos >= last_acked,
                        "round {round}: started at {pos}, but #{last_acked} was acked before the kill"
                    );
                }
                ["ACKED", pos] => last_acked = pos.parse().unwrap(),
                ["SYNCED", read, inserted] => {
                    let (read, inserted): (usize, usize) =
                        (read.parse().unwrap(), inserted.parse().unwrap());
                    first_read_inserted.get_or_insert((read, inserted));
                    redelivered += read - inserted;
                }
                ["PAUSE", ..] => {
                    paused = true;
                    break;
                }
                ["DONE"] => break,
                _ => {} // the test harness's own lines
            }
        }
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        if paused {
            killed += 1;
            phases_hit[stop_phase] += 1;
        }
    }
    assert!(
        killed >= ROUNDS / 2,
        "too few workers were killed mid-sync: {killed}"
    );
    assert!(
        phases_hit[2] > 0,
        "no kill between the store's commit and the ack: {phases_hit:?}"
    );
    assert!(
        redelivered > 0,
        "a kill before the ack must make the next worker read again"
    );

    // The last sync, in this process, after the last kill.
    let ledger = Ledger::open_with(&ledger_path, options(ROUNDS)).unwrap();
    let mut store = open_store(&store_path).unwrap();
    sync_all(&ledger, LEDGER_ID, &mut store).unwrap();
    let mut feed: Vec<TransactionView> = Vec::new();
    loop {
        let after = feed.last().map_or(0, |e| e.id);
        let page = ledger.changes(after, 1000).unwrap();
        if page.entries.is_empty() {
            break;
        }
        feed.extend(page.entries);
    }
    let last = feed.len() as u64;
    // A round: a purchase, four charges, a refund, and two crossings of the alert.
    assert_eq!(last, ROUNDS * 8, "the workload");
    let lows = feed
        .iter()
        .filter(|e| e.kind == TxnKind::BalanceLow)
        .count() as u64;
    assert_eq!(
        lows,
        ROUNDS * 2,
        "balance-low notifications ship like any entry"
    );
    assert_eq!(ledger.position(CONSUMER), Ok(last));
    let mut stmt = store
        .prepare(
            "SELECT ledger_id, txn_id, workspace, kind, amount, balance_after FROM ledger_entries ORDER BY txn_id",
        )
        .unwrap();
    let rows: Vec<(String, u64, String, String, i64, u64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get::<_, i64>(5)? as u64,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<(String, u64, String, String, i64, u64)> = feed
        .iter()
        .map(|e| {
            (
                LEDGER_ID.to_string(),
                e.id,
                e.workspace.clone(),
                e.kind.as_str().to_string(),
                e.amount_credits,
                e.balance_after_credits,
            )
        })
        .collect();
    assert_eq!(rows, want, "every entry exactly once, as the feed has it");
    assert!(ledger.verify().unwrap().is_clean());
}
