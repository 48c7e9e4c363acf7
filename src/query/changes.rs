//! The change feed: the global log in commit order, across all workspaces.
//!
//! Transaction ids are dense and assigned in commit order, so "everything after id N" is one
//! range of the `transactions` table: a page costs the entries it returns, at any depth.

use redb::{ReadTransaction, ReadableTable};
use serde::Serialize;

use super::{view_of, TransactionView};
use crate::error::Error;
use crate::model::limits::MAX_PAGE_LIMIT;
use crate::model::validate;
use crate::storage::tables;

/// One page of the change feed, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangePage {
    /// The entries after the requested id, in commit (id) order, each carrying its id.
    pub entries: Vec<TransactionView>,
    /// The id of the last committed transaction when the page was read (0 for an empty
    /// ledger). The feed is caught up when the last entry's id equals it.
    pub last_txn_id: u64,
}

impl ChangePage {
    /// The id to pass as `after_txn_id` for the next page: the last entry's id, or `after`
    /// when the page is empty.
    pub fn next_after(&self, after_txn_id: u64) -> u64 {
        self.entries.last().map_or(after_txn_id, |e| e.id)
    }
}

pub(crate) fn changes(
    rtx: &ReadTransaction,
    after_txn_id: u64,
    limit: u32,
) -> Result<ChangePage, Error> {
    validate::limit("page limit", u64::from(limit), u64::from(MAX_PAGE_LIMIT))?;
    let txns = rtx.open_table(tables::TRANSACTIONS)?;
    let gens = rtx.open_table(tables::GENERATIONS)?;
    let allocs = tables::open_optional(rtx, tables::ALLOCATIONS)?;
    let last_txn_id = txns.last()?.map_or(0, |(k, _)| k.value());
    let mut entries = Vec::with_capacity(limit as usize);
    let Some(first) = after_txn_id.checked_add(1) else {
        return Ok(ChangePage {
            entries,
            last_txn_id,
        });
    };
    let mut expected = first;
    for entry in txns.range(first..)? {
        if entries.len() >= limit as usize {
            break;
        }
        let (k, v) = entry?;
        let id = k.value();
        if id != expected {
            // A consumer that skipped an entry would never see it again: refuse instead.
            return Err(Error::Corruption {
                table: "transactions",
                key: expected.to_string(),
                detail: format!("missing (the log jumps to #{id}): transaction ids must be dense"),
            });
        }
        expected = id.saturating_add(1);
        let rec = tables::decode_txn(id, v.value())?;
        entries.push(view_of(&gens, allocs.as_ref(), rec)?);
    }
    Ok(ChangePage {
        entries,
        last_txn_id,
    })
}
