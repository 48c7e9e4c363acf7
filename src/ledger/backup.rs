//! Online backups: a consistent, durable, single-file copy of an open ledger.
//!
//! # What is copied, and why that way
//!
//! The cheapest consistent copy is the redb file itself, right after a checkpoint, copied
//! while the writer lock is held:
//!
//! - the checkpoint makes every acknowledged write durable in the ledger file and empties the
//!   journal, so the copy is one file that needs no journal (and redb's allocator state is
//!   saved with it, so the copy opens, even read-only, without a repair);
//! - holding the writer lock for the copy means no commit runs meanwhile, so the bytes are
//!   exactly that durable state (readers go on: they never write the file);
//! - copying the file moves bytes with `copy_file_range` (a clone on filesystems that have
//!   them), whatever tables the ledger has. Rebuilding the tables from a read transaction into
//!   a fresh redb file would not block writers, but would cost a B-tree insert per record and
//!   silently leave out any table it was not taught about.
//!
//! Writers wait for the copy (not for its `fsync`, which runs after the lock is released).
//! The copy goes to a temporary name next to the destination, is synced, hard-linked into
//! place (which fails, rather than overwrites, if anything appeared there, and never follows
//! a symlink) and the folder synced.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

use super::Ledger;
use crate::error::{Error, Result};
use crate::storage;

/// How many temporary names a backup tries before giving up (names left by crashed backups
/// are skipped, never overwritten).
const MAX_TEMP_NAMES: u32 = 100;
/// redb's cache while it closes the copy: it reads only the header and allocator state.
const CLOSE_CACHE_BYTES: usize = 4 << 20;

fn io_error(dest: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Storage {
        message: format!("backup to `{}`: {what}: {e}", dest.display()),
    }
}

fn exists(dest: &Path) -> Error {
    Error::DestinationExists {
        path: dest.display().to_string(),
    }
}

/// Create a new temporary file next to `dest`, never following or reusing anything.
fn create_temp(dest: &Path) -> Result<(PathBuf, File)> {
    let name = dest.file_name().ok_or_else(|| Error::Storage {
        message: format!("backup: `{}` does not name a file", dest.display()),
    })?;
    for n in 0..MAX_TEMP_NAMES {
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".backup-{}-{n}", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(dest, "cannot create a temporary file", e)),
        }
    }
    Err(Error::Storage {
        message: format!(
            "backup to `{}`: {MAX_TEMP_NAMES} temporary names next to it are taken; remove the \
             `.backup-*` files of crashed backups",
            dest.display()
        ),
    })
}

/// Open the copy at `tmp` with redb and close it, so that its header says "closed cleanly".
fn close_cleanly(tmp: &Path, dest: &Path) -> Result<()> {
    let not_ledger = |detail| Error::Storage {
        message: format!(
            "backup to `{}`: the copy does not open: {detail}",
            dest.display()
        ),
    };
    super::open::no_panic(not_ledger, || {
        let db = redb::Builder::new()
            .set_cache_size(CLOSE_CACHE_BYTES)
            .open(tmp)
            .map_err(|e| not_ledger(e.to_string()))?;
        db.close().map_err(|e| not_ledger(e.to_string()))
    })
}

impl Ledger {
    /// Write a consistent copy of this ledger to the new file `dest`, while it stays open, and
    /// return its size in bytes.
    ///
    /// The copy holds every write acknowledged before the call, is durable when this returns
    /// (file and folder synced), and is a ledger of its own: `Ledger::open_read_only(dest)` and
    /// `credit-ledger --db DEST verify` read it. `dest` must not exist
    /// ([`Error::DestinationExists`]; nothing there is ever overwritten or followed). Writers
    /// wait while the file is copied; readers do not. Only a file ledger can be backed up.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use credit_ledger::{Credit, Ledger};
    /// let ledger = Ledger::open(dir.path().join("ledger.redb"))?;
    /// ledger.credit(Credit::grant("ws", 5, "welcome"))?;
    /// ledger.backup(dir.path().join("backup.redb"))?;
    /// let copy = Ledger::open_read_only(dir.path().join("backup.redb"))?;
    /// assert_eq!(copy.balance("ws")?.balance_credits, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<u64> {
        let dest = dest.as_ref();
        let Some(source) = self.path().map(Path::to_path_buf) else {
            return Err(Error::Storage {
                message: format!(
                    "`{}` is not a file ledger; only a ledger file can be backed up",
                    self.source
                ),
            });
        };
        // Cheap early refusal; the link at the end is what really never overwrites.
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(exists(dest));
        }
        self.check_poison()?;
        let (tmp, mut file) = create_temp(dest)?;
        let copied = self.copy_consistent(&source, &mut file, dest);
        let finished = copied.and_then(|_| {
            drop(file);
            // The bytes are those of a file redb has open, marked "needs recovery"; a
            // read-only open refuses such a file. Opening the copy and closing it cleanly
            // (it is ours, under its temporary name) makes it a closed ledger file.
            close_cleanly(&tmp, dest)?;
            let file = File::open(&tmp).map_err(|e| io_error(dest, "cannot reopen the copy", e))?;
            file.sync_all()
                .map_err(|e| io_error(dest, "cannot sync the copy", e))?;
            let bytes = file
                .metadata()
                .map_err(|e| io_error(dest, "cannot read the copy's size", e))?
                .len();
            match std::fs::hard_link(&tmp, dest) {
                Ok(()) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists(dest)),
                Err(e) => Err(io_error(dest, "cannot link the copy into place", e)),
            }
        });
        let _ = std::fs::remove_file(&tmp);
        let bytes = finished?;
        storage::sync_folder_of(dest).map_err(|e| io_error(dest, "cannot sync its folder", e))?;
        tracing::info!(ledger = %self.source, backup = %dest.display(), bytes, "backed up the ledger");
        Ok(bytes)
    }

    /// Copy the ledger file's durable state into `out`: after a checkpoint, under the writer
    /// lock (a read-only ledger's file does not change: it is copied as it is).
    fn copy_consistent(&self, source: &Path, out: &mut File, dest: &Path) -> Result<u64> {
        let copy = |out: &mut File| -> Result<u64> {
            let mut src = File::open(source)
                .map_err(|e| io_error(dest, "cannot open the ledger file to copy it", e))?;
            let bytes = std::io::copy(&mut src, out)
                .map_err(|e| io_error(dest, "cannot copy the ledger file", e))?;
            // The copy keeps the ledger's permission bits, not the temporary file's.
            if let Ok(meta) = src.metadata() {
                let _ = out.set_permissions(std::fs::Permissions::from_mode(
                    meta.permissions().mode() & 0o7777,
                ));
            }
            Ok(bytes)
        };
        if self.is_read_only() {
            return copy(out);
        }
        let mut writer = self.writer.lock();
        self.checkpoint_locked(&mut writer)?;
        // Make everything durable in the file even without a journal (`Durability::None`
        // commits live in memory), and save redb's allocator state with it, so that closing
        // the copy (below) needs no repair walk. With a journal this adds no data, one sync.
        let committed = self.with_db(super::write::write_panic, |db| {
            let mut txn = db.begin_write()?;
            txn.set_quick_repair(true);
            txn.commit()?;
            Ok(())
        });
        if let Err(e) = committed {
            *writer = None;
            self.needs_reopen
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
        copy(out)
    }
}
