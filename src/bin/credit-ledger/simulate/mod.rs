//! `simulate`: the main job. A fresh ledger file, funded workspaces, and generations run
//! through their whole life on a simulated clock, then a report that reconciles every credit
//! and runs `verify()`.

mod arenas;
mod report;
mod rng;
mod workload;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_ledger::{limits, Ledger, ManualClock, Options, TimeWindow};

use crate::args::SimulateArgs;
use crate::fail::{CliError, EXIT_CORRUPT};
use crate::open::Context;
use crate::output::Out;

/// 2026-01-01T00:00:00Z: where the simulated clock starts unless `--now` says otherwise, so
/// that a seed reproduces the same ledger.
const DEFAULT_START_MS: u64 = 1_767_225_600_000;

/// Checked parameters.
#[derive(Debug, Clone)]
pub struct Params {
    pub workspaces: u32,
    pub generations: u64,
    pub threads: u32,
    pub batch: u32,
    pub fail_rate: f64,
    pub timeout_rate: f64,
    pub seed: u64,
    pub start_ms: u64,
}

impl Params {
    fn check(a: &SimulateArgs, start_ms: u64) -> Result<Params, CliError> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(CliError::usage(format!(
                    "--{name} is {v}; it must be between {lo} and {hi}"
                )))
            } else {
                Ok(())
            }
        };
        range("workspaces", u64::from(a.workspaces), 1, 1_000_000)?;
        range("generations", a.generations, 1, 1_000_000_000)?;
        range("threads", u64::from(a.threads), 1, 512)?;
        range("batch", u64::from(a.batch), 1, limits::MAX_BATCH_OPS as u64)?;
        for (name, v) in [("fail-rate", a.fail_rate), ("timeout-rate", a.timeout_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(CliError::usage(format!(
                    "--{name} is {v}; it must be a fraction between 0 and 1"
                )));
            }
        }
        if a.fail_rate + a.timeout_rate > 1.0 {
            return Err(CliError::usage(format!(
                "--fail-rate {} plus --timeout-rate {} is more than 1",
                a.fail_rate, a.timeout_rate
            )));
        }
        // The simulated span must stay within u64 milliseconds.
        let waves = a.generations.div_ceil(workload::wave_size(a.generations));
        if start_ms
            .checked_add(
                waves
                    .saturating_add(20)
                    .saturating_mul(workload::WAVE_STEP_MS),
            )
            .is_none()
        {
            return Err(CliError::usage("--now is too late for the simulated clock"));
        }
        Ok(Params {
            workspaces: a.workspaces,
            generations: a.generations,
            threads: a.threads,
            batch: a.batch,
            fail_rate: a.fail_rate,
            timeout_rate: a.timeout_rate,
            seed: a.seed,
            start_ms,
        })
    }
}

/// Pick the file: the explicit `--db` if it is new or empty, or a fresh temporary file.
fn fresh_file(ctx: &Context) -> Result<PathBuf, CliError> {
    if ctx.db_explicit {
        let path = ctx.db.clone();
        // Not following a symlink: only a missing path or an empty regular file will do, so
        // that a device node, a FIFO or a link is never replaced.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                return Err(CliError::usage(format!(
                    "`{}` is a directory; give --db the path of a new file",
                    path.display()
                )))
            }
            Ok(m) if !m.file_type().is_file() => {
                return Err(CliError::usage(format!(
                    "`{}` is not a regular file (a symlink, device, FIFO or socket); simulate needs the path of a new file",
                    path.display()
                )))
            }
            Ok(m) if m.len() > 0 => {
                return Err(CliError::refused(format!(
                    "`{}` already exists and is not empty; simulate needs a fresh file: delete it or pass another --db",
                    path.display()
                )))
            }
            Ok(_) => std::fs::remove_file(&path).map_err(|e| {
                CliError::refused(format!("cannot replace the empty file `{}`: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::refused(format!(
                    "cannot use `{}`: {e}",
                    path.display()
                )))
            }
        }
        return Ok(path);
    }
    let dir = std::env::temp_dir();
    for n in 0..1000u32 {
        let path = dir.join(format!("credit-ledger-sim-{}-{n}.redb", std::process::id()));
        if !path.exists() {
            return Ok(path);
        }
    }
    Err(CliError::refused(format!(
        "cannot find a free temporary file name in `{}`",
        dir.display()
    )))
}

/// The peak resident set size of this process, from `/proc/self/status` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} generations, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

pub fn run(ctx: &Context, a: &SimulateArgs, out: &mut Out) -> Result<(), CliError> {
    let params = Params::check(a, ctx.now_ms.unwrap_or(DEFAULT_START_MS))?;
    arenas::limit_arenas();
    let path = fresh_file(ctx)?;
    let clock = ManualClock::new(params.start_ms);
    // The simulated clock runs hours ahead on its own fresh file: not a mistyped time, so the
    // guard against a clock far ahead of the system clock does not apply.
    let options = Options::default()
        .clock(clock.clone())
        .max_clock_ahead_ms(None);
    let wall = Instant::now();
    let ledger = Arc::new(Ledger::open_with(&path, options)?);

    let bar = progress_bar(params.generations);
    let tally = {
        let on_progress = |n: u64| {
            if let Some(b) = &bar {
                b.set_position(n);
            }
        };
        workload::run(Arc::clone(&ledger), &clock, &params, &on_progress)?
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let t = Instant::now();
    let totals = ledger.totals()?;
    let stats = ledger.stats(TimeWindow::all())?;
    let totals_elapsed = t.elapsed();
    let t = Instant::now();
    let audit = ledger.verify()?;
    let verify_elapsed = t.elapsed();
    let (workspaces_reconciled, workspace_mismatches) = reconcile_workspaces(&ledger)?;
    drop(ledger);

    let file_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let report = report::Report::new(report::Inputs {
        params: &params,
        db: &path,
        tally: &tally,
        totals: &totals,
        stats: &stats,
        audit: &audit,
        totals_elapsed,
        verify_elapsed,
        wall: wall.elapsed(),
        file_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        workspaces_reconciled,
        workspace_mismatches,
    });
    if ctx.json {
        out.json(&report.json())?;
    } else {
        for line in report.text() {
            out.line(line)?;
        }
    }
    if report.ok() {
        Ok(())
    } else {
        out.flush()?;
        Err(CliError::Reported {
            code: EXIT_CORRUPT,
            message: format!(
                "simulation failed: {}; the ledger is kept at {} for inspection",
                report.failure_summary(),
                shown(&path)
            ),
        })
    }
}

/// Each workspace's own reconciliation, from its totals: granted - spent + refunded -
/// expired (and the operator's adjustments and voids, which the simulation makes none of)
/// = balance. Returns how many were checked and the first few that did not add up.
fn reconcile_workspaces(ledger: &Ledger) -> Result<(u64, Vec<String>), CliError> {
    let (mut checked, mut bad) = (0u64, Vec::new());
    let mut after: Option<String> = None;
    loop {
        let page = ledger.workspaces(after.as_deref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.workspace.clone());
        for w in &page {
            checked += 1;
            let inflow = u128::from(w.granted_credits)
                + u128::from(w.refunded_credits)
                + u128::from(w.adjusted_in_credits);
            let outflow = u128::from(w.spent_credits)
                + u128::from(w.expired_credits)
                + u128::from(w.voided_credits)
                + u128::from(w.adjusted_out_credits);
            if inflow.checked_sub(outflow) != Some(u128::from(w.balance_credits)) && bad.len() < 10
            {
                bad.push(w.workspace.clone());
            }
        }
    }
    Ok((checked, bad))
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Seconds as a float, for reports.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
