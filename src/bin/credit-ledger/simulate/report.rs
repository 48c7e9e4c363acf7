//! The simulation report: phases, refunds by reason, the reconciliation of every credit, and
//! the audit, as text or as one JSON document.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use credit_ledger::{AuditReport, LedgerTotals, RefundReason, Stats};
use serde_json::{json, Value};

use super::workload::{PhaseStat, Tally};
use super::{secs, Params};
use crate::output::{thousands, Align, Table};
use crate::time::format_rfc3339;

pub struct Inputs<'a> {
    pub params: &'a Params,
    pub db: &'a Path,
    pub tally: &'a Tally,
    pub totals: &'a LedgerTotals,
    pub stats: &'a Stats,
    pub audit: &'a AuditReport,
    pub totals_elapsed: Duration,
    pub verify_elapsed: Duration,
    pub wall: Duration,
    pub file_bytes: u64,
    pub peak_rss_bytes: Option<u64>,
    /// Workspaces whose own totals were reconciled, and those (first few) that did not add up.
    pub workspaces_reconciled: u64,
    pub workspace_mismatches: Vec<String>,
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

pub struct Report<'a> {
    i: Inputs<'a>,
    phases: Vec<(&'static str, PhaseStat)>,
    checks: Vec<Check>,
    ledger_by_reason: BTreeMap<String, u64>,
}

/// Phases in the order they happen.
const PHASE_ORDER: [&str; 6] = ["fund", "start", "complete", "fail", "late report", "sweep"];

fn eq_check<T: PartialEq + std::fmt::Display>(name: &'static str, ledger: T, expected: T) -> Check {
    Check {
        name,
        ok: ledger == expected,
        detail: format!("ledger {ledger}, simulation {expected}"),
    }
}

impl<'a> Report<'a> {
    pub fn new(i: Inputs<'a>) -> Self {
        let t = i.tally;
        let mut phases: Vec<(&'static str, PhaseStat)> = PHASE_ORDER
            .iter()
            .filter_map(|n| t.phases.get(n).map(|p| (*n, p.clone())))
            .collect();
        phases.push((
            "totals+stats",
            PhaseStat {
                ops: i.totals.workspaces + i.audit.checked.transactions,
                elapsed: i.totals_elapsed,
            },
        ));
        phases.push((
            "verify",
            PhaseStat {
                ops: i.audit.checked.transactions,
                elapsed: i.verify_elapsed,
            },
        ));
        let ledger_by_reason: BTreeMap<String, u64> = i
            .stats
            .by_reason
            .iter()
            .map(|(k, v)| (k.clone(), v.refunds))
            .collect();
        let expected_by_reason: BTreeMap<String, u64> = t
            .expected_by_reason
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let observed_by_reason: BTreeMap<String, u64> = t
            .refunds_by_reason
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let expected_balance = (t.granted + t.expected_refunded).checked_sub(t.spent + t.expired);
        let mut checks = vec![
            Check {
                name: "conservation",
                ok: i.totals.is_conserved(),
                detail: format!(
                    "granted {} - spent {} + refunded {} - expired {} = balances {}",
                    i.totals.granted_credits,
                    i.totals.spent_credits,
                    i.totals.refunded_credits,
                    i.totals.expired_credits,
                    i.totals.balance_credits
                ),
            },
            Check {
                name: "per workspace",
                ok: i.workspace_mismatches.is_empty(),
                detail: if i.workspace_mismatches.is_empty() {
                    format!(
                        "granted - spent + refunded - expired = balance in each of {} workspaces",
                        i.workspaces_reconciled
                    )
                } else {
                    format!("does not add up in {}", i.workspace_mismatches.join(", "))
                },
            },
            eq_check("granted", i.totals.granted_credits, t.granted),
            eq_check("spent", i.totals.spent_credits, t.spent),
            eq_check("refunded", i.totals.refunded_credits, t.expected_refunded),
            eq_check("expired", i.totals.expired_credits, t.expired),
            Check {
                name: "balance",
                ok: expected_balance == Some(i.totals.balance_credits),
                detail: format!(
                    "ledger {}, simulation {}",
                    i.totals.balance_credits,
                    expected_balance.map_or("negative".into(), |b| b.to_string())
                ),
            },
            eq_check("running at the end", i.totals.running_generations, 0),
            eq_check(
                "workspaces",
                i.totals.workspaces,
                u64::from(i.params.workspaces),
            ),
            eq_check("transactions", i.audit.checked.transactions, t.transactions),
            eq_check("generations started", t.started, i.params.generations),
            eq_check("completed", t.completed, t.expected_completed),
            Check {
                name: "refunds by reason",
                ok: ledger_by_reason == expected_by_reason
                    && observed_by_reason == expected_by_reason,
                detail: if ledger_by_reason == expected_by_reason
                    && observed_by_reason == expected_by_reason
                {
                    format!(
                        "the ledger's stats, the receipts and the simulation agree on {} refunds",
                        expected_by_reason.values().sum::<u64>()
                    )
                } else {
                    format!(
                        "ledger {ledger_by_reason:?}, receipts {observed_by_reason:?}, simulation {expected_by_reason:?}"
                    )
                },
            },
            eq_check("unexpected results", t.unexpected, 0),
        ];
        checks.push(Check {
            name: "verify",
            ok: i.audit.is_clean(),
            detail: format!("{} violations", i.audit.violation_count),
        });
        Report {
            i,
            phases,
            checks,
            ledger_by_reason,
        }
    }

    /// Clean audit and every credit reconciled.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn failure_summary(&self) -> String {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        format!("checks failed: {}", failed.join(", "))
    }

    fn rate(p: &PhaseStat) -> f64 {
        let s = secs(p.elapsed);
        if s > 0.0 {
            p.ops as f64 / s
        } else {
            0.0
        }
    }

    /// Refunds by reason in the ledger, with every reason present (zeros included).
    fn by_reason(&self) -> Vec<(&'static str, u64)> {
        RefundReason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.ledger_by_reason.get(r.as_str()).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    pub fn json(&self) -> Value {
        let i = &self.i;
        let p = i.params;
        let t = i.tally;
        let reasons: serde_json::Map<String, Value> = self
            .by_reason()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "ok": self.ok(),
            "params": {
                "workspaces": p.workspaces,
                "generations": p.generations,
                "threads": p.threads,
                "batch": p.batch,
                "fail_rate": p.fail_rate,
                "timeout_rate": p.timeout_rate,
                "seed": p.seed,
            },
            "db": i.db.display().to_string(),
            "db_bytes": i.file_bytes,
            "simulated": { "from": format_rfc3339(p.start_ms), "to": format_rfc3339(t.end_ms) },
            "phases": self.phases.iter().map(|(name, ph)| json!({
                "name": name,
                "ops": ph.ops,
                "seconds": secs(ph.elapsed),
                "ops_per_s": Self::rate(ph),
            })).collect::<Vec<_>>(),
            "refunds_by_reason": reasons,
            "sweep_calls": t.sweep_calls,
            "totals": {
                "workspaces": i.totals.workspaces,
                "balance": i.totals.balance_credits.to_string(),
                "granted": i.totals.granted_credits.to_string(),
                "spent": i.totals.spent_credits.to_string(),
                "refunded": i.totals.refunded_credits.to_string(),
                "expired": i.totals.expired_credits.to_string(),
                "grace_refunds": t.grace_refunds,
                "running": i.totals.running_generations,
                "transactions": i.audit.checked.transactions,
            },
            "conserved": i.totals.is_conserved(),
            "reconciled": self.checks.iter().filter(|c| c.name != "verify").all(|c| c.ok),
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "ok": c.ok, "detail": c.detail,
            })).collect::<Vec<_>>(),
            "unexpected": t.unexpected,
            "unexpected_examples": t.unexpected_examples,
            "verify": {
                "ok": i.audit.is_clean(),
                "violation_count": i.audit.violation_count,
                "violations": i.audit.violations,
                "checked": i.audit.checked,
            },
            "seconds": secs(i.wall),
            "peak_rss_bytes": i.peak_rss_bytes,
        })
    }

    pub fn text(&self) -> Vec<String> {
        let i = &self.i;
        let p = i.params;
        let t = i.tally;
        let mut lines = vec![
            format!(
                "Simulated {} generations over {} workspaces: {} thread{}, batch {}, fail rate {}, timeout rate {}, seed {}",
                thousands(u128::from(p.generations)),
                thousands(u128::from(p.workspaces)),
                p.threads,
                if p.threads == 1 { "" } else { "s" },
                p.batch,
                p.fail_rate,
                p.timeout_rate,
                p.seed
            ),
            format!(
                "Ledger file: {} ({:.1} MiB)",
                i.db.display(),
                i.file_bytes as f64 / 1_048_576.0
            ),
            format!(
                "Simulated clock: {} to {}",
                format_rfc3339(p.start_ms),
                format_rfc3339(t.end_ms)
            ),
            String::new(),
        ];
        let mut table = Table::new(&[
            ("PHASE", Align::Left),
            ("OPS", Align::Right),
            ("SECONDS", Align::Right),
            ("OPS/S", Align::Right),
        ]);
        for (name, ph) in &self.phases {
            table.row(vec![
                name.to_string(),
                thousands(u128::from(ph.ops)),
                format!("{:.3}", secs(ph.elapsed)),
                thousands(Self::rate(ph).round() as u128),
            ]);
        }
        lines.extend(table.render());
        lines.push(String::new());
        lines.push("Refunds by reason (from the ledger's stats):".into());
        let mut table = Table::new(&[("REASON", Align::Left), ("REFUNDS", Align::Right)]);
        for (k, v) in self.by_reason() {
            table.row(vec![k.to_string(), thousands(u128::from(v))]);
        }
        lines.extend(table.render().into_iter().map(|l| format!("  {l}")));
        lines.push(String::new());
        lines.push(format!(
            "Balances: {} workspaces hold {} credits = granted {} - spent {} + refunded {} - expired {}; {} running",
            i.totals.workspaces,
            thousands(i.totals.balance_credits),
            thousands(i.totals.granted_credits),
            thousands(i.totals.spent_credits),
            thousands(i.totals.refunded_credits),
            thousands(i.totals.expired_credits),
            i.totals.running_generations
        ));
        lines.push(format!(
            "Grants: a 7-day trial and this month's subscription expired during the run; {} refunds gave credits back into a grace part of a grant that had expired or was about to",
            thousands(u128::from(t.grace_refunds))
        ));
        for c in &self.checks {
            lines.push(format!(
                "  [{}] {}: {}",
                if c.ok { "ok" } else { "FAILED" },
                c.name,
                c.detail
            ));
        }
        for e in &t.unexpected_examples {
            lines.push(format!("  unexpected: {e}"));
        }
        lines.push(String::new());
        let a = &i.audit;
        lines.push(format!(
            "verify(): {} ({} transactions, {} generations, {} history entries checked)",
            if a.is_clean() {
                "clean".to_string()
            } else {
                format!("{} violations", a.violation_count)
            },
            thousands(u128::from(a.checked.transactions)),
            thousands(u128::from(a.checked.generations)),
            thousands(u128::from(a.checked.history_entries)),
        ));
        for v in a.violations.iter().take(20) {
            lines.push(format!(
                "  {:?}: {}",
                v.invariant,
                crate::output::clean(&v.detail)
            ));
        }
        lines.push(format!(
            "Peak RSS: {}   Wall time: {:.1} s",
            i.peak_rss_bytes.map_or("unknown".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / 1_048_576.0
            )),
            secs(i.wall)
        ));
        lines.push(if self.ok() {
            "Result: OK (verify clean, every credit reconciled)".into()
        } else {
            format!("Result: FAILED ({})", self.failure_summary())
        });
        lines.push(format!(
            "Explore it with: credit-ledger --db {} history ws-0000 (delete the file when done)",
            i.db.display()
        ));
        lines
    }
}
