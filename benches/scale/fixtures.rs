//! The scale bench's fixtures: each store after each phase of the workload, built once under
//! `target/bench-fixtures/` and copied into a scratch directory for every use, so no bench
//! writes to a fixture.
//!
//! A fixture's name holds its store, N, stage and a key of what built it: for ours, a CRC of
//! this bench executable (which links the ledger, so any change of the ledger's code, schema
//! or defaults rebuilds it); for SQLite and bare redb, a CRC of the sources that write them
//! and of `Cargo.lock` (the redb and SQLite versions). Building a fixture removes the ones of
//! the same store, N and stage with another key.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common;
use crate::stores::Ours;
use crate::workload::{self, Plan, Store, FINISH_MS, START_MS, SWEEP_MS};

/// The state of a store after one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// N generations running.
    Started,
    /// 97 % finished, 3 % running past their deadline (at `SWEEP_MS`).
    Finished,
    /// Every generation finished.
    Swept,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Started => "started",
            Stage::Finished => "finished",
            Stage::Swept => "swept",
        }
    }

    /// The clock to reopen a copy at: the time of the phase that made it, so that opening
    /// ours sweeps nothing (its `sweep_on_open`).
    pub fn now_ms(self) -> u64 {
        match self {
            Stage::Started => START_MS,
            Stage::Finished => FINISH_MS,
            Stage::Swept => SWEEP_MS,
        }
    }
}

/// What built the SQLite and bare redb fixtures.
const SOURCES: [&str; 6] = [
    include_str!("workload.rs"),
    include_str!("stores.rs"),
    include_str!("fixtures.rs"),
    include_str!("../common/sqlite.rs"),
    include_str!("../common/bare_redb.rs"),
    include_str!("../../Cargo.lock"),
];

fn build_key<S: Store>() -> u32 {
    static EXE: OnceLock<u32> = OnceLock::new();
    static SRC: OnceLock<u32> = OnceLock::new();
    if S::NAME == Ours::NAME {
        *EXE.get_or_init(|| {
            let exe = std::env::current_exe().expect("the bench executable");
            crc32fast::hash(&std::fs::read(exe).expect("read the bench executable"))
        })
    } else {
        *SRC.get_or_init(|| {
            let mut h = crc32fast::Hasher::new();
            SOURCES.iter().for_each(|s| h.update(s.as_bytes()));
            h.finalize()
        })
    }
}

/// The fixture of store `S` after `stage` of `plan`, built (from the stage before) if needed.
pub fn fixture<S: Store>(plan: &Plan, stage: Stage) -> PathBuf {
    let dir = common::target_dir().join("bench-fixtures");
    std::fs::create_dir_all(&dir).expect("create target/bench-fixtures");
    let prefix = format!("scale-{}-{}-{}-", S::NAME, plan.n, stage.name());
    let path = dir.join(format!("{prefix}{:08x}", build_key::<S>()));
    if path.exists() {
        return path;
    }
    for entry in std::fs::read_dir(&dir).expect("list fixtures") {
        let entry = entry.expect("a fixture entry");
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            eprintln!("removing stale fixture {}", entry.path().display());
            std::fs::remove_file(entry.path()).expect("remove a stale fixture");
        }
    }
    let scratch = common::scratch();
    let tmp = scratch.path().join("building");
    let started = std::time::Instant::now();
    eprintln!("building fixture {} ...", path.display());
    let mut store = match stage {
        Stage::Started => S::create(&tmp, &plan.workspaces),
        Stage::Finished => copy_open::<S>(&fixture::<S>(plan, Stage::Started), &tmp, START_MS),
        Stage::Swept => copy_open::<S>(&fixture::<S>(plan, Stage::Finished), &tmp, FINISH_MS),
    };
    match stage {
        Stage::Started => {
            workload::run_start(&mut store, plan);
        }
        Stage::Finished => {
            workload::run_finish(&mut store, plan);
        }
        Stage::Swept => {
            workload::run_sweep(&mut store, plan);
        }
    }
    drop(store);
    assert_single_file(&tmp);
    std::fs::rename(&tmp, &path).expect("move the fixture into place");
    eprintln!("built {} in {:.1?}", path.display(), started.elapsed());
    path
}

/// Copy `fixture` to `to` and open it at `now_ms`.
pub fn copy_open<S: Store>(fixture: &Path, to: &Path, now_ms: u64) -> S {
    assert_single_file(fixture);
    copy_in_pages(fixture, to);
    S::open(to, now_ms)
}

/// The size of each write of a fixture copy: one page, as the stores write.
const COPY_WRITE_BYTES: usize = 4096;

/// Copy `from` to `to` one 4 KiB write at a time. Not `std::fs::copy`: its
/// `copy_file_range` fills the page cache with large folios, and then every 4 KiB page write
/// of the store walks a whole folio's buffers in `ext4_block_write_begin` (15 % of ours'
/// finish phase at 1M in a profile), which a store writing its own file never pays.
fn copy_in_pages(from: &Path, to: &Path) {
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(from).expect("open a fixture");
    let mut dst = std::fs::File::create_new(to).expect("create a fixture copy");
    let mut page = vec![0u8; COPY_WRITE_BYTES];
    loop {
        let n = src.read(&mut page).expect("read a fixture");
        if n == 0 {
            break;
        }
        dst.write_all(&page[..n]).expect("write a fixture copy");
    }
    dst.sync_all().expect("sync a fixture copy");
}

/// A closed store is one file: the ledger's journal is checkpointed and removed on a clean
/// close, SQLite's WAL on the last connection's close.
fn assert_single_file(path: &Path) {
    for side in [".journal", "-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{side}", path.display()));
        assert!(!side.exists(), "{} is left after close", side.display());
    }
}
