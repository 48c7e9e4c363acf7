//! Concurrency: 8 threads of mixed operations plus a sweep thread, 50,000 operations on one
//! file-backed `Arc<Ledger>` (group commit, `Durability::Immediate`), with a shared
//! `ManualClock` that the threads move forward so that generations expire under them.
//!
//! Threads race on the same generations: one completes while another fails it, the sweep
//! times it out, or a late call expires it lazily. Afterwards:
//! - `verify()` is clean and credits are conserved;
//! - no generation both succeeded and was refunded, and none has two refunds (counted from
//!   each workspace's Refund history);
//! - every acknowledged result agrees with the final state: each refund acknowledged as new
//!   appears exactly once in history, with the id the caller was given; each acknowledged
//!   completion is a succeeded generation; every refund in history was acknowledged to someone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use credit_ledger::{
    Credit, Durability, Error, GenerationState, HistoryFilter, Ledger, ManualClock, Options,
    PageRequest, RefundReason, StartGeneration, TxnKind,
};

const THREADS: usize = 8;
const TOTAL_OPS: usize = 50_000;
const WORKSPACES: [&str; 4] = ["studio-a", "studio-b", "studio-c", "studio-d"];
const T0_MS: u64 = 1_700_000_000_000;

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

/// What a caller was told.
#[derive(Debug, Default)]
struct Acks {
    /// (generation, refund txn) acknowledged as a new refund: by fail, by the sweep, or by a
    /// `complete` or repeated `start` answered with `GenerationRefunded` carrying the refund.
    new_refunds: Vec<(String, u64)>,
    /// (generation, refund txn) acknowledged as a replay or named in a refusal.
    seen_refunds: Vec<(String, u64)>,
    /// (generation, completed_at) acknowledged as a new completion.
    new_completions: Vec<(String, u64)>,
    /// Generations a refusal said had succeeded, with the time.
    seen_completions: Vec<(String, u64)>,
    /// Generation ids whose start was acknowledged.
    started: Vec<String>,
    ops: u64,
    errors: BTreeMap<&'static str, u64>,
}

fn error_name(e: &Error) -> &'static str {
    match e {
        Error::InsufficientCredits { .. } => "insufficient credits",
        Error::GenerationRefunded { .. } => "already refunded",
        Error::GenerationSucceeded { .. } => "already succeeded",
        Error::UnknownGeneration { .. } => "unknown generation",
        Error::Conflict { .. } => "conflict",
        other => panic!("unexpected error under concurrency: {other:?}"),
    }
}

struct Shared {
    ledger: Arc<Ledger>,
    clock: ManualClock,
    /// Every start request ever sent, so that others can replay, complete or fail it.
    starts: Mutex<Vec<StartGeneration>>,
}

fn worker(t: usize, ops: usize, s: &Shared) -> Acks {
    let mut rng = Rng(0xC0DE + t as u64);
    let mut acks = Acks::default();
    let l = &*s.ledger;
    let mut n = 0u64;
    while acks.ops < ops as u64 {
        n += 1;
        let roll = rng.below(100);
        if roll < 3 {
            // Time passes: from half a minute to five minutes. Not a ledger operation.
            s.clock.advance_ms(30_000 + rng.below(270_000));
            continue;
        }
        let pick = |rng: &mut Rng| -> Option<StartGeneration> {
            let starts = s.starts.lock().unwrap();
            if starts.is_empty() {
                return None;
            }
            // Mostly recent generations, so the races are on live ones.
            let len = starts.len() as u64;
            let i = len - 1 - rng.below(len.min(64));
            Some(starts[i as usize].clone())
        };
        acks.ops += 1;
        if roll < 8 {
            let ws = WORKSPACES[rng.below(4) as usize];
            let key = format!("topup-{t}-{}", n / 2); // every other one replays
            match l.credit(Credit::purchase(ws, 500, key)) {
                Ok(_) => {}
                Err(e) => *acks.errors.entry(error_name(&e)).or_default() += 1,
            }
        } else if roll < 45 {
            // A new generation; a few replay one already sent.
            let start = if roll < 40 || s.starts.lock().unwrap().is_empty() {
                let ws = WORKSPACES[rng.below(4) as usize];
                let mut st = StartGeneration::new(
                    format!("t{t}-g{n}"),
                    ws,
                    if rng.below(2) == 0 {
                        "Quick Video"
                    } else {
                        "Image"
                    },
                    1 + rng.below(20),
                );
                if rng.below(3) > 0 {
                    st = st.timeout_ms(60_000 + rng.below(20 * 60_000));
                }
                s.starts.lock().unwrap().push(st.clone());
                st
            } else {
                pick(&mut rng).unwrap()
            };
            match l.start_generation(start.clone()) {
                Ok(c) => {
                    assert_eq!(c.cost_credits, start.cost_credits);
                    acks.started.push(start.generation_id);
                }
                Err(Error::GenerationRefunded {
                    generation,
                    refunded_now: Some(r),
                    ..
                }) => {
                    // A repeated start found it past its deadline and refunded it.
                    assert_eq!(
                        (generation.as_str(), r.replay),
                        (start.generation_id.as_str(), false)
                    );
                    acks.new_refunds.push((generation, r.refund_txn));
                    *acks.errors.entry("already refunded").or_default() += 1;
                }
                Err(e) => *acks.errors.entry(error_name(&e)).or_default() += 1,
            }
        } else {
            let Some(start) = pick(&mut rng) else {
                acks.ops -= 1; // nothing started yet: no operation was run
                continue;
            };
            let id = start.generation_id;
            if roll < 75 {
                match l.complete_generation(&id) {
                    Ok(c) if c.replay => acks.seen_completions.push((id, c.completed_at_ms)),
                    Ok(c) => acks.new_completions.push((id, c.completed_at_ms)),
                    Err(Error::GenerationRefunded {
                        generation,
                        refund_txn,
                        refunded_now,
                        ..
                    }) => {
                        assert_eq!(generation, id);
                        // Either refunded before, or refunded now with reason Timeout because
                        // the completion came after the deadline: the error says which.
                        match refunded_now {
                            Some(r) => {
                                assert_eq!(r.refund_txn, refund_txn);
                                acks.new_refunds.push((id, refund_txn));
                            }
                            None => acks.seen_refunds.push((id, refund_txn)),
                        }
                        *acks.errors.entry("already refunded").or_default() += 1;
                    }
                    Err(e) => *acks.errors.entry(error_name(&e)).or_default() += 1,
                }
            } else {
                let reason = RefundReason::ALL[rng.below(5) as usize];
                match l.fail_generation(&id, reason, "worker reported a failure") {
                    Ok(r) => {
                        assert_eq!(r.amount_credits, start.cost_credits, "refund in full");
                        assert_eq!(r.generation_id, id);
                        if r.replay {
                            acks.seen_refunds.push((id, r.refund_txn));
                        } else {
                            acks.new_refunds.push((id, r.refund_txn));
                        }
                    }
                    Err(Error::GenerationSucceeded {
                        generation,
                        completed_at_ms,
                    }) => {
                        acks.seen_completions.push((generation, completed_at_ms));
                        *acks.errors.entry("already succeeded").or_default() += 1;
                    }
                    Err(e) => *acks.errors.entry(error_name(&e)).or_default() += 1,
                }
            }
        }
    }
    acks
}

fn all_refunds(l: &Ledger, ws: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = l
            .history(
                ws,
                &HistoryFilter::all().kinds([TxnKind::Refund]),
                &PageRequest {
                    limit: 1000,
                    cursor: cursor.take(),
                    oldest_first: true,
                },
            )
            .unwrap();
        for e in page.entries {
            assert_eq!(e.kind, TxnKind::Refund);
            out.push((
                e.generation_id.expect("a refund names its generation"),
                e.id,
            ));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[test]
fn eight_threads_and_a_sweeper_keep_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let ledger = Arc::new(
        Ledger::open_with(
            dir.path().join("concurrent.redb"),
            Options::default()
                .clock(clock.clone())
                .durability(Durability::Immediate),
        )
        .unwrap(),
    );
    for ws in WORKSPACES {
        ledger
            .credit(Credit::grant(ws, 1_000_000, format!("seed-{ws}")))
            .unwrap();
    }
    let shared = Arc::new(Shared {
        ledger: ledger.clone(),
        clock: clock.clone(),
        starts: Mutex::new(Vec::new()),
    });
    let done = Arc::new(AtomicBool::new(false));
    let started = std::time::Instant::now();

    let sweeper = {
        let l = ledger.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut acks = Acks::default();
            let (mut calls, mut working) = (0u64, 0u64);
            while !done.load(Ordering::SeqCst) {
                calls += 1;
                let r = l.sweep_expired(7).expect("sweep never fails here");
                if r.refunds.is_empty() {
                    // Idle: pace the loop rather than spin a core away from the workers.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                } else {
                    working += 1;
                }
                for refund in r.refunds {
                    assert_eq!(refund.reason, RefundReason::Timeout);
                    assert!(!refund.replay);
                    acks.new_refunds
                        .push((refund.generation_id, refund.refund_txn));
                }
            }
            (acks, (calls, working))
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = shared.clone();
            std::thread::spawn(move || worker(t, TOTAL_OPS / THREADS, &s))
        })
        .collect();
    let mut acks: Vec<Acks> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let (sweep_acks, (sweep_calls, sweeps_refunding)) = sweeper.join().unwrap();
    let elapsed = started.elapsed();
    let ops: u64 = acks.iter().map(|a| a.ops).sum();
    assert_eq!(ops as usize, TOTAL_OPS);
    acks.push(sweep_acks);

    // The ledger itself.
    let report = ledger.verify().unwrap();
    assert!(report.is_clean(), "{report:#?}");
    let totals = ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");

    // Refunds per generation, from history.
    let mut refunds_of: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for ws in WORKSPACES {
        for (g, txn) in all_refunds(&ledger, ws) {
            refunds_of.entry(g).or_default().push(txn);
        }
    }
    for (g, txns) in &refunds_of {
        assert_eq!(txns.len(), 1, "generation {g} has refunds {txns:?}");
    }
    let history_refunds: BTreeSet<u64> = refunds_of.values().flatten().copied().collect();

    // Every generation that was started, against its final state.
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for a in &acks {
        ids.extend(a.started.iter().cloned());
    }
    let mut states = BTreeMap::new();
    let (mut succeeded, mut refunded, mut running) = (0, 0, 0);
    for id in &ids {
        let v = ledger.generation(id).unwrap();
        match v.state {
            GenerationState::Succeeded { .. } => {
                succeeded += 1;
                assert!(
                    !refunds_of.contains_key(id),
                    "{id} succeeded and was refunded"
                );
            }
            GenerationState::Refunded { refund_txn, .. } => {
                refunded += 1;
                assert_eq!(refunds_of.get(id), Some(&vec![refund_txn]), "{id}");
            }
            GenerationState::Running => {
                running += 1;
                assert!(!refunds_of.contains_key(id), "{id} is running but refunded");
            }
        }
        states.insert(id.clone(), v.state);
    }
    assert_eq!(
        refunded,
        refunds_of.len(),
        "every refund belongs to a started generation"
    );

    // Every acknowledged result agrees with the final state.
    let mut new_refund_txns = BTreeSet::new();
    let mut acked_txns = BTreeSet::new();
    for a in &acks {
        for (g, txn) in &a.new_refunds {
            assert!(
                new_refund_txns.insert(*txn),
                "refund #{txn} acknowledged as new twice"
            );
            assert_eq!(
                refunds_of.get(g),
                Some(&vec![*txn]),
                "acknowledged refund of {g}"
            );
            acked_txns.insert(*txn);
        }
        for (g, txn) in &a.seen_refunds {
            assert_eq!(
                refunds_of.get(g),
                Some(&vec![*txn]),
                "refund of {g} named to a caller"
            );
            acked_txns.insert(*txn);
        }
        for (g, at) in a.new_completions.iter().chain(&a.seen_completions) {
            assert_eq!(
                states.get(g),
                Some(&GenerationState::Succeeded {
                    completed_at_ms: *at
                }),
                "acknowledged completion of {g}"
            );
        }
    }
    let mut completed_once = BTreeSet::new();
    for a in &acks {
        for (g, _) in &a.new_completions {
            assert!(
                completed_once.insert(g.clone()),
                "{g} completed as new twice"
            );
        }
    }
    // Every refund in history was told to someone (a refund that a late `complete` wrote is
    // named by its `GenerationRefunded` error), and nothing was told that is not in history.
    assert_eq!(
        acked_txns, history_refunds,
        "refunds in history that no caller was told about, or the other way round"
    );
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &acks {
        for (k, v) in &a.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    println!(
        "concurrency: {ops} operations on {THREADS} threads + {sweep_calls} sweep calls \
         ({sweeps_refunding} of them refunded something), \
         Durability::Immediate, in {:.1} s; {} generations: {succeeded} succeeded, {refunded} \
         refunded ({} by the sweep), {running} running; {} transactions; refusals {errors:?}",
        elapsed.as_secs_f64(),
        ids.len(),
        acks.last().unwrap().new_refunds.len(),
        report.checked.transactions
    );
    assert!(
        succeeded > 0 && refunded > 0,
        "the mix must reach both outcomes"
    );
    assert!(
        !acks.last().unwrap().new_refunds.is_empty(),
        "the clock must move far enough for the sweep to refund something"
    );
}
