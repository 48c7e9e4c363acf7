//! Charges inside one batch: each plans from what the operations before it in the same
//! write transaction left, whatever the lot cache holds (see `engine::lots`); and a drawdown
//! index that disagrees with its lots is refused, not spent from.

mod common;

use common::{options, T0_MS};
use credit_ledger::limits::DEFAULT_GRANT_PRIORITY;
use credit_ledger::{
    Adjust, Credit, Error, Ledger, ManualClock, Op, Outcome, RefundReason, StartGeneration,
    VoidGrant,
};

const DAY_MS: u64 = 24 * 60 * 60_000;

fn start(id: &str, ws: &str, cost: u64) -> Op {
    Op::Start(StartGeneration::new(id, ws, "Quick Video", cost))
}

fn fail(id: &str) -> Op {
    Op::Fail {
        generation_id: id.to_string(),
        reason: RefundReason::ModelFailure,
        message: "no frames".into(),
    }
}

/// A script that moves credits in and out of the same lots many times over: charges that
/// empty a lot and span to the next, refunds that refill an emptied lot, a new grant that
/// comes first in the order, a negative adjustment, a void, a refused charge, a refund into a
/// voided grant (a grace lot) that the next charge spends, and a second workspace between.
fn script() -> Vec<Op> {
    vec![
        Op::Credit(Credit::purchase("acme", 10, "p1")),
        Op::Credit(Credit::purchase("acme", 10, "p2").priority(DEFAULT_GRANT_PRIORITY + 1)),
        Op::Credit(Credit::purchase("beta", 5, "b1")),
        start("g1", "acme", 6),
        start("gb1", "beta", 2),
        start("g2", "acme", 6),
        fail("g1"),
        start("g3", "acme", 8),
        Op::Credit(Credit::grant("acme", 5, "p0").priority(DEFAULT_GRANT_PRIORITY - 1)),
        start("g4", "acme", 7),
        start("gb2", "beta", 3),
        Op::Adjust(Adjust::new("acme", -3, "adj-1", "chargeback")),
        Op::VoidGrant(VoidGrant::new("acme", "p2", "void-1", "fraud")),
        start("g5", "acme", 1),
        Op::Credit(Credit::grant("acme", 3, "trial").expires_at_ms(T0_MS + DAY_MS)),
        start("g6", "acme", 3),
        fail("g2"),
        start("g7", "acme", 5),
        fail("gb1"),
        start("gb3", "beta", 2),
    ]
}

/// What an outcome says about where credits went, comparable across ledgers.
fn summary(r: &Result<Outcome, Error>) -> String {
    let lots = |a: &[credit_ledger::Allocation]| -> Vec<(String, u32, u64)> {
        a.iter()
            .map(|a| (a.grant_id.clone(), a.lot, a.credits))
            .collect()
    };
    match r {
        Ok(Outcome::Start(c)) => format!(
            "start {:?} -> {}",
            lots(&c.allocations),
            c.balance_after_credits
        ),
        Ok(Outcome::Fail(f)) => format!(
            "refund {:?} -> {}",
            lots(&f.allocations),
            f.balance_after_credits
        ),
        Ok(Outcome::Credit(c)) | Ok(Outcome::Adjust(c)) => {
            format!("credit -> {}", c.balance_after_credits)
        }
        Ok(Outcome::VoidGrant(v)) => {
            format!("void {} -> {}", v.amount_credits, v.balance_after_credits)
        }
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error {e}"),
    }
}

fn grants(l: &Ledger, ws: &str) -> Vec<(String, u32, u64)> {
    l.grants(ws)
        .unwrap()
        .into_iter()
        .map(|g| (g.grant_id, g.lot, g.remaining_credits))
        .collect()
}

fn assert_clean(l: &Ledger) {
    let report = l.verify().unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
    assert!(l.totals().unwrap().is_conserved());
}

#[test]
fn a_batch_moves_credits_exactly_as_the_same_operations_one_at_a_time() {
    let clock = ManualClock::new(T0_MS);
    let batched = Ledger::in_memory_with(options(&clock)).unwrap();
    let single = Ledger::in_memory_with(options(&clock)).unwrap();
    let ops = script();
    let in_batch: Vec<String> = batched.apply(&ops).iter().map(summary).collect();
    let one_by_one: Vec<String> = ops
        .iter()
        .map(|op| summary(&single.apply(std::slice::from_ref(op))[0]))
        .collect();
    assert_eq!(in_batch, one_by_one);

    // The figures themselves, so that both ledgers cannot be wrong the same way.
    let lot = |g: &str, n: u32, c: u64| (g.to_string(), n, c);
    assert_eq!(
        in_batch[5],
        format!("start {:?} -> 8", [lot("p1", 0, 4), lot("p2", 0, 2)])
    );
    assert_eq!(
        in_batch[7],
        format!("start {:?} -> 6", [lot("p1", 0, 6), lot("p2", 0, 2)])
    );
    assert_eq!(
        in_batch[9],
        format!("start {:?} -> 4", [lot("p0", 0, 5), lot("p2", 0, 2)])
    );
    assert!(in_batch[13].starts_with("error "), "{}", in_batch[13]);
    // g2's refund: p1's part goes back to p1; p2 is void, so its part is a grace lot of p2.
    assert_eq!(
        in_batch[16],
        format!("refund {:?} -> 6", [lot("p1", 0, 4), lot("p2", 1, 2)])
    );
    // And the next charge spends p1 before p2's grace lot (p2's priority).
    assert_eq!(
        in_batch[17],
        format!("start {:?} -> 1", [lot("p1", 0, 4), lot("p2", 1, 1)])
    );
    assert_eq!(in_batch[19], format!("start {:?} -> 0", [lot("b1", 0, 2)]));

    for ws in ["acme", "beta"] {
        assert_eq!(grants(&batched, ws), grants(&single, ws), "{ws}");
    }
    assert_clean(&batched);
    assert_clean(&single);
}

/// The drawdown index of the (closed) ledger at `path` gets an entry for lot 0 of grant `id`
/// of `ws` with `priority`, which is not the lot's own.
fn add_order_entry(path: &std::path::Path, ws: &str, id: &str, priority: u32) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let order: redb::TableDefinition<(&str, u32, u64, u64, &str, u32), ()> =
            redb::TableDefinition::new("grant_order");
        let mut t = txn.open_table(order).unwrap();
        t.insert((ws, priority, u64::MAX, 0, id, 0), ()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_drawdown_entry_that_disagrees_with_its_lot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let clock = ManualClock::new(T0_MS);
    {
        let l = Ledger::open_with(&path, options(&clock)).unwrap();
        l.credit(Credit::purchase("acme", 10, "p1")).unwrap();
    }
    // A second entry for p1, after the real one (a larger priority). A charge of more than
    // p1 holds reads on to it; taken at its word, it would have p1 pay twice.
    add_order_entry(&path, "acme", "p1", DEFAULT_GRANT_PRIORITY + 5);
    let l = Ledger::open_with(&path, options(&clock).sweep_on_open(false)).unwrap();
    let before = l.balance("acme").unwrap();
    let err = l
        .start_generation(StartGeneration::new("g1", "acme", "Quick Video", 12))
        .unwrap_err();
    let Error::Corruption { table, detail, .. } = &err else {
        panic!("expected Corruption, got {err:?}");
    };
    assert_eq!(*table, "grant_order");
    assert!(detail.contains("does not match"), "{detail}");
    assert_eq!(l.balance("acme").unwrap(), before);
    assert!(
        l.generation("g1").is_err(),
        "the refused start left a generation"
    );
    assert!(
        !l.verify().unwrap().is_clean(),
        "verify() names the stray entry too"
    );
}
