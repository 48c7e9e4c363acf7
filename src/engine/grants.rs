//! Grants: where a workspace's credits are held, the order charges spend them in, and where
//! refunds, expiries and voids put them.
//!
//! Every credit is a grant (its id is the credit's idempotency key) with a priority, an
//! optional start and an optional expiry. A charge takes from the spendable grants in
//! drawdown order: priority ascending, then expiry ascending (none last), then start, then id.
//! It may span grants; the Usage's allocations say which paid how much. A refund gives each
//! allocation back to its grant; if that grant has expired, or expires before the refund's
//! time plus the refund grace, the credits go into a new *grace lot* of the grant that stays
//! spendable until then, so a user whose generation failed can always retry.

use redb::ReadableTable;

use super::lots::{self, Take};
use super::Ctx;
use crate::error::{Error, InvalidInput};
use crate::model::limits::{MAX_GRANT_PRIORITY, MAX_LOTS_PER_TRANSACTION, MAX_MEMO_BYTES};
use crate::model::records::{
    AllocationEntry, AllocationRecord, GrantBook, GrantClosed, GrantRecord, TxnRecord,
    WorkspaceRecord,
};
use crate::model::{validate, Credit, GrantClosure, TxnKind, VoidGrant};
use crate::storage::tables::{self, Category};

/// The id of the grant that holds the balance a workspace had before grants existed. It has a
/// control character, which no caller's key may hold, so it never collides with one.
pub(crate) fn carried_over_id() -> &'static str {
    "\u{1}carried-over"
}

/// Check a credit's grant terms that do not depend on the ledger's state.
pub(super) fn validate_terms(req: &Credit) -> Result<(), InvalidInput> {
    if req.priority > MAX_GRANT_PRIORITY {
        return Err(InvalidInput::PriorityOutOfRange {
            priority: req.priority,
            max: MAX_GRANT_PRIORITY,
        });
    }
    if let (Some(effective_at_ms), Some(expires_at_ms)) = (req.effective_at_ms, req.expires_at_ms) {
        if expires_at_ms <= effective_at_ms {
            return Err(InvalidInput::ExpiryNotAfterStart {
                effective_at_ms,
                expires_at_ms,
            });
        }
    }
    Ok(())
}

/// The grant book of `workspace`, creating it if the workspace predates grants: its whole
/// balance then becomes one carried-over grant with the default priority and no expiry,
/// which is exactly how it was spent before. Call before the operation appends its
/// transaction (whose id the book and the carried-over grant record).
pub(super) fn ensure_book(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    ws: &WorkspaceRecord,
) -> Result<GrantBook, Error> {
    if let Some(book) = ctx.book(workspace)? {
        return Ok(book);
    }
    let book = GrantBook {
        since_txn: ctx.state.next_txn_id,
        ..GrantBook::default()
    };
    if ws.balance_credits > 0 {
        let rec = GrantRecord {
            id: carried_over_id().to_string(),
            lot: 0,
            workspace: workspace.to_string(),
            source_txn: ctx.state.next_txn_id,
            label: "Carried over".to_string(),
            amount_credits: ws.balance_credits,
            remaining_credits: ws.balance_credits,
            allocated_credits: 0,
            returned_credits: 0,
            priority: crate::limits::DEFAULT_GRANT_PRIORITY,
            effective_at_ms: None,
            expires_at_ms: None,
            grace_lots: 0,
            closed: None,
        };
        ctx.put_grant(None, &rec)?;
    }
    ctx.put_book(workspace, &book);
    Ok(book)
}

/// Create lot 0 of a new grant of `amount_credits`, credited by transaction `source_txn`.
/// Returns the lot written.
#[allow(clippy::too_many_arguments)]
pub(super) fn create(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    id: &str,
    label: &str,
    amount_credits: u64,
    source_txn: u64,
    priority: u32,
    effective_at_ms: Option<u64>,
    expires_at_ms: Option<u64>,
) -> Result<GrantRecord, Error> {
    let rec = GrantRecord {
        id: id.to_string(),
        lot: 0,
        workspace: workspace.to_string(),
        source_txn,
        label: label.to_string(),
        amount_credits,
        remaining_credits: amount_credits,
        allocated_credits: 0,
        returned_credits: 0,
        priority,
        effective_at_ms,
        expires_at_ms,
        grace_lots: 0,
        closed: None,
    };
    ctx.put_grant(None, &rec)?;
    Ok(rec)
}

/// Lot 0 of grant `id`, as this transaction sees it.
pub(super) fn lot0(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    id: &str,
) -> Result<Option<GrantRecord>, Error> {
    ctx.grant(workspace, id, 0)
}

/// What a charge of `cost` would take, in drawdown order, without writing anything. `Err`
/// carries the spendable balance when it is not enough.
///
/// A plan reads the workspace's drawdown index up to the lot that completes it, and each lot
/// on the way, into the transaction's lot cache. When that read reaches the end of the
/// workspace's index (one lot, or a charge that needs them all) the cache then holds every
/// lot of it, and the workspace's later charges in the transaction plan from memory (see
/// [`lots`](super::lots)).
pub(super) fn plan(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    cost: u64,
) -> Result<Result<Vec<Take>, u64>, Error> {
    let mut planner = Planner {
        workspace,
        now_ms: ctx.now_ms,
        need: cost,
        spendable: 0,
        takes: Vec::new(),
    };
    if ctx.lots.is_ordered(workspace) {
        for rec in ctx.lots.in_drawdown_order(workspace) {
            if planner.offer(rec)? {
                return Ok(Ok(planner.takes));
            }
        }
        return Ok(Err(planner.spendable));
    }
    let start: tables::OrderKey<'_> = (workspace, 0, 0, 0, "", 0);
    // The index and the lot cache are separate fields: the scan reads one, fills the other.
    let gt = ctx
        .grant_tables
        .as_ref()
        .expect("invariant: a batch that moves credits opens the grant tables");
    let mut range = gt.order.table()?.range(start..)?;
    while let Some(entry) = range.next() {
        let (key, _) = entry?;
        let (ws, _, _, _, id, lot) = key.value();
        if ws != workspace {
            break;
        }
        let rec = ctx.lots.get(&gt.grants, workspace, id, lot)?;
        let rec = match rec {
            Some(r) if lots::in_order(&r) && r.order_key() == key.value() => r,
            other => {
                return Err(Error::Corruption {
                    table: "grant_order",
                    key: format!("({workspace}, {id}, {lot})"),
                    detail: match other {
                        None => "index entry for a grant lot that does not exist".into(),
                        Some(_) => "index entry that does not match its grant lot".into(),
                    },
                })
            }
        };
        if planner.offer(&rec)? {
            // One step more says whether that was the workspace's last lot.
            let last = match range.next().transpose()? {
                Some((next, _)) => next.value().0 != workspace,
                None => true,
            };
            if last {
                ctx.lots.mark_ordered(workspace);
            }
            return Ok(Ok(planner.takes));
        }
    }
    ctx.lots.mark_ordered(workspace);
    Ok(Err(planner.spendable))
}

/// A plan in the making: the lots offered to it, in drawdown order.
struct Planner<'a> {
    workspace: &'a str,
    now_ms: u64,
    need: u64,
    spendable: u64,
    takes: Vec<Take>,
}

impl Planner<'_> {
    /// Count lot `rec` in, taking what the charge still needs from it if it is spendable.
    /// Returns whether the plan is complete. Past the lot that completes it, only a refusal
    /// reads on, to report the whole spendable balance.
    fn offer(&mut self, rec: &GrantRecord) -> Result<bool, Error> {
        if !rec.spendable_at(self.now_ms) {
            return Ok(false);
        }
        // The lots' remainders add up to the balance, a u64: a sum past it is a damaged file.
        self.spendable = self
            .spendable
            .checked_add(rec.remaining_credits)
            .ok_or_else(|| Error::Corruption {
                table: "grants",
                key: self.workspace.to_string(),
                detail: "the workspace's grant lots hold more than u64::MAX credits".into(),
            })?;
        if self.need > 0 {
            if self.takes.len() == MAX_LOTS_PER_TRANSACTION {
                return Err(Error::TooManyLots {
                    workspace: self.workspace.to_string(),
                    max_lots: MAX_LOTS_PER_TRANSACTION,
                });
            }
            let credits = self.need.min(rec.remaining_credits);
            self.need -= credits;
            self.takes.push(Take {
                id: rec.id.clone(),
                lot: rec.lot,
                credits,
            });
        }
        Ok(self.need == 0)
    }
}

/// A debit checked against the spendable grants, ready to be taken.
pub(super) enum Planned {
    /// These lots, these credits.
    Takes(Vec<Take>),
    /// A workspace from before grants: its whole balance is spendable, and the credits come
    /// from the carried-over grant its first write creates.
    CarriedOver,
}

/// Check that `workspace` can pay `cost` from its spendable grants, without writing.
/// `Err(spendable)` when it cannot.
pub(super) fn plan_debit(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    balance_credits: u64,
    cost: u64,
) -> Result<Result<Planned, u64>, Error> {
    if ctx.book(workspace)?.is_some() {
        return Ok(plan(ctx, workspace, cost)?.map(Planned::Takes));
    }
    Ok(if balance_credits >= cost {
        Ok(Planned::CarriedOver)
    } else {
        Err(balance_credits)
    })
}

/// Take a planned debit of `cost` (call once every check has passed). `before` is the
/// workspace as it was before this operation. Returns the allocations to record.
pub(super) fn debit(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    before: &WorkspaceRecord,
    planned: Planned,
    cost: u64,
) -> Result<Vec<AllocationEntry>, Error> {
    let takes = match planned {
        Planned::Takes(t) => t,
        Planned::CarriedOver => {
            // Normally done already, before the operation's transaction was appended.
            ensure_book(ctx, workspace, before)?;
            plan(ctx, workspace, cost)?.map_err(|_| Error::Corruption {
                table: "grants",
                key: workspace.to_string(),
                detail: "the carried-over grant does not hold the balance".into(),
            })?
        }
    };
    take(ctx, workspace, takes)
}

/// Take the planned credits from their lots. Returns the allocations to record.
fn take(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    takes: Vec<Take>,
) -> Result<Vec<AllocationEntry>, Error> {
    let mut out = Vec::with_capacity(takes.len());
    for t in takes {
        let rec = ctx.take_from_lot(workspace, &t.id, t.lot, t.credits)?;
        let expires_at_ms = rec.expires_at_ms;
        out.push(AllocationEntry {
            grant_id: t.id,
            lot: t.lot,
            from_lot: t.lot,
            credits: t.credits,
            expires_at_ms,
        });
    }
    Ok(out)
}

fn lot_overflow(rec: &GrantRecord) -> Error {
    Error::Corruption {
        table: "grants",
        key: format!("({}, {}, {})", rec.workspace, rec.id, rec.lot),
        detail: "a grant lot's totals overflow".into(),
    }
}

/// Give a Usage's allocations back to their grants, for the refund that will be transaction
/// `refund_txn`. A lot that is closed, or expires before the refund's time plus the refund
/// grace, does not take them back: a new grace lot of the same grant does, spendable until
/// then.
/// `drawn` is what the Usage took (`None` for a Usage from before grants, which gives its
/// cost back to the carried-over grant).
///
/// The grace counts from `refunded_at_ms`: the refund's time, or for a timeout its deadline,
/// so that (like the timeout itself) the outcome does not depend on when the sweep ran.
pub(super) fn give_back(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    drawn: Option<Vec<AllocationEntry>>,
    cost: u64,
    refund_txn: u64,
    refunded_at_ms: u64,
) -> Result<Vec<AllocationEntry>, Error> {
    let grace_until = refunded_at_ms.saturating_add(ctx.config.refund_grace_ms);
    let Some(drawn) = drawn else {
        return give_back_carried_over(ctx, workspace, cost, refund_txn);
    };
    let mut out = Vec::with_capacity(drawn.len());
    for a in drawn {
        let missing = || Error::Corruption {
            table: "grants",
            key: format!("({workspace}, {}, {})", a.grant_id, a.lot),
            detail: format!("missing, but refund #{refund_txn} gives credits back to it"),
        };
        let old = ctx
            .grant(workspace, &a.grant_id, a.lot)?
            .ok_or_else(missing)?;
        let keeps = old.closed.is_none() && old.expires_at_ms.is_none_or(|e| e >= grace_until);
        if keeps {
            let mut rec = old.clone();
            rec.remaining_credits = rec
                .remaining_credits
                .checked_add(a.credits)
                .ok_or_else(|| lot_overflow(&rec))?;
            rec.returned_credits = rec
                .returned_credits
                .checked_add(a.credits)
                .ok_or_else(|| lot_overflow(&rec))?;
            ctx.put_grant(Some(&old), &rec)?;
            out.push(AllocationEntry {
                from_lot: a.lot,
                expires_at_ms: rec.expires_at_ms,
                ..a
            });
            continue;
        }
        let old0 = lot0(ctx, workspace, &a.grant_id)?.ok_or_else(missing)?;
        let mut rec0 = old0.clone();
        rec0.grace_lots = rec0
            .grace_lots
            .checked_add(1)
            .ok_or_else(|| lot_overflow(&rec0))?;
        ctx.put_grant(Some(&old0), &rec0)?;
        let lot = GrantRecord {
            lot: rec0.grace_lots,
            source_txn: refund_txn,
            amount_credits: a.credits,
            remaining_credits: a.credits,
            allocated_credits: 0,
            returned_credits: 0,
            effective_at_ms: None,
            expires_at_ms: Some(grace_until),
            grace_lots: 0,
            closed: None,
            ..rec0
        };
        ctx.put_grant(None, &lot)?;
        out.push(AllocationEntry {
            grant_id: a.grant_id,
            lot: lot.lot,
            from_lot: a.lot,
            credits: a.credits,
            expires_at_ms: lot.expires_at_ms,
        });
    }
    Ok(out)
}

fn give_back_carried_over(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    cost: u64,
    refund_txn: u64,
) -> Result<Vec<AllocationEntry>, Error> {
    let id = carried_over_id();
    let old = ctx.grant(workspace, id, 0)?;
    let mut rec = match &old {
        Some(r) => r.clone(),
        None => GrantRecord {
            id: id.to_string(),
            lot: 0,
            workspace: workspace.to_string(),
            source_txn: refund_txn,
            label: "Carried over".to_string(),
            amount_credits: 0,
            remaining_credits: 0,
            allocated_credits: 0,
            returned_credits: 0,
            priority: crate::limits::DEFAULT_GRANT_PRIORITY,
            effective_at_ms: None,
            expires_at_ms: None,
            grace_lots: 0,
            closed: None,
        },
    };
    // The charge was made before grants existed, so it allocated nothing: what comes back
    // counts as returned to the grant that carries the old balance over.
    rec.returned_credits = rec
        .returned_credits
        .checked_add(cost)
        .ok_or_else(|| lot_overflow(&rec))?;
    rec.remaining_credits = rec
        .remaining_credits
        .checked_add(cost)
        .ok_or_else(|| lot_overflow(&rec))?;
    ctx.put_grant(old.as_ref(), &rec)?;
    Ok(vec![AllocationEntry {
        grant_id: id.to_string(),
        lot: 0,
        from_lot: 0,
        credits: cost,
        expires_at_ms: None,
    }])
}

fn closure(rec: &TxnRecord, grant_id: &str, replay: bool) -> GrantClosure {
    GrantClosure {
        txn_id: rec.id,
        workspace: rec.workspace.clone(),
        grant_id: grant_id.to_string(),
        kind: rec.kind,
        amount_credits: rec.amount_credits,
        balance_before_credits: rec.balance_before_credits,
        balance_after_credits: rec.balance_after_credits,
        at_ms: rec.at_ms,
        replay,
    }
}

/// Close `lots` (old records) of one grant as `kind` (Expiration or Void): take what they hold
/// off the balance in one transaction, when they hold anything. Returns the transaction, or
/// `None` when nothing was left (the lots are closed all the same).
fn close(
    ctx: &mut Ctx<'_>,
    workspace: &str,
    lots: Vec<GrantRecord>,
    kind: TxnKind,
    key: Option<&str>,
    memo: Option<&str>,
) -> Result<Option<TxnRecord>, Error> {
    let total: u64 = lots.iter().map(|l| l.remaining_credits).sum();
    let mut rec_txn = None;
    let mut txn_id = 0;
    if total > 0 {
        let mut ws = ctx.workspace(workspace)?.ok_or_else(|| Error::Corruption {
            table: "workspaces",
            key: workspace.to_string(),
            detail: "missing, but it holds grants".into(),
        })?;
        let mut book = ensure_book(ctx, workspace, &ws)?;
        let before = ws.balance_credits;
        ws.balance_credits = before.checked_sub(total).ok_or_else(|| Error::Corruption {
            table: "workspaces",
            key: workspace.to_string(),
            detail: format!("balance {before} is below its grants' remaining {total}"),
        })?;
        let overflow = |what| Error::Overflow {
            workspace: workspace.to_string(),
            what,
        };
        ws.txn_count = ws
            .txn_count
            .checked_add(1)
            .ok_or_else(|| overflow("the transaction count"))?;
        let counter = if kind == TxnKind::Expiration {
            &mut book.expired_credits
        } else {
            &mut book.voided_credits
        };
        *counter = counter
            .checked_add(total)
            .ok_or_else(|| overflow("the expired or voided total"))?;
        let rec = ctx.append(
            TxnRecord {
                id: 0,
                at_ms: 0,
                workspace: workspace.to_string(),
                kind,
                amount_credits: total,
                debit: true,
                balance_before_credits: before,
                balance_after_credits: ws.balance_credits,
                title: lots[0].label.clone(),
                generation_id: None,
                refund: None,
                idempotency_key: key.map(str::to_string),
                memo: memo.map(str::to_string),
                prev_crc: 0,
                refund_lots: None,
            },
            if kind == TxnKind::Expiration {
                Category::Expiration
            } else {
                Category::Void
            },
        )?;
        ctx.put_workspace(workspace, &ws)?;
        ctx.put_book(workspace, &book);
        txn_id = rec.id;
        rec_txn = Some(rec);
    }
    let mut entries = Vec::new();
    for old in lots {
        let mut rec = old.clone();
        if rec.remaining_credits > 0 {
            entries.push(AllocationEntry {
                grant_id: rec.id.clone(),
                lot: rec.lot,
                from_lot: rec.lot,
                credits: rec.remaining_credits,
                expires_at_ms: rec.expires_at_ms,
            });
        }
        rec.closed = Some(GrantClosed {
            kind,
            txn: txn_id,
            credits: rec.remaining_credits,
            at_ms: ctx.now_ms,
        });
        rec.remaining_credits = 0;
        ctx.put_grant(Some(&old), &rec)?;
    }
    if let Some(rec) = &rec_txn {
        ctx.put_allocations(rec.id, &AllocationRecord { entries })?;
    }
    Ok(rec_txn)
}

/// Expire one grant lot whose expiry has passed (the sweep's job): one Expiration for what
/// lapsed, none when nothing was left.
pub(super) fn expire(ctx: &mut Ctx<'_>, lot: GrantRecord) -> Result<Option<GrantClosure>, Error> {
    let workspace = lot.workspace.clone();
    let id = lot.id.clone();
    let rec = close(ctx, &workspace, vec![lot], TxnKind::Expiration, None, None)?;
    Ok(rec.map(|r| closure(&r, &id, false)))
}

/// An operator's void of what remains of a grant (every open lot that has not expired).
pub(super) fn void(ctx: &mut Ctx<'_>, req: &VoidGrant) -> Result<GrantClosure, Error> {
    validate::id("workspace", &req.workspace)?;
    validate::id("grant id", &req.grant_id)?;
    validate::id("idempotency key", &req.idempotency_key)?;
    validate::text("memo", &req.memo, MAX_MEMO_BYTES, false)?;
    if let Some(txn_id) = ctx
        .idempotency
        .table()?
        .get(req.idempotency_key.as_str())?
        .map(|v| v.value())
    {
        let rec = ctx.txn_record(txn_id)?.ok_or_else(|| Error::Corruption {
            table: "idempotency",
            key: req.idempotency_key.clone(),
            detail: format!("points at missing transaction #{txn_id}"),
        })?;
        let voided = tables::get_allocations(ctx.gt().allocations.table()?, txn_id)?
            .and_then(|a| a.entries.first().map(|e| e.grant_id.clone()))
            .unwrap_or_default();
        let conflict = |field, existing: String, requested: String| Error::Conflict {
            entity: "idempotency key",
            id: req.idempotency_key.clone(),
            field,
            existing,
            requested,
        };
        if rec.kind != TxnKind::Void {
            return Err(conflict("kind", rec.kind.to_string(), "Void".into()));
        }
        if rec.workspace != req.workspace {
            return Err(conflict("workspace", rec.workspace, req.workspace.clone()));
        }
        if voided != req.grant_id {
            return Err(conflict("grant", voided, req.grant_id.clone()));
        }
        let memo = rec.memo.clone().unwrap_or_default();
        if memo != req.memo {
            return Err(conflict(
                "memo",
                format!("{memo:?}"),
                format!("{:?}", req.memo),
            ));
        }
        return Ok(closure(&rec, &req.grant_id, true));
    }
    let unknown = || Error::UnknownGrant {
        grant: req.grant_id.clone(),
    };
    let first = lot0(ctx, &req.workspace, &req.grant_id)?.ok_or_else(unknown)?;
    let mut lots = Vec::new();
    let now = ctx.now_ms;
    let grace_lots = first.grace_lots;
    let open = |g: &GrantRecord| g.closed.is_none() && g.expires_at_ms.is_none_or(|e| now < e);
    if open(&first) {
        lots.push(first);
    }
    for n in 1..=grace_lots {
        let g = ctx
            .grant(&req.workspace, &req.grant_id, n)?
            .ok_or_else(|| Error::Corruption {
                table: "grants",
                key: format!("({}, {}, {n})", req.workspace, req.grant_id),
                detail: "a grace lot its grant counts is missing".into(),
            })?;
        if open(&g) {
            lots.push(g);
        }
    }
    // Only the lots with credits left get an allocation entry.
    if lots.iter().filter(|l| l.remaining_credits > 0).count() > MAX_LOTS_PER_TRANSACTION {
        return Err(Error::TooManyLots {
            workspace: req.workspace.clone(),
            max_lots: MAX_LOTS_PER_TRANSACTION,
        });
    }
    if lots.iter().all(|l| l.remaining_credits == 0) {
        return Err(Error::NothingToVoid {
            grant: req.grant_id.clone(),
        });
    }
    // The clock check `append` makes, made before the first grant write.
    ctx.trust_clock()?;
    let rec = close(
        ctx,
        &req.workspace,
        lots,
        TxnKind::Void,
        Some(&req.idempotency_key),
        Some(&req.memo),
    )?
    .expect("invariant: a void of a grant with credits left writes a transaction");
    let r = (ctx.idempotency).write(|t| t.insert(req.idempotency_key.as_str(), rec.id).map(drop));
    ctx.write(r)?;
    Ok(closure(&rec, &req.grant_id, false))
}
