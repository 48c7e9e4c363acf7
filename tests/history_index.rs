//! The history index of schema 4: a Usage is filed once, at its start, and no key moves when
//! its generation finishes; every status filter still gives exactly the Usages whose
//! generation is in that state, across finishes, journal replays, a batch lost to a crash,
//! and a file written with the older layout.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{assert_healthy, options, paged_history, T0_MS};
use credit_ledger::{
    Credit, GenerationState, HistoryFilter, Invariant, Ledger, ManualClock, Op, PageRequest,
    RefundReason, StartGeneration, Status, TxnKind,
};

const HISTORY: redb::TableDefinition<(&str, u8, u64), ()> =
    redb::TableDefinition::new("workspace_history");
const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
/// The categories of the index that these tests touch (see `storage::tables::Category`).
const USAGE: u8 = 2;
const LEGACY_USAGE_COMPLETED: u8 = 3;
const USAGE_FAILED: u8 = 4;
const REFUND: u8 = 5;

const WORKSPACES: [&str; 3] = ["acme", "globex", "initech"];

fn journal_of(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().unwrap().to_os_string();
    name.push(".journal");
    ledger.with_file_name(name)
}

fn keys(path: &Path) -> BTreeSet<(String, u8, u64)> {
    let db = redb::Database::open(path).unwrap();
    let rtx = redb::ReadableDatabase::begin_read(&db).unwrap();
    let t = rtx.open_table(HISTORY).unwrap();
    redb::ReadableTable::iter(&t)
        .unwrap()
        .map(|e| {
            let (k, _) = e.unwrap();
            let (ws, cat, id) = k.value();
            (ws.to_string(), cat, id)
        })
        .collect()
}

fn open(path: &Path, clock: &ManualClock) -> Ledger {
    Ledger::open_with(path, options(clock).sweep_on_open(false)).unwrap()
}

/// Round `r` of a workload over three workspaces: 12 starts, then finishes of earlier ones
/// (completions, failures, a completion after the deadline), so that every status is present
/// and changes from round to round. Returns the batches, in order.
fn round(r: usize) -> Vec<Vec<Op>> {
    let mut starts = Vec::new();
    for i in 0..12 {
        let ws = WORKSPACES[i % 3];
        let mut s = StartGeneration::new(format!("g{r}-{i}"), ws, ["Video", "Image"][i % 2], 2);
        if i % 6 == 5 {
            s = s.timeout_ms(60_000);
        }
        starts.push(Op::Start(s));
    }
    let mut finishes = Vec::new();
    if r > 0 {
        for i in 0..12 {
            let generation_id = format!("g{}-{i}", r - 1);
            finishes.push(match i % 6 {
                // 5: past its one-minute deadline, so refunded as a timeout.
                0..=2 | 5 => Op::Complete { generation_id },
                3 => Op::Fail {
                    generation_id,
                    reason: RefundReason::ModelFailure,
                    message: "no frames".into(),
                },
                _ => continue, // stays running
            });
        }
    }
    vec![starts, finishes]
}

/// Run the batches at two-minute steps; refusals (a late completion) are expected outcomes.
fn run(ledger: &Ledger, clock: &ManualClock, batches: &[Vec<Op>]) {
    for ops in batches {
        clock.advance_ms(120_000);
        for r in ledger.apply(ops) {
            if let Err(e) = r {
                assert!(
                    matches!(e, credit_ledger::Error::GenerationRefunded { .. }),
                    "{e}"
                );
            }
        }
    }
}

fn fund(ledger: &Ledger) {
    for ws in WORKSPACES {
        ledger
            .credit(Credit::purchase(ws, 100_000, format!("order-{ws}")))
            .unwrap();
    }
}

/// The filters history supports that say something about status.
fn status_filters() -> Vec<HistoryFilter> {
    let s = [Status::Pending, Status::Completed, Status::Failed];
    let mut out = Vec::new();
    for mask in 1..8u8 {
        let statuses: Vec<Status> = (0..3)
            .filter(|b| mask & (1 << b) != 0)
            .map(|b| s[b])
            .collect();
        out.push(HistoryFilter::all().statuses(statuses.clone()));
        out.push(
            HistoryFilter::all()
                .kinds([TxnKind::Usage])
                .statuses(statuses.clone()),
        );
        out.push(
            HistoryFilter::all()
                .kinds([TxnKind::Usage, TxnKind::Refund])
                .statuses(statuses.clone()),
        );
        out.push(HistoryFilter::all().statuses(statuses).feature("Video"));
    }
    out.push(HistoryFilter::all().kinds([TxnKind::Usage]));
    out.push(HistoryFilter::all());
    out
}

/// The status each transaction of `ws` has, from the generations (not from history): what
/// every filter must agree with.
fn truth(ledger: &Ledger, ws: &str) -> Vec<(u64, TxnKind, Status, String)> {
    paged_history(ledger, ws, &HistoryFilter::all(), 1000, false)
        .into_iter()
        .map(|t| {
            let status = match (t.kind, &t.generation_id) {
                (TxnKind::Usage, Some(g)) => match ledger.generation(g).unwrap().state {
                    GenerationState::Running => Status::Pending,
                    GenerationState::Succeeded { .. } => Status::Completed,
                    GenerationState::Refunded { .. } => Status::Failed,
                },
                _ => Status::Completed,
            };
            (t.id, t.kind, status, t.title)
        })
        .collect()
}

/// Every status filter, paged newest first (in pages of 7) and oldest first (in pages of 5),
/// gives exactly the transactions the generations say, each with that status.
fn assert_filters_agree(ledger: &Ledger, what: &str) {
    for ws in WORKSPACES {
        let truth = truth(ledger, ws);
        for f in status_filters() {
            let want: Vec<u64> = truth
                .iter()
                .filter(|(_, kind, status, title)| {
                    (f.kinds.is_empty() || f.kinds.contains(kind))
                        && (f.statuses.is_empty() || f.statuses.contains(status))
                        && f.feature.as_ref().is_none_or(|x| x == title)
                })
                .map(|t| t.0)
                .collect();
            let newest = paged_history(ledger, ws, &f, 7, false);
            let got: Vec<u64> = newest.iter().map(|t| t.id).collect();
            assert_eq!(got, want, "{what}: {ws} {f:?} newest first");
            for t in &newest {
                let status = truth.iter().find(|x| x.0 == t.id).unwrap().2;
                assert_eq!(t.status, status, "{what}: {ws} #{} in {f:?}", t.id);
            }
            let mut oldest: Vec<u64> = paged_history(ledger, ws, &f, 5, true)
                .iter()
                .map(|t| t.id)
                .collect();
            oldest.reverse();
            assert_eq!(oldest, want, "{what}: {ws} {f:?} oldest first");
        }
        // The first Pending page holds every running generation and knows it is the last.
        let running = ledger.balance(ws).unwrap().running_generations;
        let page = ledger
            .history(
                ws,
                &HistoryFilter::all().statuses([Status::Pending]),
                &PageRequest::first(50),
            )
            .unwrap();
        assert_eq!(page.entries.len() as u64, running, "{what}: {ws}");
        assert_eq!(page.next_cursor, None, "{what}: {ws}");
    }
}

#[test]
fn a_finished_generation_moves_no_history_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = open(&path, &clock);
        fund(&l);
        run(&l, &clock, &round(0));
    }
    let started = keys(&path);
    let usage_ids: Vec<u64> = started
        .iter()
        .filter(|k| k.1 == USAGE)
        .map(|k| k.2)
        .collect();
    assert_eq!(usage_ids.len(), 12);
    let (refunds, before) = {
        let l = open(&path, &clock);
        run(&l, &clock, &round(1)[1..]);
        let refunds: Vec<(String, u64, u64)> = WORKSPACES
            .iter()
            .flat_map(|ws| common::refunds(&l, ws))
            .map(|t| (t.workspace, t.id, t.refund_of.unwrap()))
            .collect();
        (refunds, started)
    };
    // Four failed (two reported, two timed out); the completions added and moved nothing.
    assert_eq!(refunds.len(), 4);
    let after = keys(&path);
    assert!(before.is_subset(&after), "a finish removed or moved a key");
    let added: BTreeSet<(String, u8, u64)> = after.difference(&before).cloned().collect();
    let expected: BTreeSet<(String, u8, u64)> = refunds
        .iter()
        .flat_map(|(ws, refund, usage)| {
            [
                (ws.clone(), REFUND, *refund),
                (ws.clone(), USAGE_FAILED, *usage),
            ]
        })
        .collect();
    assert_eq!(
        added, expected,
        "a refund adds its own entry and the marker"
    );
    let l = open(&path, &clock);
    assert_filters_agree(&l, "after one round");
    assert_healthy(&l);
}

#[test]
fn every_status_filter_matches_the_generations_across_finishes() {
    let (l, clock) = common::ledger();
    fund(&l);
    for r in 0..6 {
        run(&l, &clock, &round(r));
        assert_filters_agree(&l, &format!("round {r}"));
    }
    // The sweep refunds what is left past its deadline.
    clock.advance_ms(24 * 3_600_000);
    l.sweep_expired(1000).unwrap();
    assert_filters_agree(&l, "after the sweep");
    assert_healthy(&l);
}

/// The journal replays the finishes into the same index: the replayed file answers every
/// filter as the live ledger did, and a batch of finishes whose entry a crash tore is lost
/// whole, leaving every filter as it was before the batch.
#[test]
fn status_filters_survive_a_replay_and_a_batch_lost_mid_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    let live = open(&path, &clock);
    fund(&live);
    for r in 0..3 {
        run(&live, &clock, &round(r));
    }
    let crash = |name: &str, journal_len: Option<usize>| {
        let to = dir.path().join(name);
        std::fs::copy(&path, &to).unwrap();
        let mut journal = std::fs::read(journal_of(&path)).unwrap();
        if let Some(n) = journal_len {
            journal.truncate(n);
        }
        std::fs::write(journal_of(&to), journal).unwrap();
        to
    };
    let pages = |l: &Ledger| -> Vec<Vec<u64>> {
        WORKSPACES
            .iter()
            .flat_map(|ws| {
                status_filters()
                    .into_iter()
                    .map(|f| {
                        paged_history(l, ws, &f, 7, false)
                            .iter()
                            .map(|t| t.id)
                            .collect()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let before_batch = pages(&live);
    // One batch of finishes: completions, failures and late completions together.
    run(&live, &clock, &round(3)[1..]);
    let after_batch = pages(&live);
    assert_ne!(before_batch, after_batch);
    assert_filters_agree(&live, "live");

    let replayed = open(&crash("replayed.redb", None), &clock);
    assert_eq!(
        pages(&replayed),
        after_batch,
        "the replay gives the same pages"
    );
    assert_filters_agree(&replayed, "replayed");
    assert_healthy(&replayed);

    // Tear the last entry (the batch of finishes) 60 bytes in: the batch is lost whole.
    let entry = last_entry_start(&std::fs::read(journal_of(&path)).unwrap());
    let torn = open(&crash("torn.redb", Some(entry + 60)), &clock);
    assert_eq!(pages(&torn), before_batch, "a torn batch is lost whole");
    assert_filters_agree(&torn, "torn");
    assert_healthy(&torn);
    drop(live);
}

/// Where the journal's last entry starts: entries are 4 KiB-aligned and begin with their
/// magic; the journal is preallocated with zeros after them.
fn last_entry_start(journal: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let last = journal
        .chunks(BLOCK)
        .rposition(|b| b.starts_with(b"CLJ\x02"))
        .expect("a journal entry");
    last * BLOCK
}

/// A file written with the schema 3 layout (a Usage filed under its status, and moved when
/// its generation finished) reads right as it is and audits clean, and the write that records
/// version 4 (any write of a generation) moves it to the current layout.
#[test]
fn a_file_with_the_older_layout_reads_and_moves_when_it_records_schema_4() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let clock = ManualClock::new(T0_MS);
    let expected: Vec<Vec<u64>> = {
        let l = open(&path, &clock);
        fund(&l);
        for r in 0..3 {
            run(&l, &clock, &round(r));
        }
        status_filters()
            .iter()
            .map(|f| {
                paged_history(&l, "acme", f, 7, false)
                    .iter()
                    .map(|t| t.id)
                    .collect()
            })
            .collect()
    };
    let new_layout = keys(&path);
    // The succeeded and failed Usages, as the generations say.
    type Usages = Vec<(String, u64)>;
    let (succeeded, failed): (Usages, Usages) = {
        let l = open(&path, &clock);
        let mut v = (Vec::new(), Vec::new());
        for ws in WORKSPACES {
            for t in truth(&l, ws) {
                match (t.1, t.2) {
                    (TxnKind::Usage, Status::Completed) => v.0.push((ws.to_string(), t.0)),
                    (TxnKind::Usage, Status::Failed) => v.1.push((ws.to_string(), t.0)),
                    _ => {}
                }
            }
        }
        v
    };
    assert!(!succeeded.is_empty() && !failed.is_empty());
    // Rewrite the index as schema 3 had it, and drop the table schema 4 added.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(HISTORY).unwrap();
            for (ws, id) in &failed {
                t.remove((ws.as_str(), USAGE, *id)).unwrap();
            }
            for (ws, id) in &succeeded {
                t.remove((ws.as_str(), USAGE, *id)).unwrap();
                t.insert((ws.as_str(), LEGACY_USAGE_COMPLETED, *id), ())
                    .unwrap();
            }
            let notices: redb::TableDefinition<(u64, &str, &str), u64> =
                redb::TableDefinition::new("grant_notices");
            w.delete_table(notices).unwrap();
            w.open_table(META)
                .unwrap()
                .insert("schema", [3u8].as_slice())
                .unwrap();
        }
        w.commit().unwrap();
    }
    let old_layout = keys(&path);
    assert_ne!(old_layout, new_layout);

    let l = open(&path, &clock);
    let pages: Vec<Vec<u64>> = status_filters()
        .iter()
        .map(|f| {
            paged_history(&l, "acme", f, 7, false)
                .iter()
                .map(|t| t.id)
                .collect()
        })
        .collect();
    assert_eq!(pages, expected, "the older layout reads the same");
    assert_filters_agree(&l, "older layout");
    assert_healthy(&l);
    drop(l);
    assert_eq!(keys(&path), old_layout, "opening and reading never write");

    // Any write that appends a transaction, a credit here, records the current schema first
    // (from schema 6 on every record has a field older builds cannot read), and that moves
    // the index to the new layout.
    let l = open(&path, &clock);
    l.credit(Credit::purchase("acme", 1, "one-more")).unwrap();
    assert_filters_agree(&l, "moved by a credit");
    assert_healthy(&l);
    drop(l);
    assert_eq!(schema_of(&path), 6);
    assert!(keys(&path).iter().all(|k| k.1 != LEGACY_USAGE_COMPLETED));
    // A batch of finishes then writes the new layout.
    let l = open(&path, &clock);
    run(&l, &clock, &round(3)[1..]);
    assert_filters_agree(&l, "moved");
    assert_healthy(&l);
    let failed_now = WORKSPACES
        .iter()
        .flat_map(|ws| truth(&l, ws))
        .filter(|t| t.1 == TxnKind::Usage && t.2 == Status::Failed)
        .count();
    drop(l);
    // The current schema (6 since Refund records carry their lots), with schema 4's history
    // layout.
    assert_eq!(schema_of(&path), 6);
    let moved = keys(&path);
    assert!(moved.iter().all(|k| k.1 != LEGACY_USAGE_COMPLETED));
    let count = |c: u8| moved.iter().filter(|k| k.1 == c).count();
    let usages = new_layout.iter().filter(|k| k.1 == USAGE).count();
    assert_eq!(count(USAGE), usages, "every Usage under Usage");
    assert_eq!(
        count(USAGE_FAILED),
        failed_now,
        "a marker for each failed one"
    );
}

fn schema_of(path: &Path) -> u8 {
    let db = redb::Database::open(path).unwrap();
    let rtx = redb::ReadableDatabase::begin_read(&db).unwrap();
    let v = rtx
        .open_table(META)
        .unwrap()
        .get("schema")
        .unwrap()
        .unwrap()
        .value()[0];
    v
}

/// The audit checks the markers against the generations: a missing one, one for a Usage
/// that did not fail, and an entry under the old category are each named.
#[test]
fn the_audit_names_a_wrong_or_missing_marker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = open(&path, &clock);
        fund(&l);
        run(&l, &clock, &round(0));
        run(&l, &clock, &round(1)[1..]);
        assert_healthy(&l);
    }
    let index = keys(&path);
    let marker = index.iter().find(|k| k.1 == USAGE_FAILED).unwrap().clone();
    let failed: BTreeSet<u64> = index
        .iter()
        .filter(|k| k.1 == USAGE_FAILED)
        .map(|k| k.2)
        .collect();
    let not_failed = index
        .iter()
        .find(|k| k.1 == USAGE && !failed.contains(&k.2))
        .unwrap()
        .clone();
    let damage = |remove: Option<(String, u8, u64)>, insert: Option<(String, u8, u64)>| {
        let copy = dir.path().join("damaged.redb");
        std::fs::copy(&path, &copy).unwrap();
        let db = redb::Database::open(&copy).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(HISTORY).unwrap();
            if let Some((ws, c, id)) = &remove {
                assert!(t.remove((ws.as_str(), *c, *id)).unwrap().is_some());
            }
            if let Some((ws, c, id)) = &insert {
                t.insert((ws.as_str(), *c, *id), ()).unwrap();
            }
        }
        w.commit().unwrap();
        drop(db);
        let l = open(&copy, &clock);
        let report = l.verify().unwrap();
        report
            .violations
            .iter()
            .filter(|v| v.invariant == Invariant::HistoryIndex)
            .map(|v| v.detail.clone())
            .collect::<Vec<String>>()
    };
    let missing = damage(Some(marker.clone()), None);
    assert!(
        missing
            .iter()
            .any(|d| d.contains(&format!("#{} has no history entry", marker.2))),
        "{missing:?}"
    );
    let stray = damage(
        None,
        Some((not_failed.0.clone(), USAGE_FAILED, not_failed.2)),
    );
    assert!(
        stray.iter().any(|d| d.contains(&format!(
            "({}, {USAGE_FAILED}, #{})",
            not_failed.0, not_failed.2
        ))),
        "{stray:?}"
    );
    let moved = damage(
        Some(not_failed.clone()),
        Some((not_failed.0.clone(), LEGACY_USAGE_COMPLETED, not_failed.2)),
    );
    // The counts still agree, so the audit names the Usage whose entry is gone.
    assert!(
        moved
            .iter()
            .any(|d| d.contains(&format!("#{} has no history entry", not_failed.2))),
        "{moved:?}"
    );
}
