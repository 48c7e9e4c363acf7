//! The model-based test on stable Rust: the `ops_model` fuzz harness (tests/support/model.rs)
//! fed from a seeded PRNG for a bounded time, plus a replay of saved crash inputs.
//!
//! - `MODEL_SEED=<u64>` picks another seed (default fixed, so CI is reproducible).
//! - `MODEL_BUDGET_SECS=<n>` changes the time budget (default 30 s).
//! - `MODEL_REPLAY=<file>` replays one saved input (for example a fuzzer artifact) and nothing
//!   else: `MODEL_REPLAY=fuzz/artifacts/ops_model/crash-... cargo test --test model -- --nocapture`.
//!
//! Every input in `tests/data/model-crashes/` is replayed on every run, as a regression test.
//! `mixed-crashes-overflow-clock.bin` is a seeded input kept because one run of it reaches
//! crashes, overflow, a regressed clock, lazy expiry, conflicts and refusals; fuzzer crash
//! inputs worth keeping go next to it.

#[path = "support/model.rs"]
mod model;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// SplitMix64: small, seedable, good enough to make fuzz inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Run one input; on a panic, save the input where it can be replayed, then fail.
fn run_or_save(run: fn(&[u8]) -> model::RunStats, input: &[u8], label: &str) -> model::RunStats {
    match std::panic::catch_unwind(|| run(input)) {
        Ok(stats) => stats,
        Err(panic) => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/model-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{label}.bin"));
            let _ = std::fs::write(&file, input);
            eprintln!(
                "model divergence on {label}; input saved to {} (replay with MODEL_REPLAY={0})",
                file.display()
            );
            std::panic::resume_unwind(panic)
        }
    }
}

#[test]
fn seeded_operation_sequences_match_the_model() {
    seeded(model::run, "image", 30);
}

/// The same, on a file ledger with its write-ahead journal: every crash replays the journal.
#[test]
fn seeded_operation_sequences_match_the_model_through_the_journal() {
    seeded(model::run_journal, "journal", 15);
}

/// Run seeded inputs through `run` for the time budget (`MODEL_BUDGET_SECS`, or
/// `default_secs`).
fn seeded(run: fn(&[u8]) -> model::RunStats, mode: &str, default_secs: u64) {
    if std::env::var_os("MODEL_REPLAY").is_some() {
        eprintln!("MODEL_REPLAY is set: only the replay test runs");
        return;
    }
    let seed = env_u64("MODEL_SEED").unwrap_or(0x00C0_FFEE_2026);
    let budget = Duration::from_secs(env_u64("MODEL_BUDGET_SECS").unwrap_or(default_secs));
    const MIN_CASES: u64 = 20;
    const MAX_CASES: u64 = 100_000;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut total = model::RunStats::default();
    let mut cases = 0u64;
    while cases < MAX_CASES && (cases < MIN_CASES || started.elapsed() < budget) {
        // Mostly long inputs (many steps), sometimes short ones.
        let len = if rng.next() % 4 == 0 {
            (rng.next() % 64) as usize
        } else {
            256 + (rng.next() % 1536) as usize
        };
        let input = rng.bytes(len);
        let stats = run_or_save(run, &input, &format!("{mode}-seed-{seed:x}-case-{cases}"));
        total.add(&stats);
        cases += 1;
    }
    println!(
        "model ({mode}): seed {seed:#x}: {cases} executions, {} steps, {} operations ({} ok, {} errors \
         matched), {} refunds, {} expirations and voids, {} balance-low notifications, {} grant-expiring notices ({} by the sweep), {} acks, \
         {} reopens ({} crashes), {} clean verify() runs, {} separations ({} refused, the others \
         lost nothing), in {:.1} s; \
         errors by kind: {:?}",
        total.steps,
        total.ops,
        total.ok,
        total.errors,
        total.refunds,
        total.closures,
        total.notifications,
        total.grant_notices,
        total.swept_grant_notices,
        total.acks,
        total.reopens,
        total.crashes,
        total.verifies,
        total.separations,
        total.refusals,
        started.elapsed().as_secs_f64(),
        total.error_kinds
    );
    assert!(cases >= MIN_CASES);
    // The generator must really reach the interesting paths, or the test proves little.
    assert!(total.refunds > 0 && total.crashes > 0 && total.errors > 0 && total.ok > 0);
    if mode == "journal" {
        // Separations must be reached and must sometimes be refused.
        assert!(total.separations > 0 && total.refusals > 0, "{total:?}");
    }
    assert!(
        total.notifications > 0 && total.acks > 0,
        "alerts and acks unreached"
    );
    assert!(
        total.swept_grant_notices > 0 && total.grant_notices > total.swept_grant_notices,
        "grant notices unreached (from the sweep, or at once): {total:?}"
    );
}

fn saved_inputs() -> Vec<PathBuf> {
    if let Some(one) = std::env::var_os("MODEL_REPLAY") {
        return vec![PathBuf::from(one)];
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/model-crashes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn saved_crash_inputs_replay_cleanly() {
    let files = saved_inputs();
    for file in &files {
        let input = std::fs::read(file)
            .unwrap_or_else(|e| panic!("cannot read saved input {}: {e}", file.display()));
        let stats = model::run(&input);
        model::run_journal(&input);
        println!(
            "replayed {}: {} steps, {} operations",
            file.display(),
            stats.steps,
            stats.ops
        );
    }
    println!("model: replayed {} saved input(s)", files.len());
    assert!(
        !files.is_empty(),
        "no saved inputs found: tests/data/model-crashes/ ships at least one"
    );
}
