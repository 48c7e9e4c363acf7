//! The ledger the way a desktop app embeds it.
//!
//! One `Arc<Ledger>` (a file in a temporary directory), four render-worker threads that start
//! generations and then complete or fail them, a background `Sweeper` for the generations
//! nobody reports (a worker that "hangs"), and a "Transactions" view of one workspace's
//! Refunds that refreshes from a subscription (`Ledger::subscribe`) instead of polling: each
//! refund, the sweeper's included, reaches it once its commit is durable. The app installs a `tracing` subscriber, so the ledger's refund
//! events (info) show up in its log; run with `DESKTOP_APP_DEBUG=1` to see the sweep passes
//! (debug) too.
//!
//! ```text
//! cargo run --example desktop_app
//! ```
//!
//! It uses the system clock with short generation timeouts (1 to 2 seconds), so some
//! generations expire while it runs; it takes a few seconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credit_ledger::{
    Credit, Error, FeedEvent, HistoryFilter, Ledger, Options, PageRequest, RefundReason,
    StartGeneration, Subscription, Sweeper, SweeperOptions, TransactionView, TxnKind,
};

const WORKSPACES: [&str; 2] = ["studio-aurora", "studio-borealis"];
const WORKERS: usize = 4;
const JOBS_PER_WORKER: u64 = 12;

/// A tiny deterministic RNG, so every run tells the same story.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What happened to one job, as the worker saw it.
#[derive(Default, Debug)]
struct Tally {
    completed: u32,
    failed: u32,
    late: u32,
    hung: u32,
}

/// A render worker: takes jobs, charges them, renders, reports.
fn render_worker(ledger: &Ledger, worker: usize) -> Result<Tally, Error> {
    let mut rng = Rng(0x9E37_79B9 + worker as u64 * 7919);
    let mut tally = Tally::default();
    for job in 0..JOBS_PER_WORKER {
        let workspace = WORKSPACES[(worker + job as usize) % WORKSPACES.len()];
        let (feature, cost) = if rng.below(3) == 0 {
            ("Quick Video", 12)
        } else {
            ("Image (HD)", 2)
        };
        let id = format!("render-w{worker}-j{job}");
        ledger.start_generation(
            StartGeneration::new(&id, workspace, feature, cost)
                .timeout_ms(1_000 + rng.below(1_000)),
        )?;
        // "Render".
        std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        match rng.below(10) {
            0..=4 => {
                ledger.complete_generation(&id)?;
                tally.completed += 1;
            }
            5..=7 => {
                let (reason, message) = match rng.below(3) {
                    0 => (
                        RefundReason::ModelFailure,
                        "the model ran out of GPU memory",
                    ),
                    1 => (RefundReason::ApiFailure, "upstream returned HTTP 502"),
                    _ => (
                        RefundReason::InvalidInput,
                        "the prompt was rejected by the filter",
                    ),
                };
                ledger.fail_generation(&id, reason, message)?;
                tally.failed += 1;
            }
            8 => {
                // The result arrives after the deadline: it is refunded, not charged. Either
                // the sweeper got there first, or this call refunds it (lazy expiry); the
                // answer is the same error either way.
                std::thread::sleep(Duration::from_millis(2_100));
                match ledger.complete_generation(&id) {
                    Err(Error::GenerationRefunded { .. }) => tally.late += 1,
                    Ok(_) => tally.completed += 1,
                    Err(e) => return Err(e),
                }
            }
            _ => {
                // The worker "hangs" and never reports: the sweeper refunds it at its deadline.
                tally.hung += 1;
            }
        }
    }
    Ok(tally)
}

/// The "Transactions" view, Refund filter, of one workspace: its rows, oldest first.
struct RefundsView {
    workspace: &'static str,
    rows: Vec<TransactionView>,
}

impl RefundsView {
    /// Load the rows the way the view opens: one history read.
    fn load(ledger: &Ledger, workspace: &'static str) -> Result<Self, Error> {
        let filter = HistoryFilter::all().kinds([TxnKind::Refund]);
        let mut rows = Vec::new();
        let mut page = PageRequest::first(100);
        loop {
            let result = ledger.history(workspace, &filter, &page)?;
            rows.extend(result.entries);
            match result.next_cursor {
                Some(cursor) => page = PageRequest::after(100, cursor),
                None => break,
            }
        }
        rows.reverse();
        Ok(RefundsView { workspace, rows })
    }

    /// A committed entry arrived: show it if it belongs in the view.
    fn on_entry(&mut self, e: TransactionView) {
        if e.workspace == self.workspace && e.kind == TxnKind::Refund {
            println!(
                "[Transactions view] refund #{} of {} credits ({}) arrived: refreshed, {} rows",
                e.id,
                e.amount_credits,
                e.reason.map_or("", |r| r.as_str()),
                self.rows.len() + 1
            );
            self.rows.push(e);
        }
    }
}

/// The view's thread: waits on the subscription (no polling of the ledger) until `stop`, then
/// drains what is left. A subscription that fell behind is told so and reloads the view.
fn run_view(
    ledger: &Ledger,
    sub: &Subscription,
    mut view: RefundsView,
    stop: &AtomicBool,
) -> Result<RefundsView, Error> {
    loop {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Some(FeedEvent::Entry(e)) => view.on_entry(e),
            Some(FeedEvent::Lagged { missed, .. }) => {
                println!("[Transactions view] missed {missed} entries: reloading");
                view = RefundsView::load(ledger, view.workspace)?;
            }
            None if stop.load(Ordering::SeqCst) => return Ok(view),
            None => {}
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let level = if std::env::var_os("DESKTOP_APP_DEBUG").is_some() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_thread_names(true)
        .init();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("credits.redb");
    let ledger = Arc::new(Ledger::open_with(&path, Options::default())?);
    for ws in WORKSPACES {
        ledger.credit(Credit::purchase(ws, 500, format!("{ws}-starter-pack")))?;
    }
    let sweeper = Sweeper::start(
        Arc::clone(&ledger),
        SweeperOptions::default().interval_ms(250).batch(100),
    )?;
    // The view subscribes first, then loads what is already there: nothing falls between.
    let sub = ledger.subscribe()?;
    let view = RefundsView::load(&ledger, WORKSPACES[0])?;
    let stop = Arc::new(AtomicBool::new(false));
    let view_thread = {
        let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("transactions-view".into())
            .spawn(move || run_view(&ledger, &sub, view, &stop))?
    };

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let ledger = Arc::clone(&ledger);
            std::thread::Builder::new()
                .name(format!("render-{w}"))
                .spawn(move || render_worker(&ledger, w))
        })
        .collect::<Result<_, _>>()?;
    let mut total = Tally::default();
    for w in workers {
        let t = w.join().map_err(|_| "a render worker panicked")??;
        total.completed += t.completed;
        total.failed += t.failed;
        total.late += t.late;
        total.hung += t.hung;
    }
    // Let the hung generations reach their deadlines; the sweeper wakes at the next one.
    while ledger.next_deadline_ms().is_some() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let swept = sweeper.refunded();
    sweeper.stop()?;
    stop.store(true, Ordering::SeqCst);
    let view = view_thread
        .join()
        .map_err(|_| "the view thread panicked")??;

    println!();
    println!(
        "workers: {} completed, {} failed (refunded at once), {} finished after their deadline (refunded, not charged), {} hung; the sweeper refunded {swept}",
        total.completed, total.failed, total.late, total.hung
    );

    // The "Transactions" view, Refund filter, of one workspace, as the subscription built it;
    // it must equal what history says.
    let ws = WORKSPACES[0];
    let reloaded = RefundsView::load(&ledger, ws)?;
    if view.rows != reloaded.rows {
        return Err("the subscribed view differs from history".into());
    }
    let summary = ledger.balance(ws)?;
    println!();
    println!(
        "Transactions — {ws} — filter: Refund    (balance {} credits; spent {}, refunded {})",
        summary.balance_credits, summary.spent_credits, summary.refunded_credits
    );
    println!(
        "{:>5}  {:<11} {:<40} {:>7} → {:<7} {:<9}  message",
        "txn", "title", "action", "before", "after", "status"
    );
    for e in view.rows.iter().rev() {
        println!(
            "{:>5}  {:<11} {:<40} {:>7} → {:<7} {:<9}  {}",
            e.id,
            e.title,
            e.action,
            e.balance_before_credits,
            e.balance_after_credits,
            format!("{:?}", e.status),
            e.message.as_deref().unwrap_or("")
        );
    }

    let report = ledger.verify()?;
    let totals = ledger.totals()?;
    println!();
    println!(
        "verify: {}; credits conserved: {}",
        if report.is_clean() {
            "clean"
        } else {
            "VIOLATIONS"
        },
        totals.is_conserved()
    );
    if !report.is_clean() || !totals.is_conserved() {
        return Err("the ledger failed its audit".into());
    }
    Ok(())
}
