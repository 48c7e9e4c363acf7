//! The grant invariants of the audit. The log is replayed against the grant lots: every
//! credit creates its lot, every charge takes from lots (checked against the drawdown order
//! and the lots' spendability at its time), every refund gives its Usage's allocations back,
//! every Expiration and Void closes lots for exactly what they held. At the end the replayed
//! lots must equal the stored ones, each workspace's balance the sum of its lots, and the two
//! grant indexes the set of open lots. Memory: one entry per grant lot of the page of
//! workspaces the pass checks (see [`Page`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::{AuditReport, Invariant, Page};
use crate::engine::grants::carried_over_id;
use crate::error::Error;
use crate::model::records::{AllocationEntry, GrantBook, GrantRecord, TxnRecord};
use crate::model::TxnKind;
use crate::storage::{codec, tables};

type LotKey = (String, String, u32);

/// A lot as the replay of the log sees it.
#[derive(Debug, Clone)]
struct Sim {
    // Wide and signed, so the replay of a damaged log computes the exact figure (a negative
    // remaining, a sum past `u64::MAX`) and the comparison with the stored lot names it,
    // instead of saturating into a plausible number.
    remaining: i128,
    allocated: u128,
    returned: u128,
    closed: bool,
    priority: u32,
    effective: Option<u64>,
    expires: Option<u64>,
}

impl Sim {
    fn of(g: &GrantRecord, remaining: u64) -> Self {
        Sim {
            remaining: i128::from(remaining),
            allocated: 0,
            returned: 0,
            closed: false,
            priority: g.priority,
            effective: g.effective_at_ms,
            expires: g.expires_at_ms,
        }
    }
    fn spendable(&self, at: u64) -> bool {
        !self.closed
            && self.effective.is_none_or(|e| e <= at)
            && self.expires.is_none_or(|e| at < e)
    }
    fn order(&self, id: &str, lot: u32) -> (u32, u64, u64, String, u32) {
        (
            self.priority,
            self.expires.unwrap_or(u64::MAX),
            self.effective.unwrap_or(0),
            id.to_string(),
            lot,
        )
    }
}

/// The grant side of the audit, fed one transaction at a time.
pub(super) struct GrantAudit {
    /// In key order, so that a workspace's lots are one range (for the drawdown check) and the
    /// index lookups at the end go in the order of the file.
    stored: BTreeMap<LotKey, GrantRecord>,
    books: HashMap<String, GrantBook>,
    /// Carried-over lots by (workspace, the txn that created them).
    carried: HashMap<(String, u64), LotKey>,
    sim: BTreeMap<LotKey, Sim>,
    /// Expired and voided credits per workspace, from the log.
    lost: HashMap<String, (u128, u128)>,
    allocations: Option<redb::ReadOnlyTable<u64, &'static [u8]>>,
    /// A charge paid by one lot, and its refund to that lot, keep the allocation in the
    /// generation record instead of `allocations`.
    generations: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    /// The grants (workspace, grant id) a `GrantExpiring` notice was written for.
    noticed: HashSet<(String, String)>,
    /// The workspaces this audit of the grants checks.
    page: Page,
    pub lots: u64,
}

/// What the lots of one page add up to, for the checks of the grant indexes' sizes, which
/// need every page.
#[derive(Default)]
pub(super) struct OpenLots {
    with_credits: u64,
    with_expiry: u64,
}

fn key_of(ws: &str, e: &AllocationEntry) -> LotKey {
    (ws.to_string(), e.grant_id.clone(), e.lot)
}

impl GrantAudit {
    /// The stored lots and grant books of the workspaces in `page`.
    pub fn load(
        rtx: &ReadTransaction,
        report: &mut AuditReport,
        page: &Page,
    ) -> Result<Self, Error> {
        let mut stored = BTreeMap::new();
        let mut carried = HashMap::new();
        if let Some(t) = tables::open_optional(rtx, tables::GRANTS)? {
            let from = page.after.as_deref().unwrap_or("");
            for entry in t.range((from, "", 0u32)..)? {
                let (k, v) = entry?;
                let (ws, id, lot) = k.value();
                if page.is_past(ws) {
                    break;
                }
                if !page.contains(ws) {
                    continue;
                }
                let key = format!("({ws}, {id}, {lot})");
                match codec::decode::<GrantRecord>("grants", &key, v.value()) {
                    Ok(g) => {
                        if id == carried_over_id() {
                            carried.insert(
                                (ws.to_string(), g.source_txn),
                                (ws.to_string(), id.to_string(), lot),
                            );
                        }
                        stored.insert((ws.to_string(), id.to_string(), lot), g);
                    }
                    Err(e) => {
                        report.add(Invariant::Corruption, e.to_string(), vec![], None, Some(ws))
                    }
                }
            }
        }
        let mut books = HashMap::new();
        if let Some(t) = tables::open_optional(rtx, tables::GRANT_BOOKS)? {
            let from = page
                .after
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Excluded);
            for entry in t.range::<&str>((from, Bound::Unbounded))? {
                let (k, v) = entry?;
                if page.is_past(k.value()) {
                    break;
                }
                match codec::decode::<GrantBook>("grant_books", &k.value(), v.value()) {
                    Ok(b) => {
                        books.insert(k.value().to_string(), b);
                    }
                    Err(e) => report.add(
                        Invariant::Corruption,
                        e.to_string(),
                        vec![],
                        None,
                        Some(k.value()),
                    ),
                }
            }
        }
        Ok(GrantAudit {
            lots: stored.len() as u64,
            stored,
            books,
            carried,
            sim: BTreeMap::new(),
            lost: HashMap::new(),
            noticed: HashSet::new(),
            page: page.clone(),
            allocations: tables::open_optional(rtx, tables::ALLOCATIONS)?,
            generations: rtx.open_table(tables::GENERATIONS)?,
        })
    }

    /// The allocations of transaction `txn_id` of `rec`'s generation (if it has one), wherever
    /// they are stored; a damaged record is reported.
    fn entries_of(
        &self,
        report: &mut AuditReport,
        rec: &TxnRecord,
        txn_id: u64,
    ) -> Option<Vec<AllocationEntry>> {
        let found = match rec.generation_id.as_deref() {
            Some(g) => tables::get_generation(&self.generations, g),
            None => Ok(None),
        }
        .and_then(|gen| {
            tables::get_allocations_of(self.allocations.as_ref(), gen.as_ref(), txn_id)
        });
        match found {
            Ok(a) => a,
            Err(e) => {
                report.add(
                    Invariant::Corruption,
                    e.to_string(),
                    vec![rec.id],
                    None,
                    Some(&rec.workspace),
                );
                None
            }
        }
    }

    /// Replay one transaction of the log.
    pub fn on_txn(&mut self, report: &mut AuditReport, rec: &TxnRecord) {
        let ws = rec.workspace.as_str();
        let Some(since) = self.books.get(ws).map(|b| b.since_txn) else {
            return; // a workspace from before grants that no write has touched since
        };
        if rec.id < since {
            return;
        }
        if let Some(k) = self.carried.get(&(ws.to_string(), rec.id)).cloned() {
            let g = &self.stored[&k];
            self.sim
                .entry(k)
                .or_insert_with(|| Sim::of(g, g.amount_credits));
        }
        let bad = |report: &mut AuditReport, inv, detail: String| flag(report, rec, inv, detail);
        match (rec.kind, rec.debit) {
            // A zero-credit Adjustment is an audit note (a journal discard): no grant.
            (TxnKind::Adjustment, false) if rec.amount_credits == 0 => {}
            (TxnKind::Purchase | TxnKind::Grant | TxnKind::Adjustment, false) => {
                let key = rec.idempotency_key.clone().unwrap_or_default();
                let k = (ws.to_string(), key.clone(), 0);
                match self.stored.get(&k) {
                    Some(g) if g.source_txn == rec.id && g.amount_credits == rec.amount_credits => {
                        let sim = Sim::of(g, g.amount_credits);
                        self.sim.insert(k, sim);
                    }
                    _ => bad(
                        report,
                        Invariant::GrantArithmetic,
                        format!(
                            "#{}: credit of {} has no grant `{key}` created by it",
                            rec.id, rec.amount_credits
                        ),
                    ),
                }
            }
            (TxnKind::Usage | TxnKind::Adjustment, _) => self.on_debit(report, rec),
            (TxnKind::Refund, _) => self.on_refund(report, rec),
            (TxnKind::Expiration | TxnKind::Void, _) => self.on_close(report, rec),
            (TxnKind::GrantExpiring, _) => self.on_notice(report, rec),
            _ => {}
        }
    }

    /// A `GrantExpiring` notice: the first for its grant, which was spendable then, with
    /// exactly the credits and the expiry it names.
    fn on_notice(&mut self, report: &mut AuditReport, rec: &TxnRecord) {
        let ws = rec.workspace.as_str();
        let mut bad = |detail: String| {
            report.add(Invariant::GrantNotice, detail, vec![rec.id], None, Some(ws));
        };
        let entries = match &self.allocations {
            Some(t) => tables::get_allocations(t, rec.id).ok().flatten(),
            None => None,
        };
        let Some(e) = entries.and_then(|a| match a.entries.as_slice() {
            [e] if e.lot == 0 => Some(e.clone()),
            _ => None,
        }) else {
            bad(format!("#{}: a grant notice that names no grant", rec.id));
            return;
        };
        if !self.noticed.insert((ws.to_string(), e.grant_id.clone())) {
            bad(format!(
                "#{}: a second notice for grant `{}`",
                rec.id, e.grant_id
            ));
        }
        match self.sim.get(&key_of(ws, &e)) {
            Some(s)
                if s.spendable(rec.at_ms)
                    && s.remaining > 0
                    && s.remaining == i128::from(e.credits)
                    && s.expires.is_some()
                    && s.expires == e.expires_at_ms => {}
            s => bad(format!(
                "#{}: says grant `{}` holds {} credits expiring at {:?}, but it held {:?}, expiring at {:?}, spendable then: {:?}",
                rec.id,
                e.grant_id,
                e.credits,
                e.expires_at_ms,
                s.map(|s| s.remaining),
                s.and_then(|s| s.expires),
                s.map(|s| s.spendable(rec.at_ms)),
            )),
        }
    }

    fn on_debit(&mut self, report: &mut AuditReport, rec: &TxnRecord) {
        let ws = rec.workspace.as_str();
        let bad = |report: &mut AuditReport, inv, detail: String| flag(report, rec, inv, detail);
        let Some(entries) = self.entries_of(report, rec, rec.id) else {
            bad(
                report,
                Invariant::AllocationSum,
                format!("#{}: a charge with no allocations", rec.id),
            );
            return;
        };
        let sum: u128 = entries.iter().map(|e| u128::from(e.credits)).sum();
        if sum != u128::from(rec.amount_credits) {
            bad(
                report,
                Invariant::AllocationSum,
                format!(
                    "#{}: allocations add up to {sum}, not its {} credits",
                    rec.id, rec.amount_credits
                ),
            );
        }
        let mut last_order = None;
        for (i, e) in entries.iter().enumerate() {
            let k = key_of(ws, e);
            let Some(s) = self.sim.get(&k) else {
                bad(
                    report,
                    Invariant::DrawdownOrder,
                    format!("#{}: draws on unknown grant lot {k:?}", rec.id),
                );
                continue;
            };
            if !s.spendable(rec.at_ms) || s.remaining < i128::from(e.credits) {
                bad(
                    report,
                    Invariant::DrawdownOrder,
                    format!("#{}: draws {} from grant lot {k:?}, which was not spendable then or held {}", rec.id, e.credits, s.remaining),
                );
            }
            let order = s.order(&k.1, k.2);
            if last_order.as_ref().is_some_and(|l| *l >= order)
                || (i + 1 < entries.len() && i128::from(e.credits) != s.remaining)
            {
                bad(
                    report,
                    Invariant::DrawdownOrder,
                    format!("#{}: allocations out of drawdown order at {k:?}", rec.id),
                );
            }
            last_order = Some(order);
        }
        // No spendable lot that comes before the last one taken was skipped.
        if let Some(last) = last_order {
            let taken: Vec<LotKey> = entries.iter().map(|e| key_of(ws, e)).collect();
            let skipped = self
                .sim
                .range((ws.to_string(), String::new(), 0)..)
                .take_while(|(k, _)| k.0 == ws)
                .any(|(k, s)| {
                    s.remaining > 0
                        && s.spendable(rec.at_ms)
                        && s.order(&k.1, k.2) < last
                        && !taken.contains(k)
                });
            if skipped {
                bad(
                    report,
                    Invariant::DrawdownOrder,
                    format!(
                        "#{}: skipped a spendable grant earlier in the drawdown order",
                        rec.id
                    ),
                );
            }
        }
        for e in &entries {
            if let Some(s) = self.sim.get_mut(&key_of(ws, e)) {
                s.remaining -= i128::from(e.credits);
                s.allocated += u128::from(e.credits);
            }
        }
    }

    fn on_refund(&mut self, report: &mut AuditReport, rec: &TxnRecord) {
        let ws = rec.workspace.as_str();
        let bad = |report: &mut AuditReport, detail: String| {
            flag(report, rec, Invariant::RefundAllocation, detail)
        };
        let Some(entries) = self.entries_of(report, rec, rec.id) else {
            bad(report, format!("#{}: a refund with no allocations", rec.id));
            return;
        };
        let usage_txn = rec.refund.as_ref().map_or(0, |d| d.usage_txn);
        let drawn = self.entries_of(report, rec, usage_txn);
        let expected: Vec<(String, u32, u64)> = match drawn {
            Some(d) => d
                .into_iter()
                .map(|e| (e.grant_id, e.lot, e.credits))
                .collect(),
            // A charge from before grants comes back to the carried-over grant.
            None => vec![(carried_over_id().to_string(), 0, rec.amount_credits)],
        };
        let got: Vec<(String, u32, u64)> = entries
            .iter()
            .map(|e| (e.grant_id.clone(), e.from_lot, e.credits))
            .collect();
        if got != expected {
            bad(
                report,
                format!(
                    "#{}: returns {got:?}, but its Usage #{usage_txn} took {expected:?}",
                    rec.id
                ),
            );
        }
        for e in &entries {
            let k = key_of(ws, e);
            if e.lot == e.from_lot {
                match self.sim.get_mut(&k) {
                    Some(s) if !s.closed => {
                        s.remaining += i128::from(e.credits);
                        s.returned += u128::from(e.credits);
                    }
                    _ => bad(
                        report,
                        format!(
                            "#{}: returns {} credits to closed or unknown lot {k:?}",
                            rec.id, e.credits
                        ),
                    ),
                }
                continue;
            }
            match self.stored.get(&k) {
                Some(g) if g.source_txn == rec.id && g.amount_credits == e.credits => {
                    let mut s = Sim::of(g, e.credits);
                    s.effective = None;
                    self.sim.insert(k, s);
                }
                _ => bad(
                    report,
                    format!(
                        "#{}: its grace lot {k:?} is missing or does not match",
                        rec.id
                    ),
                ),
            }
        }
    }

    fn on_close(&mut self, report: &mut AuditReport, rec: &TxnRecord) {
        let ws = rec.workspace.as_str();
        let bad = |report: &mut AuditReport, detail: String| {
            report.add(
                Invariant::ExpirationAmount,
                detail,
                vec![rec.id],
                None,
                Some(ws),
            );
        };
        let lost = self.lost.entry(ws.to_string()).or_default();
        if rec.kind == TxnKind::Expiration {
            lost.0 += u128::from(rec.amount_credits);
        } else {
            lost.1 += u128::from(rec.amount_credits);
        }
        let Some(entries) = self.entries_of(report, rec, rec.id) else {
            bad(report, format!("#{}: names no grant", rec.id));
            return;
        };
        let sum: u128 = entries.iter().map(|e| u128::from(e.credits)).sum();
        if sum != u128::from(rec.amount_credits) {
            bad(
                report,
                format!(
                    "#{}: closes {sum} credits of grants but takes {}",
                    rec.id, rec.amount_credits
                ),
            );
        }
        for e in &entries {
            let k = key_of(ws, e);
            match self.sim.get_mut(&k) {
                Some(s)
                    if !s.closed
                        && s.remaining == i128::from(e.credits)
                        && (rec.kind != TxnKind::Expiration || s.expires.is_some_and(|x| rec.at_ms >= x)) =>
                {
                    s.closed = true;
                    s.remaining = 0;
                }
                _ => bad(
                    report,
                    format!("#{}: {} of {} credits from lot {k:?}, which did not hold exactly that, or was closed, or had not expired", rec.id, rec.kind, e.credits),
                ),
            }
        }
    }

    /// The end of the log for this page's workspaces: the replayed lots against the stored
    /// ones, balances, books and each open lot's index entries. Adds the page's open lots to
    /// `open`, for [`check_index_sizes`] once every page is done.
    pub fn finish(
        mut self,
        report: &mut AuditReport,
        rtx: &ReadTransaction,
        balances: &HashMap<String, u64>,
        open: &mut OpenLots,
    ) -> Result<(), Error> {
        let mut sums: BTreeMap<String, u128> = BTreeMap::new();
        let order_t = tables::open_optional(rtx, tables::GRANT_ORDER)?;
        let expiries_t = tables::open_optional(rtx, tables::GRANT_EXPIRIES)?;
        for (k, g) in &self.stored {
            let ws = k.0.as_str();
            let closed = g.closed.map_or(0, |c| c.credits);
            let carried = k.1 == carried_over_id();
            let arithmetic = u128::from(g.amount_credits) + u128::from(g.returned_credits)
                == u128::from(g.allocated_credits)
                    + u128::from(closed)
                    + u128::from(g.remaining_credits);
            if !arithmetic || (!carried && g.remaining_credits > g.amount_credits) {
                report.add(
                    Invariant::GrantArithmetic,
                    format!(
                        "grant lot {k:?}: remaining {} is not amount {} - allocated {} + returned {} - closed {closed}, or exceeds its amount",
                        g.remaining_credits, g.amount_credits, g.allocated_credits, g.returned_credits
                    ),
                    vec![g.source_txn],
                    None,
                    Some(ws),
                );
            }
            if g.closed.is_none() {
                *sums.entry(ws.to_string()).or_default() += u128::from(g.remaining_credits);
                open.with_credits += u64::from(g.remaining_credits > 0);
                open.with_expiry += u64::from(g.expires_at_ms.is_some());
                let in_order = match &order_t {
                    Some(t) => t.get(g.order_key())?.is_some(),
                    None => false,
                };
                let in_expiries = match (&expiries_t, g.expires_at_ms) {
                    (Some(t), Some(e)) => t.get((e, ws, k.1.as_str(), k.2))?.is_some(),
                    (_, e) => e.is_none(),
                };
                if in_order != (g.remaining_credits > 0) || !in_expiries {
                    report.add(
                        Invariant::GrantIndex,
                        format!(
                            "open grant lot {k:?} is missing from grant_order or grant_expiries"
                        ),
                        vec![g.source_txn],
                        None,
                        Some(ws),
                    );
                }
            }
            if let Some(s) = self.sim.remove(k) {
                // A lot closed with nothing left has no allocation entry (an Expiration of
                // nothing is not written at all): the replay left it open.
                let sim_closed =
                    s.closed || (g.closed.is_some_and(|c| c.credits == 0) && s.remaining == 0);
                if (s.remaining, s.allocated, s.returned, sim_closed)
                    != (
                        i128::from(g.remaining_credits),
                        u128::from(g.allocated_credits),
                        u128::from(g.returned_credits),
                        g.closed.is_some(),
                    )
                {
                    report.add(
                        Invariant::GrantArithmetic,
                        format!(
                            "grant lot {k:?} stores remaining {}, allocated {}, returned {}, closed {}; its transactions give {}, {}, {}, {}",
                            g.remaining_credits, g.allocated_credits, g.returned_credits, g.closed.is_some(),
                            s.remaining, s.allocated, s.returned, sim_closed
                        ),
                        vec![g.source_txn],
                        None,
                        Some(ws),
                    );
                }
            } else if !carried || self.books.contains_key(ws) {
                report.add(
                    Invariant::GrantArithmetic,
                    format!("grant lot {k:?} was created by no transaction"),
                    vec![g.source_txn],
                    None,
                    Some(ws),
                );
            }
        }
        for (ws, book) in &self.books {
            let balance = balances.get(ws).copied().unwrap_or(0);
            let sum = sums.get(ws).copied().unwrap_or(0);
            if sum != u128::from(balance) {
                report.add(
                    Invariant::GrantBalance,
                    format!("balance {balance}, but its grants hold {sum}"),
                    vec![],
                    None,
                    Some(ws),
                );
            }
            let lost = self.lost.get(ws).copied().unwrap_or((0, 0));
            if lost
                != (
                    u128::from(book.expired_credits),
                    u128::from(book.voided_credits),
                )
            {
                report.add(
                    Invariant::GrantBalance,
                    format!(
                        "grant book says expired {}, voided {}; the log says {}, {}",
                        book.expired_credits, book.voided_credits, lost.0, lost.1
                    ),
                    vec![],
                    None,
                    Some(ws),
                );
            }
        }
        if let Some(t) = tables::open_optional(rtx, tables::GRANT_NOTICES)? {
            for entry in t.iter()? {
                let (k, v) = entry?;
                let (due_ms, ws, id) = k.value();
                if !self.page.contains(ws) {
                    continue;
                }
                let expires_ms = v.value();
                let lot0 = self.stored.get(&(ws.to_string(), id.to_string(), 0));
                let fits = lot0.is_some_and(|g| g.expires_at_ms == Some(expires_ms))
                    && due_ms < expires_ms
                    && !self.noticed.contains(&(ws.to_string(), id.to_string()));
                if !fits {
                    report.add(
                        Invariant::GrantNotice,
                        format!(
                            "grant_notices entry ({due_ms}, {ws}, {id}) -> {expires_ms} names no grant expiring then, is not due before it, or its grant already has its notice"
                        ),
                        lot0.map(|g| vec![g.source_txn]).unwrap_or_default(),
                        None,
                        Some(ws),
                    );
                }
            }
        }
        Ok(())
    }
}

/// The grant indexes hold nothing but the open lots: their sizes against the open lots of
/// every page.
pub(super) fn check_index_sizes(
    report: &mut AuditReport,
    rtx: &ReadTransaction,
    open: &OpenLots,
) -> Result<(), Error> {
    fn size<K: redb::Key + 'static>(t: Option<redb::ReadOnlyTable<K, ()>>) -> Result<u64, Error> {
        Ok(match t {
            Some(t) => t.len()?,
            None => 0,
        })
    }
    let order = size(tables::open_optional(rtx, tables::GRANT_ORDER)?)?;
    let expiries = size(tables::open_optional(rtx, tables::GRANT_EXPIRIES)?)?;
    if order != open.with_credits || expiries != open.with_expiry {
        report.add(
            Invariant::GrantIndex,
            format!(
                "grant_order has {order} entries for {} open lots with credits; grant_expiries {expiries} for {} open lots with an expiry",
                open.with_credits, open.with_expiry
            ),
            vec![],
            None,
            None,
        );
    }
    Ok(())
}

/// Records a violation of `inv` found at transaction `rec`, naming its id, generation and
/// workspace: what every per-transaction check of this replay reports.
fn flag(report: &mut AuditReport, rec: &TxnRecord, inv: Invariant, detail: String) {
    report.add(
        inv,
        detail,
        vec![rec.id],
        rec.generation_id.as_deref(),
        Some(rec.workspace.as_str()),
    );
}
