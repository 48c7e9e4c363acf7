//! What reads return: summaries a user can act on, built from the stored records.

use serde::Serialize;

use crate::model::records::{GenState, GenerationRecord, TxnRecord, WorkspaceRecord};
use crate::model::{Allocation, RefundReason, Status, TxnKind};
use crate::query::grants::{BalanceSplit, ExpiryNotice};

/// A workspace's balance and running totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceSummary {
    /// The workspace id.
    pub workspace: String,
    /// The balance: every credit its grants hold, the sum of their `remaining`. Includes
    /// grants not yet effective and expired ones the sweep has not reached; a charge can use
    /// only `spendable_credits`.
    pub balance_credits: u64,
    /// The spendable balance at the time of the read: grants effective and unexpired.
    pub spendable_credits: u64,
    /// Credits in grants whose start is ahead.
    pub pending_credits: u64,
    /// Credits in grants past their expiry that the sweep has not yet expired (not spendable).
    pub expired_unswept_credits: u64,
    /// The soonest expiry among the spendable grants.
    pub next_expiry: Option<ExpiryNotice>,
    /// All Expirations.
    pub expired_credits: u64,
    /// All Voids.
    pub voided_credits: u64,
    /// All Purchases and Grants.
    pub granted_credits: u64,
    /// All Usage charges.
    pub spent_credits: u64,
    /// All Refunds.
    pub refunded_credits: u64,
    /// Positive adjustments.
    pub adjusted_in_credits: u64,
    /// Negative adjustments.
    pub adjusted_out_credits: u64,
    /// Generations charged and not yet finished.
    pub running_generations: u64,
    /// The costs of those generations: what failures would refund.
    pub held_credits: u64,
    /// Transactions in its history.
    pub transactions: u64,
    /// When its first credit arrived.
    pub created_at_ms: u64,
}

impl WorkspaceSummary {
    pub(crate) fn new(
        workspace: &str,
        r: &WorkspaceRecord,
        split: BalanceSplit,
        (expired_credits, voided_credits): (u64, u64),
    ) -> Self {
        WorkspaceSummary {
            workspace: workspace.to_string(),
            balance_credits: r.balance_credits,
            spendable_credits: split.spendable_credits,
            pending_credits: split.pending_credits,
            expired_unswept_credits: split.expired_unswept_credits,
            next_expiry: split.next_expiry,
            expired_credits,
            voided_credits,
            granted_credits: r.granted_credits,
            spent_credits: r.spent_credits,
            refunded_credits: r.refunded_credits,
            adjusted_in_credits: r.adjusted_in_credits,
            adjusted_out_credits: r.adjusted_out_credits,
            running_generations: r.running_generations,
            held_credits: r.held_credits,
            transactions: r.txn_count,
            created_at_ms: r.created_at_ms,
        }
    }
}

/// Sums over every workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LedgerTotals {
    /// Number of workspaces.
    pub workspaces: u64,
    /// Sum of balances.
    pub balance_credits: u128,
    /// Sum of Purchases and Grants.
    pub granted_credits: u128,
    /// Sum of Usage charges.
    pub spent_credits: u128,
    /// Sum of Refunds.
    pub refunded_credits: u128,
    /// Sum of positive adjustments.
    pub adjusted_in_credits: u128,
    /// Sum of negative adjustments.
    pub adjusted_out_credits: u128,
    /// Sum of Expirations.
    pub expired_credits: u128,
    /// Sum of Voids.
    pub voided_credits: u128,
    /// Running generations.
    pub running_generations: u64,
}

impl LedgerTotals {
    /// Credits are conserved: `granted - spent + refunded + adjusted_in - adjusted_out -
    /// expired - voided` equals the sum of balances.
    pub fn is_conserved(&self) -> bool {
        let inflow = self.granted_credits + self.refunded_credits + self.adjusted_in_credits;
        let outflow = self.spent_credits
            + self.adjusted_out_credits
            + self.expired_credits
            + self.voided_credits;
        inflow.checked_sub(outflow) == Some(self.balance_credits)
    }
}

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GenerationState {
    /// Charged and still running.
    Running,
    /// Finished successfully; its charge stands.
    Succeeded {
        /// When.
        completed_at_ms: u64,
    },
    /// Failed and refunded in full.
    Refunded {
        /// When.
        refunded_at_ms: u64,
        /// Why.
        reason: RefundReason,
        /// The Refund transaction.
        refund_txn: u64,
    },
}

/// A generation's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationView {
    /// The generation id.
    pub generation_id: String,
    /// The workspace charged.
    pub workspace: String,
    /// The feature ("Quick Video").
    pub feature: String,
    /// The cost charged.
    pub cost_credits: u64,
    /// Its timeout.
    pub timeout_ms: u64,
    /// When it was charged.
    pub started_at_ms: u64,
    /// When it times out.
    pub deadline_ms: u64,
    /// Its Usage transaction.
    pub usage_txn: u64,
    /// Its state.
    pub state: GenerationState,
    /// Running past its deadline: the next write that touches it, or the next sweep, refunds
    /// it with reason `Timeout`.
    pub overdue: bool,
}

impl GenerationView {
    pub(crate) fn new(g: &GenerationRecord, now_ms: u64) -> Self {
        GenerationView {
            generation_id: g.id.clone(),
            workspace: g.workspace.clone(),
            feature: g.feature.clone(),
            cost_credits: g.cost_credits,
            timeout_ms: g.timeout_ms,
            started_at_ms: g.started_at_ms,
            deadline_ms: g.deadline_ms,
            usage_txn: g.usage_txn,
            state: match g.state {
                GenState::Running => GenerationState::Running,
                GenState::Succeeded { at_ms } => GenerationState::Succeeded {
                    completed_at_ms: at_ms,
                },
                GenState::Refunded {
                    at_ms,
                    reason,
                    refund_txn,
                } => GenerationState::Refunded {
                    refunded_at_ms: at_ms,
                    reason,
                    refund_txn,
                },
            },
            overdue: g.state == GenState::Running && now_ms >= g.deadline_ms,
        }
    }
}

/// One transaction as a user sees it when they expand it in history: the credit summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionView {
    /// The transaction id.
    pub id: u64,
    /// When it was written.
    pub at_ms: u64,
    /// The workspace.
    pub workspace: String,
    /// What it did.
    pub kind: TxnKind,
    /// Pending, Completed or Failed.
    pub status: Status,
    /// The feature for generations ("Quick Video"), else the kind.
    pub title: String,
    /// The signed amount.
    pub amount_credits: i64,
    /// Balance Before.
    pub balance_before_credits: u64,
    /// New Balance.
    pub balance_after_credits: u64,
    /// The action, worded for people: "Refunded 12 credits".
    pub action: String,
    /// The generation, for Usage and Refund.
    pub generation_id: Option<String>,
    /// Why a Refund was paid.
    pub reason: Option<RefundReason>,
    /// The error message that came with the failure.
    pub message: Option<String>,
    /// The message was cut to the length limit.
    pub message_truncated: bool,
    /// For a Refund: the Usage it reverses.
    pub refund_of: Option<u64>,
    /// For a failed Usage: the Refund that reversed it.
    pub refunded_by: Option<u64>,
    /// The memo of a credit or adjustment.
    pub memo: Option<String>,
    /// The idempotency key of a credit, adjustment or void.
    pub idempotency_key: Option<String>,
    /// The grants this transaction moved credits from or to: for a Usage (or a negative
    /// Adjustment) which grants paid, in drawdown order; for a Refund where each part went
    /// back, and until when it is spendable; for an Expiration or a Void what was closed; for
    /// a `GrantExpiring` notification the grant, the credits it held when the notice was
    /// written, and its expiry (`spendable_until_ms`).
    pub allocations: Vec<Allocation>,
    /// For a Refund written while the ledger did not trust the clock (far behind the log, or
    /// far ahead of the wall clock): what the clock read. The refund went ahead anyway, as
    /// every refund does, stamped `at_ms`: the log's last time (or the wall clock's).
    pub untrusted_clock_ms: Option<u64>,
    /// For a `BalanceLow` notification: the alert threshold the balance fell below.
    pub alert_threshold_credits: Option<u64>,
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        "credit"
    } else {
        "credits"
    }
}

impl TransactionView {
    /// Build the view; `gen` is the generation of a Usage, for its status and refund link.
    /// Takes the record by value: its strings move into the view instead of being copied,
    /// which is a third of the allocations of a history page.
    pub(crate) fn new(r: TxnRecord, gen: Option<&GenerationRecord>) -> Self {
        let n = r.amount_credits;
        let (status, refunded_by) = match (r.kind, gen.map(|g| g.state)) {
            (TxnKind::Usage, Some(state)) => (
                state.usage_status(),
                match state {
                    GenState::Refunded { refund_txn, .. } => Some(refund_txn),
                    _ => None,
                },
            ),
            (TxnKind::Usage, None) => (Status::Pending, None),
            _ => (Status::Completed, None),
        };
        let action = match r.kind {
            TxnKind::Purchase => format!("Purchased {n} {}", plural(n)),
            TxnKind::Grant => format!("Granted {n} {}", plural(n)),
            TxnKind::Usage => format!("Charged {n} {} for {}", plural(n), r.title),
            TxnKind::Refund => match &r.refund {
                Some(d) => format!("Refunded {n} {} ({})", plural(n), d.reason),
                None => format!("Refunded {n} {}", plural(n)),
            },
            TxnKind::Adjustment if r.debit => format!("Adjusted -{n} {}", plural(n)),
            TxnKind::Adjustment => format!("Adjusted +{n} {}", plural(n)),
            TxnKind::Expiration => format!("Expired {n} {} of {}", plural(n), r.title),
            TxnKind::Void => format!("Voided {n} {} of {}", plural(n), r.title),
            // The credits are in the allocation, which `query::view_of` reads and words.
            TxnKind::GrantExpiring => format!("{} expires soon", r.title),
            TxnKind::BalanceLow => match r.alert_threshold() {
                Some(t) => format!("Balance fell below {t} {}", plural(t)),
                None => "Balance fell below the alert threshold".to_string(),
            },
        };
        let alert_threshold_credits = r.alert_threshold();
        let amount_credits = i64::try_from(r.signed_amount()).unwrap_or(i64::MIN);
        let (reason, message, message_truncated, refund_of) = match r.refund {
            Some(d) => (
                Some(d.reason),
                Some(d.message),
                d.message_truncated,
                Some(d.usage_txn),
            ),
            None => (None, None, false, None),
        };
        TransactionView {
            id: r.id,
            at_ms: r.at_ms,
            workspace: r.workspace,
            kind: r.kind,
            status,
            title: r.title,
            amount_credits,
            balance_before_credits: r.balance_before_credits,
            balance_after_credits: r.balance_after_credits,
            action,
            generation_id: r.generation_id,
            reason,
            message,
            message_truncated,
            refund_of,
            refunded_by,
            memo: r
                .memo
                .filter(|m| !m.is_empty() && alert_threshold_credits.is_none()),
            alert_threshold_credits,
            idempotency_key: r.idempotency_key,
            allocations: Vec::new(),
            untrusted_clock_ms: None,
        }
    }
}

/// A duration for people: `90 s`, `150 min`, `2 h 30 min`, `1 d 2 h`.
pub fn format_duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d} d"));
    }
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if sec > 0 || parts.is_empty() {
        parts.push(format!("{sec} s"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration_ms(9_000_000), "2 h 30 min");
        assert_eq!(format_duration_ms(90_000), "1 min 30 s");
        assert_eq!(format_duration_ms(0), "0 s");
        assert_eq!(format_duration_ms(86_400_000 + 3_600_000), "1 d 1 h");
    }

    #[test]
    fn conservation_detects_a_missing_credit() {
        let mut t = LedgerTotals {
            workspaces: 1,
            balance_credits: 100,
            granted_credits: 112,
            spent_credits: 24,
            refunded_credits: 12,
            ..LedgerTotals::default()
        };
        assert!(t.is_conserved());
        t.balance_credits = 99;
        assert!(!t.is_conserved());
    }
}
