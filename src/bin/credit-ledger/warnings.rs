//! The library's warnings about closing the file, on stderr: `credit-ledger: warning: ...`.
//!
//! The ledger reports through `tracing` what it handled but an operator should know. Most of
//! those come with an error the command prints anyway. The ones logged while the ledger closes
//! do not: a file whose close made the storage engine panic ("run `verify` on it"), a
//! checkpoint that failed on close, a journal that could not be removed. They happen after the
//! command's result, so no result can carry them. A library installs no subscriber; the tool
//! installs this small one (warnings and errors of the close path, no spans), so those lines
//! reach the person who ran the command instead of being dropped.

use std::fmt::Write;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Print the close path's warnings and errors on stderr for the rest of the process.
pub fn install() {
    // Only fails if a subscriber is already set, and then that one reports.
    let _ = tracing::subscriber::set_global_default(Warnings);
}

/// The module that closes a ledger (its `Drop` and the checkpoint on close).
const CLOSE_PATH: &str = "credit_ledger::ledger::checkpoint";

struct Warnings;

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // In tracing, a more severe level compares as smaller: WARN and ERROR pass.
        *metadata.level() <= Level::WARN && metadata.target().starts_with(CLOSE_PATH)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not shown; every span gets the same id.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let mut text = line.message;
        if !line.fields.is_empty() {
            let _ = write!(text, " ({})", line.fields.join(", "));
        }
        eprintln!("credit-ledger: warning: {}", crate::fail::one_line(&text));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event as text: its message, then its other fields as `name: value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: Vec<String>,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push(format!("{}: {value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push(format!("{}: {value}", field.name()));
        }
    }
}
