//! `verify()`: check every invariant of the stored ledger and name what is broken.
//!
//! The audit reads the whole file in one snapshot. It never stops at the first problem and
//! never panics on damage: a record that fails its checksum becomes a violation like any
//! other, and the audit goes on. Its memory is one accumulator per workspace of the page it
//! checks: the workspaces come in pages of [`AUDIT_PAGE_WORKSPACES`], one pass over the log
//! each (see [`verify_in_pages`]).
//!
//! Each table is read once in key order. A link is checked from one side only, by a point
//! lookup, and counted; the other side is then proved by comparing counts (every Usage points
//! at a distinct generation that points back, and there are as many Usages as generations, so
//! every generation has its Usage). Only when a count disagrees does the audit run the
//! slower, reverse pass that names the ids involved. A healthy ledger thus costs about one
//! random lookup per transaction instead of five.

use std::collections::HashMap;

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata};
use serde::Serialize;

use crate::error::Error;
use crate::model::limits::{AUDIT_PAGE_WORKSPACES, MAX_REPORTED_VIOLATIONS};
use crate::model::records::{GenState, TxnRecord, WorkspaceRecord};
use crate::storage::codec;
use crate::storage::tables;
mod checks;
mod grants;
mod refund_lots;

use grants::{GrantAudit, OpenLots};
use refund_lots::RefundLots;

use checks::{
    accumulate, check_deadlines, check_generation, check_history, check_txn, totals_differences,
    Acc, HistoryIndex, Links,
};

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
    /// A transaction's balance after is not its balance before plus its amount, or a
    /// notification moves credits or shows a balance that is not below its threshold.
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
    /// Part of a table could not be read: the storage engine failed on damaged data there.
    /// [`AuditReport::unchecked`] says which table and which keys.
    Unreadable,
    /// A grant lot's `remaining` is not its amount minus its allocations plus what refunds
    /// returned minus what expired or was voided, exceeds its amount, or disagrees with the
    /// transactions that moved it.
    GrantArithmetic,
    /// A workspace's balance is not the sum of its grants' `remaining`, or its grant book's
    /// expired and voided totals disagree with its Expirations and Voids.
    GrantBalance,
    /// A Usage's (or negative Adjustment's) allocations do not add up to its amount.
    AllocationSum,
    /// A Refund does not give back exactly its Usage's allocations.
    RefundAllocation,
    /// A charge drew on a grant that was not spendable at its time, or skipped a spendable
    /// grant that comes earlier in the drawdown order.
    DrawdownOrder,
    /// An Expiration or Void is not for exactly what its grant held, or closed a grant twice,
    /// or expired a grant before its expiry.
    ExpirationAmount,
    /// The grant indexes (`grant_order`, `grant_expiries`) and the open grant lots differ.
    GrantIndex,
    /// A `GrantExpiring` notice is a second one for its grant, or not for a grant that was
    /// spendable with credits left when it was written, or not for exactly what it held and
    /// when it expires; or the notice index (`grant_notices`) names a grant that does not
    /// expire when it says, is due at or after that expiry, or already has its notice.
    GrantNotice,
    /// A Refund's record and its storage differ on the grant lots it gave back: a Refund
    /// written from schema 6 on does not say, or says other lots than its `allocations` row
    /// or its generation record; or another kind of transaction carries refund lots; or the
    /// `meta` key saying where the lots start is missing.
    RefundLots,
}

/// A part of the file the audit could not check, because the storage engine (redb) failed on
/// damaged data while reading it. Everything else was still checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unchecked {
    /// The table (`transactions`, `generations`, ...), or the check that could not run
    /// (`workspace totals`).
    pub table: &'static str,
    /// The last key read in good order before the failure, when there was one: the keys
    /// *after* it were not checked. `None`: none of the table could be read.
    pub after_key: Option<String>,
    /// The keys not checked, in words (`after #1200, to the end`).
    pub keys: String,
    /// What went wrong, from the storage engine.
    pub detail: String,
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
    /// Grant lots (grants and their refund-grace parts).
    pub grant_lots: u64,
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
    /// The parts that could not be read (each is also an [`Invariant::Unreadable`] violation).
    pub unchecked: Vec<Unchecked>,
    /// When parts could not be read: the verdict of redb's own integrity check, run on a copy
    /// of the ledger file (file ledgers only; also listed as a violation).
    pub storage_check: Option<String>,
}

impl AuditReport {
    /// True when no invariant is broken.
    pub fn is_clean(&self) -> bool {
        self.violation_count == 0
    }

    /// Record that `table` could not be read after `after_key` (or at all): one
    /// [`Unchecked`] entry and one [`Invariant::Unreadable`] violation.
    fn unreadable(&mut self, table: &'static str, after_key: Option<String>, detail: String) {
        let keys = match &after_key {
            Some(k) => format!("the keys after {k}, to the end"),
            None => "every key".to_string(),
        };
        self.add(
            Invariant::Unreadable,
            format!("table `{table}`: {keys} could not be checked: {detail}"),
            vec![],
            None,
            None,
        );
        self.unchecked.push(Unchecked {
            table,
            after_key,
            keys,
            detail,
        });
    }

    /// Record that a check needing the whole of `needs` did not run.
    fn skipped(&mut self, check: &'static str, needs: &str) {
        let detail = format!("not run, because {needs} could not be read in full");
        self.add(
            Invariant::Unreadable,
            format!("{check}: {detail}"),
            vec![],
            None,
            None,
        );
        self.unchecked.push(Unchecked {
            table: check,
            after_key: None,
            keys: "all".to_string(),
            detail,
        });
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

/// Run redb's own integrity check on a copy of the ledger file at `path` and add its verdict
/// to `report`. redb's check verifies the checksum of every page and repairs what it can,
/// which is why it runs on a copy in the temporary folder: the ledger's file is never
/// written by an audit. The copy is taken while the ledger is open, so a write committed
/// during the copy can make it look damaged; the check runs only when the audit has already
/// found parts it could not read.
pub(crate) fn add_storage_check(report: &mut AuditReport, path: &std::path::Path) {
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let copy = std::env::temp_dir().join(format!(
        "credit-ledger-verify-{}-{}.redb",
        std::process::id(),
        COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let verdict = match std::fs::copy(path, &copy) {
        Err(e) => format!("redb's own integrity check did not run: cannot copy the file: {e}"),
        Ok(_) => {
            let checked = guarded(|| {
                let mut db = redb::Database::open(&copy).map_err(Error::storage)?;
                db.check_integrity().map_err(Error::storage)
            });
            match checked {
                Ok(Ok(true)) => "redb's own integrity check (on a copy) found every page intact: \
                    the damage is in the ledger's records"
                    .to_string(),
                Ok(Ok(false)) => "redb's own integrity check (on a copy) found damaged pages and \
                    could repair them in the copy: the ledger's file was not changed; restore it \
                    from a backup, or ask for the repaired copy to be examined"
                    .to_string(),
                Ok(Err(Error::Storage { message: e }))
                | Ok(Err(Error::Poisoned { message: e })) => format!(
                    "redb's own integrity check (on a copy): {e}: the storage engine's pages \
                     are damaged beyond its repair; restore the file from a backup"
                ),
                Ok(Err(e)) => format!("redb's own integrity check (on a copy) failed: {e}"),
                Err(panic) => format!("redb's own integrity check (on a copy) failed too: {panic}"),
            }
        }
    };
    // The copy is the audit's own file.
    let _ = std::fs::remove_file(&copy);
    report.add(Invariant::Corruption, verdict.clone(), vec![], None, None);
    report.storage_check = Some(verdict);
}

/// A damaged record, in the report's words: which record and what is wrong with it, without
/// the advice an error carries for other callers (to run `verify`, which is running).
fn damaged(e: &Error) -> String {
    match e {
        Error::Corruption { table, key, detail } => {
            format!("record `{key}` of table `{table}` is damaged: {detail}")
        }
        other => other.to_string(),
    }
}

/// Run `f`, turning a panic of the storage engine into its message. redb panics on some
/// damaged pages instead of returning an error; the audit is the tool for damaged files, so
/// it notes the part it could not read and goes on with the rest.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<Result<T, Error>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("the storage engine failed on damaged data ({message})")
    })
}

/// A pass over one table: `Ok` when it read all of it. A storage error is returned as
/// before; a panic is recorded as the table's unread remainder, after the last key the pass
/// read (`last_key`, formatted only then).
fn pass(
    report: &mut AuditReport,
    table: &'static str,
    last_key: impl FnOnce() -> Option<String>,
    result: Result<Result<(), Error>, String>,
) -> Result<bool, Error> {
    match result {
        Ok(r) => r.map(|()| true),
        Err(detail) => {
            report.unreadable(table, last_key(), detail);
            Ok(false)
        }
    }
}

/// The workspaces one pass of the audit checks: those after `after`, up to and including
/// `upto`, in key order (`None`: unbounded on that side). The pages of one audit cover every
/// string, so a transaction of a workspace that has no record still falls in one of them.
#[derive(Clone)]
pub(crate) struct Page {
    after: Option<String>,
    upto: Option<String>,
}

impl Page {
    fn contains(&self, ws: &str) -> bool {
        self.after.as_deref().is_none_or(|a| ws > a) && !self.is_past(ws)
    }

    /// True when `ws` comes after this page: a scan in key order can stop there.
    fn is_past(&self, ws: &str) -> bool {
        self.upto.as_deref().is_some_and(|u| ws > u)
    }
}

/// Where the page that starts after `after` ends: its `size`-th workspace record, or `None`
/// when no more than `size` are left (the last page takes the rest).
fn page_end(
    workspaces: &impl ReadableTable<&'static str, &'static [u8]>,
    after: Option<&str>,
    size: usize,
) -> Result<Option<String>, Error> {
    let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut end = None;
    for (n, entry) in workspaces
        .range::<&str>((from, std::ops::Bound::Unbounded))?
        .enumerate()
    {
        let (k, _) = entry?;
        if n == size {
            return Ok(end);
        }
        end = Some(k.value().to_string());
    }
    Ok(None)
}

pub(crate) fn verify(rtx: &ReadTransaction) -> Result<AuditReport, Error> {
    verify_in_pages(rtx, AUDIT_PAGE_WORKSPACES).map(|(report, _)| report)
}

/// The audit, with the workspaces checked in pages of at most `page_workspaces` (see
/// [`AUDIT_PAGE_WORKSPACES`]). Also returns how many pages it took.
///
/// The first pass reads every table and checks everything that needs no state per
/// workspace (the chain, ids, time, links, indexes), and the workspaces of the first page.
/// Each later pass reads the log and the generations again, for the next page's workspaces
/// only. Memory is therefore one page's accumulators and grant lots, whatever the ledger
/// holds; a ledger of at most one page is read once.
fn verify_in_pages(
    rtx: &ReadTransaction,
    page_workspaces: usize,
) -> Result<(AuditReport, u64), Error> {
    let mut report = AuditReport::default();
    let opened = guarded(|| {
        Ok((
            rtx.open_table(tables::TRANSACTIONS)?,
            rtx.open_table(tables::GENERATIONS)?,
            rtx.open_table(tables::WORKSPACES)?,
            rtx.open_table(tables::IDEMPOTENCY)?,
            rtx.open_table(tables::HISTORY)?,
            rtx.open_table(tables::DEADLINES)?,
        ))
    });
    let (txns, gens, workspaces, idem, history, deadlines) = match opened {
        Ok(tables) => tables?,
        Err(detail) => {
            report.unreadable("(the table directory)", None, detail);
            return Ok((report, 0));
        }
    };
    let schema = match guarded(|| tables::get_schema(&rtx.open_table(tables::META)?)) {
        Ok(schema) => schema?,
        Err(detail) => {
            report.unreadable("meta", None, detail);
            return Ok((report, 0));
        }
    };
    // The notice index is a file's only record of the notices it owes: a file of the schema
    // that promises it, without it, has lost them (the writable open refuses such a file).
    if schema >= tables::NOTICES_SCHEMA_VERSION {
        let notices =
            guarded(|| tables::open_optional(rtx, tables::GRANT_NOTICES).map(|t| t.is_none()));
        if let Ok(Ok(true)) = notices {
            report.add(
                Invariant::GrantNotice,
                format!(
                    "the file records schema {schema} but has no grant_notices table: the grant expiry notices it held will never be written"
                ),
                vec![],
                None,
                None,
            );
        }
    }
    let history = HistoryIndex {
        table: &history,
        schema,
    };
    let allocs = match guarded(|| tables::open_optional(rtx, tables::ALLOCATIONS)) {
        Ok(t) => t?,
        Err(detail) => {
            report.unreadable("allocations", None, detail);
            None
        }
    };
    let refund_lots = match guarded(|| tables::refund_lots_from(&rtx.open_table(tables::META)?)) {
        Ok(Ok(from)) => from,
        Ok(Err(e)) => {
            report.add(Invariant::RefundLots, e.to_string(), vec![], None, None);
            None
        }
        Err(detail) => {
            report.unreadable("meta", None, detail);
            None
        }
    };
    let refund_lots = RefundLots {
        from: refund_lots,
        allocs: allocs.as_ref(),
    };
    let mut links = Links::default();
    let mut open_lots = OpenLots::default();
    let mut grants_whole = true;
    let (mut log_whole, mut gens_whole) = (true, true);
    let mut page = Page {
        after: None,
        upto: None,
    };
    let mut pages = 0u64;
    loop {
        page.upto = match guarded(|| {
            page_end(&workspaces, page.after.as_deref(), page_workspaces.max(1))
        }) {
            Ok(end) => end?,
            // The workspace pass below meets the same damage and reports it.
            Err(_) => None,
        };
        pages += 1;
        let first = pages == 1;
        let tables = Tables {
            txns: &txns,
            gens: &gens,
            workspaces: &workspaces,
            idem: &idem,
            history: &history,
            deadlines: &deadlines,
            refund_lots: &refund_lots,
        };
        let whole = check_page(
            &mut report,
            rtx,
            &page,
            first,
            &mut links,
            &mut open_lots,
            &tables,
        )?;
        (log_whole, gens_whole) = (log_whole && whole.log, gens_whole && whole.gens);
        grants_whole &= whole.grants;
        if !(whole.log && whole.gens && whole.workspaces) || page.upto.is_none() {
            break;
        }
        page.after = page.upto.take();
    }
    if log_whole && gens_whole && grants_whole {
        let sizes = guarded(|| grants::check_index_sizes(&mut report, rtx, &open_lots));
        pass(&mut report, "grants", || None, sizes)?;
    }

    // 4. The indexes hold nothing else: counts first, the naming pass only on a mismatch.
    if !(log_whole && gens_whole) {
        report.skipped(
            "the deadline, history and idempotency indexes",
            "the transactions or the generations",
        );
    } else {
        let indexes = guarded(|| {
            report.checked.deadlines = deadlines.len()?;
            if report.checked.deadlines != report.checked.running {
                check_deadlines(&mut report, &deadlines, &gens)?;
            }
            report.checked.history_entries = history.table.len()?;
            if report.checked.history_entries != links.history_entries {
                check_history(&mut report, &history, &txns, &gens, links.history_entries)?;
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
            Ok(())
        });
        pass(&mut report, "(the indexes)", || None, indexes)?;
    }
    Ok((report, pages))
}

/// The tables every pass reads.
struct Tables<'a> {
    txns: &'a ReadOnlyTable<u64, &'static [u8]>,
    gens: &'a ReadOnlyTable<&'static str, &'static [u8]>,
    workspaces: &'a ReadOnlyTable<&'static str, &'static [u8]>,
    idem: &'a ReadOnlyTable<&'static str, u64>,
    history: &'a HistoryIndex<'a, ReadOnlyTable<(&'static str, u8, u64), ()>>,
    deadlines: &'a ReadOnlyTable<(u64, &'static str), ()>,
    refund_lots: &'a RefundLots<'a>,
}

/// Which parts a pass read in full.
struct Whole {
    log: bool,
    gens: bool,
    workspaces: bool,
    grants: bool,
}

/// One pass: the log, the generations and the workspace records, with the per-workspace
/// checks for the workspaces of `page`, and (in the `first` pass only) the checks that need
/// no state per workspace.
fn check_page(
    report: &mut AuditReport,
    rtx: &ReadTransaction,
    page: &Page,
    first: bool,
    links: &mut Links,
    open_lots: &mut OpenLots,
    t: &Tables<'_>,
) -> Result<Whole, Error> {
    let mut accs: HashMap<String, Acc> = HashMap::new();
    // The grant lots of the page, replayed against the log below (see `grants`).
    let mut grant_audit = match guarded(|| GrantAudit::load(rtx, report, page)) {
        Ok(loaded) => Some(loaded?),
        Err(detail) => {
            report.unreadable("grants", None, detail);
            None
        }
    };
    report.checked.grant_lots += grant_audit.as_ref().map_or(0, |g| g.lots);

    // 1. The log: checksums, the chain, dense ids, monotonic time, balance arithmetic, the
    //    links from each Usage and Refund to its generation, and each entry's history and
    //    idempotency index entries.
    let (mut prev_id, mut prev_crc, mut prev_at) = (0u64, 0u32, 0u64);
    let log = guarded(|| {
        for entry in t.txns.iter()? {
            let (k, v) = entry?;
            let id = k.value();
            if !first {
                // Everything but the page's own sums was checked (and reported) in the first
                // pass; a record of another page is skipped on its workspace alone.
                if !codec::txn_workspace(v.value()).is_some_and(|ws| page.contains(ws)) {
                    continue;
                }
                if let Ok(mut rec) = tables::decode_txn(id, v.value()) {
                    if page.contains(&rec.workspace) {
                        rec.id = id;
                        accumulate(report, &mut accs, &rec);
                        if let Some(g) = grant_audit.as_mut() {
                            g.on_txn(report, &rec);
                        }
                    }
                }
                continue;
            }
            report.checked.transactions += 1;
            let this_crc = codec::record_crc(v.value());
            let decoded = tables::decode_txn(id, v.value());
            if id != prev_id + 1 {
                report.add(
                    Invariant::IdsNotDense,
                    format!("transaction #{id} follows #{prev_id}"),
                    vec![prev_id, id],
                    None,
                    None,
                );
            }
            let mut rec: TxnRecord = match decoded {
                Ok(r) => r,
                Err(e) => {
                    report.add(Invariant::Corruption, damaged(&e), vec![id], None, None);
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
            if page.contains(&rec.workspace) {
                accumulate(report, &mut accs, &rec);
            }
            check_txn(report, links, &rec, t.gens, t.idem, t.history)?;
            t.refund_lots.check(report, &rec, t.gens)?;
            if let Some(g) = grant_audit
                .as_mut()
                .filter(|_| page.contains(&rec.workspace))
            {
                g.on_txn(report, &rec);
            }
        }
        Ok(())
    });
    let last_txn = prev_id;
    let log_whole = pass(
        report,
        "transactions",
        || (last_txn > 0).then(|| format!("#{last_txn}")),
        log,
    )?;

    // 2. Generations: running ones have their deadline entry; count what the log must match.
    let mut running_by_ws: HashMap<String, (u64, u128)> = HashMap::new();
    let mut refunded = 0u64;
    let mut last_gen: Option<String> = None;
    let generations = guarded(|| {
        for entry in t.gens.iter()? {
            let (k, v) = entry?;
            let id = k.value();
            let decoded = tables::decode_generation(id, v.value());
            if !first {
                if let Ok(g) = decoded {
                    if g.state == GenState::Running && page.contains(&g.workspace) {
                        let r = running_by_ws.entry(g.workspace).or_default();
                        r.0 += 1;
                        r.1 += u128::from(g.cost_credits);
                    }
                }
                continue;
            }
            report.checked.generations += 1;
            last_gen = Some(id.to_string());
            let g = match decoded {
                Ok(g) => g,
                Err(e) => {
                    report.add(Invariant::Corruption, damaged(&e), vec![], Some(id), None);
                    continue;
                }
            };
            match g.state {
                GenState::Running => {
                    report.checked.running += 1;
                    if page.contains(&g.workspace) {
                        let r = running_by_ws.entry(g.workspace.clone()).or_default();
                        r.0 += 1;
                        r.1 += u128::from(g.cost_credits);
                    }
                    if t.deadlines.get((g.deadline_ms, g.id.as_str()))?.is_none() {
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
        Ok(())
    });
    let gens_whole = pass(
        report,
        "generations",
        || last_gen.map(|g| format!("`{g}`")),
        generations,
    )?;
    if !first {
        // The links and counts were checked in the first pass.
    } else if !(log_whole && gens_whole) {
        report.skipped(
            "links between generations and their Usage and Refund",
            "the transactions or the generations",
        );
    } else if links.usages != report.checked.generations || links.refunds != refunded {
        // Some generation lacks its Usage or its Refund: find which.
        for entry in t.gens.iter()? {
            let (k, v) = entry?;
            if let Ok(g) = tables::decode_generation(k.value(), v.value()) {
                check_generation(report, &g, t.txns);
            }
        }
    }

    // 3. The page's workspace records against the sums of their transactions.
    let mut whole = Whole {
        log: log_whole,
        gens: gens_whole,
        workspaces: false,
        grants: false,
    };
    if !(log_whole && gens_whole) {
        report.skipped("workspace totals", "the transactions or the generations");
        return Ok(whole);
    }
    let mut last_ws: Option<String> = None;
    let mut balances: HashMap<String, u64> = HashMap::new();
    let from = page
        .after
        .as_deref()
        .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let ws_pass = guarded(|| {
        for entry in t
            .workspaces
            .range::<&str>((from, std::ops::Bound::Unbounded))?
        {
            let (k, v) = entry?;
            let ws = k.value();
            if page.is_past(ws) {
                break;
            }
            report.checked.workspaces += 1;
            last_ws = Some(ws.to_string());
            let stored: WorkspaceRecord = match codec::decode("workspaces", &ws, v.value()) {
                Ok(r) => r,
                Err(e) => {
                    report.add(Invariant::Corruption, damaged(&e), vec![], None, Some(ws));
                    accs.remove(ws);
                    continue;
                }
            };
            balances.insert(ws.to_string(), stored.balance_credits);
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
            let running = running_by_ws.remove(ws).unwrap_or((0, 0));
            let differences = totals_differences(&stored, &acc, running);
            if !differences.is_empty() {
                report.add(
                    Invariant::WorkspaceTotals,
                    format!("workspace record disagrees: {}", differences.join("; ")),
                    vec![acc.last_txn],
                    None,
                    Some(ws),
                );
            }
        }
        Ok(())
    });
    whole.workspaces = pass(
        report,
        "workspaces",
        || last_ws.map(|w| format!("`{w}`")),
        ws_pass,
    )?;
    if whole.workspaces {
        for (ws, acc) in accs {
            report.add(
                Invariant::WorkspaceTotals,
                "transactions for a workspace with no record".into(),
                vec![acc.last_txn],
                None,
                Some(&ws),
            );
        }
        // The grants against the whole log and every balance.
        if let Some(g) = grant_audit.take() {
            let grants_pass = guarded(|| g.finish(report, rtx, &balances, open_lots));
            whole.grants = pass(report, "grants", || None, grants_pass)?;
        }
    }
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Credit, Ledger, ManualClock, Options, RefundReason, StartGeneration};
    use redb::ReadableDatabase;

    const T0_MS: u64 = 1_700_000_000_000;
    const HOUR_MS: u64 = 60 * 60 * 1000;

    /// Five workspaces, each with a top-up, a grant that expires during a generation of its
    /// own (so that the refund makes a grace lot), a completed, a failed and a running
    /// generation. Closed, then opened with redb directly to run the audit.
    fn five_workspaces() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.redb");
        let clock = ManualClock::new(T0_MS);
        let options = Options::default().clock(clock.clone()).journal(false);
        let ledger = Ledger::open_with(&path, options).unwrap();
        for w in ["ws-a", "ws-b", "ws-c", "ws-d", "ws-e"] {
            ledger
                .credit(Credit::purchase(w, 100, format!("order-{w}")))
                .unwrap();
            ledger
                .credit(
                    Credit::grant(w, 10, format!("trial-{w}"))
                        .priority(10)
                        .expires_at_ms(T0_MS + HOUR_MS),
                )
                .unwrap();
        }
        for (n, w) in ["ws-a", "ws-b", "ws-c", "ws-d", "ws-e"].iter().enumerate() {
            for g in ["done", "failed", "running"] {
                let id = format!("{g}-{n}");
                ledger
                    .start_generation(StartGeneration::new(&id, *w, "Quick Video", 12))
                    .unwrap();
            }
        }
        clock.set_ms(T0_MS + 2 * HOUR_MS);
        for n in 0..5 {
            ledger.complete_generation(&format!("done-{n}")).unwrap();
            ledger
                .fail_generation(
                    &format!("failed-{n}"),
                    RefundReason::ModelFailure,
                    "no frames",
                )
                .unwrap();
        }
        drop(ledger);
        (dir, path)
    }

    /// The violations as a sorted list, to compare reports whose passes found them in
    /// another order.
    fn found(report: &AuditReport) -> Vec<(Invariant, String, Option<String>)> {
        let mut v: Vec<_> = report
            .violations
            .iter()
            .map(|v| (v.invariant, v.detail.clone(), v.workspace.clone()))
            .collect();
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    }

    fn audit(path: &std::path::Path, page_workspaces: usize) -> (AuditReport, u64) {
        let db = redb::Database::open(path).unwrap();
        let rtx = db.begin_read().unwrap();
        verify_in_pages(&rtx, page_workspaces).unwrap()
    }

    /// The memory design: the audit holds one page of workspaces at a time, and the pages
    /// see every workspace exactly once, so a paged audit reports what a one-page audit does.
    #[test]
    fn the_audit_checks_workspaces_in_pages_of_a_bounded_size() {
        let (_dir, path) = five_workspaces();
        let (whole, one) = audit(&path, usize::MAX);
        assert_eq!(one, 1);
        assert!(whole.is_clean(), "{:#?}", whole.violations);
        assert_eq!(whole.checked.workspaces, 5);
        for (size, pages) in [(1, 5), (2, 3), (4, 2), (5, 1), (6, 1)] {
            let (paged, n) = audit(&path, size);
            assert_eq!(n, pages, "pages of {size}");
            assert_eq!(paged, whole, "pages of {size}");
        }
        assert_eq!(
            (AUDIT_PAGE_WORKSPACES, audit(&path, AUDIT_PAGE_WORKSPACES).1),
            (8_192, 1)
        );
    }

    /// Damage in workspaces of every page is found by the paged audit as by a one-page one:
    /// a record whose balance was changed (first page), a workspace record deleted (its
    /// transactions have no record, second page) and a grant lot deleted (last page).
    #[test]
    fn a_paged_audit_finds_damage_in_every_page() {
        let (_dir, path) = five_workspaces();
        {
            let db = redb::Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(tables::WORKSPACES).unwrap();
                let bytes = t.get("ws-a").unwrap().unwrap().value().to_vec();
                let mut rec: WorkspaceRecord =
                    codec::decode("workspaces", &"ws-a", &bytes).unwrap();
                rec.balance_credits += 1;
                t.insert("ws-a", codec::encode(&rec).as_slice()).unwrap();
                t.remove("ws-c").unwrap();
                let mut g = w.open_table(tables::GRANTS).unwrap();
                assert!(g.remove(("ws-e", "trial-ws-e", 0)).unwrap().is_some());
            }
            w.commit().unwrap();
        }
        let (whole, _) = audit(&path, usize::MAX);
        let workspaces: Vec<_> = whole
            .violations
            .iter()
            .filter_map(|v| v.workspace.as_deref())
            .collect();
        for ws in ["ws-a", "ws-c", "ws-e"] {
            assert!(workspaces.contains(&ws), "{ws}: {:#?}", whole.violations);
        }
        for size in [1, 2, 3] {
            let (paged, _) = audit(&path, size);
            assert_eq!(
                paged.violation_count, whole.violation_count,
                "pages of {size}"
            );
            assert_eq!(found(&paged), found(&whole), "pages of {size}");
            assert_eq!(paged.checked, whole.checked, "pages of {size}");
        }
    }
}
