//! Failure and refund statistics over a time window.

use std::collections::BTreeMap;

use redb::ReadTransaction;
use serde::Serialize;

use super::id_range;
use crate::error::Error;
use crate::model::TxnKind;
use crate::storage::tables;

/// A time range, inclusive at both ends; `None` leaves that end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimeWindow {
    /// Start (inclusive).
    pub since_ms: Option<u64>,
    /// End (inclusive).
    pub until_ms: Option<u64>,
}

impl TimeWindow {
    /// All of time.
    pub fn all() -> Self {
        Self::default()
    }

    /// `[since_ms, until_ms]`.
    pub fn between(since_ms: u64, until_ms: u64) -> Self {
        TimeWindow {
            since_ms: Some(since_ms),
            until_ms: Some(until_ms),
        }
    }
}

/// Refunds of one reason. Credit sums are `u128`: each amount is a `u64`, and a sum over many
/// workspaces can pass `u64::MAX` (a sum is never cut short: it is exact or it is an error).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReasonStats {
    /// Refunds.
    pub refunds: u64,
    /// Credits refunded.
    pub refunded_credits: u128,
}

/// Activity of one feature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeatureStats {
    /// Generations started (Usage transactions).
    pub started: u64,
    /// Generations refunded.
    pub refunds: u64,
    /// Credits charged.
    pub charged_credits: u128,
    /// Credits refunded.
    pub refunded_credits: u128,
}

/// Failures and refunds in a window. Every failure is a refund, so the two counts agree.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// The window.
    pub window: TimeWindow,
    /// Generations started in the window.
    pub started: u64,
    /// Refunds written in the window.
    pub refunds: u64,
    /// Credits refunded in the window.
    pub refunded_credits: u128,
    /// `refunds / started`, or 0 when nothing started.
    pub failure_rate: f64,
    /// Refunds by reason (`model-failure`, `timeout`...).
    pub by_reason: BTreeMap<String, ReasonStats>,
    /// Starts and refunds by feature.
    pub by_feature: BTreeMap<String, FeatureStats>,
}

/// O(transactions in the window): stats are an aggregate, read by operators, not per request.
///
/// The counts are `u64` and cannot overflow: each counts transactions, whose ids are `u64`.
/// The credit sums add `u64` amounts into `u128`, which 2^64 transactions cannot overflow.
pub(crate) fn stats(rtx: &ReadTransaction, window: TimeWindow) -> Result<Stats, Error> {
    let txns = rtx.open_table(tables::TRANSACTIONS)?;
    let (lo, hi) = id_range(&txns, window.since_ms, window.until_ms)?;
    let mut s = Stats {
        window,
        ..Stats::default()
    };
    if lo > hi {
        return Ok(s);
    }
    for entry in txns.range(lo..=hi)? {
        let (k, v) = entry?;
        let rec = tables::decode_txn(k.value(), v.value())?;
        match rec.kind {
            TxnKind::Usage => {
                s.started += 1;
                let f = s.by_feature.entry(rec.title.clone()).or_default();
                f.started += 1;
                f.charged_credits += u128::from(rec.amount_credits);
            }
            TxnKind::Refund => {
                s.refunds += 1;
                s.refunded_credits += u128::from(rec.amount_credits);
                if let Some(d) = &rec.refund {
                    let r = s
                        .by_reason
                        .entry(d.reason.as_str().to_string())
                        .or_default();
                    r.refunds += 1;
                    r.refunded_credits += u128::from(rec.amount_credits);
                }
                let f = s.by_feature.entry(rec.title.clone()).or_default();
                f.refunds += 1;
                f.refunded_credits += u128::from(rec.amount_credits);
            }
            _ => {}
        }
    }
    if s.started > 0 {
        s.failure_rate = s.refunds as f64 / s.started as f64;
    }
    Ok(s)
}
