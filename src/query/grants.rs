//! Reads of grants: a workspace's grants with their state, what expires soon, and the split
//! of a balance into what can be spent now and what cannot.

use redb::{ReadTransaction, ReadableTable};
use serde::Serialize;

use crate::error::Error;
use crate::model::limits::MAX_GRANTS_LISTED;
use crate::model::records::GrantRecord;
use crate::model::TxnKind;
use crate::storage::{codec, tables};

/// Where a grant (one lot of it) stands at the time of the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GrantState {
    /// Not spendable yet: its start (`effective_at_ms`) is ahead.
    Pending,
    /// Spendable now, with credits left.
    Spendable,
    /// Open, but every credit is allocated (a refund may bring some back).
    Spent,
    /// Past its expiry, so not spendable, but the sweep has not yet written its Expiration:
    /// its remaining credits still count in the balance, not in the spendable balance.
    ExpiredUnswept,
    /// Expired; `txn` is its Expiration (0 when nothing was left to expire).
    Expired {
        /// The Expiration transaction, or 0.
        txn: u64,
        /// What lapsed.
        credits: u64,
    },
    /// Voided by an operator; `txn` is the Void.
    Voided {
        /// The Void transaction, or 0 for a part that held nothing.
        txn: u64,
        /// What was voided.
        credits: u64,
    },
}

/// One grant of a workspace, or one refund-grace part ("lot") of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantView {
    /// The grant's id: the idempotency key of its credit.
    pub grant_id: String,
    /// 0 for the grant as credited; n >= 1 for the n-th refund-grace part.
    pub lot: u32,
    /// The workspace.
    pub workspace: String,
    /// Its name for people: the credit's memo, else its kind ("Purchase").
    pub label: String,
    /// Drawdown priority (lower is spent first).
    pub priority: u32,
    /// Not spendable before this time.
    pub effective_at_ms: Option<u64>,
    /// Not spendable from this time on.
    pub expires_at_ms: Option<u64>,
    /// Credits it was created with.
    pub amount_credits: u64,
    /// Credits left.
    pub remaining_credits: u64,
    /// Credits charges took from it.
    pub allocated_credits: u64,
    /// Credits refunds gave back to it.
    pub returned_credits: u64,
    /// The transaction that created it (the credit, or the refund for a grace part).
    pub source_txn: u64,
    /// Its state now.
    pub state: GrantState,
}

impl GrantView {
    pub(crate) fn new(g: GrantRecord, now_ms: u64) -> Self {
        let state = match g.closed {
            Some(c) if c.kind == TxnKind::Void => GrantState::Voided {
                txn: c.txn,
                credits: c.credits,
            },
            Some(c) => GrantState::Expired {
                txn: c.txn,
                credits: c.credits,
            },
            None if g.expires_at_ms.is_some_and(|e| now_ms >= e) => GrantState::ExpiredUnswept,
            None if g.effective_at_ms.is_some_and(|e| now_ms < e) => GrantState::Pending,
            None if g.remaining_credits == 0 => GrantState::Spent,
            None => GrantState::Spendable,
        };
        let carried = g.id == crate::engine::grants::carried_over_id();
        GrantView {
            grant_id: if carried {
                crate::model::records::CARRIED_OVER_SHOWN.to_string()
            } else {
                g.id
            },
            lot: g.lot,
            workspace: g.workspace,
            label: g.label,
            priority: g.priority,
            effective_at_ms: g.effective_at_ms,
            expires_at_ms: g.expires_at_ms,
            amount_credits: g.amount_credits,
            remaining_credits: g.remaining_credits,
            allocated_credits: g.allocated_credits,
            returned_credits: g.returned_credits,
            source_txn: g.source_txn,
            state,
        }
    }
}

/// A workspace's balance split by what can be spent at the time of the read. The four parts
/// add up to the balance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BalanceSplit {
    /// Spendable now: grants that are effective and unexpired.
    pub spendable_credits: u64,
    /// Held in grants whose start is ahead.
    pub pending_credits: u64,
    /// Held in grants past their expiry that the sweep has not yet expired.
    pub expired_unswept_credits: u64,
    /// The soonest expiry among the spendable grants, and how many credits it takes.
    pub next_expiry: Option<ExpiryNotice>,
}

/// What expires next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExpiryNotice {
    /// When.
    pub at_ms: u64,
    /// Credits that stop being spendable then.
    pub credits: u64,
}

fn decode_all(
    t: &impl ReadableTable<(&'static str, &'static str, u32), &'static [u8]>,
    workspace: &str,
    limit: usize,
) -> Result<Vec<GrantRecord>, Error> {
    let mut out = Vec::new();
    for entry in t.range((workspace, "", 0u32)..)? {
        let (k, v) = entry?;
        let (ws, id, lot) = k.value();
        if ws != workspace || out.len() >= limit {
            break;
        }
        out.push(codec::decode(
            "grants",
            &format_args!("({ws}, {id}, {lot})"),
            v.value(),
        )?);
    }
    Ok(out)
}

/// The open lots of `workspace` that hold credits, read from the drawdown index.
fn open_lots(rtx: &ReadTransaction, workspace: &str) -> Result<Vec<GrantRecord>, Error> {
    let (Some(order), Some(grants)) = (
        tables::open_optional(rtx, tables::GRANT_ORDER)?,
        tables::open_optional(rtx, tables::GRANTS)?,
    ) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let start: tables::OrderKey<'_> = (workspace, 0, 0, 0, "", 0);
    for entry in order.range(start..)? {
        let (k, _) = entry?;
        let (ws, _, _, _, id, lot) = k.value();
        if ws != workspace {
            break;
        }
        if let Some(g) = tables::get_grant(&grants, ws, id, lot)? {
            out.push(g);
        }
    }
    Ok(out)
}

/// Every grant lot of `workspace`, in drawdown order (at most [`MAX_GRANTS_LISTED`]).
pub(crate) fn grants(
    rtx: &ReadTransaction,
    workspace: &str,
    now_ms: u64,
) -> Result<Vec<GrantView>, Error> {
    let Some(t) = tables::open_optional(rtx, tables::GRANTS)? else {
        return Ok(Vec::new());
    };
    let mut all = decode_all(&t, workspace, MAX_GRANTS_LISTED)?;
    all.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    Ok(all.into_iter().map(|g| GrantView::new(g, now_ms)).collect())
}

/// The spendable grant lots of `workspace` whose expiry falls within `within_ms` of now,
/// soonest first.
pub(crate) fn expiring(
    rtx: &ReadTransaction,
    workspace: &str,
    now_ms: u64,
    within_ms: u64,
) -> Result<Vec<GrantView>, Error> {
    let until = now_ms.saturating_add(within_ms);
    let mut lots: Vec<GrantRecord> = open_lots(rtx, workspace)?
        .into_iter()
        .filter(|g| g.spendable_at(now_ms) && g.expires_at_ms.is_some_and(|e| e < until))
        .collect();
    lots.sort_by_key(|g| (g.expires_at_ms, g.order_key().4.to_string(), g.lot));
    Ok(lots
        .into_iter()
        .map(|g| GrantView::new(g, now_ms))
        .collect())
}

/// The split of `workspace`'s balance at `now_ms`. A workspace from before grants (no grant
/// book yet) has all of its balance spendable.
pub(crate) fn split(
    rtx: &ReadTransaction,
    workspace: &str,
    balance_credits: u64,
    now_ms: u64,
) -> Result<BalanceSplit, Error> {
    let has_book = match tables::open_optional(rtx, tables::GRANT_BOOKS)? {
        Some(t) => tables::get_book(&t, workspace)?.is_some(),
        None => false,
    };
    if !has_book {
        return Ok(BalanceSplit {
            spendable_credits: balance_credits,
            ..BalanceSplit::default()
        });
    }
    // Every part is a share of the balance, a u64: a sum past it is a damaged file.
    let add = |into: &mut u64, r: u64| -> Result<(), Error> {
        *into = into.checked_add(r).ok_or_else(|| Error::Corruption {
            table: "grants",
            key: workspace.to_string(),
            detail: "the workspace's grant lots hold more than u64::MAX credits".into(),
        })?;
        Ok(())
    };
    let mut s = BalanceSplit::default();
    for g in open_lots(rtx, workspace)? {
        let r = g.remaining_credits;
        if g.expires_at_ms.is_some_and(|e| now_ms >= e) {
            add(&mut s.expired_unswept_credits, r)?;
        } else if g.effective_at_ms.is_some_and(|e| now_ms < e) {
            add(&mut s.pending_credits, r)?;
        } else {
            add(&mut s.spendable_credits, r)?;
            if let Some(at_ms) = g.expires_at_ms {
                match &mut s.next_expiry {
                    Some(n) if n.at_ms == at_ms => add(&mut n.credits, r)?,
                    Some(n) if n.at_ms < at_ms => {}
                    n => *n = Some(ExpiryNotice { at_ms, credits: r }),
                }
            }
        }
    }
    Ok(s)
}

/// What the grant books say every workspace lost to expiry and voids: `(expired, voided)`.
pub(crate) fn book_totals(rtx: &ReadTransaction, workspace: &str) -> Result<(u64, u64), Error> {
    Ok(match tables::open_optional(rtx, tables::GRANT_BOOKS)? {
        Some(t) => tables::get_book(&t, workspace)?
            .map_or((0, 0), |b| (b.expired_credits, b.voided_credits)),
        None => (0, 0),
    })
}
