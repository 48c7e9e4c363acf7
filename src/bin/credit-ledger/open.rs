//! Which file, which clock: opening the ledger the way the global options say, waiting for a
//! file another process holds, and refusing a write stamped far in the future.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use credit_ledger::{Clock, Error, Ledger, ManualClock, Options, SystemClock};

use crate::args::{Cli, DEFAULT_DB};
use crate::fail::CliError;

/// The longest `--wait` accepted, in milliseconds (one hour): a script that needs longer is
/// better off retrying on its own than holding a process that long.
pub const MAX_LOCK_WAIT_MS: u64 = 3_600_000;
/// The first pause between two tries to open a file another process holds, in milliseconds.
const LOCK_RETRY_FIRST_MS: u64 = 2;
/// The longest pause between two tries, in milliseconds: the backoff doubles up to here, so a
/// freed file is picked up within this long while dozens of processes take turns with it.
const LOCK_RETRY_MAX_MS: u64 = 50;

/// The global options, resolved.
pub struct Context {
    /// The ledger file.
    pub db: PathBuf,
    /// True when the path came from `--db` or `CREDIT_LEDGER_DB` rather than the default.
    pub db_explicit: bool,
    pub json: bool,
    /// `--now`, in Unix milliseconds.
    pub now_ms: Option<u64>,
    /// `--allow-future-now`: write at a `--now` far ahead of the system clock.
    pub allow_future_now: bool,
    /// `--wait`: how long to wait for a file another process has open, in milliseconds.
    pub wait_ms: u64,
    /// `--grant-notice`: the grant notice window of this run's credits, in milliseconds.
    pub grant_notice_ms: Option<u64>,
}

/// What a command does with the ledger file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write, creating the file when it does not exist (`credit`).
    Create,
    /// Write; the file must exist already.
    Existing,
    /// Only read; the file must exist already. Opened read-only when it needs no replay.
    Read,
}

impl Context {
    pub fn new(cli: &Cli) -> Self {
        Context {
            db: cli.db.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DB)),
            db_explicit: cli.db.is_some(),
            json: cli.json,
            now_ms: cli.now,
            allow_future_now: cli.allow_future_now,
            wait_ms: cli.wait,
            grant_notice_ms: cli.grant_notice,
        }
    }

    /// Options for the tool: the `--now` clock if given, and no catch-up sweep on open, so
    /// that reading never writes and `sweep` is the one command that sweeps.
    pub fn options(&self) -> Options {
        let mut options = Options::default()
            .sweep_on_open(false)
            .grant_expiring_notice_ms(self.grant_notice_ms);
        if self.allow_future_now {
            // The operator insisted: the library's own guard against a clock far ahead of the
            // system clock (`Options::max_clock_ahead_ms`) steps aside too.
            options = options.max_clock_ahead_ms(None);
        }
        match self.now_ms {
            Some(ms) => options.clock(ManualClock::new(ms)),
            None => options,
        }
    }

    /// Open the ledger file, waiting up to `--wait` while another process has it open.
    pub fn open(&self, mode: Mode) -> Result<Ledger, CliError> {
        self.open_with(mode, self.options())
    }

    /// [`Context::open`] with other options (`recover` adds `discard_journal`): the same
    /// path checks, `--now` guard and `--wait` loop.
    pub fn open_with(&self, mode: Mode, options: Options) -> Result<Ledger, CliError> {
        check_path(&self.db, mode)?;
        if mode != Mode::Read {
            self.check_future_now()?;
        }
        let started = Instant::now();
        let wait = Duration::from_millis(self.wait_ms);
        let mut pause_ms = LOCK_RETRY_FIRST_MS;
        let mut jitter = Jitter::new();
        loop {
            match self.open_once(mode, &options) {
                Err(e @ Error::AlreadyOpen { .. }) => {
                    let waited = started.elapsed();
                    if waited >= wait {
                        return Err(CliError::from(e).context(&if self.wait_ms == 0 {
                            "; or let the tool wait for it with --wait (for example --wait 30s)"
                                .to_string()
                        } else {
                            format!(
                                " (waited {}; wait longer with --wait, for example --wait 2m)",
                                crate::time::format_duration(self.wait_ms)
                            )
                        }));
                    }
                    // Sleep a random part of the pause, so processes that found the file
                    // busy together do not all try again at the same instant.
                    let pause = Duration::from_millis(jitter.between(pause_ms / 2, pause_ms));
                    std::thread::sleep(pause.min(wait - waited));
                    pause_ms = (pause_ms * 2).min(LOCK_RETRY_MAX_MS);
                }
                other => return Ok(other?),
            }
        }
    }

    /// One try at opening the file. A read opens it read-only when it needs no replay, so
    /// that reads work on read-only files, filesystems and backups. A crashed ledger's journal
    /// must be replayed into the file before it can be read whole: the read then opens it to
    /// write, which replays, or says exactly why that cannot be done.
    fn open_once(&self, mode: Mode, options: &Options) -> Result<Ledger, Error> {
        if mode != Mode::Read {
            return Ledger::open_with(&self.db, options.clone());
        }
        match Ledger::open_read_only_with(&self.db, options.clone()) {
            Err(Error::NeedsWrite { path, detail }) => {
                match Ledger::open_with(&self.db, options.clone()) {
                    Err(Error::Storage { message }) => Err(Error::NeedsWrite {
                        path,
                        detail: format!("{detail}; opening it with write access failed: {message}"),
                    }),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// A write stamped with a `--now` far ahead of the real time (2027 typed for 2026) would
    /// make every later write with the real clock fail as a clock that went backwards, refunds
    /// included. So a `--now` further ahead of the system clock than the ledger's tolerance for
    /// a backwards clock is refused unless the operator says `--allow-future-now`.
    fn check_future_now(&self) -> Result<(), CliError> {
        let Some(now_ms) = self.now_ms else {
            return Ok(());
        };
        let system_ms = SystemClock.now_ms();
        let tolerance_ms = self.options().max_clock_regression_ms;
        let ahead_ms = now_ms.saturating_sub(system_ms);
        if ahead_ms <= tolerance_ms || self.allow_future_now {
            return Ok(());
        }
        Err(CliError::future_now(format!(
            "--now {} is {} ahead of the system clock ({}); a write stamped then makes every later write with the real clock fail until that time. Check the date, or pass --allow-future-now if the system clock is the one that is wrong",
            crate::time::format_rfc3339(now_ms),
            crate::time::format_duration(ahead_ms),
            crate::time::format_rfc3339(system_ms),
        )))
    }
}

/// Cheap pseudo-random pauses (xorshift, seeded by the process id and the time), enough to
/// spread out retries; nothing here needs real randomness.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let t = SystemClock.now_ms();
        Jitter((u64::from(std::process::id()) << 32 ^ t) | 1)
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
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
