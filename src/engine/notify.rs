//! Consumer positions ([`Op::Ack`](crate::Op::Ack)) and balance alerts
//! ([`Op::SetAlert`](crate::Op::SetAlert)), with the `BalanceLow` notifications an alert writes.
//!
//! An alert is edge-triggered by construction: a notification is written when one transaction
//! takes the balance from at or above the threshold to below it, which is a fact about that
//! transaction's own balance before and after. So a run of debits below the line writes
//! nothing more, going back up arms it again, and no "armed" flag has to be stored.

use redb::{ReadableTable, ReadableTableMetadata};

use super::Ctx;
use crate::error::Error;
use crate::model::limits::MAX_CONSUMERS;
use crate::model::records::TxnRecord;
use crate::model::{validate, AckReceipt, AlertReceipt, TxnKind};
use crate::storage::tables::Category;

pub(super) fn ack(ctx: &mut Ctx<'_>, consumer: &str, txn_id: u64) -> Result<AckReceipt, Error> {
    validate::id("consumer", consumer)?;
    let last_txn_id = ctx.state.next_txn_id - 1;
    if txn_id > last_txn_id {
        return Err(Error::AckBeyondEnd {
            consumer: consumer.to_string(),
            txn_id,
            last_txn_id,
        });
    }
    let stored = match ctx.existing_feed_tables() {
        Some(t) => t.consumers.get(consumer)?.map(|v| v.value()),
        None => None,
    };
    let previous_txn_id = stored.unwrap_or(0);
    let receipt = |replay| AckReceipt {
        consumer: consumer.to_string(),
        txn_id,
        replay,
    };
    if txn_id < previous_txn_id {
        return Err(Error::AckBackwards {
            consumer: consumer.to_string(),
            txn_id,
            position_txn_id: previous_txn_id,
        });
    }
    if txn_id == previous_txn_id {
        // A retried ack (or acking 0 before anything): the position already says so.
        return Ok(receipt(true));
    }
    if stored.is_none() {
        let count_after = match ctx.existing_feed_tables() {
            Some(t) => t.consumers.len()? + 1,
            None => 1,
        };
        if count_after > MAX_CONSUMERS as u64 {
            return Err(Error::TooManyConsumers {
                consumer: consumer.to_string(),
                count_after,
                max: MAX_CONSUMERS as u64,
            });
        }
    }
    let r = ctx
        .feed_tables()?
        .consumers
        .insert(consumer, txn_id)
        .map(drop);
    ctx.write(r)?;
    Ok(receipt(false))
}

pub(super) fn set_alert(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    threshold_credits: Option<u64>,
) -> Result<AlertReceipt, Error> {
    validate::id("workspace", workspace)?;
    if let Some(t) = threshold_credits {
        validate::amount("alert threshold", t)?;
    }
    if ctx.workspace(workspace)?.is_none() {
        return Err(Error::UnknownWorkspace {
            workspace: workspace.to_string(),
        });
    }
    let previous = match ctx.existing_feed_tables() {
        Some(t) => t.alerts.get(workspace)?.map(|v| v.value()),
        None => None,
    };
    let receipt = |replay| AlertReceipt {
        workspace: workspace.to_string(),
        threshold_credits,
        replay,
    };
    if previous == threshold_credits {
        return Ok(receipt(true));
    }
    let alerts = &mut ctx.feed_tables()?.alerts;
    let r = match threshold_credits {
        Some(t) => alerts.insert(workspace, t).map(drop),
        None => alerts.remove(workspace).map(drop),
    };
    ctx.write(r)?;
    Ok(receipt(false))
}

/// The `BalanceLow` notification for `rec`, if `rec` took its workspace's balance from at or
/// above the alert threshold to below it.
pub(super) fn crossing(ctx: &Ctx<'_>, rec: &TxnRecord) -> Result<Option<TxnRecord>, Error> {
    if rec.kind.is_notification() || rec.balance_after_credits >= rec.balance_before_credits {
        return Ok(None);
    }
    let Some(feed) = ctx.existing_feed_tables() else {
        return Ok(None);
    };
    let Some(threshold) = feed.alerts.get(rec.workspace.as_str())?.map(|v| v.value()) else {
        return Ok(None);
    };
    if !(rec.balance_before_credits >= threshold && rec.balance_after_credits < threshold) {
        return Ok(None);
    }
    Ok(Some(TxnRecord {
        id: 0,
        at_ms: 0,
        workspace: rec.workspace.clone(),
        kind: TxnKind::BalanceLow,
        amount_credits: 0,
        debit: false,
        balance_before_credits: rec.balance_after_credits,
        balance_after_credits: rec.balance_after_credits,
        title: TxnKind::BalanceLow.to_string(),
        generation_id: rec.generation_id.clone(),
        refund: None,
        idempotency_key: None,
        // The threshold that was crossed, in decimal: see `records::TxnRecord::memo`.
        memo: Some(threshold.to_string()),
        prev_crc: 0,
    }))
}

/// The category a notification is filed under.
pub(super) const NOTIFICATION_CATEGORY: Category = Category::BalanceLow;
