//! The generation state machine: start (charge), complete, fail (refund).
//!
//! ```text
//!   start ──> Running ──complete, now < deadline──> Succeeded
//!                │
//!                └──fail, or any call once now >= deadline──> Refunded
//!                   (complete, fail, a repeated start, the sweep)
//! ```
//!
//! The first terminal transition wins. Repeating it replays the original receipt; a
//! contradicting call is an error that names the state the generation is in.

use super::{grants, Ctx};
use crate::error::{Error, InvalidInput};
use crate::model::limits::{MAX_FEATURE_BYTES, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS};
use crate::model::records::{
    AllocationEntry, AllocationRecord, GenState, GenerationRecord, RefundDetail, TxnRecord,
    WorkspaceRecord,
};
use crate::model::{
    validate, Allocation, Charge, Completion, RefundReason, RefundReceipt, StartGeneration, TxnKind,
};
use crate::storage::tables::{self, Category};

fn load(ctx: &Ctx<'_>, generation_id: &str) -> Result<GenerationRecord, Error> {
    validate::id("generation id", generation_id)?;
    tables::get_generation(&ctx.generations, generation_id)?.ok_or_else(|| {
        Error::UnknownGeneration {
            generation: generation_id.to_string(),
        }
    })
}

fn load_txn(ctx: &Ctx<'_>, id: u64, owner: &str) -> Result<TxnRecord, Error> {
    ctx.txn_record(id)?.ok_or_else(|| Error::Corruption {
        table: "generations",
        key: owner.to_string(),
        detail: format!("links to missing transaction #{id}"),
    })
}

fn charge(
    gen: &GenerationRecord,
    usage: &TxnRecord,
    allocations: Vec<Allocation>,
    replay: bool,
) -> Charge {
    Charge {
        generation_id: gen.id.clone(),
        workspace: gen.workspace.clone(),
        usage_txn: gen.usage_txn,
        cost_credits: gen.cost_credits,
        balance_before_credits: usage.balance_before_credits,
        balance_after_credits: usage.balance_after_credits,
        started_at_ms: gen.started_at_ms,
        deadline_ms: gen.deadline_ms,
        allocations,
        replay,
    }
}

/// The allocations recorded for transaction `txn_id` of generation `gen`, as the public type.
fn allocations_of(
    ctx: &Ctx<'_>,
    gen: &GenerationRecord,
    txn_id: u64,
) -> Result<Vec<Allocation>, Error> {
    Ok(
        tables::get_allocations_of(Some(ctx.gt().allocations.table()?), Some(gen), txn_id)?
            .map(|a| a.iter().map(AllocationEntry::public).collect())
            .unwrap_or_default(),
    )
}

pub(super) fn start(ctx: &mut Ctx<'_>, req: &StartGeneration) -> Result<Charge, Error> {
    validate::new_id("generation id", &req.generation_id)?;
    validate::new_id("workspace", &req.workspace)?;
    validate::name("feature", &req.feature, MAX_FEATURE_BYTES)?;
    validate::amount("cost", req.cost_credits)?;
    if let Some(t) = req.timeout_ms {
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t) {
            return Err(InvalidInput::TimeoutOutOfRange {
                timeout_ms: t,
                min_ms: MIN_TIMEOUT_MS,
                max_ms: MAX_TIMEOUT_MS,
            }
            .into());
        }
    }

    if let Some(gen) = tables::get_generation(&ctx.generations, &req.generation_id)? {
        let differs = if gen.workspace != req.workspace {
            Some(("workspace", gen.workspace.clone(), req.workspace.clone()))
        } else if gen.feature != req.feature {
            Some(("feature", gen.feature.clone(), req.feature.clone()))
        } else if gen.cost_credits != req.cost_credits {
            Some((
                "cost",
                gen.cost_credits.to_string(),
                req.cost_credits.to_string(),
            ))
        } else {
            // A retry without a timeout accepts whatever the first start used.
            req.timeout_ms
                .filter(|t| *t != gen.timeout_ms)
                .map(|t| ("timeout_ms", gen.timeout_ms.to_string(), t.to_string()))
        };
        if gen.state == GenState::Running && ctx.now_ms >= gen.deadline_ms {
            // Lazy expiry, as for every call that touches a generation past its deadline.
            let message = format!(
                "start repeated at {} ms, after the deadline at {} ms",
                ctx.now_ms, gen.deadline_ms
            );
            return Err(refunded_now(refund(
                ctx,
                gen,
                RefundReason::Timeout,
                &message,
            )?));
        }
        if let Some((field, existing, requested)) = differs {
            return Err(Error::Conflict {
                entity: "generation",
                id: req.generation_id.clone(),
                field,
                existing,
                requested,
            });
        }
        let usage = load_txn(ctx, gen.usage_txn, &gen.id)?;
        let allocations = allocations_of(ctx, &gen, usage.id)?;
        return Ok(charge(&gen, &usage, allocations, true));
    }

    let mut ws = ctx
        .workspace(&req.workspace)?
        .ok_or_else(|| Error::UnknownWorkspace {
            workspace: req.workspace.clone(),
        })?;
    let before = ws.balance_credits;
    let planned = grants::plan_debit(ctx, &req.workspace, before, req.cost_credits)?.map_err(
        |spendable| Error::InsufficientCredits {
            workspace: req.workspace.clone(),
            balance_credits: spendable,
            required_credits: req.cost_credits,
        },
    )?;
    let ws_before = ws.clone();
    ws.balance_credits = before
        .checked_sub(req.cost_credits)
        .ok_or_else(|| Error::Corruption {
            table: "workspaces",
            key: req.workspace.clone(),
            detail: format!("balance {before} is below its spendable grants"),
        })?;
    let overflow = |what| Error::Overflow {
        workspace: req.workspace.clone(),
        what,
    };
    ws.spent_credits = ws
        .spent_credits
        .checked_add(req.cost_credits)
        .ok_or_else(|| overflow("the spent total"))?;
    ws.running_generations = ws
        .running_generations
        .checked_add(1)
        .ok_or_else(|| overflow("the running count"))?;
    // balance + held is unchanged by a charge, so it still fits.
    ws.held_credits = ws
        .held_credits
        .checked_add(req.cost_credits)
        .ok_or_else(|| overflow("the held credits"))?;
    ws.txn_count = ws
        .txn_count
        .checked_add(1)
        .ok_or_else(|| overflow("the transaction count"))?;
    let timeout_ms = req.timeout_ms.unwrap_or(ctx.config.default_timeout_ms);
    let deadline_ms = ctx
        .now_ms
        .checked_add(timeout_ms)
        .ok_or_else(|| overflow("the deadline"))?;

    // The clock check `append` makes, made before the first grant write.
    ctx.trust_clock()?;
    if matches!(planned, grants::Planned::CarriedOver) {
        // A plan of takes read the workspace's book: only a workspace from before grants
        // has none yet.
        grants::ensure_book(ctx, &req.workspace, &ws_before)?;
    }
    let usage = ctx.append(
        TxnRecord {
            id: 0,
            at_ms: 0,
            workspace: req.workspace.clone(),
            kind: TxnKind::Usage,
            amount_credits: req.cost_credits,
            debit: true,
            balance_before_credits: before,
            balance_after_credits: ws.balance_credits,
            title: req.feature.clone(),
            generation_id: Some(req.generation_id.clone()),
            refund: None,
            idempotency_key: None,
            memo: None,
            prev_crc: 0,
            refund_lots: None,
        },
        Category::Usage,
    )?;
    let mut entries = grants::debit(ctx, &req.workspace, &ws_before, planned, req.cost_credits)?;
    let allocations = entries.iter().map(AllocationEntry::public).collect();
    // Paid by one lot (the common case): the generation record holds the allocation, and
    // the `allocations` table is not written.
    let single_allocation = if entries.len() == 1 {
        entries.pop()
    } else {
        ctx.put_allocations(usage.id, &AllocationRecord { entries })?;
        None
    };
    let gen = GenerationRecord {
        id: req.generation_id.clone(),
        workspace: req.workspace.clone(),
        feature: req.feature.clone(),
        cost_credits: req.cost_credits,
        timeout_ms,
        started_at_ms: ctx.now_ms,
        deadline_ms,
        usage_txn: usage.id,
        state: GenState::Running,
        single_allocation,
    };
    ctx.put_workspace(&req.workspace, &ws)?;
    ctx.put_generation(&gen)?;
    ctx.insert_deadline(deadline_ms, &gen.id)?;
    Ok(charge(&gen, &usage, allocations, false))
}

pub(super) fn complete(ctx: &mut Ctx<'_>, generation_id: &str) -> Result<Completion, Error> {
    let mut gen = load(ctx, generation_id)?;
    match gen.state {
        GenState::Succeeded { at_ms } => Ok(Completion {
            generation_id: gen.id,
            usage_txn: gen.usage_txn,
            completed_at_ms: at_ms,
            replay: true,
        }),
        GenState::Refunded {
            reason, refund_txn, ..
        } => Err(Error::GenerationRefunded {
            generation: gen.id,
            reason,
            refund_txn,
            refunded_now: None,
        }),
        GenState::Running if ctx.now_ms >= gen.deadline_ms => {
            // Lazy expiry: the deadline passed before the success was reported. The refund is
            // written now, in this transaction, and the caller learns why.
            let message = format!(
                "completion reported at {} ms, after the deadline at {} ms",
                ctx.now_ms, gen.deadline_ms
            );
            Err(refunded_now(refund(
                ctx,
                gen,
                RefundReason::Timeout,
                &message,
            )?))
        }
        GenState::Running => {
            ctx.trust_clock()?;
            let ws = release(ctx, &gen)?;
            let state = GenState::Succeeded { at_ms: ctx.now_ms };
            finish(ctx, &mut gen, state, &ws)?;
            Ok(Completion {
                generation_id: gen.id,
                usage_txn: gen.usage_txn,
                completed_at_ms: ctx.now_ms,
                replay: false,
            })
        }
    }
}

pub(super) fn fail(
    ctx: &mut Ctx<'_>,
    generation_id: &str,
    reason: RefundReason,
    message: &str,
) -> Result<RefundReceipt, Error> {
    if reason == RefundReason::Timeout {
        return Err(InvalidInput::ReservedReason.into());
    }
    let gen = load(ctx, generation_id)?;
    match gen.state {
        GenState::Refunded { refund_txn, .. } => {
            let rec = load_txn(ctx, refund_txn, &gen.id)?;
            let allocations = allocations_of(ctx, &gen, rec.id)?;
            refund_receipt(&gen, &rec, allocations, true)
        }
        GenState::Succeeded { at_ms } => Err(Error::GenerationSucceeded {
            generation: gen.id,
            completed_at_ms: at_ms,
        }),
        GenState::Running if ctx.now_ms >= gen.deadline_ms => {
            let late = format!(
                "deadline at {} ms passed before the failure was reported ({}: {message})",
                gen.deadline_ms,
                reason.as_str()
            );
            refund(ctx, gen, RefundReason::Timeout, &late)
        }
        GenState::Running => refund(ctx, gen, reason, message),
    }
}

/// The answer to a call that found its generation past the deadline and refunded it: the
/// caller learns that this very call wrote `receipt`.
fn refunded_now(receipt: RefundReceipt) -> Error {
    Error::GenerationRefunded {
        generation: receipt.generation_id.clone(),
        reason: receipt.reason,
        refund_txn: receipt.refund_txn,
        refunded_now: Some(Box::new(receipt)),
    }
}

fn missing_workspace(gen: &GenerationRecord) -> Error {
    Error::Corruption {
        table: "workspaces",
        key: gen.workspace.clone(),
        detail: format!("missing, but generation `{}` belongs to it", gen.id),
    }
}

fn running_underflow(gen: &GenerationRecord) -> Error {
    Error::Corruption {
        table: "workspaces",
        key: gen.workspace.clone(),
        detail: format!(
            "running count or held credits too small for running generation `{}`",
            gen.id
        ),
    }
}

fn refund_receipt(
    gen: &GenerationRecord,
    rec: &TxnRecord,
    allocations: Vec<Allocation>,
    replay: bool,
) -> Result<RefundReceipt, Error> {
    let detail = rec.refund.as_ref().ok_or_else(|| Error::Corruption {
        table: "transactions",
        key: rec.id.to_string(),
        detail: format!(
            "generation `{}` names it as its refund, but it is not one",
            gen.id
        ),
    })?;
    Ok(RefundReceipt {
        generation_id: gen.id.clone(),
        workspace: gen.workspace.clone(),
        usage_txn: gen.usage_txn,
        refund_txn: rec.id,
        amount_credits: rec.amount_credits,
        reason: detail.reason,
        message: detail.message.clone(),
        balance_before_credits: rec.balance_before_credits,
        balance_after_credits: rec.balance_after_credits,
        at_ms: rec.at_ms,
        allocations,
        replay,
    })
}

/// Refund a running generation in full: the one refund path that `fail`, lazy expiry and the
/// sweep all take.
pub(super) fn refund(
    ctx: &mut Ctx<'_>,
    mut gen: GenerationRecord,
    reason: RefundReason,
    message: &str,
) -> Result<RefundReceipt, Error> {
    assert_eq!(
        gen.state,
        GenState::Running,
        "only a running generation is refunded"
    );
    let mut ws = release(ctx, &gen)?;
    let overflow = |what| Error::Overflow {
        workspace: gen.workspace.clone(),
        what,
    };
    let before = ws.balance_credits;
    ws.balance_credits = before
        .checked_add(gen.cost_credits)
        .ok_or_else(|| overflow("the balance"))?;
    ws.refunded_credits = ws
        .refunded_credits
        .checked_add(gen.cost_credits)
        .ok_or_else(|| overflow("the refunded total"))?;
    ws.txn_count = ws
        .txn_count
        .checked_add(1)
        .ok_or_else(|| overflow("the transaction count"))?;
    let (message, message_truncated) = validate::truncate_message(message);

    let ws_before = ctx
        .workspace(&gen.workspace)?
        .ok_or_else(|| missing_workspace(&gen))?;
    grants::ensure_book(ctx, &gen.workspace, &ws_before)?;
    // Before the id is taken: in an older file, Refund records carry their lots from it on.
    ctx.current_schema()?;
    let refund_txn = ctx.state.next_txn_id;
    // A timeout counts from its deadline, whenever the refund is written.
    let refunded_at_ms = if reason == RefundReason::Timeout {
        gen.deadline_ms.min(ctx.now_ms)
    } else {
        ctx.now_ms
    };
    let drawn = match gen.usage_allocations() {
        Some(d) => Some(d),
        None => tables::get_allocations(ctx.gt().allocations.table()?, gen.usage_txn)?
            .map(|a| a.entries),
    };
    let entries = grants::give_back(
        ctx,
        &gen.workspace,
        drawn,
        gen.cost_credits,
        refund_txn,
        refunded_at_ms,
    )?;
    let rec = ctx.append(
        TxnRecord {
            id: 0,
            at_ms: 0,
            workspace: gen.workspace.clone(),
            kind: TxnKind::Refund,
            amount_credits: gen.cost_credits,
            debit: false,
            balance_before_credits: before,
            balance_after_credits: ws.balance_credits,
            title: gen.feature.clone(),
            generation_id: Some(gen.id.clone()),
            refund: Some(RefundDetail {
                reason,
                message,
                message_truncated,
                usage_txn: gen.usage_txn,
            }),
            idempotency_key: None,
            memo: None,
            prev_crc: 0,
            refund_lots: Some(entries),
        },
        Category::Refund,
    )?;
    assert_eq!(
        rec.id, refund_txn,
        "the refund got the id its grace lots name"
    );
    let entries = rec
        .refund_lots
        .as_deref()
        .expect("invariant: the Refund was written with its lots");
    let allocations = entries.iter().map(AllocationEntry::public).collect();
    // Given back to the one lot that paid (the common case): the generation record already
    // says so, and the `allocations` table is not written.
    let same_lot = matches!((entries, &gen.single_allocation), ([e], Some(s)) if e == s);
    if !same_lot {
        let entries = entries.to_vec();
        ctx.put_allocations(rec.id, &AllocationRecord { entries })?;
    }
    let state = GenState::Refunded {
        at_ms: ctx.now_ms,
        reason,
        refund_txn: rec.id,
    };
    finish(ctx, &mut gen, state, &ws)?;
    refund_receipt(&gen, &rec, allocations, false)
}

/// The workspace of a running generation, with that generation taken off its running count
/// and its held credits: the first step of every way a generation ends.
fn release(ctx: &mut Ctx<'_>, gen: &GenerationRecord) -> Result<WorkspaceRecord, Error> {
    let mut ws = ctx
        .workspace(&gen.workspace)?
        .ok_or_else(|| missing_workspace(gen))?;
    ws.running_generations = ws
        .running_generations
        .checked_sub(1)
        .ok_or_else(|| running_underflow(gen))?;
    ws.held_credits = ws
        .held_credits
        .checked_sub(gen.cost_credits)
        .ok_or_else(|| running_underflow(gen))?;
    Ok(ws)
}

/// Write the end of a running generation: its new `state`, its workspace `ws` and its
/// deadline entry gone. Its Usage's history entry stays where it is (a refund adds the
/// `UsageFailed` marker; see [`Ctx::file_finished_usage`]).
///
/// The workspace record is rewritten because its running count and held credits change:
/// the held credits are what keeps every refund from overflowing a balance (a credit is
/// refused when `balance + held` would pass `u64::MAX`), and the running count is what
/// `balance` shows and what lets a Pending history page stop once it has found them all. In
/// a batch it is written once per workspace ([`Ctx::flush`]), and the workspaces table is
/// small next to the generations and the history.
fn finish(
    ctx: &mut Ctx<'_>,
    gen: &mut GenerationRecord,
    state: GenState,
    ws: &WorkspaceRecord,
) -> Result<(), Error> {
    gen.state = state;
    ctx.put_workspace(&gen.workspace, ws)?;
    ctx.put_generation(gen)?;
    ctx.remove_deadline(gen.deadline_ms, &gen.id)?;
    ctx.file_finished_usage(&gen.workspace, gen.usage_txn, gen.state)
}
