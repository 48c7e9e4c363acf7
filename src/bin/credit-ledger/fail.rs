//! Failures of the tool, each with its exit code and a one-line message that says what to do.

use credit_ledger::{Error, ErrorCategory};

/// Exit code: a refused operation (insufficient credits, conflict, unknown id, already
/// finished), or a storage problem such as the file being open elsewhere.
pub const EXIT_REFUSED: i32 = 1;
/// Exit code: a usage error (bad arguments or input values).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: verification failed, or the file is damaged or not a ledger.
pub const EXIT_CORRUPT: i32 = 3;

#[derive(Debug)]
pub enum CliError {
    /// Print `message` on stderr and exit with `code`.
    Exit {
        code: i32,
        kind: &'static str,
        message: String,
    },
    /// The result was already written (a failed `verify` or `simulate` report): print
    /// `message` on stderr and exit with `code`, with no further JSON.
    Reported { code: i32, message: String },
    /// stdout was closed by the reader: stop quietly.
    BrokenPipe,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Exit {
            code: EXIT_USAGE,
            kind: "usage",
            message: message.into(),
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        CliError::Exit {
            code: EXIT_REFUSED,
            kind: "refused",
            message: message.into(),
        }
    }

    /// A write at a `--now` far ahead of the system clock, refused without
    /// `--allow-future-now` (a usage error: the operator typed the time).
    pub fn future_now(message: impl Into<String>) -> Self {
        CliError::Exit {
            code: EXIT_USAGE,
            kind: "future_now",
            message: message.into(),
        }
    }

    /// A fault of the tool itself; never expected.
    pub fn internal(message: impl Into<String>) -> Self {
        CliError::Exit {
            code: EXIT_REFUSED,
            kind: "internal",
            message: message.into(),
        }
    }

    /// The same failure, with `more` appended to its message.
    pub fn context(mut self, more: &str) -> Self {
        match &mut self {
            CliError::Exit { message, .. } | CliError::Reported { message, .. } => {
                message.push_str(&one_line(more));
            }
            CliError::BrokenPipe => {}
        }
        self
    }

    pub fn from_io(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::refused(format!("cannot write the output: {e}"))
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let (code, kind) = match e.category() {
            ErrorCategory::Invalid => (EXIT_USAGE, "invalid"),
            ErrorCategory::Refused => (EXIT_REFUSED, "refused"),
            ErrorCategory::Corruption => (EXIT_CORRUPT, "corrupt"),
            ErrorCategory::Storage => (EXIT_REFUSED, "storage"),
        };
        let mut message = e.to_string();
        match &e {
            Error::UnknownTransaction { .. } => {
                message.push_str("; list transaction ids with `credit-ledger history WORKSPACE`")
            }
            Error::ClockRegressed { .. } => {
                message.push_str(" (or pass a later --now)");
            }
            _ => {}
        }
        CliError::Exit {
            code,
            kind,
            message: one_line(&message),
        }
    }
}

/// Keep a message on one line whatever it quotes.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
