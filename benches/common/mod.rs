//! Shared by the benches: a fixed-seed RNG, durable scratch directories on /work's disk,
//! fixtures built once and cached under `target/bench-fixtures/`, and the SQLite baseline.
#![allow(dead_code)]

pub mod bare_redb;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::time::Duration;

use credit_ledger::{Credit, Ledger, ManualClock, Op, Options, RefundReason, StartGeneration};

/// 2023-11-14T22:13:20Z: every bench ledger starts its ManualClock here.
pub const T0_MS: u64 = 1_700_000_000_000;
pub const HOUR_MS: u64 = 3_600_000;
/// The fixed seed of every generated workload.
pub const SEED: u64 = 0x5EED_C0FF_EE15_600D;
/// Bump when a fixture's contents change, so stale caches are not reused.
const FIXTURE_VERSION: u32 = 2;
/// Workspaces in the "running" fixtures.
pub const FIXTURE_WORKSPACES: u64 = 16;

/// xorshift64*: deterministic, dependency-free.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `target/`, where fixtures and scratch files live: on the real disk, not tmpfs.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A fresh directory for one bench's files, removed on drop.
pub fn scratch() -> tempfile::TempDir {
    let base = target_dir().join("bench-scratch");
    std::fs::create_dir_all(&base).expect("create target/bench-scratch");
    tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in(base)
        .expect("create a scratch dir")
}

/// The path of cached fixture `name`, building it with `build` (into a temporary name, then
/// renamed) if it is not there yet.
pub fn fixture(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let dir = target_dir().join("bench-fixtures");
    std::fs::create_dir_all(&dir).expect("create target/bench-fixtures");
    let path = dir.join(format!("v{FIXTURE_VERSION}-{name}"));
    if !path.exists() {
        let tmp = dir.join(format!("v{FIXTURE_VERSION}-{name}.building"));
        let _ = std::fs::remove_file(&tmp);
        let started = std::time::Instant::now();
        eprintln!("building fixture {} ...", path.display());
        build(&tmp);
        std::fs::rename(&tmp, &path).expect("rename fixture");
        eprintln!("built {} in {:.1?}", path.display(), started.elapsed());
    }
    path
}

/// Options for a bench ledger: durable (the default), on a ManualClock at `T0_MS`.
pub fn options(clock: &ManualClock) -> Options {
    Options::default().clock(clock.clone())
}

/// A fresh durable ledger in `dir` with workspace `ws` funded far beyond any bench's needs.
pub fn fresh_ledger(dir: &Path, ws: &str) -> (Ledger, ManualClock) {
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(dir.join("ledger.redb"), options(&clock)).expect("open");
    ledger
        .credit(Credit::purchase(ws, 1 << 50, "bench-funding"))
        .expect("fund");
    (ledger, clock)
}

/// Apply `ops` in batches of at most 8192 (the apply limit), asserting each succeeds.
pub fn apply_all(ledger: &Ledger, ops: Vec<Op>) {
    for chunk in ops.chunks(8192) {
        for r in ledger.apply(chunk) {
            r.expect("fixture op");
        }
    }
}

/// The generation id of the `i`-th generation of a fixture: random-looking, like a UUID,
/// so the `generations` B-tree is shaped as in real use.
pub fn gen_id(rng: &mut Rng) -> String {
    format!("gen-{:016x}{:08x}", rng.next_u64(), rng.next_u64() as u32)
}

/// A ledger file with `n` running generations spread over 16 workspaces, deadlines between
/// one hour and six days after `T0_MS` (so none expires at `T0_MS`).
pub fn running_fixture(n: u64) -> PathBuf {
    fixture(&format!("running-{n}.redb"), |path| {
        let clock = ManualClock::new(T0_MS);
        let ledger = Ledger::open_with(path, options(&clock)).expect("open fixture");
        for w in 0..FIXTURE_WORKSPACES {
            ledger
                .credit(Credit::purchase(
                    format!("ws-{w}"),
                    1 << 50,
                    format!("fund-{w}"),
                ))
                .expect("fund");
        }
        let mut rng = Rng::new(SEED ^ n);
        let mut i = 0;
        while i < n {
            let ops: Vec<Op> = (i..(i + 8192).min(n))
                .map(|k| {
                    let timeout = HOUR_MS + rng.below(5 * 24 * HOUR_MS);
                    Op::Start(
                        StartGeneration::new(
                            gen_id(&mut rng),
                            format!("ws-{}", k % FIXTURE_WORKSPACES),
                            "Quick Video",
                            1 + rng.below(50),
                        )
                        .timeout_ms(timeout),
                    )
                })
                .collect();
            i += ops.len() as u64;
            apply_all(&ledger, ops);
        }
        assert_eq!(ledger.totals().expect("totals").running_generations, n);
    })
}

/// What a history fixture holds: workspace `hist` with `txns` transactions. Every generation
/// is started; one in three fails (a Refund), the rest complete.
pub struct HistoryShape {
    pub txns: u64,
    pub refunds: u64,
}

/// The operations of a history fixture with about `txns` transactions, in order, and the
/// shape they make. The same list feeds the SQLite fixture.
pub fn history_workload(txns: u64) -> (Vec<HistoryEvent>, HistoryShape) {
    let mut rng = Rng::new(SEED ^ txns ^ 0xA11);
    let mut events = Vec::new();
    let mut count = 1; // the funding credit
    let mut refunds = 0;
    let mut g = 0u64;
    while count < txns {
        let id = gen_id(&mut rng);
        let cost = 1 + rng.below(50);
        let fails = g % 3 == 0 && count + 2 <= txns;
        events.push(HistoryEvent {
            generation: id,
            cost,
            reason: fails.then(|| match rng.below(3) {
                0 => RefundReason::ModelFailure,
                1 => RefundReason::ApiFailure,
                _ => RefundReason::ServiceUnavailable,
            }),
        });
        count += if fails { 2 } else { 1 };
        refunds += u64::from(fails);
        g += 1;
    }
    (
        events,
        HistoryShape {
            txns: count,
            refunds,
        },
    )
}

/// One generation of a history fixture.
pub struct HistoryEvent {
    pub generation: String,
    pub cost: u64,
    /// `Some` when it fails, `None` when it completes.
    pub reason: Option<RefundReason>,
}

/// A ledger file whose workspace `hist` has about `txns` transactions.
pub fn history_fixture(txns: u64) -> (PathBuf, HistoryShape) {
    let (events, shape) = history_workload(txns);
    let path = fixture(&format!("history-{txns}.redb"), |path| {
        let clock = ManualClock::new(T0_MS);
        let ledger = Ledger::open_with(path, options(&clock)).expect("open fixture");
        ledger
            .credit(Credit::purchase("hist", 1 << 50, "fund"))
            .expect("fund");
        let mut ops = Vec::with_capacity(events.len() * 2);
        for e in &events {
            ops.push(Op::Start(StartGeneration::new(
                e.generation.clone(),
                "hist",
                "Quick Video",
                e.cost,
            )));
            ops.push(match e.reason {
                Some(reason) => Op::Fail {
                    generation_id: e.generation.clone(),
                    reason,
                    message: "upstream error 502".into(),
                },
                None => Op::Complete {
                    generation_id: e.generation.clone(),
                },
            });
        }
        apply_all(&ledger, ops);
        assert_eq!(
            ledger.balance("hist").expect("balance").transactions,
            shape.txns
        );
    });
    (path, shape)
}

/// Short settings for expensive cases.
pub fn quick(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
}

/// Settings for cheap, durable cases.
pub fn durable(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
}

/// A SQLite file holding the same history as [`history_fixture`]: workspace `hist`.
pub fn sqlite_history_fixture(txns: u64) -> PathBuf {
    let (events, shape) = history_workload(txns);
    fixture(&format!("history-{txns}.sqlite"), |path| {
        let mut db = sqlite::SqlLedger::open(path);
        db.fund("hist", 1 << 50, T0_MS as i64);
        for chunk in events.chunks(8192) {
            let starts: Vec<(String, String, i64, i64)> = chunk
                .iter()
                .map(|e| {
                    (
                        e.generation.clone(),
                        "hist".to_string(),
                        e.cost as i64,
                        150 * 60_000,
                    )
                })
                .collect();
            assert_eq!(db.start_batch(&starts, T0_MS as i64), chunk.len());
            let failed: Vec<String> = chunk
                .iter()
                .filter(|e| e.reason.is_some())
                .map(|e| e.generation.clone())
                .collect();
            let completed: Vec<String> = chunk
                .iter()
                .filter(|e| e.reason.is_none())
                .map(|e| e.generation.clone())
                .collect();
            assert_eq!(db.fail_batch(&failed, T0_MS as i64), failed.len());
            assert_eq!(db.complete_batch(&completed, T0_MS as i64), completed.len());
        }
        let n: i64 = db
            .conn
            .query_row(
                "SELECT COUNT(*) FROM transactions WHERE workspace = 'hist'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n as u64, shape.txns);
        db.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
            .expect("checkpoint");
        // A WAL database is more than one file: move its companions too (none after the
        // checkpoint, but be safe).
        drop(db);
        for ext in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{ext}", path.display()));
            let _ = std::fs::remove_file(side);
        }
    })
}
