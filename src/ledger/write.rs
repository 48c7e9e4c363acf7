//! The write path: one redb write transaction and one commit per batch.

use std::sync::atomic::Ordering;

use redb::ReadableTable;

use super::{Durability, Ledger, NO_DEADLINE};
use crate::engine::{self, EngineConfig, WriterState};
use crate::error::{Error, Result};
use crate::model::{Op, Outcome, RefundReceipt};
use crate::storage::journal::{self, Journal};
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
type Committed = (Vec<Result<Outcome>>, WriterState, Option<Option<u64>>);

impl Ledger {
    /// Read the writer state and the earliest deadline from disk.
    pub(super) fn reload(&self) -> Result<WriterState> {
        let (state, earliest) = self.with_snapshot(write_panic, |rtx| {
            let state = WriterState::load(&rtx.open_table(tables::TRANSACTIONS)?)?;
            let earliest = rtx
                .open_table(tables::DEADLINES)?
                .first()?
                .map_or(NO_DEADLINE, |(k, _)| k.value().0);
            Ok((state, earliest))
        })?;
        self.earliest_deadline_ms.store(earliest, Ordering::SeqCst);
        self.last_at_ms.store(state.last_at_ms, Ordering::SeqCst);
        Ok(state)
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
        let now_ms = match self.effective_now(&state) {
            Ok(t) => t,
            Err(e) => return all(e),
        };
        let mut journal = self.journal.lock();
        let mut panicked = false;
        let on_panic = |detail| {
            panicked = true;
            write_panic(detail)
        };
        let committed = self.with_db(on_panic, |db| {
            self.run_batch(db, ops, state, now_ms, journal.as_mut())
        });
        match committed {
            Ok((results, new_state, earliest)) => {
                *writer = Some(new_state);
                self.last_at_ms
                    .store(new_state.last_at_ms, Ordering::SeqCst);
                if let Some(earliest) = earliest {
                    self.earliest_deadline_ms
                        .store(earliest.unwrap_or(NO_DEADLINE), Ordering::SeqCst);
                }
                drop(journal);
                drop(writer);
                // Only now, after the durable commit, do the refunds exist: tell the app.
                self.log_refunds(state.next_txn_id, &results);
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
        state: WriterState,
        now_ms: u64,
        journal: Option<&mut Journal>,
    ) -> Result<Committed> {
        let mut txn = db.begin_write()?;
        let config = EngineConfig {
            default_timeout_ms: self.options.default_timeout_ms,
        };
        let applied = engine::run(&txn, state, now_ms, config, ops)?;
        if !applied.dirty {
            txn.abort()?;
            return Ok((applied.results, state, None));
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
                let payload = journal::encode_batch(now_ms, config.default_timeout_ms, ops);
                let journaled = journal.fits(payload.len());
                // redb records the last journal entry it holds, in the batch's own transaction:
                // this batch's entry, or (for a checkpoint) the last one written.
                let held_seq = if journaled {
                    journal.next_seq()
                } else {
                    journal.last_seq()
                };
                tables::put_meta_u64(
                    &mut txn.open_table(tables::META)?,
                    tables::META_JOURNAL_SEQ_KEY,
                    held_seq,
                )?;
                if journaled {
                    // The journal entry is the commit point: once it is synced, a crash
                    // replays it. redb commits without a sync, and only after the entry is
                    // durable, so no reader ever sees a write that a crash could take back.
                    journal.append(held_seq, &payload)?;
                    txn.set_durability(redb::Durability::None)?;
                    txn.commit()?;
                } else {
                    // Too big for what is left of the journal: commit durably to redb. That
                    // makes every earlier journaled commit durable too, a checkpoint.
                    txn.set_quick_repair(true);
                    txn.commit()?;
                    journal.reset();
                }
            }
        }
        Ok((applied.results, applied.state, applied.earliest))
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

    /// Queue one operation for group commit and wait for its result.
    pub(super) fn submit(&self, op: Op) -> Result<Outcome> {
        self.check_poison()?;
        self.group.submit(op, |ops| self.commit_batch(ops))
    }
}
