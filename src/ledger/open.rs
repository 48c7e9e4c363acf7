//! Opening a ledger: files, memory and custom backends; schema checks; atomic creation; and
//! reopening after an I/O error.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableTable};

use super::checkpoint;
use super::commit::GroupCommit;
use super::{Durability, Ledger, Options, Source};
use crate::error::{Error, Result};
use crate::model::limits::MAX_SWEEP_LIMIT;
use crate::storage::{self, tables};

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
    /// [`Error::NotALedger`] when the file is empty, damaged or belongs to something else.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Ledger> {
        options.validate()?;
        let path = path.as_ref();
        let not_ledger = |detail| Error::NotALedger {
            path: path.display().to_string(),
            detail,
        };
        match std::fs::metadata(path) {
            // An empty file is never a ledger: it is a ledger that lost its contents, or a
            // placeholder. Silently starting a fresh, empty ledger in it would hide that.
            Ok(meta) if meta.is_file() && meta.len() == 0 => {
                return Err(not_ledger(
                    "the file is empty (0 bytes); delete it to start a new ledger".into(),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                no_panic(not_ledger, || create_file(path, options.cache_size_bytes))?;
            }
            Err(e) => {
                return Err(Error::Storage {
                    message: format!("cannot open `{}`: {e}", path.display()),
                })
            }
        }
        // A panic while opening: the file is damaged beyond opening, so `verify` cannot help.
        let not_ledger = |detail| Error::NotALedger {
            path: path.display().to_string(),
            detail: format!("{detail}; restore it from a backup"),
        };
        no_panic(not_ledger, || {
            let db = open_file(path, options.cache_size_bytes)?;
            Self::init(db, Source::File(path.to_path_buf()), options)
        })
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
        Self::init(db, Source::Fixed(":memory:"), options)
    }

    /// Open a ledger on a caller-supplied redb storage backend (fault injection, encryption).
    /// After an I/O error such a ledger cannot reopen itself: every later call fails with a
    /// storage error, and the caller must open it anew. See
    /// [`open_backend_factory`](Self::open_backend_factory) for one that can.
    pub fn open_backend(backend: impl redb::StorageBackend, options: Options) -> Result<Ledger> {
        options.validate()?;
        let db = Self::open_backend_db(backend, options.cache_size_bytes)?;
        Self::init(db, Source::Fixed("<backend>"), options)
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
        Self::init(db, Source::Factory(Box::new(reopen)), options)
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

    fn init(db: Database, source: Source, options: Options) -> Result<Ledger> {
        ensure_schema(&db, Path::new(&source.to_string()))?;
        let recovered = match &source {
            // Every open of a file replays a pending journal, whatever the options say.
            Source::File(path) => {
                let policy = checkpoint::Policy {
                    keep_journal: keeps_journal(&options),
                    discard_at_ms: options.discard_journal.then(|| options.clock.now_ms()),
                };
                Some(checkpoint::recover(&db, path, policy)?)
            }
            _ => None,
        };
        let (journal, journal_discard) = recovered.map_or((None, None), |r| (r.journal, r.discard));
        let ledger = Ledger {
            db: RwLock::new(Some(db)),
            source,
            options,
            writer: Mutex::new(None),
            needs_reopen: AtomicBool::new(false),
            journal: Mutex::new(journal),
            journal_discard,
            group: GroupCommit::default(),
            earliest_deadline_ms: AtomicU64::new(0),
            last_at_ms: AtomicU64::new(0),
            poison: Mutex::new(None),
            feed: Default::default(),
        };
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
        let mut db = self.db.write();
        let fresh = match &self.source {
            Source::File(path) => {
                // The old handle holds the file lock: it must go before the new one opens.
                drop(db.take());
                no_panic(
                    |detail| Error::NotALedger {
                        path: path.display().to_string(),
                        detail,
                    },
                    || open_file(path, self.options.cache_size_bytes),
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
            *self.journal.lock() = checkpoint::recover(&fresh, path, policy)?.journal;
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

/// Create the tables of a new file, or check that an existing one is a ledger of a version
/// this build reads.
fn ensure_schema(db: &Database, shown: &Path) -> Result<()> {
    let not_ledger = |detail: String| Error::NotALedger {
        path: shown.display().to_string(),
        detail,
    };
    let txn = db.begin_write()?;
    let names: Vec<String> = txn
        .list_tables()?
        .map(|h| redb::TableHandle::name(&h).to_string())
        .collect();
    if names.is_empty() {
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(tables::META_SCHEMA_KEY, [tables::SCHEMA_VERSION].as_slice())?;
            txn.open_table(tables::WORKSPACES)?;
            txn.open_table(tables::TRANSACTIONS)?;
            txn.open_table(tables::HISTORY)?;
            txn.open_table(tables::GENERATIONS)?;
            txn.open_table(tables::DEADLINES)?;
            txn.open_table(tables::IDEMPOTENCY)?;
            txn.open_table(tables::CONSUMERS)?;
            crate::engine::GrantTables::open(&txn)?;
            txn.open_table(tables::ALERTS)?;
        }
        txn.commit()?;
        return Ok(());
    }
    if !names.iter().any(|n| n == "meta") {
        return Err(not_ledger(format!(
            "it holds the tables {names:?} and no credit-ledger metadata"
        )));
    }
    let meta = txn
        .open_table(tables::META)
        .map_err(|e| not_ledger(e.to_string()))?;
    let version = meta
        .get(tables::META_SCHEMA_KEY)?
        .and_then(|v| v.value().first().copied());
    match version {
        None => return Err(not_ledger("its metadata has no schema version".into())),
        Some(v) if v > tables::SCHEMA_VERSION => {
            return Err(Error::UnsupportedFormat {
                found: v,
                supported: tables::SCHEMA_VERSION,
            })
        }
        Some(_) => {}
    }
    drop(meta);
    // Every table must be there with the right key and value types.
    macro_rules! check {
        ($($t:expr),*) => {$(
            txn.open_table($t).map_err(|e| not_ledger(e.to_string()))?;
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
    // A version 1 file lacks the consumers and alerts tables, and a file before version 3
    // the grant tables: opening never writes, so its first write creates them and records
    // the current version (see `engine::Ctx::open`), and reads take a missing table as empty.
    if version.is_some_and(|v| v >= tables::SCHEMA_VERSION) {
        check!(
            tables::GRANTS,
            tables::GRANT_ORDER,
            tables::GRANT_EXPIRIES,
            tables::ALLOCATIONS,
            tables::GRANT_BOOKS
        );
    }
    txn.abort()?;
    Ok(())
}
