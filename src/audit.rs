//! `verify()`: check every invariant of the stored ledger and name what is broken.
//!
//! The audit reads the whole file in one snapshot. It never stops at the first problem and
//! never panics on damage: a record that fails its checksum becomes a violation like any
//! other, and the audit goes on. Its memory is one accumulator per workspace.
//!
//! Each table is read once in key order. A link is checked from one side only, by a point
//! lookup, and counted; the other side is then proved by comparing counts (every Usage points
//! at a distinct generation that points back, and there are as many Usages as generations, so
//! every generation has its Usage). Only when a count disagrees does the audit run the
//! slower, reverse pass that names the ids involved. A healthy ledger thus costs about one
//! random lookup per transaction instead of five.

use std::collections::HashMap;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};
use serde::Serialize;

use crate::error::Error;
use crate::model::limits::MAX_REPORTED_VIOLATIONS;
use crate::model::records::{GenState, GenerationRecord, TxnRecord, WorkspaceRecord};
use crate::model::TxnKind;
use crate::storage::codec;
use crate::storage::tables::{self, usage_category, Category};

/// Which invariant a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Invariant {
    /// A record fails its checksum or cannot be decoded.
    Corruption,
    /// A transaction's `prev_crc` does not match the record before it: an entry was changed,
    /// removed or reordered.
    ChainBroken,
    /// Transaction ids are not 1, 2, 3... without gaps.
    IdsNotDense,
    /// A timestamp is earlier than the one before it.
    TimeWentBackwards,
    /// A transaction's balance after is not its balance before plus its amount.
    BalanceArithmetic,
    /// A transaction's balance before is not the workspace's balance after the previous one.
    BalanceChain,
    /// A workspace record disagrees with the sum of its transactions.
    WorkspaceTotals,
    /// A Usage and its generation disagree (missing, other cost, other workspace).
    UsageLink,
    /// A Refund and its generation disagree (missing, other amount, not the named refund).
    RefundLink,
    /// A generation has more than one Refund.
    DuplicateRefund,
    /// A generation that succeeded has a Refund.
    RefundOfSucceeded,
    /// The deadline index and the set of running generations differ.
    DeadlineIndex,
    /// The history index and the transaction log differ.
    HistoryIndex,
    /// The idempotency index and the transactions differ.
    IdempotencyIndex,
}

/// One broken invariant, with the ids involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// What is broken.
    pub invariant: Invariant,
    /// What was found, in words.
    pub detail: String,
    /// Transactions involved.
    pub txn_ids: Vec<u64>,
    /// The generation involved, if any.
    pub generation: Option<String>,
    /// The workspace involved, if any.
    pub workspace: Option<String>,
}

/// How much the audit looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditCounts {
    /// Transactions read.
    pub transactions: u64,
    /// Workspaces read.
    pub workspaces: u64,
    /// Generations read.
    pub generations: u64,
    /// Running generations.
    pub running: u64,
    /// Deadline index entries.
    pub deadlines: u64,
    /// History index entries.
    pub history_entries: u64,
    /// Idempotency keys.
    pub idempotency_keys: u64,
}

/// The result of [`Ledger::verify`](crate::Ledger::verify).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// The violations found, at most [`MAX_REPORTED_VIOLATIONS`].
    pub violations: Vec<Violation>,
    /// All violations found, including those not listed.
    pub violation_count: u64,
    /// What was checked.
    pub checked: AuditCounts,
}

impl AuditReport {
    /// True when no invariant is broken.
    pub fn is_clean(&self) -> bool {
        self.violation_count == 0
    }

    fn add(
        &mut self,
        invariant: Invariant,
        detail: String,
        txn_ids: Vec<u64>,
        generation: Option<&str>,
        workspace: Option<&str>,
    ) {
        self.violation_count += 1;
        if self.violations.len() < MAX_REPORTED_VIOLATIONS {
            self.violations.push(Violation {
                invariant,
                detail,
                txn_ids,
                generation: generation.map(str::to_string),
                workspace: workspace.map(str::to_string),
            });
        }
    }
}

/// Links proved from the log's side, to be matched against counts of the other side.
#[derive(Default)]
struct Links {
    /// Usages whose generation names them as its Usage.
    usages: u64,
    /// Refunds whose generation names them as its Refund.
    refunds: u64,
    /// Transactions carrying an idempotency key that points back at them.
    keyed: u64,
}

/// A workspace's sums, recomputed from its transactions.
#[derive(Default)]
struct Acc {
    rec: WorkspaceRecord,
    last_txn: u64,
}

pub(crate) fn verify(rtx: &ReadTransaction) -> Result<AuditReport, Error> {
    let mut report = AuditReport::default();
    let txns = rtx.open_table(tables::TRANSACTIONS)?;
    let gens = rtx.open_table(tables::GENERATIONS)?;
    let workspaces = rtx.open_table(tables::WORKSPACES)?;
    let idem = rtx.open_table(tables::IDEMPOTENCY)?;
    let history = rtx.open_table(tables::HISTORY)?;
    let deadlines = rtx.open_table(tables::DEADLINES)?;
    let mut accs: HashMap<String, Acc> = HashMap::new();
    let mut links = Links::default();

    // 1. The log: checksums, the chain, dense ids, monotonic time, balance arithmetic, the
    //    links from each Usage and Refund to its generation, and each entry's history and
    //    idempotency index entries.
    let (mut prev_id, mut prev_crc, mut prev_at) = (0u64, 0u32, 0u64);
    for entry in txns.iter()? {
        let (k, v) = entry?;
        let id = k.value();
        report.checked.transactions += 1;
        if id != prev_id + 1 {
            report.add(
                Invariant::IdsNotDense,
                format!("transaction #{id} follows #{prev_id}"),
                vec![prev_id, id],
                None,
                None,
            );
        }
        let this_crc = codec::record_crc(v.value());
        let mut rec: TxnRecord = match codec::decode("transactions", &id, v.value()) {
            Ok(r) => r,
            Err(e) => {
                report.add(Invariant::Corruption, e.to_string(), vec![id], None, None);
                (prev_id, prev_crc) = (id, this_crc);
                continue;
            }
        };
        if rec.id != id {
            report.add(
                Invariant::IdsNotDense,
                format!("record stored at #{id} says it is #{}", rec.id),
                vec![id, rec.id],
                None,
                None,
            );
            // Check the links of the entry where it is stored: a copied record must not pass
            // for the original.
            rec.id = id;
        }
        if rec.prev_crc != prev_crc {
            report.add(
                Invariant::ChainBroken,
                format!(
                    "#{id} links to checksum {:08x}, but #{prev_id} has {prev_crc:08x}",
                    rec.prev_crc
                ),
                vec![prev_id, id],
                None,
                Some(&rec.workspace),
            );
        }
        if rec.at_ms < prev_at {
            report.add(
                Invariant::TimeWentBackwards,
                format!(
                    "#{id} at {} ms is before #{prev_id} at {prev_at} ms",
                    rec.at_ms
                ),
                vec![prev_id, id],
                None,
                None,
            );
        }
        (prev_id, prev_crc, prev_at) = (id, this_crc, rec.at_ms.max(prev_at));
        check_txn(
            &mut report,
            &mut accs,
            &mut links,
            &rec,
            &gens,
            &idem,
            &history,
        )?;
    }

    // 2. Generations: running ones have their deadline entry; count what the log must match.
    let mut running_by_ws: HashMap<String, (u64, u64)> = HashMap::new();
    let mut refunded = 0u64;
    for entry in gens.iter()? {
        let (k, v) = entry?;
        report.checked.generations += 1;
        let id = k.value();
        let g: GenerationRecord = match codec::decode("generations", &id, v.value()) {
            Ok(g) => g,
            Err(e) => {
                report.add(Invariant::Corruption, e.to_string(), vec![], Some(id), None);
                continue;
            }
        };
        match g.state {
            GenState::Running => {
                report.checked.running += 1;
                let r = running_by_ws.entry(g.workspace.clone()).or_default();
                r.0 += 1;
                r.1 = r.1.saturating_add(g.cost_credits);
                if deadlines.get((g.deadline_ms, g.id.as_str()))?.is_none() {
                    report.add(
                        Invariant::DeadlineIndex,
                        format!("running generation `{}` has no deadline entry", g.id),
                        vec![g.usage_txn],
                        Some(&g.id),
                        Some(&g.workspace),
                    );
                }
            }
            GenState::Refunded { .. } => refunded += 1,
            GenState::Succeeded { .. } => {}
        }
    }
    if links.usages != report.checked.generations || links.refunds != refunded {
        // Some generation lacks its Usage or its Refund: find which.
        for entry in gens.iter()? {
            let (k, v) = entry?;
            if let Ok(g) = codec::decode::<GenerationRecord>("generations", &k.value(), v.value()) {
                check_generation(&mut report, &g, &txns);
            }
        }
    }

    // 3. Workspace records against the sums of their transactions.
    for entry in workspaces.iter()? {
        let (k, v) = entry?;
        report.checked.workspaces += 1;
        let ws = k.value();
        let stored: WorkspaceRecord = match codec::decode("workspaces", &ws, v.value()) {
            Ok(r) => r,
            Err(e) => {
                report.add(Invariant::Corruption, e.to_string(), vec![], None, Some(ws));
                accs.remove(ws);
                continue;
            }
        };
        let Some(acc) = accs.remove(ws) else {
            report.add(
                Invariant::WorkspaceTotals,
                "workspace record with no transactions".into(),
                vec![],
                None,
                Some(ws),
            );
            continue;
        };
        let mut expected = acc.rec;
        expected.created_at_ms = stored.created_at_ms;
        (expected.running_generations, expected.held_credits) =
            running_by_ws.remove(ws).unwrap_or((0, 0));
        if stored != expected {
            report.add(
                Invariant::WorkspaceTotals,
                format!("stored {stored:?}, but its transactions add up to {expected:?}"),
                vec![acc.last_txn],
                None,
                Some(ws),
            );
        }
    }
    for (ws, acc) in accs {
        report.add(
            Invariant::WorkspaceTotals,
            "transactions for a workspace with no record".into(),
            vec![acc.last_txn],
            None,
            Some(&ws),
        );
    }

    // 4. The indexes hold nothing else: counts first, the naming pass only on a mismatch.
    report.checked.deadlines = deadlines.len()?;
    if report.checked.deadlines != report.checked.running {
        check_deadlines(&mut report, &deadlines, &gens)?;
    }
    report.checked.history_entries = history.len()?;
    if report.checked.history_entries != report.checked.transactions {
        check_history(&mut report, &history, &txns, &gens)?;
    }
    report.checked.idempotency_keys = idem.len()?;
    if report.checked.idempotency_keys != links.keyed {
        for entry in idem.iter()? {
            let (k, v) = entry?;
            let (key, id) = (k.value(), v.value());
            let ok = matches!(
                tables::get_txn(&txns, id),
                Ok(Some(ref r)) if r.idempotency_key.as_deref() == Some(key)
            );
            if !ok {
                report.add(
                    Invariant::IdempotencyIndex,
                    format!("key `{key}` points at #{id}, which does not carry it"),
                    vec![id],
                    None,
                    None,
                );
            }
        }
    }
    Ok(report)
}

fn check_txn(
    report: &mut AuditReport,
    accs: &mut HashMap<String, Acc>,
    links: &mut Links,
    rec: &TxnRecord,
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
    idem: &impl ReadableTable<&'static str, u64>,
    history: &impl ReadableTable<(&'static str, u8, u64), ()>,
) -> Result<(), Error> {
    let id = rec.id;
    let ws = rec.workspace.as_str();
    let acc = accs.entry(rec.workspace.clone()).or_default();
    if rec.balance_before_credits != acc.rec.balance_credits {
        report.add(
            Invariant::BalanceChain,
            format!(
                "#{id} starts from {} credits, but the workspace stood at {} after #{}",
                rec.balance_before_credits, acc.rec.balance_credits, acc.last_txn
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
    let r = &mut acc.rec;
    r.balance_credits = rec.balance_after_credits;
    r.txn_count = r.txn_count.saturating_add(1);
    let total = match (rec.kind, rec.debit) {
        (TxnKind::Purchase | TxnKind::Grant, _) => &mut r.granted_credits,
        (TxnKind::Usage, _) => &mut r.spent_credits,
        (TxnKind::Refund, _) => &mut r.refunded_credits,
        (TxnKind::Adjustment, false) => &mut r.adjusted_in_credits,
        (TxnKind::Adjustment, true) => &mut r.adjusted_out_credits,
    };
    *total = total.saturating_add(a);
    acc.last_txn = id;

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

    let category = match rec.kind {
        TxnKind::Usage => check_generation_link(report, links, rec, gens)?.map(usage_category),
        TxnKind::Refund => {
            check_generation_link(report, links, rec, gens)?;
            Some(Category::Refund)
        }
        kind => Some(Category::of(kind, crate::model::Status::Completed)),
    };
    if let Some(cat) = category {
        if history.get((ws, cat as u8, id))?.is_none() {
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
fn check_generation(
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
fn check_deadlines(
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
/// its right category. Run only when the entry count differs from the transaction count.
fn check_history(
    report: &mut AuditReport,
    index: &impl ReadableTable<(&'static str, u8, u64), ()>,
    txns: &impl ReadableTable<u64, &'static [u8]>,
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(), Error> {
    for entry in index.iter()? {
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
        let expected = match rec.kind {
            TxnKind::Usage => {
                match tables::get_generation(gens, rec.generation_id.as_deref().unwrap_or("")) {
                    Ok(Some(g)) => usage_category(g.state),
                    _ => continue, // the missing generation is reported elsewhere
                }
            }
            kind => Category::of(kind, crate::model::Status::Completed),
        };
        if rec.workspace != ws || Some(expected) != Category::from_u8(cat) {
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
    let (entries, logged) = (index.len()?, txns.len()?);
    if entries != logged {
        report.add(
            Invariant::HistoryIndex,
            format!("{entries} history entries for {logged} transactions"),
            vec![],
            None,
            None,
        );
    }
    Ok(())
}
