//! `scale/*`: issue 14's workload at realistic scale, on three stores with the same shapes:
//! ours (`Ledger::apply` with its defaults), the hand-written SQLite of `common/sqlite.rs`
//! (WAL, `synchronous=FULL`, its indexes) and the bare redb of `common/bare_redb.rs`.
//! The workload is in `scale/workload.rs`: 1,000 workspaces, N generations started, 90 %
//! completed and 7 % failed, the rest swept, all in batches of 1,000, then 100 first pages of
//! 50 Refunds. Plus durable single starts from 1, 4 and 16 threads (`scale/single.rs`).
//!
//! Two modes:
//!
//! - **Table** (`SCALE_TABLE=1`): 6,000 single starts per thread count, then the whole
//!   workload once per store, in one process, phase by phase (each phase runs on the three
//!   stores one after the other, so each ratio compares measurements taken seconds apart);
//!   prints the tables (markdown, operations per second, ratio = ours / SQLite):
//!   `SCALE_TABLE=1 SCALE_N=200000,1000000 cargo bench --bench scale`
//! - **Criterion** (the default): steady-state batches on cached fixtures (see
//!   `scale/fixtures.rs`): `scale/start/<store>/<N>` starts 1,000 more generations on the
//!   store after the start phase, `scale/finish/...` finishes the next 1,000 of the plan,
//!   `scale/sweep/...` refunds the next 1,000 expired ones, `scale/first_page/...` reads one
//!   first page of Refunds; `scale/single_start/<store>/<threads>` one durable start.
//!
//! `SCALE_N` is a comma-separated list of N (default 200000; 5000 under `--test`, so
//! `cargo bench --bench scale -- --test` stays quick).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;

mod common;
#[path = "scale/fixtures.rs"]
mod fixtures;
#[path = "scale/single.rs"]
mod single;
#[path = "scale/stores.rs"]
mod stores;
#[path = "scale/workload.rs"]
mod workload;

use fixtures::Stage;
use stores::{Bare, Ours, Sqlite};
use workload::{Gen, Measured, Plan, Store, BATCH, PAGES};

const TABLE_ENV: &str = "SCALE_TABLE";
const N_ENV: &str = "SCALE_N";
const DEFAULT_N: u64 = 200_000;
const TEST_N: u64 = 5_000;

fn sizes() -> Vec<u64> {
    match std::env::var(N_ENV) {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("SCALE_N: numbers separated by commas")
            })
            .collect(),
        Err(_) if std::env::args().any(|a| a == "--test") => vec![TEST_N],
        Err(_) => vec![DEFAULT_N],
    }
}

fn n_label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// A scratch copy of a fixture, opened; copied afresh when a bench has used it up.
struct Scratch<S> {
    dir: tempfile::TempDir,
    stage: Stage,
    store: Option<S>,
}

impl<S: Store> Scratch<S> {
    fn new(plan: &Plan, stage: Stage) -> Self {
        let mut s = Scratch {
            dir: common::scratch(),
            stage,
            store: None,
        };
        s.reset(plan);
        s
    }

    fn reset(&mut self, plan: &Plan) {
        drop(self.store.take());
        let path = self.dir.path().join(S::NAME);
        for side in ["", ".journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{side}", path.display()));
        }
        let fixture = fixtures::fixture::<S>(plan, self.stage);
        self.store = Some(fixtures::copy_open(&fixture, &path, self.stage.now_ms()));
    }

    fn store(&mut self) -> &mut S {
        self.store.as_mut().expect("an open store")
    }
}

/// The steady-state benches of store `S` on `plan`'s fixtures.
fn steady<S: Store>(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, plan: &Plan) {
    let label = n_label(plan.n);
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut state: Option<Scratch<S>> = None;
    let mut rng = common::Rng::new(common::SEED ^ 0x0A0E);
    let workspaces = workload::workspaces();
    group.bench_function(
        BenchmarkId::new(format!("start/{}", S::NAME), &label),
        |b| {
            let s = state.get_or_insert_with(|| Scratch::new(plan, Stage::Started));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let gens: Vec<Gen> = (0..BATCH)
                        .map(|_| Gen {
                            id: workload::gen_id("more", &mut rng),
                            workspace: workspaces[rng.below(workspaces.len() as u64) as usize]
                                .clone(),
                            cost_credits: 1 + rng.below(50),
                            fate: workload::Fate::Complete,
                        })
                        .collect();
                    let refs: Vec<&Gen> = gens.iter().collect();
                    let started = Instant::now();
                    assert_eq!(s.store().start(&refs), BATCH);
                    total += started.elapsed();
                }
                total
            })
        },
    );
    drop(state);

    let mut state: Option<Scratch<S>> = None;
    let batches = plan.finish_batches();
    let mut next = 0;
    group.bench_function(
        BenchmarkId::new(format!("finish/{}", S::NAME), &label),
        |b| {
            let s = state.get_or_insert_with(|| Scratch::new(plan, Stage::Started));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if next == batches.len() {
                        s.reset(plan);
                        next = 0;
                    }
                    let refs: Vec<&Gen> = batches[next].iter().map(|&i| &plan.gens[i]).collect();
                    next += 1;
                    s.store().set_now(workload::FINISH_MS);
                    let started = Instant::now();
                    assert_eq!(s.store().finish(&refs), refs.len());
                    total += started.elapsed().mul_f64(BATCH as f64 / refs.len() as f64);
                }
                total
            })
        },
    );
    drop(state);

    let mut state: Option<Scratch<S>> = None;
    group.bench_function(
        BenchmarkId::new(format!("sweep/{}", S::NAME), &label),
        |b| {
            let s = state.get_or_insert_with(|| Scratch::new(plan, Stage::Finished));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    loop {
                        s.store().set_now(workload::SWEEP_MS);
                        let started = Instant::now();
                        let refunded = s.store().sweep(BATCH);
                        let elapsed = started.elapsed();
                        if refunded > 0 {
                            total += elapsed.mul_f64(BATCH as f64 / refunded as f64);
                            break;
                        }
                        s.reset(plan);
                    }
                }
                total
            })
        },
    );
    drop(state);

    let mut state: Option<Scratch<S>> = None;
    let mut page = 0;
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new(format!("first_page/{}", S::NAME), &label),
        |b| {
            let s = state.get_or_insert_with(|| Scratch::new(plan, Stage::Swept));
            b.iter(|| {
                page = (page + 1) % PAGES;
                s.store().first_refunds(&plan.workspaces[page])
            })
        },
    );
    drop(state);
}

fn single_steady(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale/single_start");
    common::durable(&mut group);
    group.throughput(Throughput::Elements(1));
    let mut round = 0;
    let mut ours: Option<(tempfile::TempDir, Ours)> = None;
    let mut sqlite: Option<(tempfile::TempDir, Arc<Mutex<Sqlite>>)> = None;
    for threads in single::THREADS {
        group.bench_function(BenchmarkId::new("sqlite", threads), |b| {
            let (_, store) = sqlite.get_or_insert_with(|| {
                let dir = common::scratch();
                let store = single::fresh::<Sqlite>(dir.path());
                (dir, Arc::new(Mutex::new(store)))
            });
            b.iter_custom(|iters| {
                round += 1;
                let (elapsed, ran) = single::sqlite(store, threads, iters, round);
                elapsed.mul_f64(iters as f64 / ran as f64)
            })
        });
        group.bench_function(BenchmarkId::new("ours", threads), |b| {
            let (_, store) = ours.get_or_insert_with(|| {
                let dir = common::scratch();
                let store = single::fresh::<Ours>(dir.path());
                (dir, store)
            });
            b.iter_custom(|iters| {
                round += 1;
                let (elapsed, ran) = single::ours(store, threads, iters, round);
                elapsed.mul_f64(iters as f64 / ran as f64)
            })
        });
    }
    group.finish();
}

/// The workload once on each store, phase by phase: `[phase][store]`, stores in the order
/// SQLite, bare redb, ours.
fn workload_once(n: u64) -> [[Measured; 3]; 4] {
    let plan = Plan::new(n);
    let dir = common::scratch();
    let mut sqlite = Sqlite::create(&dir.path().join(Sqlite::NAME), &plan.workspaces);
    let mut bare = Bare::create(&dir.path().join(Bare::NAME), &plan.workspaces);
    let mut ours = Ours::create(&dir.path().join(Ours::NAME), &plan.workspaces);
    let mut phases = [[Measured::default(); 3]; 4];
    let names = ["start", "finish", "sweep", "first page"];
    for (p, row) in phases.iter_mut().enumerate() {
        let run = |f: &mut dyn FnMut() -> Measured, store: &str| {
            let m = f();
            eprintln!(
                "N = {}: {} on {store}: {} ops in {:.2?}",
                n_label(n),
                names[p],
                m.ops,
                m.elapsed
            );
            m
        };
        *row = match p {
            0 => [
                run(
                    &mut || workload::run_start(&mut sqlite, &plan),
                    Sqlite::NAME,
                ),
                run(&mut || workload::run_start(&mut bare, &plan), Bare::NAME),
                run(&mut || workload::run_start(&mut ours, &plan), Ours::NAME),
            ],
            1 => [
                run(
                    &mut || workload::run_finish(&mut sqlite, &plan),
                    Sqlite::NAME,
                ),
                run(&mut || workload::run_finish(&mut bare, &plan), Bare::NAME),
                run(&mut || workload::run_finish(&mut ours, &plan), Ours::NAME),
            ],
            2 => [
                run(
                    &mut || workload::run_sweep(&mut sqlite, &plan),
                    Sqlite::NAME,
                ),
                run(&mut || workload::run_sweep(&mut bare, &plan), Bare::NAME),
                run(&mut || workload::run_sweep(&mut ours, &plan), Ours::NAME),
            ],
            _ => [
                run(&mut || workload::run_pages(&sqlite, &plan), Sqlite::NAME),
                run(&mut || workload::run_pages(&bare, &plan), Bare::NAME),
                run(&mut || workload::run_pages(&ours, &plan), Ours::NAME),
            ],
        };
    }
    phases
}

/// 6,000 single starts per thread count on a fresh store each: `[threads][SQLite, ours]`.
fn single_once() -> Vec<[Measured; 2]> {
    single::THREADS
        .iter()
        .map(|&threads| {
            let dir = common::scratch();
            let sqlite = Arc::new(Mutex::new(single::fresh::<Sqlite>(dir.path())));
            let (elapsed, ops) = single::sqlite(&sqlite, threads, single::TABLE_STARTS, 0);
            let sq = Measured { ops, elapsed };
            let ours = single::fresh::<Ours>(dir.path());
            let (elapsed, ops) = single::ours(&ours, threads, single::TABLE_STARTS, 0);
            eprintln!("single starts, {threads} threads: SQLite {sq:?}, ours {elapsed:.2?}");
            [sq, Measured { ops, elapsed }]
        })
        .collect()
}

fn rate(m: &Measured) -> String {
    match m.per_second() {
        r if r >= 1e6 => format!("{:.2}M/s", r / 1e6),
        r if r >= 1e3 => format!("{:.1}k/s", r / 1e3),
        r => format!("{r:.0}/s"),
    }
}

fn ratio(ours: &Measured, sqlite: &Measured) -> String {
    format!("{:.2}×", ours.per_second() / sqlite.per_second())
}

/// The single-start table first (it is short), then the workload table after each N, with
/// the columns so far: the last one printed is the whole table, and a run stopped early
/// still leaves what it measured.
fn table(ns: &[u64]) {
    let started = Instant::now();
    let single = single_once();
    println!(
        "\n{} single starts, each its own durable call, on a fresh store of 1,000 workspaces:\n",
        single::TABLE_STARTS
    );
    println!("| threads | SQLite | ours | ratio |\n|---|---|---|---|");
    for (threads, [sq, ours]) in single::THREADS.iter().zip(&single) {
        println!(
            "| {threads} | {} | {} | {} |",
            rate(sq),
            rate(ours),
            ratio(ours, sq)
        );
    }
    let mut columns: Vec<(u64, [[Measured; 3]; 4])> = Vec::new();
    for &n in ns {
        columns.push((n, workload_once(n)));
        print_workload(&columns);
    }
    eprintln!("table run took {:.1?}", started.elapsed());
}

fn print_workload(columns: &[(u64, [[Measured; 3]; 4])]) {
    println!("\nOperations per second; ratio = ours / SQLite, in the same run.\n");
    let mut head = String::from("| phase |");
    let mut rule = String::from("|---|");
    for (n, _) in columns {
        head += &format!(" N = {}: SQLite | bare redb | ours | ratio |", n_label(*n));
        rule += "---|---|---|---|";
    }
    println!("{head}\n{rule}");
    let names = [
        "start",
        "finish (complete + fail)",
        "sweep",
        "first page of 50 refunds",
    ];
    for (p, name) in names.iter().enumerate() {
        let mut line = format!("| {name} |");
        for (_, phases) in columns {
            let [sq, bare, ours] = &phases[p];
            line += &format!(
                " {} | {} | {} | {} |",
                rate(sq),
                rate(bare),
                rate(ours),
                ratio(ours, sq)
            );
        }
        println!("{line}");
    }
}

fn main() {
    let ns = sizes();
    if std::env::var_os(TABLE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        table(&ns);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    for &n in &ns {
        let plan = Plan::new(n);
        let mut group = c.benchmark_group("scale");
        common::quick(&mut group);
        steady::<Sqlite>(&mut group, &plan);
        steady::<Bare>(&mut group, &plan);
        steady::<Ours>(&mut group, &plan);
        group.finish();
    }
    single_steady(&mut c);
    c.final_summary();
}
