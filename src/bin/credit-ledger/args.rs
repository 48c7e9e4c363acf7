//! The command line, as clap derive structs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default ledger file, in the current directory.
pub const DEFAULT_DB: &str = "credit-ledger.redb";

/// The environment variable that names the ledger file when `--db` is not given; set but empty,
/// it counts as unset.
pub const DB_ENV: &str = "CREDIT_LEDGER_DB";

/// Inspect and operate a credit ledger: credits, generation charges and their automatic
/// refunds. Exit codes: 0 ok, 1 refused (insufficient credits, conflict, unknown id, already
/// finished), 2 usage error, 3 verification failure or damaged file.
#[derive(Debug, Parser)]
#[command(name = "credit-ledger", version, about, max_term_width = 100)]
pub struct Cli {
    /// The ledger file [default: credit-ledger.redb]
    #[arg(long, global = true, env = DB_ENV, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// Print exactly one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// The time the ledger sees: RFC 3339 (2026-11-25T14:15:34Z), a date (2026-11-25) or Unix
    /// milliseconds. For replaying events and for tests. Default: the system clock.
    #[arg(long, global = true, value_name = "TIME", value_parser = crate::time::parse_time)]
    pub now: Option<u64>,

    /// Write even though --now is ahead of the system clock by more than the ledger's
    /// tolerance for a backwards clock (one minute). Without it such a write is refused: once
    /// stamped, it makes every later write with the real clock fail until that time.
    #[arg(long, global = true)]
    pub allow_future_now: bool,

    /// Schedule a grant-expiring notice this long before the expiry of each grant this run
    /// credits (3d, 12h; 1m to 400d). Default: none. A grant's notice time is fixed when it is
    /// credited; `sweep` writes the notices that are due, whatever this run says.
    #[arg(long, global = true, value_name = "DURATION", value_parser = crate::time::parse_duration_ms)]
    pub grant_notice: Option<u64>,

    /// How long to wait for a ledger file another process has open, retrying with a short
    /// backoff: 5s, 500ms, 2m (at most 1h). 0 fails at once.
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_wait_ms)]
    pub wait: u64,

    /// The time zone times are printed in (tables, and the `at` strings of JSON and CSV; `at_ms`
    /// is the same in every zone): UTC, local (this machine's zone, from TZ or /etc/localtime),
    /// or an IANA name such as Europe/Berlin.
    #[arg(long, global = true, value_name = "ZONE", default_value = "UTC", value_parser = crate::time::Zone::parse)]
    pub tz: crate::time::Zone,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add credits to a workspace (a purchase or a grant); creates the workspace, and the
    /// ledger file, on first use.
    Credit(CreditArgs),
    /// Apply an operator's signed correction to a workspace's balance.
    Adjust(AdjustArgs),
    /// Charge a generation's cost and start its deadline.
    Start(StartArgs),
    /// Mark a generation as succeeded (its charge stands).
    Complete(GenArg),
    /// Report a failed generation: its full cost is refunded at once.
    Fail(FailArgs),
    /// Refund running generations whose deadline has passed (reason: timeout).
    Sweep(SweepArgs),
    /// A workspace's balance, its granted, spent and refunded totals, and its running
    /// generations.
    Balance(WorkspaceArg),
    /// A workspace's transactions, newest first, as an aligned table.
    History(HistoryArgs),
    /// A workspace's credit grants in drawdown order: remaining, priority, start, expiry,
    /// state.
    Grants(WorkspaceArg),
    /// Void what remains of a grant (its own Void transaction).
    VoidGrant(VoidGrantArgs),
    /// One transaction's credit summary: balance before, action, new balance, linked
    /// Usage or Refund.
    Show(ShowArgs),
    /// A generation's timeline: charge, deadline, state and refund.
    Generation(GenArg),
    /// Check every invariant of the ledger. Exit 3 when something is wrong.
    Verify,
    /// Failures and refunds by reason and by feature, and the failure rate.
    Stats(WindowArgs),
    /// A workspace's full history, oldest first, as CSV or JSON lines on stdout.
    Export(ExportArgs),
    /// Write a consistent copy of the ledger to a new file DEST (check it with
    /// `--db DEST verify`). While an app has the ledger open, the app calls Ledger::backup.
    Backup(BackupArgs),
    /// The change feed: every workspace's transactions after an id, oldest first (JSON
    /// lines with --json, one object per line in the shape of `export --format jsonl`).
    Changes(ChangesArgs),
    /// Store a change-feed consumer's position: it has processed every entry up to ID.
    Ack(AckArgs),
    /// Run a simulated workload on a fresh ledger file and report throughput, refunds,
    /// the credit reconciliation and the audit.
    Simulate(SimulateArgs),
    /// Open a ledger whose journal cannot be replayed (missing, another copy's, damaged),
    /// accepting the loss of the writes in it: the operator's last resort after looking for
    /// the right journal and for a backup.
    Recover(RecoverArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The new file to write; it must not exist (nothing is ever overwritten).
    pub dest: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CreditKindArg {
    Purchase,
    Grant,
}

#[derive(Debug, Args)]
pub struct CreditArgs {
    /// The workspace id.
    pub workspace: String,
    /// Credits to add (a positive integer).
    pub amount: u64,
    /// Idempotency key (an order or event id): repeating the command with it changes nothing.
    #[arg(long)]
    pub key: String,
    /// Purchase (bought) or grant (given).
    #[arg(long, value_enum, default_value_t = CreditKindArg::Purchase)]
    pub kind: CreditKindArg,
    /// A note shown in history; it also names the grant ("Monthly credits").
    #[arg(long, default_value = "")]
    pub memo: String,
    /// Drawdown priority, 0 to 1000: lower is spent first [default: 100].
    #[arg(long)]
    pub priority: Option<u32>,
    /// Expire the credits this long after now (30d, 12h, 90m).
    #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration_ms, conflicts_with = "expires_at")]
    pub expires_in: Option<u64>,
    /// Expire the credits at this time.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
    pub expires_at: Option<u64>,
    /// Make the credits spendable only from this time on.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
    pub starts_at: Option<u64>,
}

#[derive(Debug, Args)]
pub struct VoidGrantArgs {
    /// The workspace id.
    pub workspace: String,
    /// The grant: the --key of the credit that created it.
    pub grant: String,
    /// Idempotency key: repeating the command with it changes nothing.
    #[arg(long)]
    pub key: String,
    /// Why (required).
    #[arg(long)]
    pub memo: String,
}

#[derive(Debug, Args)]
pub struct AdjustArgs {
    /// The workspace id.
    pub workspace: String,
    /// Signed credits: 25 adds, -25 removes.
    #[arg(allow_negative_numbers = true)]
    pub amount: i64,
    /// Idempotency key: repeating the command with it changes nothing.
    #[arg(long)]
    pub key: String,
    /// Why (required: an adjustment without a reason cannot be audited).
    #[arg(long)]
    pub memo: String,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The generation id (also the idempotency key of the charge).
    pub generation: String,
    /// The workspace that pays.
    #[arg(long)]
    pub workspace: String,
    /// What is generated, for example "Quick Video"; the title in history.
    #[arg(long)]
    pub feature: String,
    /// The cost in credits.
    #[arg(long)]
    pub cost: u64,
    /// How long it may run before it is refunded as a timeout: 150m, 2h30m, 90s.
    #[arg(long, default_value = "150m", value_parser = crate::time::parse_duration_ms)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct GenArg {
    /// The generation id.
    pub generation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReasonArg {
    ModelFailure,
    ApiFailure,
    ServiceUnavailable,
    SystemError,
    InvalidInput,
}

impl ReasonArg {
    pub fn reason(self) -> credit_ledger::RefundReason {
        use credit_ledger::RefundReason as R;
        match self {
            ReasonArg::ModelFailure => R::ModelFailure,
            ReasonArg::ApiFailure => R::ApiFailure,
            ReasonArg::ServiceUnavailable => R::ServiceUnavailable,
            ReasonArg::SystemError => R::SystemError,
            ReasonArg::InvalidInput => R::InvalidInput,
        }
    }
}

#[derive(Debug, Args)]
pub struct FailArgs {
    /// The generation id.
    pub generation: String,
    /// Why it failed.
    #[arg(long, value_enum)]
    pub reason: ReasonArg,
    /// The error message to keep with the refund.
    #[arg(long, default_value = "")]
    pub message: String,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Most refunds to write in this run (1..=10000).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct WorkspaceArg {
    /// The workspace id.
    pub workspace: String,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The workspace id.
    pub workspace: String,
    /// Only these types (comma-separated): usage, refund, purchase, grant, adjustment,
    /// expiration, void.
    #[arg(long = "type", value_delimiter = ',', value_name = "TYPES", value_parser = parse_kind)]
    pub types: Vec<credit_ledger::TxnKind>,
    /// Only these statuses (comma-separated): pending, completed, failed.
    #[arg(long, value_delimiter = ',', value_name = "STATUSES", value_parser = parse_status)]
    pub status: Vec<credit_ledger::Status>,
    /// Only this feature ("Quick Video").
    #[arg(long)]
    pub feature: Option<String>,
    /// Only at or after this time.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
    pub since: Option<u64>,
    /// Only at or before this time.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
    pub until: Option<u64>,
    /// Most rows (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue where a previous page stopped (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
}

fn parse_wait_ms(s: &str) -> Result<u64, String> {
    // A bare number is minutes for --timeout; for a wait that would surprise (`--wait 5`).
    let t = s.trim();
    if t != "0" && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` needs a unit: 5s, 500ms or 2m (0 fails at once)"
        ));
    }
    let ms = crate::time::parse_duration_ms(s)?;
    if ms > crate::open::MAX_LOCK_WAIT_MS {
        return Err(format!(
            "`{s}` is longer than the longest wait, 1h; a script that must wait longer can retry"
        ));
    }
    Ok(ms)
}

fn parse_kind(s: &str) -> Result<credit_ledger::TxnKind, String> {
    s.parse().map_err(|e: credit_ledger::Error| e.to_string())
}

fn parse_status(s: &str) -> Result<credit_ledger::Status, String> {
    s.parse().map_err(|e: credit_ledger::Error| e.to_string())
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The transaction id (`42` or `#42`).
    #[arg(value_parser = parse_txn_id)]
    pub txn: u64,
}

fn parse_txn_id(s: &str) -> Result<u64, String> {
    s.trim()
        .trim_start_matches('#')
        .parse()
        .map_err(|_| format!("`{s}` is not a transaction id; give a number such as 42"))
}

#[derive(Debug, Args)]
pub struct WindowArgs {
    /// From this time (inclusive).
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
    pub since: Option<u64>,
    /// Up to this time (inclusive).
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
    pub until: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The workspace id.
    pub workspace: String,
    /// The output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
}

#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// Print the entries after this transaction id [default: 0, from the start].
    #[arg(long, value_name = "ID", conflicts_with = "consumer")]
    pub after: Option<u64>,
    /// Start after this consumer's stored position (see `ack`).
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// Print at most this many entries (1 to 1000); default: everything up to the end.
    #[arg(long, value_name = "N", conflicts_with = "follow")]
    pub limit: Option<u32>,
    /// Keep printing new entries as they commit, until interrupted (like `tail -f`). The file
    /// is opened at each poll and closed in between, so other commands can write to it;
    /// while another process keeps it open, follow waits.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: how often to look for new entries, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250, requires = "follow", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_ms: u64,
    /// With --follow: exit after printing this many entries.
    #[arg(long, value_name = "N", requires = "follow", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_entries: Option<u64>,
}

#[derive(Debug, Args)]
pub struct AckArgs {
    /// The consumer's name (an id: 1 to 128 printable bytes).
    pub consumer: String,
    /// The last transaction id it has processed.
    pub txn: u64,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Discard the journal entries that cannot be replayed, and write a note saying which
    /// into every workspace's log. Required: without it nothing is ever discarded.
    #[arg(long)]
    pub discard_journal: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SimulateArgs {
    /// Workspaces to fund.
    #[arg(long, default_value_t = 100)]
    pub workspaces: u32,
    /// Generations to run through their whole life.
    #[arg(long, default_value_t = 100_000)]
    pub generations: u64,
    /// Worker threads sharing one ledger, each call durable on its own (group commit).
    #[arg(long, default_value_t = 64)]
    pub threads: u32,
    /// Operations per `Ledger::apply` batch; 1 sends every operation on its own.
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Share of generations that fail (refunded with one of the five reasons).
    #[arg(long, default_value_t = 0.08)]
    pub fail_rate: f64,
    /// Share of generations that never report back (refunded as timeouts at their deadline).
    #[arg(long, default_value_t = 0.02)]
    pub timeout_rate: f64,
    /// Seed of the pseudo-random choices; the same seed gives the same ledger.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}
