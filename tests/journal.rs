//! The write-ahead journal: what a crash leaves (the ledger file as of the last checkpoint, plus
//! the journal) replays to exactly the acknowledged writes; a torn last entry ends the replay at
//! the entry before it; another ledger's journal is never replayed; checkpoints let the ledger
//! file stand alone. (`journal_fail_closed.rs` has the refusals: a missing, foreign or damaged
//! journal.)
//!
//! A "crash image" here is a copy of the two files taken while the ledger is still open: the
//! bytes a `kill -9` at that moment would leave (the real `kill -9` runs are in `kill.rs`).

mod common;

use std::path::{Path, PathBuf};

use credit_ledger::{
    Credit, Error, HistoryFilter, Ledger, ManualClock, Op, Outcome, RefundReason, StartGeneration,
};

use common::{assert_healthy, options, T0_MS};

/// Entries start on this boundary (one page); every single-operation entry fits in one. Block 0
/// is the journal epoch's header, and the first write of an epoch is committed to the ledger
/// file itself, so the entry of step `k >= 1` of a script is block `k`.
const BLOCK: usize = 4096;

fn journal_of(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().unwrap().to_os_string();
    name.push(".journal");
    ledger.with_file_name(name)
}

/// Everything a user can see of the ledger, as one comparable string.
fn snapshot(ledger: &Ledger) -> String {
    let history = match ledger.balance("ws") {
        Ok(_) => common::all_history(ledger, "ws", &HistoryFilter::all()),
        Err(Error::UnknownWorkspace { .. }) => Vec::new(),
        Err(e) => panic!("{e}"),
    };
    format!("{:?}\n{:?}", ledger.totals().unwrap(), history)
}

/// `assert_eq!` for snapshots, reporting where they part instead of printing both.
#[track_caller]
fn assert_same(actual: &str, expected: &str, what: &str) {
    if actual != expected {
        let at = actual
            .bytes()
            .zip(expected.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(actual.len().min(expected.len()));
        let from = at.saturating_sub(80);
        panic!(
            "{what}: snapshots differ at byte {at} (lengths {} vs {}):\n actual: ...{}\n expected: ...{}",
            actual.len(),
            expected.len(),
            &actual[from..(at + 80).min(actual.len())],
            &expected[from..(at + 80).min(expected.len())],
        );
    }
}

/// The `i`th operation of a script whose every step succeeds and writes.
fn step(i: usize) -> Op {
    match i % 4 {
        0 => Op::Credit(Credit::purchase("ws", 50, format!("order-{i}"))),
        1 => Op::Start(StartGeneration::new(
            format!("g{i}"),
            "ws",
            "Quick Video",
            7,
        )),
        2 => Op::Complete {
            generation_id: format!("g{}", i - 1),
        },
        _ => Op::Start(StartGeneration::new(format!("f{i}"), "ws", "Upscale", 3)),
    }
}

/// After every fourth step, the Upscale it started fails.
fn run_script(ledger: &Ledger, clock: &ManualClock, steps: usize) -> Vec<String> {
    let mut snapshots = vec![snapshot(ledger)];
    for i in 0..steps {
        clock.advance_ms(1_000);
        let op = if i % 8 == 7 {
            Op::Fail {
                generation_id: format!("f{}", i - 4),
                reason: RefundReason::ServiceUnavailable,
                message: "upstream 503".into(),
            }
        } else {
            step(i)
        };
        let out = ledger.execute(op).unwrap();
        assert!(!matches!(out, Outcome::Sweep(_)));
        snapshots.push(snapshot(ledger));
    }
    snapshots
}

/// Copy the ledger file (and its journal, if `with_journal`) to `to`.
fn crash_copy(from: &Path, to: &Path, with_journal: bool) {
    std::fs::copy(from, to).unwrap();
    let _ = std::fs::remove_file(journal_of(to));
    if with_journal {
        std::fs::copy(journal_of(from), journal_of(to)).unwrap();
    }
}

fn open(path: &Path, clock: &ManualClock) -> Ledger {
    Ledger::open_with(path, options(clock)).unwrap()
}

#[test]
fn a_crash_image_replays_exactly_the_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    let clock = ManualClock::new(T0_MS);
    let ledger = open(&a, &clock);
    let steps = 40;
    let snapshots = run_script(&ledger, &clock, steps);
    assert!(
        journal_of(&a).exists(),
        "the writes went through the journal"
    );

    // The ledger file alone holds only the first (the epoch's start): it refuses to open
    // without its journal rather than come back with an older state.
    let alone = dir.path().join("alone.redb");
    crash_copy(&a, &alone, false);
    assert!(matches!(
        Ledger::open_with(&alone, options(&clock)),
        Err(Error::JournalMismatch { .. })
    ));

    // With its journal, every acknowledged write is back, and the audit is clean.
    let b = dir.path().join("b.redb");
    crash_copy(&a, &b, true);
    let reopened = open(&b, &clock);
    assert_same(&snapshot(&reopened), &snapshots[steps], "state");
    assert_healthy(&reopened);
    // The replay was checkpointed: the file now stands alone.
    let c = dir.path().join("c.redb");
    crash_copy(&b, &c, false);
    assert_same(&snapshot(&open(&c, &clock)), &snapshots[steps], "state");
    // And the replayed ledger goes on: ids continue, new writes land.
    reopened
        .credit(Credit::grant("ws", 1, "after-replay"))
        .unwrap();
    assert_healthy(&reopened);
    drop(reopened);

    // A crash in the middle of writing the last entry k (cut short, or torn with a flipped
    // bit) loses that entry and nothing before it: the state is the one after the first k
    // steps.
    let journal = std::fs::read(journal_of(&a)).unwrap();
    let d = dir.path().join("d.redb");
    for (k, expected) in snapshots.iter().enumerate().take(steps).skip(1) {
        let at = k * BLOCK;
        let mut damaged: Vec<(&str, Vec<u8>)> = vec![
            ("cut inside the header", journal[..at + 20].to_vec()),
            ("cut inside the payload", journal[..at + 60].to_vec()),
            ("cut at the entry", journal[..at].to_vec()),
        ];
        if k == steps - 1 {
            damaged.push(("zeroed", {
                let mut j = journal.clone();
                j[at..at + BLOCK].fill(0);
                j
            }));
            damaged.push(("bit flipped in the seq", {
                let mut j = journal.clone();
                j[at + 16] ^= 1;
                j
            }));
            damaged.push(("bit flipped in the payload", {
                let mut j = journal.clone();
                j[at + 40] ^= 0x10;
                j
            }));
        }
        for (what, bytes) in damaged {
            crash_copy(&a, &d, false);
            std::fs::write(journal_of(&d), &bytes).unwrap();
            let l = open(&d, &clock);
            assert_same(&snapshot(&l), expected, &format!("entry {k} {what}"));
            if k % 8 == 0 {
                assert_healthy(&l);
            }
        }
    }
    drop(ledger);
}

#[test]
fn another_ledgers_journal_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let a = dir.path().join("a.redb");
    let ledger = open(&a, &clock);
    run_script(&ledger, &clock, 12);
    let journal = std::fs::read(journal_of(&a)).unwrap();
    drop(ledger);

    // The ledger file was deleted but its journal stayed: a new ledger of the same name must
    // not inherit the old writes, nor overwrite them (they may be all that is left of that
    // ledger): the open refuses, names the journal, and creates nothing.
    std::fs::remove_file(&a).unwrap();
    std::fs::write(journal_of(&a), &journal).unwrap();
    match Ledger::open_with(&a, options(&clock)) {
        Err(Error::ForeignFile { path, .. }) => assert!(path.ends_with("a.redb.journal")),
        other => panic!("expected ForeignFile, got {other:?}"),
    }
    assert!(!a.exists(), "no ledger was created");
    assert!(std::fs::read(journal_of(&a)).unwrap() == journal);

    // Likewise for a journal copied next to a different ledger: never replayed, never
    // written, and the ledger itself untouched.
    let other = dir.path().join("other.redb");
    let o = open(&other, &clock);
    o.credit(Credit::grant("ws", 5, "welcome")).unwrap();
    drop(o);
    std::fs::write(journal_of(&other), &journal).unwrap();
    assert!(matches!(
        Ledger::open_with(&other, options(&clock)),
        Err(Error::ForeignFile { .. })
    ));
    assert!(std::fs::read(journal_of(&other)).unwrap() == journal);
    // Moved aside, the ledger opens with its own writes.
    std::fs::remove_file(journal_of(&other)).unwrap();
    let o = open(&other, &clock);
    assert_eq!(o.balance("ws").unwrap().balance_credits, 5);
    assert_healthy(&o);
}

#[test]
fn checkpoints_let_the_file_stand_alone_and_bound_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let a = dir.path().join("a.redb");
    let ledger = open(&a, &clock);
    ledger
        .credit(Credit::purchase("ws", 1_000_000, "big"))
        .unwrap();
    // More single entries than the journal holds (8 MiB of 4 KiB entries): it must checkpoint
    // and start over on its own.
    let n: u64 = 2_300;
    for i in 0..n {
        ledger
            .start_generation(StartGeneration::new(format!("g{i}"), "ws", "Image", 1))
            .unwrap();
    }
    let journal_len = std::fs::metadata(journal_of(&a)).unwrap().len();
    assert!(
        journal_len <= 8 << 20,
        "journal grew to {journal_len} bytes"
    );
    let expected = snapshot(&ledger);
    let b = dir.path().join("b.redb");
    crash_copy(&a, &b, true);
    let reopened = open(&b, &clock);
    assert_same(&snapshot(&reopened), &expected, "state");
    assert_eq!(reopened.totals().unwrap().running_generations, n);
    drop(reopened);

    // After an explicit checkpoint, the ledger file alone has everything.
    ledger.checkpoint().unwrap();
    let c = dir.path().join("c.redb");
    crash_copy(&a, &c, false);
    assert_same(&snapshot(&open(&c, &clock)), &expected, "state");

    // A batch too big for the journal (over 1 MiB encoded) is committed durably to the file.
    let ops: Vec<Op> = (0..5_000)
        .map(|i| {
            Op::Start(StartGeneration::new(
                format!("{i:0>120}"),
                "ws",
                "F".repeat(128),
                1,
            ))
        })
        .collect();
    assert!(ledger.apply(&ops).iter().all(Result::is_ok));
    let expected = snapshot(&ledger);
    crash_copy(&a, &c, false);
    assert_same(&snapshot(&open(&c, &clock)), &expected, "state");
    drop(ledger);
    // A clean close checkpoints too.
    crash_copy(&a, &c, false);
    assert_same(&snapshot(&open(&c, &clock)), &expected, "state");
}

#[test]
fn a_damaged_entry_that_passes_its_checksum_is_a_typed_error_and_garbage_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let a = dir.path().join("a.redb");
    let ledger = open(&a, &clock);
    let expected = run_script(&ledger, &clock, 3).pop().unwrap();
    let journal = std::fs::read(journal_of(&a)).unwrap();
    let b = dir.path().join("b.redb");

    // An entry whose frame is intact but whose payload is not a batch: a crash cannot make
    // that, so the open stops with a typed error that says what to do, instead of dropping
    // acknowledged writes in silence.
    let mut forged = journal[..2 * BLOCK].to_vec();
    let entry = &mut forged[BLOCK..];
    let payload = b"\x01not a batch at all";
    entry[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    entry[28..28 + payload.len()].copy_from_slice(payload);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&entry[..24]);
    crc.update(payload);
    entry[24..28].copy_from_slice(&crc.finalize().to_le_bytes());
    crash_copy(&a, &b, false);
    std::fs::write(journal_of(&b), &forged).unwrap();
    match Ledger::open_with(&b, options(&clock)) {
        Err(e @ Error::Corruption { .. }) => {
            let text = e.to_string();
            assert!(text.contains("journal"), "{text}");
            assert!(text.contains("does not have yet"), "{text}");
        }
        other => panic!("expected a journal corruption error, got {other:?}"),
    }
    assert!(
        std::fs::read(journal_of(&b)).unwrap() == forged,
        "kept as it is"
    );

    // Random bytes, an empty file, or zeros in its place: not this ledger's journal, so the
    // open refuses (the ledger file says writes may be in it) and changes nothing.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let random: Vec<u8> = (0..3 * BLOCK)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    for bytes in [random, Vec::new(), vec![0u8; 2 * BLOCK]] {
        crash_copy(&a, &b, false);
        std::fs::write(journal_of(&b), &bytes).unwrap();
        match Ledger::open_with(&b, options(&clock)) {
            Err(Error::JournalMismatch { problem, .. }) => {
                assert!(problem.contains("no intact journal header"), "{problem}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            std::fs::read(journal_of(&b)).unwrap() == bytes,
            "kept as it is"
        );
        // The refusal changed nothing the ledger needs: with its own journal back, every
        // acknowledged write is there.
        std::fs::write(journal_of(&b), &journal).unwrap();
        assert_same(&snapshot(&open(&b, &clock)), &expected, "state");
    }
    drop(ledger);
}

/// A small tmpfs mounted for one test, unmounted when dropped; `None` where mounting is not
/// allowed (not root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_journal_that_cannot_be_written_fails_the_write_and_changes_nothing() {
    // A full disk is made for real, with a small tmpfs; the check is never skipped.
    let disk = SmallDisk::mount(8 << 20).expect(
        "this test fills a small tmpfs, which needs the right to mount one: run the suite as \
         root (as CI does) or inside a user and mount namespace (`unshare -rm cargo test`)",
    );
    let clock = ManualClock::new(T0_MS);
    let a = disk.dir.path().join("a.redb");
    let ledger = open(&a, &clock);
    ledger
        .credit(Credit::purchase("ws", 100, "order-1"))
        .unwrap();
    assert!(journal_of(&a).exists());
    drop(ledger);
    // A clean close checkpoints and removes the journal.
    assert!(!journal_of(&a).exists());

    // Every write to the journal now fails with "no space left on device": the disk is
    // filled up to its last byte. (The journal is never written through a symlink, so
    // pointing it at /dev/full no longer works: a small tmpfs does it for real.)
    let ledger = open(&a, &clock);
    let filler = a.with_file_name("filler");
    let mut fill = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut fill, &[0xAA; BLOCK]).is_ok() {}
    let _ = fill.sync_all();
    let before = snapshot(&ledger);
    let start = || StartGeneration::new("g1", "ws", "Quick Video", 30);
    match ledger.start_generation(start()) {
        Err(e @ (Error::Storage { .. } | Error::CommitUncertain { .. })) => {
            assert!(e.to_string().contains("journal"), "{e}")
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    // Nothing is visible: the charge never reached redb.
    assert_same(&snapshot(&ledger), &before, "after the failed write");
    assert!(matches!(
        ledger.generation("g1"),
        Err(Error::UnknownGeneration { .. })
    ));
    assert_healthy(&ledger);

    // Space comes back: the retry with the same id charges exactly once, on the same Ledger.
    drop(fill);
    std::fs::remove_file(&filler).unwrap();
    let charge = ledger.start_generation(start()).unwrap();
    assert!(!charge.replay);
    assert_eq!(charge.balance_after_credits, 70);
    assert!(ledger.start_generation(start()).unwrap().replay);
    assert_healthy(&ledger);
    drop(ledger);
    let reopened = open(&a, &clock);
    assert_eq!(reopened.balance("ws").unwrap().balance_credits, 70);
    assert_healthy(&reopened);
}
