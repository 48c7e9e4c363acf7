//! The change feed from a shell: `changes` (the global log after an id or a consumer's
//! stored position, as JSON lines with `--json`, and with `--follow` as it commits) and `ack`
//! (store a consumer's position).

use credit_ledger::limits::MAX_PAGE_LIMIT;
use std::time::Duration;

use credit_ledger::{Error, Ledger, TransactionView};

use serde_json::json;

use crate::args::{AckArgs, ChangesArgs};
use crate::fail::CliError;
use crate::open::{Context, Mode};
use crate::output::{clean, signed, Out};
use crate::rows::txn_json;
use crate::time::format_human;

/// One entry as a line of text: id, time, workspace, type, amount, balance, title.
fn change_line(t: &TransactionView) -> String {
    format!(
        "#{}  {}  {}  {}  {}  {} -> {}  {}",
        t.id,
        format_human(t.at_ms),
        clean(&t.workspace),
        t.kind,
        signed(t.amount_credits),
        t.balance_before_credits,
        t.balance_after_credits,
        clean(&t.action),
    )
}

fn print_entry(ctx: &Context, t: &TransactionView, out: &mut Out) -> Result<(), CliError> {
    if ctx.json {
        out.json_line(&txn_json(t))
    } else {
        out.line(change_line(t))
    }
}

/// Print the entries after `after`: at most `limit` when given, otherwise every entry up to
/// the end of the log. Returns the id of the last entry printed (or `after`).
fn print_after(
    ctx: &Context,
    ledger: &Ledger,
    after: u64,
    limit: Option<u32>,
    out: &mut Out,
) -> Result<u64, CliError> {
    let mut at = after;
    let mut left = limit;
    loop {
        let want = left.unwrap_or(MAX_PAGE_LIMIT);
        let page = ledger.changes(at, want)?;
        for t in &page.entries {
            print_entry(ctx, t, out)?;
        }
        at = page.next_after(at);
        if let Some(l) = &mut left {
            *l = l.saturating_sub(u32::try_from(page.entries.len()).unwrap_or(u32::MAX));
            if *l == 0 {
                return Ok(at);
            }
        }
        if page.entries.is_empty() || at >= page.last_txn_id {
            return Ok(at);
        }
    }
}

pub fn changes(ctx: &Context, a: &ChangesArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let after = match (&a.consumer, a.after) {
        (Some(c), _) => ledger.position(c)?,
        (None, after) => after.unwrap_or(0),
    };
    if !a.follow {
        print_after(ctx, &ledger, after, a.limit, out)?;
        return Ok(());
    }
    drop(ledger);
    follow(ctx, a, after, out)
}

/// `changes --follow`: poll the file, printing what committed since the last look. The ledger
/// is open only while it is read, so that the commands that write to it can take it in
/// between; a poll that finds it open elsewhere tries again at the next one.
fn follow(ctx: &Context, a: &ChangesArgs, mut at: u64, out: &mut Out) -> Result<(), CliError> {
    let mut printed = 0u64;
    loop {
        match Ledger::open_with(&ctx.db, ctx.options()) {
            Ok(ledger) => loop {
                let left = a.max_entries.map(|m| m - printed);
                let want = left.map_or(MAX_PAGE_LIMIT, |l| {
                    u32::try_from(l)
                        .unwrap_or(MAX_PAGE_LIMIT)
                        .min(MAX_PAGE_LIMIT)
                });
                let page = ledger.changes(at, want)?;
                for t in &page.entries {
                    print_entry(ctx, t, out)?;
                }
                out.flush()?;
                printed += page.entries.len() as u64;
                at = page.next_after(at);
                if a.max_entries.is_some_and(|m| printed >= m) {
                    return Ok(());
                }
                if page.entries.is_empty() || at >= page.last_txn_id {
                    break;
                }
            },
            Err(Error::AlreadyOpen { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(Duration::from_millis(a.poll_ms));
    }
}

pub fn ack(ctx: &Context, a: &AckArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Existing)?;
    let r = ledger.ack(&a.consumer, a.txn)?;
    if ctx.json {
        return out.json(&json!({
            "consumer": r.consumer,
            "position": r.txn_id,
            "replay": r.replay,
        }));
    }
    let note = if r.replay { " (already there)" } else { "" };
    out.line(format!(
        "Consumer {} is at transaction #{}{note}",
        clean(&r.consumer),
        r.txn_id
    ))
}
