//! Credits (Purchase, Grant) and operator Adjustments.

use redb::ReadableTable;

use super::{grants, notify, Ctx};
use crate::error::{Error, InvalidInput};
use crate::model::limits::MAX_MEMO_BYTES;
use crate::model::records::{AllocationRecord, GrantRecord, TxnRecord, WorkspaceRecord};
use crate::model::{validate, Adjust, Credit, Receipt, TxnKind};
use crate::storage::tables::Category;

/// What a credit or adjustment asks for, after validation.
struct Movement<'a> {
    workspace: &'a str,
    kind: TxnKind,
    amount_credits: u64,
    debit: bool,
    key: &'a str,
    memo: &'a str,
    /// The grant terms of a credit (`None` for an adjustment).
    terms: Option<&'a Credit>,
}

impl Movement<'_> {
    fn signed(&self) -> i64 {
        // Amounts are validated to be at most i64::MAX.
        let a = i64::try_from(self.amount_credits).unwrap_or(i64::MAX);
        if self.debit {
            -a
        } else {
            a
        }
    }
}

pub(super) fn credit(ctx: &mut Ctx<'_>, req: &Credit) -> Result<Receipt, Error> {
    validate::new_id("workspace", &req.workspace)?;
    validate::amount("amount", req.amount_credits)?;
    validate::new_id("idempotency key", &req.idempotency_key)?;
    validate::text("memo", &req.memo, MAX_MEMO_BYTES, true)?;
    grants::validate_terms(req)?;
    apply(
        ctx,
        &Movement {
            workspace: &req.workspace,
            kind: req.kind.txn_kind(),
            amount_credits: req.amount_credits,
            debit: false,
            key: &req.idempotency_key,
            memo: &req.memo,
            terms: Some(req),
        },
    )
}

pub(super) fn adjust(ctx: &mut Ctx<'_>, req: &Adjust) -> Result<Receipt, Error> {
    validate::new_id("workspace", &req.workspace)?;
    validate::amount("amount", req.amount_credits.unsigned_abs())?;
    validate::new_id("idempotency key", &req.idempotency_key)?;
    validate::text("memo", &req.memo, MAX_MEMO_BYTES, false)?;
    apply(
        ctx,
        &Movement {
            workspace: &req.workspace,
            kind: TxnKind::Adjustment,
            amount_credits: req.amount_credits.unsigned_abs(),
            debit: req.amount_credits < 0,
            key: &req.idempotency_key,
            memo: &req.memo,
            terms: None,
        },
    )
}

/// A zero-credit Adjustment on `workspace` (which exists): a note in its log, with no
/// idempotency key, that changes no balance. See [`super::note_every_workspace`].
pub(super) fn note(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    title: &str,
    memo: &str,
) -> Result<(), Error> {
    let Some(mut ws) = ctx.workspace(workspace)? else {
        return Err(Error::UnknownWorkspace {
            workspace: workspace.to_string(),
        });
    };
    ws.txn_count = ws.txn_count.checked_add(1).ok_or_else(|| Error::Overflow {
        workspace: workspace.to_string(),
        what: "the transaction count",
    })?;
    ctx.append(
        TxnRecord {
            id: 0,
            at_ms: 0,
            workspace: workspace.to_string(),
            kind: TxnKind::Adjustment,
            amount_credits: 0,
            debit: false,
            balance_before_credits: ws.balance_credits,
            balance_after_credits: ws.balance_credits,
            title: title.to_string(),
            generation_id: None,
            refund: None,
            idempotency_key: None,
            memo: Some(memo.to_string()),
            prev_crc: 0,
            refund_lots: None,
        },
        Category::Adjustment,
    )?;
    ctx.put_workspace(workspace, &ws)
}

fn receipt(rec: &TxnRecord, replay: bool) -> Receipt {
    Receipt {
        txn_id: rec.id,
        workspace: rec.workspace.clone(),
        kind: rec.kind,
        amount_credits: i64::try_from(rec.signed_amount()).unwrap_or(i64::MIN),
        balance_before_credits: rec.balance_before_credits,
        balance_after_credits: rec.balance_after_credits,
        at_ms: rec.at_ms,
        replay,
    }
}

/// The first grant term in which a stored grant differs from a retried credit.
fn differing_term(grant: &GrantRecord, req: &Credit) -> Option<(&'static str, String, String)> {
    let show = |t: Option<u64>| t.map_or_else(|| "none".to_string(), |t| format!("{t} ms"));
    if grant.priority != req.priority {
        return Some((
            "priority",
            grant.priority.to_string(),
            req.priority.to_string(),
        ));
    }
    if grant.expires_at_ms != req.expires_at_ms {
        return Some((
            "expires_at_ms",
            show(grant.expires_at_ms),
            show(req.expires_at_ms),
        ));
    }
    if grant.effective_at_ms != req.effective_at_ms {
        return Some((
            "effective_at_ms",
            show(grant.effective_at_ms),
            show(req.effective_at_ms),
        ));
    }
    None
}

/// The first field in which a stored transaction differs from a retried request.
fn differing_field(rec: &TxnRecord, m: &Movement<'_>) -> Option<(&'static str, String, String)> {
    if rec.kind != m.kind {
        return Some(("kind", rec.kind.to_string(), m.kind.to_string()));
    }
    if rec.workspace != m.workspace {
        return Some(("workspace", rec.workspace.clone(), m.workspace.to_string()));
    }
    let stored = rec.signed_amount();
    if stored != i128::from(m.signed()) {
        return Some(("amount", stored.to_string(), m.signed().to_string()));
    }
    let stored_memo = rec.memo.as_deref().unwrap_or("");
    if stored_memo != m.memo {
        return Some(("memo", format!("{stored_memo:?}"), format!("{:?}", m.memo)));
    }
    None
}

fn apply(ctx: &mut Ctx<'_>, m: &Movement<'_>) -> Result<Receipt, Error> {
    // A retry: same key. Same request replays the receipt; a different one conflicts.
    let existing = ctx.idempotency.table()?.get(m.key)?.map(|v| v.value());
    if let Some(txn_id) = existing {
        let rec = ctx.txn_record(txn_id)?.ok_or_else(|| Error::Corruption {
            table: "idempotency",
            key: m.key.to_string(),
            detail: format!("points at missing transaction #{txn_id}"),
        })?;
        let mut differs = differing_field(&rec, m);
        if let (None, Some(req)) = (&differs, m.terms) {
            // Credits from before grants have no grant record: they had no terms to differ.
            if let Some(g) = grants::lot0(ctx, m.workspace, m.key)? {
                differs = differing_term(&g, req);
            }
        }
        if let Some((field, existing, requested)) = differs {
            return Err(Error::Conflict {
                entity: "idempotency key",
                id: m.key.to_string(),
                field,
                existing,
                requested,
            });
        }
        return Ok(receipt(&rec, true));
    }

    if let Some(expires_at_ms) = m.terms.and_then(|t| t.expires_at_ms) {
        if expires_at_ms <= ctx.now_ms {
            return Err(InvalidInput::ExpiryInPast {
                expires_at_ms,
                now_ms: ctx.now_ms,
            }
            .into());
        }
    }
    let mut ws = match ctx.workspace(m.workspace)? {
        Some(ws) => ws,
        None if m.kind == TxnKind::Adjustment => {
            return Err(Error::UnknownWorkspace {
                workspace: m.workspace.to_string(),
            })
        }
        None => WorkspaceRecord {
            created_at_ms: ctx.now_ms,
            ..WorkspaceRecord::default()
        },
    };
    let overflow = |what| Error::Overflow {
        workspace: m.workspace.to_string(),
        what,
    };
    let before = ws.balance_credits;
    let mut takes = None;
    if m.debit {
        // A negative adjustment takes from the spendable grants, in drawdown order.
        let planned = grants::plan_debit(ctx, m.workspace, before, m.amount_credits)?;
        takes = Some(planned.map_err(|spendable| Error::InsufficientCredits {
            workspace: m.workspace.to_string(),
            balance_credits: spendable,
            required_credits: m.amount_credits,
        })?);
        ws.balance_credits =
            before
                .checked_sub(m.amount_credits)
                .ok_or_else(|| Error::Corruption {
                    table: "workspaces",
                    key: m.workspace.to_string(),
                    detail: format!("balance {before} is below its spendable grants"),
                })?;
        ws.adjusted_out_credits = ws
            .adjusted_out_credits
            .checked_add(m.amount_credits)
            .ok_or_else(|| overflow("the adjusted-out total"))?;
    } else {
        ws.balance_credits = before
            .checked_add(m.amount_credits)
            .ok_or_else(|| overflow("the balance"))?;
        // Room must remain to refund every running generation in full.
        ws.balance_credits
            .checked_add(ws.held_credits)
            .ok_or_else(|| overflow("the balance plus the credits held by running generations"))?;
        let total = if m.kind == TxnKind::Adjustment {
            &mut ws.adjusted_in_credits
        } else {
            &mut ws.granted_credits
        };
        *total = total
            .checked_add(m.amount_credits)
            .ok_or_else(|| overflow("the credited total"))?;
    }
    ws.txn_count = ws
        .txn_count
        .checked_add(1)
        .ok_or_else(|| overflow("the transaction count"))?;

    // Checked and computed: now write.
    let ws_before = ctx
        .workspace(m.workspace)?
        .unwrap_or_else(|| WorkspaceRecord {
            created_at_ms: ctx.now_ms,
            ..WorkspaceRecord::default()
        });
    // The clock check `append` makes, made before the first grant write.
    ctx.trust_clock()?;
    grants::ensure_book(ctx, m.workspace, &ws_before)?;
    let category = match m.kind {
        TxnKind::Purchase => Category::Purchase,
        TxnKind::Grant => Category::Grant,
        _ => Category::Adjustment,
    };
    let rec = ctx.append(
        TxnRecord {
            id: 0,
            at_ms: 0,
            workspace: m.workspace.to_string(),
            kind: m.kind,
            amount_credits: m.amount_credits,
            debit: m.debit,
            balance_before_credits: before,
            balance_after_credits: ws.balance_credits,
            title: m.kind.to_string(),
            generation_id: None,
            refund: None,
            idempotency_key: Some(m.key.to_string()),
            memo: Some(m.memo.to_string()),
            prev_crc: 0,
            refund_lots: None,
        },
        category,
    )?;
    ctx.put_workspace(m.workspace, &ws)?;
    match takes {
        Some(planned) => {
            let entries = grants::debit(ctx, m.workspace, &ws_before, planned, m.amount_credits)?;
            ctx.put_allocations(rec.id, &AllocationRecord { entries })?;
        }
        None => {
            let (priority, effective, expires) = m
                .terms
                .map_or((crate::limits::DEFAULT_GRANT_PRIORITY, None, None), |t| {
                    (t.priority, t.effective_at_ms, t.expires_at_ms)
                });
            let label = if m.memo.is_empty() {
                m.kind.to_string()
            } else {
                m.memo.to_string()
            };
            let grant = grants::create(
                ctx,
                m.workspace,
                m.key,
                &label,
                m.amount_credits,
                rec.id,
                priority,
                effective,
                expires,
            )?;
            notify::schedule_grant_notice(ctx, &grant)?;
        }
    }
    let r = ctx.idempotency.write(|t| t.insert(m.key, rec.id).map(drop));
    ctx.write(r)?;
    Ok(receipt(&rec, false))
}
