//! `recover --discard-journal`: the operator's explicit way to open a ledger whose journal
//! cannot be replayed, accepting the loss (see `Options::discard_journal`).

use serde_json::json;

use crate::args::RecoverArgs;
use crate::fail::CliError;
use crate::open::{Context, Mode};
use crate::output::Out;

pub fn run(ctx: &Context, a: &RecoverArgs, out: &mut Out) -> Result<(), CliError> {
    if !a.discard_journal {
        return Err(CliError::usage(
            "recover only discards when told to: pass --discard-journal to open the ledger \
             without the journal entries that cannot be replayed (their writes are lost)",
        ));
    }
    // The same path checks, `--now` guard and `--wait` as every other command.
    let ledger = ctx.open_with(Mode::Existing, ctx.options().discard_journal(true))?;
    let report = ledger.verify()?;
    let discard = ledger.journal_discard();
    if ctx.json {
        return out.json(&json!({
            "ledger": ctx.db.display().to_string(),
            "discarded": discard.map(|d| json!({
                "epoch": format!("{:016x}", d.epoch),
                "first_seq": d.first_seq,
                "last_seq": d.last_seq,
                "replayed_entries": d.replayed_entries,
                "at_ms": d.at_ms,
                "reason": d.reason,
                "journal_kept_at": d.kept_at.as_ref().map(|p| p.display().to_string()),
            })),
            "verify_clean": report.is_clean(),
        }));
    }
    match discard {
        None => out.line(format!(
            "Nothing to discard: `{}` opened with every acknowledged write",
            ctx.db.display()
        ))?,
        Some(d) => {
            let range = match d.last_seq {
                Some(last) => format!("entries {} to {last}", d.first_seq),
                None => format!("entries from {} on (how many is unknown)", d.first_seq),
            };
            out.line(format!(
                "Discarded journal {range} of epoch {:016x}, after replaying {} intact entries",
                d.epoch, d.replayed_entries
            ))?;
            out.line(format!("Reason: {}", d.reason))?;
            if let Some(kept) = &d.kept_at {
                out.line(format!("The journal was kept as `{}`", kept.display()))?;
            }
            out.line(
                "Every workspace's history has a \"Journal discarded\" note saying so; the writes \
                 in those entries are lost",
            )?;
        }
    }
    out.line(if report.is_clean() {
        "verify: OK"
    } else {
        "verify: NOT clean; run `verify` for the details"
    })
}
