//! The baseline: the same ledger written by hand on SQLite, the way a careful developer would.
//!
//! rusqlite (bundled), WAL, `synchronous=FULL` (every commit is fsynced, like the ledger's
//! `Durability::Immediate`), one transaction per call or per batch, prepared statements, and
//! the indexes the queries need: `(workspace, kind, id)` on transactions for history pages and
//! a partial index on the deadline of running generations for the sweep. It checks the same
//! rules (enough credits, running state, deadline) before it writes.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub const KIND_PURCHASE: i64 = 0;
pub const KIND_USAGE: i64 = 2;
pub const KIND_REFUND: i64 = 4;
pub const STATUS_PENDING: i64 = 0;
pub const STATUS_COMPLETED: i64 = 1;
pub const STATUS_FAILED: i64 = 2;
pub const GEN_RUNNING: i64 = 0;
pub const GEN_SUCCEEDED: i64 = 1;
pub const GEN_REFUNDED: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workspaces(
    id TEXT PRIMARY KEY,
    balance INTEGER NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0,
    spent INTEGER NOT NULL DEFAULT 0,
    refunded INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0,
    txn_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS transactions(
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    workspace TEXT NOT NULL,
    kind INTEGER NOT NULL,
    status INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    balance_before INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    title TEXT NOT NULL,
    generation_id TEXT,
    reason TEXT,
    message TEXT,
    refund_of INTEGER
);
CREATE INDEX IF NOT EXISTS transactions_ws_kind_id ON transactions(workspace, kind, id);
CREATE TABLE IF NOT EXISTS generations(
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    feature TEXT NOT NULL,
    cost INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state INTEGER NOT NULL,
    usage_txn INTEGER NOT NULL,
    refund_txn INTEGER
);
CREATE INDEX IF NOT EXISTS generations_running_deadline ON generations(deadline_ms) WHERE state = 0;
";

/// A hand-written SQLite ledger.
pub struct SqlLedger {
    pub conn: Connection,
}

/// One row of a history page.
#[derive(Debug)]
pub struct Row {
    pub id: i64,
    pub at_ms: i64,
    pub kind: i64,
    pub status: i64,
    pub amount: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    pub title: String,
    pub generation_id: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub refund_of: Option<i64>,
}

impl SqlLedger {
    /// Open (creating) a database at `path`: WAL, synchronous=FULL.
    pub fn open(path: &Path) -> SqlLedger {
        let conn = Connection::open(path).expect("open sqlite");
        conn.busy_timeout(std::time::Duration::from_secs(60))
            .expect("busy timeout");
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .expect("wal");
        assert_eq!(mode, "wal");
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .expect("synchronous");
        conn.execute_batch(SCHEMA).expect("schema");
        SqlLedger { conn }
    }

    /// Create workspace `ws` with `amount` credits.
    pub fn fund(&self, ws: &str, amount: i64, now_ms: i64) {
        let tx = self.conn.unchecked_transaction().expect("begin");
        tx.execute(
            "INSERT INTO workspaces(id, balance, granted, txn_count) VALUES (?1, 0, 0, 0)",
            [ws],
        )
        .expect("workspace");
        let before: i64 = tx
            .query_row("SELECT balance FROM workspaces WHERE id = ?1", [ws], |r| {
                r.get(0)
            })
            .expect("balance");
        tx.execute(
            "INSERT INTO transactions(at_ms, workspace, kind, status, amount, balance_before, balance_after, title)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'Purchase')",
            params![now_ms, ws, KIND_PURCHASE, STATUS_COMPLETED, amount, before, before + amount],
        )
        .expect("credit");
        tx.execute(
            "UPDATE workspaces SET balance = balance + ?2, granted = granted + ?2, txn_count = txn_count + 1 WHERE id = ?1",
            params![ws, amount],
        )
        .expect("update");
        tx.commit().expect("commit");
    }

    fn begin(&mut self) -> rusqlite::Transaction<'_> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin immediate")
    }

    /// Start each generation `(id, workspace, cost, timeout_ms)` in one transaction. Returns
    /// how many were charged.
    pub fn start_batch(&mut self, gens: &[(String, String, i64, i64)], now_ms: i64) -> usize {
        let tx = self.begin();
        let mut charged = 0;
        {
            let mut existing = tx
                .prepare_cached("SELECT 1 FROM generations WHERE id = ?1")
                .expect("prepare");
            let mut balance = tx
                .prepare_cached("SELECT balance FROM workspaces WHERE id = ?1")
                .expect("prepare");
            let mut usage = tx
                .prepare_cached(
                    "INSERT INTO transactions(at_ms, workspace, kind, status, amount, balance_before, balance_after, title, generation_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'Quick Video', ?8)",
                )
                .expect("prepare");
            let mut ws_update = tx
                .prepare_cached(
                    "UPDATE workspaces SET balance = ?2, spent = spent + ?3, running = running + 1, txn_count = txn_count + 1 WHERE id = ?1",
                )
                .expect("prepare");
            let mut gen_insert = tx
                .prepare_cached(
                    "INSERT INTO generations(id, workspace, feature, cost, started_at_ms, deadline_ms, state, usage_txn)
                     VALUES (?1, ?2, 'Quick Video', ?3, ?4, ?5, ?6, ?7)",
                )
                .expect("prepare");
            for (id, ws, cost, timeout_ms) in gens {
                if existing.exists([id]).expect("exists") {
                    continue;
                }
                let Some(before) = balance
                    .query_row([ws], |r| r.get::<_, i64>(0))
                    .optional()
                    .expect("balance")
                else {
                    continue;
                };
                if before < *cost {
                    continue;
                }
                usage
                    .execute(params![
                        now_ms,
                        ws,
                        KIND_USAGE,
                        STATUS_PENDING,
                        -cost,
                        before,
                        before - cost,
                        id
                    ])
                    .expect("usage");
                let usage_txn = tx.last_insert_rowid();
                ws_update
                    .execute(params![ws, before - cost, cost])
                    .expect("workspace");
                gen_insert
                    .execute(params![
                        id,
                        ws,
                        cost,
                        now_ms,
                        now_ms + timeout_ms,
                        GEN_RUNNING,
                        usage_txn
                    ])
                    .expect("generation");
                charged += 1;
            }
        }
        tx.commit().expect("commit");
        charged
    }

    /// Complete each running generation in one transaction. Returns how many completed.
    pub fn complete_batch(&mut self, ids: &[String], now_ms: i64) -> usize {
        let tx = self.begin();
        let mut done = 0;
        {
            let mut get = tx
                .prepare_cached(
                    "SELECT workspace, state, deadline_ms, usage_txn FROM generations WHERE id = ?1",
                )
                .expect("prepare");
            let mut gen_update = tx
                .prepare_cached("UPDATE generations SET state = ?2 WHERE id = ?1")
                .expect("prepare");
            let mut ws_update = tx
                .prepare_cached("UPDATE workspaces SET running = running - 1 WHERE id = ?1")
                .expect("prepare");
            let mut usage_update = tx
                .prepare_cached("UPDATE transactions SET status = ?2 WHERE id = ?1")
                .expect("prepare");
            for id in ids {
                let row = get
                    .query_row([id], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })
                    .optional()
                    .expect("get");
                let Some((ws, state, deadline, usage_txn)) = row else {
                    continue;
                };
                if state != GEN_RUNNING || now_ms >= deadline {
                    continue;
                }
                gen_update.execute(params![id, GEN_SUCCEEDED]).expect("gen");
                ws_update.execute([&ws]).expect("ws");
                usage_update
                    .execute(params![usage_txn, STATUS_COMPLETED])
                    .expect("usage");
                done += 1;
            }
        }
        tx.commit().expect("commit");
        done
    }

    /// The refund path, inside `tx`: credit back, write the Refund, mark the generation and
    /// its Usage.
    #[allow(clippy::too_many_arguments)]
    fn refund(
        tx: &rusqlite::Transaction<'_>,
        id: &str,
        ws: &str,
        cost: i64,
        usage_txn: i64,
        reason: &str,
        message: &str,
        now_ms: i64,
    ) {
        let before: i64 = tx
            .prepare_cached("SELECT balance FROM workspaces WHERE id = ?1")
            .expect("prepare")
            .query_row([ws], |r| r.get(0))
            .expect("balance");
        tx.prepare_cached(
            "INSERT INTO transactions(at_ms, workspace, kind, status, amount, balance_before, balance_after, title, generation_id, reason, message, refund_of)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'Quick Video', ?8, ?9, ?10, ?11)",
        )
        .expect("prepare")
        .execute(params![
            now_ms,
            ws,
            KIND_REFUND,
            STATUS_COMPLETED,
            cost,
            before,
            before + cost,
            id,
            reason,
            message,
            usage_txn
        ])
        .expect("refund");
        let refund_txn = tx.last_insert_rowid();
        tx.prepare_cached(
            "UPDATE workspaces SET balance = ?2, refunded = refunded + ?3, running = running - 1, txn_count = txn_count + 1 WHERE id = ?1",
        )
        .expect("prepare")
        .execute(params![ws, before + cost, cost])
        .expect("ws");
        tx.prepare_cached("UPDATE generations SET state = ?2, refund_txn = ?3 WHERE id = ?1")
            .expect("prepare")
            .execute(params![id, GEN_REFUNDED, refund_txn])
            .expect("gen");
        tx.prepare_cached("UPDATE transactions SET status = ?2 WHERE id = ?1")
            .expect("prepare")
            .execute(params![usage_txn, STATUS_FAILED])
            .expect("usage");
    }

    /// Generation `id`'s (workspace, cost, state, deadline, usage txn), if it exists.
    fn generation_row(
        tx: &rusqlite::Transaction<'_>,
        id: &str,
    ) -> Option<(String, i64, i64, i64, i64)> {
        tx.prepare_cached(
            "SELECT workspace, cost, state, deadline_ms, usage_txn FROM generations WHERE id = ?1",
        )
        .expect("prepare")
        .query_row([id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()
        .expect("get")
    }

    /// Fail (refund) each running generation in one transaction. Returns how many refunded.
    pub fn fail_batch(&mut self, ids: &[String], now_ms: i64) -> usize {
        let tx = self.begin();
        let mut done = 0;
        for id in ids {
            let row = Self::generation_row(&tx, id);
            let Some((ws, cost, state, deadline, usage_txn)) = row else {
                continue;
            };
            if state != GEN_RUNNING {
                continue;
            }
            let reason = if now_ms >= deadline {
                "timeout"
            } else {
                "model-failure"
            };
            Self::refund(
                &tx,
                id,
                &ws,
                cost,
                usage_txn,
                reason,
                "model crashed",
                now_ms,
            );
            done += 1;
        }
        tx.commit().expect("commit");
        done
    }

    /// Finish each generation in one transaction, as [`complete_batch`](Self::complete_batch)
    /// (`None`) or [`fail_batch`](Self::fail_batch) (`Some(reason)`) would: the `scale`
    /// bench's batches mix the two. Returns how many finished.
    pub fn finish_batch(&mut self, items: &[(String, Option<&str>)], now_ms: i64) -> usize {
        let tx = self.begin();
        let mut done = 0;
        for (id, reason) in items {
            let row = Self::generation_row(&tx, id);
            let Some((ws, cost, state, deadline, usage_txn)) = row else {
                continue;
            };
            if state != GEN_RUNNING {
                continue;
            }
            match reason {
                Some(reason) => {
                    let reason = if now_ms >= deadline {
                        "timeout"
                    } else {
                        reason
                    };
                    Self::refund(
                        &tx,
                        id,
                        &ws,
                        cost,
                        usage_txn,
                        reason,
                        "model crashed",
                        now_ms,
                    );
                }
                None if now_ms >= deadline => continue,
                None => {
                    tx.prepare_cached("UPDATE generations SET state = ?2 WHERE id = ?1")
                        .expect("prepare")
                        .execute(params![id, GEN_SUCCEEDED])
                        .expect("gen");
                    tx.prepare_cached("UPDATE workspaces SET running = running - 1 WHERE id = ?1")
                        .expect("prepare")
                        .execute([&ws])
                        .expect("ws");
                    tx.prepare_cached("UPDATE transactions SET status = ?2 WHERE id = ?1")
                        .expect("prepare")
                        .execute(params![usage_txn, STATUS_COMPLETED])
                        .expect("usage");
                }
            }
            done += 1;
        }
        tx.commit().expect("commit");
        done
    }

    /// Refund up to `limit` running generations whose deadline has passed, in one
    /// transaction. Returns how many.
    pub fn sweep(&mut self, limit: i64, now_ms: i64) -> usize {
        let tx = self.begin();
        let due: Vec<(String, String, i64, i64)> = tx
            .prepare_cached(
                "SELECT id, workspace, cost, usage_txn FROM generations
                 WHERE state = 0 AND deadline_ms <= ?1 ORDER BY deadline_ms LIMIT ?2",
            )
            .expect("prepare")
            .query_map(params![now_ms, limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        for (id, ws, cost, usage_txn) in &due {
            Self::refund(
                &tx,
                id,
                ws,
                *cost,
                *usage_txn,
                "timeout",
                "generation ran past its timeout",
                now_ms,
            );
        }
        tx.commit().expect("commit");
        due.len()
    }

    /// A page of `ws`'s transactions of `kind`, newest first, with ids below `before`.
    pub fn history(&self, ws: &str, kind: i64, before: Option<i64>, limit: i64) -> Vec<Row> {
        self.conn
            .prepare_cached(
                "SELECT id, at_ms, kind, status, amount, balance_before, balance_after, title,
                        generation_id, reason, message, refund_of
                 FROM transactions
                 WHERE workspace = ?1 AND kind = ?2 AND id < ?3
                 ORDER BY id DESC LIMIT ?4",
            )
            .expect("prepare")
            .query_map(params![ws, kind, before.unwrap_or(i64::MAX), limit], |r| {
                Ok(Row {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    kind: r.get(2)?,
                    status: r.get(3)?,
                    amount: r.get(4)?,
                    balance_before: r.get(5)?,
                    balance_after: r.get(6)?,
                    title: r.get(7)?,
                    generation_id: r.get(8)?,
                    reason: r.get(9)?,
                    message: r.get(10)?,
                    refund_of: r.get(11)?,
                })
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}
