//! The files around a ledger, tried the way a careless user, a second program or an attacker
//! would: a foreign file or a symlink where the journal goes, a ledger opened through a link, a
//! lock that must hold through a failed reopen, leftovers of killed creations, `simulate --db`
//! pointed at something that is not a file, and reading ledgers that cannot be written.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use credit_ledger::{Credit, Error, Ledger, ManualClock, StartGeneration};

use common::{assert_healthy, options, T0_MS};

fn journal_of(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().unwrap().to_os_string();
    name.push(".journal");
    ledger.with_file_name(name)
}

fn open(path: &Path) -> Ledger {
    Ledger::open_with(path, options(&ManualClock::new(T0_MS))).unwrap()
}

fn cli(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_credit-ledger"));
    c.args(args).env_remove("CREDIT_LEDGER_DB");
    c
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `balance` field of a `balance --json` output.
fn balance_of(out: &Output) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["balance"].as_u64()
}

/// Row 4: another ledger happens to be named `<ledger>.journal`. It is never written or
/// removed; the open names it.
#[test]
fn a_ledger_named_like_the_journal_is_never_written_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    let other = journal_of(&a);
    {
        let o = open(&other);
        o.credit(Credit::purchase("acme", 500, "order-1")).unwrap();
    }
    let before = std::fs::read(&other).unwrap();
    for attempt in ["create a", "open an existing a"] {
        match Ledger::open_with(&a, options(&ManualClock::new(T0_MS))) {
            Err(e @ Error::ForeignFile { .. }) => {
                assert!(e.to_string().contains("a.redb.journal"), "{attempt}: {e}")
            }
            Ok(l) => {
                // Today's behaviour: the first write overwrites the other ledger.
                let _ = l.credit(Credit::grant("ws", 1, "k"));
                panic!("{attempt}: the open succeeded next to a foreign journal")
            }
            Err(e) => panic!("{attempt}: expected ForeignFile, got {e:?}"),
        }
        assert!(
            std::fs::read(&other).unwrap() == before,
            "{attempt}: touched"
        );
        if !a.exists() {
            // Make `a` exist for the second attempt, with the foreign file moved away meanwhile.
            std::fs::rename(&other, dir.path().join("aside")).unwrap();
            drop(open(&a));
            std::fs::rename(dir.path().join("aside"), &other).unwrap();
        }
    }
    let o = open(&other);
    assert_eq!(o.balance("acme").unwrap().balance_credits, 500);
}

/// Row 5: `<ledger>.journal` is a symlink to another file. Nothing is written through it.
#[test]
fn a_symlink_in_the_journals_place_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    drop(open(&a));
    let victim = dir.path().join("victim.bin");
    let bytes: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&victim, &bytes).unwrap();
    std::os::unix::fs::symlink(&victim, journal_of(&a)).unwrap();
    match Ledger::open_with(&a, options(&ManualClock::new(T0_MS))) {
        Err(e @ Error::ForeignFile { .. }) => assert!(e.to_string().contains("symbolic link")),
        Ok(l) => {
            let _ = l.credit(Credit::grant("ws", 1, "k"));
            drop(l);
            panic!("opened through a symlinked journal")
        }
        Err(e) => panic!("expected ForeignFile, got {e:?}"),
    }
    assert!(std::fs::read(&victim).unwrap() == bytes);
    assert!(std::fs::symlink_metadata(journal_of(&a))
        .unwrap()
        .file_type()
        .is_symlink());
    // A directory or a FIFO there is refused the same way.
    std::fs::remove_file(journal_of(&a)).unwrap();
    std::fs::create_dir(journal_of(&a)).unwrap();
    assert!(matches!(
        Ledger::open_with(&a, options(&ManualClock::new(T0_MS))),
        Err(Error::ForeignFile { .. })
    ));
}

/// Row 7: the app opens the ledger through a symlink, crashes, and the operator opens the
/// real path: every acknowledged write is there, because the journal sits next to the real
/// file.
#[test]
fn a_ledger_opened_through_a_symlink_keeps_its_journal_next_to_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.redb");
    let link = dir.path().join("link.redb");
    drop(open(&real));
    std::os::unix::fs::symlink("real.redb", &link).unwrap();
    let app = open(&link);
    assert_eq!(app.path().unwrap(), real.canonicalize().unwrap());
    app.credit(Credit::purchase("ws", 100, "order-1")).unwrap();
    app.start_generation(StartGeneration::new("g1", "ws", "Quick Video", 30))
        .unwrap();
    // The crash image: every file of the folder as it is while the app runs.
    let crashed = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let to = crashed.path().join(entry.file_name());
        if entry.file_type().unwrap().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    drop(app);
    let operator = open(&crashed.path().join("real.redb"));
    assert_eq!(operator.balance("ws").unwrap().balance_credits, 70);
    assert_eq!(operator.balance("ws").unwrap().running_generations, 1);
    assert_healthy(&operator);
}

/// A small tmpfs mounted for one test, unmounted when dropped; `None` where mounting is not
/// allowed (not root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
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
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// "Also seen": after a failed reopen (disk full), the ledger still holds its file lock, so
/// another program cannot open the file and write while the app runs.
#[test]
fn the_lock_holds_through_a_failed_reopen() {
    // A full disk is made for real, with a small tmpfs; the check is never skipped.
    let disk = SmallDisk::mount(8 << 20).expect(
        "this test fills a small tmpfs, which needs the right to mount one: run the suite as \
         root (as CI does) or inside a user and mount namespace (`unshare -rm cargo test`)",
    );
    let a = disk.dir.path().join("a.redb");
    drop(open(&a));
    let app = open(&a);
    app.credit(Credit::purchase("ws", 100, "order-1")).unwrap();
    // The disk fills up: the next write fails, and the ledger must reopen its file.
    let filler = disk.dir.path().join("filler");
    let mut fill = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut fill, &[0xAA; 4096]).is_ok() {}
    drop(fill);
    // Enough entries to need the journal to grow past what it has allocated.
    let mut failed = false;
    for i in 0..64 {
        if app
            .credit(Credit::purchase("ws", 1, format!("fill-{i}")))
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "a full disk never failed a write");
    // The reopen fails too (the file is away for a moment, as on a flaky mount).
    let aside = disk.dir.path().join("aside");
    std::fs::rename(&a, &aside).unwrap();
    std::fs::remove_file(&filler).unwrap();
    assert!(app.credit(Credit::purchase("ws", 1, "during")).is_err());
    std::fs::rename(&aside, &a).unwrap();
    // The app still runs: nobody else may open the file, let alone write.
    match Ledger::open_with(&a, options(&ManualClock::new(T0_MS))) {
        Err(Error::AlreadyOpen { .. }) => {}
        Ok(other) => {
            let _ = other.credit(Credit::purchase("ws", 999, "intruder"));
            panic!("a second ledger opened the file while the app runs");
        }
        Err(e) => panic!("expected AlreadyOpen, got {e:?}"),
    }
    let out = cli(&[
        "--db",
        a.to_str().unwrap(),
        "credit",
        "ws",
        "999",
        "--key",
        "cli",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("open in another process"),
        "{}",
        text(&out)
    );
    // The app recovers on its next write, and the retry lands exactly once.
    app.credit(Credit::purchase("ws", 1, "during")).unwrap();
    assert!(
        app.credit(Credit::purchase("ws", 1, "during"))
            .unwrap()
            .replay
    );
    assert_healthy(&app);
    drop(app);
    let reopened = open(&a);
    let balance = reopened.balance("ws").unwrap().balance_credits;
    assert!(
        (101..=165).contains(&balance),
        "balance {balance}: the intruder's 999 must not be there"
    );
}

/// A pid that no process has now.
fn dead_pid() -> u32 {
    (100_000..4_000_000)
        .rev()
        .step_by(7919)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

/// "Also seen": killed first-time creations leave `*.creating-<pid>` files; the next creation
/// removes those of dead processes, and nothing else.
#[test]
fn creations_left_by_dead_processes_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    let dead = dir.path().join(format!("a.redb.creating-{}", dead_pid()));
    let alive = dir.path().join("a.redb.creating-1");
    let other_ledger = dir.path().join(format!("b.redb.creating-{}", dead_pid()));
    let not_a_pid = dir.path().join("a.redb.creating-12x");
    for f in [&dead, &alive, &other_ledger, &not_a_pid] {
        std::fs::write(f, b"half-made").unwrap();
    }
    let ledger = open(&a);
    ledger.credit(Credit::grant("ws", 5, "welcome")).unwrap();
    assert!(!dead.exists(), "the dead process's creation is still there");
    for f in [&alive, &other_ledger, &not_a_pid] {
        assert_eq!(std::fs::read(f).unwrap(), b"half-made", "{}", f.display());
    }
}

/// Row 10: `simulate --db` pointed at a FIFO or through a symlink: refused, nothing replaced.
#[test]
fn simulate_takes_only_a_missing_path_or_an_empty_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let target = dir.path().join("empty-target");
    std::fs::write(&target, b"").unwrap();
    let link = dir.path().join("link.redb");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for path in [&fifo, &link] {
        let out = cli(&[
            "--db",
            path.to_str().unwrap(),
            "simulate",
            "--workspaces",
            "2",
            "--generations",
            "20",
        ])
        .output()
        .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            path.display(),
            text(&out)
        );
        assert!(text(&out).contains("not a regular file"), "{}", text(&out));
    }
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo_like());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"");
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

/// A command that cannot write anywhere under `dir`: as root (where permission bits do not
/// stop writes) it runs as the unprivileged user 65534, otherwise as the caller.
fn unprivileged(mut c: Command) -> Command {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        c.uid(65534).gid(65534);
    }
    c
}

/// Make `dir` and every file in it read-only (0555 / 0444).
fn make_read_only(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
}

/// "Also seen": every read command works on a ledger whose file and folder cannot be written,
/// and a crashed one that needs a replay says exactly that.
#[test]
fn read_commands_work_on_a_read_only_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    {
        let l = open(&a);
        l.credit(Credit::purchase("ws", 100, "order-1")).unwrap();
        l.start_generation(StartGeneration::new("g1", "ws", "Quick Video", 30))
            .unwrap();
    }
    make_read_only(dir.path());
    let db = a.to_str().unwrap();
    let reads: [&[&str]; 7] = [
        &["balance", "ws"],
        &["history", "ws"],
        &["show", "2"],
        &["generation", "g1"],
        &["verify"],
        &["stats"],
        &["export", "ws", "--format", "csv"],
    ];
    for args in reads {
        let mut all = vec!["--db", db, "--now", "2023-11-14T22:20:00Z"];
        all.extend_from_slice(args);
        let out = unprivileged(cli(&all)).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    let out = unprivileged(cli(&["--db", db, "balance", "ws", "--json"]))
        .output()
        .unwrap();
    assert_eq!(balance_of(&out), Some(70), "{}", text(&out));
    // A write is refused by the filesystem, not attempted behind the reader's back.
    let out = unprivileged(cli(&["--db", db, "complete", "g1"]))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    // The library's read-only open, too: writes are typed errors.
    let ro = Ledger::open_read_only(&a).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.balance("ws").unwrap().balance_credits, 70);
    assert!(ro.verify().unwrap().is_clean());
    assert!(matches!(
        ro.credit(Credit::grant("ws", 1, "k")),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        ro.credit(Credit::grant("ws", 1, "k")),
        Err(Error::ReadOnly { .. })
    ));
}

/// A crashed ledger whose journal holds acknowledged writes cannot be shown whole without a
/// replay: read-only, the error says so; where it can be written, the read replays it.
#[test]
fn a_read_that_needs_a_replay_says_so_or_replays() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    drop(open(&a));
    let app = open(&a);
    app.credit(Credit::purchase("ws", 100, "order-1")).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let c = crashed.path().join("a.redb");
    std::fs::copy(&a, &c).unwrap();
    std::fs::copy(journal_of(&a), journal_of(&c)).unwrap();
    drop(app);
    match Ledger::open_read_only(&c) {
        Err(e @ Error::NeedsWrite { .. }) => {
            let t = e.to_string();
            assert!(
                t.contains("cannot be opened read-only") && t.contains("write access"),
                "{t}"
            );
        }
        other => panic!("expected NeedsWrite, got {other:?}"),
    }
    let journal = std::fs::read(journal_of(&c)).unwrap();
    make_read_only(crashed.path());
    let db = c.to_str().unwrap();
    let out = unprivileged(cli(&["--db", db, "balance", "ws"]))
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("cannot be opened read-only")
            && t.contains("journal")
            && t.contains("opening it with write access failed"),
        "{t}"
    );
    assert!(std::fs::read(journal_of(&c)).unwrap() == journal);
    // Writable again: the read command replays, and shows every acknowledged write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(crashed.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in [&c, &journal_of(&c)] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = cli(&["--db", db, "balance", "ws", "--json"])
        .output()
        .unwrap();
    assert_eq!(balance_of(&out), Some(100), "{}", text(&out));
}

/// An operator's recovery that discards a missing journal leaves a ledger that holds its lock
/// and writes: a new journal file is created and locked at the journal's place.
#[test]
fn a_ledger_recovered_without_its_journal_holds_its_lock_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    drop(open(&a));
    let app = open(&a);
    app.credit(Credit::purchase("ws", 100, "order-1")).unwrap();
    app.credit(Credit::purchase("ws", 5, "order-2")).unwrap();
    // The journal lost, or damaged beyond its header (the discard then moves it aside).
    let mut images = Vec::new();
    for damaged in [false, true] {
        let crashed = tempfile::tempdir().unwrap();
        let c = crashed.path().join("a.redb");
        std::fs::copy(&a, &c).unwrap();
        if damaged {
            std::fs::write(journal_of(&c), [0x5Au8; 3 * 4096]).unwrap();
        }
        images.push((crashed, c, damaged));
    }
    drop(app);
    let clock = ManualClock::new(T0_MS);
    for (_dir, c, damaged) in &images {
        let recovered = Ledger::open_with(c, options(&clock).discard_journal(true)).unwrap();
        assert!(recovered.journal_discard().is_some());
        recovered
            .credit(Credit::purchase("ws", 1, "after"))
            .unwrap_or_else(|e| panic!("damaged {damaged}: {e}"));
        assert!(matches!(
            Ledger::open_with(c, options(&clock)),
            Err(Error::AlreadyOpen { .. })
        ));
        drop(recovered);
        let reopened = open(c);
        assert_healthy(&reopened);
    }
}
