//! The ledger file and its journal fail closed (issue 10): an open either has every
//! acknowledged write, or fails with a typed error and leaves the journal as it was. Each test
//! is one way the pair gets separated, damaged, mismatched or bypassed.
//!
//! A "crash image" is a copy of the two files taken while the ledger is open: the bytes a
//! `kill -9` at that moment would leave. redb repairs its own file on the first writable open
//! after a crash (its header and allocator state), so a refusal is shown to have changed
//! nothing by putting the right journal back and finding every acknowledged write.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use credit_ledger::{
    Clock, Credit, Durability, Error, HistoryFilter, Ledger, ManualClock, Options, StartGeneration,
    TxnKind, JOURNAL_DISCARDED_TITLE,
};

use common::{assert_healthy, options, T0_MS};

/// Entries start on this boundary; block 0 is the epoch header, and the first write of an
/// epoch is committed to the ledger file itself, so write `k >= 1` of an epoch is block `k`.
const BLOCK: usize = 4096;

fn journal_of(ledger: &Path) -> PathBuf {
    Ledger::journal_path(ledger)
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

/// `n` acknowledged writes, one entry each; returns the snapshot after each.
fn write_n(ledger: &Ledger, clock: &ManualClock, from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            clock.advance_ms(1_000);
            if i % 3 == 0 {
                ledger
                    .credit(Credit::purchase("ws", 10, format!("order-{i}")))
                    .unwrap();
            } else {
                ledger
                    .start_generation(StartGeneration::new(format!("g{i}"), "ws", "Image", 1))
                    .unwrap();
            }
            snapshot(ledger)
        })
        .collect()
}

/// Copy the ledger file, and its journal if it has one, to `to`: a crash image.
fn crash_copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let _ = std::fs::remove_file(journal_of(to));
    if journal_of(from).exists() {
        std::fs::copy(journal_of(from), journal_of(to)).unwrap();
    }
}

fn open(path: &Path, clock: &ManualClock) -> Ledger {
    Ledger::open_with(path, options(clock)).unwrap()
}

/// A crash image at `image` of a ledger that made `n` acknowledged writes (the first one
/// funds it), and the snapshot a correct reopen shows.
fn crashed(dir: &Path, image: &str, n: usize, clock: &ManualClock) -> (PathBuf, String) {
    let live = dir.join(format!("{image}.live.redb"));
    let ledger = open(&live, clock);
    ledger
        .credit(Credit::purchase("ws", 1_000, "fund"))
        .unwrap();
    let mut snapshots = vec![snapshot(&ledger)];
    snapshots.extend(write_n(&ledger, clock, 0, n - 1));
    let expected = snapshots.pop().unwrap();
    let to = dir.join(format!("{image}.redb"));
    crash_copy(&live, &to);
    drop(ledger);
    (to, expected)
}

#[track_caller]
fn expect_mismatch(path: &Path, options: Options, needle: &str) -> String {
    match Ledger::open_with(path, options) {
        Err(e @ Error::JournalMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.contains(needle), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(
                text.contains(&journal_of(path).display().to_string()),
                "{text}"
            );
            assert!(text.contains("Nothing was changed"), "{text}");
            assert!(text.contains("recover --discard-journal"), "{text}");
            text
        }
        other => panic!("expected a journal mismatch, got {other:?}"),
    }
}

#[test]
fn row1_a_journal_deleted_after_a_crash_is_refused_not_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (image, expected) = crashed(dir.path(), "a", 60, &clock);
    let journal = std::fs::read(journal_of(&image)).unwrap();
    std::fs::remove_file(journal_of(&image)).unwrap();

    for _ in 0..2 {
        expect_mismatch(&image, options(&clock), "missing");
        assert!(!journal_of(&image).exists(), "a refusal creates nothing");
    }
    // The CLI says the same, with exit code 3 (damaged or not a ledger).
    let out = Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
        .arg("--db")
        .arg(&image)
        .args(["balance", "ws"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("journal"), "{stderr}");
    assert!(!journal_of(&image).exists());

    // Nothing was lost by refusing: with the journal back, all 60 writes are there.
    std::fs::write(journal_of(&image), &journal).unwrap();
    let l = open(&image, &clock);
    assert_eq!(snapshot(&l), expected);
    assert_healthy(&l);
}

#[test]
fn row2_damage_before_an_intact_entry_is_corruption_and_the_journal_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let n = 30;
    let (image, expected) = crashed(dir.path(), "a", n, &clock);
    let journal = std::fs::read(journal_of(&image)).unwrap();
    let work = dir.path().join("w.redb");
    // Entries 1..n-1 are blocks 1..n-1; each one but the last is followed by intact ones.
    for k in [1, 2, n / 2, n - 2] {
        let at = k * BLOCK;
        for (what, flip) in [("magic", 0), ("seq", 16), ("payload", 40), ("crc", 25)] {
            std::fs::copy(&image, &work).unwrap();
            let mut damaged = journal.clone();
            damaged[at + flip] ^= 0x20;
            std::fs::write(journal_of(&work), &damaged).unwrap();
            match Ledger::open_with(&work, options(&clock)) {
                Err(e @ Error::Corruption { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains("journal"), "entry {k} {what}: {text}");
                    assert!(
                        text.contains(&format!("entry {k} ")),
                        "entry {k} {what}: {text}"
                    );
                }
                other => panic!("entry {k} {what}: expected Corruption, got {other:?}"),
            }
            assert!(
                std::fs::read(journal_of(&work)).unwrap() == damaged,
                "entry {k} {what}: the journal is kept exactly as it was"
            );
            // The refusal lost nothing: with the undamaged journal, every write is back.
            if flip == 16 {
                std::fs::write(journal_of(&work), &journal).unwrap();
                assert_eq!(snapshot(&open(&work, &clock)), expected, "entry {k}");
            }
        }
    }
}

/// Rewrite the last byte of entry `k`'s "which operations succeeded" bitmap, fixing both
/// checksums, as a bug or a forger would. The batch record ends with that bitmap and then the
/// grant notice window, which these ledgers run without (`None`: one zero byte).
fn forge_result_bit(journal: &mut [u8], k: usize) {
    let at = k * BLOCK;
    let len = u32::from_le_bytes(journal[at + 4..at + 8].try_into().unwrap()) as usize;
    let payload = &mut journal[at + 28..at + 28 + len];
    // The payload is [version][bincode][crc32 of both].
    let body = len - 4;
    assert_eq!(payload[body - 1], 0, "the notice window is None");
    payload[body - 2] ^= 1;
    let crc = crc32fast::hash(&payload[..body]);
    payload[body..].copy_from_slice(&crc.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&journal[at..at + 24]);
    crc.update(&journal[at + 28..at + 28 + len]);
    journal[at + 24..at + 28].copy_from_slice(&crc.finalize().to_le_bytes());
}

#[test]
fn item3_a_replay_that_does_not_reproduce_the_recorded_result_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (image, expected) = crashed(dir.path(), "a", 12, &clock);
    let journal = std::fs::read(journal_of(&image)).unwrap();
    let work = dir.path().join("w.redb");
    for k in [1, 5, 11] {
        std::fs::copy(&image, &work).unwrap();
        let mut forged = journal.clone();
        forge_result_bit(&mut forged, k);
        std::fs::write(journal_of(&work), &forged).unwrap();
        match Ledger::open_with(&work, options(&clock)) {
            Err(e @ Error::Corruption { .. }) => {
                let text = e.to_string();
                assert!(text.contains("replaying entry"), "{text}");
                assert!(text.contains("journal"), "{text}");
            }
            other => panic!("entry {k}: expected Corruption, got {other:?}"),
        }
        assert!(std::fs::read(journal_of(&work)).unwrap() == forged);
        // The operator's discard replays the entries before the forged one, and no more.
        let mut copy = dir.path().join("copy.redb");
        copy.set_extension(format!("{k}.redb"));
        std::fs::copy(&work, &copy).unwrap();
        std::fs::copy(journal_of(&work), journal_of(&copy)).unwrap();
        let l = Ledger::open_with(&copy, options(&clock).discard_journal(true)).unwrap();
        let d = l.journal_discard().expect("a discard");
        assert_eq!((d.first_seq, d.replayed_entries), (k as u64, k - 1));
        assert_healthy(&l);
        drop(l);
        std::fs::write(journal_of(&work), &journal).unwrap();
        assert_eq!(snapshot(&open(&work, &clock)), expected);
    }
}

#[test]
fn item4_every_open_replays_a_pending_journal_whatever_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (image, expected) = crashed(dir.path(), "a", 25, &clock);
    let variants: Vec<(&str, Options)> = vec![
        ("journal off", options(&clock).journal(false)),
        (
            "durability none",
            options(&clock).durability(Durability::None),
        ),
        (
            "another default timeout",
            options(&clock).default_timeout_ms(60_000),
        ),
    ];
    for (what, opts) in variants {
        let work = dir.path().join("w.redb");
        crash_copy(&image, &work);
        let l = Ledger::open_with(&work, opts).unwrap();
        assert_eq!(snapshot(&l), expected, "{what}");
        // Writes after it land on top of the replayed state, and a normal reopen agrees.
        l.credit(Credit::grant("ws", 1, "after")).unwrap();
        let after = snapshot(&l);
        drop(l);
        let l = open(&work, &clock);
        assert_eq!(snapshot(&l), after, "{what}");
        assert_healthy(&l);
    }
}

#[test]
fn row6_a_copys_journal_never_replays_into_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let a = dir.path().join("a.redb");
    let b = dir.path().join("b.redb");
    let la = open(&a, &clock);
    la.credit(Credit::purchase("ws", 1_000, "fund")).unwrap();
    drop(la);
    // `cp A.redb B.redb`: the same ledger id, the same history.
    std::fs::copy(&a, &b).unwrap();
    let (la, lb) = (open(&a, &clock), open(&b, &clock));
    let a_expected = write_n(&la, &clock, 0, 20).pop().unwrap();
    let b_expected = write_n(&lb, &clock, 100, 7).pop().unwrap();
    let (a_img, b_img) = (dir.path().join("a-img.redb"), dir.path().join("b-img.redb"));
    crash_copy(&a, &a_img);
    crash_copy(&b, &b_img);
    drop((la, lb));

    // B's journal ends up next to A: refused, both journals as they were.
    let a_journal = std::fs::read(journal_of(&a_img)).unwrap();
    let b_journal = std::fs::read(journal_of(&b_img)).unwrap();
    std::fs::write(journal_of(&a_img), &b_journal).unwrap();
    expect_mismatch(&a_img, options(&clock), "copy of this ledger");
    assert!(std::fs::read(journal_of(&a_img)).unwrap() == b_journal);
    assert!(std::fs::read(journal_of(&b_img)).unwrap() == b_journal);
    // Each with its own journal has exactly its own writes.
    std::fs::write(journal_of(&a_img), &a_journal).unwrap();
    assert_eq!(snapshot(&open(&a_img, &clock)), a_expected);
    assert_eq!(snapshot(&open(&b_img, &clock)), b_expected);
}

#[test]
fn row8_a_journal_deleted_while_the_ledger_runs_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let a = dir.path().join("a.redb");
    let ledger = open(&a, &clock);
    ledger
        .credit(Credit::purchase("ws", 1_000, "fund"))
        .unwrap();
    write_n(&ledger, &clock, 0, 10);
    // A clean-up script removes the "stray" file while the app runs; the app goes on.
    std::fs::remove_file(journal_of(&a)).unwrap();
    let snapshots = write_n(&ledger, &clock, 10, 40);
    assert!(
        journal_of(&a).exists(),
        "the ledger started a new journal instead of writing into the deleted one"
    );
    // A crash now keeps every acknowledged write.
    let img = dir.path().join("img.redb");
    crash_copy(&a, &img);
    let l = open(&img, &clock);
    assert_eq!(&snapshot(&l), snapshots.last().unwrap());
    assert_healthy(&l);
    drop(l);

    // Deleted again: the write that notices is committed to the ledger file itself before it
    // is acknowledged, so the ledger file alone (no journal left at all) holds everything.
    std::fs::remove_file(journal_of(&a)).unwrap();
    let last = write_n(&ledger, &clock, 50, 1).pop().unwrap();
    assert!(!journal_of(&a).exists());
    let img2 = dir.path().join("img2.redb");
    std::fs::copy(&a, &img2).unwrap();
    assert_eq!(snapshot(&open(&img2, &clock)), last);
    drop(ledger);
}

/// The journal's inode and the epoch id in its header: a new epoch in a new file changes both.
fn journal_identity(ledger: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let journal = journal_of(ledger);
    let header = std::fs::read(&journal).unwrap();
    let epoch = u64::from_le_bytes(header[12..20].try_into().unwrap());
    (std::fs::metadata(&journal).unwrap().ino(), epoch)
}

/// A ledger at `dir/a.redb`, funded and with ten writes in its journal's epoch.
fn running(dir: &Path, clock: &ManualClock) -> (PathBuf, Ledger) {
    let a = dir.join("a.redb");
    let ledger = open(&a, clock);
    ledger
        .credit(Credit::purchase("ws", 1_000, "fund"))
        .unwrap();
    write_n(&ledger, clock, 0, 10);
    (a, ledger)
}

/// A crash of the ledger at `a` now keeps every acknowledged write: its last snapshot.
#[track_caller]
fn a_crash_keeps(dir: &Path, a: &Path, expected: &str, clock: &ManualClock) {
    let img = dir.join("img.redb");
    crash_copy(a, &img);
    let l = open(&img, clock);
    assert_eq!(snapshot(&l), expected);
    assert_healthy(&l);
}

#[test]
fn row8_a_journal_renamed_away_while_the_ledger_runs_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (a, ledger) = running(dir.path(), &clock);
    // A sync tool "moves the stray file aside" while the app runs: the entries now go nowhere
    // a reopen looks, although the file still has a link.
    let aside = dir.path().join("moved-aside.journal");
    std::fs::rename(journal_of(&a), &aside).unwrap();
    write_n(&ledger, &clock, 10, 1);
    let moved = std::fs::read(&aside).unwrap();
    let snapshots = write_n(&ledger, &clock, 11, 20);
    assert!(
        journal_of(&a).exists(),
        "a new journal at the journal's path"
    );
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        moved,
        "nothing is written into the moved file after the write that noticed"
    );
    a_crash_keeps(dir.path(), &a, snapshots.last().unwrap(), &clock);
}

#[test]
fn row8_the_journal_name_removed_while_a_hard_link_keeps_the_file_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (a, ledger) = running(dir.path(), &clock);
    // The file keeps a link (so its link count is 1), but not at the journal's path.
    std::fs::hard_link(journal_of(&a), dir.path().join("kept.journal")).unwrap();
    std::fs::remove_file(journal_of(&a)).unwrap();
    let snapshots = write_n(&ledger, &clock, 10, 20);
    assert!(
        journal_of(&a).exists(),
        "a new journal at the journal's path"
    );
    a_crash_keeps(dir.path(), &a, snapshots.last().unwrap(), &clock);
}

#[test]
fn a_chmod_touch_or_second_name_of_the_journal_starts_no_new_epoch() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (a, ledger) = running(dir.path(), &clock);
    let before = journal_identity(&a);
    // Each of these changes the journal's attributes (an inotify IN_ATTRIB) and keeps its
    // name: the ledger goes on in the same epoch and the same file.
    let other = dir.path().join("second-name");
    std::fs::hard_link(journal_of(&a), &other).unwrap();
    write_n(&ledger, &clock, 10, 3);
    std::fs::remove_file(&other).unwrap();
    write_n(&ledger, &clock, 13, 3);
    std::fs::set_permissions(journal_of(&a), std::fs::Permissions::from_mode(0o600)).unwrap();
    write_n(&ledger, &clock, 16, 3);
    let file = std::fs::File::options()
        .write(true)
        .open(journal_of(&a))
        .unwrap();
    file.set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    drop(file);
    let snapshots = write_n(&ledger, &clock, 19, 3);
    assert_eq!(journal_identity(&a), before);
    a_crash_keeps(dir.path(), &a, snapshots.last().unwrap(), &clock);
}

#[test]
fn row8_another_file_renamed_over_the_journal_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (a, ledger) = running(dir.path(), &clock);
    let theirs = b"another program's notes, not a journal".to_vec();
    let tmp = dir.path().join("notes.tmp");
    std::fs::write(&tmp, &theirs).unwrap();
    std::fs::rename(&tmp, journal_of(&a)).unwrap();
    // The write that notices is committed to the ledger file itself.
    let noticed = write_n(&ledger, &clock, 10, 1).pop().unwrap();
    let img = dir.path().join("img.redb");
    std::fs::copy(&a, &img).unwrap();
    assert_eq!(snapshot(&open(&img, &clock)), noticed);
    // The next one would start a journal in that file: refused, the file untouched.
    clock.advance_ms(1_000);
    match ledger.credit(Credit::purchase("ws", 10, "after")) {
        Err(Error::ForeignFile { path, .. }) => {
            assert_eq!(path, journal_of(&a).display().to_string())
        }
        other => panic!("expected a foreign file error, got {other:?}"),
    }
    assert_eq!(std::fs::read(journal_of(&a)).unwrap(), theirs);
    // Once the operator moves it away, the ledger writes again, into a journal of its own.
    std::fs::rename(journal_of(&a), dir.path().join("notes")).unwrap();
    let snapshots = write_n(&ledger, &clock, 11, 5);
    assert_eq!(std::fs::read(dir.path().join("notes")).unwrap(), theirs);
    a_crash_keeps(dir.path(), &a, snapshots.last().unwrap(), &clock);
}

#[test]
fn a_crash_right_after_an_epoch_starts_opens_with_its_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (image, expected) = crashed(dir.path(), "a", 1, &clock);
    assert!(journal_of(&image).exists());
    let l = open(&image, &clock);
    assert_eq!(snapshot(&l), expected);
    assert_eq!(l.balance("ws").unwrap().balance_credits, 1_000);
    drop(l);
    // And the ledger file alone after that reopen stands alone.
    std::fs::remove_file(journal_of(&image)).ok();
    assert_eq!(snapshot(&open(&image, &clock)), expected);
}

/// The "Journal discarded" notes in `ws`'s history.
fn discard_notes(ledger: &Ledger) -> Vec<String> {
    common::all_history(ledger, "ws", &HistoryFilter::all())
        .into_iter()
        .filter(|t| t.kind == TxnKind::Adjustment && t.title == JOURNAL_DISCARDED_TITLE)
        .map(|t| {
            assert_eq!(t.amount_credits, 0);
            assert_eq!(t.balance_before_credits, t.balance_after_credits);
            t.memo.unwrap_or_default()
        })
        .collect()
}

#[test]
fn item6_the_operator_discards_a_lost_journal_only_when_told_and_the_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (image, _) = crashed(dir.path(), "a", 20, &clock);
    std::fs::remove_file(journal_of(&image)).unwrap();
    expect_mismatch(&image, options(&clock), "missing");

    // The CLI refuses without the flag, and does it with it.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
            .arg("--db")
            .arg(&image)
            .args(["--now", &clock.now_ms().to_string()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["recover"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    expect_mismatch(&image, options(&clock), "missing");
    let out = cli(&["recover", "--discard-journal"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("Discarded journal entries from 1 on"),
        "{stdout}"
    );
    assert!(stdout.contains("verify: OK"), "{stdout}");

    // Afterwards the ledger opens normally, at the epoch's start (the funding), and its log
    // says what was discarded and when.
    let l = open(&image, &clock);
    assert!(l.journal_discard().is_none(), "nothing more to discard");
    assert_eq!(l.balance("ws").unwrap().balance_credits, 1_000);
    let notes = discard_notes(&l);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("entries from 1 on"), "{}", notes[0]);
    assert!(notes[0].contains("missing"), "{}", notes[0]);
    assert_healthy(&l);
    l.credit(Credit::grant("ws", 1, "after")).unwrap();
}

#[test]
fn item6_a_damaged_journal_keeps_its_proven_prefix_and_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let n = 16;
    let live = dir.path().join("live.redb");
    let ledger = open(&live, &clock);
    ledger
        .credit(Credit::purchase("ws", 1_000, "fund"))
        .unwrap();
    let snapshots = write_n(&ledger, &clock, 0, n - 1);
    let image = dir.path().join("a.redb");
    crash_copy(&live, &image);
    drop(ledger);
    // Entry 6 damaged, entries 7..15 intact after it.
    let mut journal = std::fs::read(journal_of(&image)).unwrap();
    journal[6 * BLOCK + 40] ^= 0x08;
    std::fs::write(journal_of(&image), &journal).unwrap();
    assert!(matches!(
        Ledger::open_with(&image, options(&clock)),
        Err(Error::Corruption { .. })
    ));

    let l = Ledger::open_with(&image, options(&clock).discard_journal(true)).unwrap();
    let d = l.journal_discard().expect("a discard").clone();
    assert_eq!(
        (d.first_seq, d.last_seq, d.replayed_entries),
        (6, Some(15), 5)
    );
    assert!(d.reason.contains("entry 6"), "{}", d.reason);
    // Entries 1..5 replayed: the state after the funding and five writes, plus the note.
    let kept = d.kept_at.clone().expect("the journal is kept");
    assert!(
        std::fs::read(&kept).unwrap() == journal,
        "kept byte for byte"
    );
    // The journal's place holds a fresh, empty journal: the open ledger's lock (see
    // `storage::journal_file`), not the damaged one.
    assert_eq!(std::fs::metadata(journal_of(&image)).unwrap().len(), 0);
    let notes = discard_notes(&l);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("entries 6 to 15"), "{}", notes[0]);
    let without_note: Vec<_> = common::all_history(&l, "ws", &HistoryFilter::all())
        .into_iter()
        .filter(|t| t.title != JOURNAL_DISCARDED_TITLE)
        .collect();
    let (totals, history) = snapshots[4].split_once('\n').unwrap();
    assert_eq!(format!("{:?}", l.totals().unwrap()), totals);
    assert_eq!(
        format!("{without_note:?}"),
        history,
        "exactly the five proven entries were replayed"
    );
    assert_healthy(&l);
}

/// `recover` opens the file the way every other command does: it waits for a file another
/// process has open (`--wait`, the hint when it gives up) and refuses a `--now` far ahead of
/// the system clock, instead of a bare "open in another process".
#[test]
fn item6_recover_waits_and_guards_the_clock_like_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let path = dir.path().join("busy.redb");
    let app = open(&path, &clock);
    app.credit(Credit::purchase("ws", 10, "fund")).unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
            .arg("--db")
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["recover", "--discard-journal", "--wait", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("--wait"), "{stderr}");
    drop(app);
    let out = cli(&[
        "recover",
        "--discard-journal",
        "--now",
        "18446744073709551615",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-future-now"),
        "{out:?}"
    );
    // Nothing was discarded or written by either refusal.
    let l = open(&path, &clock);
    assert!(l.journal_discard().is_none());
    assert_eq!(l.balance("ws").unwrap().balance_credits, 10);
}
