//! The journal's life cycle: replay on open, checkpoints, and the checkpoint on close.
//!
//! A file ledger opened with [`Durability::Immediate`](super::Durability::Immediate) makes each
//! group commit durable by appending it to its journal (see [`crate::storage::journal`]) and
//! commits it to redb without a sync. A *checkpoint* is a durable redb commit: it makes every
//! earlier commit durable in the ledger file and closes the journal's epoch (removes its record
//! from `meta`), so the journal can start over. Checkpoints happen when the journal is full,
//! when a batch is too big for it, when the journal was deleted under the ledger, on
//! [`Ledger::checkpoint`], after a replay, and when the ledger is dropped, which then deletes
//! the journal file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use redb::{Database, ReadTransaction, ReadableDatabase};

use super::Ledger;
use crate::engine::{self, EngineConfig, WriterState};
use crate::error::{Error, Result};
use crate::storage::journal::{self, Batch, Journal, Proof};
use crate::storage::tables;

/// Write one `meta` value in a durable commit. Every durable commit of a journaled ledger saves
/// redb's allocator state (quick repair), so that the reopen after a crash needs no repair walk.
fn commit_meta(db: &Database, key: &str, value: u64) -> Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    tables::put_meta_u64(&mut txn.open_table(tables::META)?, key, value)?;
    txn.commit()?;
    Ok(())
}

/// The proof a replayed batch must match, as a [`WriterState`] triple.
fn triple(s: &WriterState) -> (u64, u64, u32) {
    (s.next_txn_id, s.last_at_ms, s.last_crc)
}

/// Replay `batches` into `txn` through the same engine code that ran them, checking each
/// entry's proof: the state it ran on, the state it left, and which operations succeeded. A
/// difference means the journal and the file do not belong together, or the engine no longer
/// does what it did: the replay stops with `Corruption` instead of dropping an operation.
fn replay(
    txn: &redb::WriteTransaction,
    journal_path: &Path,
    batches: &[(u64, Batch)],
) -> Result<usize> {
    let mut state = WriterState::load(&txn.open_table(tables::TRANSACTIONS)?)?;
    let mut ops = 0;
    for (seq, batch) in batches {
        let corrupt = |detail: String| Error::Corruption {
            table: "journal",
            key: seq.to_string(),
            detail: format!(
                "{detail}; the journal `{}` and the ledger file do not belong together, and \
                 nothing was changed",
                journal_path.display()
            ),
        };
        if triple(&state) != batch.proof.before {
            return Err(corrupt(format!(
                "entry {seq} ran on the log ending before transaction #{} (chain {:08x}), but the \
                 ledger file's log ends before #{} (chain {:08x})",
                batch.proof.before.0, batch.proof.before.2, state.next_txn_id, state.last_crc
            )));
        }
        let config = EngineConfig {
            default_timeout_ms: batch.default_timeout_ms,
        };
        let applied = engine::run(txn, state, batch.now_ms, config, &batch.ops)?;
        let ok_bits = Proof::ok_bits(&applied.results);
        if triple(&applied.state) != batch.proof.after || ok_bits != batch.proof.ok_bits {
            return Err(corrupt(format!(
                "replaying entry {seq} produced transactions up to #{} (chain {:08x}, results \
                 {ok_bits:?}), but it recorded up to #{} (chain {:08x}, results {:?})",
                applied.state.next_txn_id.saturating_sub(1),
                applied.state.last_crc,
                batch.proof.after.0.saturating_sub(1),
                batch.proof.after.2,
                batch.proof.ok_bits
            )));
        }
        state = applied.state;
        ops += batch.ops.len();
    }
    Ok(ops)
}

/// Make the file hold every acknowledged write before anything else touches it: if `meta`
/// records an open journal epoch, read that epoch's journal (which must be there, whole and
/// this ledger's: see [`journal::read_pending`]), replay what redb lacks, and close the epoch,
/// in one durable commit; then remove the replayed journal. This runs on every open of a file
/// ledger, whatever its options, so nothing is ever written on top of an unreplayed journal.
/// A refusal changes nothing: no commit, no truncation, no deletion.
///
/// Returns the last journal sequence number redb holds and the ledger id, if it has one.
pub(super) fn replay_pending(db: &Database, ledger: &Path) -> Result<(u64, Option<u64>)> {
    let (id, applied_seq, epoch) = {
        let rtx = db.begin_read()?;
        let meta = rtx.open_table(tables::META)?;
        (
            tables::get_meta_u64(&meta, tables::META_LEDGER_ID_KEY)?,
            tables::get_meta_u64(&meta, tables::META_JOURNAL_SEQ_KEY)?.unwrap_or(0),
            tables::get_journal_epoch(&meta)?,
        )
    };
    let Some((epoch, first_seq)) = epoch else {
        return Ok((applied_seq, id));
    };
    let journal_path = journal::path_for(ledger);
    let Some(ledger_id) = id else {
        return Err(Error::Corruption {
            table: "meta",
            key: tables::META_LEDGER_ID_KEY.into(),
            detail: "the file records a journal epoch but no ledger id".into(),
        });
    };
    let expect = journal::Expected {
        ledger_id,
        epoch,
        first_seq,
        applied_seq: applied_seq.max(first_seq.saturating_sub(1)),
    };
    let pending = journal::read_pending(ledger, &journal_path, &expect)?;
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    let ops = replay(&txn, &journal_path, &pending.batches)?;
    let last_seq = pending
        .batches
        .last()
        .map_or(expect.applied_seq, |(seq, _)| *seq);
    {
        let mut meta = txn.open_table(tables::META)?;
        tables::put_meta_u64(&mut meta, tables::META_JOURNAL_SEQ_KEY, last_seq)?;
        tables::put_journal_epoch(&mut meta, None)?;
    }
    txn.commit()?;
    // The epoch is closed and redb holds every entry: the journal is no longer needed. The
    // file stays, though: it is the open ledger's lock (see `storage::journal_file`), and the
    // next epoch overwrites its header; the clean close removes it.
    tracing::info!(
        ledger = %ledger.display(),
        entries = pending.batches.len(),
        ops,
        "replayed the journal after an unclean stop"
    );
    Ok((last_seq, Some(ledger_id)))
}

/// Replay any pending journal of the ledger file at `ledger` (see [`replay_pending`]) and, when
/// the ledger keeps a journal, return it, with no epoch open.
/// How many journal entries a read-only open would have to replay: the entries of the open
/// epoch (if the snapshot `rtx` records one) that redb lacks. Fails like a replay would when
/// the journal does not match (missing, another copy's, damaged).
pub(super) fn pending_entries(rtx: &ReadTransaction, ledger: &Path) -> Result<usize> {
    let meta = rtx.open_table(tables::META)?;
    let Some((epoch, first_seq)) = tables::get_journal_epoch(&meta)? else {
        return Ok(0);
    };
    let Some(ledger_id) = tables::get_meta_u64(&meta, tables::META_LEDGER_ID_KEY)? else {
        return Err(Error::Corruption {
            table: "meta",
            key: tables::META_LEDGER_ID_KEY.into(),
            detail: "the file records a journal epoch but no ledger id".into(),
        });
    };
    let applied_seq = tables::get_meta_u64(&meta, tables::META_JOURNAL_SEQ_KEY)?.unwrap_or(0);
    let expect = journal::Expected {
        ledger_id,
        epoch,
        first_seq,
        applied_seq: applied_seq.max(first_seq.saturating_sub(1)),
    };
    let pending = journal::read_pending(ledger, &journal::path_for(ledger), &expect)?;
    Ok(pending.batches.len())
}

pub(super) fn recover(
    db: &Database,
    ledger: &Path,
    keep_journal: bool,
    file: Option<File>,
) -> Result<Option<Journal>> {
    let (last_seq, id) = replay_pending(db, ledger)?;
    if !keep_journal {
        return Ok(None);
    }
    let id = match id {
        Some(id) => id,
        // The first open with a journal: give the file its id. (Only ledgers with a journal
        // get one, so that files on custom backends stay byte-for-byte reproducible.)
        None => {
            let id = journal::random_id();
            commit_meta(db, tables::META_LEDGER_ID_KEY, id)?;
            id
        }
    };
    let journal = Journal::new(journal::path_for(ledger), id, last_seq);
    Ok(Some(match file {
        Some(file) => journal.with_file(file)?,
        None => journal,
    }))
}

impl Ledger {
    /// The journal of the ledger file at `ledger_file`: `<file name>.journal` in the same
    /// folder (of the real file, symlinks resolved). It exists while a ledger is open (and after a crash, until the
    /// next open replays it). Back up an open ledger with [`backup`](Self::backup), never by
    /// copying these files.
    ///
    /// ```
    /// use credit_ledger::Ledger;
    /// assert_eq!(
    ///     Ledger::journal_path("data/credits.redb"),
    ///     std::path::Path::new("data/credits.redb.journal")
    /// );
    /// ```
    pub fn journal_path(ledger_file: impl AsRef<Path>) -> PathBuf {
        journal::path_for(ledger_file.as_ref())
    }

    /// Make every acknowledged write durable in the ledger file itself and empty the journal.
    ///
    /// Between checkpoints, the newest writes are durable in the `<file>.journal` next to it,
    /// not in the ledger file. (To back up an open ledger use [`backup`](Self::backup), which
    /// checkpoints and copies under the writer lock: a copy made after `checkpoint` returns
    /// may already miss a write that came in meanwhile.) Dropping the ledger checkpoints too,
    /// and deletes the journal file. A ledger
    /// without a journal (in memory, on a custom backend, or with
    /// [`Options::journal`](super::Options::journal) off) has nothing to do.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use credit_ledger::{Credit, Ledger};
    /// let ledger = Ledger::open(dir.path().join("ledger.redb"))?;
    /// ledger.credit(Credit::grant("ws", 5, "welcome"))?;
    /// ledger.checkpoint()?;
    /// // `ledger.redb` alone now holds the grant.
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn checkpoint(&self) -> Result<()> {
        self.check_poison()?;
        let mut writer = self.writer.lock();
        self.checkpoint_locked(&mut writer)
    }

    /// [`checkpoint`](Self::checkpoint), with the writer lock held by the caller.
    pub(super) fn checkpoint_locked(&self, writer: &mut Option<WriterState>) -> Result<()> {
        if self.needs_reopen.load(Ordering::SeqCst) {
            // Reopening replays the journal and checkpoints it.
            self.reopen()?;
            self.needs_reopen.store(false, Ordering::SeqCst);
            *writer = None;
            return Ok(());
        }
        let mut journal = self.journal.lock();
        let Some(j) = journal.as_mut() else {
            return Ok(());
        };
        if j.epoch().is_none() {
            return Ok(());
        }
        let seq = j.last_seq();
        let committed = self.with_db(super::write::write_panic, |db| close_epoch(db, seq));
        match committed {
            Ok(()) => {
                j.close_epoch();
                Ok(())
            }
            Err(e) => {
                *writer = None;
                self.needs_reopen.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// A checkpoint: in one durable commit, record that redb holds every entry up to `seq` and
/// remove the epoch record, so that the journal is no longer needed.
fn close_epoch(db: &Database, seq: u64) -> Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    {
        let mut meta = txn.open_table(tables::META)?;
        tables::put_meta_u64(&mut meta, tables::META_JOURNAL_SEQ_KEY, seq)?;
        tables::put_journal_epoch(&mut meta, None)?;
    }
    txn.commit()?;
    Ok(())
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if self.journal.get_mut().is_some() {
            self.checkpoint_on_close();
        }
        // redb's own close commits its allocator state, which can panic on a damaged file
        // too: close it here, under a guard, rather than as a field after this returns.
        if let Some(db) = self.db.get_mut().take() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))).is_err() {
                tracing::warn!(
                    ledger = %self.source,
                    "the storage engine failed while closing the file; run `verify` on it"
                );
            }
        }
        // The journal file is the ledger's lock: it goes last. A ledger that may write removes
        // it when nothing in it is needed: the close checkpoint succeeded (and removed it), or
        // it keeps no journal. A read-only ledger never removes anything.
        if let Some(file) = self.journal_file.take() {
            if self.reader.is_none() && self.journal.get_mut().is_none() {
                file.remove();
            }
        }
    }
}

impl Ledger {
    /// Checkpoint and delete the journal, so that a clean close leaves one file.
    fn checkpoint_on_close(&mut self) {
        // A panic from redb on a damaged page must not escape a destructor.
        let checkpointed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.checkpoint()))
                .unwrap_or_else(|_| Err(Error::storage("the storage engine panicked")));
        match checkpointed {
            // redb holds everything: the journal file goes, as SQLite's WAL does on close.
            Ok(()) => {
                if let Some(journal) = self.journal.get_mut().take() {
                    if let Err(e) = journal.remove() {
                        tracing::warn!(ledger = %self.source, error = %e, "cannot remove the journal");
                    }
                }
            }
            // Nothing is lost: the journal still holds the writes, and the next open replays
            // them.
            Err(e) => {
                tracing::warn!(ledger = %self.source, error = %e, "checkpoint on close failed")
            }
        }
    }
}
