//! The background sweeper: refunds what expired, in batches, stops cleanly, poisons the ledger
//! when it panics, and reports refunds through `tracing` only after they are committed.
//!
//! Time is a `ManualClock`: a test advances it and asks the sweeper for a pass with
//! `sweep_now`, which waits (real time, generous bound) for a pass that began after the call.
//! No test sleeps waiting for a timeout.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use credit_ledger::{
    Clock, Credit, Error, HistoryFilter, Ledger, ManualClock, Op, Options, PageRequest,
    RefundReason, StartGeneration, Sweeper, SweeperOptions, TxnKind,
};

const T0_MS: u64 = 1_700_000_000_000;
const MINUTE_MS: u64 = 60_000;
/// An upper bound for a pass, never reached unless something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

/// Every `tracing` event of this test binary, from every thread, as text.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer_buf = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&writer_buf)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_with(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&log().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn ledger_on(clock: &ManualClock) -> Arc<Ledger> {
    log();
    Arc::new(Ledger::in_memory_with(Options::default().clock(clock.clone())).unwrap())
}

fn start(ledger: &Ledger, id: &str, ws: &str, cost: u64, timeout_ms: u64) {
    ledger
        .start_generation(StartGeneration::new(id, ws, "Quick Video", cost).timeout_ms(timeout_ms))
        .unwrap();
}

#[test]
fn refunds_only_what_expired_and_loops_over_batches() {
    let clock = ManualClock::new(T0_MS);
    let ledger = ledger_on(&clock);
    ledger
        .credit(Credit::purchase("loop-ws", 10_000, "order-1"))
        .unwrap();
    // 25 generations due in 1 minute, 5 due in 10 minutes.
    for i in 0..25 {
        start(&ledger, &format!("loop-short-{i}"), "loop-ws", 7, MINUTE_MS);
    }
    for i in 0..5 {
        start(
            &ledger,
            &format!("loop-long-{i}"),
            "loop-ws",
            11,
            10 * MINUTE_MS,
        );
    }
    assert_eq!(
        ledger.balance("loop-ws").unwrap().balance_credits,
        10_000 - 25 * 7 - 5 * 11
    );

    // Batch 10: one pass must take three write transactions to refund all 25.
    let sweeper = Sweeper::start(
        Arc::clone(&ledger),
        SweeperOptions::default().batch(10).interval_ms(3_600_000),
    )
    .unwrap();
    assert!(sweeper.sweep_now(PATIENCE), "a pass before the deadline");
    assert_eq!(sweeper.refunded(), 0, "nothing is due yet");

    clock.advance_ms(MINUTE_MS);
    assert!(sweeper.sweep_now(PATIENCE));
    assert_eq!(sweeper.refunded(), 25);
    let ws = ledger.balance("loop-ws").unwrap();
    assert_eq!(ws.balance_credits, 10_000 - 5 * 11);
    assert_eq!(ws.running_generations, 5);
    assert_eq!(ws.refunded_credits, 25 * 7);
    assert_eq!(ledger.next_deadline_ms(), Some(T0_MS + 10 * MINUTE_MS));

    let refunds = ledger
        .history(
            "loop-ws",
            &HistoryFilter::all().kinds([TxnKind::Refund]),
            &PageRequest::first(100),
        )
        .unwrap();
    assert_eq!(refunds.entries.len(), 25);
    assert!(refunds
        .entries
        .iter()
        .all(|e| e.reason == Some(RefundReason::Timeout) && e.amount_credits == 7));

    clock.advance_ms(9 * MINUTE_MS);
    assert!(sweeper.sweep_now(PATIENCE));
    assert_eq!(sweeper.refunded(), 30);
    assert_eq!(ledger.balance("loop-ws").unwrap().balance_credits, 10_000);
    assert_eq!(ledger.next_deadline_ms(), None);
    assert_eq!(sweeper.errors(), 0);
    println!(
        "passes: {}, refunded: {}",
        sweeper.passes(),
        sweeper.refunded()
    );
    sweeper.stop().unwrap();
    assert!(ledger.verify().unwrap().is_clean());
    assert_eq!(Arc::strong_count(&ledger), 1, "stop joined the thread");
}

#[test]
fn wake_and_wait_for_passes() {
    let clock = ManualClock::new(T0_MS);
    let ledger = ledger_on(&clock);
    ledger
        .credit(Credit::purchase("wake-ws", 100, "o"))
        .unwrap();
    start(&ledger, "wake-g", "wake-ws", 40, MINUTE_MS);
    let sweeper = Sweeper::start(
        Arc::clone(&ledger),
        SweeperOptions::default().interval_ms(3_600_000),
    )
    .unwrap();
    assert!(
        sweeper.wait_for_passes(1, PATIENCE),
        "the first pass runs at start"
    );
    let before = sweeper.passes();
    clock.advance_ms(MINUTE_MS);
    sweeper.wake();
    assert!(sweeper.wait_for_passes(before + 1, PATIENCE));
    // The pass that ran after the wake-up may be the one that was already running; a
    // `sweep_now` guarantees a pass that saw the new time.
    assert!(sweeper.sweep_now(PATIENCE));
    assert_eq!(ledger.balance("wake-ws").unwrap().balance_credits, 100);
    assert_eq!(sweeper.refunded(), 1);
    // Drop stops and joins.
    drop(sweeper);
    assert_eq!(Arc::strong_count(&ledger), 1, "drop joined the thread");
}

#[test]
fn refund_events_name_generation_workspace_reason_amount_and_txn() {
    let clock = ManualClock::new(T0_MS);
    let ledger = ledger_on(&clock);
    ledger
        .credit(Credit::purchase("ev-ws", 1_000, "o"))
        .unwrap();
    start(&ledger, "ev-fail", "ev-ws", 13, MINUTE_MS);
    start(&ledger, "ev-late", "ev-ws", 17, MINUTE_MS);
    start(&ledger, "ev-swept", "ev-ws", 19, MINUTE_MS);
    start(&ledger, "ev-ok", "ev-ws", 23, 10 * MINUTE_MS);
    assert!(log_lines_with("ev-").is_empty(), "a start is not a refund");

    let r = ledger
        .fail_generation("ev-fail", RefundReason::ApiFailure, "upstream 502")
        .unwrap();
    let lines = log_lines_with("generation=ev-fail");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("INFO"), "{}", lines[0]);
    for field in [
        "workspace=ev-ws".to_string(),
        "reason=\"api-failure\"".to_string(),
        "amount_credits=13".to_string(),
        format!("refund_txn={}", r.refund_txn),
    ] {
        assert!(
            lines[0].contains(&field),
            "{field} missing from {}",
            lines[0]
        );
    }
    // A replay writes nothing and says nothing.
    let again = ledger
        .fail_generation("ev-fail", RefundReason::ApiFailure, "upstream 502")
        .unwrap();
    assert!(again.replay);
    assert_eq!(log_lines_with("generation=ev-fail").len(), 1);

    // Lazy expiry: a completion after the deadline refunds and is logged once.
    clock.advance_ms(MINUTE_MS);
    let late = ledger.complete_generation("ev-late").unwrap_err();
    let Error::GenerationRefunded { refund_txn, .. } = late else {
        panic!("expected GenerationRefunded, got {late:?}");
    };
    let lines = log_lines_with("generation=ev-late");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("amount_credits=17"), "{}", lines[0]);
    assert!(lines[0].contains(&format!("refund_txn={refund_txn}")));
    assert!(lines[0].contains("workspace=ev-ws"));
    // Asking again is answered from the stored state: no new refund, no new event.
    assert!(matches!(
        ledger.complete_generation("ev-late"),
        Err(Error::GenerationRefunded { .. })
    ));
    assert_eq!(log_lines_with("generation=ev-late").len(), 1);

    // The sweeper's refund is logged from its thread, and its pass at debug level.
    let sweeper = Sweeper::start(
        Arc::clone(&ledger),
        SweeperOptions::default().interval_ms(3_600_000),
    )
    .unwrap();
    assert!(sweeper.sweep_now(PATIENCE));
    let lines = log_lines_with("generation=ev-swept");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("amount_credits=19"), "{}", lines[0]);
    assert!(lines[0].contains("credit-ledger-sweeper") || lines[0].contains("INFO"));
    assert!(!log_lines_with("sweep pass").is_empty());
    assert!(log_lines_with("generation=ev-ok").is_empty());
    sweeper.stop().unwrap();
}

#[test]
fn batch_apply_logs_each_refund_once() {
    let clock = ManualClock::new(T0_MS);
    let ledger = ledger_on(&clock);
    ledger
        .credit(Credit::purchase("apply-ws", 1_000, "o"))
        .unwrap();
    let results = ledger.apply(&[
        Op::Start(StartGeneration::new("apply-a", "apply-ws", "Image", 5)),
        Op::Fail {
            generation_id: "apply-a".into(),
            reason: RefundReason::ModelFailure,
            message: "oom".into(),
        },
        Op::Fail {
            generation_id: "apply-missing".into(),
            reason: RefundReason::ModelFailure,
            message: "oom".into(),
        },
    ]);
    assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_err());
    assert_eq!(log_lines_with("generation=apply-a").len(), 1);
    assert!(log_lines_with("generation=apply-missing").is_empty());
}

/// A clock that panics on demand, to make the sweeper thread panic.
#[derive(Debug, Clone)]
struct PanickyClock {
    now_ms: Arc<AtomicU64>,
    panic: Arc<AtomicBool>,
}

impl Clock for PanickyClock {
    fn now_ms(&self) -> u64 {
        if self.panic.load(Ordering::SeqCst)
            && std::thread::current().name() == Some("panic-test-sweeper")
        {
            panic!("clock exploded");
        }
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[test]
fn a_panicking_sweeper_poisons_the_ledger() {
    log();
    let clock = PanickyClock {
        now_ms: Arc::new(AtomicU64::new(T0_MS)),
        panic: Arc::new(AtomicBool::new(false)),
    };
    let ledger = Arc::new(Ledger::in_memory_with(Options::default().clock(clock.clone())).unwrap());
    ledger.credit(Credit::purchase("p-ws", 100, "o")).unwrap();
    let sweeper = Sweeper::start(
        Arc::clone(&ledger),
        SweeperOptions {
            thread_name: "panic-test-sweeper".into(),
            ..SweeperOptions::default().interval_ms(3_600_000)
        },
    )
    .unwrap();
    assert!(sweeper.sweep_now(PATIENCE), "healthy before the panic");
    clock.panic.store(true, Ordering::SeqCst);
    assert!(
        !sweeper.sweep_now(PATIENCE),
        "the thread died instead of finishing a pass"
    );

    // Every later call says so, clearly, instead of carrying on without a sweeper.
    let err = ledger
        .credit(Credit::purchase("p-ws", 1, "o2"))
        .unwrap_err();
    match &err {
        Error::Poisoned { message } => {
            assert!(
                message.contains("sweeper") && message.contains("clock exploded"),
                "{message}"
            )
        }
        other => panic!("expected Poisoned, got {other:?}"),
    }
    assert!(err.to_string().to_lowercase().contains("poison"), "{err}");
    assert!(matches!(
        ledger.sweep_expired(10),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(
        ledger.apply(&[Op::Credit(Credit::purchase("p-ws", 1, "o3"))])[0],
        Err(Error::Poisoned { .. })
    ));
    // Nothing was written after the panic.
    assert_eq!(ledger.balance("p-ws").unwrap().balance_credits, 100);
    assert!(matches!(sweeper.stop(), Err(Error::Poisoned { .. })));
    assert_eq!(Arc::strong_count(&ledger), 1);
}

#[test]
fn sweeper_alongside_writers_keeps_the_ledger_consistent() {
    let clock = ManualClock::new(T0_MS);
    let ledger = ledger_on(&clock);
    for w in 0..4 {
        ledger
            .credit(Credit::purchase(
                format!("mix-{w}"),
                1_000_000,
                format!("o{w}"),
            ))
            .unwrap();
    }
    let sweeper = Sweeper::start(
        Arc::clone(&ledger),
        SweeperOptions::default().batch(7).interval_ms(1),
    )
    .unwrap();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let ledger = Arc::clone(&ledger);
            let clock = clock.clone();
            std::thread::spawn(move || {
                let mut outcomes = [0u32; 3];
                for i in 0..200 {
                    let id = format!("mix-{w}-{i}");
                    start(&ledger, &id, &format!("mix-{w}"), 3, MINUTE_MS);
                    if i % 10 == 0 {
                        clock.advance_ms(MINUTE_MS / 4);
                    }
                    let r = match i % 3 {
                        0 => ledger.complete_generation(&id).map(|_| 0),
                        1 => ledger
                            .fail_generation(&id, RefundReason::ModelFailure, "boom")
                            .map(|_| 1),
                        _ => Ok(2), // left running: the sweeper or nobody
                    };
                    match r {
                        Ok(k) => outcomes[k] += 1,
                        Err(Error::GenerationRefunded { .. }) => outcomes[1] += 1,
                        Err(e) => panic!("{id}: {e}"),
                    }
                }
                outcomes
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    clock.advance_ms(MINUTE_MS);
    assert!(sweeper.sweep_now(PATIENCE));
    let totals = ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");
    for w in 0..4 {
        assert_eq!(
            ledger
                .balance(&format!("mix-{w}"))
                .unwrap()
                .running_generations,
            0
        );
    }
    assert_eq!(ledger.next_deadline_ms(), None);
    assert!(ledger.verify().unwrap().is_clean());
    println!(
        "sweeper passes: {}, refunded by the sweeper: {}",
        sweeper.passes(),
        sweeper.refunded()
    );
    assert!(sweeper.refunded() > 0);
    sweeper.stop().unwrap();
}

/// The thread's name reaches the OS as a C string, where a NUL made `spawn` panic: it is
/// refused with a typed error, and nothing starts.
#[test]
fn a_thread_name_the_os_cannot_take_is_refused_not_a_panic() {
    let clock = ManualClock::new(T0_MS);
    let ledger = Arc::new(Ledger::in_memory_with(Options::default().clock(clock)).unwrap());
    for name in ["sweeper\0two", "", "tab\there"] {
        let options = SweeperOptions {
            thread_name: name.to_string(),
            ..SweeperOptions::default()
        };
        let err = Sweeper::start(Arc::clone(&ledger), options).unwrap_err();
        assert!(
            matches!(err, credit_ledger::Error::InvalidInput(_)),
            "{name:?}: {err:?}"
        );
    }
    // The ledger is untouched, and a sweeper with a good name starts.
    Sweeper::start(ledger, SweeperOptions::default())
        .unwrap()
        .stop()
        .unwrap();
}
