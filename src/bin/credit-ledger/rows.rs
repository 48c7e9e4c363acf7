//! One transaction as a JSON object, a table row and a CSV record: the same fields in each.

use credit_ledger::{RefundReason, TransactionView, TxnKind};
use serde_json::{json, Value};

use crate::output::{signed, Align, Table};
use crate::time::{format_human, format_rfc3339};

/// The reason's CLI name (`model-failure`), for JSON and CSV.
pub fn reason_name(r: Option<RefundReason>) -> Option<&'static str> {
    r.map(RefundReason::as_str)
}

/// A transaction as JSON: the history row, the export line, the `show` document.
pub fn txn_json(t: &TransactionView) -> Value {
    json!({
        "id": t.id,
        "at": format_rfc3339(t.at_ms),
        "at_ms": t.at_ms,
        "workspace": t.workspace,
        "title": t.title,
        "type": t.kind.as_str(),
        "amount": t.amount_credits,
        "status": t.status.as_str(),
        "balance_before": t.balance_before_credits,
        "balance_after": t.balance_after_credits,
        "action": t.action,
        "generation": t.generation_id,
        "reason": reason_name(t.reason),
        "reason_label": t.reason.map(RefundReason::label),
        "message": t.message,
        "message_truncated": t.message_truncated,
        "refund_of": t.refund_of,
        "refunded_by": t.refunded_by,
        "memo": t.memo,
        "key": t.idempotency_key,
        "untrusted_clock_ms": t.untrusted_clock_ms,
        "alert_threshold": t.alert_threshold_credits,
        "expiring": expiring_json(t),
    })
}

/// For a `grant-expiring` notice: the grant, the credits that lapse unless spent, and when.
fn expiring_json(t: &TransactionView) -> Value {
    match (t.kind, t.allocations.as_slice()) {
        (TxnKind::GrantExpiring, [a]) => json!({
            "grant": a.grant_id,
            "credits": a.credits,
            "expires_at": a.spendable_until_ms.map(format_rfc3339),
            "expires_at_ms": a.spendable_until_ms,
        }),
        _ => Value::Null,
    }
}

/// The history table: id, date, title, type, signed amount, status.
pub fn history_table() -> Table {
    let date = format!("DATE ({})", crate::time::zone_label());
    Table::new(&[
        ("ID", Align::Right),
        (&date, Align::Left),
        ("TITLE", Align::Left),
        ("TYPE", Align::Left),
        ("AMOUNT", Align::Right),
        ("STATUS", Align::Left),
    ])
}

pub fn history_row(table: &mut Table, t: &TransactionView) {
    table.row(vec![
        t.id.to_string(),
        format_human(t.at_ms),
        t.title.clone(),
        t.kind.to_string(),
        signed(t.amount_credits),
        t.status.to_string(),
    ]);
}

/// The CSV header of `export --format csv`.
pub const CSV_HEADER: &str = "id,at,workspace,title,type,amount,status,balance_before,balance_after,generation,reason,message,refund_of,refunded_by,memo,key";

/// One CSV record (RFC 4180 quoting).
pub fn csv_row(t: &TransactionView) -> String {
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        t.id.to_string(),
        format_rfc3339(t.at_ms),
        t.workspace.clone(),
        t.title.clone(),
        t.kind.as_str().to_string(),
        t.amount_credits.to_string(),
        t.status.as_str().to_string(),
        t.balance_before_credits.to_string(),
        t.balance_after_credits.to_string(),
        t.generation_id.clone().unwrap_or_default(),
        reason_name(t.reason).unwrap_or_default().to_string(),
        t.message.clone().unwrap_or_default(),
        opt(t.refund_of),
        opt(t.refunded_by),
        t.memo.clone().unwrap_or_default(),
        t.idempotency_key.clone().unwrap_or_default(),
    ];
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) || f.starts_with(' ') || f.ends_with(' ') {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field(""), "");
    }
}
