//! History paging and filters.

mod common;

use std::collections::HashSet;

use common::{all_history, assert_healthy, fund, ledger, paged_history};
use credit_ledger::{
    Credit, Error, HistoryFilter, InvalidInput, Op, PageRequest, RefundReason, StartGeneration,
    Status, TxnKind,
};

/// A workspace with 10,000 transactions of every kind and status, written in batches.
fn big_history() -> (credit_ledger::Ledger, credit_ledger::ManualClock) {
    let (ledger, clock) = ledger();
    fund(&ledger, "ws", 1_000_000);
    fund(&ledger, "noise", 1_000);
    let mut ops = Vec::new();
    let mut n = 1; // the funding credit
    let mut i = 0;
    while n < 10_000 {
        let g = format!("g{i}");
        ops.push(Op::Start(StartGeneration::new(
            &g,
            "ws",
            ["Quick Video", "Image"][i % 2],
            3,
        )));
        n += 1;
        match i % 4 {
            0 => ops.push(Op::Complete { generation_id: g }),
            1 => {
                ops.push(Op::Fail {
                    generation_id: g,
                    reason: RefundReason::ApiFailure,
                    message: "502".into(),
                });
                n += 1;
            }
            2 => {
                ops.push(Op::Credit(Credit::grant("ws", 1, format!("bonus-{i}"))));
                n += 1;
            }
            _ => {} // stays running
        }
        if i % 50 == 0 {
            ops.push(Op::Start(StartGeneration::new(
                format!("n{i}"),
                "noise",
                "Image",
                1,
            )));
        }
        i += 1;
        if ops.len() >= 500 {
            clock.advance_ms(1_000);
            for r in ledger.apply(&ops) {
                r.unwrap();
            }
            ops.clear();
        }
    }
    for r in ledger.apply(&ops) {
        r.unwrap();
    }
    (ledger, clock)
}

#[test]
fn pages_visit_every_entry_exactly_once_in_order() {
    let (ledger, _clock) = big_history();
    let summary = ledger.balance("ws").unwrap();
    assert!(summary.transactions >= 10_000, "{}", summary.transactions);

    let all = all_history(&ledger, "ws", &HistoryFilter::all());
    assert_eq!(all.len() as u64, summary.transactions);
    let ids: Vec<u64> = all.iter().map(|t| t.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    assert!(all.iter().all(|t| t.workspace == "ws"));

    // Oldest first visits the same entries in the opposite order.
    let mut asc = Vec::new();
    let mut cursor = None;
    loop {
        let page = ledger
            .history(
                "ws",
                &HistoryFilter::all(),
                &PageRequest {
                    limit: 100,
                    cursor: cursor.take(),
                    oldest_first: true,
                },
            )
            .unwrap();
        assert!(page.entries.len() <= 100);
        asc.extend(page.entries.into_iter().map(|t| t.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut desc = ids.clone();
    desc.reverse();
    assert_eq!(asc, desc);

    // Balances chain through the history.
    for w in all.windows(2) {
        assert_eq!(w[1].balance_after_credits, w[0].balance_before_credits);
    }
    assert_healthy(&ledger);
}

#[test]
fn kind_and_status_filters_combine() {
    let (ledger, _clock) = big_history();
    let all = all_history(&ledger, "ws", &HistoryFilter::all());
    let expect = |pred: &dyn Fn(&credit_ledger::TransactionView) -> bool| -> Vec<u64> {
        all.iter().filter(|t| pred(t)).map(|t| t.id).collect()
    };
    let got = |f: HistoryFilter| -> Vec<u64> {
        all_history(&ledger, "ws", &f)
            .iter()
            .map(|t| t.id)
            .collect()
    };

    let refunds = got(HistoryFilter::all().kinds([TxnKind::Refund]));
    assert!(!refunds.is_empty());
    assert_eq!(refunds, expect(&|t| t.kind == TxnKind::Refund));

    let pending = got(HistoryFilter::all().statuses([Status::Pending]));
    assert_eq!(pending, expect(&|t| t.status == Status::Pending));
    assert!(!pending.is_empty());

    let usage_done = got(HistoryFilter::all()
        .kinds([TxnKind::Usage])
        .statuses([Status::Completed, Status::Failed]));
    assert_eq!(
        usage_done,
        expect(&|t| t.kind == TxnKind::Usage && t.status != Status::Pending)
    );

    let credits_and_refunds = got(HistoryFilter::all().kinds([TxnKind::Grant, TxnKind::Refund]));
    assert_eq!(
        credits_and_refunds,
        expect(&|t| matches!(t.kind, TxnKind::Grant | TxnKind::Refund))
    );

    let failed_images = got(HistoryFilter::all()
        .statuses([Status::Failed])
        .feature("Image"));
    assert_eq!(
        failed_images,
        expect(&|t| t.status == Status::Failed && t.title == "Image")
    );
    assert!(!failed_images.is_empty());

    let none = got(HistoryFilter::all()
        .kinds([TxnKind::Refund])
        .statuses([Status::Pending]));
    assert!(none.is_empty());

    // Every failed Usage links to its refund and back.
    let ids: HashSet<u64> = refunds.iter().copied().collect();
    for t in all.iter().filter(|t| t.status == Status::Failed) {
        let r = t.refunded_by.expect("a failed usage names its refund");
        assert!(ids.contains(&r));
        assert_eq!(ledger.transaction(r).unwrap().refund_of, Some(t.id));
    }
}

#[test]
fn time_ranges_select_by_timestamp() {
    let (ledger, _clock) = big_history();
    let all = all_history(&ledger, "ws", &HistoryFilter::all());
    let (oldest, newest) = (all.last().unwrap().at_ms, all[0].at_ms);
    assert!(newest > oldest + 5_000);
    let since = oldest + 3_000;
    let until = newest - 2_000;
    let got: Vec<u64> = all_history(
        &ledger,
        "ws",
        &HistoryFilter::all().between(Some(since), Some(until)),
    )
    .iter()
    .map(|t| t.id)
    .collect();
    let expected: Vec<u64> = all
        .iter()
        .filter(|t| t.at_ms >= since && t.at_ms <= until)
        .map(|t| t.id)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
    assert!(matches!(
        ledger.history(
            "ws",
            &HistoryFilter::all().between(Some(10), Some(5)),
            &PageRequest::first(10)
        ),
        Err(Error::InvalidInput(InvalidInput::EmptyWindow { .. }))
    ));
}

#[test]
fn page_limits_and_cursors_are_checked() {
    let (ledger, _clock) = ledger();
    fund(&ledger, "ws", 10);
    for limit in [0, 1001] {
        assert!(matches!(
            ledger.history("ws", &HistoryFilter::all(), &PageRequest::first(limit)),
            Err(Error::InvalidInput(InvalidInput::LimitOutOfRange { .. }))
        ));
    }
    assert!(matches!(
        ledger.history(
            "ws",
            &HistoryFilter::all(),
            &PageRequest::after(10, "bogus")
        ),
        Err(Error::InvalidInput(InvalidInput::BadCursor { .. }))
    ));
    assert!(matches!(
        ledger.history("nobody", &HistoryFilter::all(), &PageRequest::first(10)),
        Err(Error::UnknownWorkspace { .. })
    ));
}

#[test]
fn a_rare_feature_filter_pages_in_bounded_steps() {
    use credit_ledger::limits::HISTORY_SCAN_BUDGET;
    let (ledger, _clock) = ledger();
    fund(&ledger, "ws", 100_000);
    // One "Video" far back, then more "Image" entries than one page may examine.
    ledger
        .start_generation(StartGeneration::new("v", "ws", "Video", 1))
        .unwrap();
    let images = HISTORY_SCAN_BUDGET as usize + 5_000;
    for chunk in (0..images).collect::<Vec<_>>().chunks(2_000) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|i| Op::Start(StartGeneration::new(format!("i{i}"), "ws", "Image", 1)))
            .collect();
        for r in ledger.apply(&ops) {
            r.unwrap();
        }
    }
    let filter = HistoryFilter::all().feature("Video");
    let first = ledger
        .history("ws", &filter, &PageRequest::first(50))
        .unwrap();
    // The page stopped at the scan budget: nothing yet, and a cursor to go on.
    assert!(first.entries.is_empty());
    let cursor = first
        .next_cursor
        .expect("a cursor after a budget-limited page");
    let second = ledger
        .history("ws", &filter, &PageRequest::after(50, cursor))
        .unwrap();
    assert_eq!(second.entries.len(), 1);
    assert_eq!(second.entries[0].generation_id.as_deref(), Some("v"));
    // Reading the whole filtered history visits the one match exactly once.
    assert_eq!(all_history(&ledger, "ws", &filter).len(), 1);
}

/// Pages read the log by stepping an iterator through it, jumping over wide gaps. Every entry
/// a page returns must be exactly what a point read of its id returns, in both orders, for a
/// dense filter (everything), a sparse one (Refunds: about one entry in five of `ws`) and one
/// sparser than the stepping limit (`noise`: one entry in about a hundred of the log).
#[test]
fn page_entries_match_point_reads() {
    let (ledger, _clock) = big_history();
    let filters = [
        HistoryFilter::all(),
        HistoryFilter::all().kinds([TxnKind::Refund]),
        HistoryFilter::all().statuses([Status::Failed, Status::Pending]),
    ];
    let mut checked = 0;
    for ws in ["ws", "noise"] {
        for filter in &filters {
            for oldest_first in [false, true] {
                let entries = paged_history(&ledger, ws, filter, 37, oldest_first);
                for entry in &entries {
                    assert_eq!(entry, &ledger.transaction(entry.id).unwrap());
                }
                assert!(
                    entries
                        .windows(2)
                        .all(|w| (w[1].id > w[0].id) == oldest_first),
                    "{ws}: order"
                );
                checked += entries.len();
            }
        }
    }
    assert!(checked > 20_000, "{checked}");
}
