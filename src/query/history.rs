//! History pages: filtered, newest first, keyset-paged.
//!
//! The `workspace_history` index files each transaction once, under (workspace, kind, id),
//! and a finished generation moves no key (see [`Category`]). A filter picks the kind ranges
//! it needs; a page merges them by id, starting where the cursor left off, and reads the
//! records from the log (see [`LogWalker`]). A status filter is answered without keys that
//! move:
//!
//! - every kind but Usage is always Completed;
//! - **Failed** Usages are the `UsageFailed` markers a refund files: a range of their own;
//! - **Pending** and **Completed** Usages are the Usage range minus those markers (stepped
//!   over in the merge, without reading the log), told apart by their generation's state,
//!   which the page reads for every Usage it shows anyway. Pending ones are few (the running
//!   generations) and the newest: a newest-first page from the top stops as soon as it has
//!   seen as many as the workspace's running count, so it reads about as many Usages as it
//!   returns.
//!
//! A Refund, the sparse category pages are often filtered to, is one log read: its record
//! holds the grant lots it gave back (schema 6), which otherwise take a generation read (or
//! an `allocations` read), in a table many times the cache at a million generations. A
//! Refund written before schema 6 is read the older way.
//!
//! So a page's cost follows the entries it returns, plus those a `feature` filter or a
//! status skips, which [`HISTORY_SCAN_BUDGET`] bounds, at entry 10 and at entry 10 million
//! alike.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};
use serde::Serialize;

use super::{id_range, view_with, TransactionView};
use crate::error::{Error, InvalidInput};
use crate::model::limits::{HISTORY_SCAN_BUDGET, MAX_FEATURE_BYTES, MAX_PAGE_LIMIT};
use crate::model::records::{GenState, TxnRecord};
use crate::model::{validate, Status, TxnKind};
use crate::storage::tables::{self, Category};

/// Which transactions a history page shows. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only these kinds (the "Transaction Type" filter).
    pub kinds: Vec<TxnKind>,
    /// Only these statuses.
    pub statuses: Vec<Status>,
    /// Only transactions of this feature ("Quick Video").
    pub feature: Option<String>,
    /// Only transactions at or after this time.
    pub since_ms: Option<u64>,
    /// Only transactions at or before this time.
    pub until_ms: Option<u64>,
}

impl HistoryFilter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only these kinds.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = TxnKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Only these statuses.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = Status>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Only this feature.
    pub fn feature(mut self, feature: impl Into<String>) -> Self {
        self.feature = Some(feature.into());
        self
    }

    /// Only within this time range (inclusive).
    pub fn between(mut self, since_ms: Option<u64>, until_ms: Option<u64>) -> Self {
        self.since_ms = since_ms;
        self.until_ms = until_ms;
        self
    }

    fn wants_kind(&self, kind: TxnKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    fn wants_status(&self, status: Status) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&status)
    }

    /// The index ranges a page reads: the categories whose ids it merges, and those whose ids
    /// it steps over (the failed Usages, when the filter wants Usages but not failed ones).
    /// Each range holds a superset of what it is read for; the page checks every entry's
    /// status before it shows it.
    fn ranges(&self) -> (Vec<Category>, Vec<Category>) {
        let (mut merged, mut skipped) = (Vec::new(), Vec::new());
        for kind in TxnKind::ALL {
            if !self.wants_kind(kind) {
                continue;
            }
            if kind != TxnKind::Usage {
                if self.wants_status(Status::Completed) {
                    merged.push(Category::of(kind));
                }
                continue;
            }
            let pending = self.wants_status(Status::Pending);
            let completed = self.wants_status(Status::Completed);
            let failed = self.wants_status(Status::Failed);
            if pending || completed {
                merged.push(Category::Usage);
            }
            // A file from before schema 4, until its first write, files succeeded Usages
            // here and failed ones only under their marker; a current one has neither.
            if completed {
                merged.push(Category::LegacyUsageCompleted);
            }
            if failed {
                merged.push(Category::UsageFailed);
            } else if pending || completed {
                skipped.push(Category::UsageFailed);
            }
        }
        merged.sort();
        (merged, skipped)
    }

    /// Only Pending Usages: the filter whose page can stop at the workspace's running count.
    fn pending_only(&self) -> bool {
        self.wants_kind(TxnKind::Usage)
            && self.wants_status(Status::Pending)
            && !self.wants_status(Status::Completed)
            && !self.wants_status(Status::Failed)
    }
}

/// Which page to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Most entries to return, 1..=[`MAX_PAGE_LIMIT`]. Default 50.
    pub limit: u32,
    /// Where the previous page stopped; `None` for the first page.
    pub cursor: Option<String>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            limit: 50,
            cursor: None,
            oldest_first: false,
        }
    }
}

impl PageRequest {
    /// The first page of `limit` entries, newest first.
    pub fn first(limit: u32) -> Self {
        PageRequest {
            limit,
            ..Self::default()
        }
    }

    /// The page after `cursor`.
    pub fn after(limit: u32, cursor: impl Into<String>) -> Self {
        PageRequest {
            limit,
            cursor: Some(cursor.into()),
            ..Self::default()
        }
    }
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryPage {
    /// The entries, in the requested order.
    pub entries: Vec<TransactionView>,
    /// Pass this in the next [`PageRequest`] to continue; `None` at the end. A page can be
    /// shorter than the limit and still have a cursor, when a `feature` or status filter made
    /// it skip more than [`HISTORY_SCAN_BUDGET`] entries.
    pub next_cursor: Option<String>,
}

/// Transaction ids from one category's range, in page order.
type IdIter<'a> = Box<dyn Iterator<Item = Result<u64, Error>> + 'a>;

/// One category's range of a page, with the id it yields next.
struct Stream<'a> {
    head: Option<u64>,
    rest: IdIter<'a>,
}

impl<'a> Stream<'a> {
    fn open(
        index: &'a ReadOnlyTable<(&'static str, u8, u64), ()>,
        workspace: &'a str,
        cat: Category,
        (lo, hi): (u64, u64),
        oldest_first: bool,
    ) -> Result<Self, Error> {
        let c = cat as u8;
        let range = index.range((workspace, c, lo)..=(workspace, c, hi))?;
        let ids = range.map(|e| e.map(|(k, _)| k.value().2).map_err(Error::from));
        let mut rest: IdIter<'a> = if oldest_first {
            Box::new(ids)
        } else {
            Box::new(ids.rev())
        };
        let head = rest.next().transpose()?;
        Ok(Stream { head, rest })
    }

    fn advance(&mut self) -> Result<(), Error> {
        self.head = self.rest.next().transpose()?;
        Ok(())
    }
}

/// Log entries in page order, as a range of the `transactions` table.
type LogIter<'a> = Box<
    dyn Iterator<
            Item = Result<
                (
                    redb::AccessGuard<'a, u64>,
                    redb::AccessGuard<'a, &'static [u8]>,
                ),
                redb::StorageError,
            >,
        > + 'a,
>;

/// The widest gap between two entries of a page that [`LogWalker`] steps over rather than
/// starting a new range. Stepping over an entry costs a small fraction of a B-tree descent.
const WALK_MAX_SKIP: u64 = 32;

/// Reads the log entries of a page. In a workspace that writes most of the log, a page's ids
/// come close together (a Refund filter picks about one entry in four of a typical history),
/// so stepping one range iterator through the entries in between is cheaper than a B-tree
/// descent per entry (measured on the first page of 50 Refunds among 1M transactions of one
/// workspace: 37.5 µs, against 44 µs with a new range per entry and 41 µs with a point read
/// per entry). Among many workspaces the entries of one are far apart (at 1,000 workspaces,
/// about a thousand ids), and there a point read is one descent where a new range is two
/// (one for each end). So an entry far from the last one is a point read, and a range starts
/// only where two entries in a row are close. Ids are dense, so the gap to the next wanted
/// entry is known before stepping; a gap wider than [`WALK_MAX_SKIP`] is far.
struct LogWalker<'t> {
    txns: &'t ReadOnlyTable<u64, &'static [u8]>,
    newest_first: bool,
    /// The iterator and the id it yields next.
    at: Option<(u64, LogIter<'t>)>,
    /// The id of the last entry read with a point read, when no iterator follows it.
    last_point: Option<u64>,
    /// Entries read with a point read because they were far from the last one.
    point_reads: u32,
    /// Entries found out of place (a hole in the log) and read with a point read instead.
    holes: u32,
}

impl<'t> LogWalker<'t> {
    fn new(txns: &'t ReadOnlyTable<u64, &'static [u8]>, newest_first: bool) -> Self {
        LogWalker {
            txns,
            newest_first,
            at: None,
            last_point: None,
            point_reads: 0,
            holes: 0,
        }
    }

    /// The record of transaction `id`, or `None` when the log lacks it.
    fn read(&mut self, id: u64) -> Result<Option<TxnRecord>, Error> {
        let skip = match &self.at {
            Some((next, _)) if self.newest_first && *next >= id => Some(*next - id),
            Some((next, _)) if !self.newest_first && *next <= id => Some(id - *next),
            _ => None,
        };
        let near_point = self
            .last_point
            .take()
            .is_some_and(|p| p.abs_diff(id) <= WALK_MAX_SKIP);
        let mut iter: LogIter<'t> = match (skip, self.at.take()) {
            (Some(skip), Some((_, mut iter))) if skip <= WALK_MAX_SKIP => {
                // Step over the `skip` entries before `id` (`nth(k)` consumes k + 1 of them); the
                // next one is `id` if the log is dense.
                if skip > 0 {
                    iter.nth(usize::try_from(skip - 1).unwrap_or(usize::MAX))
                        .transpose()?;
                }
                iter
            }
            _ if !near_point => {
                self.point_reads += 1;
                self.last_point = Some(id);
                return tables::get_txn(self.txns, id);
            }
            _ if self.newest_first => Box::new(self.txns.range(..=id)?.rev()),
            _ => Box::new(self.txns.range(id..)?),
        };
        let Some((k, v)) = iter.next().transpose()? else {
            return Ok(None);
        };
        if k.value() != id {
            // Not dense: a damaged log. A point read says whether `id` is there at all.
            self.holes += 1;
            return tables::get_txn(self.txns, id);
        }
        let rec = tables::decode_txn(id, v.value())?;
        let next = if self.newest_first {
            id.checked_sub(1)
        } else {
            id.checked_add(1)
        };
        self.at = next.map(|n| (n, iter));
        Ok(Some(rec))
    }
}

fn encode_cursor(oldest_first: bool, id: u64) -> String {
    format!("{}{id:x}", if oldest_first { "o" } else { "n" })
}

fn decode_cursor(cursor: &str, oldest_first: bool) -> Result<u64, Error> {
    let bad = || InvalidInput::BadCursor {
        cursor: cursor.chars().take(64).collect(),
    };
    let want = if oldest_first { 'o' } else { 'n' };
    let mut chars = cursor.chars();
    if chars.next() != Some(want) {
        return Err(bad().into());
    }
    let rest = chars.as_str();
    if rest.is_empty() || rest.len() > 16 {
        return Err(bad().into());
    }
    u64::from_str_radix(rest, 16).map_err(|_| bad().into())
}

pub(crate) fn history(
    rtx: &ReadTransaction,
    workspace: &str,
    filter: &HistoryFilter,
    page: &PageRequest,
) -> Result<HistoryPage, Error> {
    validate::limit(
        "page limit",
        u64::from(page.limit),
        u64::from(MAX_PAGE_LIMIT),
    )?;
    if let Some(f) = &filter.feature {
        validate::text("feature", f, MAX_FEATURE_BYTES, false)?;
    }
    if let (Some(since_ms), Some(until_ms)) = (filter.since_ms, filter.until_ms) {
        if since_ms > until_ms {
            return Err(InvalidInput::EmptyWindow { since_ms, until_ms }.into());
        }
    }
    let txns = rtx.open_table(tables::TRANSACTIONS)?;
    let gens = rtx.open_table(tables::GENERATIONS)?;
    let allocs = tables::open_optional(rtx, tables::ALLOCATIONS)?;
    let index = rtx.open_table(tables::HISTORY)?;
    let mut log = LogWalker::new(&txns, !page.oldest_first);
    let ws = tables::get_workspace(&rtx.open_table(tables::WORKSPACES)?, workspace)?.ok_or_else(
        || Error::UnknownWorkspace {
            workspace: workspace.to_string(),
        },
    )?;

    let (mut lo, mut hi) = id_range(&txns, filter.since_ms, filter.until_ms)?;
    if let Some(c) = &page.cursor {
        let at = decode_cursor(c, page.oldest_first)?;
        if page.oldest_first {
            lo = lo.max(at.saturating_add(1));
        } else {
            hi = hi.min(at.saturating_sub(1));
        }
    }
    let empty = HistoryPage {
        entries: Vec::new(),
        next_cursor: None,
    };
    if lo > hi {
        return Ok(empty);
    }

    let (merged, skipped) = filter.ranges();
    let open = |cats: Vec<Category>| -> Result<Vec<Stream<'_>>, Error> {
        cats.into_iter()
            .map(|c| Stream::open(&index, workspace, c, (lo, hi), page.oldest_first))
            .collect()
    };
    let (mut merged, mut skipped) = (open(merged)?, open(skipped)?);
    // `a` comes before `b` in page order.
    let before = |a: u64, b: u64| if page.oldest_first { a < b } else { a > b };
    // A newest-first Pending page from the top sees every running generation of the
    // workspace, newest first, and can stop at the last one.
    let mut running_left = None;
    if filter.pending_only() && !page.oldest_first {
        let top = txns.last()?.is_none_or(|(k, _)| hi >= k.value());
        running_left = top.then_some(ws.running_generations);
    }

    let mut entries = Vec::with_capacity(page.limit as usize);
    let mut examined = 0u32;
    let mut last_examined = None;
    loop {
        let next = merged
            .iter()
            .filter_map(|s| s.head)
            .reduce(|a, b| if before(b, a) { b } else { a });
        let (Some(id), false) = (next, running_left == Some(0)) else {
            return Ok(HistoryPage {
                entries,
                next_cursor: None,
            });
        };
        if entries.len() >= page.limit as usize || examined >= HISTORY_SCAN_BUDGET {
            break;
        }
        // The same id in two ranges (a failed Usage, under Usage and its marker) is one entry.
        for s in merged.iter_mut().filter(|s| s.head == Some(id)) {
            s.advance()?;
        }
        examined += 1;
        last_examined = Some(id);
        let mut excluded = false;
        for s in skipped.iter_mut() {
            while let Some(h) = s.head.filter(|h| !before(id, *h)) {
                excluded |= h == id;
                s.advance()?;
            }
        }
        if excluded {
            continue;
        }
        let rec = log.read(id)?.ok_or_else(|| Error::Corruption {
            table: "workspace_history",
            key: format!("({workspace}, {id})"),
            detail: "points at a missing transaction".into(),
        })?;
        let gen = match (&rec.generation_id, rec.kind) {
            (Some(g), TxnKind::Usage) => tables::get_generation(&gens, g)?,
            _ => None,
        };
        let status = match (rec.kind, gen.as_ref().map(|g| g.state)) {
            (TxnKind::Usage, Some(state)) => state.usage_status(),
            (TxnKind::Usage, None) => Status::Pending,
            _ => Status::Completed,
        };
        if let (Some(left), Some(GenState::Running)) =
            (&mut running_left, gen.as_ref().map(|g| g.state))
        {
            *left = left.saturating_sub(1);
        }
        if !filter.wants_status(status) || filter.feature.as_deref().is_some_and(|f| f != rec.title)
        {
            continue;
        }
        entries.push(view_with(&gens, gen.as_ref(), allocs.as_ref(), rec)?);
    }
    Ok(HistoryPage {
        entries,
        next_cursor: last_examined.map(|id| encode_cursor(page.oldest_first, id)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec;
    use redb::ReadableDatabase;

    fn record(id: u64) -> TxnRecord {
        TxnRecord {
            id,
            at_ms: id * 10,
            workspace: "ws".into(),
            kind: TxnKind::Grant,
            amount_credits: id,
            debit: false,
            balance_before_credits: 0,
            balance_after_credits: id,
            title: "Grant".into(),
            generation_id: None,
            refund: None,
            idempotency_key: None,
            memo: None,
            prev_crc: 0,
            refund_lots: None,
        }
    }

    /// The walker steps, jumps, and on a log with a hole (a damaged file) still finds exactly
    /// the entries that are there.
    #[test]
    fn log_walker_steps_jumps_and_survives_a_hole() {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let wtx = db.begin_write().unwrap();
        {
            let mut t = wtx.open_table(tables::TRANSACTIONS).unwrap();
            for id in (1..=200).filter(|id| *id != 150) {
                t.insert(id, codec::encode(&record(id)).as_slice()).unwrap();
            }
        }
        wtx.commit().unwrap();
        let rtx = db.begin_read().unwrap();
        let txns = rtx.open_table(tables::TRANSACTIONS).unwrap();
        let wanted = [200, 199, 190, 152, 151, 150, 149, 148, 100, 99, 1];
        for newest_first in [true, false] {
            let mut ids = wanted.to_vec();
            if !newest_first {
                ids.reverse();
            }
            let mut walker = LogWalker::new(&txns, newest_first);
            for id in ids {
                let got = walker.read(id).unwrap();
                if id == 150 {
                    assert_eq!(got, None);
                } else {
                    assert_eq!(
                        got,
                        Some(record(id)),
                        "id {id}, newest first {newest_first}"
                    );
                }
            }
            // Only the hole was out of place: every other entry was where the walk said.
            assert_eq!(walker.holes, 1, "newest first {newest_first}");
            // The far entries were point reads; a close one after them started a range.
            assert_eq!(walker.point_reads, 5, "newest first {newest_first}");
            assert_eq!(LogWalker::new(&txns, newest_first).read(201).unwrap(), None);
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for id in [1, 255, u64::MAX] {
            assert_eq!(
                decode_cursor(&encode_cursor(false, id), false).ok(),
                Some(id)
            );
            assert_eq!(decode_cursor(&encode_cursor(true, id), true).ok(), Some(id));
            assert!(decode_cursor(&encode_cursor(true, id), false).is_err());
        }
        for bad in ["", "n", "x12", "nzz", "n11111111111111111", "🙂"] {
            assert!(decode_cursor(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_pick_ranges() {
        use Category::*;
        let ranges = |f: HistoryFilter| f.ranges();
        let refunds = HistoryFilter::all().kinds([TxnKind::Refund]);
        assert_eq!(ranges(refunds), (vec![Refund], vec![]));
        // Failed: the markers alone.
        let failed = HistoryFilter::all().statuses([Status::Failed]);
        assert_eq!(ranges(failed), (vec![UsageFailed], vec![]));
        // Pending: the Usages, stepping over the failed ones, and nothing else can be Pending.
        let pending = HistoryFilter::all().statuses([Status::Pending]);
        assert!(pending.pending_only());
        assert_eq!(ranges(pending), (vec![Usage], vec![UsageFailed]));
        let usage_done = HistoryFilter::all()
            .kinds([TxnKind::Usage])
            .statuses([Status::Completed, Status::Failed]);
        assert!(!usage_done.pending_only());
        assert_eq!(
            ranges(usage_done),
            (vec![Usage, LegacyUsageCompleted, UsageFailed], vec![])
        );
        let completed = HistoryFilter::all().statuses([Status::Completed]);
        let (merged, skipped) = ranges(completed);
        assert_eq!(skipped, vec![UsageFailed]);
        assert_eq!(merged.len(), TxnKind::ALL.len() + 1);
        assert!(!merged.contains(&UsageFailed));
        let (merged, skipped) = ranges(HistoryFilter::all());
        assert_eq!((merged.len(), skipped.len()), (TxnKind::ALL.len() + 2, 0));
        let none = HistoryFilter::all()
            .kinds([TxnKind::Refund])
            .statuses([Status::Pending]);
        assert_eq!(ranges(none), (vec![], vec![]));
    }
}
