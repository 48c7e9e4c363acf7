//! The redb tables and typed access to them.
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | format facts (the schema version) |
//! | `workspaces` | workspace id | [`WorkspaceRecord`] |
//! | `transactions` | txn id | [`TxnRecord`], append-only |
//! | `workspace_history` | (workspace, [`Category`], txn id) | `()` |
//! | `generations` | generation id | [`GenerationRecord`] |
//! | `deadlines` | (deadline ms, generation id) | `()`, running generations only |
//! | `idempotency` | key | txn id |
//! | `clock_notes` | refund txn id | what an untrusted clock read (ms) |
//! | `consumers` | consumer name | the last txn id it acked (schema 2) |
//! | `alerts` | workspace id | balance alert threshold in credits (schema 2) |
//! | `grants` | (workspace, grant id, lot) | [`GrantRecord`] (schema 3) |
//! | `grant_order` | (workspace, priority, expires or MAX, effective or 0, grant id, lot) | `()`, open lots with credits left |
//! | `grant_expiries` | (expires ms, workspace, grant id, lot) | `()`, open lots with an expiry |
//! | `allocations` | txn id | [`AllocationRecord`](crate::model::records::AllocationRecord), for a transaction whose generation record does not hold it (schema 4) |
//! | `grant_books` | workspace id | [`GrantBook`](crate::model::records::GrantBook) |
//! | `grant_notices` | (notice ms, workspace, grant id) | the grant's expiry ms: a `GrantExpiring` notice not yet written (schema 4) |
//!
//! `grant_order` is sorted in drawdown order, so the first spendable grant of a workspace is
//! the first entry of one short range read; `grant_expiries` makes the sweep of expired grants
//! O(expired), like `deadlines` for generations; `grant_notices` does the same for the
//! `GrantExpiring` notices, keyed by the time each is due.
//!
//! A Refund's log record holds the grant lots it gave back (schema 6, see
//! [`TxnRecord::refund_lots`]), so a page of Refunds reads one log record per Refund, without
//! the generation read or the `allocations` read that say the same.
//!
//! `workspace_history` files each transaction once, under its kind, so a filter such as
//! "Refunds" is a range scan of exactly the matching entries, and unfiltered history is a merge
//! of the category ranges. A finished generation moves no key: the Usage of a refunded one
//! gets a `UsageFailed` marker, and the other statuses come from the generations (see
//! [`Category`]).

use redb::{ReadableTable, TableDefinition};

use crate::error::Error;
use crate::model::records::{
    AllocationEntry, AllocationRecord, GenState, GenerationRecord, GenerationRecordV3, GrantBook,
    GrantRecord, TxnRecord, TxnRecordV5, WorkspaceRecord,
};
use crate::model::TxnKind;
use crate::storage::codec;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const WORKSPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("workspaces");
pub(crate) const TRANSACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("transactions");
pub(crate) const HISTORY: TableDefinition<(&str, u8, u64), ()> =
    TableDefinition::new("workspace_history");
pub(crate) const GENERATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("generations");
pub(crate) const DEADLINES: TableDefinition<(u64, &str), ()> = TableDefinition::new("deadlines");
pub(crate) const IDEMPOTENCY: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
/// Refund txn id -> what the clock read when that refund was written with a clock the ledger
/// did not trust (far behind the log, or far ahead of the wall clock); the refund itself is
/// stamped with the log's time. Created by the first such refund; absent on most files.
pub(crate) const CLOCK_NOTES: TableDefinition<u64, u64> = TableDefinition::new("clock_notes");
pub(crate) const CONSUMERS: TableDefinition<&str, u64> = TableDefinition::new("consumers");
pub(crate) const ALERTS: TableDefinition<&str, u64> = TableDefinition::new("alerts");
pub(crate) const GRANTS: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("grants");
pub(crate) type OrderKey<'a> = (&'a str, u32, u64, u64, &'a str, u32);
pub(crate) const GRANT_ORDER: TableDefinition<OrderKey<'static>, ()> =
    TableDefinition::new("grant_order");
pub(crate) const GRANT_EXPIRIES: TableDefinition<(u64, &str, &str, u32), ()> =
    TableDefinition::new("grant_expiries");
pub(crate) const ALLOCATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("allocations");
pub(crate) const GRANT_BOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("grant_books");
/// (notice ms, workspace, grant id) -> the grant's expiry ms: the `GrantExpiring` notices
/// still to write, in the order they are due (see `engine::notify`). Created by the first
/// grant that gets an entry; its creation records schema 4.
pub(crate) type NoticeKey<'a> = (u64, &'a str, &'a str);
pub(crate) const GRANT_NOTICES: TableDefinition<NoticeKey<'static>, u64> =
    TableDefinition::new("grant_notices");
/// Schema 5's covering index of Refunds (refund txn id -> the Refund's record and the lots
/// it gave back). Schema 6 holds the lots in the Refund's own record instead, which costs a
/// refund no second row; the write that records schema 6 deletes this table.
pub(crate) const REFUND_PAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("refund_pages");

/// The `meta` key holding the schema version.
pub(crate) const META_SCHEMA_KEY: &str = "schema";
/// Schema 5's `meta` key for where `refund_pages` started; deleted with the table.
pub(crate) const META_REFUND_PAGES_FROM_KEY: &str = "refund_pages_from";
/// The `meta` key holding the first transaction id from which every Refund's record carries
/// the grant lots it gave back ([`TxnRecord::refund_lots`], a `u64`, schema 6). 1 in a file
/// created at schema 6; in an upgraded file, the next id when the upgrade was written (older
/// Refunds' lots are read from their `allocations` row or generation as before, so the
/// upgrade rewrites nothing).
pub(crate) const META_REFUND_LOTS_FROM_KEY: &str = "refund_lots_from";
/// The `meta` key holding the ledger's random id, which its journal entries carry.
pub(crate) const META_LEDGER_ID_KEY: &str = "ledger_id";
/// The `meta` key holding the sequence number of the last journal entry redb holds.
pub(crate) const META_JOURNAL_SEQ_KEY: &str = "journal_seq";
/// The `meta` key holding the open journal epoch, while one is open: its random id and the
/// sequence number of its first entry (two `u64`s). While it exists, the journal may hold
/// acknowledged writes the file does not (see `storage::journal`).
pub(crate) const META_JOURNAL_EPOCH_KEY: &str = "journal_epoch";
/// The schema version this build writes. Version 6 gives a Refund's log record the grant
/// lots it gave back ([`TxnRecord::refund_lots`], a trailing field every record of the
/// version has, so older records decode as the prefix they are: [`decode_txn`]) and the
/// `meta` key [`META_REFUND_LOTS_FROM_KEY`], and drops version 5's `refund_pages` table,
/// which held the same for a Refund in a second row. The first write to an older file that
/// appends a transaction records version 6 first, deleting `refund_pages` (and its `meta`
/// key) and recording the next transaction id as where the lots start; it rewrites nothing.
/// So a version 5 build, which cannot decode a record with the new field, refuses the file
/// once it has any. Version 5 added `refund_pages` the same way. Version 4 added the `grant_notices` table and the `GrantExpiring` notification
/// records; a file gets them, and records version 4, with the
/// first grant that has a notice to write (until version 6, whose record layout makes every
/// write that appends a transaction record the current version). Version 4 also stores a charge paid by one grant lot (the common
/// case) in its generation record (`GenerationRecord::single_allocation`) instead of an
/// `allocations` row, and writes no row for a refund that gives those credits back to the
/// same lot, so such a charge and its refund write no more tables than before grants: the
/// first generation record a write puts in an older file upgrades it the same way (older
/// generation records decode as they are). Version 4 also changed the `workspace_history`
/// layout: every Usage is filed once under `Usage` and never moves, and the Usage of a
/// refunded generation gets a `UsageFailed` marker beside it (see [`Category`]). The write
/// that records version 4 moves an older file's entries to the new layout
/// ([`migrate_history`]); every write that finishes a generation records it first, so no
/// finish writes the older layout, and reads take both. Version 3 added the grant tables (`grants`,
/// `grant_order`, `grant_expiries`, `allocations`, `grant_books`) and the Expiration and Void
/// records; the first write of money to an older file adds them (and the tables of version
/// 2) and records version 3, and each workspace's balance moves into a carried-over grant on
/// its first write (see [`GrantBook`](crate::model::records::GrantBook)). Version 2 added the `consumers` and `alerts` tables,
/// the `BalanceLow` notification records and the journal epoch record (and the journal's new
/// entry format); the first write to a version 1 file that needs the tables adds them and
/// records version 2. A version 1 file gets epoch records without that upgrade: no build that
/// writes version 1 is in use, and upgrading there rewrote pages of damaged files that redb
/// then panicked on twice.
pub(crate) const SCHEMA_VERSION: u8 = 6;

/// The first schema version with the `grant_notices` table.
pub(crate) const NOTICES_SCHEMA_VERSION: u8 = 4;

/// The first schema version whose Refund records carry their lots
/// ([`META_REFUND_LOTS_FROM_KEY`]).
pub(crate) const REFUND_LOTS_SCHEMA_VERSION: u8 = 6;

/// The first schema version with the `consumers` and `alerts` tables: a file at this
/// version or later has them (a batch of acks or alerts alone reads them there, before any
/// upgrade).
pub(crate) const FEED_SCHEMA_VERSION: u8 = 2;

/// The first schema version with the grant tables (and the `consumers` and `alerts` tables
/// of version 2): a file at this version or later has all of them.
pub(crate) const GRANTS_SCHEMA_VERSION: u8 = 3;

/// A history category. Every transaction is filed once, under its kind, when it is written,
/// and that entry never moves: a generation that finishes changes no key of its Usage (before
/// schema 4 a Usage moved between a Pending, a Completed and a Failed category, one removal
/// and one insertion in a leaf of the workspace's range at every finish). The status of a
/// Usage is its generation's state; history answers a status filter from the markers below
/// and the generations (see `query::history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Category {
    Purchase = 0,
    Grant = 1,
    /// Every Usage, whatever its status (before schema 4: the Pending ones).
    Usage = 2,
    /// Before schema 4: the succeeded Usages. Never written since; read so that an older
    /// file's history is right until its first write moves these entries to `Usage`.
    LegacyUsageCompleted = 3,
    /// A marker, not a transaction: the Usage of a refunded generation, filed by its refund.
    /// "Failed" is a sparse status, so it has this index of its own; the Usage's own entry
    /// stays under `Usage` (before schema 4 this was its only entry).
    UsageFailed = 4,
    Refund = 5,
    Adjustment = 6,
    BalanceLow = 7,
    Expiration = 8,
    Void = 9,
    GrantExpiring = 10,
}

impl Category {
    /// The category transactions of `kind` are filed under.
    pub fn of(kind: TxnKind) -> Category {
        match kind {
            TxnKind::Purchase => Category::Purchase,
            TxnKind::Grant => Category::Grant,
            TxnKind::Usage => Category::Usage,
            TxnKind::Refund => Category::Refund,
            TxnKind::Adjustment => Category::Adjustment,
            TxnKind::BalanceLow => Category::BalanceLow,
            TxnKind::Expiration => Category::Expiration,
            TxnKind::Void => Category::Void,
            TxnKind::GrantExpiring => Category::GrantExpiring,
        }
    }

    pub fn from_u8(v: u8) -> Option<Category> {
        [
            Category::Purchase,
            Category::Grant,
            Category::Usage,
            Category::LegacyUsageCompleted,
            Category::UsageFailed,
            Category::Refund,
            Category::Adjustment,
            Category::BalanceLow,
            Category::Expiration,
            Category::Void,
            Category::GrantExpiring,
        ]
        .get(usize::from(v))
        .copied()
    }
}

/// The history entries a transaction has in a file of `schema`: its kind's category, and for
/// the Usage of a refunded generation (`state`: the Usage's generation) the `UsageFailed`
/// marker. Before schema 4 a Usage had one entry, under its status.
pub(crate) fn history_entries(
    schema: u8,
    kind: TxnKind,
    state: Option<GenState>,
) -> (Category, Option<Category>) {
    if kind != TxnKind::Usage {
        return (Category::of(kind), None);
    }
    let refunded = matches!(state, Some(GenState::Refunded { .. }));
    if schema < HISTORY_MARKERS_SCHEMA {
        let legacy = match state {
            Some(GenState::Succeeded { .. }) => Category::LegacyUsageCompleted,
            _ if refunded => Category::UsageFailed,
            _ => Category::Usage,
        };
        return (legacy, None);
    }
    (Category::Usage, refunded.then_some(Category::UsageFailed))
}

/// The first schema whose history files every Usage once under `Usage`, with the
/// `UsageFailed` marker beside it for a refunded one.
pub(crate) const HISTORY_MARKERS_SCHEMA: u8 = 4;

/// Bring the history index of a file from before schema 4 to the current layout, in the
/// write that records the new schema: a succeeded Usage's entry moves from
/// `LegacyUsageCompleted` to `Usage`, and a failed Usage gets a `Usage` entry beside its
/// `UsageFailed` one (which stays, as the marker). One pass over the index, once per file.
pub(crate) fn migrate_history(
    index: &mut redb::Table<'_, (&'static str, u8, u64), ()>,
    from_schema: u8,
) -> Result<(), Error> {
    if from_schema >= HISTORY_MARKERS_SCHEMA {
        return Ok(());
    }
    let (completed, failed) = (
        Category::LegacyUsageCompleted as u8,
        Category::UsageFailed as u8,
    );
    let mut moved: Vec<(String, u8, u64)> = Vec::new();
    for entry in index.iter()? {
        let (k, _) = entry?;
        let (ws, cat, id) = k.value();
        if cat == completed || cat == failed {
            moved.push((ws.to_string(), cat, id));
        }
    }
    for (ws, cat, id) in moved {
        if cat == completed {
            index.remove((ws.as_str(), cat, id))?;
        }
        index.insert((ws.as_str(), Category::Usage as u8, id), ())?;
    }
    Ok(())
}

/// A table that a version 1 file lacks until its first write: `None` when it is not there.
pub(crate) fn open_optional<K: redb::Key + 'static, V: redb::Value + 'static>(
    rtx: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, Error> {
    match rtx.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn get_txn(
    table: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<TxnRecord>, Error> {
    match table.get(id)? {
        Some(v) => Ok(Some(decode_txn(id, v.value())?)),
        None => Ok(None),
    }
}

/// Decode a `transactions` record of any schema (one from before schema 6 has no
/// `refund_lots`).
pub(crate) fn decode_txn(id: u64, bytes: &[u8]) -> Result<TxnRecord, Error> {
    codec::decode_or_older::<TxnRecord, TxnRecordV5>("transactions", &id, bytes)
}

pub(crate) fn get_generation(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<GenerationRecord>, Error> {
    match table.get(id)? {
        Some(v) => Ok(Some(decode_generation(id, v.value())?)),
        None => Ok(None),
    }
}

/// Decode a `generations` record of any schema (a schema 3 one has no single allocation).
pub(crate) fn decode_generation(id: &str, bytes: &[u8]) -> Result<GenerationRecord, Error> {
    codec::decode_or_older::<GenerationRecord, GenerationRecordV3>("generations", &id, bytes)
}

pub(crate) fn get_workspace(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<WorkspaceRecord>, Error> {
    match table.get(id)? {
        Some(v) => Ok(Some(codec::decode("workspaces", &id, v.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn get_grant(
    table: &impl ReadableTable<(&'static str, &'static str, u32), &'static [u8]>,
    workspace: &str,
    id: &str,
    lot: u32,
) -> Result<Option<GrantRecord>, Error> {
    match table.get((workspace, id, lot))? {
        Some(v) => Ok(Some(codec::decode(
            "grants",
            &format_args!("({workspace}, {id}, {lot})"),
            v.value(),
        )?)),
        None => Ok(None),
    }
}

pub(crate) fn get_allocations(
    table: &impl ReadableTable<u64, &'static [u8]>,
    txn_id: u64,
) -> Result<Option<AllocationRecord>, Error> {
    match table.get(txn_id)? {
        Some(v) => Ok(Some(codec::decode("allocations", &txn_id, v.value())?)),
        None => Ok(None),
    }
}

/// The grant lots transaction `txn_id` moved, wherever they are stored: the `allocations`
/// row, or for a Usage paid by one lot and a Refund that gave it back to that lot, the
/// generation record `gen` (the transaction's generation, if it has one). `None` when
/// neither holds any (a Usage from before grants, a transaction that moved no grant).
pub(crate) fn get_allocations_of(
    table: Option<&impl ReadableTable<u64, &'static [u8]>>,
    gen: Option<&GenerationRecord>,
    txn_id: u64,
) -> Result<Option<Vec<AllocationEntry>>, Error> {
    if let Some(g) = gen.filter(|g| g.usage_txn == txn_id) {
        if let Some(entries) = g.usage_allocations() {
            return Ok(Some(entries));
        }
    }
    if let Some(a) = table
        .map(|t| get_allocations(t, txn_id))
        .transpose()?
        .flatten()
    {
        return Ok(Some(a.entries));
    }
    Ok(gen
        .filter(|g| g.is_refund(txn_id))
        .and_then(GenerationRecord::usage_allocations))
}

pub(crate) fn get_book(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    workspace: &str,
) -> Result<Option<GrantBook>, Error> {
    match table.get(workspace)? {
        Some(v) => Ok(Some(codec::decode("grant_books", &workspace, v.value())?)),
        None => Ok(None),
    }
}

/// Where Refund records start carrying their lots (see [`META_REFUND_LOTS_FROM_KEY`]), or
/// `None` in a file from before schema 6, none of whose Refunds do. A schema 6 file without
/// the key is damaged: [`Error::Corruption`], which `verify()` also names.
pub(crate) fn refund_lots_from(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<u64>, Error> {
    if get_schema(meta)? < REFUND_LOTS_SCHEMA_VERSION {
        return Ok(None);
    }
    get_meta_u64(meta, META_REFUND_LOTS_FROM_KEY)?
        .ok_or_else(|| Error::Corruption {
            table: "meta",
            key: META_REFUND_LOTS_FROM_KEY.to_string(),
            detail: format!(
                "missing in a schema {REFUND_LOTS_SCHEMA_VERSION} file; run verify, and restore from a backup"
            ),
        })
        .map(Some)
}

/// The grant lots Refund `rec` gave back, as its own storage says: its `allocations` row, or
/// for a refund to the one lot that paid, its generation record. Empty for a refund of a
/// charge made before grants. What a Refund record's `refund_lots` must hold.
pub(crate) fn refund_allocations(
    allocs: Option<&impl ReadableTable<u64, &'static [u8]>>,
    gens: &impl ReadableTable<&'static str, &'static [u8]>,
    rec: &TxnRecord,
) -> Result<Vec<AllocationEntry>, Error> {
    if let Some(a) = allocs
        .map(|t| get_allocations(t, rec.id))
        .transpose()?
        .flatten()
    {
        return Ok(a.entries);
    }
    Ok(match &rec.generation_id {
        Some(g) => get_generation(gens, g)?
            .filter(|g| g.is_refund(rec.id))
            .and_then(|g| g.usage_allocations())
            .unwrap_or_default(),
        None => Vec::new(),
    })
}

/// The schema version a file records (0 when it records none, which the open refuses).
pub(crate) fn get_schema(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u8, Error> {
    Ok(meta
        .get(META_SCHEMA_KEY)?
        .and_then(|v| v.value().first().copied())
        .unwrap_or(0))
}

/// A `u64` kept in `meta`, or `None` when it was never written.
pub(crate) fn get_meta_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<u64>, Error> {
    match meta.get(key)? {
        None => Ok(None),
        Some(v) => match <[u8; 8]>::try_from(v.value()) {
            Ok(b) => Ok(Some(u64::from_le_bytes(b))),
            Err(_) => Err(Error::Corruption {
                table: "meta",
                key: key.to_string(),
                detail: format!("{} bytes where 8 were expected", v.value().len()),
            }),
        },
    }
}

pub(crate) fn put_meta_u64(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    value: u64,
) -> Result<(), Error> {
    meta.insert(key, value.to_le_bytes().as_slice())?;
    Ok(())
}

/// The open journal epoch recorded in `meta`: (epoch id, first seq), or `None`.
pub(crate) fn get_journal_epoch(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<(u64, u64)>, Error> {
    match meta.get(META_JOURNAL_EPOCH_KEY)? {
        None => Ok(None),
        Some(v) => match <[u8; 16]>::try_from(v.value()) {
            Ok(b) => {
                let (epoch, first) = b.split_at(8);
                let u = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
                Ok(Some((u(epoch), u(first))))
            }
            Err(_) => Err(Error::Corruption {
                table: "meta",
                key: META_JOURNAL_EPOCH_KEY.to_string(),
                detail: format!("{} bytes where 16 were expected", v.value().len()),
            }),
        },
    }
}

/// Record (`Some`) or remove (`None`) the open journal epoch.
pub(crate) fn put_journal_epoch(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    epoch: Option<(u64, u64)>,
) -> Result<(), Error> {
    match epoch {
        Some((id, first_seq)) => {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&id.to_le_bytes());
            b[8..].copy_from_slice(&first_seq.to_le_bytes());
            meta.insert(META_JOURNAL_EPOCH_KEY, b.as_slice())?;
        }
        None => {
            meta.remove(META_JOURNAL_EPOCH_KEY)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_round_trip() {
        for v in 0..11u8 {
            assert_eq!(Category::from_u8(v).map(|c| c as u8), Some(v));
        }
        assert_eq!(Category::from_u8(11), None);
        for kind in TxnKind::ALL {
            let c = Category::of(kind);
            assert!(!matches!(
                c,
                Category::LegacyUsageCompleted | Category::UsageFailed
            ));
            assert_eq!(history_entries(SCHEMA_VERSION, kind, None), (c, None));
        }
    }

    /// A generation record of schema 3 (no single allocation) reads as one without it; a
    /// schema 4 record round-trips; damage to either is still Corruption.
    #[test]
    fn generation_records_of_both_layouts_decode() {
        let old = GenerationRecordV3 {
            id: "g1".into(),
            workspace: "ws".into(),
            feature: "Quick Video".into(),
            cost_credits: 12,
            timeout_ms: 9_000_000,
            started_at_ms: 1,
            deadline_ms: 9_000_001,
            usage_txn: 2,
            state: GenState::Running,
        };
        let old_bytes = codec::encode(&old);
        let read = decode_generation("g1", &old_bytes).unwrap();
        assert_eq!(read, GenerationRecord::from(old.clone()));
        assert_eq!(read.single_allocation, None);
        let new = GenerationRecord {
            single_allocation: Some(AllocationEntry {
                grant_id: "pack".into(),
                lot: 0,
                from_lot: 0,
                credits: 12,
                expires_at_ms: Some(5),
            }),
            ..GenerationRecord::from(old)
        };
        let new_bytes = codec::encode(&new);
        assert_eq!(decode_generation("g1", &new_bytes).unwrap(), new);
        for bytes in [old_bytes, new_bytes] {
            let mut damaged = bytes.clone();
            damaged[3] ^= 0x40;
            assert!(matches!(
                decode_generation("g1", &damaged),
                Err(Error::Corruption {
                    table: "generations",
                    ..
                })
            ));
        }
    }
}
