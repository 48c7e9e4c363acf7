//! The write path: one redb write transaction and one commit per batch.

use std::sync::atomic::Ordering;

use redb::ReadableTable;

use super::{Durability, Ledger, NO_DEADLINE};
use crate::engine::{self, ClockCheck, EngineConfig, WarmGrants, WriterState};
use crate::error::{Error, Result};
use crate::model::{Op, Outcome, RefundReceipt};
use crate::storage::journal::{self, Journal, Proof};
use crate::storage::tables;

/// The error a redb panic during a write becomes (see [`super::open::no_panic`]). As after any failed
/// commit, the ledger reopens its file, and the reopen says what landed; after a panic it does
/// so at once, because redb's handle is no longer usable.
pub(super) fn write_panic(detail: String) -> Error {
    Error::Corruption {
        table: "(any: found while writing)",
        key: String::new(),
        detail,
    }
}

/// What a committed batch hands back: each op's result, the writer state after it, and the
/// earliest deadline when the deadline index changed.
type Committed = (
    Vec<Result<Outcome>>,
    WriterState,
    Option<Option<u64>>,
    WarmGrants,
);

impl Ledger {
    /// Read the writer state and the earliest deadline from disk.
    pub(super) fn reload(&self) -> Result<WriterState> {
        let (state, earliest) = self.with_snapshot(write_panic, |rtx| {
            let state = WriterState::load(&rtx.open_table(tables::TRANSACTIONS)?)?;
            let deadline = rtx
                .open_table(tables::DEADLINES)?
                .first()?
                .map_or(NO_DEADLINE, |(k, _)| k.value().0);
            // The sweep also expires grants and writes their notices: wake it for the first
            // pending expiry or due notice too.
            let expiry = match tables::open_optional(&rtx, tables::GRANT_EXPIRIES)? {
                Some(t) => t.first()?.map_or(NO_DEADLINE, |(k, _)| k.value().0),
                None => NO_DEADLINE,
            };
            let notice = match tables::open_optional(&rtx, tables::GRANT_NOTICES)? {
                Some(t) => t.first()?.map_or(NO_DEADLINE, |(k, _)| k.value().0),
                None => NO_DEADLINE,
            };
            Ok((state, deadline.min(expiry).min(notice)))
        })?;
        self.earliest_deadline_ms.store(earliest, Ordering::SeqCst);
        self.last_at_ms.store(state.last_at_ms, Ordering::SeqCst);
        Ok(state)
    }

    /// The time a batch is stamped with, and whether the clock's reading can be trusted.
    ///
    /// A clock more than `max_clock_ahead_ms` ahead of the wall clock is not trusted: the
    /// batch runs at the wall clock's time (or the log's last time, if later). A clock within
    /// `max_clock_regression_ms` behind the log is stamped with the log's last time; one
    /// further behind is not trusted, and the batch runs at the log's last time too. With an
    /// untrusted clock only refunds are written (see [`ClockCheck`]).
    fn effective_now(&self, state: &WriterState) -> (u64, ClockCheck) {
        let clock = self.options.clock.now_ms();
        let last_ms = state.last_at_ms;
        if let Some(tolerance_ms) = self.options.max_clock_ahead_ms {
            let wall_ms = self.options.wall_clock.now_ms();
            if let Some(ahead_ms) = clock.checked_sub(wall_ms).filter(|a| *a > tolerance_ms) {
                let check = ClockCheck::Ahead {
                    now_ms: clock,
                    wall_ms,
                    ahead_ms,
                    tolerance_ms,
                };
                return (wall_ms.max(last_ms), check);
            }
        }
        if clock >= last_ms {
            return (clock, ClockCheck::Trusted);
        }
        let behind_ms = last_ms - clock;
        let tolerance_ms = self.options.max_clock_regression_ms;
        if behind_ms <= tolerance_ms {
            (last_ms, ClockCheck::Trusted)
        } else {
            let check = ClockCheck::Behind {
                now_ms: clock,
                last_ms,
                behind_ms,
                tolerance_ms,
            };
            (last_ms, check)
        }
    }

    /// Apply `ops` in one write transaction with one durable commit.
    pub(super) fn commit_batch(&self, ops: &[Op]) -> Vec<Result<Outcome>> {
        let all = |e: Error| ops.iter().map(|_| Err(e.clone())).collect();
        if let Err(e) = self.check_poison() {
            return all(e);
        }
        let mut writer = self.writer.lock();
        if self.needs_reopen.load(Ordering::SeqCst) {
            // The last commit failed and redb refuses writes until the file is reopened. The
            // reopened file says what landed; the callers' retries (same ids) do the rest.
            if let Err(e) = self.reopen() {
                return all(e);
            }
            self.needs_reopen.store(false, Ordering::SeqCst);
            *writer = None;
        }
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
        let (now_ms, clock) = self.effective_now(&state);
        let mut journal = self.journal.lock();
        let mut panicked = false;
        let on_panic = |detail| {
            panicked = true;
            write_panic(detail)
        };
        // The caches of the last batch, if it committed to exactly the state this one starts
        // from; taken, so that a batch that fails leaves none behind.
        let warm = self
            .warm
            .lock()
            .take()
            .filter(|(at, _)| *at == state)
            .map(|(_, w)| w)
            .unwrap_or_default();
        let committed = self.with_db(on_panic, |db| {
            self.run_batch(db, ops, (state, warm), now_ms, clock, journal.as_mut())
        });
        match committed {
            Ok((results, new_state, earliest, warm)) => {
                *writer = Some(new_state);
                *self.warm.lock() = Some((new_state, warm));
                self.last_at_ms
                    .store(new_state.last_at_ms, Ordering::SeqCst);
                if let Some(earliest) = earliest {
                    self.earliest_deadline_ms
                        .store(earliest.unwrap_or(NO_DEADLINE), Ordering::SeqCst);
                }
                drop(journal);
                // Subscribers hear in commit order: take their lock before the writer's goes.
                let delivery = self.feed.begin(new_state.next_txn_id - 1);
                drop(writer);
                if let Some(d) = delivery {
                    self.deliver(d);
                }
                // Only now, after the durable commit, do the refunds exist: tell the app.
                self.log_refunds(&results);
                results
            }
            Err(e) => {
                // The commit may or may not have landed: forget the cached state, force the
                // next idle check to look at the disk, and reopen before the next write.
                *writer = None;
                self.earliest_deadline_ms.store(0, Ordering::SeqCst);
                self.needs_reopen.store(true, Ordering::SeqCst);
                if panicked {
                    // redb's handle is unusable after a panic (its internal locks are
                    // poisoned, so reads fail too): reopen now rather than at the next write.
                    drop(journal);
                    if self.reopen().is_ok() {
                        self.needs_reopen.store(false, Ordering::SeqCst);
                    }
                }
                all(e)
            }
        }
    }

    fn run_batch(
        &self,
        db: &redb::Database,
        ops: &[Op],
        (state, warm): (WriterState, WarmGrants),
        now_ms: u64,
        clock: ClockCheck,
        journal: Option<&mut Journal>,
    ) -> Result<Committed> {
        let mut txn = db.begin_write()?;
        let config = EngineConfig {
            default_timeout_ms: self.options.default_timeout_ms,
            refund_grace_ms: self.options.refund_grace_ms,
            grant_expiring_notice_ms: self.options.grant_expiring_notice_ms,
            clock,
        };
        let applied = engine::run(&txn, state, now_ms, config, ops, warm)?;
        if !applied.dirty {
            // Nothing was written, so the caches hold what the file holds.
            txn.abort()?;
            return Ok((applied.results, state, None, applied.warm));
        }
        match journal {
            None => {
                txn.set_durability(match self.options.durability {
                    Durability::Immediate => redb::Durability::Immediate,
                    Durability::None => redb::Durability::None,
                })?;
                txn.set_quick_repair(self.options.quick_repair);
                txn.commit()?;
            }
            Some(journal) => {
                let proof = Proof {
                    before: (state.next_txn_id, state.last_at_ms, state.last_crc),
                    after: (
                        applied.state.next_txn_id,
                        applied.state.last_at_ms,
                        applied.state.last_crc,
                    ),
                    ok_bits: Proof::ok_bits(&applied.results),
                };
                commit_journaled(txn, journal, now_ms, &config, ops, &proof)?;
            }
        }
        Ok((
            applied.results,
            applied.state,
            applied.earliest,
            applied.warm,
        ))
    }

    /// Emit an info event for every refund a committed batch wrote: failure reports, sweep
    /// refunds, and lazy expiries (a late `complete` or repeated `start` answered with
    /// [`Error::GenerationRefunded`] carrying the refund it wrote).
    fn log_refunds(&self, results: &[Result<Outcome>]) {
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
                    refunded_now: Some(r),
                    ..
                }) => emit(r),
                _ => {}
            }
        }
    }

    /// Queue one operation for group commit and wait for its result.
    pub(super) fn submit(&self, op: Op) -> Result<Outcome> {
        self.check_poison()?;
        self.group.submit(op, |ops| self.commit_batch(ops))
    }
}

/// Commit a batch of a ledger with a journal: the journal rules of `storage::journal`.
///
/// - The entry does not fit in what is left of the journal (or in any journal): commit durably
///   and close the epoch if one is open (a checkpoint).
/// - No epoch open (the first write after opening or after a checkpoint): write a new epoch's
///   header to the journal and sync it, then commit this batch *durably* to redb together with
///   the epoch record. The batch needs no entry: redb holds it. This is the one durable redb
///   commit an epoch costs.
/// - In an epoch, when the entry fits: append it and sync it (the commit point), then commit to
///   redb without a sync. If the journal file turns out to have lost its name meanwhile
///   (deleted, moved or replaced: `Journal::lost_name`), the entry is durable nowhere a
///   reopen would look: the batch is committed durably to redb instead, closing the epoch,
///   before it is acknowledged; the next write starts a new epoch in a new file.
///
/// redb records the last entry it holds (`journal_seq`) in the batch's own transaction.
fn commit_journaled(
    mut txn: redb::WriteTransaction,
    journal: &mut Journal,
    now_ms: u64,
    config: &EngineConfig,
    ops: &[Op],
    proof: &Proof,
) -> Result<()> {
    let payload = journal::encode_batch(
        now_ms,
        (
            config.default_timeout_ms,
            config.refund_grace_ms,
            config.grant_expiring_notice_ms,
        ),
        ops,
        proof,
    );
    // A batch with an untrusted clock is not journaled: its entry would not say which of its
    // writes the clock refused, so a replay could not reproduce it. It is rare (a broken
    // clock) and takes the durable path of a batch too big for the journal.
    if !journal.fits(payload.len()) || config.clock != ClockCheck::Trusted {
        // Too big for what is left of the journal (or an untrusted clock): commit durably to
        // redb. That makes every earlier journaled commit durable too, a checkpoint, and
        // closes the epoch if one is open (a batch too big for any journal opens none).
        let mut meta = txn.open_table(tables::META)?;
        tables::put_meta_u64(&mut meta, tables::META_JOURNAL_SEQ_KEY, journal.last_seq())?;
        tables::put_journal_epoch(&mut meta, None)?;
        drop(meta);
        txn.set_quick_repair(true);
        txn.commit()?;
        journal.close_epoch();
        return Ok(());
    }
    if journal.epoch().is_none() {
        let epoch = journal.write_epoch_header()?;
        {
            let mut meta = txn.open_table(tables::META)?;
            tables::put_journal_epoch(&mut meta, Some((epoch, journal.next_seq())))?;
            tables::put_meta_u64(&mut meta, tables::META_JOURNAL_SEQ_KEY, journal.last_seq())?;
        }
        txn.set_quick_repair(true);
        txn.commit()?;
        journal.open_epoch(epoch);
        return Ok(());
    }
    let seq = journal.next_seq();
    tables::put_meta_u64(
        &mut txn.open_table(tables::META)?,
        tables::META_JOURNAL_SEQ_KEY,
        seq,
    )?;
    // The journal entry is the commit point: once it is synced, a crash replays it. redb
    // commits without a sync, and only after the entry is durable, so no reader ever sees a
    // write that a crash could take back.
    journal.append(seq, &payload)?;
    if journal.lost_name()? {
        tracing::warn!(
            journal = %journal.path().display(),
            "the journal was deleted, moved or replaced while the ledger is open; committing \
             to the ledger file and starting a new journal"
        );
        tables::put_journal_epoch(&mut txn.open_table(tables::META)?, None)?;
        txn.set_quick_repair(true);
        txn.commit()?;
        journal.close_epoch();
        journal.forget_file();
        return Ok(());
    }
    txn.set_durability(redb::Durability::None)?;
    txn.commit()?;
    Ok(())
}
