//! The records the ledger stores. They are framed by [`codec`](crate::storage::codec) and never
//! leave the crate as they are: reads turn them into the views in [`query`](crate::query).

use serde::{Deserialize, Serialize};

use crate::model::{Allocation, RefundReason, Status, TxnKind};

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
    /// For a Refund written from schema 6 on: the grant lots it gave credits back to, so that
    /// its history view needs no other read (see [`tables::META_REFUND_LOTS_FROM_KEY`]). A
    /// copy of what its `allocations` row, or its generation record, says; `verify()` checks
    /// the two agree. `None` for every other kind, and for a Refund written before.
    ///
    /// [`tables::META_REFUND_LOTS_FROM_KEY`]: crate::storage::tables::META_REFUND_LOTS_FROM_KEY
    pub refund_lots: Option<Vec<AllocationEntry>>,
}

/// A [`TxnRecord`] as schema 5 and earlier wrote it: without `refund_lots`. The decoder
/// falls back to it ([`tables::decode_txn`]): such a record is a prefix of the current layout,
/// which fails on it with an early end, never with a wrong value.
///
/// [`tables::decode_txn`]: crate::storage::tables::decode_txn
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnRecordV5 {
    pub id: u64,
    pub at_ms: u64,
    pub workspace: String,
    pub kind: TxnKind,
    pub amount_credits: u64,
    pub debit: bool,
    pub balance_before_credits: u64,
    pub balance_after_credits: u64,
    pub title: String,
    pub generation_id: Option<String>,
    pub refund: Option<RefundDetail>,
    pub idempotency_key: Option<String>,
    pub memo: Option<String>,
    pub prev_crc: u32,
}

impl From<TxnRecordV5> for TxnRecord {
    fn from(r: TxnRecordV5) -> Self {
        TxnRecord {
            id: r.id,
            at_ms: r.at_ms,
            workspace: r.workspace,
            kind: r.kind,
            amount_credits: r.amount_credits,
            debit: r.debit,
            balance_before_credits: r.balance_before_credits,
            balance_after_credits: r.balance_after_credits,
            title: r.title,
            generation_id: r.generation_id,
            refund: r.refund,
            idempotency_key: r.idempotency_key,
            memo: r.memo,
            prev_crc: r.prev_crc,
            refund_lots: None,
        }
    }
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
    /// When one grant lot paid the whole cost (the common case): that allocation. The Usage
    /// then has no `allocations` row, and neither has its Refund when it gives the credits
    /// back to this same lot (see `tables::get_allocations_of`). `None` for a
    /// charge that spans lots (its allocations are in the `allocations` table) and for one
    /// made before schema 4. Added in schema 4: records written before it decode through
    /// [`GenerationRecordV3`].
    pub single_allocation: Option<AllocationEntry>,
}

impl GenerationRecord {
    /// The Usage's allocations when this record holds them (`single_allocation`); `None`
    /// means they are in the `allocations` table.
    pub fn usage_allocations(&self) -> Option<Vec<AllocationEntry>> {
        self.single_allocation.clone().map(|e| vec![e])
    }

    /// Whether transaction `txn_id` is this generation's Refund.
    pub fn is_refund(&self, txn_id: u64) -> bool {
        matches!(self.state, GenState::Refunded { refund_txn, .. } if refund_txn == txn_id)
    }
}

/// A [`GenerationRecord`] as schema 3 and earlier wrote it: without `single_allocation`.
/// The decoder falls back to it (a schema 3 record is a prefix of a schema 4 one, so the
/// current layout fails on it with an early end, never a wrong value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenerationRecordV3 {
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

impl From<GenerationRecordV3> for GenerationRecord {
    fn from(g: GenerationRecordV3) -> Self {
        GenerationRecord {
            id: g.id,
            workspace: g.workspace,
            feature: g.feature,
            cost_credits: g.cost_credits,
            timeout_ms: g.timeout_ms,
            started_at_ms: g.started_at_ms,
            deadline_ms: g.deadline_ms,
            usage_txn: g.usage_txn,
            state: g.state,
            single_allocation: None,
        }
    }
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

/// One part ("lot") of a grant: lot 0 is the grant as credited; lot n >= 1 holds credits a
/// refund gave back under the refund grace (spendable until the refund's time plus
/// `Options::refund_grace_ms`). Keyed by (grant id, lot) in `grants`.
///
/// Always `remaining = amount - allocated + returned - closed`, and `0 <= remaining <= amount
/// + returned`: `verify()` checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GrantRecord {
    pub id: String,
    pub lot: u32,
    pub workspace: String,
    /// The transaction that created this lot: the credit (lot 0), the refund (a grace lot), or
    /// for the balance carried over from a ledger written before grants existed, the first
    /// transaction written after (the carried-over grant's `amount` is the balance then, and
    /// refunds of charges made before grants count as `returned`).
    pub source_txn: u64,
    /// The grant's name for people: the credit's memo, else its kind.
    pub label: String,
    /// Credits this lot was created with.
    pub amount_credits: u64,
    pub remaining_credits: u64,
    /// Credits charges (and negative adjustments) took from it.
    pub allocated_credits: u64,
    /// Credits refunds gave back to it.
    pub returned_credits: u64,
    pub priority: u32,
    pub effective_at_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
    /// Lot 0 only: how many grace lots the grant has.
    pub grace_lots: u32,
    /// Set once the lot expired (swept) or was voided; a closed lot is never spendable again.
    pub closed: Option<GrantClosed>,
}

/// How a grant lot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GrantClosed {
    pub kind: TxnKind,
    /// The Expiration or Void transaction (0 when nothing was left, so none was written).
    pub txn: u64,
    /// What lapsed or was voided.
    pub credits: u64,
    pub at_ms: u64,
}

impl GrantRecord {
    /// Spendable at `now_ms`: open, effective and unexpired.
    pub fn spendable_at(&self, now_ms: u64) -> bool {
        self.closed.is_none()
            && self.effective_at_ms.is_none_or(|t| t <= now_ms)
            && self.expires_at_ms.is_none_or(|t| now_ms < t)
    }

    /// The key of this lot in the per-workspace drawdown index.
    pub fn order_key(&self) -> (&str, u32, u64, u64, &str, u32) {
        (
            self.workspace.as_str(),
            self.priority,
            self.expires_at_ms.unwrap_or(u64::MAX),
            self.effective_at_ms.unwrap_or(0),
            self.id.as_str(),
            self.lot,
        )
    }
}

/// The grant lots a transaction moved: for a Usage or a negative Adjustment, what it took;
/// for a Refund, what it gave back (`from_lot` is where the Usage took it); for an Expiration
/// or a Void, what it closed. Keyed by txn id in `allocations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AllocationRecord {
    pub entries: Vec<AllocationEntry>,
}

/// How views name the carried-over grant. (Its stored id holds a control character, which no
/// caller's key may; a caller's key could still read "(carried over)", so a view tells them
/// apart only by the label "Carried over" and the source transaction.)
pub(crate) const CARRIED_OVER_SHOWN: &str = "(carried over)";

/// One entry of an [`AllocationRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AllocationEntry {
    pub grant_id: String,
    /// The lot the credits moved to or from.
    pub lot: u32,
    /// For a refund: the lot the Usage took them from (the same as `lot` unless the refund
    /// grace put them in a new lot).
    pub from_lot: u32,
    pub credits: u64,
    /// The expiry of `lot` when the entry was written.
    pub expires_at_ms: Option<u64>,
}

impl AllocationEntry {
    pub fn public(&self) -> Allocation {
        Allocation {
            // The carried-over grant's id holds a control character; show it as the grant
            // list does.
            grant_id: if self.grant_id == crate::engine::grants::carried_over_id() {
                CARRIED_OVER_SHOWN.to_string()
            } else {
                self.grant_id.clone()
            },
            lot: self.lot,
            credits: self.credits,
            spendable_until_ms: self.expires_at_ms,
        }
    }
}

/// What a workspace's grants have lost: kept beside the `workspaces` record (whose format
/// predates grants) in `grant_books`. Its presence also says that the workspace's balance is
/// held in grants: a workspace from a ledger written before grants has none until its first
/// write, which moves its balance into a carried-over grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GrantBook {
    /// The first transaction written with the workspace's credits held in grants: every Usage
    /// from it on records its allocations.
    pub since_txn: u64,
    pub expired_credits: u64,
    pub voided_credits: u64,
}
