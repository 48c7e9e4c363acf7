//! Opening a ledger: files, memory and custom backends; schema checks; atomic creation; and
//! reopening after an I/O error.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable};

use super::checkpoint;
use super::commit::GroupCommit;
use super::{Durability, Ledger, Options, Source};
use crate::error::{Error, Result};
use crate::model::limits::MAX_SWEEP_LIMIT;
use crate::storage::journal_file::{self, Access, JournalFile};
use crate::storage::{self, tables};

/// How many stale `<name>.creating-<pid>` files one creation looks at, at most: a folder
/// flooded with them must not make a creation slow.
const MAX_STALE_CREATING_FILES: usize = 64;

pub(super) fn map_open_error(path: &Path, e: redb::DatabaseError) -> Error {
    let shown = path.display().to_string();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::AlreadyOpen { path: shown },
        // redb reports "not a redb database" (another format, random bytes) as InvalidData.
        // A file too short for redb's header is not a ledger either.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Error::NotALedger {
                path: shown,
                detail: io.to_string(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Error::Storage {
            message: format!("cannot open `{shown}`: {io}"),
        },
        other => Error::NotALedger {
            path: shown,
            detail: other.to_string(),
        },
    }
}

/// Run `f`, turning a panic into an error. redb asserts (or indexes out of bounds) on some kinds
/// of damaged pages instead of returning an error, while reading and while committing; a
/// caller of the ledger must get a typed error for a damaged file, never a panic, so opening,
/// every read and every write's storage work run under this guard. The process's panic hook
/// still runs first (replacing a process-wide hook is not a library's call to make), but it can
/// tell such a panic from a bug: [`super::inside_panic_guard`] is true while this guard runs.
pub(super) fn no_panic<T>(
    on_panic: impl FnOnce(String) -> Error,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let _marked = super::panic_guard::Marked::enter();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(on_panic(format!(
            "the storage engine failed on damaged data ({message})"
        )))
    })
}

/// Open the redb file at `path` (which exists), mapping redb's errors to ours.
fn open_file(path: &Path, cache_size_bytes: usize) -> Result<Database> {
    redb::Builder::new()
        .set_cache_size(cache_size_bytes)
        .create(path)
        .map_err(|e| map_open_error(path, e))
}

/// Create a new ledger file at `path` so that a crash never leaves a half-made file there:
/// build it under a temporary name in the same folder, commit its schema durably, then link
/// it into place (failing, not overwriting, if someone else created `path` meanwhile) and
/// sync the folder.
fn create_file(path: &Path, cache_size_bytes: usize) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::Storage {
        message: format!("cannot create `{}`: {what}: {e}", path.display()),
    };
    let name = path.file_name().ok_or_else(|| Error::Storage {
        message: format!("`{}` does not name a file", path.display()),
    })?;
    remove_stale_creating_files(path);
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".creating-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let made = open_file(&tmp, cache_size_bytes).and_then(|db| ensure_schema(&db, &tmp));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        // Another process created it first: open theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io("linking it into place", e)),
    }
    storage::sync_folder_of(path).map_err(|e| io("syncing its folder", e))
}

/// Remove the `<name>.creating-<pid>` files that creations of the ledger at `path` by
/// processes that no longer run left behind (a `kill -9` during creation). Only names of
/// exactly that pattern, only regular files, and only when `/proc` says the pid is not alive;
/// anything else is left alone.
fn remove_stale_creating_files(path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let prefix = format!("{name}.creating-");
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Without /proc there is no telling which pids are alive: leave every file.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut seen = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        seen += 1;
        if seen > MAX_STALE_CREATING_FILES {
            break;
        }
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let stale = entry.path();
        match std::fs::remove_file(&stale) {
            Ok(()) => {
                tracing::info!(file = %stale.display(), "removed a creation left by a dead process")
            }
            Err(e) => {
                tracing::warn!(file = %stale.display(), error = %e, "cannot remove a stale creation")
            }
        }
    }
}

/// Check that `path` names a regular file that is not empty, the precondition of opening an
/// existing ledger. `Ok(false)` when nothing is there.
fn check_existing(path: &Path) -> Result<bool> {
    let not_ledger = |detail: &str| Error::NotALedger {
        path: path.display().to_string(),
        detail: detail.into(),
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(not_ledger(
            "it is not a regular file (a directory, device, FIFO or socket)",
        )),
        // An empty file is never a ledger: it is a ledger that lost its contents, or a
        // placeholder. Silently starting a fresh, empty ledger in it would hide that.
        Ok(meta) if meta.len() == 0 => Err(not_ledger(
            "the file is empty (0 bytes); delete it to start a new ledger",
        )),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Storage {
            message: format!("cannot open `{}`: {e}", path.display()),
        }),
    }
}

/// The canonical path a new file at `path` would have: its folder resolved, its name kept.
fn canonical_new(path: &Path) -> Result<std::path::PathBuf> {
    let name = path.file_name().ok_or_else(|| Error::Storage {
        message: format!("`{}` does not name a file", path.display()),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(journal_file::canonical(dir)?.join(name))
}

/// Whether the ledger file records an open journal epoch (acknowledged writes in its journal).
fn epoch_pending(db: &impl ReadableDatabase) -> Result<bool> {
    let rtx = db.begin_read()?;
    match rtx.open_table(tables::META) {
        Ok(meta) => Ok(tables::get_journal_epoch(&meta)?.is_some()),
        Err(_) => Ok(false),
    }
}

/// Check that the file at the journal's place is this ledger's or empty, when the ledger file
/// records no open journal epoch. (With an epoch open, the replay checks the journal itself,
/// and refuses one that is missing, another ledger's or another copy's.)
fn check_journal_owner(db: &impl ReadableDatabase, file: &JournalFile) -> Result<()> {
    let rtx = db.begin_read()?;
    let meta = match rtx.open_table(tables::META) {
        Ok(meta) => meta,
        // No `meta` table of ours: not a ledger, or a new one; the schema check says which.
        Err(_) => return file.check_owner(None),
    };
    if tables::get_journal_epoch(&meta)?.is_some() {
        return Ok(());
    }
    file.check_owner(tables::get_meta_u64(&meta, tables::META_LEDGER_ID_KEY)?)
}

impl Ledger {
    /// Open the ledger at `path`, creating it if it does not exist, with default [`Options`].
    pub fn open(path: impl AsRef<Path>) -> Result<Ledger> {
        Self::open_with(path, Options::default())
    }

    /// Open the ledger at `path` with `options`, creating it if it does not exist.
    ///
    /// A new file is created atomically: a crash during creation leaves no file (at worst a
    /// `<name>.creating-<pid>` file next to it), never a half-made ledger.
    ///
    /// Fails with [`Error::AlreadyOpen`] when another process has the file open, with
    /// [`Error::NotALedger`] when the file is empty, not a regular file, damaged or belongs to
    /// something else, and with [`Error::ForeignFile`] when the journal's place
    /// (`<file>.journal`) holds a file that is not this ledger's journal.
    ///
    /// The ledger lives at the canonical form of `path` (symlinks resolved): its journal is
    /// next to the real file, whichever link it was opened through. While it is open, the
    /// journal file exists and is locked; a clean close removes it.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Ledger> {
        options.validate()?;
        let path = path.as_ref();
        let not_ledger = |detail| Error::NotALedger {
            path: path.display().to_string(),
            detail,
        };
        let exists = check_existing(path)?;
        let canonical = if exists {
            journal_file::canonical(path)?
        } else {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(not_ledger(
                    "it is a symbolic link to nothing; the ledger follows no link to create a file"
                        .into(),
                ));
            }
            canonical_new(path)?
        };
        // The journal's lock first: while it is held, no other ledger touches the file, even
        // while this one reopens it after an I/O error.
        let journal_file = JournalFile::acquire(&canonical, Access::Write, path)?;
        // A panic while opening: the file is damaged beyond opening, so `verify` cannot help.
        let damaged = |detail| Error::NotALedger {
            path: path.display().to_string(),
            detail: format!("{detail}; restore it from a backup"),
        };
        let opened = no_panic(damaged, || {
            if let (false, Some(file)) = (exists, &journal_file) {
                // A journal with content next to a file that is not there is someone else's.
                file.check_owner(None)?;
                create_file(&canonical, options.cache_size_bytes)?;
            }
            let db = open_file(&canonical, options.cache_size_bytes)
                .map_err(|e| shown_as(e, &canonical, path))?;
            if let Some(file) = &journal_file {
                check_journal_owner(&db, file)?;
            }
            Ok(db)
        });
        // A journal this open created was missing: if the ledger file expects one, the replay
        // must see it missing (and refuse), not as an empty file of ours.
        let opened = opened.and_then(|db| match &journal_file {
            Some(file) if file.created() && epoch_pending(&db)? => Ok((db, true)),
            _ => Ok((db, false)),
        });
        match opened {
            Ok((db, missing)) => {
                let journal_file = match journal_file {
                    Some(file) if missing => {
                        file.remove_if_empty();
                        None
                    }
                    other => other,
                };
                Self::init(db, Source::File(canonical), options, journal_file)
            }
            Err(e) => {
                if let Some(file) = journal_file.filter(JournalFile::created) {
                    file.remove_if_empty();
                }
                Err(e)
            }
        }
    }

    /// Open the existing ledger at `path` for reading only, with default [`Options`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Ledger> {
        Self::open_read_only_with(path, Options::default())
    }

    /// Open the existing ledger at `path` for reading only: the file and its folder are only
    /// ever opened for reading, so this works on read-only files, read-only filesystems and
    /// backups. Every write fails with [`Error::ReadOnly`].
    ///
    /// A ledger that a read-only open cannot show whole fails with [`Error::NeedsWrite`]: its
    /// journal holds acknowledged writes the file lacks (after a crash), or redb must repair
    /// the file. Open it once with [`open_with`](Self::open_with), which replays and repairs.
    /// Like a writable open, it fails with [`Error::AlreadyOpen`] while another process has the
    /// ledger open to write: redb's exclusive mode, the one the journal needs, shares a file
    /// with no reader (see README, "Reading a ledger another process has open").
    pub fn open_read_only_with(path: impl AsRef<Path>, options: Options) -> Result<Ledger> {
        options.validate()?;
        let path = path.as_ref();
        if !check_existing(path)? {
            return Err(Error::Storage {
                message: format!("no ledger file at `{}`", path.display()),
            });
        }
        let canonical = journal_file::canonical(path)?;
        let journal_file = JournalFile::acquire(&canonical, Access::Read, path)?;
        let needs_write = |detail: String| Error::NeedsWrite {
            path: path.display().to_string(),
            detail,
        };
        // A panic while opening: the file is damaged beyond opening, so `verify` cannot help.
        let not_ledger = |detail| Error::NotALedger {
            path: path.display().to_string(),
            detail: format!("{detail}; restore it from a backup"),
        };
        let reader = no_panic(not_ledger, || {
            let reader = redb::Builder::new()
                .set_cache_size(options.cache_size_bytes)
                .open_read_only(&canonical)
                .map_err(|e| match e {
                    redb::DatabaseError::RepairAborted => needs_write(
                        "it was not closed cleanly and redb must repair it, which writes".into(),
                    ),
                    e => shown_as(map_open_error(&canonical, e), &canonical, path),
                })?;
            check_schema(&reader, path)?;
            if let Some(file) = &journal_file {
                check_journal_owner(&reader, file)?;
            }
            {
                let rtx = reader.begin_read()?;
                let pending = checkpoint::pending_entries(&rtx, &canonical)?;
                if pending > 0 {
                    let journal = storage::journal::path_for(&canonical);
                    return Err(needs_write(format!(
                        "its journal `{}` holds {pending} acknowledged group commits the file \
                         does not have yet (it was not closed cleanly), and replaying them \
                         writes to the file",
                        journal.display()
                    )));
                }
            }
            Ok(reader)
        })?;
        let ledger = Self::new_ledger(
            None,
            Some(reader),
            Source::File(canonical),
            options,
            journal_file,
            None,
            None,
        );
        {
            let mut writer = ledger.writer.lock();
            *writer = Some(ledger.reload()?);
        }
        Ok(ledger)
    }

    /// A ledger that lives in memory only, with default [`Options`]. For tests and demos.
    pub fn in_memory() -> Result<Ledger> {
        Self::in_memory_with(Options::default())
    }

    /// A ledger that lives in memory only.
    pub fn in_memory_with(options: Options) -> Result<Ledger> {
        options.validate()?;
        let db = redb::Builder::new()
            .set_cache_size(options.cache_size_bytes)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| map_open_error(Path::new(":memory:"), e))?;
        Self::init(db, Source::Fixed(":memory:"), options, None)
    }

    /// Open a ledger on a caller-supplied redb storage backend (fault injection, encryption).
    /// After an I/O error such a ledger cannot reopen itself: every later call fails with a
    /// storage error, and the caller must open it anew. See
    /// [`open_backend_factory`](Self::open_backend_factory) for one that can.
    pub fn open_backend(backend: impl redb::StorageBackend, options: Options) -> Result<Ledger> {
        options.validate()?;
        let db = Self::open_backend_db(backend, options.cache_size_bytes)?;
        Self::init(db, Source::Fixed("<backend>"), options, None)
    }

    /// Open a ledger on the backend `factory` returns, and call `factory` again to reopen the
    /// ledger after an I/O error, the way a file ledger reopens its file.
    pub fn open_backend_factory<B: redb::StorageBackend>(
        factory: impl Fn() -> B + Send + Sync + 'static,
        options: Options,
    ) -> Result<Ledger> {
        options.validate()?;
        let cache = options.cache_size_bytes;
        let db = Self::open_backend_db(factory(), cache)?;
        let reopen = move || Self::open_backend_db(factory(), cache);
        Self::init(db, Source::Factory(Box::new(reopen)), options, None)
    }

    fn open_backend_db(backend: impl redb::StorageBackend, cache: usize) -> Result<Database> {
        let not_ledger = |detail| Error::NotALedger {
            path: "<backend>".into(),
            detail,
        };
        no_panic(not_ledger, || {
            redb::Builder::new()
                .set_cache_size(cache)
                .create_with_backend(backend)
                .map_err(|e| map_open_error(Path::new("<backend>"), e))
        })
    }

    fn new_ledger(
        db: Option<Database>,
        reader: Option<ReadOnlyDatabase>,
        source: Source,
        options: Options,
        journal_file: Option<JournalFile>,
        journal: Option<crate::storage::journal::Journal>,
        journal_discard: Option<crate::JournalDiscard>,
    ) -> Ledger {
        Ledger {
            db: RwLock::new(db),
            reader,
            journal_file,
            source,
            options,
            writer: Mutex::new(None),
            warm: Mutex::new(None),
            needs_reopen: AtomicBool::new(false),
            journal: Mutex::new(journal),
            journal_discard,
            group: GroupCommit::default(),
            earliest_deadline_ms: AtomicU64::new(0),
            last_at_ms: AtomicU64::new(0),
            poison: Mutex::new(None),
            feed: Default::default(),
        }
    }

    fn init(
        db: Database,
        source: Source,
        options: Options,
        journal_file: Option<JournalFile>,
    ) -> Result<Ledger> {
        let recovered = (|| {
            ensure_schema(&db, Path::new(&source.to_string()))?;
            match &source {
                // Every open of a file replays a pending journal, whatever the options say.
                Source::File(path) => {
                    let policy = checkpoint::Policy {
                        keep_journal: keeps_journal(&options),
                        discard_at_ms: options.discard_journal.then(|| options.clock.now_ms()),
                    };
                    let handle = journal_file.as_ref().map(JournalFile::handle).transpose()?;
                    Ok(Some(checkpoint::recover(&db, path, policy, handle)?))
                }
                _ => Ok(None),
            }
        })();
        let recovered = match recovered {
            Ok(r) => r,
            Err(e) => {
                if let Some(file) = journal_file.filter(JournalFile::created) {
                    drop(db);
                    file.remove_if_empty();
                }
                return Err(e);
            }
        };
        let (mut journal, journal_discard) =
            recovered.map_or((None, None), |r| (r.journal, r.discard));
        // An operator's discard moved the journal aside (with the lock on it), or accepted a
        // missing one: lock a new file at the journal's place, and let the journal use it.
        let journal_file = match (journal_file, &source) {
            (Some(file), _) if file.still_at_path() => Some(file),
            (_, Source::File(path)) => {
                let file = JournalFile::acquire(path, Access::Write, path)?;
                if let (Some(j), Some(f)) = (journal.take(), &file) {
                    journal = Some(j.with_file(f.handle()?)?);
                }
                file
            }
            (file, _) => file,
        };
        let ledger = Self::new_ledger(
            Some(db),
            None,
            source,
            options,
            journal_file,
            journal,
            journal_discard,
        );
        {
            let mut writer = ledger.writer.lock();
            *writer = Some(ledger.reload()?);
        }
        if ledger.options.sweep_on_open {
            loop {
                match ledger.sweep_expired(MAX_SWEEP_LIMIT) {
                    Ok(report) if report.more_expired => continue,
                    Ok(_) => break,
                    // A clock far behind the log refuses every write, the catch-up sweep
                    // included; reads still work, so the ledger opens and writes say why.
                    Err(Error::ClockRegressed { .. }) => break,
                    // A damaged record must not make the file unopenable: open it, so that
                    // `verify` can name the damage.
                    Err(e @ Error::Corruption { .. }) => {
                        tracing::warn!(error = %e, "catch-up sweep stopped at a damaged record");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(ledger)
    }

    /// Close the database and open it again from its source, after an I/O error left redb
    /// refusing every write. Called by the writer, with the writer lock held.
    pub(super) fn reopen(&self) -> Result<()> {
        // Dropping the old handle and replaying the journal touch the damaged file too.
        no_panic(super::write::write_panic, || self.reopen_unguarded())
    }

    fn reopen_unguarded(&self) -> Result<()> {
        if self.reader.is_some() {
            return Err(Error::ReadOnly {
                path: self.source.to_string(),
            });
        }
        let mut db = self.db.write();
        let fresh = match &self.source {
            Source::File(path) => {
                // The old handle holds the file lock: it must go before the new one opens.
                drop(db.take());
                // `open`, not `create`: a ledger file that is gone must not come back empty.
                no_panic(
                    |detail| Error::NotALedger {
                        path: path.display().to_string(),
                        detail,
                    },
                    || {
                        redb::Builder::new()
                            .set_cache_size(self.options.cache_size_bytes)
                            .open(path)
                            .map_err(|e| map_open_error(path, e))
                    },
                )?
            }
            Source::Factory(open) => {
                drop(db.take());
                open()?
            }
            Source::Fixed(_) => return Ok(()),
        };
        ensure_schema(&fresh, Path::new(&self.source.to_string()))?;
        if let Source::File(path) = &self.source {
            // The journal may hold commits the reopened file does not: replay them.
            // (Never discarding: that is for the operator, at open.)
            let policy = checkpoint::Policy {
                keep_journal: keeps_journal(&self.options),
                discard_at_ms: None,
            };
            let handle = self
                .journal_file
                .as_ref()
                .map(JournalFile::handle)
                .transpose()?;
            *self.journal.lock() = checkpoint::recover(&fresh, path, policy, handle)?.journal;
        }
        *db = Some(fresh);
        tracing::warn!(ledger = %self.source, "reopened the ledger after an I/O error");
        Ok(())
    }
}

/// Whether a file ledger opened with `options` writes through a journal.
fn keeps_journal(options: &Options) -> bool {
    options.journal && options.durability == Durability::Immediate
}

/// `e`, an error about the canonical path `canonical`, naming `shown` (the path the caller
/// gave) instead, so that messages speak of the file the caller knows.
fn shown_as(e: Error, canonical: &Path, shown: &Path) -> Error {
    let shown = shown.display().to_string();
    match e {
        Error::AlreadyOpen { .. } => Error::AlreadyOpen { path: shown },
        Error::NotALedger { detail, .. } => Error::NotALedger {
            path: shown,
            detail,
        },
        Error::Storage { message } => Error::Storage {
            message: message.replace(&canonical.display().to_string(), &shown),
        },
        other => other,
    }
}

/// Check, in a read transaction, that a read-only file is a ledger of a version this build
/// reads (the read-only twin of [`ensure_schema`]).
fn check_schema(db: &ReadOnlyDatabase, shown: &Path) -> Result<()> {
    let rtx = db.begin_read()?;
    let names = rtx.table_names()?;
    check_tables(&rtx, &names, shown, GrantCheck::Skipped)
}

/// What the schema check needs of a transaction, so that one check serves the read-only open
/// (over a `ReadTransaction`) and the writable one (over a `WriteTransaction`).
trait SchemaSource {
    /// The names of the tables in the file.
    fn table_names(&self) -> Result<Vec<String>>;
    /// Open `table`, which fails when it is missing or has other key or value types.
    fn probe<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: redb::TableDefinition<K, V>,
    ) -> std::result::Result<(), redb::TableError>;
    /// The schema version `meta` records; `not_ledger` when `meta` cannot be opened.
    fn schema_version(&self, not_ledger: &dyn Fn(String) -> Error) -> Result<Option<u8>>;
}

/// The schema version in an opened `meta` table.
fn version_in(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<u8>> {
    Ok(meta
        .get(tables::META_SCHEMA_KEY)?
        .and_then(|v| v.value().first().copied()))
}

/// Both transaction types have the same methods under the same names, but no shared trait.
macro_rules! schema_source {
    ($($txn:ty),*) => {$(
        impl SchemaSource for $txn {
            fn table_names(&self) -> Result<Vec<String>> {
                Ok(self
                    .list_tables()?
                    .map(|h| redb::TableHandle::name(&h).to_string())
                    .collect())
            }
            fn probe<K: redb::Key + 'static, V: redb::Value + 'static>(
                &self,
                table: redb::TableDefinition<K, V>,
            ) -> std::result::Result<(), redb::TableError> {
                self.open_table(table).map(drop)
            }
            fn schema_version(&self, not_ledger: &dyn Fn(String) -> Error) -> Result<Option<u8>> {
                let meta = self
                    .open_table(tables::META)
                    .map_err(|e| not_ledger(e.to_string()))?;
                version_in(&meta)
            }
        }
    )*};
}
schema_source!(redb::ReadTransaction, redb::WriteTransaction);

/// Whether the schema check also opens the grant tables (and the grant notice index) of a
/// file whose version has them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GrantCheck {
    /// The writable open checks them.
    Checked,
    /// The read-only open does not: its reads take a missing grant table as empty.
    Skipped,
}

/// Check that an existing file, holding the tables `names`, is a ledger of a version this
/// build reads, with every table there and of the right key and value types.
fn check_tables(
    txn: &impl SchemaSource,
    names: &[String],
    shown: &Path,
    grant_tables: GrantCheck,
) -> Result<()> {
    let not_ledger = |detail: String| Error::NotALedger {
        path: shown.display().to_string(),
        detail,
    };
    if !names.iter().any(|n| n == "meta") {
        return Err(not_ledger(format!(
            "it holds the tables {names:?} and no credit-ledger metadata"
        )));
    }
    let version = txn.schema_version(&not_ledger)?;
    check_version(version).map_err(|e| match e {
        Error::NotALedger { detail, .. } => not_ledger(detail),
        e => e,
    })?;
    // Each table is looked for by name first: opening a missing table in a write transaction
    // would create it empty, and the open would then go ahead without what it held (a
    // deleted `generations` table opened as a ledger with no generations).
    let shown_version = version.map_or_else(|| "?".to_string(), |v| v.to_string());
    macro_rules! check {
        ($($t:expr),*) => {$(
            let name = redb::TableHandle::name(&$t);
            if !names.iter().any(|n| n == name) {
                return Err(not_ledger(format!(
                    "it has no `{name}` table, which every ledger of its schema version \
                     ({shown_version}) has: the file was damaged or edited; restore it from a \
                     backup"
                )));
            }
            txn.probe($t).map_err(|e| not_ledger(e.to_string()))?;
        )*};
    }
    check!(
        tables::WORKSPACES,
        tables::TRANSACTIONS,
        tables::HISTORY,
        tables::GENERATIONS,
        tables::DEADLINES,
        tables::IDEMPOTENCY
    );
    // A version 1 file lacks the consumers and alerts tables, a file before version 3 the
    // grant tables and one before version 4 the notice index (version 5's `refund_pages`
    // is read by no build that writes version 6, which deletes it): opening never writes, so its
    // first write creates them and records the current version (see `engine::Ctx::open`), and
    // reads take a missing table as empty.
    if grant_tables == GrantCheck::Skipped {
        return Ok(());
    }
    if version.is_some_and(|v| v >= tables::GRANTS_SCHEMA_VERSION) {
        check!(
            tables::GRANTS,
            tables::GRANT_ORDER,
            tables::GRANT_EXPIRIES,
            tables::ALLOCATIONS,
            tables::GRANT_BOOKS
        );
    }
    if version.is_some_and(|v| v >= tables::FEED_SCHEMA_VERSION) {
        check!(tables::CONSUMERS, tables::ALERTS);
    }
    if version.is_some_and(|v| v >= tables::NOTICES_SCHEMA_VERSION) {
        check!(tables::GRANT_NOTICES);
    }
    Ok(())
}

/// The schema version check shared by both opens.
fn check_version(version: Option<u8>) -> Result<()> {
    match version {
        None => Err(Error::NotALedger {
            path: String::new(),
            detail: "its metadata has no schema version".into(),
        }),
        Some(v) if v > tables::SCHEMA_VERSION => Err(Error::UnsupportedFormat {
            found: v,
            supported: tables::SCHEMA_VERSION,
        }),
        Some(_) => Ok(()),
    }
}

/// Create the tables of a new file, or check that an existing one is a ledger of a version
/// this build reads.
fn ensure_schema(db: &Database, shown: &Path) -> Result<()> {
    let txn = db.begin_write()?;
    let names = txn.table_names()?;
    if names.is_empty() {
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(tables::META_SCHEMA_KEY, [tables::SCHEMA_VERSION].as_slice())?;
            // Every Refund of a new file carries its lots.
            tables::put_meta_u64(&mut meta, tables::META_REFUND_LOTS_FROM_KEY, 1)?;
            txn.open_table(tables::WORKSPACES)?;
            txn.open_table(tables::TRANSACTIONS)?;
            txn.open_table(tables::HISTORY)?;
            txn.open_table(tables::GENERATIONS)?;
            txn.open_table(tables::DEADLINES)?;
            txn.open_table(tables::IDEMPOTENCY)?;
            txn.open_table(tables::CONSUMERS)?;
            crate::engine::GrantTables::create(&txn)?;
            txn.open_table(tables::GRANT_NOTICES)?;
            txn.open_table(tables::ALERTS)?;
        }
        txn.commit()?;
        return Ok(());
    }
    check_tables(&txn, &names, shown, GrantCheck::Checked)?;
    txn.abort()?;
    Ok(())
}
