//! Consumer positions ([`Op::Ack`](crate::Op::Ack)) and balance alerts
//! ([`Op::SetAlert`](crate::Op::SetAlert)), with the `BalanceLow` notifications an alert writes,
//! and the `GrantExpiring` notices of grants that expire soon.
//!
//! An alert is edge-triggered by construction: a notification is written when one transaction
//! takes the balance from at or above the threshold to below it, which is a fact about that
//! transaction's own balance before and after. So a run of debits below the line writes
//! nothing more, going back up arms it again, and no "armed" flag has to be stored.
//!
//! A grant notice is due once, at a time fixed when the grant is credited: its expiry minus
//! the notice window then in force ([`EngineConfig::grant_expiring_notice_ms`]), and not
//! before the grant starts. A credit whose notice is already due writes it at once, in its
//! own commit; otherwise the due time goes into the `grant_notices` index, and the sweep
//! writes the notice once it is due, removing the entry in the same commit. So a notice is
//! written at most once (the entry is gone with it, and a replayed credit is answered from its
//! key before anything is written), and only for a grant that is spendable with credits left
//! at that moment: one spent to 0, voided, or already expired by then gets none.
//!
//! [`EngineConfig::grant_expiring_notice_ms`]: super::EngineConfig::grant_expiring_notice_ms

use redb::{ReadableTable, ReadableTableMetadata};

use super::Ctx;
use crate::error::Error;
use crate::model::limits::MAX_CONSUMERS;
use crate::model::records::{AllocationEntry, AllocationRecord, GrantRecord, TxnRecord};
use crate::model::{validate, AckReceipt, AlertReceipt, GrantExpiringNotice, TxnKind};
use crate::storage::tables::{self, Category};

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
        Some(t) => t.consumers.table()?.get(consumer)?.map(|v| v.value()),
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
            Some(t) => t.consumers.table()?.len()? + 1,
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
    let r = (ctx.feed_tables()?.consumers).write(|t| t.insert(consumer, txn_id).map(drop));
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
        refund_lots: None,
    }))
}

/// The category a notification is filed under.
pub(super) const NOTIFICATION_CATEGORY: Category = Category::BalanceLow;

/// When the notice of a grant that starts at `effective_at_ms` and expires at `expires_at_ms`
/// is due under a window of `notice_ms`: that long before the expiry, but not before the grant
/// starts (a notice about credits nobody can spend yet would only confuse). Always before the
/// expiry, which is after the start.
pub(crate) fn notice_due_ms(
    expires_at_ms: u64,
    effective_at_ms: Option<u64>,
    notice_ms: u64,
) -> u64 {
    expires_at_ms
        .saturating_sub(notice_ms)
        .max(effective_at_ms.unwrap_or(0))
}

/// Schedule the notice of `grant`, lot 0 of a grant just credited: write it now when it is
/// already due, else put its due time in the index. Nothing without an expiry or a window.
pub(super) fn schedule_grant_notice(ctx: &mut Ctx<'_>, grant: &GrantRecord) -> Result<(), Error> {
    let (Some(notice_ms), Some(expires_at_ms)) =
        (ctx.config.grant_expiring_notice_ms, grant.expires_at_ms)
    else {
        return Ok(());
    };
    let due_ms = notice_due_ms(expires_at_ms, grant.effective_at_ms, notice_ms);
    if due_ms <= ctx.now_ms {
        return write_grant_notice(ctx, grant).map(drop);
    }
    ctx.deadlines_changed = true;
    let r = ctx
        .notices_mut()?
        .insert(
            (due_ms, grant.workspace.as_str(), grant.id.as_str()),
            expires_at_ms,
        )
        .map(drop);
    ctx.write(r)
}

/// The notice entries due at `ctx.now_ms`, earliest first: at most `budget + 1`, so that the
/// caller can tell whether more are due than it may handle.
pub(super) fn due_notices(
    ctx: &Ctx<'_>,
    budget: usize,
) -> Result<Vec<(u64, String, String, u64)>, Error> {
    let mut due = Vec::new();
    let Some(t) = ctx.notices() else {
        return Ok(due);
    };
    for entry in t.range::<tables::NoticeKey<'_>>(..)? {
        let (key, value) = entry?;
        let (due_ms, ws, id) = key.value();
        if due_ms > ctx.now_ms || due.len() > budget {
            break;
        }
        due.push((due_ms, ws.to_string(), id.to_string(), value.value()));
    }
    Ok(due)
}

/// Handle one due entry: remove it, and write the notice if the grant is spendable with
/// credits left now. `None` when it was not (spent to 0, voided, or expired unswept).
pub(super) fn send_due_notice(
    ctx: &mut Ctx<'_>,
    (due_ms, ws, id, expires_at_ms): (u64, String, String, u64),
) -> Result<Option<GrantExpiringNotice>, Error> {
    // Through the lot cache: an earlier operation of this batch may have spent from the
    // grant, and the table is behind until the batch's flush.
    let grant = ctx.grant(&ws, &id, 0)?;
    let grant = match grant {
        Some(g) if g.expires_at_ms == Some(expires_at_ms) && due_ms < expires_at_ms => g,
        _ => {
            return Err(Error::Corruption {
                table: "grant_notices",
                key: format!("({due_ms}, {ws}, {id})"),
                detail: format!(
                "index entry for a grant that does not exist or does not expire at {expires_at_ms}"
            ),
            })
        }
    };
    ctx.deadlines_changed = true;
    let r = ctx
        .notices_mut()?
        .remove((due_ms, ws.as_str(), id.as_str()))
        .map(drop);
    ctx.write(r)?;
    if grant.remaining_credits == 0 || !grant.spendable_at(ctx.now_ms) {
        return Ok(None);
    }
    write_grant_notice(ctx, &grant).map(Some)
}

/// Append the `GrantExpiring` notice of `grant` (lot 0, spendable with credits left): amount
/// 0, the balance unchanged, titled with the grant's label; its allocation names the grant,
/// the credits it holds and its expiry.
fn write_grant_notice(
    ctx: &mut Ctx<'_>,
    grant: &GrantRecord,
) -> Result<GrantExpiringNotice, Error> {
    let expires_at_ms = grant
        .expires_at_ms
        .expect("invariant: only a grant with an expiry gets a notice");
    let balance = ctx
        .workspace(&grant.workspace)?
        .ok_or_else(|| Error::Corruption {
            table: "workspaces",
            key: grant.workspace.clone(),
            detail: "missing, but it holds grants".into(),
        })?
        .balance_credits;
    let rec = ctx.append(
        TxnRecord {
            id: 0,
            at_ms: 0,
            workspace: grant.workspace.clone(),
            kind: TxnKind::GrantExpiring,
            amount_credits: 0,
            debit: false,
            balance_before_credits: balance,
            balance_after_credits: balance,
            title: grant.label.clone(),
            generation_id: None,
            refund: None,
            idempotency_key: None,
            memo: None,
            prev_crc: 0,
            refund_lots: None,
        },
        Category::GrantExpiring,
    )?;
    *ctx.notifications.entry(rec.workspace.clone()).or_default() += 1;
    ctx.put_allocations(
        rec.id,
        &AllocationRecord {
            entries: vec![AllocationEntry {
                grant_id: grant.id.clone(),
                lot: 0,
                from_lot: 0,
                credits: grant.remaining_credits,
                expires_at_ms: Some(expires_at_ms),
            }],
        },
    )?;
    Ok(GrantExpiringNotice {
        txn_id: rec.id,
        workspace: rec.workspace,
        grant_id: grant.id.clone(),
        expires_at_ms,
        expiring_credits: grant.remaining_credits,
        at_ms: rec.at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::notice_due_ms;

    #[test]
    fn a_notice_is_due_the_window_before_expiry_but_not_before_the_start() {
        assert_eq!(notice_due_ms(1_000, None, 300), 700);
        assert_eq!(notice_due_ms(1_000, Some(800), 300), 800);
        // A window longer than the time since the epoch: due at once (0), not a wrap.
        assert_eq!(notice_due_ms(1_000, None, u64::MAX), 0);
        // Always before the expiry, which is after the start.
        for (exp, start, w) in [(5, Some(4), 1), (5, Some(4), 100), (u64::MAX, None, 1)] {
            assert!(notice_due_ms(exp, start, w) < exp);
        }
    }
}
