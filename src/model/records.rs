//! The records the ledger stores. They are framed by [`codec`](crate::storage::codec) and never
//! leave the crate as they are: reads turn them into the views in [`query`](crate::query).

use serde::{Deserialize, Serialize};

use crate::model::{RefundReason, Status, TxnKind};

/// One entry of the append-only transaction log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnRecord {
    pub id: u64,
    pub at_ms: u64,
    pub workspace: String,
    pub kind: TxnKind,
    /// The magnitude of the change; the sign is `debit`.
    pub amount_credits: u64,
    /// True when the amount was taken from the balance.
    pub debit: bool,
    pub balance_before_credits: u64,
    pub balance_after_credits: u64,
    /// The feature for generation transactions ("Quick Video"); the kind's name otherwise.
    pub title: String,
    pub generation_id: Option<String>,
    pub refund: Option<RefundDetail>,
    pub idempotency_key: Option<String>,
    /// The memo of a credit or adjustment. For a `BalanceLow` notification, the threshold it
    /// crossed, in decimal (a record field of its own would change the format of every
    /// record; this keeps version 1 records readable as they are).
    pub memo: Option<String>,
    /// The checksum of the previous transaction's record (0 for the first), which makes the log
    /// a chain: a changed, missing or reordered entry breaks it.
    pub prev_crc: u32,
}

impl TxnRecord {
    /// The alert threshold a `BalanceLow` notification records; `None` for anything else.
    pub fn alert_threshold(&self) -> Option<u64> {
        match self.kind {
            TxnKind::BalanceLow => self.memo.as_deref().and_then(|m| m.parse().ok()),
            _ => None,
        }
    }

    /// The signed amount.
    pub fn signed_amount(&self) -> i128 {
        if self.debit {
            -i128::from(self.amount_credits)
        } else {
            i128::from(self.amount_credits)
        }
    }
}

/// Why a refund was written, and what it reverses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RefundDetail {
    pub reason: RefundReason,
    pub message: String,
    pub message_truncated: bool,
    /// The Usage transaction this refund reverses.
    pub usage_txn: u64,
}

/// A generation's lifecycle: the record the exactly-once guarantee rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenerationRecord {
    pub id: String,
    pub workspace: String,
    pub feature: String,
    pub cost_credits: u64,
    pub timeout_ms: u64,
    pub started_at_ms: u64,
    pub deadline_ms: u64,
    pub usage_txn: u64,
    pub state: GenState,
}

/// Where a generation is in its life. Only `Running` can change, and only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum GenState {
    Running,
    Succeeded {
        at_ms: u64,
    },
    Refunded {
        at_ms: u64,
        reason: RefundReason,
        refund_txn: u64,
    },
}

impl GenState {
    /// The status the generation's Usage shows in history.
    pub fn usage_status(self) -> Status {
        match self {
            GenState::Running => Status::Pending,
            GenState::Succeeded { .. } => Status::Completed,
            GenState::Refunded { .. } => Status::Failed,
        }
    }
}

/// A workspace's balance and running totals. The totals obey
/// `granted - spent + refunded + adjusted_in - adjusted_out = balance`, and
/// `balance + held` always fits a `u64`, so a refund can never overflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WorkspaceRecord {
    pub balance_credits: u64,
    pub granted_credits: u64,
    pub spent_credits: u64,
    pub refunded_credits: u64,
    pub adjusted_in_credits: u64,
    pub adjusted_out_credits: u64,
    pub txn_count: u64,
    pub running_generations: u64,
    /// The costs of the running generations: what a refund may have to give back.
    pub held_credits: u64,
    pub created_at_ms: u64,
}
