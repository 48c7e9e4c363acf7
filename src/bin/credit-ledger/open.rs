//! Which file, which clock: opening the ledger the way the global options say.

use std::path::{Path, PathBuf};

use credit_ledger::{Error, Ledger, ManualClock, Options};

use crate::args::{Cli, DEFAULT_DB};
use crate::fail::{one_line, CliError};

/// The global options, resolved.
pub struct Context {
    /// The ledger file.
    pub db: PathBuf,
    /// True when the path came from `--db` or `CREDIT_LEDGER_DB` rather than the default.
    pub db_explicit: bool,
    pub json: bool,
    /// `--now`, in Unix milliseconds.
    pub now_ms: Option<u64>,
}

/// Whether a command may create a new ledger file, and whether it writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create the file when it does not exist (`credit`).
    Create,
    /// The file must exist already.
    Existing,
    /// The file must exist, and is opened read-only when it needs no replay (the read
    /// commands), so that they work on read-only files, filesystems and backups.
    Read,
}

impl Context {
    pub fn new(cli: &Cli) -> Self {
        Context {
            db: cli.db.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DB)),
            db_explicit: cli.db.is_some(),
            json: cli.json,
            now_ms: cli.now,
        }
    }

    /// Options for the tool: the `--now` clock if given, and no catch-up sweep on open, so
    /// that reading never writes and `sweep` is the one command that sweeps.
    pub fn options(&self) -> Options {
        let options = Options::default().sweep_on_open(false);
        match self.now_ms {
            Some(ms) => options.clock(ManualClock::new(ms)),
            None => options,
        }
    }

    /// Open the ledger file.
    pub fn open(&self, mode: Mode) -> Result<Ledger, CliError> {
        check_path(&self.db, mode)?;
        if mode != Mode::Read {
            return Ok(Ledger::open_with(&self.db, self.options())?);
        }
        match Ledger::open_read_only_with(&self.db, self.options()) {
            Ok(ledger) => Ok(ledger),
            // A crashed ledger's journal must be replayed into the file before it can be read
            // whole: open it to write, which replays, or say exactly why that cannot be done.
            Err(needs @ Error::NeedsWrite { .. }) => {
                match Ledger::open_with(&self.db, self.options()) {
                    Ok(ledger) => Ok(ledger),
                    Err(Error::Storage { message }) => Err(CliError::refused(one_line(&format!(
                        "{needs}; opening it with write access failed: {message}"
                    )))),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn check_path(path: &Path, mode: Mode) -> Result<(), CliError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(CliError::usage(format!(
            "`{shown}` is a directory; give --db the path of a ledger file"
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match mode {
            Mode::Create => Ok(()),
            Mode::Existing | Mode::Read => Err(CliError::usage(format!(
                "no ledger file at `{shown}`; check --db or CREDIT_LEDGER_DB (the `credit` command creates a new ledger)"
            ))),
        },
        Err(e) => Err(CliError::refused(format!("cannot open `{shown}`: {e}"))),
    }
}
