//! The three stores of the scale bench behind [`Store`]: ours through `Ledger::apply` with
//! its defaults (journal, `Durability::Immediate`, 32 MiB cache) on a `ManualClock`; the
//! hand-written SQLite of `common/sqlite.rs`; the bare redb of `common/bare_redb.rs`.
//!
//! Each converts the plan's generations into its own input inside the timed call (a clone of
//! two short strings per operation for ours and SQLite, nothing for bare redb): well under
//! 1 % of a batch.

use std::path::Path;

use credit_ledger::{
    Credit, HistoryFilter, Ledger, ManualClock, Op, Options, Outcome, PageRequest, StartGeneration,
    TxnKind,
};

use crate::common::bare_redb::{self, BareRedb};
use crate::common::sqlite::{self, SqlLedger};
use crate::workload::{Fate, Gen, Store, FUNDING_CREDITS, PAGE_LIMIT, START_MS, TIMEOUT_MS};

/// The project, through `Ledger::apply`.
pub struct Ours {
    pub ledger: Ledger,
    clock: ManualClock,
}

impl Ours {
    fn apply(&self, ops: &[Op]) -> Vec<Outcome> {
        self.ledger
            .apply(ops)
            .into_iter()
            .map(|r| r.expect("a workload op"))
            .collect()
    }
}

impl Store for Ours {
    const NAME: &'static str = "ours";

    fn create(path: &Path, workspaces: &[String]) -> Self {
        let ours = Ours::open(path, START_MS);
        let funding: Vec<Op> = workspaces
            .iter()
            .map(|ws| Op::Credit(Credit::purchase(ws, FUNDING_CREDITS, format!("fund-{ws}"))))
            .collect();
        ours.apply(&funding);
        ours
    }

    fn open(path: &Path, now_ms: u64) -> Self {
        let clock = ManualClock::new(now_ms);
        let ledger =
            Ledger::open_with(path, Options::default().clock(clock.clone())).expect("open ours");
        Ours { ledger, clock }
    }

    fn set_now(&mut self, now_ms: u64) {
        self.clock.set_ms(now_ms);
    }

    fn start(&mut self, gens: &[&Gen]) -> usize {
        let ops: Vec<Op> = gens
            .iter()
            .map(|g| {
                Op::Start(StartGeneration::new(
                    g.id.clone(),
                    g.workspace.clone(),
                    "Quick Video",
                    g.cost_credits,
                ))
            })
            .collect();
        self.apply(&ops).len()
    }

    fn finish(&mut self, gens: &[&Gen]) -> usize {
        let ops: Vec<Op> = gens
            .iter()
            .map(|g| match g.fate {
                Fate::Fail(reason) => Op::Fail {
                    generation_id: g.id.clone(),
                    reason,
                    message: "model crashed".into(),
                },
                Fate::Complete | Fate::Expire => Op::Complete {
                    generation_id: g.id.clone(),
                },
            })
            .collect();
        self.apply(&ops).len()
    }

    fn sweep(&mut self, limit: usize) -> usize {
        let limit = u32::try_from(limit).expect("a sweep limit fits u32");
        match self.apply(&[Op::Sweep { limit }]).pop() {
            Some(Outcome::Sweep(report)) => report.refunds.len(),
            other => panic!("a sweep returned {other:?}"),
        }
    }

    fn first_refunds(&self, workspace: &str) -> usize {
        let page = self
            .ledger
            .history(
                workspace,
                &HistoryFilter::all().kinds([TxnKind::Refund]),
                &PageRequest::first(PAGE_LIMIT as u32),
            )
            .expect("a history page");
        assert!(page.entries.iter().all(|t| t.kind == TxnKind::Refund));
        page.entries.len()
    }
}

/// The hand-written SQLite ledger.
pub struct Sqlite {
    pub db: SqlLedger,
    now_ms: i64,
}

impl Store for Sqlite {
    const NAME: &'static str = "sqlite";

    fn create(path: &Path, workspaces: &[String]) -> Self {
        let store = Sqlite::open(path, START_MS);
        for ws in workspaces {
            store.db.fund(ws, FUNDING_CREDITS as i64, START_MS as i64);
        }
        store
    }

    fn open(path: &Path, now_ms: u64) -> Self {
        Sqlite {
            db: SqlLedger::open(path),
            now_ms: now_ms as i64,
        }
    }

    fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms as i64;
    }

    fn start(&mut self, gens: &[&Gen]) -> usize {
        let starts: Vec<(String, String, i64, i64)> = gens
            .iter()
            .map(|g| {
                (
                    g.id.clone(),
                    g.workspace.clone(),
                    g.cost_credits as i64,
                    TIMEOUT_MS as i64,
                )
            })
            .collect();
        self.db.start_batch(&starts, self.now_ms)
    }

    fn finish(&mut self, gens: &[&Gen]) -> usize {
        let items: Vec<(String, Option<&str>)> = gens
            .iter()
            .map(|g| (g.id.clone(), g.failure_label()))
            .collect();
        self.db.finish_batch(&items, self.now_ms)
    }

    fn sweep(&mut self, limit: usize) -> usize {
        self.db.sweep(limit as i64, self.now_ms)
    }

    fn first_refunds(&self, workspace: &str) -> usize {
        let rows = self
            .db
            .history(workspace, sqlite::KIND_REFUND, None, PAGE_LIMIT as i64);
        assert!(rows.iter().all(|r| r.kind == sqlite::KIND_REFUND));
        rows.len()
    }
}

/// redb with the fewest table writes.
pub struct Bare {
    db: BareRedb,
    now_ms: u64,
}

impl Store for Bare {
    const NAME: &'static str = "bare-redb";

    fn create(path: &Path, workspaces: &[String]) -> Self {
        let store = Bare::open(path, START_MS);
        store.db.fund(workspaces, FUNDING_CREDITS, START_MS);
        store
    }

    fn open(path: &Path, now_ms: u64) -> Self {
        Bare {
            db: BareRedb::open(path),
            now_ms,
        }
    }

    fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn start(&mut self, gens: &[&Gen]) -> usize {
        let starts: Vec<(&str, &str, u64)> = gens
            .iter()
            .map(|g| (g.id.as_str(), g.workspace.as_str(), g.cost_credits))
            .collect();
        self.db.start_batch(&starts, TIMEOUT_MS, self.now_ms)
    }

    fn finish(&mut self, gens: &[&Gen]) -> usize {
        let items: Vec<(&str, Option<&str>)> = gens
            .iter()
            .map(|g| (g.id.as_str(), g.failure_label()))
            .collect();
        self.db.finish_batch(&items, self.now_ms)
    }

    fn sweep(&mut self, limit: usize) -> usize {
        self.db.sweep(limit, self.now_ms)
    }

    fn first_refunds(&self, workspace: &str) -> usize {
        let rows = self
            .db
            .history(workspace, bare_redb::KIND_REFUND, PAGE_LIMIT);
        assert!(rows.iter().all(|r| r.kind == bare_redb::KIND_REFUND));
        rows.len()
    }
}
