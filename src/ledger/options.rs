//! How a ledger is opened.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::error::InvalidInput;
use crate::model::limits::{
    DEFAULT_MAX_CLOCK_AHEAD_MS, DEFAULT_MAX_CLOCK_REGRESSION_MS, DEFAULT_REFUND_GRACE_MS,
    DEFAULT_TIMEOUT_MS, MAX_CACHE_SIZE_BYTES, MAX_CLOCK_AHEAD_MS, MAX_CLOCK_REGRESSION_MS,
    MAX_GRANT_EXPIRING_NOTICE_MS, MAX_REFUND_GRACE_MS, MAX_TIMEOUT_MS, MIN_CACHE_SIZE_BYTES,
    MIN_CLOCK_AHEAD_MS, MIN_GRANT_EXPIRING_NOTICE_MS, MIN_TIMEOUT_MS,
};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A write is on disk (fsynced) before the call returns. The default, and the only choice
    /// for real money.
    Immediate,
    /// A write is visible at once but reaches disk only with a later `Immediate` commit or a
    /// clean close. For tests, demos and bulk imports you can re-run.
    None,
}

/// The default redb page cache: 32 MiB. redb's own default is 1 GiB, too much for an app
/// that embeds a ledger; the ledger's hot set (recent transactions, the deadline index and the
/// workspace records) is small.
pub const DEFAULT_CACHE_SIZE_BYTES: usize = 32 * 1024 * 1024;

/// Settings for [`Ledger::open_with`](crate::Ledger::open_with).
///
/// Every number is checked when the ledger opens ([`Options::validate`]): a value outside its
/// documented range is refused with [`InvalidInput::OptionOutOfRange`] and nothing is opened or
/// created, because a wrong setting (a zero timeout refunds every success) does its damage
/// silently.
///
/// ```
/// use credit_ledger::{ManualClock, Options};
/// let opts = Options::default()
///     .clock(ManualClock::new(1_700_000_000_000))
///     .default_timeout_ms(30 * 60 * 1000)
///     .cache_size_bytes(16 << 20);
/// assert_eq!(opts.default_timeout_ms, 1_800_000);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// Where time comes from. Default: [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// Timeout of a generation started without one, [`MIN_TIMEOUT_MS`] (1 s) to
    /// [`MAX_TIMEOUT_MS`] (7 days). Default: 150 minutes.
    pub default_timeout_ms: u64,
    /// When writes are acknowledged. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// redb's page cache, [`MIN_CACHE_SIZE_BYTES`] (64 KiB) to [`MAX_CACHE_SIZE_BYTES`]
    /// (64 GiB). Default: [`DEFAULT_CACHE_SIZE_BYTES`].
    pub cache_size_bytes: usize,
    /// How far `clock` may read behind the last committed transaction before writes other
    /// than refunds are refused, 0 to [`MAX_CLOCK_REGRESSION_MS`] (400 days). Within it, writes
    /// are stamped with the last committed time. Default: one minute. Refunds are never
    /// refused because of the clock: see [`Error::ClockRegressed`](crate::Error::ClockRegressed).
    pub max_clock_regression_ms: u64,
    /// How far `clock` may read ahead of `wall_clock` before writes other than refunds are
    /// refused with [`Error::ClockAhead`](crate::Error::ClockAhead), [`MIN_CLOCK_AHEAD_MS`]
    /// (1 s) to [`MAX_CLOCK_AHEAD_MS`] (400 days); `None` turns the guard off (to replay events
    /// dated in the future on purpose). Default: one hour.
    ///
    /// Why: a transaction stamped in the future moves the log's time there, and every later
    /// write with the right time then reads as a clock gone backwards. The guard stops a
    /// mistyped time before it is written.
    pub max_clock_ahead_ms: Option<u64>,
    /// The clock `clock` is compared with for [`Options::max_clock_ahead_ms`]. Default:
    /// [`SystemClock`]. With the default `clock` (also `SystemClock`) the guard never trips;
    /// it is there for a `clock` the caller supplies (a `ManualClock` set from user input, an
    /// app's own time source). Tests give it a `ManualClock` of their own.
    pub wall_clock: Arc<dyn Clock>,
    /// Write redb's allocator state with each durable commit of a ledger *without* a journal,
    /// so that reopening after a crash needs no full repair scan. Default: off.
    ///
    /// With the journal (the default for file ledgers), the only durable redb commits are
    /// checkpoints, and they always use quick repair: its second fsync is paid once per
    /// checkpoint, not per write. Without a journal it is paid on every commit: measured on a
    /// 2-core VM (see BENCHMARKS.md), one durable `start` took about 470 µs with it and about
    /// 290 µs without. Without it, reopening after a crash repairs the file by reading all of
    /// it: with 1M generations (a 570 MB file) that took about 0.5 s after `kill -9` (file in
    /// the page cache) and about 5 s after dropping the page cache (as after a power cut); with
    /// it, 2 to 30 ms.
    pub quick_repair: bool,
    /// Refund everything that expired while the ledger was closed, during `open`. Default: on.
    pub sweep_on_open: bool,
    /// Make each commit durable through a write-ahead journal, `<file>.journal` next to the
    /// ledger file, instead of a durable redb commit. Default: on. Only file ledgers with
    /// [`Durability::Immediate`] have a journal.
    ///
    /// Why: a durable redb commit syncs 15 to 17 scattered pages per operation; the journal
    /// syncs one sequential page, and redb makes the journaled commits durable in bulk at a
    /// checkpoint (when the journal is full, and on close). Measured on a 2-core VM (see
    /// BENCHMARKS.md), one durable `start` takes about half the time with it. Acknowledged
    /// writes survive `kill -9` and power loss either way: opening the ledger replays the
    /// journal. The price is a second file: copy the ledger file alone only after
    /// [`Ledger::checkpoint`](crate::Ledger::checkpoint) or a clean close.
    ///
    /// Turning it off never skips a journal a crash left behind: every open of a file replays
    /// a pending journal first, or refuses with [`Error::JournalMismatch`](crate::Error) or
    /// `Corruption`.
    pub journal: bool,
    /// How long credits a refund gives back to an expired grant stay spendable. Default:
    /// [`DEFAULT_REFUND_GRACE_MS`](crate::limits::DEFAULT_REFUND_GRACE_MS), 24 hours; 0 to
    /// [`MAX_REFUND_GRACE_MS`] (30 days).
    ///
    /// Why: the product guide promises "full credits refunded, can retry generation". A
    /// generation charged from a trial grant that fails just after the trial expired must
    /// give back credits the user can still spend. So when a refund returns credits to a grant
    /// that has expired, or expires before the refund's time plus this grace, they go into a
    /// *grace lot* of that grant, spendable until then, and expire on their own after it.
    pub refund_grace_ms: u64,
    /// How long before a grant expires its workspace is told, by one `GrantExpiring`
    /// notification in the log ([`TxnKind::GrantExpiring`](crate::TxnKind::GrantExpiring)),
    /// [`MIN_GRANT_EXPIRING_NOTICE_MS`] (1 min) to [`MAX_GRANT_EXPIRING_NOTICE_MS`] (400 days);
    /// `None`, the default, writes no notices.
    ///
    /// A grant's notice time is fixed when it is credited, with the window in force then
    /// (like a generation's deadline with the default timeout): reopening with another
    /// window moves the notices of grants credited afterwards, never of those already held,
    /// so a journal replay or a restart never writes a notice twice or drops one. It is
    /// ledger-wide, not a term of each credit, because it is a policy of how users are told,
    /// not of how credits are spent: a credit's terms are part of its idempotency check.
    ///
    /// The notice is written once per grant, at its expiry minus this window (or when the
    /// grant starts, if that is later) by the sweep, or at once by the credit itself when
    /// that time has already come. It is written only if the grant is spendable with credits
    /// left then, and says how many: a grant spent to 0, voided or already expired at that
    /// moment gets none, and a grace part of a refund gets none of its own. See README,
    /// "Grant expiry notices".
    pub grant_expiring_notice_ms: Option<u64>,
    /// The operator's explicit recovery: open a ledger whose journal cannot be replayed
    /// (missing, another copy's, damaged, or failing its proof) by discarding what cannot be
    /// replayed. Default: off, and then nothing is ever discarded: such an open fails with
    /// [`Error::JournalMismatch`](crate::Error) or `Corruption`.
    ///
    /// With it, the journal's intact, proven entries before the problem are replayed, the rest
    /// is discarded, a zero-credit Adjustment titled
    /// [`JOURNAL_DISCARDED_TITLE`](crate::JOURNAL_DISCARDED_TITLE) saying which sequence
    /// numbers were discarded, and why, is written into every workspace's log (so `history`
    /// and `verify` show it), and the journal is moved aside to `<journal>.discarded-<epoch>`.
    /// [`Ledger::journal_discard`](crate::Ledger::journal_discard) reports what happened. The
    /// CLI's `credit-ledger recover --discard-journal` does this. Use it only after trying to
    /// find the right journal or a backup: the writes in the discarded entries were
    /// acknowledged and are gone.
    pub discard_journal: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            default_timeout_ms: DEFAULT_TIMEOUT_MS,
            durability: Durability::Immediate,
            cache_size_bytes: DEFAULT_CACHE_SIZE_BYTES,
            max_clock_regression_ms: DEFAULT_MAX_CLOCK_REGRESSION_MS,
            max_clock_ahead_ms: Some(DEFAULT_MAX_CLOCK_AHEAD_MS),
            wall_clock: Arc::new(SystemClock),
            quick_repair: false,
            sweep_on_open: true,
            journal: true,
            refund_grace_ms: DEFAULT_REFUND_GRACE_MS,
            grant_expiring_notice_ms: None,
            discard_journal: false,
        }
    }
}

impl Options {
    /// Use this clock.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Use this refund grace (see [`Options::refund_grace_ms`]).
    pub fn refund_grace_ms(mut self, grace_ms: u64) -> Self {
        self.refund_grace_ms = grace_ms;
        self
    }

    /// Write a `GrantExpiring` notice this long before each grant's expiry (`None`: none);
    /// see [`Options::grant_expiring_notice_ms`].
    pub fn grant_expiring_notice_ms(mut self, notice_ms: Option<u64>) -> Self {
        self.grant_expiring_notice_ms = notice_ms;
        self
    }

    /// Use this default generation timeout.
    pub fn default_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.default_timeout_ms = timeout_ms;
        self
    }

    /// Use this durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Use this cache size.
    pub fn cache_size_bytes(mut self, bytes: usize) -> Self {
        self.cache_size_bytes = bytes;
        self
    }

    /// Tolerate this much backwards clock movement.
    pub fn max_clock_regression_ms(mut self, ms: u64) -> Self {
        self.max_clock_regression_ms = ms;
        self
    }

    /// Refuse writes (other than refunds) whose clock reads more than this ahead of the wall
    /// clock; `None` turns the guard off. See [`Options::max_clock_ahead_ms`].
    pub fn max_clock_ahead_ms(mut self, ms: Option<u64>) -> Self {
        self.max_clock_ahead_ms = ms;
        self
    }

    /// Compare the clock with this one for [`Options::max_clock_ahead_ms`].
    pub fn wall_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.wall_clock = Arc::new(clock);
        self
    }

    /// Check every setting against its documented range. Every `open` calls this first.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let range = |option, value: u64, min, max, unit| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(InvalidInput::OptionOutOfRange {
                    option,
                    value,
                    min,
                    max,
                    unit,
                })
            }
        };
        range(
            "default_timeout_ms",
            self.default_timeout_ms,
            MIN_TIMEOUT_MS,
            MAX_TIMEOUT_MS,
            "ms",
        )?;
        range(
            "cache_size_bytes",
            u64::try_from(self.cache_size_bytes).unwrap_or(u64::MAX),
            MIN_CACHE_SIZE_BYTES,
            MAX_CACHE_SIZE_BYTES,
            "bytes",
        )?;
        range(
            "max_clock_regression_ms",
            self.max_clock_regression_ms,
            0,
            MAX_CLOCK_REGRESSION_MS,
            "ms",
        )?;
        range(
            "refund_grace_ms",
            self.refund_grace_ms,
            0,
            MAX_REFUND_GRACE_MS,
            "ms",
        )?;
        if let Some(notice_ms) = self.grant_expiring_notice_ms {
            range(
                "grant_expiring_notice_ms",
                notice_ms,
                MIN_GRANT_EXPIRING_NOTICE_MS,
                MAX_GRANT_EXPIRING_NOTICE_MS,
                "ms",
            )?;
        }
        if let Some(ahead_ms) = self.max_clock_ahead_ms {
            range(
                "max_clock_ahead_ms",
                ahead_ms,
                MIN_CLOCK_AHEAD_MS,
                MAX_CLOCK_AHEAD_MS,
                "ms",
            )?;
        }
        Ok(())
    }

    /// Turn redb's quick repair on or off.
    pub fn quick_repair(mut self, on: bool) -> Self {
        self.quick_repair = on;
        self
    }

    /// Turn the write-ahead journal on or off; see [`Options::journal`].
    pub fn journal(mut self, on: bool) -> Self {
        self.journal = on;
        self
    }

    /// Turn the operator's journal discard on or off; see [`Options::discard_journal`].
    pub fn discard_journal(mut self, on: bool) -> Self {
        self.discard_journal = on;
        self
    }

    /// Turn the catch-up sweep on open on or off.
    pub fn sweep_on_open(mut self, on: bool) -> Self {
        self.sweep_on_open = on;
        self
    }
}
