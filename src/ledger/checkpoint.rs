//! The journal's life cycle: replay on open, checkpoints, and the checkpoint on close.
//!
//! A file ledger opened with [`Durability::Immediate`](super::Durability::Immediate) makes each
//! group commit durable by appending it to its journal (see [`crate::storage::journal`]) and
//! commits it to redb without a sync. A *checkpoint* is a durable redb commit: it makes every
//! earlier commit durable in the ledger file, so the journal can start over. Checkpoints happen
//! when the journal is full, when a batch is too big for it, on [`Ledger::checkpoint`], and
//! when the ledger is dropped, which then deletes the journal file.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use std::fs::File;

use redb::{Database, ReadTransaction, ReadableDatabase};

use super::Ledger;
use crate::engine::{self, EngineConfig, WriterState};
use crate::error::{Error, Result};
use crate::storage::journal::{self, Journal};
use crate::storage::tables;

/// A random id for a new ledger, so that a journal left behind by another ledger of the same
/// name is never replayed into this one.
fn random_ledger_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// Write one `meta` value in a durable commit. Every durable commit of a journaled ledger saves
/// redb's allocator state (quick repair), so that the reopen after a crash needs no repair walk.
fn commit_meta(db: &Database, key: &str, value: u64) -> Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    tables::put_meta_u64(&mut txn.open_table(tables::META)?, key, value)?;
    txn.commit()?;
    Ok(())
}

/// How many journal entries a read-only open would have to replay: the entries of `file` (the
/// journal of the ledger file at `ledger`, if there is one) that the snapshot `rtx` lacks.
pub(super) fn pending_entries(
    rtx: &ReadTransaction,
    ledger: &Path,
    file: Option<File>,
) -> Result<usize> {
    let meta = rtx.open_table(tables::META)?;
    let Some(id) = tables::get_meta_u64(&meta, tables::META_LEDGER_ID_KEY)? else {
        // A file that never had a journal: nothing in one can be its.
        return Ok(0);
    };
    let applied_seq = tables::get_meta_u64(&meta, tables::META_JOURNAL_SEQ_KEY)?.unwrap_or(0);
    let (_, batches) = Journal::open(journal::path_for(ledger), file, id, applied_seq)?;
    Ok(batches.len())
}

/// Open the journal `file` of the ledger file at `ledger` and replay into `db` every entry
/// that redb does not hold yet, in one durable commit. The journal comes back empty.
pub(super) fn recover(db: &Database, ledger: &Path, file: File) -> Result<Journal> {
    let (id, applied_seq) = {
        let rtx = db.begin_read()?;
        let meta = rtx.open_table(tables::META)?;
        (
            tables::get_meta_u64(&meta, tables::META_LEDGER_ID_KEY)?,
            tables::get_meta_u64(&meta, tables::META_JOURNAL_SEQ_KEY)?.unwrap_or(0),
        )
    };
    let id = match id {
        Some(id) => id,
        // The first open with a journal: give the file its id. (Only ledgers with a journal
        // get one, so that files on custom backends stay byte-for-byte reproducible.)
        None => {
            let id = random_ledger_id();
            commit_meta(db, tables::META_LEDGER_ID_KEY, id)?;
            id
        }
    };
    let (mut journal, batches) =
        Journal::open(journal::path_for(ledger), Some(file), id, applied_seq)?;
    if !batches.is_empty() {
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        let mut state = WriterState::load(&txn.open_table(tables::TRANSACTIONS)?)?;
        let mut ops = 0;
        for batch in &batches {
            let config = EngineConfig {
                default_timeout_ms: batch.default_timeout_ms,
            };
            state = engine::run(&txn, state, batch.now_ms, config, &batch.ops)?.state;
            ops += batch.ops.len();
        }
        tables::put_meta_u64(
            &mut txn.open_table(tables::META)?,
            tables::META_JOURNAL_SEQ_KEY,
            journal.last_seq(),
        )?;
        txn.commit()?;
        tracing::info!(
            ledger = %ledger.display(),
            entries = batches.len(),
            ops,
            "replayed the journal after an unclean stop"
        );
    }
    journal.reset();
    Ok(journal)
}

impl Ledger {
    /// The journal of the ledger file at `ledger_file`: `<file name>.journal` in the same
    /// folder (of the real file, symlinks resolved). It exists while a ledger is open (and after
    /// a crash, until the next open replays it). Back up an open ledger with
    /// [`backup`](Self::backup), never by copying these files.
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
        if j.is_empty() {
            return Ok(());
        }
        let seq = j.last_seq();
        let committed = self.with_db(super::write::write_panic, |db| {
            commit_meta(db, tables::META_JOURNAL_SEQ_KEY, seq)
        });
        match committed {
            Ok(()) => {
                j.reset();
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
        // The journal file is the ledger's lock: it goes last, and only when it is empty (a
        // ledger without a journal, or the close checkpoint already removed it).
        if let Some(file) = self.journal_file.take() {
            file.remove_if_empty();
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
