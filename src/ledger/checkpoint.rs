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
use crate::engine::{self, ClockCheck, EngineConfig, WriterState};
use crate::error::{Error, Result};
use crate::model::limits::MAX_MEMO_BYTES;
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
/// Returns the state after the last batch; `done` counts the batches that replayed, so after an
/// error it is the index of the one that failed.
fn replay(
    txn: &redb::WriteTransaction,
    journal_path: &Path,
    batches: &[(u64, Batch)],
    done: &mut usize,
) -> Result<WriterState> {
    *done = 0;
    let mut state = WriterState::load(&txn.open_table(tables::TRANSACTIONS)?)?;
    for (seq, batch) in batches {
        let corrupt = |detail: String| Error::Corruption {
            table: "journal",
            key: seq.to_string(),
            detail: format!(
                "{detail}; the journal `{}` and the ledger file do not belong together, and \
                 nothing was changed; to open the ledger without the entries from this one on, \
                 accepting their loss, run `credit-ledger recover --discard-journal`",
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
        // Only batches with a trusted clock are journaled (see `commit_journaled`).
        let config = EngineConfig {
            default_timeout_ms: batch.default_timeout_ms,
            refund_grace_ms: batch.refund_grace_ms,
            grant_expiring_notice_ms: batch.grant_expiring_notice_ms,
            clock: ClockCheck::Trusted,
        };
        // A replay starts with no grant caches: it runs apart from the live writer's.
        let applied = engine::run(
            txn,
            state,
            batch.now_ms,
            config,
            &batch.ops,
            engine::WarmGrants::default(),
        )?;
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
        *done += 1;
    }
    Ok(state)
}

/// What an operator's explicit recovery ([`Options::discard_journal`](super::Options)) threw
/// away when the journal could not be replayed. The same facts are written into the log, as a
/// zero-credit Adjustment titled [`JOURNAL_DISCARDED_TITLE`] on every workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalDiscard {
    /// The journal epoch whose entries were discarded.
    pub epoch: u64,
    /// The first discarded sequence number.
    pub first_seq: u64,
    /// The last sequence number known to have existed, when an intact later entry showed it;
    /// `None` when the journal was missing or unreadable, so any number of entries may be lost.
    pub last_seq: Option<u64>,
    /// Entries before the problem that were replayed, all proven.
    pub replayed_entries: usize,
    /// When it happened (the log's time of the notes).
    pub at_ms: u64,
    /// Why the journal could not be replayed (the error an ordinary open fails with).
    pub reason: String,
    /// Where the journal was moved to, kept for inspection, if there was one.
    pub kept_at: Option<PathBuf>,
}

/// The title of the log note a journal discard writes on every workspace.
pub const JOURNAL_DISCARDED_TITLE: &str = "Journal discarded";

/// What an open found in the journal.
pub(super) struct Recovered {
    pub journal: Option<Journal>,
    pub discard: Option<JournalDiscard>,
}

/// How [`recover`] treats a journal it cannot replay.
#[derive(Clone, Copy)]
pub(super) struct Policy {
    /// Keep a journal for new writes.
    pub keep_journal: bool,
    /// The operator accepts losing what cannot be replayed; the notes are stamped no earlier
    /// than this time.
    pub discard_at_ms: Option<u64>,
}

/// Make the file hold every acknowledged write before anything else touches it: if `meta`
/// records an open journal epoch, read that epoch's journal (which must be there, whole and
/// this ledger's: see [`journal::read_pending`]), replay what redb lacks, and close the epoch,
/// in one durable commit; then remove the replayed journal. This runs on every open of a file
/// ledger, whatever its options, so nothing is ever written on top of an unreplayed journal.
/// A refusal changes nothing: no commit, no truncation, no deletion. Only with
/// `policy.discard_at_ms` (the operator's explicit recovery) is a journal that cannot be
/// replayed discarded: its proven intact prefix is replayed, the loss is noted in the log,
/// and the journal is moved aside.
///
/// Returns the last journal sequence number redb holds, the ledger id if it has one, and the
/// discard if one happened.
fn replay_pending(
    db: &Database,
    ledger: &Path,
    policy: Policy,
) -> Result<(u64, Option<u64>, Option<JournalDiscard>)> {
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
        return Ok((applied_seq, id, None));
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
    // What to replay, and what is lost if the operator accepts it: (error, last seen seq).
    let (mut batches, mut problem) = match journal::read_pending(ledger, &journal_path, &expect) {
        Ok(p) => (p.batches, None),
        Err(u) if policy.discard_at_ms.is_some() && is_journal_problem(&u.error) => {
            (u.intact, Some((u.error, u.last_seen_seq)))
        }
        Err(u) => return Err(u.error),
    };
    let mut txn = db.begin_write()?;
    let mut at = 0;
    let state = match replay(&txn, &journal_path, &batches, &mut at) {
        Ok(state) => state,
        Err(e) if policy.discard_at_ms.is_some() && is_journal_problem(&e) => {
            // Start over without the entry that failed its proof and all after it.
            txn.abort()?;
            let last_seen = match &problem {
                Some((_, Some(l))) => Some(*l),
                _ => batches.last().map(|(seq, _)| *seq),
            };
            batches.truncate(at);
            problem = Some((e, last_seen));
            txn = db.begin_write()?;
            replay(&txn, &journal_path, &batches, &mut at)?
        }
        Err(e) => return Err(e),
    };
    txn.set_quick_repair(true);
    let replayed_last = batches.last().map_or(expect.applied_seq, |(seq, _)| *seq);
    let mut last_seq = replayed_last;
    let mut discard = None;
    if let (Some((error, last_seen)), Some(now_ms)) = (problem, policy.discard_at_ms) {
        let at_ms = now_ms.max(state.last_at_ms);
        let from = replayed_last + 1;
        let kept_at = journal_path.exists().then(|| {
            let mut name = journal_path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".discarded-{epoch:016x}"));
            journal_path.with_file_name(name)
        });
        let reason = error.to_string();
        let memo = discard_memo(epoch, from, last_seen, &reason);
        let config = EngineConfig {
            default_timeout_ms: 0,
            refund_grace_ms: 0,
            grant_expiring_notice_ms: None,
            clock: ClockCheck::Trusted,
        };
        engine::note_every_workspace(&txn, state, at_ms, config, JOURNAL_DISCARDED_TITLE, &memo)?;
        last_seq = last_seq.max(last_seen.unwrap_or(0));
        discard = Some(JournalDiscard {
            epoch,
            first_seq: from,
            last_seq: last_seen,
            replayed_entries: batches.len(),
            at_ms,
            reason,
            kept_at,
        });
    }
    {
        let mut meta = txn.open_table(tables::META)?;
        tables::put_meta_u64(&mut meta, tables::META_JOURNAL_SEQ_KEY, last_seq)?;
        tables::put_journal_epoch(&mut meta, None)?;
    }
    txn.commit()?;
    match &discard {
        // The journal stays, under another name, for whoever wants to look at what was lost.
        Some(d) => {
            if let Some(to) = &d.kept_at {
                std::fs::rename(&journal_path, to).map_err(|e| Error::Storage {
                    message: format!(
                        "the journal was discarded but cannot be moved from `{}` to `{}`: {e}",
                        journal_path.display(),
                        to.display()
                    ),
                })?;
            }
            tracing::warn!(
                ledger = %ledger.display(),
                first_seq = d.first_seq,
                last_seq = ?d.last_seq,
                replayed = d.replayed_entries,
                reason = %d.reason,
                "discarded the journal's unreplayable entries, as the operator asked"
            );
        }
        // The epoch is closed and redb holds every entry: the journal is no longer needed.
        // The file stays, though: it is the open ledger's lock (see `storage::journal_file`),
        // and the next epoch overwrites its header; the clean close removes it.
        None => {
            tracing::info!(
                ledger = %ledger.display(),
                entries = batches.len(),
                "replayed the journal after an unclean stop"
            );
        }
    }
    Ok((last_seq, Some(ledger_id), discard))
}

/// Errors about the journal itself, which an operator's discard may accept; anything else
/// (an I/O error, damage in the ledger file) still fails the open.
fn is_journal_problem(e: &Error) -> bool {
    match e {
        Error::JournalMismatch { .. } => true,
        Error::Corruption { table, .. } => *table == "journal",
        _ => false,
    }
}

/// The memo of the log note: which entries, of which epoch, and why; cut to the memo limit.
fn discard_memo(epoch: u64, from: u64, last_seen: Option<u64>, reason: &str) -> String {
    let range = match last_seen {
        Some(l) if l >= from => format!("entries {from} to {l}"),
        Some(_) => format!("entry {from} (damaged)"),
        None => format!("entries from {from} on (how many is unknown)"),
    };
    let mut memo = format!(
        "operator recovery discarded journal {range} of epoch {epoch:016x}; writes acknowledged \
         in them are lost. Reason: {reason}"
    );
    if memo.len() > MAX_MEMO_BYTES {
        let mut cut = MAX_MEMO_BYTES;
        while !memo.is_char_boundary(cut) {
            cut -= 1;
        }
        memo.truncate(cut);
    }
    memo
}

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
    let pending = journal::read_pending(ledger, &journal::path_for(ledger), &expect)
        .map_err(|unreadable| unreadable.error)?;
    Ok(pending.batches.len())
}

/// Replay any pending journal of the ledger file at `ledger` (see [`replay_pending`]) and, when
/// the ledger keeps a journal, return it, with no epoch open.
///
/// `file` is the journal file the ledger opened and locked: the journal writes through it,
/// unless an operator's discard moved it aside.
pub(super) fn recover(
    db: &Database,
    ledger: &Path,
    policy: Policy,
    file: Option<File>,
) -> Result<Recovered> {
    let (last_seq, id, discard) = replay_pending(db, ledger, policy)?;
    if !policy.keep_journal {
        return Ok(Recovered {
            journal: None,
            discard,
        });
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
    let moved_aside = discard.as_ref().is_some_and(|d| d.kept_at.is_some());
    let journal = match file {
        Some(file) if !moved_aside => journal.with_file(file)?,
        _ => journal,
    };
    Ok(Recovered {
        journal: Some(journal),
        discard,
    })
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
            // Caught, and reported as the warning below: not a bug for a panic hook to report.
            let _marked = super::panic_guard::Marked::enter();
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
