//! Errors, each with a message that says what happened and what to do next.
//!
//! Every error is a value: nothing in the ledger panics on input or on file content. An
//! operation that returns an error has changed nothing, with two documented exceptions that
//! report a change the ledger *had* to make:
//! [`Error::GenerationRefunded`] (a `complete` that arrived after the deadline refunds the
//! generation in the same write) and [`Error::CommitUncertain`] (the storage failed during
//! commit, so the write may or may not have landed; retry with the same ids).

use crate::model::RefundReason;

/// A request that was refused before anything was written, because one of its fields is
/// malformed or outside a limit in [`limits`](crate::limits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// A required text field is empty.
    #[error("{field} is empty; give 1 to {max} bytes")]
    Empty {
        /// Which field.
        field: &'static str,
        /// The longest allowed value, in bytes.
        max: usize,
    },
    /// A text field is longer than its limit.
    #[error("{field} is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A text field holds a control character (newline, NUL, escape...).
    #[error("{field} contains a control character; ids, features and memos must be printable")]
    ControlCharacter {
        /// Which field.
        field: &'static str,
    },
    /// An amount of zero credits.
    #[error("{field} is zero; an amount must be at least 1 credit")]
    ZeroAmount {
        /// Which field.
        field: &'static str,
    },
    /// An amount above [`MAX_AMOUNT_CREDITS`](crate::limits::MAX_AMOUNT_CREDITS).
    #[error("{field} is {amount} credits; the largest single amount is {max} credits")]
    AmountTooLarge {
        /// Which field.
        field: &'static str,
        /// The requested amount (its magnitude).
        amount: u128,
        /// The limit.
        max: u64,
    },
    /// A generation timeout outside the allowed range.
    #[error("timeout of {timeout_ms} ms is outside the allowed range {min_ms}..={max_ms} ms")]
    TimeoutOutOfRange {
        /// The requested timeout.
        timeout_ms: u64,
        /// The shortest allowed.
        min_ms: u64,
        /// The longest allowed.
        max_ms: u64,
    },
    /// A page, batch or sweep limit outside its range.
    #[error("{field} is {value}; it must be between 1 and {max}")]
    LimitOutOfRange {
        /// Which limit.
        field: &'static str,
        /// The requested value.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A name that is not one of a fixed set (a reason, a kind, a status).
    #[error("unknown {field} `{value}`; expected one of: {expected}")]
    UnknownName {
        /// What kind of name.
        field: &'static str,
        /// What was given.
        value: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// `Timeout` given as a failure reason; only the ledger's deadline check assigns it.
    #[error("reason `timeout` is assigned by the ledger when a deadline passes; report the failure with the reason the service gave (for example system-error)")]
    ReservedReason,
    /// A history cursor that this ledger did not hand out.
    #[error(
        "cursor `{cursor}` is not a cursor this ledger returned; start again without a cursor"
    )]
    BadCursor {
        /// The cursor given.
        cursor: String,
    },
    /// A grant priority above [`MAX_GRANT_PRIORITY`](crate::limits::MAX_GRANT_PRIORITY).
    #[error(
        "priority {priority} is out of range; a grant priority is 0..={max} (lower is spent first)"
    )]
    PriorityOutOfRange {
        /// The requested priority.
        priority: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A grant that would expire at or before the time it becomes spendable.
    #[error("the grant expires at {expires_at_ms} ms, not after it becomes spendable at {effective_at_ms} ms; give an expiry after the start")]
    ExpiryNotAfterStart {
        /// When it would become spendable.
        effective_at_ms: u64,
        /// When it would expire.
        expires_at_ms: u64,
    },
    /// A grant that would already have expired when it is credited.
    #[error("the grant expires at {expires_at_ms} ms, which is not after now ({now_ms} ms); give a future expiry")]
    ExpiryInPast {
        /// The requested expiry.
        expires_at_ms: u64,
        /// The ledger's time.
        now_ms: u64,
    },
    /// An [`Options`](crate::Options) setting outside its documented range; the ledger was
    /// not opened.
    #[error("Options::{option} is {value} {unit}; it must be between {min} and {max} {unit}")]
    OptionOutOfRange {
        /// Which setting.
        option: &'static str,
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
        /// The unit of all three numbers.
        unit: &'static str,
    },
    /// An id with a character that prints as nothing, or that reorders the text around it
    /// (Unicode format and bidi controls such as U+200B or U+202E), or with whitespace at either
    /// end: two such ids would look identical, or reversed, in every table.
    #[error("{field} `{shown}` contains {what}; ids must look like what they are: remove it")]
    InvisibleCharacter {
        /// Which field.
        field: &'static str,
        /// The value, with the offending characters written as `\u{..}` escapes.
        shown: String,
        /// What was found, in words (`U+200B ZERO WIDTH SPACE`, `leading whitespace`).
        what: String,
    },
    /// A time window whose start is after its end.
    #[error("time window starts at {since_ms} ms, after its end at {until_ms} ms")]
    EmptyWindow {
        /// Start of the window.
        since_ms: u64,
        /// End of the window.
        until_ms: u64,
    },
}

/// Everything that can go wrong in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed; nothing was written. Fix the field named in the message.
    #[error("invalid input: {0}")]
    InvalidInput(InvalidInput),

    /// No workspace has this id. A workspace comes into being with its first credit.
    #[error(
        "unknown workspace `{workspace}`; a workspace exists once it has received its first credit"
    )]
    UnknownWorkspace {
        /// The workspace asked for.
        workspace: String,
    },

    /// No generation has this id.
    #[error("unknown generation `{generation}`; start it first")]
    UnknownGeneration {
        /// The generation asked for.
        generation: String,
    },

    /// No transaction has this id.
    #[error("unknown transaction #{txn_id}")]
    UnknownTransaction {
        /// The id asked for.
        txn_id: u64,
    },

    /// The workspace cannot pay; nothing was charged.
    #[error("workspace `{workspace}` has {balance_credits} spendable credits and this needs {required_credits}; add credits first")]
    InsufficientCredits {
        /// The workspace.
        workspace: String,
        /// Its spendable balance now: grants that are effective and unexpired.
        balance_credits: u64,
        /// What the operation needed.
        required_credits: u64,
    },

    /// The operation would push a balance or running total past `u64::MAX`.
    #[error("workspace `{workspace}`: {what} would overflow a u64; nothing was written")]
    Overflow {
        /// The workspace.
        workspace: String,
        /// Which number would overflow.
        what: &'static str,
    },

    /// An id was reused with different parameters. The original stands; use a new id for a new
    /// request. Retrying with the *same* parameters is always safe and returns the original.
    #[error("{entity} `{id}` already exists with {field} = {existing}, not {requested}; use a new id for a different request")]
    Conflict {
        /// What the id names: `generation` or `idempotency key`.
        entity: &'static str,
        /// The reused id.
        id: String,
        /// The first field that differs.
        field: &'static str,
        /// The stored value.
        existing: String,
        /// The requested value.
        requested: String,
    },

    /// The generation was refunded, so it cannot complete (or start again). When this very
    /// call found it past its deadline and wrote the refund (lazy expiry: a late `complete`, a
    /// repeated `start`), `refunded_now` holds that refund's receipt: the refund committed with
    /// this error, and lazy expiry never depends on when the sweeper runs.
    #[error("generation `{generation}` was refunded ({reason}, refund #{refund_txn}){} and cannot complete; start a new generation to retry", if .refunded_now.is_some() { " by this call, because its deadline had passed" } else { "" })]
    GenerationRefunded {
        /// The generation.
        generation: String,
        /// Why it was refunded.
        reason: RefundReason,
        /// The refund transaction.
        refund_txn: u64,
        /// The refund this call wrote, if it wrote one; `None` when the generation was
        /// refunded earlier.
        refunded_now: Option<Box<crate::model::RefundReceipt>>,
    },

    /// No grant has this id (the idempotency key of the credit that created it).
    #[error("unknown grant `{grant}`; a grant's id is the idempotency key of its credit")]
    UnknownGrant {
        /// The grant asked for.
        grant: String,
    },

    /// The grant has nothing left to void: it was spent, expired or voided already.
    #[error("grant `{grant}` has no credits left to void (it was spent, expired or voided); nothing was written")]
    NothingToVoid {
        /// The grant.
        grant: String,
    },

    /// The generation already succeeded, so it cannot be failed or refunded.
    #[error("generation `{generation}` already completed successfully at {completed_at_ms} ms; a completed generation is never refunded")]
    GenerationSucceeded {
        /// The generation.
        generation: String,
        /// When it completed.
        completed_at_ms: u64,
    },

    /// The clock reads further back than the tolerance allows. Only writes that are not
    /// refunds get this: a refund (a failure report, lazy expiry, the sweep) is written anyway,
    /// stamped with the last committed time, and its view says what the clock read
    /// ([`TransactionView::untrusted_clock_ms`](crate::TransactionView::untrusted_clock_ms)).
    ///
    /// When the log itself is ahead (a transaction was stamped with a mistyped future time),
    /// this is how the way out starts: fix nothing in the file; either wait until the clock
    /// passes `last_ms`, or open the ledger with
    /// [`Options::max_clock_regression_ms`](crate::Options::max_clock_regression_ms) of at least
    /// `behind_ms` (up to 400 days), so that new writes are stamped with the log's last time
    /// until the clock catches up.
    #[error("the clock reads {now_ms} ms, {behind_ms} ms before the last committed transaction at {last_ms} ms (tolerance {tolerance_ms} ms); refunds are still written, other writes are refused: fix the clock, or if the log's time is the wrong one (a mistyped future time), wait until the clock passes it or raise Options::max_clock_regression_ms to at least {behind_ms} ms to stamp writes with the log's time")]
    ClockRegressed {
        /// What the clock said.
        now_ms: u64,
        /// The last committed timestamp.
        last_ms: u64,
        /// How far behind.
        behind_ms: u64,
        /// The configured tolerance.
        tolerance_ms: u64,
    },

    /// The clock reads further ahead of the wall clock than
    /// [`Options::max_clock_ahead_ms`](crate::Options::max_clock_ahead_ms) allows. Writes that
    /// are not refunds are refused, so a mistyped future time never reaches the log; refunds
    /// are written at the wall clock's time (or the log's last time, if later).
    #[error("the clock reads {now_ms} ms, {ahead_ms} ms ahead of the wall clock at {wall_ms} ms (tolerance {tolerance_ms} ms); refunds are still written, other writes are refused: check the time you gave, or set Options::max_clock_ahead_ms (None turns the guard off) if the future time is intended")]
    ClockAhead {
        /// What the clock said.
        now_ms: u64,
        /// What the wall clock said.
        wall_ms: u64,
        /// How far ahead.
        ahead_ms: u64,
        /// The configured tolerance.
        tolerance_ms: u64,
    },

    /// A stored record failed its checksum or could not be decoded.
    #[error("corrupt record in table `{table}`{}: {detail}; `verify` lists what is damaged; restore the file from a backup", at_key(.key))]
    Corruption {
        /// The table.
        table: &'static str,
        /// The key, as text.
        key: String,
        /// What was wrong.
        detail: String,
    },

    /// The ledger file records an open journal epoch, so its journal may hold acknowledged
    /// writes the file does not, and the journal at `journal` is not that journal: it is
    /// missing, another copy's or another ledger's, emptied, or older than what the file has
    /// seen. Nothing was changed; opening it anyway would come back with an older state.
    #[error("the ledger `{ledger}` keeps acknowledged writes in its journal `{journal}`, but {problem}. Nothing was changed. Put the ledger's own journal back at that path, or restore both files from a backup; to open the ledger without those writes, accepting their loss, run `credit-ledger --db {ledger} recover --discard-journal` (Options::discard_journal)")]
    JournalMismatch {
        /// The ledger file.
        ledger: String,
        /// The journal path it expects.
        journal: String,
        /// What is wrong with the journal there.
        problem: String,
    },

    /// The file is not a credit-ledger file (or is damaged beyond opening).
    #[error("`{path}` is not a credit-ledger file: {detail}")]
    NotALedger {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },

    /// The file was written by a newer version of credit-ledger.
    #[error("ledger format version {found} is not supported (this build reads version {supported}); upgrade credit-ledger")]
    UnsupportedFormat {
        /// The version found.
        found: u8,
        /// The version this build writes.
        supported: u8,
    },

    /// Another process (or another `Ledger` in this one) has the file open.
    #[error("the ledger `{path}` is open in another process; close it there, or share one Ledger through Arc")]
    AlreadyOpen {
        /// The file.
        path: String,
    },

    /// The storage failed; nothing was written.
    #[error("storage error: {message}")]
    Storage {
        /// redb's description.
        message: String,
    },

    /// The storage failed while committing. The write may or may not be durable: retry the
    /// same request with the same ids (a retry is idempotent), or reopen and check.
    #[error("commit failed, the write may or may not have landed: {message}; retry with the same ids (retries are idempotent) or reopen the ledger and check")]
    CommitUncertain {
        /// redb's description.
        message: String,
    },

    /// An ack names a transaction the log does not have yet.
    #[error("consumer `{consumer}` acked transaction #{txn_id}, but the log ends at #{last_txn_id}; ack only ids the feed returned")]
    AckBeyondEnd {
        /// The consumer.
        consumer: String,
        /// The id acked.
        txn_id: u64,
        /// The last committed transaction.
        last_txn_id: u64,
    },

    /// An ack behind the consumer's stored position: positions only move forward.
    #[error("consumer `{consumer}` is at #{position_txn_id} and cannot go back to #{txn_id}; ack ids in increasing order (re-acking #{position_txn_id} is a safe replay)")]
    AckBackwards {
        /// The consumer.
        consumer: String,
        /// The id acked.
        txn_id: u64,
        /// Its stored position.
        position_txn_id: u64,
    },

    /// A charge, negative adjustment or void would move credits of more grant lots than one
    /// transaction records ([`MAX_LOTS_PER_TRANSACTION`](crate::limits::MAX_LOTS_PER_TRANSACTION)).
    #[error("workspace `{workspace}`: this would move credits of more than {max_lots} grant lots in one transaction, more than one record holds; nothing was written: charge less at a time, or void small grants and credit their sum as one")]
    TooManyLots {
        /// The workspace.
        workspace: String,
        /// The limit.
        max_lots: usize,
    },

    /// A new consumer when the ledger already keeps [`MAX_CONSUMERS`](crate::limits::MAX_CONSUMERS).
    #[error("consumer `{consumer}` would be consumer number {count_after}, over the limit of {max}; reuse an existing consumer name")]
    TooManyConsumers {
        /// The new consumer.
        consumer: String,
        /// How many there would be.
        count_after: u64,
        /// The limit.
        max: u64,
    },

    /// A background thread of the ledger panicked; the ledger refuses further work.
    #[error("the ledger is poisoned: {message}; reopen it")]
    Poisoned {
        /// What panicked.
        message: String,
    },

    /// A file sits where the ledger's journal goes, and it is not this ledger's journal (nor
    /// empty): another file, a symlink, a device. The ledger never writes or removes it.
    #[error("`{path}` is where this ledger keeps its journal, but {detail}; the ledger never writes or removes it")]
    ForeignFile {
        /// The file in the journal's place.
        path: String,
        /// What it is.
        detail: String,
    },

    /// A write on a ledger opened with [`Ledger::open_read_only`](crate::Ledger::open_read_only).
    #[error("the ledger `{path}` was opened read-only; open it with Ledger::open to write")]
    ReadOnly {
        /// The file.
        path: String,
    },

    /// A read-only open of a ledger that must first be written to: its journal holds
    /// acknowledged writes the file does not have yet, or the file needs redb's repair.
    #[error("`{path}` cannot be opened read-only: {detail}; open it once with write access (Ledger::open, or any credit-ledger write command) and read it afterwards")]
    NeedsWrite {
        /// The file.
        path: String,
        /// What must be written.
        detail: String,
    },

    /// The operating system refused to start a thread the ledger needs (the [`Sweeper`]'s):
    /// the process is out of threads or memory. Nothing was started.
    ///
    /// [`Sweeper`]: crate::Sweeper
    #[error("the operating system could not start the {thread} thread: {message}; nothing was started: free threads or memory (or raise the process's limits) and start it again")]
    ThreadSpawn {
        /// Which thread.
        thread: String,
        /// What the operating system said.
        message: String,
    },

    /// A backup's destination exists already; a backup never overwrites a file.
    #[error("`{path}` already exists; a backup never overwrites or follows anything at its destination: choose a new path")]
    DestinationExists {
        /// The destination.
        path: String,
    },
}

/// ` at key K`, or nothing when the key is not known (a failure inside the storage engine).
fn at_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" at key {key}")
    }
}

impl From<InvalidInput> for Error {
    fn from(e: InvalidInput) -> Self {
        Error::InvalidInput(e)
    }
}

/// The broad family of an [`Error`], for mapping to exit codes or HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCategory {
    /// Malformed input.
    Invalid,
    /// A well-formed request the ledger refused (insufficient credits, conflict, unknown id,
    /// already finished).
    Refused,
    /// The file or a record is damaged.
    Corruption,
    /// I/O, locking or an uncertain commit: retry or reopen.
    Storage,
}

impl Error {
    /// Which family this error is in.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::InvalidInput(_) | Error::ClockRegressed { .. } | Error::ClockAhead { .. } => {
                ErrorCategory::Invalid
            }
            Error::UnknownWorkspace { .. }
            | Error::UnknownGeneration { .. }
            | Error::UnknownTransaction { .. }
            | Error::InsufficientCredits { .. }
            | Error::Overflow { .. }
            | Error::Conflict { .. }
            | Error::GenerationRefunded { .. }
            | Error::GenerationSucceeded { .. }
            | Error::ReadOnly { .. }
            | Error::DestinationExists { .. }
            | Error::UnknownGrant { .. }
            | Error::NothingToVoid { .. }
            | Error::AckBeyondEnd { .. }
            | Error::AckBackwards { .. }
            | Error::TooManyConsumers { .. }
            | Error::TooManyLots { .. } => ErrorCategory::Refused,
            Error::Corruption { .. }
            | Error::JournalMismatch { .. }
            | Error::NotALedger { .. }
            | Error::ForeignFile { .. }
            | Error::UnsupportedFormat { .. } => ErrorCategory::Corruption,
            Error::AlreadyOpen { .. }
            | Error::Storage { .. }
            | Error::CommitUncertain { .. }
            | Error::Poisoned { .. }
            | Error::ThreadSpawn { .. }
            | Error::NeedsWrite { .. } => ErrorCategory::Storage,
        }
    }

    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        Error::Storage {
            message: e.to_string(),
        }
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::storage(e)
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::SetDurabilityError
);

impl From<redb::CommitError> for Error {
    fn from(e: redb::CommitError) -> Self {
        Error::CommitUncertain {
            message: e.to_string(),
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corruption_message_names_what_it_knows_and_advises_once() {
        let from_a_panic = Error::Corruption {
            table: "workspaces",
            key: String::new(),
            detail: "the storage engine failed on damaged data (index out of range)".into(),
        }
        .to_string();
        assert!(!from_a_panic.contains("at key"), "{from_a_panic}");
        assert_eq!(from_a_panic.matches("backup").count(), 1, "{from_a_panic}");
        let record = Error::Corruption {
            table: "transactions",
            key: "17".into(),
            detail: "checksum mismatch".into(),
        }
        .to_string();
        assert!(
            record.contains("table `transactions` at key 17: checksum mismatch"),
            "{record}"
        );
    }
}
