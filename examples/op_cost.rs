//! A fixed batch workload to count under valgrind, which counts CPU instructions exactly
//! (the same total on every run of the same binary), so two builds compare without the noise
//! of a wall clock:
//!
//! ```sh
//! cargo build --release --example op_cost
//! OP_COST=start valgrind --tool=callgrind target/release/examples/op_cost
//! ```
//!
//! Each mode runs 20 durable batches of 1,000 operations on a file ledger with one grant per
//! workspace; divide the total by 20,000 for a figure per operation (the setup is a few
//! operations, and `fail` also runs the starts it fails: subtract `start`'s total):
//!
//! - `start`: starts on one workspace (the shape of `lifecycle/start/1000`);
//! - `fail`: those starts, then a batch of fails of each (`lifecycle/fail/1000`);
//! - `many`: starts spread over 1,000 workspaces in a fixed pseudo-random order (the shape of
//!   the scale bench's start phase);
//! - `single`: 2,000 starts on one workspace, each its own durable call (`lifecycle/start/1`).
//!
//! With `OP_COST_VERIFY=1` it ends with `verify()` and prints the totals, to check that the
//! workload did what it says.

use credit_ledger::{Credit, Ledger, ManualClock, Op, Options, RefundReason, StartGeneration};

const BATCHES: usize = 20;
const BATCH: usize = 1000;
const WORKSPACES: u64 = 1000;

fn main() {
    let mode = std::env::var("OP_COST").unwrap_or_else(|_| "start".into());
    let dir = tempfile::tempdir().expect("a scratch directory");
    let clock = ManualClock::new(1_700_000_000_000);
    let ledger = Ledger::open_with(
        dir.path().join("op-cost.redb"),
        Options::default().clock(clock),
    )
    .expect("open");
    let ok = |ops: &[Op]| {
        for r in ledger.apply(ops) {
            r.expect("every operation of the workload succeeds");
        }
    };
    match mode.as_str() {
        "start" | "fail" => {
            ok(&[Op::Credit(Credit::purchase("ws", 1 << 50, "fund"))]);
            let mut next = 0u64;
            for _ in 0..BATCHES {
                let ids: Vec<String> = (0..BATCH)
                    .map(|_| {
                        next += 1;
                        format!("gen-{next:010}")
                    })
                    .collect();
                let starts: Vec<Op> = ids
                    .iter()
                    .map(|id| Op::Start(StartGeneration::new(id, "ws", "Quick Video", 3)))
                    .collect();
                ok(&starts);
                if mode == "fail" {
                    let fails: Vec<Op> = ids
                        .iter()
                        .map(|id| Op::Fail {
                            generation_id: id.clone(),
                            reason: RefundReason::ModelFailure,
                            message: "model crashed".into(),
                        })
                        .collect();
                    ok(&fails);
                }
            }
        }
        "many" => {
            let credits: Vec<Op> = (0..WORKSPACES)
                .map(|w| {
                    Op::Credit(Credit::purchase(
                        format!("ws-{w:04}"),
                        1 << 40,
                        format!("fund-{w}"),
                    ))
                })
                .collect();
            ok(&credits);
            // xorshift64: a fixed order that looks random, the same on every run.
            let mut x: u64 = 88_172_645_463_325_252;
            for _ in 0..BATCHES {
                let starts: Vec<Op> = (0..BATCH)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let ws = format!("ws-{:04}", x % WORKSPACES);
                        Op::Start(StartGeneration::new(
                            format!("gen-{x:016x}"),
                            ws,
                            "Quick Video",
                            3,
                        ))
                    })
                    .collect();
                ok(&starts);
            }
        }
        "single" => {
            ok(&[Op::Credit(Credit::purchase("ws", 1 << 50, "fund"))]);
            for n in 0..(BATCHES * BATCH / 10) {
                ledger
                    .start_generation(StartGeneration::new(
                        format!("gen-{n:010}"),
                        "ws",
                        "Quick Video",
                        3,
                    ))
                    .expect("every start succeeds");
            }
        }
        other => {
            eprintln!("OP_COST must be start, fail, many or single, not {other:?}");
            std::process::exit(2);
        }
    }
    if std::env::var_os("OP_COST_VERIFY").is_some() {
        let report = ledger.verify().expect("verify");
        assert!(report.is_clean(), "{:#?}", report.violations);
        println!("{:?}", ledger.totals().expect("totals"));
    }
}
