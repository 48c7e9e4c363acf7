//! Credit grants on the command line: the terms of `credit`, `grants`, `void-grant`, and the
//! words `show` and `balance` use for allocations and expiries.

use std::collections::HashMap;

use credit_ledger::{Allocation, Credit, GrantState, GrantView, Ledger, VoidGrant};
use serde_json::{json, Value};

use crate::args::{CreditArgs, VoidGrantArgs, WorkspaceArg};
use crate::fail::CliError;
use crate::open::{Context, Mode};
use crate::output::{clean, Align, Out, Table};
use crate::time::{format_human, format_human_zoned, format_rfc3339, zone_label};

/// `credit`'s grant options applied to `credit`. `--expires-in` counts from the ledger's now
/// (the system clock, or `--now`).
pub fn terms(ledger: &Ledger, mut credit: Credit, a: &CreditArgs) -> Credit {
    if let Some(p) = a.priority {
        credit = credit.priority(p);
    }
    if let Some(t) = a.starts_at {
        credit = credit.effective_at_ms(t);
    }
    if let Some(t) = a.expires_at {
        credit = credit.expires_at_ms(t);
    }
    if let Some(d) = a.expires_in {
        credit = credit.expires_at_ms(ledger.now_ms().saturating_add(d));
    }
    credit
}

fn state_name(s: GrantState) -> &'static str {
    match s {
        GrantState::Pending => "pending",
        GrantState::Spendable => "spendable",
        GrantState::Spent => "spent",
        GrantState::ExpiredUnswept => "expired-unswept",
        GrantState::Expired { .. } => "expired",
        GrantState::Voided { .. } => "voided",
    }
}

fn grant_json(g: &GrantView) -> Value {
    let closed_txn = match g.state {
        GrantState::Expired { txn, .. } | GrantState::Voided { txn, .. } if txn > 0 => Some(txn),
        _ => None,
    };
    json!({
        "grant": g.grant_id,
        "part": g.lot,
        "label": g.label,
        "priority": g.priority,
        "amount": g.amount_credits,
        "remaining": g.remaining_credits,
        "allocated": g.allocated_credits,
        "returned": g.returned_credits,
        "starts_at": g.effective_at_ms.map(format_rfc3339),
        "expires_at": g.expires_at_ms.map(format_rfc3339),
        "state": state_name(g.state),
        "closed_by": closed_txn,
        "source_txn": g.source_txn,
    })
}

/// A grant's name for people: its label, and for a refund-grace part, which part.
fn grant_name(label: &str, lot: u32) -> String {
    if lot == 0 {
        clean(label)
    } else {
        format!("{} (refund grace part {lot})", clean(label))
    }
}

/// The labels of a workspace's grants, by grant id.
pub fn labels(ledger: &Ledger, workspace: &str) -> Result<HashMap<String, String>, CliError> {
    Ok(ledger
        .grants(workspace)?
        .into_iter()
        .filter(|g| g.lot == 0)
        .map(|g| (g.grant_id, g.label))
        .collect())
}

/// "8 from Monthly credits, 4 from Top-up pack" (`verb` "from"), or for a refund "8 to Trial
/// credits (spendable until ...), 4 to Top-up pack".
pub fn allocation_words(
    allocations: &[Allocation],
    labels: &HashMap<String, String>,
    verb: &str,
    show_until: bool,
) -> String {
    allocations
        .iter()
        .map(|a| {
            let label = labels
                .get(&a.grant_id)
                .map_or(a.grant_id.as_str(), String::as_str);
            let mut s = format!("{} {verb} {}", a.credits, grant_name(label, a.lot));
            if show_until {
                if let Some(t) = a.spendable_until_ms {
                    s.push_str(&format!(" (spendable until {})", format_human_zoned(t)));
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The JSON of a transaction's allocations, for `show --json`.
pub fn allocations_json(allocations: &[Allocation], labels: &HashMap<String, String>) -> Value {
    Value::Array(
        allocations
            .iter()
            .map(|a| {
                json!({
                    "grant": a.grant_id,
                    "part": a.lot,
                    "label": labels.get(&a.grant_id),
                    "credits": a.credits,
                    "spendable_until": a.spendable_until_ms.map(format_rfc3339),
                })
            })
            .collect(),
    )
}

pub fn grants(ctx: &Context, a: &WorkspaceArg, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    // An unknown workspace is an error, not an empty list.
    let s = ledger.balance(&a.workspace)?;
    let grants = ledger.grants(&a.workspace)?;
    if ctx.json {
        return out.json(&json!({
            "workspace": s.workspace,
            "balance": s.balance_credits,
            "spendable": s.spendable_credits,
            "grants": grants.iter().map(grant_json).collect::<Vec<_>>(),
        }));
    }
    out.line(format!(
        "Grants of {}, in drawdown order: balance {}, spendable now {}",
        clean(&s.workspace),
        s.balance_credits,
        s.spendable_credits
    ))?;
    if grants.is_empty() {
        return out.line("(none)");
    }
    let starts = format!("STARTS ({})", zone_label());
    let expires = format!("EXPIRES ({})", zone_label());
    let mut t = Table::new(&[
        ("GRANT", Align::Left),
        ("NAME", Align::Left),
        ("PRIORITY", Align::Right),
        ("REMAINING", Align::Right),
        ("AMOUNT", Align::Right),
        (&starts, Align::Left),
        (&expires, Align::Left),
        ("STATE", Align::Left),
    ]);
    for g in &grants {
        t.row(vec![
            clean(&g.grant_id),
            grant_name(&g.label, g.lot),
            g.priority.to_string(),
            g.remaining_credits.to_string(),
            g.amount_credits.to_string(),
            g.effective_at_ms.map_or_else(|| "-".into(), format_human),
            g.expires_at_ms.map_or_else(|| "never".into(), format_human),
            state_name(g.state).to_string(),
        ]);
    }
    t.print(out)
}

pub fn void_grant(ctx: &Context, a: &VoidGrantArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Existing)?;
    let v = ledger.void_grant(VoidGrant::new(&a.workspace, &a.grant, &a.key, &a.memo))?;
    if ctx.json {
        return out.json(&json!({
            "txn_id": v.txn_id,
            "workspace": v.workspace,
            "grant": v.grant_id,
            "type": v.kind.as_str(),
            "amount": v.amount_credits,
            "balance_before": v.balance_before_credits,
            "balance_after": v.balance_after_credits,
            "at": format_rfc3339(v.at_ms),
            "replay": v.replay,
        }));
    }
    out.line(format!(
        "Voided {} credits of grant {} in {}: balance {} -> {} (transaction #{}, {})",
        v.amount_credits,
        clean(&v.grant_id),
        clean(&v.workspace),
        v.balance_before_credits,
        v.balance_after_credits,
        v.txn_id,
        format_human_zoned(v.at_ms)
    ))?;
    if v.replay {
        out.line("(already applied earlier: this is the original receipt; nothing changed)")?;
    }
    Ok(())
}
