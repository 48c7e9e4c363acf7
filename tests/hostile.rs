//! Hostile files: every one gives a typed error or an audit report that names the damage.
//! Nothing panics and nothing hangs.
//!
//! - a zero-length file; random bytes (with and without a real redb header); a ledger cut
//!   short at several lengths; a real ledger with one byte changed at each of 100 random
//!   offsets (one case each); redb files of some other application;
//! - a second process opening a ledger already in use gets [`Error::AlreadyOpen`];
//! - three damaged ledgers kept in `tests/data/hostile/` (each found by the flip test) on which
//!   redb panics while committing a write, while reopening, or while closing: each panic must
//!   become a typed error (or, on close, a logged warning), never escape the ledger.
//!
//! Every case opens the file, and when the open succeeds reads everything (workspaces,
//! balances, every history page, every transaction, every generation, stats, totals) and runs
//! `verify()`. A case passes when something says what is wrong (an error or a violation), or
//! when everything reads back exactly as it was written (the change hit unused space).
//! Each case runs on its own thread with a deadline, so a hang fails the test instead of
//! stalling it.

use std::path::{Path, PathBuf};

use redb::ReadableDatabase;
use std::sync::mpsc;
use std::time::Duration;

use credit_ledger::{
    Credit, Error, ErrorCategory, HistoryFilter, Ledger, ManualClock, Op, Options, PageRequest,
    RefundReason, StartGeneration, TimeWindow, TxnKind,
};

const T0_MS: u64 = 1_700_000_000_000;

/// Panics inside redb that the ledger caught and turned into errors.
static REDB_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// redb panics on some damaged pages; the ledger catches those and returns an error, but the
/// default hook would still print each one. Count them instead of printing them; any other
/// panic is printed as usual.
fn quiet_redb_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
            if in_redb {
                REDB_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            } else {
                default(info);
            }
        }));
    });
}
/// Far longer than any case needs: only a hang reaches it.
const CASE_DEADLINE: Duration = Duration::from_secs(120);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn options() -> Options {
    // The clock stands still at the time the fixture was written, so opening a copy runs no
    // catch-up refunds and the contents must read back unchanged.
    Options::default().clock(ManualClock::new(T0_MS + 60_000))
}

/// A real ledger with some of everything: purchases, grants, generations in every state,
/// refunds for several reasons, replays.
fn write_fixture(path: &Path) {
    let clock = ManualClock::new(T0_MS);
    // Without the journal the file gets no random ledger id, so it is the same bytes on every
    // run and so are the damaged copies made from it: a failure here reproduces.
    let options = Options::default().clock(clock.clone()).journal(false);
    let ledger = Ledger::open_with(path, options).unwrap();
    for w in 0..4 {
        let ws = format!("workspace-{w}");
        ledger
            .credit(Credit::purchase(&ws, 10_000, format!("order-{w}")))
            .unwrap();
        ledger
            .credit(Credit::grant(&ws, 50, format!("promo-{w}")).memo("welcome"))
            .unwrap();
        for g in 0..30 {
            clock.advance_ms(10);
            let id = format!("gen-{w}-{g}");
            let feature = if g % 2 == 0 { "Quick Video" } else { "Image" };
            ledger
                .start_generation(StartGeneration::new(&id, &ws, feature, 5 + g))
                .unwrap();
            match g % 3 {
                0 => {
                    ledger.complete_generation(&id).unwrap();
                }
                1 => {
                    let reason = RefundReason::ALL[(g as usize / 3) % 5];
                    ledger
                        .fail_generation(&id, reason, "upstream said no")
                        .unwrap();
                }
                _ => {} // still running
            }
        }
    }
    assert!(ledger.verify().unwrap().is_clean());
}

/// Everything the ledger can tell, as text; the first error stops it.
fn read_everything(ledger: &Ledger) -> Result<String, Error> {
    use std::fmt::Write;
    let mut out = String::new();
    let mut workspaces = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ledger.workspaces(after.as_deref(), 100)?;
        if page.is_empty() {
            break;
        }
        after = page.last().map(|w| w.workspace.clone());
        workspaces.extend(page);
        if workspaces.len() > 10_000 {
            break;
        }
    }
    let _ = writeln!(out, "{workspaces:?}");
    let mut generations = Vec::new();
    for w in &workspaces {
        let _ = writeln!(out, "{:?}", ledger.balance(&w.workspace)?);
        for filter in [
            HistoryFilter::all(),
            HistoryFilter::all().kinds([TxnKind::Refund]),
        ] {
            let mut cursor = None;
            for _ in 0..1000 {
                let page = ledger.history(
                    &w.workspace,
                    &filter,
                    &PageRequest {
                        limit: 37,
                        cursor: cursor.take(),
                        oldest_first: false,
                    },
                )?;
                for e in &page.entries {
                    let _ = writeln!(out, "{e:?}");
                    if let Some(g) = &e.generation_id {
                        generations.push(g.clone());
                    }
                }
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }
    for id in 1..=10_000u64 {
        match ledger.transaction(id) {
            Ok(t) => {
                let _ = writeln!(out, "{t:?}");
            }
            Err(Error::UnknownTransaction { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    generations.sort();
    generations.dedup();
    for g in &generations {
        let _ = writeln!(out, "{:?}", ledger.generation(g)?);
    }
    let _ = writeln!(out, "{:?}", ledger.stats(TimeWindow::default())?);
    let _ = writeln!(out, "{:?}", ledger.totals()?);
    Ok(out)
}

/// How a hostile file was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// `open` refused, with this error.
    OpenRefused(String),
    /// It opened; a read returned this error.
    ReadError(String),
    /// It opened and read; `verify` named this many violations (or failed with an error).
    AuditReported(String),
    /// It opened, read back exactly the original contents, and verified clean.
    Unchanged,
}

/// Open, read everything, verify: on a thread, with a deadline, with panics caught.
fn examine(path: &Path, original: Option<&str>) -> Answer {
    quiet_redb_panics();
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let original = original.map(str::to_string);
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(move || examine_inline(&p, original.as_deref()));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(CASE_DEADLINE) {
        Ok(Ok(answer)) => answer,
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: PANICKED: {msg}", path.display())
        }
        Err(_) => panic!("{}: HUNG for {CASE_DEADLINE:?}", path.display()),
    }
}

fn short(e: &Error) -> String {
    let s = format!("{e:?}");
    s.chars().take(160).collect()
}

fn examine_inline(path: &Path, original: Option<&str>) -> Answer {
    let ledger = match Ledger::open_with(path, options()) {
        Ok(l) => l,
        Err(e) => return Answer::OpenRefused(short(&e)),
    };
    let read = read_everything(&ledger);
    let audit = ledger.verify();
    // Writes to the damaged file must answer too (Ok or a typed error), through both the
    // single-operation path and a batch.
    let _ = ledger.credit(Credit::purchase("workspace-1", 1, "hostile-probe"));
    let _ = ledger.apply(&[
        Op::Start(StartGeneration::new(
            "hostile-gen",
            "workspace-2",
            "Probe",
            1,
        )),
        Op::Sweep { limit: 100 },
    ]);
    let _ = ledger.fail_generation("gen-0-1", RefundReason::SystemError, "probe");
    match (read, audit) {
        (_, Ok(report)) if !report.is_clean() => Answer::AuditReported(format!(
            "{} violation(s), first: {:?}",
            report.violation_count,
            report.violations.first().map(|v| v.invariant)
        )),
        (_, Err(e)) => Answer::AuditReported(short(&e)),
        (Err(e), Ok(_)) => Answer::ReadError(short(&e)),
        (Ok(text), Ok(_)) => {
            // Verified clean and readable: then it must be the ledger that was written.
            if let Some(original) = original {
                assert_eq!(
                    text,
                    original,
                    "{}: SILENT CORRUPTION: verify() is clean but the contents changed",
                    path.display()
                );
            }
            Answer::Unchanged
        }
    }
}

/// Refused at open as damaged or foreign: `NotALedger`, `Corruption` or `UnsupportedFormat`.
fn is_typed_open_error(a: &Answer) -> bool {
    matches!(a, Answer::OpenRefused(e)
        if e.starts_with("NotALedger") || e.starts_with("Corruption") || e.starts_with("UnsupportedFormat"))
}

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

fn dir() -> Dir {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().to_path_buf();
    Dir { _tmp: tmp, path }
}

#[test]
fn a_zero_length_file_is_not_a_ledger() {
    let d = dir();
    let path = d.path.join("empty.redb");
    std::fs::write(&path, b"").unwrap();
    let answer = examine(&path, None);
    assert!(
        matches!(&answer, Answer::OpenRefused(e) if e.starts_with("NotALedger")),
        "{answer:?}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left untouched");
    println!("hostile: 1 zero-length case");
}

#[test]
fn random_bytes_are_not_a_ledger() {
    let d = dir();
    let real = d.path.join("real.redb");
    write_fixture(&real);
    let header: Vec<u8> = std::fs::read(&real).unwrap()[..512].to_vec();
    let mut rng = Rng(7);
    let mut cases = 0;
    for (i, len) in [1usize, 9, 100, 511, 4096, 65_536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        for with_header in [false, true] {
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if with_header {
                // A real redb header in front of garbage: gets past the magic number.
                let n = header.len().min(bytes.len());
                bytes[..n].copy_from_slice(&header[..n]);
            }
            let path = d.path.join(format!("random-{i}-{with_header}.redb"));
            std::fs::write(&path, &bytes).unwrap();
            let answer = examine(&path, None);
            println!("random {len} bytes, header {with_header}: {answer:?}");
            assert!(is_typed_open_error(&answer), "{len} bytes: {answer:?}");
            cases += 1;
        }
    }
    println!("hostile: {cases} random-bytes cases");
}

#[test]
fn a_truncated_ledger_is_refused_or_reported() {
    let d = dir();
    let real = d.path.join("real.redb");
    write_fixture(&real);
    let bytes = std::fs::read(&real).unwrap();
    let original = examine_inline(&real, None);
    assert_eq!(original, Answer::Unchanged);
    let full_text = read_everything(&Ledger::open_with(&real, options()).unwrap()).unwrap();
    let n = bytes.len();
    let mut lengths = vec![
        1,
        8,
        64,
        511,
        512,
        4096,
        4097,
        16_384,
        n / 4,
        n / 2,
        n - 4096,
        n - 1,
    ];
    lengths.retain(|&l| l > 0 && l < n);
    lengths.sort_unstable();
    lengths.dedup();
    let mut cases = 0;
    for len in &lengths {
        let path = d.path.join(format!("cut-{len}.redb"));
        std::fs::write(&path, &bytes[..*len]).unwrap();
        let answer = examine(&path, Some(&full_text));
        println!("truncated to {len} of {n} bytes: {answer:?}");
        // redb records the file's length: a shorter file is refused at open, by name.
        assert!(is_typed_open_error(&answer), "{len} bytes: {answer:?}");
        cases += 1;
    }
    println!("hostile: {cases} truncation cases");
}

#[test]
fn a_hundred_flipped_bytes_are_each_refused_or_reported() {
    let d = dir();
    let real = d.path.join("real.redb");
    write_fixture(&real);
    let bytes = std::fs::read(&real).unwrap();
    let full_text = read_everything(&Ledger::open_with(&real, options()).unwrap()).unwrap();
    // Most of a fresh redb file is unused zeros; aim two flips in three at bytes in use.
    let used: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
    let mut rng = Rng(0xF11B);
    let mut tally = std::collections::BTreeMap::<&'static str, u32>::new();
    for case in 0..100 {
        let offset = if case % 3 == 2 {
            rng.below(bytes.len() as u64) as usize
        } else {
            used[rng.below(used.len() as u64) as usize]
        };
        let mask = (rng.below(255) + 1) as u8;
        let mut damaged = bytes.clone();
        damaged[offset] ^= mask;
        let path = d.path.join(format!("flip-{case}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        let answer = examine(&path, Some(&full_text));
        println!("flip {case}: offset {offset} ^ {mask:#04x}: {answer:?}");
        *tally
            .entry(match answer {
                Answer::OpenRefused(_) => "open refused",
                Answer::ReadError(_) => "read error",
                Answer::AuditReported(_) => "audit reported",
                Answer::Unchanged => "unused bytes, contents intact",
            })
            .or_default() += 1;
        let _ = std::fs::remove_file(&path);
    }
    println!(
        "hostile: 100 flipped-byte cases: {tally:?}; redb panics caught by the ledger so far: {}",
        REDB_PANICS.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(tally.values().sum::<u32>(), 100);
}

#[test]
fn a_redb_file_of_another_application_is_not_a_ledger() {
    let d = dir();
    let mut cases = 0;
    // Other tables altogether.
    let path = d.path.join("other-app.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let users: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("users");
            let mut t = w.open_table(users).unwrap();
            t.insert("alice", 1).unwrap();
            let events: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
            let mut t = w.open_table(events).unwrap();
            t.insert(1, b"login".as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let answer = examine(&path, None);
    println!("other application's tables: {answer:?}");
    assert!(
        matches!(&answer, Answer::OpenRefused(e) if e.starts_with("NotALedger") && e.contains("users")),
        "{answer:?}"
    );
    {
        // The other application still finds its data, and no ledger table was added.
        let db = redb::Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        let users: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("users");
        let t = r.open_table(users).unwrap();
        assert_eq!(t.get("alice").unwrap().map(|v| v.value()), Some(1));
        let names: Vec<String> = r
            .list_tables()
            .unwrap()
            .map(|h| redb::TableHandle::name(&h).to_string())
            .collect();
        assert_eq!(names, ["events", "users"]);
    }
    cases += 1;

    // A table called `meta`, with other types: still not a ledger.
    let path = d.path.join("other-meta.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("meta");
            w.open_table(meta).unwrap().insert(1, 2).unwrap();
        }
        w.commit().unwrap();
    }
    let answer = examine(&path, None);
    println!("foreign `meta` table: {answer:?}");
    assert!(
        matches!(&answer, Answer::OpenRefused(e) if e.starts_with("NotALedger")),
        "{answer:?}"
    );
    cases += 1;

    // A ledger's tables next to a foreign one with a ledger table name but other types.
    let path = d.path.join("wrong-types.redb");
    write_fixture(&path);
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.delete_table(redb::TableDefinition::<&str, &[u8]>::new("workspaces"))
            .unwrap();
        {
            let ws: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("workspaces");
            w.open_table(ws).unwrap().insert(1, 1).unwrap();
        }
        w.commit().unwrap();
    }
    let answer = examine(&path, None);
    println!("ledger with a retyped `workspaces` table: {answer:?}");
    assert!(
        matches!(&answer, Answer::OpenRefused(e) if e.starts_with("NotALedger")),
        "{answer:?}"
    );
    cases += 1;
    println!("hostile: {cases} foreign-redb cases");
}

/// Write one redb transaction into a new file at `path`.
fn redb_file(path: &Path, write: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(path).unwrap();
    let w = db.begin_write().unwrap();
    write(&w);
    w.commit().unwrap();
}

#[test]
fn the_read_only_open_refuses_what_the_writable_open_refuses_with_the_same_error() {
    let d = dir();
    let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let mut cases: Vec<(&str, PathBuf)> = Vec::new();
    let mut case = |name: &'static str, write: &dyn Fn(&redb::WriteTransaction)| {
        let path = d.path.join(format!("{name}.redb"));
        redb_file(&path, write);
        cases.push((name, path));
    };
    case("no-meta", &|w| {
        let t: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("users");
        w.open_table(t).unwrap().insert("alice", 1).unwrap();
    });
    case("meta-of-other-types", &|w| {
        let t: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("meta");
        w.open_table(t).unwrap().insert(1, 2).unwrap();
    });
    case("no-schema-version", &|w| {
        w.open_table(meta)
            .unwrap()
            .insert("other", b"x".as_slice())
            .unwrap();
    });
    case("newer-schema", &|w| {
        w.open_table(meta)
            .unwrap()
            .insert("schema", [200u8].as_slice())
            .unwrap();
    });
    // A ledger's metadata, but its workspaces table has other types.
    case("retyped-table", &|w| {
        w.open_table(meta)
            .unwrap()
            .insert("schema", [1u8].as_slice())
            .unwrap();
        let t: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("workspaces");
        w.open_table(t).unwrap().insert(1, 1).unwrap();
    });
    for (name, path) in &cases {
        let read_only = Ledger::open_read_only(path).map(drop).unwrap_err();
        let writable = Ledger::open(path).map(drop).unwrap_err();
        assert_eq!(read_only.to_string(), writable.to_string(), "{name}");
        let expected_variant = if *name == "newer-schema" {
            matches!(read_only, Error::UnsupportedFormat { found: 200, .. })
        } else {
            matches!(read_only, Error::NotALedger { .. })
        };
        assert!(expected_variant, "{name}: {read_only:?}");
    }
}

/// The child's side of the lock test; see below.
const CHILD_ENV: &str = "CREDIT_LEDGER_HOSTILE_CHILD_PATH";

#[test]
fn a_second_process_gets_already_open() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        // We are the child process: try to open, and say what happened.
        match Ledger::open_with(PathBuf::from(path), options()) {
            Ok(_) => println!("CHILD-RESULT: opened"),
            Err(e @ Error::AlreadyOpen { .. }) => println!("CHILD-RESULT: already-open: {e}"),
            Err(e) => println!("CHILD-RESULT: other error: {e:?}"),
        }
        return;
    }
    let d = dir();
    let path = d.path.join("in-use.redb");
    write_fixture(&path);
    let child = || {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_second_process_gets_already_open",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "child failed: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        // libtest prints `test name ... ` before the child's line, on the same line.
        stdout
            .lines()
            .find_map(|l| l.find("CHILD-RESULT: ").map(|i| l[i..].to_string()))
            .unwrap_or_else(|| panic!("the child said nothing: {stdout}"))
    };
    let held = Ledger::open_with(&path, options()).unwrap();
    let said = child();
    assert!(
        said.starts_with("CHILD-RESULT: already-open") && said.contains("open in another process"),
        "{said}"
    );
    // The same process, a second time: the same clear error.
    assert!(matches!(
        Ledger::open_with(&path, options()),
        Err(Error::AlreadyOpen { .. })
    ));
    drop(held);
    assert_eq!(
        child(),
        "CHILD-RESULT: opened",
        "the lock is released on drop"
    );
    println!("hostile: 2 lock cases (another process, the same process)");
}

/// Two real ledgers with one byte changed each (found by the flip test above, kept so that they
/// run on every build). Both open and read, but redb panics inside the commit of a batch that
/// starts a generation and sweeps. The batch must come back as typed errors; the ledger then
/// reopens the file at once (redb's handle is unusable after a panic). On `write-panic.redb`
/// the reopen works: reads show the batch left no trace, and `verify` keeps naming the damage.
/// On `write-and-close-panic.redb` it does not: reads get a typed error saying so, and the next
/// write tries the reopen again (a write either lands or gets a typed error). No
/// panic may escape the ledger, closing included (redb's own close commits its allocator
/// state, and on the second file that panics too).
#[test]
fn files_that_make_the_storage_engine_panic_while_writing_get_typed_errors() {
    quiet_redb_panics();
    for (name, reopens) in [
        ("write-panic.redb", true),
        ("write-and-close-panic.redb", false),
    ] {
        let d = dir();
        let path = d.path.join(name);
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/hostile")
            .join(name);
        std::fs::copy(&shipped, &path).unwrap();
        let panics_before = REDB_PANICS.load(std::sync::atomic::Ordering::SeqCst);
        let closed = std::panic::catch_unwind(|| {
            let ledger = Ledger::open_with(&path, options()).expect("the header is intact");
            let before = ledger.balance("workspace-2").unwrap();
            let results = ledger.apply(&[
                Op::Start(StartGeneration::new("probe", "workspace-2", "Probe", 1)),
                Op::Sweep { limit: 100 },
            ]);
            for r in &results {
                assert!(
                    matches!(r, Err(e) if e.category() == ErrorCategory::Corruption),
                    "{name}: {r:?}"
                );
            }
            if reopens {
                assert_eq!(ledger.balance("workspace-2").unwrap(), before, "{name}");
                assert!(matches!(
                    ledger.generation("probe"),
                    Err(Error::UnknownGeneration { .. })
                ));
                match ledger.verify() {
                    Ok(report) => assert!(!report.is_clean(), "{name}: verify() missed it"),
                    Err(e) => assert_eq!(e.category(), ErrorCategory::Corruption, "{e:?}"),
                }
            } else {
                // The next write tries the reopen again. The batch that panicked was the first
                // of a journal epoch, committed to the file itself, so no journal entry replays
                // it and the retry may heal: then the write lands and reads work again.
                let reads = [
                    ledger.balance("workspace-2").unwrap_err(),
                    ledger.verify().unwrap_err(),
                ];
                let mut errors = reads.to_vec();
                match ledger.credit(Credit::purchase("workspace-1", 1, "probe")) {
                    Ok(_) => assert!(ledger.balance("workspace-1").is_ok(), "{name}"),
                    Err(e) => errors.push(e),
                }
                for e in errors {
                    assert!(
                        matches!(
                            e.category(),
                            ErrorCategory::Storage | ErrorCategory::Corruption
                        ),
                        "{name}: {e:?}"
                    );
                }
            }
            drop(ledger);
        });
        assert!(closed.is_ok(), "{name}: a panic escaped the ledger");
        assert!(
            REDB_PANICS.load(std::sync::atomic::Ordering::SeqCst) > panics_before,
            "{name}: redb did not panic: the file no longer exercises the guard"
        );
    }
}

/// A real ledger with one byte changed (kept from the flip test, like the two above) on which
/// writes work but redb panics while the ledger closes. Closing must not panic.
#[test]
fn a_file_that_makes_the_storage_engine_panic_while_closing_closes_quietly() {
    quiet_redb_panics();
    let d = dir();
    let path = d.path.join("close-panic.redb");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile/close-panic.redb");
    std::fs::copy(&shipped, &path).unwrap();
    let panics_before = REDB_PANICS.load(std::sync::atomic::Ordering::SeqCst);
    let closed = std::panic::catch_unwind(|| {
        let ledger = Ledger::open_with(&path, options()).expect("the header is intact");
        ledger
            .credit(Credit::purchase("workspace-1", 1, "probe"))
            .expect("the damage is not on this write's path");
        drop(ledger);
    });
    assert!(closed.is_ok(), "a panic escaped the ledger while it closed");
    assert!(
        REDB_PANICS.load(std::sync::atomic::Ordering::SeqCst) > panics_before,
        "redb did not panic: the file no longer exercises the guard"
    );
}

/// Files on which redb panics while the audit reads them (kept for the CLI tests): `verify()`
/// still answers with a report that lists what it could not check, table and keys, instead
/// of giving up with an error.
#[test]
fn verify_on_a_file_that_makes_the_storage_engine_panic_reports_what_it_could_not_check() {
    quiet_redb_panics();
    for name in [
        "history-panic.redb",
        "export-panic.redb",
        "write-panic.redb",
    ] {
        let d = dir();
        let path = d.path.join(name);
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/cli-damaged")
            .join(name);
        std::fs::copy(&shipped, &path).unwrap();
        let panics_before = REDB_PANICS.load(std::sync::atomic::Ordering::SeqCst);
        let ledger = Ledger::open_with(&path, options()).expect("the header is intact");
        let report = ledger
            .verify()
            .unwrap_or_else(|e| panic!("{name}: verify gave up: {e}"));
        assert!(
            REDB_PANICS.load(std::sync::atomic::Ordering::SeqCst) > panics_before,
            "{name}: redb did not panic: the file no longer exercises the guard"
        );
        assert!(!report.is_clean(), "{name}");
        // What was read before the damage was checked...
        assert!(
            report.checked.transactions > 0,
            "{name}: {:?}",
            report.checked
        );
        // ...and the part that could not be read is named: the table and the keys after the
        // last one read.
        let log = report
            .unchecked
            .iter()
            .find(|u| u.table == "transactions")
            .unwrap_or_else(|| panic!("{name}: {:#?}", report.unchecked));
        assert_eq!(
            log.after_key,
            Some(format!("#{}", report.checked.transactions)),
            "{name}"
        );
        assert!(log.keys.contains("after #"), "{name}: {}", log.keys);
        assert!(
            log.detail.contains("damaged data"),
            "{name}: {}",
            log.detail
        );
        // Each unchecked part is a violation too, so a caller that looks only at violations
        // (the CLI, which exits 3) sees it; and no violation tells the operator to run verify.
        let unreadable = report
            .violations
            .iter()
            .filter(|v| v.invariant == credit_ledger::Invariant::Unreadable)
            .count();
        assert_eq!(unreadable, report.unchecked.len(), "{name}");
        // redb's own integrity check, run on a copy, says what a panic does not: the damage is
        // in the storage engine's pages and cannot be repaired.
        let storage = report.storage_check.as_deref().unwrap_or_default();
        assert!(
            storage.contains("redb's own integrity check") && storage.contains("corrupted"),
            "{name}: {storage}"
        );
        assert!(
            report.violations.iter().any(|v| v.detail == storage),
            "{name}: the verdict is not listed as a violation"
        );
        for v in &report.violations {
            assert!(!v.detail.contains("`verify`"), "{name}: {}", v.detail);
            assert!(
                !v.detail.contains("WorkspaceRecord"),
                "{name}: {}",
                v.detail
            );
        }
    }
}

/// Every table a ledger has, deleted in turn (a careless tool, a half-restored backup): the
/// writable open refuses the file with a typed error that names the table, and creates
/// nothing in it. (Opening a missing table in a write transaction creates it empty, so the open
/// used to go ahead without what it held: no generations, no history, no notices.)
#[test]
fn a_ledger_missing_any_of_its_tables_is_refused_by_name_and_left_as_it_is() {
    let d = dir();
    let original = d.path.join("whole.redb");
    {
        let clock = ManualClock::new(T0_MS);
        let options = Options::default()
            .clock(clock.clone())
            .grant_expiring_notice_ms(Some(24 * 60 * 60_000));
        let ledger = Ledger::open_with(&original, options).unwrap();
        ledger
            .credit(Credit::grant("acme", 10, "trial").expires_at_ms(T0_MS + 30 * 24 * 3_600_000))
            .unwrap();
        ledger
            .credit(Credit::purchase("acme", 100, "order-1"))
            .unwrap();
        ledger
            .start_generation(StartGeneration::new("g1", "acme", "Quick Video", 12))
            .unwrap();
        ledger.ack("sync", 1).unwrap();
        ledger.set_alert("acme", 5).unwrap();
    }
    let names: Vec<String> = {
        let db = redb::Database::open(&original).unwrap();
        let r = db.begin_read().unwrap();
        r.list_tables()
            .unwrap()
            .map(|h| redb::TableHandle::name(&h).to_string())
            .collect()
    };
    assert!(names.len() >= 15, "{names:?}");
    for name in names.iter().filter(|n| *n != "meta") {
        let path = d.path.join(format!("without-{name}.redb"));
        std::fs::copy(&original, &path).unwrap();
        {
            let db = redb::Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            let handle = w
                .list_tables()
                .unwrap()
                .find(|h| redb::TableHandle::name(h) == name)
                .unwrap();
            assert!(w.delete_table(handle).unwrap());
            w.commit().unwrap();
        }
        let err = Ledger::open_with(&path, options()).map(drop).unwrap_err();
        assert!(
            matches!(&err, Error::NotALedger { detail, .. } if detail.contains(&format!("`{name}`"))),
            "without {name}: {err:?}"
        );
        // The refused open created nothing: the table is still missing, so the next open
        // refuses it too.
        let db = redb::Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        let mut tables = r.list_tables().unwrap();
        assert!(
            !tables.any(|h| redb::TableHandle::name(&h) == name),
            "without {name}: the open created it"
        );
    }
}

/// A log whose last id was set near the top of the range (a record copied under key
/// `u64::MAX - 1`): the next write gets the last id there is, and the one after finds none. It
/// is a typed `Corruption` that writes nothing, never a panic.
#[test]
fn a_log_at_the_end_of_its_id_range_refuses_writes() {
    let d = dir();
    let path = d.path.join("ids.redb");
    let clock = ManualClock::new(T0_MS);
    let opts = || Options::default().clock(clock.clone()).sweep_on_open(false);
    {
        let l = Ledger::open_with(&path, opts()).unwrap();
        l.credit(Credit::purchase("ws", 10, "k1")).unwrap();
    }
    const TRANSACTIONS: redb::TableDefinition<u64, &[u8]> =
        redb::TableDefinition::new("transactions");
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(TRANSACTIONS).unwrap();
            let last = redb::ReadableTable::last(&t)
                .unwrap()
                .map(|(_, v)| v.value().to_vec())
                .unwrap();
            t.insert(u64::MAX - 1, last.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let l = Ledger::open_with(&path, opts()).unwrap();
    // Two credits: the first takes id u64::MAX, the second has none left.
    let results = l.apply(&[
        Op::Credit(Credit::purchase("ws", 1, "k2")),
        Op::Credit(Credit::purchase("ws", 1, "k3")),
    ]);
    assert!(
        results.iter().any(|r| matches!(
            r,
            Err(Error::Corruption {
                table: "transactions",
                ..
            })
        )),
        "{results:?}"
    );
    assert_eq!(
        l.balance("ws").unwrap().balance_credits,
        10,
        "nothing was written"
    );
}
