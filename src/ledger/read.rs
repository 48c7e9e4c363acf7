//! The read methods: each runs in one redb read transaction, a consistent snapshot that never
//! blocks writers.

use redb::ReadTransaction;

use super::Ledger;
use crate::audit::{self, AuditReport};
use crate::error::{Error, InvalidInput, Result};
use crate::model::validate;
use crate::query::{
    self, ChangePage, GenerationView, GrantView, HistoryFilter, HistoryPage, LedgerTotals,
    PageRequest, Stats, TimeWindow, TransactionView, WorkspaceSummary,
};
use crate::storage::tables;

impl Ledger {
    /// Run `f` on a fresh read transaction. A redb panic on damaged data becomes
    /// [`Error::Corruption`] naming `table`.
    fn read<T>(
        &self,
        table: &'static str,
        f: impl FnOnce(&ReadTransaction) -> Result<T>,
    ) -> Result<T> {
        let on_panic = |detail| Error::Corruption {
            table,
            key: String::new(),
            detail,
        };
        self.with_snapshot(on_panic, |r| f(&r))
    }

    /// A workspace's balance, running totals and running generations, with the balance split
    /// into what is spendable now, not yet effective, and expired but not yet swept.
    pub fn balance(&self, workspace: &str) -> Result<WorkspaceSummary> {
        validate::id("workspace", workspace)?;
        let now_ms = self.now_ms();
        self.read("workspaces", |r| {
            query::workspace_summary(r, workspace, now_ms)
        })
    }

    /// Every grant of a workspace (and every refund-grace part of one), in drawdown order,
    /// with what remains and its state now. At most
    /// [`MAX_GRANTS_LISTED`](crate::limits::MAX_GRANTS_LISTED).
    pub fn grants(&self, workspace: &str) -> Result<Vec<GrantView>> {
        validate::id("workspace", workspace)?;
        let now_ms = self.now_ms();
        self.read("grants", |r| query::grants::grants(r, workspace, now_ms))
    }

    /// The spendable grants of a workspace that expire within `within_ms` from now, soonest
    /// first.
    pub fn expiring(&self, workspace: &str, within_ms: u64) -> Result<Vec<GrantView>> {
        validate::id("workspace", workspace)?;
        let now_ms = self.now_ms();
        self.read("grants", |r| {
            query::grants::expiring(r, workspace, now_ms, within_ms)
        })
    }

    /// Workspaces in id order, after `after`, at most `limit` (1..=1000).
    pub fn workspaces(&self, after: Option<&str>, limit: u32) -> Result<Vec<WorkspaceSummary>> {
        validate::limit(
            "page limit",
            u64::from(limit),
            u64::from(crate::limits::MAX_PAGE_LIMIT),
        )?;
        let now_ms = self.now_ms();
        self.read("workspaces", |r| {
            query::list_workspaces(r, after, limit, now_ms)
        })
    }

    /// The sums over all workspaces, for a conservation check:
    /// `granted - spent + refunded + adjusted_in - adjusted_out == balance`.
    pub fn totals(&self) -> Result<LedgerTotals> {
        self.read("workspaces", query::totals)
    }

    /// A generation's lifecycle: charge, deadline, state, refund.
    pub fn generation(&self, generation_id: &str) -> Result<GenerationView> {
        validate::id("generation id", generation_id)?;
        let now_ms = self.now_ms();
        self.read("generations", |r| {
            query::generation_view(r, generation_id, now_ms)
        })
    }

    /// One transaction's credit summary: balance before, the action, the new balance, and the
    /// links between a Usage and its Refund.
    pub fn transaction(&self, txn_id: u64) -> Result<TransactionView> {
        self.read("transactions", |r| query::transaction_view(r, txn_id))
    }

    /// A page of a workspace's history, newest first, filtered. Pass the returned
    /// `next_cursor` to get the next page; a page costs the same at any depth.
    pub fn history(
        &self,
        workspace: &str,
        filter: &HistoryFilter,
        page: &PageRequest,
    ) -> Result<HistoryPage> {
        validate::id("workspace", workspace)?;
        self.read("workspace_history", |r| {
            let mut page = query::history::history(r, workspace, filter, page)?;
            query::add_clock_notes(r, &mut page.entries)?;
            Ok(page)
        })
    }

    /// The change feed: the global log after `after_txn_id`, oldest first, across every
    /// workspace, at most `limit` entries (1..=[`MAX_PAGE_LIMIT`](crate::limits::MAX_PAGE_LIMIT)).
    /// The entries are the views history shows, each with its transaction id, so a receiver
    /// can apply each exactly once. Ids are dense, so a page costs the entries it returns.
    ///
    /// ```
    /// use credit_ledger::{Credit, Ledger};
    /// let ledger = Ledger::in_memory()?;
    /// ledger.credit(Credit::purchase("a", 10, "o-1"))?;
    /// ledger.credit(Credit::purchase("b", 20, "o-2"))?;
    /// let page = ledger.changes(0, 100)?;
    /// let ids: Vec<u64> = page.entries.iter().map(|e| e.id).collect();
    /// assert_eq!((ids, page.last_txn_id), (vec![1, 2], 2));
    /// assert!(ledger.changes(2, 100)?.entries.is_empty());
    /// # Ok::<(), credit_ledger::Error>(())
    /// ```
    pub fn changes(&self, after_txn_id: u64, limit: u32) -> Result<ChangePage> {
        self.read("transactions", |r| {
            let mut page = query::changes::changes(r, after_txn_id, limit)?;
            query::add_clock_notes(r, &mut page.entries)?;
            Ok(page)
        })
    }

    /// The stored position of a change-feed consumer: the last transaction it acked, or 0
    /// for a consumer that never acked. Read on with [`changes`](Self::changes)`(position, n)`.
    pub fn position(&self, consumer: &str) -> Result<u64> {
        validate::id("consumer", consumer)?;
        self.read("consumers", |r| {
            match tables::open_optional(r, tables::CONSUMERS)? {
                Some(t) => Ok(t.get(consumer)?.map_or(0, |v| v.value())),
                None => Ok(0),
            }
        })
    }

    /// The balance alert threshold of `workspace`, if one is set.
    pub fn alert(&self, workspace: &str) -> Result<Option<u64>> {
        validate::id("workspace", workspace)?;
        self.read("alerts", |r| {
            match tables::open_optional(r, tables::ALERTS)? {
                Some(t) => Ok(t.get(workspace)?.map(|v| v.value())),
                None => Ok(None),
            }
        })
    }

    /// Failures and refunds by reason and by feature within `window`.
    pub fn stats(&self, window: TimeWindow) -> Result<Stats> {
        if let (Some(since_ms), Some(until_ms)) = (window.since_ms, window.until_ms) {
            if since_ms > until_ms {
                return Err(InvalidInput::EmptyWindow { since_ms, until_ms }.into());
            }
        }
        self.read("transactions", |r| query::stats::stats(r, window))
    }

    /// Check every invariant of the stored ledger. An empty report means healthy.
    ///
    /// On a damaged file the report lists what could not be read
    /// ([`AuditReport::unchecked`]). For a file ledger it then also runs redb's own integrity
    /// check on a copy of the file (redb's check repairs what it checks, and needs the file to
    /// itself, so it never runs on the ledger's file), and reports its verdict in
    /// [`AuditReport::storage_check`] and as a violation: it says whether the damage is in the
    /// storage engine's pages, and whether redb could repair them.
    pub fn verify(&self) -> Result<AuditReport> {
        let mut report = self.read("(audit)", audit::verify)?;
        if !report.unchecked.is_empty() {
            if let super::Source::File(path) = &self.source {
                audit::add_storage_check(&mut report, path);
            }
        }
        Ok(report)
    }
}
