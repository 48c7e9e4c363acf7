//! Whether the journal file still has its name: checked after every journal sync, without
//! touching the journal's inode on the common path.
//!
//! Why: an entry synced into a journal that was deleted (or renamed away, or replaced) while
//! the ledger runs is durable nowhere a reopen would look (issue 10, row 8). The ledger must
//! notice before it acknowledges the entry. Asking the file system each time (an `fstat` of
//! the journal after each sync) made a single durable call about 40 % slower on the VM of
//! BENCHMARKS.md, so on Linux the kernel tells us instead: an inotify watch on the journal
//! file, and after each sync one non-blocking `read` of the inotify descriptor, which fails
//! with `EAGAIN` when nothing happened. Only an event sends the check to the file system.
//!
//! What the kernel reports on the watched inode (checked by the tests below), with the
//! journal open:
//! - `unlink` of its name: `IN_ATTRIB` (the link count changed), queued before `unlink(2)`
//!   returns; `IN_DELETE_SELF` only comes when the last descriptor closes;
//! - a rename of it away: `IN_MOVE_SELF`; another file renamed over it: `IN_ATTRIB`;
//! - a hard link made or removed, a `chmod`, a `touch`: `IN_ATTRIB`, and the file keeps its
//!   name; our own writes and syncs: nothing (`IN_MODIFY` is not watched).
//!
//! So an event only says "look": the check then confirms with the file system (the file's
//! link count is 0, or its path no longer names this inode). Reading the event consumes it,
//! so a `chmod` costs one confirmation, not one per commit. A queue overflow
//! (`IN_Q_OVERFLOW`) is an event like any other. The watch is added before the first
//! confirmation (see [`NameWatch::new`]), so a change that came before the watch is seen by
//! that confirmation and every later one makes an event.
//!
//! Where no watch can be had (inotify unavailable, `EMFILE`, out of watches: `ENOSPC`, the
//! watch removed under us, or a target other than Linux) every check confirms with the file
//! system, as before, and the first such ledger in the process logs it with `tracing`.
//!
//! The kernel reports what goes through it: any process on this machine. A deletion made by
//! another machine on a network file system reaches no watch (nor, reliably, a cached
//! `fstat`); keep a ledger on a local file system.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Bytes read from the inotify descriptor at a time: room for many events of a watch on a file
/// (16 bytes each, with no name). More are read until the queue is empty.
#[cfg(any(target_os = "linux", target_os = "android"))]
const EVENT_BUFFER_BYTES: usize = 1024;

/// Notices that an open journal file lost its name.
#[derive(Debug)]
pub(crate) struct NameWatch {
    path: PathBuf,
    /// The identity of the watched file.
    dev: u64,
    ino: u64,
    how: How,
    /// How many checks asked the file system (an event came, or there is no watch).
    confirmations: u64,
}

#[derive(Debug)]
enum How {
    /// An inotify descriptor watching the file; `confirm_next` makes the next check confirm
    /// even without an event (the first one after the watch was added).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Inotify {
        fd: rustix::fd::OwnedFd,
        confirm_next: bool,
    },
    /// No watch: every check confirms with the file system.
    EveryCheck,
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Storage {
        message: format!("journal `{}`: {what}: {e}", path.display()),
    }
}

/// Log once per process that a ledger checks its journal's name the slow way.
fn log_fallback(path: &Path, why: &dyn std::fmt::Display) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        tracing::warn!(
            journal = %path.display(),
            error = %why,
            "cannot watch the journal file with inotify; checking with the file system after \
             every journal sync instead (correct, but each durable commit costs more); raise \
             fs.inotify.max_user_instances or max_user_watches to avoid it"
        );
    });
}

impl NameWatch {
    /// Watch `file`, open at `path`. When no watch can be added, the watch falls back to
    /// confirming at every check (and says so once, with `tracing`).
    pub fn new(path: &Path, file: &File) -> Result<NameWatch, Error> {
        let watch = Self::every_check(path, file)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let watch = match add_watch(path) {
            Ok(fd) => NameWatch {
                how: How::Inotify {
                    fd,
                    confirm_next: true,
                },
                ..watch
            },
            Err(e) => {
                log_fallback(path, &e);
                watch
            }
        };
        Ok(watch)
    }

    /// A watch that confirms with the file system at every check: where inotify is missing,
    /// and for tests of that path.
    pub fn every_check(path: &Path, file: &File) -> Result<NameWatch, Error> {
        let meta = file
            .metadata()
            .map_err(|e| io_error(path, "cannot stat it", e))?;
        Ok(NameWatch {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            how: How::EveryCheck,
            confirmations: 0,
        })
    }

    /// Whether `file` (the watched file) lost its name: deleted, renamed away, or replaced at
    /// its path. An entry synced into it is then durable nowhere a reopen would look.
    pub fn lost_name(&mut self, file: &File) -> Result<bool, Error> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let How::Inotify { fd, confirm_next } = &mut self.how {
            match drain(fd) {
                Ok(Drained { events: false, .. }) if !*confirm_next => return Ok(false),
                Ok(Drained { watch_gone, .. }) => {
                    *confirm_next = false;
                    if watch_gone {
                        // The kernel dropped the watch (the file system went away): no more
                        // events will come, so every check confirms from now on.
                        log_fallback(&self.path, &"the watch was removed");
                        self.how = How::EveryCheck;
                    }
                }
                Err(e) => {
                    log_fallback(&self.path, &e);
                    self.how = How::EveryCheck;
                }
            }
        }
        self.confirm(file)
    }

    /// Ask the file system: the file has no link left, or its path names another file or none.
    fn confirm(&mut self, file: &File) -> Result<bool, Error> {
        self.confirmations += 1;
        let meta = file
            .metadata()
            .map_err(|e| io_error(&self.path, "cannot stat it", e))?;
        if meta.nlink() == 0 {
            return Ok(true);
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => Ok(m.dev() != self.dev || m.ino() != self.ino),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_error(&self.path, "cannot stat its path", e)),
        }
    }

    /// How many checks asked the file system.
    #[cfg(test)]
    pub fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// Whether an inotify watch is in use.
    #[cfg(test)]
    pub fn is_watching(&self) -> bool {
        !matches!(self.how, How::EveryCheck)
    }
}

/// A non-blocking inotify descriptor watching `path` (not following a symlink) for a change of
/// its link count or attributes, a rename of it, and its deletion.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn add_watch(path: &Path) -> rustix::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
    inotify::add_watch(
        &fd,
        path,
        WatchFlags::ATTRIB
            | WatchFlags::MOVE_SELF
            | WatchFlags::DELETE_SELF
            | WatchFlags::DONT_FOLLOW,
    )?;
    Ok(fd)
}

/// What emptying the event queue found.
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Drained {
    /// At least one event (or an overflow) was queued.
    events: bool,
    /// The kernel removed the watch (`IN_IGNORED`).
    watch_gone: bool,
}

/// Read every queued event; the usual case is one `read` that fails with `EAGAIN`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drain(fd: &rustix::fd::OwnedFd) -> rustix::io::Result<Drained> {
    use rustix::fs::inotify::{ReadFlags, Reader};
    use std::mem::MaybeUninit;
    let mut buf = [MaybeUninit::<u8>::uninit(); EVENT_BUFFER_BYTES];
    let mut reader = Reader::new(fd, &mut buf);
    let mut drained = Drained {
        events: false,
        watch_gone: false,
    };
    loop {
        match reader.next() {
            Ok(event) => {
                drained.events = true;
                drained.watch_gone |= event.events().contains(ReadFlags::IGNORED);
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(drained),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_at(path: &Path) -> File {
        std::fs::write(path, [0u8; 4096]).unwrap();
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    /// A watched file at `dir/j`, past its first confirmation.
    fn watched(dir: &Path) -> (PathBuf, File, NameWatch) {
        let path = dir.join("j");
        let file = file_at(&path);
        let mut watch = NameWatch::new(&path, &file).unwrap();
        assert!(!watch.lost_name(&file).unwrap());
        assert_eq!(watch.confirmations(), 1, "the first check confirms");
        (path, file, watch)
    }

    /// `lost_name` after `change`, and how many confirmations it took (1 = an event came).
    fn after(change: impl FnOnce(&Path, &File)) -> (bool, u64, bool) {
        let dir = tempfile::tempdir().unwrap();
        let (path, file, mut watch) = watched(dir.path());
        change(&path, &file);
        let lost = watch.lost_name(&file).unwrap();
        (lost, watch.confirmations() - 1, watch.is_watching())
    }

    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn the_kernel_reports_each_change_of_name_and_nothing_for_our_own_writes() {
        use std::os::unix::fs::{FileExt, PermissionsExt};
        // Our own appends, syncs and growth: no event, no confirmation.
        let (lost, confirmations, watching) = after(|_, f| {
            f.write_all_at(&[1u8; 4096], 4096).unwrap();
            f.sync_data().unwrap();
            f.set_len(64 * 1024).unwrap();
            f.sync_all().unwrap();
        });
        assert!(watching, "this machine has inotify");
        assert_eq!((lost, confirmations), (false, 0));
        // Deleted while open: an event at once, confirmed (link count 0).
        assert_eq!(
            after(|p, _| std::fs::remove_file(p).unwrap()),
            (true, 1, true)
        );
        // Renamed away: the path names nothing.
        let renamed = |p: &Path, _: &File| std::fs::rename(p, p.with_extension("old")).unwrap();
        assert_eq!(after(renamed), (true, 1, true));
        // Another file renamed over it.
        let replaced = |p: &Path, _: &File| {
            std::fs::write(p.with_extension("new"), b"x").unwrap();
            std::fs::rename(p.with_extension("new"), p).unwrap();
        };
        assert_eq!(after(replaced), (true, 1, true));
        // A hard link elsewhere, then the journal's own name removed: the path names nothing,
        // although the file still has a link.
        let moved_by_link = |p: &Path, _: &File| {
            std::fs::hard_link(p, p.with_extension("link")).unwrap();
            std::fs::remove_file(p).unwrap();
        };
        assert_eq!(after(moved_by_link), (true, 1, true));
        // A hard link made and removed, a chmod: events, but the name stands.
        let linked = |p: &Path, _: &File| {
            std::fs::hard_link(p, p.with_extension("link")).unwrap();
            std::fs::remove_file(p.with_extension("link")).unwrap();
        };
        assert_eq!(after(linked), (false, 1, true));
        let chmod = |p: &Path, _: &File| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap()
        };
        assert_eq!(after(chmod), (false, 1, true));
    }

    #[test]
    fn a_chmod_costs_one_confirmation_not_one_per_check() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, file, mut watch) = watched(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for _ in 0..10 {
            assert!(!watch.lost_name(&file).unwrap());
        }
        let expected = if watch.is_watching() { 2 } else { 11 };
        assert_eq!(watch.confirmations(), expected);
        // And the watch still works after it.
        std::fs::remove_file(&path).unwrap();
        assert!(watch.lost_name(&file).unwrap());
    }

    #[test]
    fn a_change_before_the_watch_is_seen_by_its_first_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let file = file_at(&path);
        // Renamed away after the file was opened, before the watch was added: the watch (on
        // the path) may be on another file or none, and the first check must say so.
        std::fs::rename(&path, dir.path().join("elsewhere")).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        let mut watch = NameWatch::new(&path, &file).unwrap();
        assert!(watch.lost_name(&file).unwrap());
        // Deleted before the watch: no watch can be added on a missing path (`ENOENT`), so
        // this one is the fallback, which confirms at every check.
        let path = dir.path().join("k");
        let file = file_at(&path);
        std::fs::remove_file(&path).unwrap();
        let mut watch = NameWatch::new(&path, &file).unwrap();
        assert!(!watch.is_watching());
        assert!(watch.lost_name(&file).unwrap());
        assert!(watch.lost_name(&file).unwrap());
        assert_eq!(watch.confirmations(), 2);
    }

    #[test]
    fn without_a_watch_every_check_asks_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let file = file_at(&path);
        let mut watch = NameWatch::every_check(&path, &file).unwrap();
        for _ in 0..3 {
            assert!(!watch.lost_name(&file).unwrap());
        }
        assert_eq!(watch.confirmations(), 3);
        std::fs::hard_link(&path, dir.path().join("other")).unwrap();
        assert!(!watch.lost_name(&file).unwrap(), "a second name is no loss");
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        assert!(watch.lost_name(&file).unwrap());
    }
}
