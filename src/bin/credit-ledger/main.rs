//! `credit-ledger`: the operator's tool for a credit-ledger file, and `simulate`, the main job.
//!
//! Every command prints text for people, or with `--json` exactly one JSON document on stdout.
//! Errors go to stderr on one line, and the exit code says what kind they are (see
//! [`fail`]).

mod args;
mod fail;
mod feed;
mod grants;
mod open;
mod output;
mod reads;
mod recover;
mod rows;
mod simulate;
mod time;
mod warnings;
mod writes;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use fail::{CliError, EXIT_USAGE};
use output::Out;

fn main() -> ExitCode {
    // Defence in depth: nothing should panic, but if something does, say so in one line
    // instead of a backtrace. A redb panic on a damaged page that the ledger catches is not a
    // bug: it comes back as a typed error, printed below, so the hook stays quiet about it.
    std::panic::set_hook(Box::new(|info| {
        if credit_ledger::inside_panic_guard() {
            return;
        }
        eprintln!(
            "credit-ledger: internal error: {}; this is a bug, please report it",
            fail::one_line(&info.to_string())
        );
    }));
    // `CREDIT_LEDGER_DB=` (set but empty, as a script's `export CREDIT_LEDGER_DB=$UNSET_VAR`
    // leaves it) means "no path given": clap would otherwise reject it as an empty `--db`,
    // an option the user never typed. Nothing else runs yet, so changing the environment is
    // safe here.
    warnings::install();
    if std::env::var_os(args::DB_ENV).is_some_and(|v| v.is_empty()) {
        std::env::remove_var(args::DB_ENV);
    }
    let wants_json = std::env::args_os()
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(EXIT_USAGE as u8);
            }
            let _ = e.print();
            if wants_json {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("usage error").to_string();
                let mut out = Out::new();
                let _ = out.json(&error_json(EXIT_USAGE, "usage", &first));
                let _ = out.flush();
            }
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    time::set_zone(cli.tz.clone());
    let json = cli.json;
    let mut out = Out::new();
    let result = run(cli, &mut out).and_then(|()| out.flush());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(CliError::Reported { code, message }) => {
            eprintln!("credit-ledger: {message}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(CliError::Exit {
            code,
            kind,
            message,
        }) => {
            eprintln!("credit-ledger: {message}");
            if json {
                let mut out = Out::new();
                let _ = out.json(&error_json(code, kind, &message));
                let _ = out.flush();
            }
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn error_json(code: i32, kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "exit_code": code, "kind": kind, "message": message } })
}

fn run(cli: Cli, out: &mut Out) -> Result<(), CliError> {
    let ctx = open::Context::new(&cli);
    match &cli.command {
        Command::Credit(a) => writes::credit(&ctx, a, out),
        Command::Adjust(a) => writes::adjust(&ctx, a, out),
        Command::Start(a) => writes::start(&ctx, a, out),
        Command::Complete(a) => writes::complete(&ctx, a, out),
        Command::Fail(a) => writes::fail(&ctx, a, out),
        Command::Sweep(a) => writes::sweep(&ctx, a, out),
        Command::Balance(a) => reads::balance(&ctx, a, out),
        Command::History(a) => reads::history(&ctx, a, out),
        Command::Grants(a) => grants::grants(&ctx, a, out),
        Command::VoidGrant(a) => grants::void_grant(&ctx, a, out),
        Command::Show(a) => reads::show(&ctx, a, out),
        Command::Generation(a) => reads::generation(&ctx, a, out),
        Command::Verify => reads::verify(&ctx, out),
        Command::Stats(a) => reads::stats(&ctx, a, out),
        Command::Export(a) => reads::export(&ctx, a, out),
        Command::Backup(a) => writes::backup(&ctx, a, out),
        Command::Changes(a) => feed::changes(&ctx, a, out),
        Command::Ack(a) => feed::ack(&ctx, a, out),
        Command::Simulate(a) => simulate::run(&ctx, a, out),
        Command::Recover(a) => recover::run(&ctx, a, out),
    }
}
