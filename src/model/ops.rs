//! Requests the ledger accepts, and the receipts it gives back.
//!
//! Every write is idempotent by an id the caller chooses: the generation id for generations,
//! the idempotency key for credits and adjustments. Sending the same request twice gives the
//! same receipt with `replay: true` and changes nothing; sending a *different* request under the
//! same id is an [`Error::Conflict`](crate::Error::Conflict) that names the field.

use serde::{Deserialize, Serialize};

use crate::model::{CreditKind, RefundReason, TxnKind};

/// Add credits to a workspace (creating it if needed): a Purchase or a Grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The workspace to credit.
    pub workspace: String,
    /// How many credits, 1..=[`MAX_AMOUNT_CREDITS`](crate::limits::MAX_AMOUNT_CREDITS).
    pub amount_credits: u64,
    /// Purchase or Grant.
    pub kind: CreditKind,
    /// The caller's key that makes a retry safe (an order id, a webhook event id).
    pub idempotency_key: String,
    /// A note shown in history; may be empty. It also names the grant ("Monthly credits").
    pub memo: String,
    /// The grant's drawdown priority: lower is spent first,
    /// 0..=[`MAX_GRANT_PRIORITY`](crate::limits::MAX_GRANT_PRIORITY); default
    /// [`DEFAULT_GRANT_PRIORITY`](crate::limits::DEFAULT_GRANT_PRIORITY).
    pub priority: u32,
    /// Not spendable before this time; `None`: from the moment it is credited.
    pub effective_at_ms: Option<u64>,
    /// Not spendable from this time on; `None`: never expires.
    pub expires_at_ms: Option<u64>,
}

impl Credit {
    /// A Purchase of `amount_credits` with no memo.
    pub fn purchase(
        workspace: impl Into<String>,
        amount_credits: u64,
        idempotency_key: impl Into<String>,
    ) -> Self {
        Self {
            workspace: workspace.into(),
            amount_credits,
            kind: CreditKind::Purchase,
            idempotency_key: idempotency_key.into(),
            memo: String::new(),
            priority: crate::limits::DEFAULT_GRANT_PRIORITY,
            effective_at_ms: None,
            expires_at_ms: None,
        }
    }

    /// A Grant of `amount_credits` with no memo.
    pub fn grant(
        workspace: impl Into<String>,
        amount_credits: u64,
        idempotency_key: impl Into<String>,
    ) -> Self {
        Self {
            kind: CreditKind::Grant,
            ..Self::purchase(workspace, amount_credits, idempotency_key)
        }
    }

    /// Set the memo.
    pub fn memo(mut self, memo: impl Into<String>) -> Self {
        self.memo = memo.into();
        self
    }

    /// Set the drawdown priority (lower is spent first).
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Make the grant spendable only from `at_ms` on.
    pub fn effective_at_ms(mut self, at_ms: u64) -> Self {
        self.effective_at_ms = Some(at_ms);
        self
    }

    /// Make the grant expire at `at_ms`: not spendable from then on, and swept as an
    /// Expiration of what is left.
    pub fn expires_at_ms(mut self, at_ms: u64) -> Self {
        self.expires_at_ms = Some(at_ms);
        self
    }
}

/// An operator's void of what remains of a grant: its own transaction (kind
/// [`TxnKind::Void`]), idempotent by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidGrant {
    /// The workspace that holds the grant.
    pub workspace: String,
    /// The grant: the idempotency key of the credit that created it.
    pub grant_id: String,
    /// The caller's key that makes a retry safe.
    pub idempotency_key: String,
    /// Why; required, because a void without a reason cannot be audited.
    pub memo: String,
}

impl VoidGrant {
    /// A void of `grant_id` in `workspace`, with a reason.
    pub fn new(
        workspace: impl Into<String>,
        grant_id: impl Into<String>,
        idempotency_key: impl Into<String>,
        memo: impl Into<String>,
    ) -> Self {
        Self {
            workspace: workspace.into(),
            grant_id: grant_id.into(),
            idempotency_key: idempotency_key.into(),
            memo: memo.into(),
        }
    }
}

/// An operator's signed correction. It never takes a balance below zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjust {
    /// The workspace, which must exist.
    pub workspace: String,
    /// Credits to add (positive) or remove (negative); never zero.
    pub amount_credits: i64,
    /// The caller's key that makes a retry safe.
    pub idempotency_key: String,
    /// Why; required, because an adjustment without a reason cannot be audited.
    pub memo: String,
}

impl Adjust {
    /// A correction of `amount_credits` with a reason.
    pub fn new(
        workspace: impl Into<String>,
        amount_credits: i64,
        idempotency_key: impl Into<String>,
        memo: impl Into<String>,
    ) -> Self {
        Self {
            workspace: workspace.into(),
            amount_credits,
            idempotency_key: idempotency_key.into(),
            memo: memo.into(),
        }
    }
}

/// Charge a workspace for a generation and start its clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartGeneration {
    /// The caller's id for the generation; it is also the idempotency key of the charge.
    pub generation_id: String,
    /// The workspace that pays.
    pub workspace: String,
    /// What is generated ("Quick Video"); the title in history.
    pub feature: String,
    /// The cost, charged now and refunded in full if the generation fails.
    pub cost_credits: u64,
    /// How long the generation may run; `None` uses the ledger's default (150 minutes).
    pub timeout_ms: Option<u64>,
}

impl StartGeneration {
    /// A start with the default timeout.
    pub fn new(
        generation_id: impl Into<String>,
        workspace: impl Into<String>,
        feature: impl Into<String>,
        cost_credits: u64,
    ) -> Self {
        Self {
            generation_id: generation_id.into(),
            workspace: workspace.into(),
            feature: feature.into(),
            cost_credits,
            timeout_ms: None,
        }
    }

    /// Set an explicit timeout.
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }
}

/// One write, for [`Ledger::apply`](crate::Ledger::apply) and group commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// See [`Ledger::credit`](crate::Ledger::credit).
    Credit(Credit),
    /// See [`Ledger::adjust`](crate::Ledger::adjust).
    Adjust(Adjust),
    /// See [`Ledger::start_generation`](crate::Ledger::start_generation).
    Start(StartGeneration),
    /// See [`Ledger::complete_generation`](crate::Ledger::complete_generation).
    Complete {
        /// The generation.
        generation_id: String,
    },
    /// See [`Ledger::fail_generation`](crate::Ledger::fail_generation).
    Fail {
        /// The generation.
        generation_id: String,
        /// Why it failed.
        reason: RefundReason,
        /// The error message to show with the refund.
        message: String,
    },
    /// See [`Ledger::sweep_expired`](crate::Ledger::sweep_expired).
    Sweep {
        /// Most refunds and expirations to write.
        limit: u32,
    },
    /// See [`Ledger::ack`](crate::Ledger::ack).
    Ack {
        /// The consumer's name (the id rules apply).
        consumer: String,
        /// The last transaction it has processed.
        txn_id: u64,
    },
    /// See [`Ledger::set_alert`](crate::Ledger::set_alert) and
    /// [`Ledger::remove_alert`](crate::Ledger::remove_alert).
    SetAlert {
        /// The workspace, which must exist.
        workspace: String,
        /// The threshold, 1..=[`MAX_AMOUNT_CREDITS`](crate::limits::MAX_AMOUNT_CREDITS);
        /// `None` removes the alert.
        threshold_credits: Option<u64>,
    },
    /// See [`Ledger::void_grant`](crate::Ledger::void_grant).
    VoidGrant(VoidGrant),
}

/// Credits a charge took from one grant, or a refund gave back to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The grant (the idempotency key of its credit).
    pub grant_id: String,
    /// The part of the grant: 0 is the grant as credited; n >= 1 is the n-th refund-grace part
    /// (credits a refund gave back after, or just before, the grant's expiry).
    pub lot: u32,
    /// How many credits.
    pub credits: u64,
    /// For a refund: when the returned credits stop being spendable (`None`: never).
    pub spendable_until_ms: Option<u64>,
}

/// The receipt of a credit or adjustment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The transaction written (or found, on a replay).
    pub txn_id: u64,
    /// The workspace.
    pub workspace: String,
    /// Purchase, Grant or Adjustment.
    pub kind: TxnKind,
    /// The signed amount.
    pub amount_credits: i64,
    /// Balance before the transaction: every credit the workspace's grants hold, spendable
    /// now or not (see [`WorkspaceSummary`](crate::WorkspaceSummary) for the split).
    pub balance_before_credits: u64,
    /// Balance after it.
    pub balance_after_credits: u64,
    /// When it was written.
    pub at_ms: u64,
    /// True when this request had already been applied and nothing changed now.
    pub replay: bool,
}

/// The receipt of a generation start: what was charged and when the deadline falls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    /// The generation.
    pub generation_id: String,
    /// The workspace charged.
    pub workspace: String,
    /// The Usage transaction.
    pub usage_txn: u64,
    /// What was charged.
    pub cost_credits: u64,
    /// Balance before the charge (every credit the grants hold; the charge needed only the
    /// spendable part).
    pub balance_before_credits: u64,
    /// Balance after it.
    pub balance_after_credits: u64,
    /// When the generation started.
    pub started_at_ms: u64,
    /// When it times out and is refunded.
    pub deadline_ms: u64,
    /// The grants that paid, in drawdown order.
    pub allocations: Vec<Allocation>,
    /// True when this start had already been applied.
    pub replay: bool,
}

/// The receipt of a successful completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Completion {
    /// The generation.
    pub generation_id: String,
    /// Its Usage transaction, which now shows Completed.
    pub usage_txn: u64,
    /// When it completed.
    pub completed_at_ms: u64,
    /// True when it had already completed.
    pub replay: bool,
}

/// The receipt of a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefundReceipt {
    /// The generation refunded.
    pub generation_id: String,
    /// The workspace credited.
    pub workspace: String,
    /// The Usage transaction it reverses.
    pub usage_txn: u64,
    /// The Refund transaction.
    pub refund_txn: u64,
    /// Always the full original cost.
    pub amount_credits: u64,
    /// Why. `Timeout` when the deadline had passed before the failure was reported.
    pub reason: RefundReason,
    /// The stored error message.
    pub message: String,
    /// Balance before the refund (every credit the grants hold, spendable or not).
    pub balance_before_credits: u64,
    /// Balance after it.
    pub balance_after_credits: u64,
    /// When it was written.
    pub at_ms: u64,
    /// Where the credits went back: each allocation of the Usage, to its grant.
    pub allocations: Vec<Allocation>,
    /// True when the generation had already been refunded and nothing changed now.
    pub replay: bool,
}

/// The receipt of an Expiration (written by the sweep) or a Void (by an operator): what
/// remained of a grant, taken off the balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantClosure {
    /// The Expiration or Void transaction.
    pub txn_id: u64,
    /// The workspace.
    pub workspace: String,
    /// The grant.
    pub grant_id: String,
    /// [`TxnKind::Expiration`] or [`TxnKind::Void`].
    pub kind: TxnKind,
    /// Credits that lapsed or were voided.
    pub amount_credits: u64,
    /// Balance before.
    pub balance_before_credits: u64,
    /// Balance after.
    pub balance_after_credits: u64,
    /// When it was written.
    pub at_ms: u64,
    /// True when this void had already been applied.
    pub replay: bool,
}

/// A `GrantExpiring` notification: a grant expires soon with credits left (see
/// [`Options::grant_expiring_notice_ms`](crate::Options::grant_expiring_notice_ms)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantExpiringNotice {
    /// The notification's transaction.
    pub txn_id: u64,
    /// The workspace.
    pub workspace: String,
    /// The grant.
    pub grant_id: String,
    /// When the grant expires.
    pub expires_at_ms: u64,
    /// What the grant held when the notice was written: the credits that lapse at
    /// `expires_at_ms` unless they are spent first.
    pub expiring_credits: u64,
    /// When it was written.
    pub at_ms: u64,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// The refunds written, earliest deadline first.
    pub refunds: Vec<RefundReceipt>,
    /// The `GrantExpiring` notices written, earliest due first.
    pub notices: Vec<GrantExpiringNotice>,
    /// The Expirations written for grants whose expiry passed, earliest first.
    pub expirations: Vec<GrantClosure>,
    /// True when more generations or grants had expired than the limit allowed: sweep again.
    pub more_expired: bool,
    /// The earliest deadline still running, grant expiry still pending or grant notice still
    /// due, after this sweep.
    pub next_deadline_ms: Option<u64>,
}

/// The receipt of an [`Op::Ack`]: a consumer's stored position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckReceipt {
    /// The consumer.
    pub consumer: String,
    /// Its position now: the last transaction it has processed.
    pub txn_id: u64,
    /// True when it already stood at `txn_id` and nothing changed. A retried ack gets the
    /// same receipt with this set, like every other write.
    pub replay: bool,
}

/// The receipt of an [`Op::SetAlert`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertReceipt {
    /// The workspace.
    pub workspace: String,
    /// The threshold now; `None` when no alert is set.
    pub threshold_credits: Option<u64>,
    /// True when the alert already stood so and nothing changed.
    pub replay: bool,
}

/// The result of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// From [`Op::Credit`].
    Credit(Receipt),
    /// From [`Op::Adjust`].
    Adjust(Receipt),
    /// From [`Op::Start`].
    Start(Charge),
    /// From [`Op::Complete`].
    Complete(Completion),
    /// From [`Op::Fail`].
    Fail(RefundReceipt),
    /// From [`Op::Sweep`].
    Sweep(SweepReport),
    /// From [`Op::VoidGrant`].
    VoidGrant(GrantClosure),
    /// From [`Op::Ack`].
    Ack(AckReceipt),
    /// From [`Op::SetAlert`].
    Alert(AlertReceipt),
}
