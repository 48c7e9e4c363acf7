//! `open/*`: reopening a ledger of 1M running generations (a fixture built once under
//! `target/bench-fixtures/`).
//!
//! - `clean/1M`: open after a clean close.
//! - `after_kill9/1M`, `after_kill9_no_journal/1M` and
//!   `after_kill9_no_journal_quick_repair/1M`: open after `kill -9`. The crashed files are made
//!   for real: this bench re-runs itself as a child process that opens a copy of the fixture
//!   and commits durable `start_generation`s in a loop, printing each acknowledgement; the
//!   parent SIGKILLs it mid-flight after 200 of them. Each timed open starts from a fresh copy
//!   of the crashed files (the copy is not timed). With the journal (the default), the open
//!   replays the journal's entries after the last checkpoint, whose saved allocator state
//!   spares redb a repair walk. Without it, redb repairs the file: a full walk, or with quick
//!   repair (which the child had on) the saved allocator state. The open also checks that the
//!   200 acknowledged generations survived.
//!
//! Honest limits: the kill is of a process, not a power cut, so the file is in the page
//! cache; the numbers are the repair's CPU and cached-I/O cost, not a cold disk read.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use credit_ledger::{Ledger, ManualClock, StartGeneration};
use criterion::{BenchmarkId, Criterion};

mod common;

const CHILD_ENV: &str = "CREDIT_LEDGER_BENCH_CRASH_CHILD";
const QUICK_REPAIR_ENV: &str = "CREDIT_LEDGER_BENCH_QUICK_REPAIR";
const NO_JOURNAL_ENV: &str = "CREDIT_LEDGER_BENCH_NO_JOURNAL";
const ACKED: u64 = 200;

/// The child: commit durable starts until killed, printing each acknowledged id.
fn crash_child(path: &str) -> ! {
    let clock = ManualClock::new(common::T0_MS);
    let quick_repair = std::env::var_os(QUICK_REPAIR_ENV).is_some();
    let journal = std::env::var_os(NO_JOURNAL_ENV).is_none();
    let options = common::options(&clock)
        .quick_repair(quick_repair)
        .journal(journal);
    let ledger = Ledger::open_with(path, options).expect("child open");
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        ledger
            .start_generation(StartGeneration::new(
                format!("crash-{i}"),
                "ws-1",
                "Quick Video",
                2,
            ))
            .expect("child start");
        use std::io::Write;
        writeln!(out, "{i}").expect("child stdout");
        out.flush().expect("child flush");
    }
    unreachable!()
}

/// Copy a ledger file and its journal (when there is one).
fn copy_ledger(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy the ledger file");
    let _ = std::fs::remove_file(Ledger::journal_path(to));
    if Ledger::journal_path(from).exists() {
        std::fs::copy(Ledger::journal_path(from), Ledger::journal_path(to))
            .expect("copy the journal");
    }
}

/// Copy the fixture to `crashed`, run the child on it and SIGKILL it mid-flight.
fn make_crashed(fixture: &Path, crashed: &Path, quick_repair: bool, journal: bool) {
    copy_ledger(fixture, crashed);
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.env(CHILD_ENV, crashed).stdout(Stdio::piped());
    if quick_repair {
        cmd.env(QUICK_REPAIR_ENV, "1");
    }
    if !journal {
        cmd.env(NO_JOURNAL_ENV, "1");
    }
    let mut child = cmd.spawn().expect("spawn crash child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut acked = 0;
    while acked < ACKED {
        let line = lines.next().expect("child exited early").expect("read");
        acked = line.trim().parse::<u64>().expect("an id") + 1;
    }
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished");
    eprintln!("crash fixture: child killed after {acked}+ acknowledged starts ({status})");
}

fn open(c: &mut Criterion) {
    let fixture = common::running_fixture(1_000_000);
    let dir = common::scratch();
    let mut group = c.benchmark_group("open");
    common::quick(&mut group);

    let clean = dir.path().join("clean.redb");
    std::fs::copy(&fixture, &clean).expect("copy fixture");
    group.bench_function(BenchmarkId::new("clean", "1M"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let clock = ManualClock::new(common::T0_MS);
                let started = Instant::now();
                let ledger = Ledger::open_with(&clean, common::options(&clock)).unwrap();
                total += started.elapsed();
                assert!(ledger.next_deadline_ms().is_some());
                drop(ledger);
            }
            total
        })
    });

    for (name, quick_repair, journal) in [
        ("after_kill9", false, true),
        ("after_kill9_no_journal", false, false),
        ("after_kill9_no_journal_quick_repair", true, false),
    ] {
        let crashed = dir.path().join(format!("{name}.crashed.redb"));
        make_crashed(&fixture, &crashed, quick_repair, journal);
        let trial = dir.path().join(format!("{name}.trial.redb"));
        group.bench_function(BenchmarkId::new(name, "1M"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    copy_ledger(&crashed, &trial);
                    let clock = ManualClock::new(common::T0_MS);
                    let started = Instant::now();
                    let ledger = Ledger::open_with(
                        &trial,
                        common::options(&clock)
                            .quick_repair(quick_repair)
                            .journal(journal),
                    )
                    .unwrap();
                    total += started.elapsed();
                    let last = ledger.generation(&format!("crash-{}", ACKED - 1));
                    assert!(last.is_ok(), "an acknowledged start was lost");
                    drop(ledger);
                }
                total
            })
        });
    }
    group.finish();
}

fn main() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        crash_child(&path.to_string_lossy());
    }
    let mut c = Criterion::default().configure_from_args();
    open(&mut c);
    c.final_summary();
}
