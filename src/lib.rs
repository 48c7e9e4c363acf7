//! # credit-ledger
//!
//! An embedded, crash-safe credit ledger for AI image and video generation products.
//!
//! A workspace holds a balance of credits. Starting a generation charges its cost at once, as
//! a **Usage** transaction. When the generation fails (the model fails, the AI service errors
//! or is unavailable, a system error occurs, the input is invalid, or it runs past its
//! deadline, 150 minutes by default) the same credits come back as a **Refund** transaction:
//! automatically, in full, and exactly once.
//!
//! ## What it guarantees
//!
//! - **Exactly once.** A generation's state moves from `Running` to `Succeeded` or `Refunded`
//!   once. A refund is written in the *same atomic commit* as the failure that causes it, so
//!   it is never "pending" and never fails on its own. Retries, replays and races get the
//!   original receipt back, flagged as a replay.
//! - **Durable.** With the default [`Durability::Immediate`], a call returns only after its
//!   write is fsynced: for a file ledger, to its write-ahead journal (`<file>.journal`), which
//!   the next open replays after a crash (see [`Options::journal`] and [`Ledger::checkpoint`]).
//!   After a commit error ([`Error::CommitUncertain`]) the write may have landed: retry with
//!   the same ids, which is always safe.
//! - **Timeouts do not depend on the sweeper.** Once a generation's deadline has passed, any
//!   call that touches it refunds it with reason `Timeout` (lazy expiry); the sweep only finds
//!   the ones nobody touches. A failure report lost to a crash is caught at the deadline.
//! - **Auditable.** Every transaction keeps its balance before and after, and the log is a
//!   checksum chain. [`Ledger::verify`] recomputes every balance and checks every link.
//! - **Integers.** Credits are `u64` with checked arithmetic: overflow is an error.
//!
//! ## Example
//!
//! ```
//! use credit_ledger::{
//!     Credit, HistoryFilter, Ledger, ManualClock, Options, PageRequest, RefundReason,
//!     StartGeneration, Status, TxnKind,
//! };
//!
//! let clock = ManualClock::new(1_700_000_000_000);
//! let ledger = Ledger::in_memory_with(Options::default().clock(clock.clone()))?;
//!
//! ledger.credit(Credit::purchase("acme", 100, "order-1001"))?;
//! let charge = ledger.start_generation(StartGeneration::new("gen-1", "acme", "Quick Video", 12))?;
//! assert_eq!(charge.balance_after_credits, 88);
//!
//! let refund = ledger.fail_generation("gen-1", RefundReason::ModelFailure, "model crashed")?;
//! assert_eq!((refund.amount_credits, refund.balance_after_credits), (12, 100));
//!
//! // Reporting the failure again is safe: it replays the same refund.
//! let again = ledger.fail_generation("gen-1", RefundReason::ModelFailure, "model crashed")?;
//! assert!(again.replay && again.refund_txn == refund.refund_txn);
//!
//! // The Transactions view, filtered to Refunds.
//! let page = ledger.history("acme", &HistoryFilter::all().kinds([TxnKind::Refund]), &PageRequest::first(50))?;
//! let row = &page.entries[0];
//! assert_eq!((row.amount_credits, row.status, row.action.as_str()),
//!            (12, Status::Completed, "Refunded 12 credits (Generation Failure)"));
//! assert_eq!(row.refund_of, Some(charge.usage_txn));
//!
//! assert!(ledger.verify()?.is_clean());
//! # Ok::<(), credit_ledger::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
mod clock;
mod engine;
mod error;
mod ledger;
mod model;
mod query;
mod storage;
mod sweeper;

pub use audit::{AuditCounts, AuditReport, Invariant, Violation};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, ErrorCategory, InvalidInput, Result};
pub use ledger::inside_panic_guard;
pub use ledger::{
    Durability, FeedEvent, JournalDiscard, Ledger, Options, Subscription, DEFAULT_CACHE_SIZE_BYTES,
    JOURNAL_DISCARDED_TITLE,
};
pub use model::limits;
pub use model::{
    AckReceipt, Adjust, AlertReceipt, Allocation, Charge, Completion, Credit, CreditKind,
    GrantClosure, GrantExpiringNotice, MessageCategory, Op, Outcome, Receipt, RefundReason,
    RefundReceipt, StartGeneration, Status, SweepReport, TxnKind, VoidGrant,
};
pub use query::{
    format_duration_ms, BalanceSplit, ChangePage, ExpiryNotice, FeatureStats, GenerationState,
    GenerationView, GrantState, GrantView, HistoryFilter, HistoryPage, LedgerTotals, PageRequest,
    ReasonStats, Stats, TimeWindow, TransactionView, WorkspaceSummary,
};
pub use sweeper::{Sweeper, SweeperOptions};

/// Entry points for fuzzers: not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Run every record decoder over `bytes`. Each must return `Ok` or `Err`, never panic.
    pub fn decode_all(bytes: &[u8]) {
        use crate::model::records::{GenerationRecord, TxnRecord, WorkspaceRecord};
        use crate::storage::codec::decode;
        let _ = decode::<TxnRecord>("transactions", &0, bytes);
        let _ = crate::storage::tables::decode_txn(0, bytes);
        let _ = decode::<GenerationRecord>("generations", &"", bytes);
        let _ = decode::<WorkspaceRecord>("workspaces", &"", bytes);
        let _ = decode::<crate::model::records::GrantRecord>("grants", &"", bytes);
        let _ = decode::<crate::model::records::AllocationRecord>("allocations", &0, bytes);
        let _ = decode::<crate::model::records::GrantBook>("grant_books", &"", bytes);
    }
}
