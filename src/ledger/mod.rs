//! [`Ledger`]: the public operations. Opening lives in `open.rs`, the write path in
//! `write.rs`, group commit in `commit.rs`, the journal's replay and checkpoints in
//! `checkpoint.rs`, online backups in `backup.rs`, and the reads in `read.rs`.

mod backup;
mod checkpoint;
mod commit;
mod open;
mod options;
mod panic_guard;
mod read;
mod subscribe;
mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase};

pub use checkpoint::{JournalDiscard, JOURNAL_DISCARDED_TITLE};
pub use options::{Durability, Options, DEFAULT_CACHE_SIZE_BYTES};
pub use panic_guard::inside_panic_guard;
pub use subscribe::{FeedEvent, Subscription};

use crate::engine::{WarmGrants, WriterState};
use crate::error::{Error, Result};
use crate::model::limits::{MAX_BATCH_OPS, MAX_SWEEP_LIMIT};
use crate::model::{
    validate, AckReceipt, Adjust, AlertReceipt, Charge, Completion, Credit, GrantClosure, Op,
    Outcome, Receipt, RefundReason, RefundReceipt, StartGeneration, SweepReport, VoidGrant,
};
use crate::storage::journal::Journal;
use crate::storage::journal_file::JournalFile;
use commit::GroupCommit;

/// "No running generation" in the earliest-deadline cache.
const NO_DEADLINE: u64 = u64::MAX;

/// Opens the database again after an I/O error.
type Reopen = Box<dyn Fn() -> Result<Database> + Send + Sync>;

/// Where the database comes from, and so how it can be reopened.
enum Source {
    /// A file: reopened by path.
    File(PathBuf),
    /// A caller's backend factory: reopened by calling it again.
    Factory(Reopen),
    /// Memory or a one-off backend: cannot be reopened.
    Fixed(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Factory(_) => f.write_str("<backend>"),
            Source::Fixed(name) => f.write_str(name),
        }
    }
}

/// An embedded credit ledger. Share one per file through `Arc<Ledger>`: it is `Send + Sync`,
/// and concurrent writers are group-committed.
///
/// See the [crate docs](crate) for an example.
pub struct Ledger {
    /// The database; `None` only while it is being reopened, if reopening failed, or for a
    /// read-only ledger.
    db: RwLock<Option<Database>>,
    /// The database of a ledger opened with [`Ledger::open_read_only`].
    reader: Option<ReadOnlyDatabase>,
    /// The journal's file, locked for the ledger's whole life (through reopens): a file
    /// ledger's "this ledger is open" lock. `None` in memory, on a custom backend, and for a
    /// read-only ledger that has no journal file.
    journal_file: Option<JournalFile>,
    source: Source,
    options: Options,
    /// The writer's cached state; `None` after a failed commit, so the next write reloads it.
    writer: Mutex<Option<WriterState>>,
    /// The grant caches of the last committed batch, and the writer state they are right for
    /// (see [`WarmGrants`]); locked only by the writer, after `writer`.
    warm: Mutex<Option<(WriterState, WarmGrants)>>,
    /// The last commit failed: reopen the database before the next write.
    needs_reopen: AtomicBool,
    /// The write-ahead journal of a file ledger with `Durability::Immediate`; locked only by
    /// the writer, after `writer`.
    journal: Mutex<Option<Journal>>,
    /// What the operator's journal discard threw away when this ledger was opened, if anything.
    journal_discard: Option<JournalDiscard>,
    group: GroupCommit,
    /// The earliest running deadline, so an idle sweep check needs no I/O.
    earliest_deadline_ms: AtomicU64,
    /// The last committed timestamp, for the idle check's notion of "now".
    last_at_ms: AtomicU64,
    /// Set when a background thread of this ledger panicked.
    poison: Mutex<Option<String>>,
    /// Receivers of committed entries ([`Ledger::subscribe`]).
    feed: subscribe::Subscribers,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("source", &self.source.to_string())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Run `f` on the open database, under the panic guard (see [`open::no_panic`]): a redb
    /// panic on a damaged page becomes the error `on_panic` makes of its message.
    fn with_db<T>(
        &self,
        on_panic: impl FnOnce(String) -> Error,
        f: impl FnOnce(&Database) -> Result<T>,
    ) -> Result<T> {
        match &*self.db.read() {
            Some(db) => open::no_panic(on_panic, || f(db)),
            None if self.reader.is_some() => Err(Error::ReadOnly {
                path: self.source.to_string(),
            }),
            None => Err(Error::Storage {
                message: format!(
                    "`{}` could not be reopened after an I/O error; the next write tries again",
                    self.source
                ),
            }),
        }
    }

    /// Run `f` on a fresh read transaction, of a writable or a read-only ledger, under the
    /// panic guard.
    fn with_snapshot<T>(
        &self,
        on_panic: impl FnOnce(String) -> Error,
        f: impl FnOnce(ReadTransaction) -> Result<T>,
    ) -> Result<T> {
        match &self.reader {
            Some(reader) => open::no_panic(on_panic, || f(reader.begin_read()?)),
            None => self.with_db(on_panic, |db| f(db.begin_read()?)),
        }
    }

    /// Whether the ledger was opened with [`Ledger::open_read_only`]: every write fails with
    /// [`Error::ReadOnly`].
    pub fn is_read_only(&self) -> bool {
        self.reader.is_some()
    }

    /// The file this ledger lives in (its canonical path, symlinks resolved), or `None` in
    /// memory or on a custom backend.
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(p) => Some(p),
            _ => None,
        }
    }

    /// What opening this ledger discarded from its journal, with
    /// [`Options::discard_journal`] on and a journal that could not be replayed; `None` when
    /// nothing was discarded.
    pub fn journal_discard(&self) -> Option<&JournalDiscard> {
        self.journal_discard.as_ref()
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

    /// Run one operation on its own: durable when it returns, group-committed with
    /// concurrent callers. The typed methods ([`credit`](Self::credit),
    /// [`start_generation`](Self::start_generation)...) are this with a typed receipt; this
    /// form suits callers that replay a stream of [`Op`]s one by one.
    ///
    /// ```
    /// use credit_ledger::{Credit, Ledger, Op, Outcome};
    /// let ledger = Ledger::in_memory()?;
    /// let out = ledger.execute(Op::Credit(Credit::grant("ws", 5, "welcome")))?;
    /// assert!(matches!(out, Outcome::Credit(r) if r.balance_after_credits == 5));
    /// # Ok::<(), credit_ledger::Error>(())
    /// ```
    pub fn execute(&self, op: Op) -> Result<Outcome> {
        match op {
            // The sweep's idle check needs no write transaction.
            Op::Sweep { limit } => self.sweep_expired(limit).map(Outcome::Sweep),
            op => self.submit(op),
        }
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

    /// Store that `consumer` has processed the change feed up to and including `txn_id`, in a
    /// durable write of its own (journaled and group-committed like any other). Read on from
    /// [`position`](Self::position) after a restart: a consumer that crashed before acking
    /// sees those entries again, so delivery is at least once, and each entry's id lets the
    /// receiver apply it exactly once.
    ///
    /// Acking the current position again is a replay (`replay: true`), so a retried ack is
    /// safe. Acking beyond the end of the log is [`Error::AckBeyondEnd`], going back is
    /// [`Error::AckBackwards`], and a new name beyond
    /// [`MAX_CONSUMERS`](crate::limits::MAX_CONSUMERS) is [`Error::TooManyConsumers`].
    ///
    /// ```
    /// use credit_ledger::{Credit, Ledger};
    /// let ledger = Ledger::in_memory()?;
    /// ledger.credit(Credit::purchase("ws", 10, "o-1"))?;
    /// let page = ledger.changes(ledger.position("server-sync")?, 100)?;
    /// // ... ship page.entries, then:
    /// ledger.ack("server-sync", page.next_after(0))?;
    /// assert_eq!(ledger.position("server-sync")?, 1);
    /// assert!(ledger.ack("server-sync", 1)?.replay);
    /// # Ok::<(), credit_ledger::Error>(())
    /// ```
    pub fn ack(&self, consumer: &str, txn_id: u64) -> Result<AckReceipt> {
        match self.submit(Op::Ack {
            consumer: consumer.to_string(),
            txn_id,
        })? {
            Outcome::Ack(r) => Ok(r),
            other => unreachable!("ack produced {other:?}"),
        }
    }

    /// Void what remains of a grant (every part of it that has not expired), as one Void
    /// transaction. Retrying with the same idempotency key returns the original receipt with
    /// `replay: true`. A grant with nothing left is [`Error::NothingToVoid`].
    pub fn void_grant(&self, void: VoidGrant) -> Result<GrantClosure> {
        match self.submit(Op::VoidGrant(void))? {
            Outcome::VoidGrant(r) => Ok(r),
            other => unreachable!("void produced {other:?}"),
        }
    }

    /// Turn on an edge-triggered balance alert for `workspace`: each transaction that takes
    /// its balance from at or above `threshold_credits` to below it writes one `BalanceLow`
    /// notification into the log, in the same commit. Debits that stay below write nothing
    /// more; going back up and down again writes one more. Notifications appear in the
    /// change feed and in history (kind [`TxnKind::BalanceLow`](crate::TxnKind::BalanceLow))
    /// and move no credits. Setting the same threshold again is a replay; a threshold of 0
    /// or above [`MAX_AMOUNT_CREDITS`](crate::limits::MAX_AMOUNT_CREDITS) is
    /// [`Error::InvalidInput`]. A balance already below the new threshold writes nothing
    /// until it has come back up.
    ///
    /// ```
    /// use credit_ledger::{Credit, Ledger, StartGeneration, TxnKind};
    /// let ledger = Ledger::in_memory()?;
    /// ledger.credit(Credit::purchase("ws", 100, "o-1"))?;
    /// ledger.set_alert("ws", 50)?;
    /// ledger.start_generation(StartGeneration::new("g-1", "ws", "HD Video", 60))?;
    /// let last = ledger.changes(1, 10)?.entries.pop().unwrap();
    /// assert_eq!((last.kind, last.alert_threshold_credits), (TxnKind::BalanceLow, Some(50)));
    /// assert_eq!(ledger.balance("ws")?.balance_credits, 40);
    /// # Ok::<(), credit_ledger::Error>(())
    /// ```
    pub fn set_alert(&self, workspace: &str, threshold_credits: u64) -> Result<AlertReceipt> {
        self.submit_alert(workspace, Some(threshold_credits))
    }

    /// Turn off the balance alert of `workspace` (a replay when none is set).
    pub fn remove_alert(&self, workspace: &str) -> Result<AlertReceipt> {
        self.submit_alert(workspace, None)
    }

    fn submit_alert(
        &self,
        workspace: &str,
        threshold_credits: Option<u64>,
    ) -> Result<AlertReceipt> {
        match self.submit(Op::SetAlert {
            workspace: workspace.to_string(),
            threshold_credits,
        })? {
            Outcome::Alert(r) => Ok(r),
            other => unreachable!("set_alert produced {other:?}"),
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
}
