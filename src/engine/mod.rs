//! The operations, as state transitions inside one redb write transaction.
//!
//! Every operation first reads and checks everything it needs, and only then writes. So an
//! operation that is refused (insufficient credits, a conflict, a bad id) leaves no trace, and
//! it cannot spoil the other operations that share its write transaction. A storage error in
//! the middle of the writes marks the whole transaction broken, and the caller aborts it.

mod credit;
mod generation;
pub(crate) mod grants;
mod lazy;
mod lots;
mod notify;
mod sweep;

use std::collections::HashMap;

use redb::{ReadableTable, Table, WriteTransaction};

use crate::error::Error;
use crate::model::records::{
    AllocationRecord, GenState, GenerationRecord, GrantBook, GrantRecord, TxnRecord,
    WorkspaceRecord,
};
use crate::model::{Op, Outcome};
use crate::storage::codec;
use crate::storage::tables::{self, Category};
use lazy::LazyTable;
use lots::LotCache;
pub(crate) use lots::WarmGrants;

/// What the writer keeps in memory between transactions: derived from the last committed
/// transaction, reloaded from disk after any failed commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterState {
    /// The id the next transaction gets.
    pub next_txn_id: u64,
    /// The timestamp of the last committed transaction.
    pub last_at_ms: u64,
    /// The CRC of the last committed transaction's record: the next one's `prev_crc`.
    pub last_crc: u32,
}

impl WriterState {
    /// Read the state from the log.
    pub fn load(txns: &impl ReadableTable<u64, &'static [u8]>) -> Result<Self, Error> {
        match txns.last()? {
            None => Ok(WriterState {
                next_txn_id: 1,
                last_at_ms: 0,
                last_crc: 0,
            }),
            Some((k, v)) => {
                let id = k.value();
                let rec = tables::decode_txn(id, v.value())?;
                Ok(WriterState {
                    next_txn_id: id.checked_add(1).ok_or_else(|| Error::Corruption {
                        table: "transactions",
                        key: id.to_string(),
                        detail: "transaction id space exhausted".into(),
                    })?,
                    last_at_ms: rec.at_ms,
                    last_crc: codec::record_crc(v.value()),
                })
            }
        }
    }
}

/// Settings the operations need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineConfig {
    pub default_timeout_ms: u64,
    /// How long credits a refund gives back to an expired (or soon expiring) grant stay
    /// spendable: [`Options::refund_grace_ms`](crate::Options::refund_grace_ms).
    pub refund_grace_ms: u64,
    /// How long before its expiry a grant gets its `GrantExpiring` notice (`None`: never):
    /// [`Options::grant_expiring_notice_ms`](crate::Options::grant_expiring_notice_ms).
    pub grant_expiring_notice_ms: Option<u64>,
    /// Whether the batch's time came from a clock the write path trusts.
    pub clock: ClockCheck,
}

/// What the write path found when it read the clock for a batch. With an untrusted clock the
/// batch is stamped with a time the log can accept (the last committed time, or the wall
/// clock), every refund goes ahead, and every other write is refused with the error
/// [`ClockCheck::refusal`] names: a refund is never refused because of the clock.
///
/// The journal replays only batches with a trusted clock (the write path commits the others
/// straight to redb), so a replay never needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClockCheck {
    /// The reading is usable (or within the regression tolerance).
    Trusted,
    /// The clock read `now_ms`, more than the tolerance before the last committed time.
    Behind {
        now_ms: u64,
        last_ms: u64,
        behind_ms: u64,
        tolerance_ms: u64,
    },
    /// The clock read `now_ms`, more than the tolerance after the wall clock.
    Ahead {
        now_ms: u64,
        wall_ms: u64,
        ahead_ms: u64,
        tolerance_ms: u64,
    },
}

impl ClockCheck {
    /// The error a write other than a refund gets, if the clock is not trusted.
    pub fn refusal(self) -> Option<Error> {
        match self {
            ClockCheck::Trusted => None,
            ClockCheck::Behind {
                now_ms,
                last_ms,
                behind_ms,
                tolerance_ms,
            } => Some(Error::ClockRegressed {
                now_ms,
                last_ms,
                behind_ms,
                tolerance_ms,
            }),
            ClockCheck::Ahead {
                now_ms,
                wall_ms,
                ahead_ms,
                tolerance_ms,
            } => Some(Error::ClockAhead {
                now_ms,
                wall_ms,
                ahead_ms,
                tolerance_ms,
            }),
        }
    }

    /// What the untrusted clock read, noted on every refund the batch writes.
    pub fn untrusted_reading_ms(self) -> Option<u64> {
        match self {
            ClockCheck::Trusted => None,
            ClockCheck::Behind { now_ms, .. } | ClockCheck::Ahead { now_ms, .. } => Some(now_ms),
        }
    }
}

/// What [`run`] did to a write transaction.
pub(crate) struct Applied {
    /// One result per operation.
    pub results: Vec<Result<Outcome, Error>>,
    /// The writer state after the batch.
    pub state: WriterState,
    /// Something was written: commit the transaction.
    pub dirty: bool,
    /// The earliest running deadline, when the deadline index changed.
    pub earliest: Option<Option<u64>>,
    /// The grant caches as the batch left them: right for the next transaction once this one
    /// commits, and only then (see [`WarmGrants`]).
    pub warm: WarmGrants,
}

/// Apply `ops` at `now_ms` inside `txn`. The live write path and the journal replay both go
/// through here, so that replaying a batch does exactly what running it did.
///
/// An `Err` means a write failed half-way: the caller must abort `txn`.
pub(crate) fn run(
    txn: &WriteTransaction,
    state: WriterState,
    now_ms: u64,
    config: EngineConfig,
    ops: &[Op],
    warm: WarmGrants,
) -> Result<Applied, Error> {
    let grants = ops.iter().any(touches_grants);
    let mut ctx = Ctx::open(txn, state, now_ms, config, grants)?;
    ctx.lots = warm.lots;
    ctx.book_cache = warm.books;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(ctx.apply(op));
        if ctx.broken {
            break;
        }
    }
    if !ctx.broken {
        ctx.flush()?;
    }
    if ctx.broken {
        return Err(results
            .pop()
            .and_then(|r| r.err())
            .unwrap_or_else(|| Error::storage("a write failed")));
    }
    let earliest = if ctx.deadlines_changed {
        Some(ctx.earliest_deadline()?)
    } else {
        None
    };
    Ok(Applied {
        results,
        state: ctx.state,
        dirty: ctx.dirty,
        earliest,
        warm: WarmGrants {
            lots: std::mem::take(&mut ctx.lots),
            books: std::mem::take(&mut ctx.book_cache),
        }
        .bounded(),
    })
}

/// Append a zero-credit Adjustment titled `title` with `memo` to the log of every workspace, at
/// `now_ms`: an audit note that each workspace's history shows and `verify` checks like any
/// other record (the operator's journal discard writes one). Returns the writer state after it.
pub(crate) fn note_every_workspace(
    txn: &WriteTransaction,
    state: WriterState,
    now_ms: u64,
    config: EngineConfig,
    title: &str,
    memo: &str,
) -> Result<WriterState, Error> {
    // A note moves no credits: it needs no grant tables.
    let mut ctx = Ctx::open(txn, state, now_ms, config, false)?;
    let mut ids = Vec::new();
    for entry in ctx.workspaces.iter()? {
        ids.push(entry?.0.value().to_string());
    }
    for ws in &ids {
        credit::note(&mut ctx, ws, title, memo)?;
    }
    ctx.flush()?;
    if ctx.broken {
        return Err(Error::storage("a write failed"));
    }
    Ok(ctx.state)
}

/// The consumers and alerts tables, which a version 1 file lacks until the first write that
/// needs them.
pub(crate) struct FeedTables<'txn> {
    /// Only an ack uses it.
    pub consumers: LazyTable<'txn, &'static str, u64>,
    pub alerts: Table<'txn, &'static str, u64>,
}

impl<'txn> FeedTables<'txn> {
    /// Open the tables if the file has them (schema 2 and later); a version 1 file has none,
    /// and opening them in a write transaction would create them, changing every write of a
    /// file that never uses them.
    fn open_existing(
        txn: &'txn WriteTransaction,
        version: Option<u8>,
    ) -> Result<Option<Self>, Error> {
        if version.is_some_and(|v| v >= tables::FEED_SCHEMA_VERSION) {
            Self::open(txn).map(Some)
        } else {
            Ok(None)
        }
    }

    fn open(txn: &'txn WriteTransaction) -> Result<Self, Error> {
        Ok(FeedTables {
            consumers: LazyTable::new(txn, tables::CONSUMERS),
            alerts: txn.open_table(tables::ALERTS)?,
        })
    }

    /// Create the tables in a version 1 file and record version 2, which says that records
    /// of that version (a `BalanceLow` notification) may follow, so an older build refuses
    /// the file with a clear error instead of failing to decode them.
    ///
    /// A file from before schema 4 also gets its history index moved to the current layout
    /// here, in `history` (the write transaction's open history table): see
    /// [`record_current_schema`].
    fn create(
        txn: &'txn WriteTransaction,
        history: &mut Table<'txn, (&'static str, u8, u64), ()>,
        next_txn_id: u64,
    ) -> Result<Self, Error> {
        record_current_schema(txn, history, next_txn_id)?;
        // The version recorded promises every table of it, the grant and notice tables
        // included: opening a table creates it.
        GrantTables::create(txn)?;
        txn.open_table(tables::GRANT_NOTICES)?;
        txn.open_table(tables::CONSUMERS)?;
        Self::open(txn)
    }
}

/// Record [`tables::SCHEMA_VERSION`] in `meta`, and bring the history index of an older file
/// to the layout that version promises ([`tables::migrate_history`]); in a file from before
/// schema 6, the Refunds from `next_txn_id` on (the transaction the write appends next) carry
/// their lots, and schema 5's `refund_pages` table is deleted. Every write that upgrades a
/// file comes through here, before it appends a transaction.
fn record_current_schema(
    txn: &WriteTransaction,
    history: &mut Table<'_, (&'static str, u8, u64), ()>,
    next_txn_id: u64,
) -> Result<(), Error> {
    let mut meta = txn.open_table(tables::META)?;
    let from_schema = tables::get_schema(&meta)?;
    meta.insert(tables::META_SCHEMA_KEY, [tables::SCHEMA_VERSION].as_slice())?;
    if from_schema < tables::REFUND_LOTS_SCHEMA_VERSION {
        // Schema 5's covering index is not kept up from here on: a stale copy would only
        // mislead. A file from before schema 5 has neither.
        txn.delete_table(tables::REFUND_PAGES)?;
        meta.remove(tables::META_REFUND_PAGES_FROM_KEY)?;
        tables::put_meta_u64(&mut meta, tables::META_REFUND_LOTS_FROM_KEY, next_txn_id)?;
    }
    drop(meta);
    tables::migrate_history(history, from_schema)
}

/// The grant tables, which a file from before schema 3 lacks until its first write of money.
pub(crate) struct GrantTables<'txn> {
    pub grants: Table<'txn, (&'static str, &'static str, u32), &'static [u8]>,
    /// Read by a charge whose workspace's lots are not cached yet, written when a lot opens,
    /// empties or closes: a warm charge needs neither.
    pub order: LazyTable<'txn, tables::OrderKey<'static>, ()>,
    pub expiries: Table<'txn, (u64, &'static str, &'static str, u32), ()>,
    /// Only charges and refunds that span lots, and the moves that are not charges, use it.
    pub allocations: LazyTable<'txn, u64, &'static [u8]>,
    /// Read once per workspace (then cached), written when one changes.
    pub books: LazyTable<'txn, &'static str, &'static [u8]>,
}

impl<'txn> GrantTables<'txn> {
    /// The grant tables of a file that has them; those that are lazy open on first use.
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, Error> {
        Ok(GrantTables {
            grants: txn.open_table(tables::GRANTS)?,
            order: LazyTable::new(txn, tables::GRANT_ORDER),
            expiries: txn.open_table(tables::GRANT_EXPIRIES)?,
            allocations: LazyTable::new(txn, tables::ALLOCATIONS),
            books: LazyTable::new(txn, tables::GRANT_BOOKS),
        })
    }

    /// Create the grant tables in a file from before schema 3 (opening a table creates it).
    pub(crate) fn create(txn: &WriteTransaction) -> Result<(), Error> {
        txn.open_table(tables::GRANTS)?;
        txn.open_table(tables::GRANT_ORDER)?;
        txn.open_table(tables::GRANT_EXPIRIES)?;
        txn.open_table(tables::ALLOCATIONS)?;
        txn.open_table(tables::GRANT_BOOKS)?;
        Ok(())
    }
}

/// Whether `op` may move credits between grants (every operation but an ack or an alert).
fn touches_grants(op: &Op) -> bool {
    !matches!(op, Op::Ack { .. } | Op::SetAlert { .. })
}

/// The fewest new `workspace_history` keys of one workspace and category that a batch files
/// through a cursor rather than one insert each. A cursor's run costs about as much to close
/// as ten inserts (it rebuilds the leaves and the path it touched; counted with
/// `examples/op_cost.rs` under valgrind: about 57k instructions a run, against 5.4k an
/// insert), then about 0.6k a key: a batch of starts on one workspace saves most of an insert
/// per key, one spread over 1,000 workspaces (runs of 1 to 3) would pay more.
const MIN_CURSOR_RUN: usize = 16;

/// The most log records a write transaction holds back before it writes them (and the history
/// entries filed with them) to their tables: a batch's records wait for its end, but an
/// operation that appends one record per workspace (the journal discard's note) or a large
/// sweep must not hold a million of them in memory. Runs this long lose nothing to the split.
const MAX_PENDING_RECORDS: usize = 4096;

/// One write transaction's worth of open tables and state.
pub(crate) struct Ctx<'txn> {
    pub workspaces: Table<'txn, &'static str, &'static [u8]>,
    /// Read through [`Ctx::txn_record`], which also sees [`Ctx::pending_log`].
    txns: Table<'txn, u64, &'static [u8]>,
    /// The log records this transaction appended, in id order, not yet in `txns`:
    /// [`Ctx::flush`] writes them in one ascending run through a cursor at the end of the
    /// table, which redb applies leaf by leaf instead of descending the tree once per record
    /// (a run shorter than [`MIN_CURSOR_RUN`] by insert). At most [`MAX_PENDING_RECORDS`].
    pending_log: Vec<(u64, Vec<u8>)>,
    /// The `workspace_history` entries this transaction filed, not yet in the table (nothing
    /// in a write reads the index): [`Ctx::flush`] sorts them and writes each run of adjacent
    /// keys (a workspace's new entries of one category) through one cursor.
    pending_history: Vec<(String, u8, u64)>,
    pub history: Table<'txn, (&'static str, u8, u64), ()>,
    pub generations: Table<'txn, &'static str, &'static [u8]>,
    pub deadlines: Table<'txn, (u64, &'static str), ()>,
    /// Only credits, adjustments and voids use it.
    pub idempotency: LazyTable<'txn, &'static str, u64>,
    /// `None` in a version 1 file until an operation needs them: see [`Ctx::feed_tables`].
    feed: Option<FeedTables<'txn>>,
    /// `None` only in a file from before schema 3 and a batch of acks and alerts alone.
    grant_tables: Option<GrantTables<'txn>>,
    /// `None` in a file from before the current schema until a grant gets a notice entry or
    /// a generation record is written (which records the current schema): see
    /// [`Ctx::notices_mut`].
    notices: Option<Table<'txn, tables::NoticeKey<'static>, u64>>,
    txn: &'txn WriteTransaction,
    pub state: WriterState,
    /// The time of this transaction: never before the last committed one.
    pub now_ms: u64,
    pub config: EngineConfig,
    /// Something was written: the transaction must be committed.
    pub dirty: bool,
    /// The deadline index changed: the earliest deadline must be re-read.
    pub deadlines_changed: bool,
    /// A write failed half-way: the transaction must be aborted.
    pub broken: bool,
    /// Workspace records read or changed in this transaction, and whether each changed. A
    /// batch of operations on one workspace reads its record once and writes it once, in
    /// [`Ctx::flush`], instead of once per operation.
    workspace_cache: HashMap<String, (WorkspaceRecord, bool)>,
    /// Notifications appended per workspace in this transaction: they count in the
    /// workspace's `txn_count`, added in [`Ctx::flush`] so the operations need not know.
    notifications: HashMap<String, u64>,
    /// The same for grant books.
    book_cache: HashMap<String, (Option<GrantBook>, bool)>,
    /// The same for grant lots: a batch of charges to one lot writes its record once (see
    /// [`lots`]).
    pub(crate) lots: LotCache,
}

impl<'txn> Ctx<'txn> {
    /// Open the tables of one write transaction. `grants`: the batch has an operation that
    /// may move grant credits; in a file from before schema 3 its grant tables (and the feed
    /// tables) are then created and the current schema recorded. That is written only if
    /// the batch writes something: otherwise the transaction is aborted, and a refused
    /// request changes nothing in any file.
    pub fn open(
        txn: &'txn WriteTransaction,
        state: WriterState,
        now_ms: u64,
        config: EngineConfig,
        grants: bool,
    ) -> Result<Self, Error> {
        let version = txn
            .open_table(tables::META)?
            .get(tables::META_SCHEMA_KEY)?
            .and_then(|v| v.value().first().copied());
        let mut history = txn.open_table(tables::HISTORY)?;
        let mut feed = FeedTables::open_existing(txn, version)?;
        let mut has_notices = version.is_some_and(|v| v >= tables::SCHEMA_VERSION);
        let has_grants = version.is_some_and(|v| v >= tables::GRANTS_SCHEMA_VERSION);
        let grant_tables = if has_grants {
            Some(GrantTables::open(txn)?)
        } else if grants {
            // The upgrade opens the feed tables itself: a table is open once per transaction.
            drop(feed.take());
            feed = Some(FeedTables::create(txn, &mut history, state.next_txn_id)?);
            has_notices = true;
            Some(GrantTables::open(txn)?)
        } else {
            None
        };
        let notices = if has_notices {
            Some(txn.open_table(tables::GRANT_NOTICES)?)
        } else {
            None
        };
        Ok(Ctx {
            workspaces: txn.open_table(tables::WORKSPACES)?,
            txns: txn.open_table(tables::TRANSACTIONS)?,
            pending_log: Vec::new(),
            pending_history: Vec::new(),
            history,
            generations: txn.open_table(tables::GENERATIONS)?,
            deadlines: txn.open_table(tables::DEADLINES)?,
            idempotency: LazyTable::new(txn, tables::IDEMPOTENCY),
            feed,
            grant_tables,
            notices,
            txn,
            state,
            now_ms,
            config,
            dirty: false,
            deadlines_changed: false,
            broken: false,
            workspace_cache: HashMap::new(),
            notifications: HashMap::new(),
            book_cache: HashMap::new(),
            lots: LotCache::default(),
        })
    }

    /// Apply one operation.
    pub fn apply(&mut self, op: &Op) -> Result<Outcome, Error> {
        match op {
            Op::Credit(c) => credit::credit(self, c).map(Outcome::Credit),
            Op::Adjust(a) => credit::adjust(self, a).map(Outcome::Adjust),
            Op::Start(s) => generation::start(self, s).map(Outcome::Start),
            Op::Complete { generation_id } => {
                generation::complete(self, generation_id).map(Outcome::Complete)
            }
            Op::Fail {
                generation_id,
                reason,
                message,
            } => generation::fail(self, generation_id, *reason, message).map(Outcome::Fail),
            Op::Sweep { limit } => sweep::sweep(self, *limit).map(Outcome::Sweep),
            Op::Ack { consumer, txn_id } => notify::ack(self, consumer, *txn_id).map(Outcome::Ack),
            Op::SetAlert {
                workspace,
                threshold_credits,
            } => notify::set_alert(self, workspace, *threshold_credits).map(Outcome::Alert),
            Op::VoidGrant(v) => grants::void(self, v).map(Outcome::VoidGrant),
        }
    }

    /// The grant tables. Every operation that may move grant credits opens them (see
    /// [`Ctx::open`]), and only such operations call this.
    pub fn gt(&self) -> &GrantTables<'txn> {
        self.grant_tables
            .as_ref()
            .expect("invariant: a batch that moves credits opens the grant tables")
    }

    fn gt_mut(&mut self) -> &mut GrantTables<'txn> {
        self.grant_tables
            .as_mut()
            .expect("invariant: a batch that moves credits opens the grant tables")
    }

    /// The pending-notice index, if the file has it yet.
    pub fn notices(&self) -> Option<&Table<'txn, tables::NoticeKey<'static>, u64>> {
        self.notices.as_ref()
    }

    /// The pending-notice index, created in a file from before schema 4 (which then records
    /// version 4, so that a build that cannot read `GrantExpiring` records refuses the file
    /// with a clear error instead of failing to decode them). Call only to write to it.
    pub fn notices_mut(
        &mut self,
    ) -> Result<&mut Table<'txn, tables::NoticeKey<'static>, u64>, Error> {
        if self.notices.is_none() {
            self.dirty = true;
            let created = (|| -> Result<_, Error> {
                record_current_schema(self.txn, &mut self.history, self.state.next_txn_id)?;
                Ok(self.txn.open_table(tables::GRANT_NOTICES)?)
            })();
            self.notices = Some(created.inspect_err(|_| self.broken = true)?);
        }
        Ok(self.notices.as_mut().expect("invariant: just opened"))
    }

    /// Record the current schema in a file from an older one (through the notice index,
    /// whose creation does that), before anything that schema changed is written. A refund
    /// calls it before it takes its id: in an older file, the Refund records carry their lots
    /// from that id on.
    pub fn current_schema(&mut self) -> Result<(), Error> {
        if self.notices.is_none() {
            self.notices_mut()?;
        }
        Ok(())
    }

    /// The consumers and alerts tables, if the file has them yet.
    pub fn existing_feed_tables(&self) -> Option<&FeedTables<'txn>> {
        self.feed.as_ref()
    }

    /// The consumers and alerts tables, created (with the schema upgrade) in a version 1 file.
    /// Call only for an operation that writes to them.
    pub fn feed_tables(&mut self) -> Result<&mut FeedTables<'txn>, Error> {
        if self.feed.is_none() {
            self.dirty = true;
            self.feed = Some(
                FeedTables::create(self.txn, &mut self.history, self.state.next_txn_id)
                    .inspect_err(|_| self.broken = true)?,
            );
        }
        Ok(self.feed.as_mut().expect("invariant: just opened"))
    }

    /// The earliest running deadline, pending grant expiry or due grant notice, read from the
    /// three indexes: the time the sweeper next has work.
    pub fn earliest_deadline(&self) -> Result<Option<u64>, Error> {
        let deadline = self.deadlines.first()?.map(|(k, _)| k.value().0);
        let expiry = match &self.grant_tables {
            Some(g) => g.expiries.first()?.map(|(k, _)| k.value().0),
            None => None,
        };
        let notice = match &self.notices {
            Some(t) => t.first()?.map(|(k, _)| k.value().0),
            None => None,
        };
        Ok([deadline, expiry, notice].into_iter().flatten().min())
    }

    /// A workspace's grant book as this transaction sees it; `None` for a workspace written
    /// before grants existed (see [`grants::ensure_book`]).
    pub fn book(&mut self, workspace: &str) -> Result<Option<GrantBook>, Error> {
        if let Some((book, _)) = self.book_cache.get(workspace) {
            return Ok(book.clone());
        }
        let book = tables::get_book(self.gt().books.table()?, workspace)?;
        self.book_cache
            .insert(workspace.to_string(), (book.clone(), false));
        Ok(book)
    }

    /// Change a workspace's grant book; it reaches the table in [`Ctx::flush`].
    pub fn put_book(&mut self, workspace: &str, book: &GrantBook) {
        self.dirty = true;
        self.book_cache
            .insert(workspace.to_string(), (Some(book.clone()), true));
    }

    /// Write a grant lot and keep its two index entries in step with it: `grant_order` while
    /// it is open with credits left, `grant_expiries` while it is open with an expiry. `old`
    /// is the lot as it was (`None` for a new lot).
    pub fn put_grant(&mut self, old: Option<&GrantRecord>, rec: &GrantRecord) -> Result<(), Error> {
        let in_order = lots::in_order;
        let in_expiries = |g: &GrantRecord| g.closed.is_none() && g.expires_at_ms.is_some();
        if let Some(o) = old {
            if in_order(o) && !(in_order(rec) && o.order_key() == rec.order_key()) {
                let r = self
                    .gt_mut()
                    .order
                    .write(|t| t.remove(o.order_key()).map(drop));
                self.write(r)?;
            }
            if in_expiries(o) && !in_expiries(rec) {
                if let Some(e) = o.expires_at_ms {
                    self.deadlines_changed = true;
                    let r = self
                        .gt_mut()
                        .expiries
                        .remove((e, o.workspace.as_str(), o.id.as_str(), o.lot))
                        .map(drop);
                    self.write(r)?;
                }
            }
        }
        if in_order(rec) && !old.is_some_and(|o| in_order(o) && o.order_key() == rec.order_key()) {
            let r = (self.gt_mut().order).write(|t| t.insert(rec.order_key(), ()).map(drop));
            self.write(r)?;
        }
        if in_expiries(rec) && !old.is_some_and(in_expiries) {
            if let Some(e) = rec.expires_at_ms {
                self.deadlines_changed = true;
                let r = self
                    .gt_mut()
                    .expiries
                    .insert((e, rec.workspace.as_str(), rec.id.as_str(), rec.lot), ())
                    .map(drop);
                self.write(r)?;
            }
        }
        self.dirty = true;
        self.lots.put(rec);
        Ok(())
    }

    /// Lot `lot` of grant `id` of `workspace`, as this transaction sees it. Every read of a
    /// grant lot in a write goes through here: the table is behind until [`Ctx::flush`].
    pub fn grant(
        &mut self,
        workspace: &str,
        id: &str,
        lot: u32,
    ) -> Result<Option<GrantRecord>, Error> {
        let table = &self
            .grant_tables
            .as_ref()
            .expect("invariant: a batch that moves credits opens the grant tables")
            .grants;
        self.lots.get(table, workspace, id, lot)
    }

    /// Take `credits` from lot `lot` of grant `id`, which this transaction's plan read: the
    /// cached lot changes in place, and leaves the drawdown index when it has nothing left
    /// (a take changes no other part of its index keys). Returns the lot as it is now.
    pub fn take_from_lot(
        &mut self,
        workspace: &str,
        id: &str,
        lot: u32,
        credits: u64,
    ) -> Result<&GrantRecord, Error> {
        self.dirty = true;
        let (rec, was_in_order) = self
            .lots
            .take(workspace, id, lot, credits)
            .expect("invariant: a take is of a lot its plan read into the cache")?;
        if was_in_order && !lots::in_order(rec) {
            // The key does not hold the remainder: it is the entry the lot had.
            let key = rec.order_key();
            let r = self
                .grant_tables
                .as_mut()
                .expect("invariant: a batch that moves credits opens the grant tables")
                .order
                .write(|t| t.remove(key).map(drop));
            if let Err(e) = r {
                self.broken = true;
                return Err(e);
            }
        }
        Ok(rec)
    }

    /// Record the grant lots transaction `txn_id` moved.
    pub fn put_allocations(&mut self, txn_id: u64, rec: &AllocationRecord) -> Result<(), Error> {
        let bytes = codec::encode(rec);
        let r = (self.gt_mut().allocations).write(|t| t.insert(txn_id, bytes.as_slice()).map(drop));
        self.write(r)
    }

    /// Run a write (redb's, or one whose table had to open first, see [`LazyTable`]); a
    /// failure marks the transaction broken.
    fn write<T, E: Into<Error>>(&mut self, r: Result<T, E>) -> Result<T, Error> {
        self.dirty = true;
        r.map_err(|e| {
            self.broken = true;
            e.into()
        })
    }

    /// Log record `id` as this transaction sees it: appended by it (and not yet flushed), or
    /// in the table.
    pub fn txn_record(&self, id: u64) -> Result<Option<TxnRecord>, Error> {
        if let Some(&(first, _)) = self.pending_log.first() {
            if id >= first {
                let Some((stored, bytes)) = usize::try_from(id - first)
                    .ok()
                    .and_then(|i| self.pending_log.get(i))
                else {
                    return Ok(None);
                };
                assert_eq!(*stored, id, "invariant: the pending log is dense");
                return tables::decode_txn(id, bytes).map(Some);
            }
        }
        tables::get_txn(&self.txns, id)
    }

    /// Write [`Ctx::pending_log`] to the log. The ids follow the table's last (the writer
    /// state was read from it), so a run that does not sort after it means the table changed
    /// under the writer: [`Error::Corruption`], and the transaction is aborted.
    fn flush_log(&mut self) -> Result<(), Error> {
        if self.pending_log.is_empty() {
            return Ok(());
        }
        let log = std::mem::take(&mut self.pending_log);
        if log.len() < MIN_CURSOR_RUN {
            for (id, bytes) in &log {
                let r = self.txns.insert(*id, bytes.as_slice()).map(drop);
                self.write(r)?;
            }
            return Ok(());
        }
        let r = (|| -> Result<(), Error> {
            let mut end = self
                .txns
                .upper_bound_mut(std::ops::Bound::<u64>::Unbounded)?;
            for (id, bytes) in &log {
                end.insert_before(*id, bytes.as_slice())
                    .map_err(|e| match e {
                        redb::CursorError::UnorderedKey => Error::Corruption {
                            table: "transactions",
                            key: id.to_string(),
                            detail: "the log already holds this id or a later one; run verify"
                                .into(),
                        },
                        other => redb::Error::from(other).into(),
                    })?;
            }
            end.close()?;
            Ok(())
        })();
        self.dirty = true;
        r.inspect_err(|_| self.broken = true)
    }

    /// Write [`Ctx::pending_history`] to the index, in key order. The new keys of one
    /// workspace and category are usually adjacent (their ids are the newest), so they go in
    /// through one cursor; a key that does not go where the cursor stands starts a new run
    /// at its own place, and a key already there (a damaged file's stray entry: the value is
    /// `()`) is left as it is, as an insert would.
    fn flush_history(&mut self) -> Result<(), Error> {
        if self.pending_history.is_empty() {
            return Ok(());
        }
        let mut keys = std::mem::take(&mut self.pending_history);
        keys.sort_unstable();
        let history = &mut self.history;
        let r = (|| -> Result<(), Error> {
            let key = |i: usize| {
                let (ws, cat, id) = &keys[i];
                (ws.as_str(), *cat, *id)
            };
            let mut i = 0;
            while i < keys.len() {
                let run_len = keys[i..]
                    .iter()
                    .take(MIN_CURSOR_RUN)
                    .take_while(|(ws, cat, _)| (ws, cat) == (&keys[i].0, &keys[i].1))
                    .count();
                if run_len < MIN_CURSOR_RUN {
                    // A short run goes in key by key: see [`MIN_CURSOR_RUN`].
                    for _ in 0..run_len {
                        history.insert(key(i), ())?;
                        i += 1;
                    }
                    continue;
                }
                let mut run = history.lower_bound_mut(std::ops::Bound::Included(key(i)))?;
                match run.insert_before(key(i), ()) {
                    // Unordered at the key's own place: it is already there.
                    Ok(()) | Err(redb::CursorError::UnorderedKey) => {}
                    Err(e) => return Err(redb::Error::from(e).into()),
                }
                i += 1;
                while i < keys.len() {
                    match run.insert_before(key(i), ()) {
                        Ok(()) => i += 1,
                        Err(redb::CursorError::UnorderedKey) => break,
                        Err(e) => return Err(redb::Error::from(e).into()),
                    }
                }
                run.close()?;
            }
            Ok(())
        })();
        self.dirty = true;
        r.inspect_err(|_| self.broken = true)
    }

    /// A workspace's record as this transaction sees it.
    pub fn workspace(&mut self, id: &str) -> Result<Option<WorkspaceRecord>, Error> {
        if let Some((rec, _)) = self.workspace_cache.get(id) {
            return Ok(Some(rec.clone()));
        }
        let rec = tables::get_workspace(&self.workspaces, id)?;
        if let Some(r) = &rec {
            self.workspace_cache
                .insert(id.to_string(), (r.clone(), false));
        }
        Ok(rec)
    }

    /// Change a workspace's record; it reaches the table in [`Ctx::flush`].
    pub fn put_workspace(&mut self, id: &str, rec: &WorkspaceRecord) -> Result<(), Error> {
        self.dirty = true;
        // Every operation reads a record before it writes it, so the entry is usually there.
        match self.workspace_cache.get_mut(id) {
            Some(slot) => *slot = (rec.clone(), true),
            None => {
                self.workspace_cache
                    .insert(id.to_string(), (rec.clone(), true));
            }
        }
        Ok(())
    }

    /// Write the changed workspace records, grant books and grant lots. Call once, after the
    /// last operation and before the commit.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.flush_log()?;
        self.flush_history()?;
        for (id, n) in std::mem::take(&mut self.notifications) {
            // Every notification follows a movement of the same workspace, which read its
            // record into the cache.
            let (rec, changed) = self
                .workspace_cache
                .get_mut(&id)
                .expect("invariant: a notified workspace was read in this transaction");
            rec.txn_count = rec
                .txn_count
                .checked_add(n)
                .ok_or_else(|| Error::Overflow {
                    workspace: id.clone(),
                    what: "the transaction count",
                })?;
            *changed = true;
        }
        let changed: Vec<(String, WorkspaceRecord)> = self
            .workspace_cache
            .drain()
            .filter(|(_, (_, changed))| *changed)
            .map(|(id, (rec, _))| (id, rec))
            .collect();
        for (id, rec) in changed {
            let bytes = codec::encode(&rec);
            let r = self
                .workspaces
                .insert(id.as_str(), bytes.as_slice())
                .map(drop);
            self.write(r)?;
        }
        // The book and lot caches stay, marked unchanged: they may seed the next transaction
        // (see [`WarmGrants`]).
        let mut books: Vec<(String, GrantBook)> = Vec::new();
        for (id, (book, changed)) in self.book_cache.iter_mut() {
            if std::mem::take(changed) {
                if let Some(b) = book {
                    books.push((id.clone(), b.clone()));
                }
            }
        }
        for (id, book) in books {
            let bytes = codec::encode(&book);
            let r =
                (self.gt_mut().books).write(|t| t.insert(id.as_str(), bytes.as_slice()).map(drop));
            self.write(r)?;
        }
        for rec in self.lots.take_changed() {
            let bytes = codec::encode(&rec);
            let r = self
                .gt_mut()
                .grants
                .insert(
                    (rec.workspace.as_str(), rec.id.as_str(), rec.lot),
                    bytes.as_slice(),
                )
                .map(drop);
            self.write(r)?;
        }
        Ok(())
    }

    /// Write a generation record. Its layout is schema 4's (`single_allocation`): in an older
    /// file the first one records version 4 (and so creates the notice index the version
    /// promises), so that an older build refuses the file instead of failing to decode it.
    pub fn put_generation(&mut self, rec: &GenerationRecord) -> Result<(), Error> {
        self.current_schema()?;
        let bytes = codec::encode(rec);
        let r = self
            .generations
            .insert(rec.id.as_str(), bytes.as_slice())
            .map(drop);
        self.write(r)
    }

    pub fn insert_deadline(&mut self, deadline_ms: u64, generation: &str) -> Result<(), Error> {
        self.deadlines_changed = true;
        let r = self
            .deadlines
            .insert((deadline_ms, generation), ())
            .map(drop);
        self.write(r)
    }

    pub fn remove_deadline(&mut self, deadline_ms: u64, generation: &str) -> Result<(), Error> {
        self.deadlines_changed = true;
        let r = self.deadlines.remove((deadline_ms, generation)).map(drop);
        self.write(r)
    }

    /// File a finished generation's Usage in the history index: its entry stays where its
    /// start filed it, and a refunded one gets its `UsageFailed` marker. That is schema 4's
    /// layout, so in an older file this records version 4 first (as
    /// [`Ctx::put_generation`] does), which moves the file's index to it.
    pub fn file_finished_usage(
        &mut self,
        workspace: &str,
        usage_txn: u64,
        state: GenState,
    ) -> Result<(), Error> {
        self.current_schema()?;
        if matches!(state, GenState::Refunded { .. }) {
            self.dirty = true;
            self.pending_history.push((
                workspace.to_string(),
                Category::UsageFailed as u8,
                usage_txn,
            ));
        }
        Ok(())
    }

    /// Refuse a write that is not a refund when the batch's clock is not trusted (see
    /// [`ClockCheck`]). [`Ctx::append`] calls it for every transaction but a Refund; a write
    /// that appends none (a completion) calls it itself.
    pub fn trust_clock(&self) -> Result<(), Error> {
        self.config.clock.refusal().map_or(Ok(()), Err)
    }

    /// Append a transaction to the log: assign its id, time and chain link, file it in the
    /// workspace history. When it takes the balance below the workspace's alert threshold,
    /// append the `BalanceLow` notification right after it, in the same write. Returns the
    /// stored record.
    ///
    /// Anything but a Refund is refused here, before any write, when the clock is not trusted;
    /// a Refund written with an untrusted clock gets a note of what the clock read
    /// ([`tables::CLOCK_NOTES`]).
    pub fn append(&mut self, rec: TxnRecord, category: Category) -> Result<TxnRecord, Error> {
        if rec.kind != crate::model::TxnKind::Refund {
            self.trust_clock()?;
        } else if let Some(read_ms) = self.config.clock.untrusted_reading_ms() {
            let id = self.state.next_txn_id;
            let r = self
                .txn
                .open_table(tables::CLOCK_NOTES)
                .map_err(Error::from)
                .and_then(|mut t| t.insert(id, read_ms).map(drop).map_err(Error::from));
            self.dirty = true;
            if let Err(e) = r {
                self.broken = true;
                return Err(e);
            }
        }
        let notification = notify::crossing(self, &rec)?;
        let rec = self.append_record(rec, category)?;
        if let Some(n) = notification {
            let n = self.append_record(n, notify::NOTIFICATION_CATEGORY)?;
            *self.notifications.entry(n.workspace).or_default() += 1;
        }
        Ok(rec)
    }

    fn append_record(
        &mut self,
        mut rec: TxnRecord,
        category: Category,
    ) -> Result<TxnRecord, Error> {
        // Every record is written in the current layout, which an older build cannot decode:
        // the file records the current schema first (see [`record_current_schema`]).
        self.current_schema()?;
        rec.id = self.state.next_txn_id;
        rec.at_ms = self.now_ms;
        rec.prev_crc = self.state.last_crc;
        // Ids are u64 and start at 1: running out would take 584 years at a billion per second,
        // so a log that has is a damaged one (an id written near the top by hand).
        // The operation may have written already: the batch aborts.
        let next_id = rec.id.checked_add(1).ok_or_else(|| Error::Corruption {
            table: "transactions",
            key: rec.id.to_string(),
            detail: "the log's ids have reached the end of their range; run verify, and restore \
                     from a backup"
                .into(),
        });
        let next_id = self.write(next_id)?;
        let bytes = codec::encode(&rec);
        self.dirty = true;
        self.pending_history
            .push((rec.workspace.clone(), category as u8, rec.id));
        self.state.next_txn_id = next_id;
        self.state.last_crc = codec::record_crc(&bytes);
        self.state.last_at_ms = self.now_ms;
        self.pending_log.push((rec.id, bytes));
        if self.pending_log.len() >= MAX_PENDING_RECORDS {
            self.flush_log()?;
            self.flush_history()?;
        }
        Ok(rec)
    }
}
