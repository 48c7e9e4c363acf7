//! The change feed: the global log in commit order, across workspaces.
//!
//! Threads write random batches and single operations; every transaction id a caller was
//! given as new must appear in the feed exactly once, the feed must be 1..=last in order with
//! nothing else, and each entry must equal the point read and the workspace history's entry.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use credit_ledger::{
    limits::MAX_PAGE_LIMIT, Credit, Error, HistoryFilter, InvalidInput, Ledger, Op, Outcome,
    RefundReason, StartGeneration, TransactionView,
};

use common::{ledger, paged_history};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The whole feed after `after`, read in pages of `limit`.
fn whole_feed(ledger: &Ledger, mut after: u64, limit: u32) -> Vec<TransactionView> {
    let mut out = Vec::new();
    loop {
        let page = ledger.changes(after, limit).unwrap();
        assert!(page.entries.len() <= limit as usize);
        if page.entries.is_empty() {
            assert!(after >= page.last_txn_id, "an empty page before the end");
            return out;
        }
        after = page.next_after(after);
        out.extend(page.entries);
    }
}

/// The new transaction ids a result tells its caller about.
fn new_ids(r: &Result<Outcome, Error>) -> Vec<u64> {
    match r {
        Ok(Outcome::Credit(c)) | Ok(Outcome::Adjust(c)) if !c.replay => vec![c.txn_id],
        Ok(Outcome::Start(c)) if !c.replay => vec![c.usage_txn],
        Ok(Outcome::Fail(f)) if !f.replay => vec![f.refund_txn],
        Ok(Outcome::Sweep(s)) => s.refunds.iter().map(|r| r.refund_txn).collect(),
        _ => Vec::new(),
    }
}

fn random_op(rng: &mut Rng, thread: u64, n: u64) -> Op {
    let ws = format!("ws-{}", rng.below(5));
    let g = format!("g-{thread}-{}", rng.below(n.max(1)));
    match rng.below(6) {
        0 | 1 => Op::Credit(Credit::purchase(
            ws,
            1 + rng.below(50),
            format!("k-{thread}-{}", rng.below(200)),
        )),
        2 | 3 => Op::Start(StartGeneration::new(
            g,
            ws,
            "Quick Video",
            1 + rng.below(20),
        )),
        4 => Op::Complete { generation_id: g },
        _ => Op::Fail {
            generation_id: g,
            reason: RefundReason::ApiFailure,
            message: "upstream 502".into(),
        },
    }
}

#[test]
fn feed_is_every_committed_transaction_once_in_order_across_threads() {
    let (ledger, _clock) = ledger();
    let ledger = Arc::new(ledger);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || {
                let mut rng = Rng(t * 7919 + 1);
                let mut ids = Vec::new();
                for n in 0..150u64 {
                    if rng.below(4) == 0 {
                        let ops: Vec<Op> = (0..1 + rng.below(12))
                            .map(|_| random_op(&mut rng, t, n))
                            .collect();
                        for r in ledger.apply(&ops) {
                            ids.extend(new_ids(&r));
                        }
                    } else {
                        let r = ledger.execute(random_op(&mut rng, t, n));
                        ids.extend(new_ids(&r));
                    }
                }
                ids
            })
        })
        .collect();
    let mut told = Vec::new();
    for h in handles {
        told.extend(h.join().unwrap());
    }
    let feed = whole_feed(&ledger, 0, 37);
    let feed_ids: Vec<u64> = feed.iter().map(|e| e.id).collect();
    let last = ledger.changes(0, 1).unwrap().last_txn_id;
    assert!(last > 100, "the workload wrote too little: {last}");
    assert_eq!(
        feed_ids,
        (1..=last).collect::<Vec<_>>(),
        "dense, in id order"
    );
    let told_set: BTreeSet<u64> = told.iter().copied().collect();
    assert_eq!(told_set.len(), told.len(), "an id was handed out twice");
    assert_eq!(
        told_set,
        feed_ids.iter().copied().collect(),
        "the feed is exactly the transactions the callers were told about"
    );
    // Each entry is the view history and the point read show.
    for e in &feed {
        assert_eq!(&ledger.transaction(e.id).unwrap(), e);
    }
    for w in 0..5 {
        let ws = format!("ws-{w}");
        let Ok(_) = ledger.balance(&ws) else { continue };
        let hist = paged_history(&ledger, &ws, &HistoryFilter::all(), 100, true);
        let from_feed: Vec<&TransactionView> = feed.iter().filter(|e| e.workspace == ws).collect();
        assert_eq!(
            hist.iter().collect::<Vec<_>>(),
            from_feed,
            "history of {ws}"
        );
    }
    // Other page sizes and starting points give the same sequence.
    assert_eq!(whole_feed(&ledger, 0, MAX_PAGE_LIMIT), feed);
    assert_eq!(whole_feed(&ledger, 0, 1).len(), feed.len());
    let mid = last / 2;
    assert_eq!(whole_feed(&ledger, mid, 10), feed[mid as usize..].to_vec());
}

#[test]
fn feed_limits_and_ends() {
    let (ledger, _clock) = ledger();
    let empty = ledger.changes(0, 10).unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!((empty.last_txn_id, empty.next_after(0)), (0, 0));
    ledger.credit(Credit::purchase("a", 5, "k1")).unwrap();
    ledger.credit(Credit::grant("b", 7, "k2")).unwrap();
    for bad in [0, MAX_PAGE_LIMIT + 1] {
        assert_eq!(
            ledger.changes(0, bad),
            Err(Error::InvalidInput(InvalidInput::LimitOutOfRange {
                field: "page limit",
                value: u64::from(bad),
                max: u64::from(MAX_PAGE_LIMIT),
            }))
        );
    }
    let page = ledger.changes(0, 1).unwrap();
    assert_eq!((page.entries[0].id, page.last_txn_id), (1, 2));
    // Past the end, and at the very end of the id space, is an empty page, not an error.
    for after in [2, 3, u64::MAX] {
        let p = ledger.changes(after, 5).unwrap();
        assert!(p.entries.is_empty(), "after {after}");
        assert_eq!(p.last_txn_id, 2);
    }
}
