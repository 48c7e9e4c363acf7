//! The commands that read: balance, history, show, generation, verify, stats, export.

use credit_ledger::{
    GenerationState, HistoryFilter, Ledger, MessageCategory, PageRequest, Status, TimeWindow,
    TransactionView, TxnKind,
};
use serde_json::{json, Value};

use crate::args::{
    ExportArgs, ExportFormat, GenArg, HistoryArgs, ShowArgs, WindowArgs, WorkspaceArg,
};
use crate::fail::{CliError, EXIT_CORRUPT};
use crate::open::{Context, Mode};
use crate::output::{clean, pairs, signed, thousands, Align, Out, Table};
use crate::rows::{csv_row, history_row, history_table, txn_json, CSV_HEADER};
use crate::time::{format_duration, format_human, format_human_zoned, format_rfc3339, zone_label};

/// Running generations listed by `balance` (the count is always exact).
const RUNNING_SHOWN: u32 = 50;

pub fn balance(ctx: &Context, a: &WorkspaceArg, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let s = ledger.balance(&a.workspace)?;
    let now = ledger.now_ms();
    // Pending Usage rows are exactly the running generations, newest first.
    let page = ledger.history(
        &a.workspace,
        &HistoryFilter::all()
            .kinds([TxnKind::Usage])
            .statuses([Status::Pending]),
        &PageRequest::first(RUNNING_SHOWN),
    )?;
    let mut running = Vec::new();
    for t in &page.entries {
        if let Some(g) = &t.generation_id {
            running.push(ledger.generation(g)?);
        }
    }
    if ctx.json {
        return out.json(&json!({
            "workspace": s.workspace,
            "balance": s.balance_credits,
            "granted": s.granted_credits,
            "spent": s.spent_credits,
            "refunded": s.refunded_credits,
            "adjusted_in": s.adjusted_in_credits,
            "adjusted_out": s.adjusted_out_credits,
            "spendable": s.spendable_credits,
            "pending": s.pending_credits,
            "expired_unswept": s.expired_unswept_credits,
            "expired": s.expired_credits,
            "voided": s.voided_credits,
            "next_expiry": s.next_expiry.map(|n| json!({
                "at": format_rfc3339(n.at_ms),
                "credits": n.credits,
            })),
            "running": s.running_generations,
            "transactions": s.transactions,
            "created_at": format_rfc3339(s.created_at_ms),
            "running_generations": running.iter().map(|g| json!({
                "generation": g.generation_id,
                "feature": g.feature,
                "cost": g.cost_credits,
                "usage_txn": g.usage_txn,
                "started_at": format_rfc3339(g.started_at_ms),
                "deadline": format_rfc3339(g.deadline_ms),
                "overdue": g.overdue,
            })).collect::<Vec<_>>(),
        }));
    }
    out.line(format!("Workspace {}", clean(&s.workspace)))?;
    let mut rows = vec![
        ("Balance", format!("{} credits", s.balance_credits)),
        ("Spendable", format!("{} credits now", s.spendable_credits)),
    ];
    if s.pending_credits > 0 {
        rows.push((
            "Not yet",
            format!("{} credits (grants not yet effective)", s.pending_credits),
        ));
    }
    if s.expired_unswept_credits > 0 {
        rows.push((
            "Expired",
            format!(
                "{} credits (past their expiry; the next sweep writes the Expiration)",
                s.expired_unswept_credits
            ),
        ));
    }
    if let Some(n) = s.next_expiry {
        rows.push((
            "Next expiry",
            format!(
                "{} credits at {} (in {})",
                n.credits,
                format_human_zoned(n.at_ms),
                format_duration(n.at_ms.saturating_sub(now))
            ),
        ));
    }
    if s.expired_credits > 0 || s.voided_credits > 0 {
        rows.push((
            "Lapsed",
            format!("{} expired, {} voided", s.expired_credits, s.voided_credits),
        ));
    }
    rows.extend([
        ("Granted", s.granted_credits.to_string()),
        ("Spent", s.spent_credits.to_string()),
        ("Refunded", s.refunded_credits.to_string()),
        (
            "Adjusted",
            format!("+{} / -{}", s.adjusted_in_credits, s.adjusted_out_credits),
        ),
        (
            "Running",
            format!(
                "{} generation{}",
                s.running_generations,
                if s.running_generations == 1 { "" } else { "s" }
            ),
        ),
        ("Transactions", s.transactions.to_string()),
    ]);
    pairs(out, "  ", &rows)?;
    if !running.is_empty() {
        out.line("")?;
        let started = format!("STARTED ({})", zone_label());
        let deadline = format!("DEADLINE ({})", zone_label());
        let mut t = Table::new(&[
            ("GENERATION", Align::Left),
            ("FEATURE", Align::Left),
            ("COST", Align::Right),
            (&started, Align::Left),
            (&deadline, Align::Left),
            ("", Align::Left),
        ]);
        for g in &running {
            t.row(vec![
                g.generation_id.clone(),
                g.feature.clone(),
                g.cost_credits.to_string(),
                format_human(g.started_at_ms),
                format_human(g.deadline_ms),
                if g.overdue {
                    "overdue: refunded by the next sweep or call".into()
                } else {
                    format!("in {}", format_duration(g.deadline_ms.saturating_sub(now)))
                },
            ]);
        }
        t.print(out)?;
        if s.running_generations > running.len() as u64 {
            out.line(format!(
                "... and {} more; see `history {} --type usage --status pending`",
                s.running_generations - running.len() as u64,
                clean(&s.workspace)
            ))?;
        }
    }
    Ok(())
}

pub fn history(ctx: &Context, a: &HistoryArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let mut filter = HistoryFilter::all()
        .kinds(a.types.iter().copied())
        .statuses(a.status.iter().copied())
        .between(a.since, a.until);
    if let Some(f) = &a.feature {
        filter = filter.feature(f);
    }
    let page = PageRequest {
        limit: a.limit,
        cursor: a.cursor.clone(),
        oldest_first: false,
    };
    let page = ledger.history(&a.workspace, &filter, &page)?;
    if ctx.json {
        return out.json(&json!({
            "workspace": a.workspace,
            "entries": page.entries.iter().map(txn_json).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor,
        }));
    }
    if page.entries.is_empty() {
        out.line("No transactions match.")?;
    } else {
        let mut t = history_table();
        for e in &page.entries {
            history_row(&mut t, e);
        }
        t.print(out)?;
    }
    if let Some(c) = &page.next_cursor {
        out.line(format!("Next page: --cursor {c}"))?;
    }
    Ok(())
}

fn category_name(c: MessageCategory) -> &'static str {
    match c {
        MessageCategory::Technical => "technical error",
        MessageCategory::System => "system error",
        MessageCategory::Validation => "validation error",
        MessageCategory::Timeout => "timeout error",
    }
}

fn linked(
    ledger: &Ledger,
    t: &TransactionView,
) -> Result<Option<(&'static str, TransactionView)>, CliError> {
    let (relation, id) = match (t.refund_of, t.refunded_by) {
        (Some(id), _) => ("refund_of", id),
        (None, Some(id)) => ("refunded_by", id),
        (None, None) => return Ok(None),
    };
    Ok(Some((relation, ledger.transaction(id)?)))
}

pub fn show(ctx: &Context, a: &ShowArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let t = ledger.transaction(a.txn)?;
    let link = linked(&ledger, &t)?;
    let labels = if t.allocations.is_empty() {
        Default::default()
    } else {
        crate::grants::labels(&ledger, &t.workspace)?
    };
    if ctx.json {
        let mut v = txn_json(&t);
        if let Value::Object(m) = &mut v {
            m.insert(
                "allocations".into(),
                crate::grants::allocations_json(&t.allocations, &labels),
            );
            m.insert(
                "linked".into(),
                link.as_ref().map_or(Value::Null, |(relation, l)| {
                    let mut lv = txn_json(l);
                    if let Value::Object(lm) = &mut lv {
                        lm.insert("relation".into(), json!(relation));
                    }
                    lv
                }),
            );
        }
        return out.json(&v);
    }
    out.line(format!("Transaction #{}: {}, {}", t.id, t.kind, t.status))?;
    let mut head = vec![
        ("Date", format_human_zoned(t.at_ms)),
        ("Workspace", t.workspace.clone()),
        ("Title", t.title.clone()),
        ("Type", t.kind.to_string()),
        ("Amount", signed(t.amount_credits)),
        ("Status", t.status.to_string()),
    ];
    if let Some(g) = &t.generation_id {
        head.push(("Generation", g.clone()));
    }
    if let Some(m) = &t.memo {
        head.push(("Memo", m.clone()));
    }
    if let Some(k) = &t.idempotency_key {
        head.push(("Key", k.clone()));
    }
    pairs(out, "  ", &head)?;
    out.line("")?;
    out.line("Credit summary")?;
    let mut summary = vec![
        ("Balance Before", t.balance_before_credits.to_string()),
        ("Action", t.action.clone()),
    ];
    if let Some(r) = t.reason {
        summary.push((
            "Reason",
            format!(
                "{} ({}, {})",
                r.label(),
                r.as_str(),
                category_name(r.category())
            ),
        ));
    }
    if let Some(m) = &t.message {
        let shown = if m.is_empty() {
            "(none given)".to_string()
        } else {
            m.clone()
        };
        let cut = if t.message_truncated {
            " [cut to the length limit]"
        } else {
            ""
        };
        summary.push(("Message", format!("{shown}{cut}")));
    }
    if !t.allocations.is_empty() {
        let (name, verb, until) = match t.kind {
            TxnKind::Refund => ("Returned", "to", true),
            TxnKind::Expiration => ("Expired", "of", false),
            TxnKind::Void => ("Voided", "of", false),
            TxnKind::GrantExpiring => ("Expiring", "of", true),
            _ => ("Paid from", "from", false),
        };
        summary.push((
            name,
            crate::grants::allocation_words(&t.allocations, &labels, verb, until),
        ));
    }
    if let Some(read_ms) = t.untrusted_clock_ms {
        summary.push((
            "Clock",
            format!(
                "read {}, which the ledger did not trust; the refund went ahead, stamped with \
                 the log's time",
                format_human_zoned(read_ms)
            ),
        ));
    }
    if let Some(threshold) = t.alert_threshold_credits {
        summary.push(("Alert", format!("balance fell below {threshold} credits")));
    }
    summary.push(("New Balance", t.balance_after_credits.to_string()));
    pairs(out, "  ", &summary)?;
    if let Some((relation, l)) = &link {
        out.line("")?;
        out.line(if *relation == "refund_of" {
            "Refund of"
        } else {
            "Refunded by"
        })?;
        out.line(format!(
            "  {} #{}  {}  {}  {}  {}",
            l.kind,
            l.id,
            format_human_zoned(l.at_ms),
            clean(&l.title),
            signed(l.amount_credits),
            l.status
        ))?;
    }
    Ok(())
}

pub fn generation(ctx: &Context, a: &GenArg, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let g = ledger.generation(&a.generation)?;
    let now = ledger.now_ms();
    let refund = match g.state {
        GenerationState::Refunded { refund_txn, .. } => Some(ledger.transaction(refund_txn)?),
        _ => None,
    };
    if ctx.json {
        let (state, completed_at, refunded_at, reason, refund_txn) = match g.state {
            GenerationState::Running => ("running", None, None, None, None),
            GenerationState::Succeeded { completed_at_ms } => (
                "succeeded",
                Some(format_rfc3339(completed_at_ms)),
                None,
                None,
                None,
            ),
            GenerationState::Refunded {
                refunded_at_ms,
                reason,
                refund_txn,
            } => (
                "refunded",
                None,
                Some(format_rfc3339(refunded_at_ms)),
                Some(reason.as_str()),
                Some(refund_txn),
            ),
        };
        return out.json(&json!({
            "generation": g.generation_id,
            "workspace": g.workspace,
            "feature": g.feature,
            "cost": g.cost_credits,
            "timeout_ms": g.timeout_ms,
            "started_at": format_rfc3339(g.started_at_ms),
            "deadline": format_rfc3339(g.deadline_ms),
            "usage_txn": g.usage_txn,
            "state": state,
            "overdue": g.overdue,
            "completed_at": completed_at,
            "refunded_at": refunded_at,
            "reason": reason,
            "refund_txn": refund_txn,
            "message": refund.as_ref().and_then(|r| r.message.clone()),
        }));
    }
    out.line(format!(
        "Generation {} ({}), workspace {}",
        clean(&g.generation_id),
        clean(&g.feature),
        clean(&g.workspace)
    ))?;
    let mut rows = vec![
        (
            "Charged",
            format!(
                "{}  {} credits (Usage #{})",
                format_human_zoned(g.started_at_ms),
                g.cost_credits,
                g.usage_txn
            ),
        ),
        (
            "Deadline",
            format!(
                "{}  (timeout {})",
                format_human_zoned(g.deadline_ms),
                format_duration(g.timeout_ms)
            ),
        ),
    ];
    match g.state {
        GenerationState::Running if g.overdue => rows.push((
            "State",
            "Running, past its deadline: the next call or sweep refunds it (timeout)".into(),
        )),
        GenerationState::Running => rows.push((
            "State",
            format!(
                "Running; times out in {}",
                format_duration(g.deadline_ms.saturating_sub(now))
            ),
        )),
        GenerationState::Succeeded { completed_at_ms } => rows.push((
            "Completed",
            format!(
                "{}  succeeded; the charge stands",
                format_human_zoned(completed_at_ms)
            ),
        )),
        GenerationState::Refunded {
            refunded_at_ms,
            reason,
            refund_txn,
        } => {
            rows.push((
                "Refunded",
                format!(
                    "{}  {} credits (Refund #{}), {} ({})",
                    format_human_zoned(refunded_at_ms),
                    g.cost_credits,
                    refund_txn,
                    reason.label(),
                    reason.as_str()
                ),
            ));
            if let Some(m) = refund.as_ref().and_then(|r| r.message.clone()) {
                rows.push(("Message", m));
            }
        }
    }
    pairs(out, "  ", &rows)
}

pub fn verify(ctx: &Context, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let report = ledger.verify()?;
    let c = &report.checked;
    if ctx.json {
        out.json(&json!({
            "ok": report.is_clean(),
            "violation_count": report.violation_count,
            "violations": report.violations,
            "checked": c,
        }))?;
    } else {
        out.line(format!(
            "Checked: {}, {}, {} ({} running), {}, {}",
            count(c.transactions, "transaction", "transactions"),
            count(c.workspaces, "workspace", "workspaces"),
            count(c.generations, "generation", "generations"),
            c.running,
            count(c.history_entries, "history entry", "history entries"),
            count(c.idempotency_keys, "idempotency key", "idempotency keys"),
        ))?;
        if report.is_clean() {
            out.line("OK: every balance, link, index and checksum is consistent")?;
        } else {
            let mut t = Table::new(&[
                ("INVARIANT", Align::Left),
                ("TRANSACTIONS", Align::Left),
                ("DETAIL", Align::Left),
            ]);
            for v in &report.violations {
                let ids: Vec<String> = v.txn_ids.iter().map(|i| format!("#{i}")).collect();
                t.row(vec![
                    format!("{:?}", v.invariant),
                    ids.join(" "),
                    v.detail.clone(),
                ]);
            }
            t.print(out)?;
        }
    }
    if report.is_clean() {
        Ok(())
    } else {
        out.flush()?;
        Err(CliError::Reported {
            code: EXIT_CORRUPT,
            message: format!(
                "verification failed: {} violation{}; restore from a backup or investigate the ids listed",
                report.violation_count,
                if report.violation_count == 1 { "" } else { "s" }
            ),
        })
    }
}

/// `1 workspace`, `2 workspaces`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

pub fn stats(ctx: &Context, a: &WindowArgs, out: &mut Out) -> Result<(), CliError> {
    let ledger = ctx.open(Mode::Read)?;
    let s = ledger.stats(TimeWindow {
        since_ms: a.since,
        until_ms: a.until,
    })?;
    let rate = |refunds: u64, started: u64| {
        if started == 0 {
            0.0
        } else {
            refunds as f64 / started as f64
        }
    };
    if ctx.json {
        let by_reason: serde_json::Map<String, Value> = s
            .by_reason
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    json!({ "refunds": r.refunds, "credits": r.refunded_credits }),
                )
            })
            .collect();
        let by_feature: serde_json::Map<String, Value> = s
            .by_feature
            .iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    json!({
                        "started": f.started,
                        "refunds": f.refunds,
                        "charged": f.charged_credits,
                        "refunded": f.refunded_credits,
                        "failure_rate": rate(f.refunds, f.started),
                    }),
                )
            })
            .collect();
        return out.json(&json!({
            "since": a.since.map(format_rfc3339),
            "until": a.until.map(format_rfc3339),
            "started": s.started,
            "refunds": s.refunds,
            "refunded_credits": s.refunded_credits,
            "failure_rate": s.failure_rate,
            "by_reason": by_reason,
            "by_feature": by_feature,
        }));
    }
    let window = match (a.since, a.until) {
        (None, None) => "all time".to_string(),
        (since, until) => format!(
            "{} to {}",
            since.map_or("the beginning".into(), format_human_zoned),
            until.map_or("now".into(), format_human_zoned)
        ),
    };
    pairs(
        out,
        "",
        &[
            ("Window", window),
            ("Generations started", thousands(u128::from(s.started))),
            (
                "Failures refunded",
                format!(
                    "{} ({} credits)",
                    thousands(u128::from(s.refunds)),
                    thousands(s.refunded_credits)
                ),
            ),
            ("Failure rate", pct(s.failure_rate)),
        ],
    )?;
    if !s.by_reason.is_empty() {
        out.line("")?;
        let mut t = Table::new(&[
            ("REASON", Align::Left),
            ("REFUNDS", Align::Right),
            ("CREDITS", Align::Right),
            ("SHARE", Align::Right),
        ]);
        for (k, r) in &s.by_reason {
            t.row(vec![
                k.clone(),
                thousands(u128::from(r.refunds)),
                thousands(r.refunded_credits),
                pct(rate(r.refunds, s.refunds)),
            ]);
        }
        t.print(out)?;
    }
    if !s.by_feature.is_empty() {
        out.line("")?;
        let mut t = Table::new(&[
            ("FEATURE", Align::Left),
            ("STARTED", Align::Right),
            ("REFUNDS", Align::Right),
            ("FAILURE RATE", Align::Right),
            ("CHARGED", Align::Right),
            ("REFUNDED", Align::Right),
        ]);
        for (k, f) in &s.by_feature {
            t.row(vec![
                k.clone(),
                thousands(u128::from(f.started)),
                thousands(u128::from(f.refunds)),
                pct(rate(f.refunds, f.started)),
                thousands(f.charged_credits),
                thousands(f.refunded_credits),
            ]);
        }
        t.print(out)?;
    }
    Ok(())
}

pub fn export(ctx: &Context, a: &ExportArgs, out: &mut Out) -> Result<(), CliError> {
    if ctx.json {
        return Err(CliError::usage(
            "export writes its own format; drop --json and use --format jsonl",
        ));
    }
    let ledger = ctx.open(Mode::Read)?;
    ledger.balance(&a.workspace)?;
    if a.format == ExportFormat::Csv {
        out.line(CSV_HEADER)?;
    }
    let mut cursor = None;
    loop {
        let page = ledger.history(
            &a.workspace,
            &HistoryFilter::all(),
            &PageRequest {
                limit: credit_ledger::limits::MAX_PAGE_LIMIT,
                cursor: cursor.take(),
                oldest_first: true,
            },
        )?;
        for t in &page.entries {
            match a.format {
                ExportFormat::Csv => out.line(csv_row(t))?,
                ExportFormat::Jsonl => out.json_line(&txn_json(t))?,
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}
