//! [`Ledger`]: opening, the write path and the public operations.

mod commit;
mod options;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable};

pub use options::{Durability, Options, DEFAULT_CACHE_SIZE_BYTES};

use crate::audit::{self, AuditReport};
use crate::engine::{Ctx, EngineConfig, WriterState};
use crate::error::{Error, InvalidInput, Result};
use crate::model::limits::{MAX_BATCH_OPS, MAX_SWEEP_LIMIT};
use crate::model::{
    validate, Adjust, Charge, Completion, Credit, Op, Outcome, Receipt, RefundReason,
    RefundReceipt, StartGeneration, SweepReport,
};
use crate::query::{
    self, GenerationView, HistoryFilter, HistoryPage, LedgerTotals, PageRequest, Stats,
    TimeWindow, TransactionView, WorkspaceSummary,
};
use crate::storage::tables;
use commit::GroupCommit;

/// "No running generation" in the earliest-deadline cache.
const NO_DEADLINE: u64 = u64::MAX;

/// An embedded credit ledger. Share one per file through `Arc<Ledger>`: it is `Send + Sync`,
/// and concurrent writers are group-committed.
///
/// See the [crate docs](crate) for an example.
pub struct Ledger {
    db: Database,
    path: Option<PathBuf>,
    options: Options,
    /// The writer's cached state; `None` after a failed commit, so the next write reloads it.
    writer: Mutex<Option<WriterState>>,
    group: GroupCommit,
    /// The earliest running deadline, so an idle sweep check needs no I/O.
    earliest_deadline_ms: AtomicU64,
    /// The last committed timestamp, for the idle check's notion of "now".
    last_at_ms: AtomicU64,
    /// Set when a background thread of this ledger panicked.
    poison: Mutex<Option<String>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn map_open_error(path: &Path, e: redb::DatabaseError) -> Error {
    let shown = path.display().to_string();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::AlreadyOpen { path: shown },
        // redb reports "not a redb database" (another format, random bytes) as InvalidData.
        // A file too short for redb's header is not a ledger either.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Error::NotALedger {
                path: shown,
                detail: io.to_string(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Error::Storage {
            message: format!("cannot open `{shown}`: {io}"),
        },
        other => Error::NotALedger {
            path: shown,
            detail: other.to_string(),
        },
    }
}

/// Run `f`, turning a panic into an error. redb asserts (or indexes out of bounds) on some kinds
/// of damaged pages instead of returning an error; a caller of the ledger must get a typed error
/// for a damaged file, never a panic, so opening and every read run under this guard. The panic
/// message is still printed by the process's panic hook: replacing a process-wide hook is not a
/// library's call to make.
fn no_panic<T>(on_panic: impl FnOnce(String) -> Error, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(on_panic(format!(
            "the storage engine failed on damaged data ({message}); run `verify` and restore from a backup"
        )))
    })
}

/// [`no_panic`] for a read: a panic becomes [`Error::Corruption`].
fn read_guard<T>(what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    no_panic(
        |detail| Error::Corruption {
            table: what,
            key: String::new(),
            detail,
        },
        f,
    )
}

impl Ledger {
    /// Open the ledger at `path`, creating it if it does not exist, with default [`Options`].
    pub fn open(path: impl AsRef<Path>) -> Result<Ledger> {
        Self::open_with(path, Options::default())
    }

    /// Open the ledger at `path` with `options`, creating it if it does not exist.
    ///
    /// Fails with [`Error::AlreadyOpen`] when another process has the file open, with
    /// [`Error::NotALedger`] when the file is empty, damaged or belongs to something else.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Ledger> {
        let path = path.as_ref();
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_file() && meta.len() == 0 {
                // An empty file is never a ledger: it is a ledger that lost its contents, or
                // a placeholder. Silently starting a fresh, empty ledger in it would hide that.
                return Err(Error::NotALedger {
                    path: path.display().to_string(),
                    detail: "the file is empty (0 bytes); delete it to start a new ledger".into(),
                });
            }
        }
        let not_ledger = |detail| Error::NotALedger {
            path: path.display().to_string(),
            detail,
        };
        no_panic(not_ledger, || {
            let mut builder = redb::Builder::new();
            builder.set_cache_size(options.cache_size_bytes);
            let db = builder.create(path).map_err(|e| map_open_error(path, e))?;
            Self::init(db, Some(path.to_path_buf()), options)
        })
    }

    /// A ledger that lives in memory only, with default [`Options`]. For tests and demos.
    pub fn in_memory() -> Result<Ledger> {
        Self::in_memory_with(Options::default())
    }

    /// A ledger that lives in memory only.
    pub fn in_memory_with(options: Options) -> Result<Ledger> {
        let db = redb::Builder::new()
            .set_cache_size(options.cache_size_bytes)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| map_open_error(Path::new(":memory:"), e))?;
        Self::init(db, None, options)
    }

    /// Open a ledger on a caller-supplied redb storage backend (fault injection, encryption).
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        options: Options,
    ) -> Result<Ledger> {
        let not_ledger = |detail| Error::NotALedger {
            path: "<backend>".into(),
            detail,
        };
        no_panic(not_ledger, || {
            let db = redb::Builder::new()
                .set_cache_size(options.cache_size_bytes)
                .create_with_backend(backend)
                .map_err(|e| map_open_error(Path::new("<backend>"), e))?;
            Self::init(db, None, options)
        })
    }

    fn init(db: Database, path: Option<PathBuf>, options: Options) -> Result<Ledger> {
        let shown = path
            .as_ref()
            .map_or_else(|| ":memory:".to_string(), |p| p.display().to_string());
        ensure_schema(&db, &shown)?;
        let ledger = Ledger {
            db,
            path,
            options,
            writer: Mutex::new(None),
            group: GroupCommit::default(),
            earliest_deadline_ms: AtomicU64::new(0),
            last_at_ms: AtomicU64::new(0),
            poison: Mutex::new(None),
        };
        {
            let mut writer = ledger.writer.lock();
            *writer = Some(ledger.reload()?);
        }
        if ledger.options.sweep_on_open {
            loop {
                match ledger.sweep_expired(MAX_SWEEP_LIMIT) {
                    Ok(report) if report.more_expired => continue,
                    Ok(_) => break,
                    // A clock far behind the log refuses every write, the catch-up sweep
                    // included; reads still work, so the ledger opens and writes say why.
                    Err(Error::ClockRegressed { .. }) => break,
                    // A damaged record must not make the file unopenable: open it, so that
                    // `verify` can name the damage.
                    Err(e @ Error::Corruption { .. }) => {
                        tracing::warn!(error = %e, "catch-up sweep stopped at a damaged record");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(ledger)
    }

    /// Read the writer state and the earliest deadline from disk.
    fn reload(&self) -> Result<WriterState> {
        let rtx = self.db.begin_read()?;
        let state = WriterState::load(&rtx.open_table(tables::TRANSACTIONS)?)?;
        let earliest = rtx
            .open_table(tables::DEADLINES)?
            .first()?
            .map_or(NO_DEADLINE, |(k, _)| k.value().0);
        self.earliest_deadline_ms.store(earliest, Ordering::SeqCst);
        self.last_at_ms.store(state.last_at_ms, Ordering::SeqCst);
        Ok(state)
    }

    /// The file this ledger lives in, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The time the next write would be stamped with: the clock, but never before the last
    /// committed transaction.
    pub fn now_ms(&self) -> u64 {
        self.options
            .clock
            .now_ms()
            .max(self.last_at_ms.load(Ordering::SeqCst))
    }

    /// The earliest deadline of a running generation, from memory.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match self.earliest_deadline_ms.load(Ordering::SeqCst) {
            NO_DEADLINE => None,
            t => Some(t),
        }
    }

    fn effective_now(&self, state: &WriterState) -> Result<u64> {
        let clock = self.options.clock.now_ms();
        if clock >= state.last_at_ms {
            return Ok(clock);
        }
        let behind_ms = state.last_at_ms - clock;
        if behind_ms <= self.options.max_clock_regression_ms {
            Ok(state.last_at_ms)
        } else {
            Err(Error::ClockRegressed {
                now_ms: clock,
                last_ms: state.last_at_ms,
                behind_ms,
                tolerance_ms: self.options.max_clock_regression_ms,
            })
        }
    }

    pub(crate) fn set_poison(&self, message: String) {
        *self.poison.lock() = Some(message);
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.poison.lock() {
            Some(message) => Err(Error::Poisoned {
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Apply `ops` in one write transaction with one durable commit.
    fn commit_batch(&self, ops: &[Op]) -> Vec<Result<Outcome>> {
        let all = |e: Error| ops.iter().map(|_| Err(e.clone())).collect();
        if let Err(e) = self.check_poison() {
            return all(e);
        }
        let mut writer = self.writer.lock();
        let state = match *writer {
            Some(s) => s,
            None => match self.reload() {
                Ok(s) => {
                    *writer = Some(s);
                    s
                }
                Err(e) => return all(e),
            },
        };
        let now_ms = match self.effective_now(&state) {
            Ok(t) => t,
            Err(e) => return all(e),
        };
        match self.run_batch(ops, state, now_ms) {
            Ok((results, new_state, earliest)) => {
                *writer = Some(new_state);
                self.last_at_ms.store(new_state.last_at_ms, Ordering::SeqCst);
                if let Some(earliest) = earliest {
                    self.earliest_deadline_ms
                        .store(earliest.unwrap_or(NO_DEADLINE), Ordering::SeqCst);
                }
                drop(writer);
                // Only now, after the durable commit, do the refunds exist: tell the app.
                self.log_refunds(state.next_txn_id, &results);
                results
            }
            Err(e) => {
                // The commit may or may not have landed: forget the cached state and force the
                // next idle check to look at the disk.
                *writer = None;
                self.earliest_deadline_ms.store(0, Ordering::SeqCst);
                all(e)
            }
        }
    }

    /// Emit an info event for every refund a committed batch wrote: failure reports, sweep
    /// refunds, and lazy expiries (a late `complete` answered with
    /// [`Error::GenerationRefunded`] whose refund is newer than `first_new_txn`).
    fn log_refunds(&self, first_new_txn: u64, results: &[Result<Outcome>]) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let emit = |r: &RefundReceipt| {
            tracing::info!(
                generation = %r.generation_id,
                workspace = %r.workspace,
                reason = r.reason.as_str(),
                amount_credits = r.amount_credits,
                refund_txn = r.refund_txn,
                usage_txn = r.usage_txn,
                "refunded generation"
            );
        };
        for result in results {
            match result {
                Ok(Outcome::Fail(r)) if !r.replay => emit(r),
                Ok(Outcome::Sweep(report)) => report.refunds.iter().for_each(emit),
                Err(Error::GenerationRefunded {
                    generation,
                    reason,
                    refund_txn,
                }) if *refund_txn >= first_new_txn => {
                    // The error names the refund; its workspace and amount are one read away.
                    let (workspace, amount_credits) = match self.transaction(*refund_txn) {
                        Ok(v) => (v.workspace, v.amount_credits.unsigned_abs()),
                        Err(_) => (String::new(), 0),
                    };
                    tracing::info!(
                        generation = %generation,
                        workspace = %workspace,
                        reason = reason.as_str(),
                        amount_credits,
                        refund_txn = *refund_txn,
                        "refunded generation (completion arrived after the deadline)"
                    );
                }
                _ => {}
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn run_batch(
        &self,
        ops: &[Op],
        state: WriterState,
        now_ms: u64,
    ) -> Result<(Vec<Result<Outcome>>, WriterState, Option<Option<u64>>)> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(match self.options.durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::None => redb::Durability::None,
        })?;
        txn.set_quick_repair(self.options.quick_repair);
        let config = EngineConfig {
            default_timeout_ms: self.options.default_timeout_ms,
        };
        let (results, new_state, dirty, earliest) = {
            let mut ctx = Ctx::open(&txn, state, now_ms, config)?;
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(ctx.apply(op));
                if ctx.broken {
                    break;
                }
            }
            if ctx.broken {
                let e = results
                    .pop()
                    .and_then(|r| r.err())
                    .unwrap_or_else(|| Error::storage("a write failed"));
                return Err(e);
            }
            let earliest = if ctx.deadlines_changed {
                Some(ctx.earliest_deadline()?)
            } else {
                None
            };
            (results, ctx.state, ctx.dirty, earliest)
        };
        if !dirty {
            txn.abort()?;
            return Ok((results, state, None));
        }
        txn.commit()?;
        Ok((results, new_state, earliest))
    }

    fn submit(&self, op: Op) -> Result<Outcome> {
        self.check_poison()?;
        self.group.submit(op, |ops| self.commit_batch(ops))
    }

    /// Apply a batch of operations in one write transaction with one durable commit, for
    /// importers and replays. Each operation gets its own result; one that is refused changes
    /// nothing and does not disturb the others. At most [`MAX_BATCH_OPS`] operations.
    ///
    /// ```
    /// use credit_ledger::{Credit, Ledger, Op, Outcome, StartGeneration};
    /// let ledger = Ledger::in_memory()?;
    /// let results = ledger.apply(&[
    ///     Op::Credit(Credit::purchase("ws", 10, "order-1")),
    ///     Op::Start(StartGeneration::new("g1", "ws", "Quick Video", 4)),
    ///     Op::Start(StartGeneration::new("g2", "ws", "Quick Video", 40)), // too expensive
    /// ]);
    /// assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_err());
    /// assert_eq!(ledger.balance("ws")?.balance_credits, 6);
    /// # Ok::<(), credit_ledger::Error>(())
    /// ```
    pub fn apply(&self, ops: &[Op]) -> Vec<Result<Outcome>> {
        if ops.is_empty() {
            return Vec::new();
        }
        if let Err(e) = validate::limit("batch size", ops.len() as u64, MAX_BATCH_OPS as u64) {
            return ops.iter().map(|_| Err(e.clone().into())).collect();
        }
        self.commit_batch(ops)
    }

    /// Add credits to a workspace, creating it on its first credit. Retrying with the same
    /// idempotency key returns the original receipt with `replay: true`.
    pub fn credit(&self, credit: Credit) -> Result<Receipt> {
        match self.submit(Op::Credit(credit))? {
            Outcome::Credit(r) => Ok(r),
            other => unreachable!("credit produced {other:?}"),
        }
    }

    /// Apply an operator's signed correction. It never takes a balance below zero.
    pub fn adjust(&self, adjust: Adjust) -> Result<Receipt> {
        match self.submit(Op::Adjust(adjust))? {
            Outcome::Adjust(r) => Ok(r),
            other => unreachable!("adjust produced {other:?}"),
        }
    }

    /// Charge a generation's cost as a Usage transaction and start its deadline.
    ///
    /// Retrying with the same generation id and parameters charges nothing more and returns
    /// the original charge (`replay: true`); different parameters are an [`Error::Conflict`]
    /// naming the field.
    pub fn start_generation(&self, start: StartGeneration) -> Result<Charge> {
        match self.submit(Op::Start(start))? {
            Outcome::Start(c) => Ok(c),
            other => unreachable!("start produced {other:?}"),
        }
    }

    /// Mark a generation as succeeded. Its Usage then shows `Completed`.
    ///
    /// If the deadline has already passed, the generation is refunded with reason `Timeout`
    /// in this same write and the call returns [`Error::GenerationRefunded`].
    pub fn complete_generation(&self, generation_id: &str) -> Result<Completion> {
        match self.submit(Op::Complete {
            generation_id: generation_id.to_string(),
        })? {
            Outcome::Complete(c) => Ok(c),
            other => unreachable!("complete produced {other:?}"),
        }
    }

    /// Report a failed generation: its full cost is refunded at once, in the same atomic write.
    ///
    /// Reporting it again returns the original refund (`replay: true`). If the deadline had
    /// already passed, the refund's reason is `Timeout`. A longer message than
    /// [`MAX_MESSAGE_BYTES`](crate::limits::MAX_MESSAGE_BYTES) is cut and marked as cut.
    pub fn fail_generation(
        &self,
        generation_id: &str,
        reason: RefundReason,
        message: &str,
    ) -> Result<RefundReceipt> {
        match self.submit(Op::Fail {
            generation_id: generation_id.to_string(),
            reason,
            message: message.to_string(),
        })? {
            Outcome::Fail(r) => Ok(r),
            other => unreachable!("fail produced {other:?}"),
        }
    }

    /// Refund up to `limit` running generations whose deadline has passed, with reason
    /// `Timeout`. When nothing can have expired (the earliest deadline, kept in memory, is
    /// still ahead) it returns at once without touching the disk.
    pub fn sweep_expired(&self, limit: u32) -> Result<SweepReport> {
        validate::limit("sweep limit", u64::from(limit), u64::from(MAX_SWEEP_LIMIT))?;
        self.check_poison()?;
        let earliest = self.earliest_deadline_ms.load(Ordering::SeqCst);
        if self.now_ms() < earliest {
            return Ok(SweepReport {
                next_deadline_ms: self.next_deadline_ms(),
                ..SweepReport::default()
            });
        }
        match self.submit(Op::Sweep { limit })? {
            Outcome::Sweep(r) => Ok(r),
            other => unreachable!("sweep produced {other:?}"),
        }
    }

    fn read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// A workspace's balance, running totals and running generations.
    pub fn balance(&self, workspace: &str) -> Result<WorkspaceSummary> {
        validate::id("workspace", workspace)?;
        read_guard("workspaces", || query::workspace_summary(&self.read()?, workspace))
    }

    /// Workspaces in id order, after `after`, at most `limit` (1..=1000).
    pub fn workspaces(&self, after: Option<&str>, limit: u32) -> Result<Vec<WorkspaceSummary>> {
        validate::limit(
            "page limit",
            u64::from(limit),
            u64::from(crate::limits::MAX_PAGE_LIMIT),
        )?;
        read_guard("workspaces", || query::list_workspaces(&self.read()?, after, limit))
    }

    /// The sums over all workspaces, for a conservation check:
    /// `granted - spent + refunded + adjusted_in - adjusted_out == balance`.
    pub fn totals(&self) -> Result<LedgerTotals> {
        read_guard("workspaces", || query::totals(&self.read()?))
    }

    /// A generation's lifecycle: charge, deadline, state, refund.
    pub fn generation(&self, generation_id: &str) -> Result<GenerationView> {
        validate::id("generation id", generation_id)?;
        read_guard("generations", || {
            query::generation_view(&self.read()?, generation_id, self.now_ms())
        })
    }

    /// One transaction's credit summary: balance before, the action, the new balance, and the
    /// links between a Usage and its Refund.
    pub fn transaction(&self, txn_id: u64) -> Result<TransactionView> {
        read_guard("transactions", || query::transaction_view(&self.read()?, txn_id))
    }

    /// A page of a workspace's history, newest first, filtered. Pass the returned
    /// `next_cursor` to get the next page; a page costs the same at any depth.
    pub fn history(
        &self,
        workspace: &str,
        filter: &HistoryFilter,
        page: &PageRequest,
    ) -> Result<HistoryPage> {
        validate::id("workspace", workspace)?;
        read_guard("workspace_history", || {
            query::history::history(&self.read()?, workspace, filter, page)
        })
    }

    /// Failures and refunds by reason and by feature within `window`.
    pub fn stats(&self, window: TimeWindow) -> Result<Stats> {
        if let (Some(since_ms), Some(until_ms)) = (window.since_ms, window.until_ms) {
            if since_ms > until_ms {
                return Err(InvalidInput::EmptyWindow { since_ms, until_ms }.into());
            }
        }
        read_guard("transactions", || query::stats::stats(&self.read()?, window))
    }

    /// Check every invariant of the stored ledger. An empty report means healthy.
    pub fn verify(&self) -> Result<AuditReport> {
        read_guard("(audit)", || audit::verify(&self.read()?))
    }
}

/// Create the tables of a new file, or check that an existing one is a ledger of a version
/// this build reads.
fn ensure_schema(db: &Database, shown: &str) -> Result<()> {
    let not_ledger = |detail: String| Error::NotALedger {
        path: shown.to_string(),
        detail,
    };
    let txn = db.begin_write()?;
    let names: Vec<String> = txn
        .list_tables()?
        .map(|h| redb::TableHandle::name(&h).to_string())
        .collect();
    if names.is_empty() {
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(tables::META_SCHEMA_KEY, [tables::SCHEMA_VERSION].as_slice())?;
            txn.open_table(tables::WORKSPACES)?;
            txn.open_table(tables::TRANSACTIONS)?;
            txn.open_table(tables::HISTORY)?;
            txn.open_table(tables::GENERATIONS)?;
            txn.open_table(tables::DEADLINES)?;
            txn.open_table(tables::IDEMPOTENCY)?;
        }
        txn.commit()?;
        return Ok(());
    }
    if !names.iter().any(|n| n == "meta") {
        return Err(not_ledger(format!(
            "it holds the tables {names:?} and no credit-ledger metadata"
        )));
    }
    let meta = txn
        .open_table(tables::META)
        .map_err(|e| not_ledger(e.to_string()))?;
    let version = meta
        .get(tables::META_SCHEMA_KEY)?
        .and_then(|v| v.value().first().copied());
    match version {
        None => return Err(not_ledger("its metadata has no schema version".into())),
        Some(v) if v > tables::SCHEMA_VERSION => {
            return Err(Error::UnsupportedFormat {
                found: v,
                supported: tables::SCHEMA_VERSION,
            })
        }
        Some(_) => {}
    }
    drop(meta);
    // Every table must be there with the right key and value types.
    macro_rules! check {
        ($($t:expr),*) => {$(
            txn.open_table($t).map_err(|e| not_ledger(e.to_string()))?;
        )*};
    }
    check!(
        tables::WORKSPACES,
        tables::TRANSACTIONS,
        tables::HISTORY,
        tables::GENERATIONS,
        tables::DEADLINES,
        tables::IDEMPOTENCY
    );
    txn.abort()?;
    Ok(())
}
