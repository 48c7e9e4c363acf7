//! Reads: balances, generations, transactions, history pages and stats. Each read runs in
//! one redb read transaction, a consistent snapshot that never blocks writers.

pub(crate) mod changes;
pub(crate) mod grants;
pub(crate) mod history;
pub(crate) mod stats;
mod views;

use redb::{ReadTransaction, ReadableTable};

pub use changes::ChangePage;
pub use grants::{BalanceSplit, ExpiryNotice, GrantState, GrantView};
pub use history::{HistoryFilter, HistoryPage, PageRequest};
pub use stats::{FeatureStats, ReasonStats, Stats, TimeWindow};
pub use views::{
    format_duration_ms, GenerationState, GenerationView, LedgerTotals, TransactionView,
    WorkspaceSummary,
};

use crate::error::Error;
use crate::model::records::{AllocationEntry, GenerationRecord, TxnRecord, WorkspaceRecord};
use crate::model::TxnKind;
use crate::storage::codec;
use crate::storage::tables;

fn summary_of(
    rtx: &ReadTransaction,
    workspace: &str,
    rec: &WorkspaceRecord,
    now_ms: u64,
) -> Result<WorkspaceSummary, Error> {
    let split = grants::split(rtx, workspace, rec.balance_credits, now_ms)?;
    let lost = grants::book_totals(rtx, workspace)?;
    Ok(WorkspaceSummary::new(workspace, rec, split, lost))
}

pub(crate) fn workspace_summary(
    rtx: &ReadTransaction,
    workspace: &str,
    now_ms: u64,
) -> Result<WorkspaceSummary, Error> {
    let t = rtx.open_table(tables::WORKSPACES)?;
    let rec = tables::get_workspace(&t, workspace)?.ok_or_else(|| Error::UnknownWorkspace {
        workspace: workspace.to_string(),
    })?;
    summary_of(rtx, workspace, &rec, now_ms)
}

pub(crate) fn list_workspaces(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: u32,
    now_ms: u64,
) -> Result<Vec<WorkspaceSummary>, Error> {
    use std::ops::Bound;
    let t = rtx.open_table(tables::WORKSPACES)?;
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for entry in t.range::<&str>((lower, Bound::Unbounded))? {
        let (k, v) = entry?;
        let rec: WorkspaceRecord = codec::decode("workspaces", &k.value(), v.value())?;
        out.push(summary_of(rtx, k.value(), &rec, now_ms)?);
        if out.len() >= limit as usize {
            break;
        }
    }
    Ok(out)
}

pub(crate) fn totals(rtx: &ReadTransaction) -> Result<LedgerTotals, Error> {
    let t = rtx.open_table(tables::WORKSPACES)?;
    let mut s = LedgerTotals::default();
    for entry in t.iter()? {
        let (k, v) = entry?;
        let r: WorkspaceRecord = codec::decode("workspaces", &k.value(), v.value())?;
        s.workspaces += 1;
        s.balance_credits += u128::from(r.balance_credits);
        s.granted_credits += u128::from(r.granted_credits);
        s.spent_credits += u128::from(r.spent_credits);
        s.refunded_credits += u128::from(r.refunded_credits);
        s.adjusted_in_credits += u128::from(r.adjusted_in_credits);
        s.adjusted_out_credits += u128::from(r.adjusted_out_credits);
        // Each running generation has its own Usage transaction, so on a healthy file the sum
        // fits a u64 (ids do); a sum past it means damaged records, not a number to cut short.
        s.running_generations = s
            .running_generations
            .checked_add(r.running_generations)
            .ok_or_else(|| Error::Corruption {
                table: "workspaces",
                key: k.value().to_string(),
                detail: "the running-generation counts of all workspaces add up past u64::MAX"
                    .into(),
            })?;
    }
    if let Some(books) = tables::open_optional(rtx, tables::GRANT_BOOKS)? {
        for entry in books.iter()? {
            let (k, v) = entry?;
            let b: crate::model::records::GrantBook =
                codec::decode("grant_books", &k.value(), v.value())?;
            s.expired_credits += u128::from(b.expired_credits);
            s.voided_credits += u128::from(b.voided_credits);
        }
    }
    Ok(s)
}

pub(crate) fn generation_view(
    rtx: &ReadTransaction,
    generation_id: &str,
    now_ms: u64,
) -> Result<GenerationView, Error> {
    let t = rtx.open_table(tables::GENERATIONS)?;
    let g = tables::get_generation(&t, generation_id)?.ok_or_else(|| Error::UnknownGeneration {
        generation: generation_id.to_string(),
    })?;
    Ok(GenerationView::new(&g, now_ms))
}

/// Build the view of a stored transaction, looking up its generation for a Usage and the
/// grant lots it moved for a Usage, Refund, Expiration, Void or negative Adjustment (and the
/// grant a `GrantExpiring` notice is about).
pub(crate) fn view_of(
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
    allocs: Option<&impl ReadableTable<u64, &'static [u8]>>,
    rec: TxnRecord,
) -> Result<TransactionView, Error> {
    let gen = match (&rec.generation_id, rec.kind) {
        (Some(g), TxnKind::Usage) => tables::get_generation(gens, g)?,
        _ => None,
    };
    view_with(gens, gen.as_ref(), allocs, rec)
}

/// [`view_of`] with the Usage's generation already read (`None` for other kinds).
pub(crate) fn view_with(
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
    gen: Option<&GenerationRecord>,
    allocs: Option<&impl ReadableTable<u64, &'static [u8]>>,
    mut rec: TxnRecord,
) -> Result<TransactionView, Error> {
    let entries = if let Some(lots) = rec.refund_lots.take() {
        // Schema 6 on: the Refund's record says which lots it gave back.
        Some(lots)
    } else if rec.kind == TxnKind::Refund {
        Some(tables::refund_allocations(allocs, gens, &rec)?)
    } else if rec.debit || rec.kind == TxnKind::GrantExpiring {
        tables::get_allocations_of(allocs, gen, rec.id)?
    } else {
        None
    };
    Ok(view_from(rec, gen, entries.as_deref().unwrap_or_default()))
}

/// The view of `rec` with its generation (`gen`, for a Usage) and the grant lots it moved.
pub(crate) fn view_from(
    rec: TxnRecord,
    gen: Option<&GenerationRecord>,
    entries: &[AllocationEntry],
) -> TransactionView {
    let allocations: Vec<crate::model::Allocation> =
        entries.iter().map(AllocationEntry::public).collect();
    let mut view = TransactionView::new(rec, gen);
    if let (TxnKind::GrantExpiring, [a]) = (view.kind, allocations.as_slice()) {
        let n = a.credits;
        view.action = format!(
            "{n} {} of {} expire unless spent",
            if n == 1 { "credit" } else { "credits" },
            view.title
        );
    }
    view.allocations = allocations;
    view
}

pub(crate) fn transaction_view(
    rtx: &ReadTransaction,
    txn_id: u64,
) -> Result<TransactionView, Error> {
    let txns = rtx.open_table(tables::TRANSACTIONS)?;
    let rec = tables::get_txn(&txns, txn_id)?.ok_or(Error::UnknownTransaction { txn_id })?;
    let mut view = view_of(
        &rtx.open_table(tables::GENERATIONS)?,
        tables::open_optional(rtx, tables::ALLOCATIONS)?.as_ref(),
        rec,
    )?;
    add_clock_notes(rtx, std::slice::from_mut(&mut view))?;
    Ok(view)
}

/// Fill in [`TransactionView::untrusted_clock_ms`] for the Refunds among `views`. Most files
/// have no such note, and no `clock_notes` table: then this costs one table lookup.
pub(crate) fn add_clock_notes(
    rtx: &ReadTransaction,
    views: &mut [TransactionView],
) -> Result<(), Error> {
    let notes = match rtx.open_table(tables::CLOCK_NOTES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for v in views.iter_mut().filter(|v| v.kind == TxnKind::Refund) {
        v.untrusted_clock_ms = notes.get(v.id)?.map(|n| n.value());
    }
    Ok(())
}

/// The smallest transaction id whose timestamp is at least `at_ms`, or `last + 1` when none
/// is. Ids are dense and timestamps never decrease along them, so this is a binary search of
/// O(log n) point reads rather than a scan.
pub(crate) fn first_id_at_or_after(
    txns: &impl ReadableTable<u64, &'static [u8]>,
    at_ms: u64,
) -> Result<u64, Error> {
    let last = txns.last()?.map_or(0, |(k, _)| k.value());
    let (mut lo, mut hi) = (1u64, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let rec = tables::get_txn(txns, mid)?.ok_or_else(|| Error::Corruption {
            table: "transactions",
            key: mid.to_string(),
            detail: "missing: transaction ids must be dense".into(),
        })?;
        if rec.at_ms >= at_ms {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// The inclusive id range of transactions stamped within `[since_ms, until_ms]`.
pub(crate) fn id_range(
    txns: &impl ReadableTable<u64, &'static [u8]>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
) -> Result<(u64, u64), Error> {
    let lo = match since_ms {
        Some(t) => first_id_at_or_after(txns, t)?,
        None => 1,
    };
    let hi = match until_ms {
        Some(u64::MAX) | None => u64::MAX,
        Some(t) => first_id_at_or_after(txns, t + 1)?.saturating_sub(1),
    };
    Ok((lo, hi))
}
