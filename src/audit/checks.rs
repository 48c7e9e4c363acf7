//! The per-record checks of the audit: a transaction against its generation and indexes, and
//! the reverse passes that name the ids involved when a count disagrees.

use std::collections::HashMap;

use redb::ReadableTable;

use super::{AuditReport, Invariant};
use crate::error::Error;
use crate::model::records::{GenState, GenerationRecord, TxnRecord, WorkspaceRecord};
use crate::model::TxnKind;
use crate::storage::tables::{self, Category};

/// Links proved from the log's side, to be matched against counts of the other side.
#[derive(Default)]
pub(super) struct Links {
    /// Usages whose generation names them as its Usage.
    pub usages: u64,
    /// Refunds whose generation names them as its Refund.
    pub refunds: u64,
    /// Transactions carrying an idempotency key that points back at them.
    pub keyed: u64,
    /// History entries the log's transactions must have: one each, plus a `UsageFailed`
    /// marker for each Usage of a refunded generation (schema 4 on).
    pub history_entries: u64,
}

/// The history index and the schema whose layout it must have (see
/// [`tables::history_entries`]).
pub(super) struct HistoryIndex<'a, T> {
    pub table: &'a T,
    pub schema: u8,
}

/// A workspace's sums, recomputed from its transactions. The sums are `u128`, so that a
/// damaged file whose amounts add up past `u64::MAX` is reported as such, not cut short.
#[derive(Default)]
pub(super) struct Acc {
    /// The balance after its last transaction.
    pub balance_credits: u64,
    pub granted_credits: u128,
    pub spent_credits: u128,
    pub refunded_credits: u128,
    pub adjusted_in_credits: u128,
    pub adjusted_out_credits: u128,
    pub txn_count: u128,
    pub last_txn: u64,
}

/// How a stored workspace record differs from what its transactions and running generations
/// add up to, one total per entry, in words: `granted: stored 1586, its transactions add up
/// to 1600 (14 more)`. Empty when they agree.
pub(super) fn totals_differences(
    stored: &WorkspaceRecord,
    acc: &Acc,
    running: (u64, u128),
) -> Vec<String> {
    let rows: [(&str, u128, u128, &str); 8] = [
        (
            "balance",
            stored.balance_credits.into(),
            acc.balance_credits.into(),
            "its last transaction leaves",
        ),
        (
            "granted",
            stored.granted_credits.into(),
            acc.granted_credits,
            "its transactions add up to",
        ),
        (
            "spent",
            stored.spent_credits.into(),
            acc.spent_credits,
            "its transactions add up to",
        ),
        (
            "refunded",
            stored.refunded_credits.into(),
            acc.refunded_credits,
            "its transactions add up to",
        ),
        (
            "adjusted in",
            stored.adjusted_in_credits.into(),
            acc.adjusted_in_credits,
            "its transactions add up to",
        ),
        (
            "adjusted out",
            stored.adjusted_out_credits.into(),
            acc.adjusted_out_credits,
            "its transactions add up to",
        ),
        (
            "transaction count",
            stored.txn_count.into(),
            acc.txn_count,
            "the log holds",
        ),
        (
            "held credits",
            stored.held_credits.into(),
            running.1,
            "its running generations cost",
        ),
    ];
    let mut out: Vec<String> = rows
        .iter()
        .filter(|(_, s, e, _)| s != e)
        .map(|(what, s, e, source)| {
            let by = if e > s {
                format!("{} more", e - s)
            } else {
                format!("{} less", s - e)
            };
            format!("{what}: stored {s}, {source} {e} ({by})")
        })
        .collect();
    if stored.running_generations != running.0 {
        out.push(format!(
            "running generations: stored {}, {} are running",
            stored.running_generations, running.0
        ));
    }
    out
}

/// Add a transaction to its workspace's sums and check it against the balance the
/// workspace stood at: the per-workspace half of the check of a log entry, run in the pass
/// of the audit that checks its workspace's page.
pub(super) fn accumulate(
    report: &mut AuditReport,
    accs: &mut HashMap<String, Acc>,
    rec: &TxnRecord,
) {
    let id = rec.id;
    let ws = rec.workspace.as_str();
    let acc = accs.entry(rec.workspace.clone()).or_default();
    if rec.balance_before_credits != acc.balance_credits {
        report.add(
            Invariant::BalanceChain,
            format!(
                "#{id} starts from {} credits, but the workspace stood at {} after #{}",
                rec.balance_before_credits, acc.balance_credits, acc.last_txn
            ),
            vec![acc.last_txn, id],
            None,
            Some(ws),
        );
    }
    let after = i128::from(rec.balance_before_credits) + rec.signed_amount();
    if after != i128::from(rec.balance_after_credits) {
        report.add(
            Invariant::BalanceArithmetic,
            format!(
                "#{id}: {} {:+} != {}",
                rec.balance_before_credits,
                rec.signed_amount(),
                rec.balance_after_credits
            ),
            vec![id],
            None,
            Some(ws),
        );
    }
    let a = rec.amount_credits;
    let r = &mut *acc;
    r.balance_credits = rec.balance_after_credits;
    r.txn_count += 1;
    let total = match (rec.kind, rec.debit) {
        (TxnKind::Purchase | TxnKind::Grant, _) => Some(&mut r.granted_credits),
        (TxnKind::Usage, _) => Some(&mut r.spent_credits),
        (TxnKind::Refund, _) => Some(&mut r.refunded_credits),
        (TxnKind::Adjustment, false) => Some(&mut r.adjusted_in_credits),
        (TxnKind::Adjustment, true) => Some(&mut r.adjusted_out_credits),
        // A notification moves nothing; what expired or was voided is kept in the grant
        // book, beside the workspace record, and checked with the grants.
        (TxnKind::BalanceLow | TxnKind::GrantExpiring | TxnKind::Expiration | TxnKind::Void, _) => {
            None
        }
    };
    if let Some(total) = total {
        *total += u128::from(a);
    }
    if rec.kind.is_notification() {
        // A notification moves nothing; a balance alert says a balance was below its
        // threshold (a grant notice is checked against its grant with the grants).
        let below = rec.kind == TxnKind::GrantExpiring
            || rec
                .alert_threshold()
                .is_some_and(|t| rec.balance_after_credits < t);
        if a != 0 || rec.debit || !below {
            report.add(
                Invariant::BalanceArithmetic,
                format!(
                    "#{id}: a {} notification must move 0 credits (and a balance alert show a balance below its threshold): amount {a}, balance {}, threshold {:?}",
                    rec.kind,
                    rec.balance_after_credits,
                    rec.memo
                ),
                vec![id],
                None,
                Some(ws),
            );
        }
    }
    acc.last_txn = id;
}

/// Check a log entry's links: its idempotency key, its generation and its history entry. The
/// half of the check that needs no state per workspace, run once, in the first pass.
pub(super) fn check_txn(
    report: &mut AuditReport,
    links: &mut Links,
    rec: &TxnRecord,
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
    idem: &impl ReadableTable<&'static str, u64>,
    history: &HistoryIndex<'_, impl ReadableTable<(&'static str, u8, u64), ()>>,
) -> Result<(), Error> {
    let id = rec.id;
    let ws = rec.workspace.as_str();
    if let Some(key) = &rec.idempotency_key {
        if idem.get(key.as_str())?.map(|v| v.value()) == Some(id) {
            links.keyed += 1;
        } else {
            report.add(
                Invariant::IdempotencyIndex,
                format!("#{id} carries key `{key}`, which does not point back at it"),
                vec![id],
                None,
                Some(ws),
            );
        }
    }

    let state = match rec.kind {
        TxnKind::Usage | TxnKind::Refund => check_generation_link(report, links, rec, gens)?,
        _ => None,
    };
    // Only a Usage's entries depend on its generation's state: its marker, and before
    // schema 4 its one entry, which an unreadable generation leaves unknown.
    let usage_state = state.filter(|_| rec.kind == TxnKind::Usage);
    if rec.kind == TxnKind::Usage
        && usage_state.is_none()
        && history.schema < tables::HISTORY_MARKERS_SCHEMA
    {
        return Ok(());
    }
    let (cat, marker) = tables::history_entries(history.schema, rec.kind, usage_state);
    for cat in std::iter::once(cat).chain(marker) {
        links.history_entries += 1;
        if history.table.get((ws, cat as u8, id))?.is_none() {
            report.add(
                Invariant::HistoryIndex,
                format!("#{id} has no history entry ({ws}, {}, #{id})", cat as u8),
                vec![id],
                None,
                Some(ws),
            );
        }
    }
    Ok(())
}

/// Check a Usage or Refund against its generation; count it in `links` when the generation
/// names it back. Returns the generation's state when the generation could be read.
fn check_generation_link(
    report: &mut AuditReport,
    links: &mut Links,
    rec: &TxnRecord,
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<GenState>, Error> {
    let (id, ws, a) = (rec.id, rec.workspace.as_str(), rec.amount_credits);
    let gen_id = rec.generation_id.as_deref().unwrap_or("");
    let gen = match tables::get_generation(gens, gen_id) {
        Ok(g) => g,
        Err(_) => return Ok(None), // reported by the generations pass
    };
    let link = if rec.kind == TxnKind::Usage {
        Invariant::UsageLink
    } else {
        Invariant::RefundLink
    };
    let Some(g) = gen else {
        report.add(
            link,
            format!("#{id} names generation `{gen_id}`, which does not exist"),
            vec![id],
            Some(gen_id),
            Some(ws),
        );
        return Ok(None);
    };
    if g.cost_credits != a || g.workspace != rec.workspace {
        report.add(
            link,
            format!(
                "#{id} moves {a} credits in `{ws}`, but the generation costs {} in `{}`",
                g.cost_credits, g.workspace
            ),
            vec![id, g.usage_txn],
            Some(gen_id),
            Some(ws),
        );
    }
    if rec.kind == TxnKind::Usage {
        if g.usage_txn == id {
            links.usages += 1;
        } else {
            report.add(
                link,
                format!(
                    "#{id} charges generation `{gen_id}`, whose Usage is #{}",
                    g.usage_txn
                ),
                vec![id, g.usage_txn],
                Some(gen_id),
                Some(ws),
            );
        }
        return Ok(Some(g.state));
    }
    if rec.refund.as_ref().map(|d| d.usage_txn) != Some(g.usage_txn) {
        report.add(
            link,
            format!(
                "refund #{id} does not name Usage #{} it reverses",
                g.usage_txn
            ),
            vec![id, g.usage_txn],
            Some(gen_id),
            Some(ws),
        );
    }
    match g.state {
        GenState::Refunded { refund_txn, .. } if refund_txn == id => links.refunds += 1,
        GenState::Refunded { refund_txn, .. } => report.add(
            Invariant::DuplicateRefund,
            format!("generation `{gen_id}` was refunded by #{refund_txn} and again by #{id}"),
            vec![refund_txn, id],
            Some(gen_id),
            Some(ws),
        ),
        GenState::Succeeded { .. } => report.add(
            Invariant::RefundOfSucceeded,
            format!("generation `{gen_id}` succeeded, yet #{id} refunds it"),
            vec![g.usage_txn, id],
            Some(gen_id),
            Some(ws),
        ),
        GenState::Running => report.add(
            Invariant::RefundLink,
            format!("generation `{gen_id}` is still running, yet #{id} refunds it"),
            vec![g.usage_txn, id],
            Some(gen_id),
            Some(ws),
        ),
    }
    Ok(Some(g.state))
}

/// The generation's own links: its Usage exists, and a refunded one has its Refund. Run only
/// when the counts of step 2 disagree, to name the generations involved.
pub(super) fn check_generation(
    report: &mut AuditReport,
    g: &GenerationRecord,
    txns: &impl ReadableTable<u64, &'static [u8]>,
) {
    let is = |id: u64, kind: TxnKind| {
        matches!(
            tables::get_txn(txns, id),
            Ok(Some(ref r)) if r.kind == kind && r.generation_id.as_deref() == Some(g.id.as_str())
        )
    };
    if !is(g.usage_txn, TxnKind::Usage) {
        report.add(
            Invariant::UsageLink,
            format!("Usage #{} of generation `{}` is missing", g.usage_txn, g.id),
            vec![g.usage_txn],
            Some(&g.id),
            Some(&g.workspace),
        );
    }
    if let GenState::Refunded { refund_txn, .. } = g.state {
        if !is(refund_txn, TxnKind::Refund) {
            report.add(
                Invariant::RefundLink,
                format!(
                    "generation `{}` is refunded, but its Refund #{refund_txn} is missing",
                    g.id
                ),
                vec![refund_txn],
                Some(&g.id),
                Some(&g.workspace),
            );
        }
    }
}

/// Name the deadline entries that do not belong to a running generation with that deadline.
/// Run only when there are more entries than running generations.
pub(super) fn check_deadlines(
    report: &mut AuditReport,
    deadlines: &impl ReadableTable<(u64, &'static str), ()>,
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(), Error> {
    for entry in deadlines.iter()? {
        let (k, _) = entry?;
        let (deadline_ms, gen_id) = k.value();
        let ok = matches!(
            tables::get_generation(gens, gen_id),
            Ok(Some(ref g)) if g.state == GenState::Running && g.deadline_ms == deadline_ms
        );
        if !ok {
            report.add(
                Invariant::DeadlineIndex,
                format!("deadline entry ({deadline_ms}, `{gen_id}`) names no running generation with that deadline"),
                vec![],
                Some(gen_id),
                None,
            );
        }
    }
    Ok(())
}

/// Name the history entries that do not file an existing transaction of that workspace under
/// a category it belongs in. Run only when the entry count differs from the count the log
/// needs (`expected`).
pub(super) fn check_history(
    report: &mut AuditReport,
    index: &HistoryIndex<'_, impl ReadableTable<(&'static str, u8, u64), ()>>,
    txns: &impl ReadableTable<u64, &'static [u8]>,
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
    expected: u64,
) -> Result<(), Error> {
    for entry in index.table.iter()? {
        let (k, _) = entry?;
        let (ws, cat, id) = k.value();
        let Ok(Some(rec)) = tables::get_txn(txns, id) else {
            report.add(
                Invariant::HistoryIndex,
                format!("history entry ({ws}, {cat}, #{id}) points at no readable transaction"),
                vec![id],
                None,
                Some(ws),
            );
            continue;
        };
        let state = match rec.kind {
            TxnKind::Usage => {
                match tables::get_generation(gens, rec.generation_id.as_deref().unwrap_or("")) {
                    Ok(Some(g)) => Some(g.state),
                    _ => continue, // the missing generation is reported elsewhere
                }
            }
            _ => None,
        };
        let (expected, marker) = tables::history_entries(index.schema, rec.kind, state);
        let found = Category::from_u8(cat);
        if rec.workspace != ws || (found != Some(expected) && found != marker) {
            report.add(
                Invariant::HistoryIndex,
                format!(
                    "history entry ({ws}, {cat}, #{id}) should be ({}, {}, #{id})",
                    rec.workspace, expected as u8
                ),
                vec![id],
                None,
                Some(ws),
            );
        }
    }
    let entries = index.table.len()?;
    if entries != expected {
        report.add(
            Invariant::HistoryIndex,
            format!(
                "{entries} history entries where the transactions and refunded generations need {expected}"
            ),
            vec![],
            None,
            None,
        );
    }
    Ok(())
}
