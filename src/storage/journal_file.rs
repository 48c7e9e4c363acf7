//! The journal's file: where it is, how it is opened, and the lock that says "this ledger is
//! open".
//!
//! The journal holds the only durable copy of the writes since the last checkpoint, so the
//! file that plays its part must be exactly this ledger's and nobody else's:
//!
//! - its path derives from the *canonical* ledger path (symlinks resolved), so a ledger opened
//!   through a link and through its real path keeps one journal;
//! - it is opened with `O_NOFOLLOW` and must be a regular file, so a symlink or a device at its
//!   path is never written through;
//! - a file already there that is neither empty (all zeros counts as empty: a journal that was
//!   grown but never written) nor this ledger's journal is refused with
//!   [`Error::ForeignFile`], and never written or removed;
//! - it is `flock`ed (through `rustix`, the crate has no unsafe code) for as long as the [`Ledger`](crate::Ledger) lives, exclusively by a
//!   ledger that may write and shared by a read-only one. redb's own file lock is released
//!   while a ledger reopens its file after an I/O error; this one is not, so another process
//!   can never slip in and write while the app still runs.
//!
//! A ledger that may write therefore creates its journal file when it opens (not at its first
//! write), and removes it on a clean close.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, OFlags};

use crate::error::Error;
use crate::storage::journal::{self, Owner};

/// How often `acquire` retries when the file it locked was replaced under it (a concurrent
/// close removed it): more than that is a fight over the path, reported as "already open".
const MAX_LOCK_ATTEMPTS: u32 = 8;

/// What an open needs the journal file for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// A ledger that may write: create the file when missing, lock it exclusively.
    Write,
    /// A read-only ledger: never create, lock shared.
    Read,
}

/// The journal file of an open ledger, locked for the ledger's whole life.
#[derive(Debug)]
pub(crate) struct JournalFile {
    path: PathBuf,
    file: File,
    /// Identity of the locked file, to check that the path still names it.
    dev: u64,
    ino: u64,
    /// This open created the (empty) file.
    created: bool,
}

fn foreign(path: &Path, detail: impl Into<String>) -> Error {
    Error::ForeignFile {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Storage {
        message: format!("journal `{}`: {what}: {e}", path.display()),
    }
}

/// The canonical form of an existing ledger path: absolute, with every symlink resolved.
pub(crate) fn canonical(ledger: &Path) -> Result<PathBuf, Error> {
    std::fs::canonicalize(ledger).map_err(|e| Error::Storage {
        message: format!("cannot resolve the path `{}`: {e}", ledger.display()),
    })
}

/// Open `path` without following a symlink and without blocking on a FIFO.
fn open_no_follow(path: &Path, access: Access, create: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(access == Access::Write)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
    if create {
        options.create_new(true).mode(0o644);
    }
    options.open(path)
}

/// Open the journal at `path` the one safe way: never through a symlink, never blocking on a
/// FIFO, and only if it is a regular file. `Ok(None)` when nothing is there (and `create` is
/// false); with `create`, a missing file is created (and `Ok(None)` means someone else created
/// it meanwhile).
pub(crate) fn open_checked(
    path: &Path,
    access: Access,
    create: bool,
) -> Result<Option<File>, Error> {
    let file = match open_no_follow(path, access, create) {
        Ok(f) => f,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if create && e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(JournalFile::open_error(path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| io_error(path, "cannot read its metadata", e))?;
    if !meta.file_type().is_file() {
        return Err(foreign(
            path,
            "it is not a regular file (a directory, device, FIFO or socket)",
        ));
    }
    Ok(Some(file))
}

/// Lock `file` exclusively for this process, or fail with "already open" naming `shown`.
pub(crate) fn lock_exclusive(file: &File, path: &Path, shown: &Path) -> Result<(), Error> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::AlreadyOpen {
            path: shown.display().to_string(),
        }),
        Err(e) => Err(io_error(path, "cannot lock it", e.into())),
    }
}

/// Fail with [`Error::ForeignFile`] unless `file` (open at `path`, at its start) is empty, all
/// zeros, or starts with an entry of the ledger `ledger_id` (`None`: a ledger that never wrote
/// a journal, so any content is someone else's).
pub(crate) fn check_owner(file: &File, path: &Path, ledger_id: Option<u64>) -> Result<(), Error> {
    let mut first = Vec::with_capacity(journal::BLOCK_BYTES as usize);
    file.take(journal::BLOCK_BYTES)
        .read_to_end(&mut first)
        .map_err(|e| io_error(path, "cannot read it", e))?;
    if first.iter().all(|&b| b == 0) {
        return Ok(());
    }
    match (journal::owner(&first), ledger_id) {
        (Owner::Cut, _) => Ok(()),
        (Owner::Ledger(found), Some(id)) if found == id => Ok(()),
        (Owner::Ledger(_), _) => Err(foreign(
            path,
            "it is the journal of another ledger; move it away, or open the ledger it \
             belongs to",
        )),
        (Owner::Foreign, _) => Err(foreign(
            path,
            format!(
                "it is not a credit-ledger journal ({} bytes, starting {:02x?}); it may be \
                 another program's file: move it away or rename the ledger",
                file.metadata().map_or(0, |m| m.len()),
                &first[..first.len().min(8)]
            ),
        )),
    }
}

impl JournalFile {
    /// Open and lock the journal of the ledger whose canonical path is `ledger`. With
    /// [`Access::Write`] the file is created when missing; with [`Access::Read`] a missing
    /// file is `Ok(None)`. `shown` is the ledger path to name in an "already open" error.
    pub fn acquire(ledger: &Path, access: Access, shown: &Path) -> Result<Option<Self>, Error> {
        let path = journal::path_for(ledger);
        for _ in 0..MAX_LOCK_ATTEMPTS {
            let (file, created) = match open_no_follow(&path, access, false) {
                Ok(f) => (f, false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match access {
                    Access::Read => return Ok(None),
                    Access::Write => match open_no_follow(&path, access, true) {
                        Ok(f) => (f, true),
                        // Someone created it meanwhile: open theirs, and lock it, next round.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(Self::open_error(&path, e)),
                    },
                },
                Err(e) => return Err(Self::open_error(&path, e)),
            };
            let meta = file
                .metadata()
                .map_err(|e| io_error(&path, "cannot read its metadata", e))?;
            if !meta.file_type().is_file() {
                return Err(foreign(
                    &path,
                    "it is not a regular file (a directory, device, FIFO or socket)",
                ));
            }
            let operation = match access {
                Access::Write => FlockOperation::NonBlockingLockExclusive,
                Access::Read => FlockOperation::NonBlockingLockShared,
            };
            match rustix::fs::flock(&file, operation) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    return Err(Error::AlreadyOpen {
                        path: shown.display().to_string(),
                    })
                }
                Err(e) => return Err(io_error(&path, "cannot lock it", e.into())),
            }
            let this = JournalFile {
                path: path.clone(),
                file,
                dev: meta.dev(),
                ino: meta.ino(),
                created,
            };
            // A ledger closing at the same moment removes its journal after we opened it: the
            // lock we got is then on a file nobody else will look at. Start again.
            if !this.still_at_path() {
                continue;
            }
            if created {
                // The file's name must be durable before an entry in it is acknowledged.
                super::sync_folder_of(&path)
                    .map_err(|e| io_error(&path, "cannot sync its folder", e))?;
            }
            return Ok(Some(this));
        }
        Err(Error::AlreadyOpen {
            path: shown.display().to_string(),
        })
    }

    fn open_error(path: &Path, e: std::io::Error) -> Error {
        if e.raw_os_error() == Some(rustix::io::Errno::ISDIR.raw_os_error()) {
            foreign(
                path,
                "it is a directory; the journal must be a regular file",
            )
        } else if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            foreign(
                path,
                "it is a symbolic link; the journal must be a regular file of its own",
            )
        } else {
            io_error(path, "cannot open it", e)
        }
    }

    /// Whether the path still names the file this holds.
    pub fn still_at_path(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m.dev() == self.dev && m.ino() == self.ino,
            Err(_) => false,
        }
    }

    /// A second handle on the same open file (and so under the same lock), for the journal's
    /// reads and appends.
    pub fn handle(&self) -> Result<File, Error> {
        self.file
            .try_clone()
            .map_err(|e| io_error(&self.path, "cannot duplicate its handle", e))
    }

    /// Fail with [`Error::ForeignFile`] unless the file is empty, all zeros, or starts with an
    /// entry of the ledger `ledger_id` (`None`: a ledger that never wrote a journal, so any
    /// content is someone else's).
    pub fn check_owner(&self, ledger_id: Option<u64>) -> Result<(), Error> {
        check_owner(&self.file, &self.path, ledger_id)
    }

    /// Remove the file if it is still at its path and empty: the clean close of a ledger that
    /// kept no journal, or the failed open that created it.
    pub fn remove_if_empty(self) {
        let empty = self.file.metadata().is_ok_and(|m| m.len() == 0);
        if empty && self.still_at_path() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(journal = %self.path.display(), error = %e, "cannot remove the empty journal");
            }
        }
    }

    /// Remove the file if it is still at its path: the clean close of a ledger whose journal
    /// holds nothing needed (checkpointed, or a ledger without a journal).
    pub fn remove(self) {
        if self.still_at_path() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(journal = %self.path.display(), error = %e, "cannot remove the journal");
            }
        }
    }

    /// This open created the file.
    pub fn created(&self) -> bool {
        self.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_the_file_goes_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("l.redb");
        let j = JournalFile::acquire(&ledger, Access::Write, &ledger)
            .unwrap()
            .unwrap();
        assert!(j.created());
        assert!(matches!(
            JournalFile::acquire(&ledger, Access::Write, &ledger),
            Err(Error::AlreadyOpen { .. })
        ));
        assert!(matches!(
            JournalFile::acquire(&ledger, Access::Read, &ledger),
            Err(Error::AlreadyOpen { .. })
        ));
        j.check_owner(None).unwrap();
        j.remove_if_empty();
        assert!(!journal::path_for(&ledger).exists());
        assert!(JournalFile::acquire(&ledger, Access::Read, &ledger)
            .unwrap()
            .is_none());
    }

    #[test]
    fn symlinks_and_foreign_content_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("l.redb");
        let other = dir.path().join("other");
        std::fs::write(&other, b"precious").unwrap();
        std::os::unix::fs::symlink(&other, journal::path_for(&ledger)).unwrap();
        assert!(matches!(
            JournalFile::acquire(&ledger, Access::Write, &ledger),
            Err(Error::ForeignFile { .. })
        ));
        std::fs::remove_file(journal::path_for(&ledger)).unwrap();
        std::fs::write(journal::path_for(&ledger), b"precious").unwrap();
        let j = JournalFile::acquire(&ledger, Access::Write, &ledger)
            .unwrap()
            .unwrap();
        assert!(matches!(
            j.check_owner(Some(1)),
            Err(Error::ForeignFile { .. })
        ));
        j.remove_if_empty();
        assert_eq!(std::fs::read(&other).unwrap(), b"precious");
        assert_eq!(
            std::fs::read(journal::path_for(&ledger)).unwrap(),
            b"precious"
        );
    }
}
