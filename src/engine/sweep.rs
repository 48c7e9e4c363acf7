//! The sweep: refund every running generation whose deadline has passed, then write the
//! `GrantExpiring` notices that are due, then an Expiration for every grant lot whose expiry
//! has passed.
//!
//! It reads the `deadlines`, `grant_notices` and `grant_expiries` indexes from their start up
//! to `now`, so its cost is O(due · log n) however many generations are running or grants are
//! held.
//! Neither is needed for correctness: a deadline or an expiry takes effect at its time whether
//! or not a sweep ran (lazy expiry); the sweep only writes the transactions that show it.

use redb::ReadableTable;

use super::generation::refund;
use super::{grants, notify, Ctx};
use crate::error::Error;
use crate::model::limits::MAX_SWEEP_LIMIT;
use crate::model::records::GenState;
use crate::model::{validate, RefundReason, SweepReport};
use crate::storage::tables;

pub(super) fn sweep(ctx: &mut Ctx<'_>, limit: u32) -> Result<SweepReport, Error> {
    validate::limit("sweep limit", u64::from(limit), u64::from(MAX_SWEEP_LIMIT))?;
    let mut due: Vec<(u64, String)> = Vec::new();
    {
        let mut range = ctx.deadlines.range::<(u64, &str)>(..)?;
        for entry in range.by_ref() {
            let (key, _) = entry?;
            let (deadline_ms, generation) = key.value();
            if deadline_ms > ctx.now_ms || due.len() > limit as usize {
                break;
            }
            due.push((deadline_ms, generation.to_string()));
        }
    }
    let more_expired = due.len() > limit as usize;
    due.truncate(limit as usize);

    let mut report = SweepReport {
        more_expired,
        ..SweepReport::default()
    };
    for (deadline_ms, generation) in due {
        let gen = tables::get_generation(&ctx.generations, &generation)?;
        let gen = match gen {
            Some(g) if g.state == GenState::Running && g.deadline_ms == deadline_ms => g,
            _ => {
                return Err(Error::Corruption {
                    table: "deadlines",
                    key: format!("({deadline_ms}, {generation})"),
                    detail: "index entry for a generation that is not running with this deadline"
                        .into(),
                })
            }
        };
        let message = format!(
            "generation ran past its {} timeout",
            crate::query::format_duration_ms(gen.timeout_ms)
        );
        report
            .refunds
            .push(refund(ctx, gen, RefundReason::Timeout, &message)?);
    }
    let mut budget = limit as usize - report.refunds.len();
    // With a clock the write path does not trust only refunds go ahead. Notices and
    // expirations can wait for a sweep with a good clock: a lapsed grant is not spendable
    // either way, and a notice due under a wrong clock could be early or late.
    let trusted = ctx.trust_clock().is_ok();
    // Notices before expiries: a notice is due before its grant's expiry, so once every due
    // notice is handled, no grant about to be expired here still has an entry.
    if trusted && (budget > 0 || !report.more_expired) {
        let mut due = notify::due_notices(ctx, budget)?;
        if due.len() > budget {
            report.more_expired = true;
            due.truncate(budget);
        }
        budget -= due.len();
        for entry in due {
            if let Some(n) = notify::send_due_notice(ctx, entry)? {
                report.notices.push(n);
            }
        }
    }
    let mut lapsed: Vec<(u64, String, String, u32)> = Vec::new();
    if trusted && (budget > 0 || !report.more_expired) {
        for entry in ctx.gt().expiries.range::<(u64, &str, &str, u32)>(..)? {
            let (key, _) = entry?;
            let (expires_ms, ws, id, lot) = key.value();
            if expires_ms > ctx.now_ms || lapsed.len() > budget {
                break;
            }
            lapsed.push((expires_ms, ws.to_string(), id.to_string(), lot));
        }
    }
    if lapsed.len() > budget {
        report.more_expired = true;
        lapsed.truncate(budget);
    }
    for (expires_ms, ws, id, lot) in lapsed {
        let rec = ctx.grant(&ws, &id, lot)?;
        let rec = match rec {
            Some(g) if g.closed.is_none() && g.expires_at_ms == Some(expires_ms) => g,
            _ => {
                return Err(Error::Corruption {
                    table: "grant_expiries",
                    key: format!("({expires_ms}, {ws}, {id}, {lot})"),
                    detail: "index entry for a grant lot that is not open with this expiry".into(),
                })
            }
        };
        if let Some(closure) = grants::expire(ctx, rec)? {
            report.expirations.push(closure);
        }
    }
    report.next_deadline_ms = ctx.earliest_deadline()?;
    Ok(report)
}
