//! The timeout sweep: refund every running generation whose deadline has passed.
//!
//! It reads the `deadlines` index from its start up to `now`, so its cost is
//! O(expired · log n) however many generations are running.

use redb::ReadableTable;

use super::generation::refund;
use super::Ctx;
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
    report.next_deadline_ms = ctx.earliest_deadline()?;
    Ok(report)
}
