//! Shipping an install's transactions to the company's server, reliably, after being offline.
//!
//! A worker reads the change feed in batches from its consumer's stored position
//! (`Ledger::position`, `Ledger::changes`), applies each batch to a central store in one SQLite
//! transaction, idempotently (the key is the ledger's id and the transaction id, and a row
//! that is already there is left alone), commits it, and only then acks the batch
//! (`Ledger::ack`). A worker killed anywhere in that sequence re-reads at most one batch when
//! it restarts (delivery is at least once) and re-applying it changes nothing (the store has
//! each entry exactly once). `tests/sync.rs` kills it with `kill -9` at seeded points and
//! checks exactly that.
//!
//! ```text
//! cargo run --example sync
//! ```

use std::path::Path;

use credit_ledger::{Credit, Ledger, StartGeneration, TransactionView};
use rusqlite::{params, Connection};

/// Entries per batch.
pub const BATCH: u32 = 7;

/// The consumer name the worker acks under.
pub const CONSUMER: &str = "central-sync";

/// Where in one batch a worker may stop (for the kill test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The batch is read from the ledger; nothing applied.
    Read,
    /// Rows inserted in the open SQLite transaction, not committed.
    Applied,
    /// SQLite committed; the ledger not yet acked.
    Committed,
    /// Acked.
    Acked,
}

/// Open (or create) the central store.
pub fn open_store(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS ledger_entries (
            ledger_id     TEXT    NOT NULL,
            txn_id        INTEGER NOT NULL,
            at_ms         INTEGER NOT NULL,
            workspace     TEXT    NOT NULL,
            kind          TEXT    NOT NULL,
            amount        INTEGER NOT NULL,
            balance_after INTEGER NOT NULL,
            generation    TEXT,
            refund_of     INTEGER,
            PRIMARY KEY (ledger_id, txn_id)
        )",
    )?;
    Ok(db)
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Entries read from the feed.
    pub read: usize,
    /// Rows the store did not have yet.
    pub inserted: usize,
}

/// Ship one batch from `ledger` (known to the server as `ledger_id`) to `store`, then ack it.
/// `at` is called at each phase, so that a test can stop the worker there.
pub fn sync_batch(
    ledger: &Ledger,
    ledger_id: &str,
    store: &mut Connection,
    mut at: impl FnMut(Phase),
) -> Result<Synced, Box<dyn std::error::Error>> {
    let after = ledger.position(CONSUMER)?;
    let page = ledger.changes(after, BATCH)?;
    at(Phase::Read);
    if page.entries.is_empty() {
        return Ok(Synced::default());
    }
    let tx = store.transaction()?;
    let mut inserted = 0;
    for e in &page.entries {
        inserted += insert(&tx, ledger_id, e)?;
    }
    at(Phase::Applied);
    tx.commit()?;
    at(Phase::Committed);
    ledger.ack(CONSUMER, page.next_after(after))?;
    at(Phase::Acked);
    Ok(Synced {
        read: page.entries.len(),
        inserted,
    })
}

fn insert(
    tx: &rusqlite::Transaction<'_>,
    ledger_id: &str,
    e: &TransactionView,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO ledger_entries
            (ledger_id, txn_id, at_ms, workspace, kind, amount, balance_after, generation, refund_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (ledger_id, txn_id) DO NOTHING",
        params![
            ledger_id,
            e.id as i64,
            e.at_ms as i64,
            e.workspace,
            e.kind.as_str(),
            e.amount_credits,
            e.balance_after_credits as i64,
            e.generation_id,
            e.refund_of.map(|r| r as i64),
        ],
    )
}

/// Ship batches until the feed is drained.
pub fn sync_all(
    ledger: &Ledger,
    ledger_id: &str,
    store: &mut Connection,
) -> Result<Synced, Box<dyn std::error::Error>> {
    let mut total = Synced::default();
    loop {
        let s = sync_batch(ledger, ledger_id, store, |_| {})?;
        if s.read == 0 {
            return Ok(total);
        }
        total.read += s.read;
        total.inserted += s.inserted;
    }
}

#[allow(dead_code)] // the kill test includes this file for its functions, not for `main`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(dir.path().join("install.redb"))?;
    let mut store = open_store(&dir.path().join("central.sqlite"))?;
    // Offline: the install works without the server.
    ledger.credit(Credit::purchase("studio", 100, "order-1"))?;
    ledger.set_alert("studio", 80)?;
    for i in 0..8 {
        let id = format!("gen-{i}");
        ledger.start_generation(StartGeneration::new(&id, "studio", "HD Image", 9))?;
        if i % 3 == 0 {
            ledger.fail_generation(&id, credit_ledger::RefundReason::ApiFailure, "HTTP 502")?;
        } else {
            ledger.complete_generation(&id)?;
        }
    }
    // Back online: ship everything, then once more (nothing new).
    let first = sync_all(&ledger, "install-7f3a", &mut store)?;
    let again = sync_all(&ledger, "install-7f3a", &mut store)?;
    let rows: i64 = store.query_row("SELECT COUNT(*) FROM ledger_entries", [], |r| r.get(0))?;
    println!(
        "shipped {} entries ({} new rows), then {} more; the central store holds {rows} rows; consumer `{CONSUMER}` is at #{}",
        first.read,
        first.inserted,
        again.read,
        ledger.position(CONSUMER)?
    );
    let lows: i64 = store.query_row(
        "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'balance-low'",
        [],
        |r| r.get(0),
    )?;
    println!("balance-low notifications shipped: {lows}");
    if rows as u64 != ledger.changes(0, 1)?.last_txn_id {
        return Err("the central store does not hold every entry".into());
    }
    Ok(())
}
