//! A second baseline: the same ledger on redb directly, with the fewest table writes the
//! design needs, so the `scale` bench can tell redb's own cost from the ledger's.
//!
//! Five tables, no journal (every commit is a durable redb commit), the same 32 MiB cache as
//! the ledger's default. A transaction's history key is `(workspace, kind, txn id)`: the
//! kind, not the status, so finishing a generation never moves it. Per operation:
//!
//! | operation | writes |
//! |---|---|
//! | start | the Usage, the balance, the generation, its deadline, its history key |
//! | complete | the generation, its deadline (removed), the Usage's status |
//! | fail, sweep | those three, plus the Refund, its history key and the balance |
//!
//! No running count, totals, idempotency keys, checksum chain or grants: what it lacks is
//! what the ledger adds, and the gap between the two is that price.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

/// Workspace id -> balance in credits.
const WORKSPACES: TableDefinition<&str, u64> = TableDefinition::new("workspaces");
/// Txn id -> bincode of [`Txn`].
const TRANSACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("transactions");
/// Generation id -> bincode of [`Generation`].
const GENERATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("generations");
/// (deadline ms, generation id), running generations only.
const DEADLINES: TableDefinition<(u64, &str), ()> = TableDefinition::new("deadlines");
/// (workspace, kind, txn id): history pages by kind, newest first.
const HISTORY: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("history");

pub const KIND_PURCHASE: u8 = 0;
pub const KIND_USAGE: u8 = 2;
pub const KIND_REFUND: u8 = 4;
const STATUS_PENDING: u8 = 0;
const STATUS_COMPLETED: u8 = 1;
const STATUS_FAILED: u8 = 2;
const GEN_RUNNING: u8 = 0;
const GEN_SUCCEEDED: u8 = 1;
const GEN_REFUNDED: u8 = 2;
/// The ledger's default cache, so both redb stores get the same memory.
const CACHE_SIZE_BYTES: usize = 32 * 1024 * 1024;

/// One transaction, as the history page shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Txn {
    pub at_ms: u64,
    pub workspace: String,
    pub kind: u8,
    pub status: u8,
    pub amount: i64,
    pub balance_before: u64,
    pub balance_after: u64,
    pub title: String,
    pub generation_id: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub refund_of: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Generation {
    workspace: String,
    cost: u64,
    deadline_ms: u64,
    state: u8,
    usage_txn: u64,
    refund_txn: Option<u64>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encode")
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> T {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .expect("decode")
        .0
}

/// A ledger on bare redb.
pub struct BareRedb {
    db: Database,
}

/// The tables of one write transaction, opened once.
struct Tables<'t> {
    workspaces: redb::Table<'t, &'static str, u64>,
    transactions: redb::Table<'t, u64, &'static [u8]>,
    generations: redb::Table<'t, &'static str, &'static [u8]>,
    deadlines: redb::Table<'t, (u64, &'static str), ()>,
    history: redb::Table<'t, (&'static str, u8, u64), ()>,
    next_txn: u64,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t WriteTransaction) -> Tables<'t> {
        let transactions = tx.open_table(TRANSACTIONS).expect("open transactions");
        let next_txn = transactions
            .last()
            .expect("last txn")
            .map_or(1, |(k, _)| k.value() + 1);
        Tables {
            workspaces: tx.open_table(WORKSPACES).expect("open workspaces"),
            transactions,
            generations: tx.open_table(GENERATIONS).expect("open generations"),
            deadlines: tx.open_table(DEADLINES).expect("open deadlines"),
            history: tx.open_table(HISTORY).expect("open history"),
            next_txn,
        }
    }

    fn append(&mut self, txn: &Txn) -> u64 {
        let id = self.next_txn;
        self.next_txn += 1;
        self.transactions
            .insert(id, encode(txn).as_slice())
            .expect("insert txn");
        self.history
            .insert((txn.workspace.as_str(), txn.kind, id), ())
            .expect("insert history");
        id
    }

    fn generation(&self, id: &str) -> Option<Generation> {
        let got = self.generations.get(id).expect("get generation");
        got.map(|g| decode(g.value()))
    }

    fn set_usage_status(&mut self, usage_txn: u64, status: u8) {
        let mut usage: Txn = decode(
            self.transactions
                .get(usage_txn)
                .expect("get usage")
                .expect("the usage exists")
                .value(),
        );
        usage.status = status;
        self.transactions
            .insert(usage_txn, encode(&usage).as_slice())
            .expect("update usage");
    }

    /// Refund running generation `id`: the Refund, the balance, the generation, its deadline
    /// and its Usage.
    fn refund(&mut self, id: &str, mut gen: Generation, reason: &str, message: &str, now_ms: u64) {
        let before = self
            .workspaces
            .get(gen.workspace.as_str())
            .expect("get balance")
            .expect("the workspace exists")
            .value();
        let after = before.checked_add(gen.cost).expect("balance overflow");
        let refund = self.append(&Txn {
            at_ms: now_ms,
            workspace: gen.workspace.clone(),
            kind: KIND_REFUND,
            status: STATUS_COMPLETED,
            amount: gen.cost as i64,
            balance_before: before,
            balance_after: after,
            title: "Quick Video".into(),
            generation_id: Some(id.to_string()),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            refund_of: Some(gen.usage_txn),
        });
        self.workspaces
            .insert(gen.workspace.as_str(), after)
            .expect("update balance");
        self.deadlines
            .remove((gen.deadline_ms, id))
            .expect("remove deadline");
        self.set_usage_status(gen.usage_txn, STATUS_FAILED);
        gen.state = GEN_REFUNDED;
        gen.refund_txn = Some(refund);
        self.generations
            .insert(id, encode(&gen).as_slice())
            .expect("update generation");
    }
}

impl BareRedb {
    /// Open (creating) the database at `path`.
    pub fn open(path: &Path) -> BareRedb {
        let db = Database::builder()
            .set_cache_size(CACHE_SIZE_BYTES)
            .create(path)
            .expect("open bare redb");
        BareRedb { db }
    }

    fn write<R>(&self, f: impl FnOnce(&mut Tables<'_>) -> R) -> R {
        let tx = self.db.begin_write().expect("begin write");
        let result = {
            let mut tables = Tables::open(&tx);
            f(&mut tables)
        };
        tx.commit().expect("commit");
        result
    }

    /// Create each workspace with `amount` credits, in one transaction.
    pub fn fund(&self, workspaces: &[String], amount: u64, now_ms: u64) {
        self.write(|t| {
            for ws in workspaces {
                t.append(&Txn {
                    at_ms: now_ms,
                    workspace: ws.clone(),
                    kind: KIND_PURCHASE,
                    status: STATUS_COMPLETED,
                    amount: amount as i64,
                    balance_before: 0,
                    balance_after: amount,
                    title: "Purchase".into(),
                    generation_id: None,
                    reason: None,
                    message: None,
                    refund_of: None,
                });
                t.workspaces
                    .insert(ws.as_str(), amount)
                    .expect("insert workspace");
            }
        })
    }

    /// Start each generation `(id, workspace, cost)` in one transaction; a known id, an
    /// unknown workspace or too few credits is skipped. Returns how many were charged.
    pub fn start_batch(&self, gens: &[(&str, &str, u64)], timeout_ms: u64, now_ms: u64) -> usize {
        self.write(|t| {
            let mut charged = 0;
            for &(id, ws, cost) in gens {
                if t.generations.get(id).expect("get generation").is_some() {
                    continue;
                }
                let Some(before) = t
                    .workspaces
                    .get(ws)
                    .expect("get balance")
                    .map(|b| b.value())
                else {
                    continue;
                };
                let Some(after) = before.checked_sub(cost) else {
                    continue;
                };
                let usage_txn = t.append(&Txn {
                    at_ms: now_ms,
                    workspace: ws.to_string(),
                    kind: KIND_USAGE,
                    status: STATUS_PENDING,
                    amount: -(cost as i64),
                    balance_before: before,
                    balance_after: after,
                    title: "Quick Video".into(),
                    generation_id: Some(id.to_string()),
                    reason: None,
                    message: None,
                    refund_of: None,
                });
                t.workspaces.insert(ws, after).expect("update balance");
                let deadline_ms = now_ms + timeout_ms;
                let gen = Generation {
                    workspace: ws.to_string(),
                    cost,
                    deadline_ms,
                    state: GEN_RUNNING,
                    usage_txn,
                    refund_txn: None,
                };
                t.generations
                    .insert(id, encode(&gen).as_slice())
                    .expect("insert generation");
                t.deadlines
                    .insert((deadline_ms, id), ())
                    .expect("insert deadline");
                charged += 1;
            }
            charged
        })
    }

    /// Finish each generation in one transaction: `None` completes it, `Some(reason)` fails
    /// (refunds) it. A generation not running, or past its deadline for a completion, is
    /// skipped. Returns how many finished.
    pub fn finish_batch(&self, items: &[(&str, Option<&str>)], now_ms: u64) -> usize {
        self.write(|t| {
            let mut done = 0;
            for &(id, reason) in items {
                let Some(mut gen) = t.generation(id) else {
                    continue;
                };
                if gen.state != GEN_RUNNING {
                    continue;
                }
                match reason {
                    Some(reason) => t.refund(id, gen, reason, "model crashed", now_ms),
                    None if now_ms >= gen.deadline_ms => continue,
                    None => {
                        t.deadlines
                            .remove((gen.deadline_ms, id))
                            .expect("remove deadline");
                        t.set_usage_status(gen.usage_txn, STATUS_COMPLETED);
                        gen.state = GEN_SUCCEEDED;
                        t.generations
                            .insert(id, encode(&gen).as_slice())
                            .expect("update generation");
                    }
                }
                done += 1;
            }
            done
        })
    }

    /// Refund up to `limit` running generations whose deadline has passed, in one
    /// transaction. Returns how many.
    pub fn sweep(&self, limit: usize, now_ms: u64) -> usize {
        self.write(|t| {
            let due: Vec<String> = t
                .deadlines
                .range(..(now_ms + 1, ""))
                .expect("range deadlines")
                .take(limit)
                .map(|e| e.expect("deadline").0.value().1.to_string())
                .collect();
            for id in &due {
                let gen = t.generation(id).expect("a deadline's generation exists");
                t.refund(
                    id,
                    gen,
                    "timeout",
                    "generation ran past its timeout",
                    now_ms,
                );
            }
            due.len()
        })
    }

    /// The newest `limit` transactions of `kind` in `ws`, newest first.
    pub fn history(&self, ws: &str, kind: u8, limit: usize) -> Vec<Txn> {
        let tx = self.db.begin_read().expect("begin read");
        let history = tx.open_table(HISTORY).expect("open history");
        let transactions = tx.open_table(TRANSACTIONS).expect("open transactions");
        let range = history
            .range((ws, kind, 0)..=(ws, kind, u64::MAX))
            .expect("range history");
        range
            .rev()
            .take(limit)
            .map(|e| {
                let id = e.expect("history key").0.value().2;
                let txn = transactions.get(id).expect("get txn").expect("txn exists");
                decode(txn.value())
            })
            .collect()
    }
}
