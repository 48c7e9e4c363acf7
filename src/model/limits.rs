//! Every limit the ledger enforces, in one place.
//!
//! A limit that is not written down is a limit nobody can plan around. Each constant here is
//! checked at the edge of the engine, and a request outside it gets
//! [`Error::InvalidInput`](crate::Error::InvalidInput) before anything is written.

/// Longest workspace id, generation id or idempotency key, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 128;

/// Longest feature name ("Quick Video"), in bytes of UTF-8.
pub const MAX_FEATURE_BYTES: usize = 128;

/// Longest memo on a credit or adjustment, in bytes of UTF-8.
pub const MAX_MEMO_BYTES: usize = 512;

/// Longest failure message kept on a refund, in bytes of UTF-8. A longer message is cut at a
/// char boundary and the refund is marked `message_truncated`, so a failure report is never
/// refused for being too chatty.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Largest amount of one credit, charge, refund or adjustment. It fits an `i64`, so a signed
/// amount can always be shown without loss.
pub const MAX_AMOUNT_CREDITS: u64 = i64::MAX as u64;

/// Largest page of history one call returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// How many index entries one history page may examine before it returns what it has, with a
/// cursor to go on. This keeps a page with a rare `feature` filter, or a status filter whose
/// matches are spread far (Pending Usages behind an old running generation), bounded in cost.
pub const HISTORY_SCAN_BUDGET: u32 = 20_000;

/// Shortest generation timeout: one second.
pub const MIN_TIMEOUT_MS: u64 = 1_000;

/// Longest generation timeout: seven days.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The default generation timeout: 150 minutes, as the product guide promises.
pub const DEFAULT_TIMEOUT_MS: u64 = 150 * 60 * 1000;

/// Most operations in one [`Ledger::apply`](crate::Ledger::apply) batch.
pub const MAX_BATCH_OPS: usize = 8192;

/// Most operations the group-commit leader folds into one write transaction.
pub const GROUP_COMMIT_MAX_OPS: usize = 1024;

/// Most refunds one [`Ledger::sweep_expired`](crate::Ledger::sweep_expired) call writes.
pub const MAX_SWEEP_LIMIT: u32 = 10_000;

/// Most violations an [`AuditReport`](crate::AuditReport) lists one by one; past this it only
/// counts them.
pub const MAX_REPORTED_VIOLATIONS: usize = 1000;

/// Most workspaces one pass of [`Ledger::verify`](crate::Ledger::verify) checks together.
/// The audit replays each workspace's transactions and grant lots, which needs state for every
/// workspace it checks at once; it takes the workspaces in pages of this many (in key order)
/// and reads the log once per page, so its memory stays bounded (about 25 MiB for a page of
/// workspaces with four grants each) whether the ledger holds a hundred workspaces or a
/// million. A ledger with at most this many workspaces is read once, as before; past it, each
/// further page costs one more read of the log, which skips other workspaces' records on
/// their workspace id alone.
pub const AUDIT_PAGE_WORKSPACES: usize = 8_192;

/// Default tolerance for a clock that steps backwards, in milliseconds. A smaller step (NTP
/// slewing, a VM resuming) is absorbed: the ledger keeps stamping the last committed time. A
/// larger one is refused with [`Error::ClockRegressed`](crate::Error::ClockRegressed).
pub const DEFAULT_MAX_CLOCK_REGRESSION_MS: u64 = 60_000;

/// The drawdown priority of a credit that names none. Every such grant shares it, so a
/// ledger that never sets priorities spends soonest-expiring first, then oldest first.
pub const DEFAULT_GRANT_PRIORITY: u32 = 100;

/// Largest grant priority (lower is spent first). Small, so that a priority is a choice among
/// a few named tiers, not an ordering key smuggled in.
pub const MAX_GRANT_PRIORITY: u32 = 1000;

/// Default [`Options::refund_grace_ms`](crate::Options::refund_grace_ms): 24 hours. A refund
/// that gives credits back to a grant which expired (or expires within this long) keeps them
/// spendable until the refund's time plus this, so "can retry generation" holds.
pub const DEFAULT_REFUND_GRACE_MS: u64 = 24 * 60 * 60 * 1000;

/// Longest refund grace: 30 days.
pub const MAX_REFUND_GRACE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Shortest [`Options::grant_expiring_notice_ms`](crate::Options::grant_expiring_notice_ms):
/// one minute. A shorter notice reaches nobody in time to spend the credits.
pub const MIN_GRANT_EXPIRING_NOTICE_MS: u64 = 60 * 1000;

/// Longest [`Options::grant_expiring_notice_ms`](crate::Options::grant_expiring_notice_ms):
/// 400 days, more than a yearly grant's whole life.
pub const MAX_GRANT_EXPIRING_NOTICE_MS: u64 = 400 * 24 * 60 * 60 * 1000;

/// Most grant lots one transaction may move credits from or to: a charge (or negative
/// adjustment) spanning more, or a void of a grant with more open lots, is refused with
/// [`Error::TooManyLots`](crate::Error::TooManyLots) before anything is written. A
/// transaction's lots are stored in one record (its `allocations` row, and a Refund's own log
/// record), which the decoder reads only up to 64 KiB: at most 158 bytes a lot with the
/// longest grant id, 256 lots take about 40 KiB, with room for the rest of the record. Without
/// the bound a charge over 600 small grants was accepted and its refund then failed on a
/// record too large to read back.
pub const MAX_LOTS_PER_TRANSACTION: usize = 256;

/// Most grants one [`Ledger::grants`](crate::Ledger::grants) call lists.
pub const MAX_GRANTS_LISTED: usize = 10_000;
/// Most named consumers of the change feed one ledger keeps a position for. Each is a row the
/// ledger keeps forever, so the set is bounded like every other.
pub const MAX_CONSUMERS: usize = 64;

/// Capacity of one [`Ledger::subscribe`](crate::Ledger::subscribe) receiver, in entries. A
/// subscriber further behind than this misses entries and is told where to resume.
pub const SUBSCRIPTION_CAPACITY: usize = 4096;

/// The largest tolerance [`Options::max_clock_regression_ms`](crate::Options) accepts: 400
/// days. A larger tolerance stamps new transactions with a time that far in the past without
/// a word, which is no longer a tolerance. 400 days is enough to absorb a mistyped year: the
/// documented way to keep writing to a ledger whose log was stamped a year ahead (see
/// [`Error::ClockRegressed`](crate::Error::ClockRegressed)).
pub const MAX_CLOCK_REGRESSION_MS: u64 = 400 * 24 * 60 * 60 * 1000;

/// Default for [`Options::max_clock_ahead_ms`](crate::Options): one hour. Two sane clocks
/// never disagree by that much; a mistyped year, month or day does.
pub const DEFAULT_MAX_CLOCK_AHEAD_MS: u64 = 60 * 60 * 1000;

/// The smallest value [`Options::max_clock_ahead_ms`](crate::Options) accepts: one second, so
/// that two reads of the same clock never trip the guard.
pub const MIN_CLOCK_AHEAD_MS: u64 = 1_000;

/// The largest value [`Options::max_clock_ahead_ms`](crate::Options) accepts: 400 days. To
/// turn the guard off (replaying events dated in the future on purpose), set it to `None`.
pub const MAX_CLOCK_AHEAD_MS: u64 = 400 * 24 * 60 * 60 * 1000;

/// The smallest redb page cache [`Options::cache_size_bytes`](crate::Options) accepts: 64 KiB.
/// A zero cache makes every read go to the file.
pub const MIN_CACHE_SIZE_BYTES: u64 = 64 * 1024;

/// The largest redb page cache [`Options::cache_size_bytes`](crate::Options) accepts: 64 GiB.
pub const MAX_CACHE_SIZE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
