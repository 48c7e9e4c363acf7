//! The grant lots one write transaction has read or changed, per workspace.
//!
//! [`Ctx::put_grant`](super::Ctx::put_grant) keeps the two grant indexes in step at once and
//! leaves the record here, for [`Ctx::flush`](super::Ctx::flush) to write once: a batch of
//! charges to one lot writes its record once, not once per charge.
//!
//! A workspace's lots are also *ordered* here once a charge has read its whole drawdown
//! index (`grant_order`) in this transaction: from then on every open lot with credits left
//! is in the cache (a lot enters the index only through `put_grant`, which puts it here too),
//! so the next charge to the workspace plans from memory instead of a range read of the
//! index, and takes its credits by changing the cached lot in place instead of cloning it.
//! In a batch of 1,000 starts on one workspace that was 3,700 of the 43,000 instructions of a
//! start for the plan, and 3,100 for the take (callgrind, `lifecycle/start/1000`'s shape).
//! A workspace holds a handful of lots, so a short list per workspace is searched.
//!
//! The caches outlive their transaction when it commits: [`WarmGrants`] hands them to the
//! next one, so a workspace's next charge in the next batch reads no grant table either.

use std::collections::HashMap;

use redb::ReadableTable;

use crate::error::Error;
use crate::model::records::GrantRecord;
use crate::storage::tables;

/// One workspace's cached lots.
#[derive(Default)]
struct WorkspaceLots {
    /// Each lot as this transaction sees it, and whether it changed.
    lots: Vec<(GrantRecord, bool)>,
    /// Every lot of the drawdown index is in `lots` (see the module docs).
    ordered: bool,
}

/// A take the plan chose: `credits` from lot `lot` of grant `id`.
pub(crate) struct Take {
    pub id: String,
    pub lot: u32,
    pub credits: u64,
}

#[derive(Default)]
pub(crate) struct LotCache {
    by_workspace: HashMap<String, WorkspaceLots>,
}

/// Whether `g` has an entry in the drawdown index: open with credits left.
pub(crate) fn in_order(g: &GrantRecord) -> bool {
    g.closed.is_none() && g.remaining_credits > 0
}

impl LotCache {
    /// Lot `lot` of grant `id` as this transaction sees it.
    pub fn get(
        &mut self,
        table: &impl ReadableTable<(&'static str, &'static str, u32), &'static [u8]>,
        workspace: &str,
        id: &str,
        lot: u32,
    ) -> Result<Option<GrantRecord>, Error> {
        if let Some(rec) = self.find(workspace, id, lot) {
            return Ok(Some(rec.clone()));
        }
        let rec = tables::get_grant(table, workspace, id, lot)?;
        if let Some(r) = &rec {
            self.entry(workspace).lots.push((r.clone(), false));
        }
        Ok(rec)
    }

    /// Lot `lot` of grant `id`, if this transaction has it cached.
    pub fn find(&self, workspace: &str, id: &str, lot: u32) -> Option<&GrantRecord> {
        self.by_workspace
            .get(workspace)?
            .lots
            .iter()
            .find(|(g, _)| g.lot == lot && g.id == id)
            .map(|(g, _)| g)
    }

    fn entry(&mut self, workspace: &str) -> &mut WorkspaceLots {
        if !self.by_workspace.contains_key(workspace) {
            self.by_workspace
                .insert(workspace.to_string(), WorkspaceLots::default());
        }
        self.by_workspace
            .get_mut(workspace)
            .expect("invariant: just inserted")
    }

    pub fn put(&mut self, rec: &GrantRecord) {
        let lots = &mut self.entry(&rec.workspace).lots;
        match lots
            .iter_mut()
            .find(|(g, _)| g.lot == rec.lot && g.id == rec.id)
        {
            Some(slot) => *slot = (rec.clone(), true),
            None => lots.push((rec.clone(), true)),
        }
    }

    /// Every lot of `workspace`'s drawdown index is cached (see the module docs).
    pub fn is_ordered(&self, workspace: &str) -> bool {
        self.by_workspace.get(workspace).is_some_and(|w| w.ordered)
    }

    /// Record that every lot of `workspace`'s drawdown index is now cached. Call only after
    /// reading each lot of the index through [`LotCache::get`].
    pub fn mark_ordered(&mut self, workspace: &str) {
        self.entry(workspace).ordered = true;
    }

    /// The lots of an ordered workspace that are in the drawdown index, in drawdown order.
    pub fn in_drawdown_order(&self, workspace: &str) -> Vec<&GrantRecord> {
        let Some(w) = self.by_workspace.get(workspace) else {
            return Vec::new();
        };
        debug_assert!(w.ordered, "drawdown order asked of an unordered workspace");
        let mut lots: Vec<&GrantRecord> = w
            .lots
            .iter()
            .map(|(g, _)| g)
            .filter(|g| in_order(g))
            .collect();
        if lots.len() > 1 {
            lots.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        }
        lots
    }

    /// Take `credits` from a cached lot in place, marking it changed. Returns the lot as it
    /// is now, and whether it was in the drawdown index before (the caller removes its entry
    /// when it no longer is). `None` when the lot is not cached.
    pub fn take(
        &mut self,
        workspace: &str,
        id: &str,
        lot: u32,
        credits: u64,
    ) -> Option<Result<(&GrantRecord, bool), Error>> {
        let (rec, changed) = self
            .by_workspace
            .get_mut(workspace)?
            .lots
            .iter_mut()
            .find(|(g, _)| g.lot == lot && g.id == id)?;
        let was_in_order = in_order(rec);
        let remaining = rec.remaining_credits.checked_sub(credits);
        let allocated = rec.allocated_credits.checked_add(credits);
        let (Some(remaining), Some(allocated)) = (remaining, allocated) else {
            return Some(Err(Error::Corruption {
                table: "grants",
                key: format!("({}, {}, {})", rec.workspace, rec.id, rec.lot),
                detail: "a grant lot's totals overflow".into(),
            }));
        };
        rec.remaining_credits = remaining;
        rec.allocated_credits = allocated;
        *changed = true;
        Some(Ok((rec, was_in_order)))
    }

    /// The changed lots, which are then marked unchanged: the cache stays as the table will
    /// be once they are written.
    pub fn take_changed(&mut self) -> Vec<GrantRecord> {
        let mut out = Vec::new();
        for w in self.by_workspace.values_mut() {
            for (rec, changed) in w.lots.iter_mut().filter(|(_, c)| *c) {
                *changed = false;
                out.push(rec.clone());
            }
        }
        out
    }

    /// Workspaces and lots held.
    fn size(&self) -> (usize, usize) {
        let lots = self.by_workspace.values().map(|w| w.lots.len()).sum();
        (self.by_workspace.len(), lots)
    }
}

/// The most workspaces [`WarmGrants`] keeps between transactions.
pub(crate) const MAX_WARM_WORKSPACES: usize = 4096;
/// The most grant lots [`WarmGrants`] keeps between transactions.
pub(crate) const MAX_WARM_LOTS: usize = 16_384;

/// The grant lots and books the last committed transaction left in its caches, handed to the
/// next one, so that a workspace's next charge reads neither table (at 1,000 workspaces and
/// batches of 1,000 starts, the book, the drawdown index and the lot were 13,000 of the
/// 82,000 instructions of a start, callgrind).
///
/// It is only ever as right as the file: the writer hands it on only from a transaction that
/// committed to the state the next one starts from (see `ledger::write`), and every write of
/// the grant tables goes through the caches it seeds. Anything else (a failed or uncertain
/// commit, a reload, a journal replay) starts the next transaction with an empty one. It is
/// bounded by [`MAX_WARM_WORKSPACES`] and [`MAX_WARM_LOTS`]: past either, it is dropped
/// whole, and a working set that large runs as if there were none.
#[derive(Default)]
pub(crate) struct WarmGrants {
    pub(super) lots: LotCache,
    pub(super) books: HashMap<String, (Option<crate::model::records::GrantBook>, bool)>,
}

impl WarmGrants {
    /// This cache, or an empty one when it holds more than the bounds allow.
    pub(super) fn bounded(self) -> Self {
        let (workspaces, lots) = self.lots.size();
        if workspaces.max(self.books.len()) > MAX_WARM_WORKSPACES || lots > MAX_WARM_LOTS {
            WarmGrants::default()
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(workspace: &str, id: &str) -> GrantRecord {
        GrantRecord {
            id: id.to_string(),
            lot: 0,
            workspace: workspace.to_string(),
            source_txn: 1,
            label: "Purchase".to_string(),
            amount_credits: 10,
            remaining_credits: 10,
            allocated_credits: 0,
            returned_credits: 0,
            priority: 100,
            effective_at_ms: None,
            expires_at_ms: None,
            grace_lots: 0,
            closed: None,
        }
    }

    #[test]
    fn the_warm_caches_are_dropped_whole_past_either_bound() {
        let mut warm = WarmGrants::default();
        for w in 0..MAX_WARM_WORKSPACES {
            warm.lots.put(&lot(&format!("ws-{w}"), "p"));
        }
        let warm = warm.bounded();
        assert_eq!(warm.lots.size(), (MAX_WARM_WORKSPACES, MAX_WARM_WORKSPACES));
        let mut warm = warm;
        warm.lots.put(&lot("one-more", "p"));
        assert_eq!(warm.bounded().lots.size(), (0, 0));

        let mut warm = WarmGrants::default();
        for g in 0..=MAX_WARM_LOTS {
            warm.lots.put(&lot("ws", &format!("g-{g}")));
        }
        assert_eq!(warm.bounded().lots.size(), (0, 0));
    }

    #[test]
    fn taking_the_changed_lots_keeps_them_cached_as_unchanged() {
        let mut cache = LotCache::default();
        cache.put(&lot("ws", "p"));
        assert_eq!(cache.take_changed().len(), 1);
        assert!(cache.take_changed().is_empty(), "written once");
        assert!(cache.find("ws", "p", 0).is_some(), "still cached");
    }
}
