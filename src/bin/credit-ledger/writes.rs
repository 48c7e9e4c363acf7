//! The commands that write: credit, adjust, start, complete, fail, sweep, and backup (which
//! writes a new file).

use credit_ledger::{Adjust, Credit, Receipt, RefundReason, RefundReceipt, StartGeneration};
use serde_json::{json, Value};

use crate::args::{
    AdjustArgs, BackupArgs, CreditArgs, CreditKindArg, FailArgs, GenArg, StartArgs, SweepArgs,
};
use crate::fail::CliError;
use crate::open::{Context, Mode};
use crate::output::{clean, signed, Align, Out, Table};
use crate::time::{format_duration, format_human_zoned, format_rfc3339};

const REPLAY_NOTE: &str =
    "(already applied earlier: this is the original receipt; nothing changed)";

fn receipt_json(r: &Receipt) -> Value {
    json!({
        "txn_id": r.txn_id,
        "workspace": r.workspace,
        "type": r.kind.as_str(),
        "amount": r.amount_credits,
        "balance_before": r.balance_before_credits,
        "balance_after": r.balance_after_credits,
        "at": format_rfc3339(r.at_ms),
        "replay": r.replay,
    })
}

fn print_receipt(ctx: &Context, r: &Receipt, out: &mut Out) -> Result<(), CliError> {
    if ctx.json {
        return out.json(&receipt_json(r));
    }
    out.line(format!(
        "{} {} credits for {}: balance {} -> {} (transaction #{}, {})",
        r.kind,
        signed(r.amount_credits),
        clean(&r.workspace),
        r.balance_before_credits,
        r.balance_after_credits,
        r.txn_id,
        format_human_zoned(r.at_ms)
    ))?;
    if r.replay {
        out.line(REPLAY_NOTE)?;
    }
    Ok(())
}

pub fn credit(ctx: &Context, a: &CreditArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Create)?;
    let credit = match a.kind {
        CreditKindArg::Purchase => Credit::purchase(&a.workspace, a.amount, &a.key),
        CreditKindArg::Grant => Credit::grant(&a.workspace, a.amount, &a.key),
    }
    .memo(&a.memo);
    let credit = crate::grants::terms(&ledger, credit, a);
    let r = ledger.credit(credit)?;
    print_receipt(ctx, &r, out)
}

pub fn adjust(ctx: &Context, a: &AdjustArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Existing)?;
    let r = ledger.adjust(Adjust::new(&a.workspace, a.amount, &a.key, &a.memo))?;
    print_receipt(ctx, &r, out)
}

pub fn start(ctx: &Context, a: &StartArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Existing)?;
    let c = ledger.start_generation(
        StartGeneration::new(&a.generation, &a.workspace, &a.feature, a.cost).timeout_ms(a.timeout),
    )?;
    if ctx.json {
        return out.json(&json!({
            "generation": c.generation_id,
            "workspace": c.workspace,
            "usage_txn": c.usage_txn,
            "cost": c.cost_credits,
            "balance_before": c.balance_before_credits,
            "balance_after": c.balance_after_credits,
            "started_at": format_rfc3339(c.started_at_ms),
            "deadline": format_rfc3339(c.deadline_ms),
            "replay": c.replay,
        }));
    }
    out.line(format!(
        "Charged {} credits to {} for {} ({}): balance {} -> {} (Usage #{})",
        c.cost_credits,
        clean(&c.workspace),
        clean(&c.generation_id),
        clean(&a.feature),
        c.balance_before_credits,
        c.balance_after_credits,
        c.usage_txn
    ))?;
    out.line(format!(
        "Deadline {} ({} after the start); if it has not completed by then, it is refunded in full",
        format_human_zoned(c.deadline_ms),
        format_duration(c.deadline_ms.saturating_sub(c.started_at_ms))
    ))?;
    if c.replay {
        out.line(REPLAY_NOTE)?;
    }
    Ok(())
}

pub fn complete(ctx: &Context, a: &GenArg, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Existing)?;
    let c = ledger.complete_generation(&a.generation)?;
    if ctx.json {
        return out.json(&json!({
            "generation": c.generation_id,
            "usage_txn": c.usage_txn,
            "completed_at": format_rfc3339(c.completed_at_ms),
            "replay": c.replay,
        }));
    }
    out.line(format!(
        "Generation {} completed at {}; its charge (Usage #{}) stands",
        clean(&c.generation_id),
        format_human_zoned(c.completed_at_ms),
        c.usage_txn
    ))?;
    if c.replay {
        out.line(REPLAY_NOTE)?;
    }
    Ok(())
}

pub fn refund_json(r: &RefundReceipt) -> Value {
    json!({
        "generation": r.generation_id,
        "workspace": r.workspace,
        "usage_txn": r.usage_txn,
        "refund_txn": r.refund_txn,
        "amount": r.amount_credits,
        "reason": r.reason.as_str(),
        "message": r.message,
        "balance_before": r.balance_before_credits,
        "balance_after": r.balance_after_credits,
        "at": format_rfc3339(r.at_ms),
        "replay": r.replay,
    })
}

pub fn fail(ctx: &Context, a: &FailArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Existing)?;
    let r = ledger.fail_generation(&a.generation, a.reason.reason(), &a.message)?;
    if ctx.json {
        return out.json(&refund_json(&r));
    }
    out.line(format!(
        "Refunded {} credits to {} for {} ({}): balance {} -> {} (Refund #{} of Usage #{})",
        r.amount_credits,
        clean(&r.workspace),
        clean(&r.generation_id),
        r.reason.label(),
        r.balance_before_credits,
        r.balance_after_credits,
        r.refund_txn,
        r.usage_txn
    ))?;
    if r.reason == RefundReason::Timeout && a.reason.reason() != RefundReason::Timeout {
        out.line("The deadline had already passed, so the refund's reason is timeout")?;
    }
    if r.replay {
        out.line(REPLAY_NOTE)?;
    }
    Ok(())
}

pub fn sweep(ctx: &Context, a: &SweepArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Existing)?;
    let report = ledger.sweep_expired(a.limit)?;
    if ctx.json {
        return out.json(&json!({
            "refunded": report.refunds.len(),
            "refunds": report.refunds.iter().map(refund_json).collect::<Vec<_>>(),
            "notices": report.notices.iter().map(|n| json!({
                "txn_id": n.txn_id,
                "workspace": n.workspace,
                "grant": n.grant_id,
                "expiring": n.expiring_credits,
                "expires_at": format_rfc3339(n.expires_at_ms),
            })).collect::<Vec<_>>(),
            "expired": report.expirations.len(),
            "expirations": report.expirations.iter().map(|e| json!({
                "txn_id": e.txn_id,
                "workspace": e.workspace,
                "grant": e.grant_id,
                "amount": e.amount_credits,
                "balance_before": e.balance_before_credits,
                "balance_after": e.balance_after_credits,
            })).collect::<Vec<_>>(),
            "more_expired": report.more_expired,
            "next_deadline": report.next_deadline_ms.map(format_rfc3339),
        }));
    }
    if report.refunds.is_empty() {
        out.line("No running generation is past its deadline; nothing refunded")?;
    } else {
        out.line(format!(
            "Refunded {} timed-out generation{}:",
            report.refunds.len(),
            if report.refunds.len() == 1 { "" } else { "s" }
        ))?;
        let mut t = Table::new(&[
            ("REFUND", Align::Right),
            ("GENERATION", Align::Left),
            ("WORKSPACE", Align::Left),
            ("AMOUNT", Align::Right),
            ("BALANCE", Align::Right),
        ]);
        for r in &report.refunds {
            t.row(vec![
                format!("#{}", r.refund_txn),
                r.generation_id.clone(),
                r.workspace.clone(),
                signed(i64::try_from(r.amount_credits).unwrap_or(i64::MAX)),
                r.balance_after_credits.to_string(),
            ]);
        }
        t.print(out)?;
    }
    if !report.notices.is_empty() {
        out.line(format!(
            "Told {} workspace{} that a grant expires soon:",
            report.notices.len(),
            if report.notices.len() == 1 { "" } else { "s" }
        ))?;
        let mut t = Table::new(&[
            ("NOTICE", Align::Right),
            ("GRANT", Align::Left),
            ("WORKSPACE", Align::Left),
            ("EXPIRING", Align::Right),
            ("EXPIRES", Align::Left),
        ]);
        for n in &report.notices {
            t.row(vec![
                format!("#{}", n.txn_id),
                clean(&n.grant_id),
                clean(&n.workspace),
                n.expiring_credits.to_string(),
                format_human_zoned(n.expires_at_ms),
            ]);
        }
        t.print(out)?;
    }
    if !report.expirations.is_empty() {
        out.line(format!(
            "Expired {} grant{}:",
            report.expirations.len(),
            if report.expirations.len() == 1 {
                ""
            } else {
                "s"
            }
        ))?;
        let mut t = Table::new(&[
            ("EXPIRATION", Align::Right),
            ("GRANT", Align::Left),
            ("WORKSPACE", Align::Left),
            ("AMOUNT", Align::Right),
            ("BALANCE", Align::Right),
        ]);
        for e in &report.expirations {
            t.row(vec![
                format!("#{}", e.txn_id),
                clean(&e.grant_id),
                clean(&e.workspace),
                signed(-i64::try_from(e.amount_credits).unwrap_or(i64::MAX)),
                e.balance_after_credits.to_string(),
            ]);
        }
        t.print(out)?;
    }
    if report.more_expired {
        out.line(
            "More generations or grants are past their deadline or expiry: run `sweep` again",
        )?;
    } else if let Some(next) = report.next_deadline_ms {
        out.line(format!(
            "Next deadline or grant expiry: {}",
            format_human_zoned(next)
        ))?;
    } else {
        out.line("No generation is running")?;
    }
    Ok(())
}

/// `backup DEST`: a consistent copy of the ledger in a new file. The ledger is opened
/// read-only when it needs no replay (the copy is then its bytes as they are), so a ledger on
/// read-only media can be backed up too.
pub fn backup(ctx: &Context, a: &BackupArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let bytes = ledger.backup(&a.dest)?;
    if ctx.json {
        return out.json(&json!({
            "backup": a.dest.display().to_string(),
            "bytes": bytes,
        }));
    }
    out.line(format!(
        "Backed up `{}` to `{}` ({bytes} bytes); check it with: credit-ledger --db {} verify",
        ctx.db.display(),
        a.dest.display(),
        a.dest.display()
    ))
}
