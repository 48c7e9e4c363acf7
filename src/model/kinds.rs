//! The small closed sets the ledger speaks in: transaction kinds, statuses, refund reasons.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, InvalidInput};

/// What a transaction did to a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TxnKind {
    /// Credits bought by the workspace (+).
    Purchase,
    /// Credits given away: a trial, a promotion, a goodwill gesture (+).
    Grant,
    /// The cost of a generation, taken when it starts (-).
    Usage,
    /// The full cost of a failed generation, given back (+).
    Refund,
    /// An operator's signed correction (+ or -).
    Adjustment,
    /// A notification, not a movement: the balance fell below the workspace's alert
    /// threshold (see [`Ledger::set_alert`](crate::Ledger::set_alert)). Its amount is 0.
    BalanceLow,
    /// What was left of a grant when it expired, taken off the balance by the sweep (-).
    Expiration,
    /// What was left of a grant an operator voided (-).
    Void,
    /// A notification, not a movement: a grant expires soon with credits left (see
    /// [`Options::grant_expiring_notice_ms`](crate::Options::grant_expiring_notice_ms)). Its
    /// amount is 0; its allocation names the grant, its expiry and the credits that lapse
    /// then unless spent. Added last, so the records written before it keep their encoding.
    GrantExpiring,
}

impl TxnKind {
    /// Every kind, in display order.
    pub const ALL: [TxnKind; 9] = [
        TxnKind::Purchase,
        TxnKind::Grant,
        TxnKind::Usage,
        TxnKind::Refund,
        TxnKind::Adjustment,
        TxnKind::BalanceLow,
        TxnKind::Expiration,
        TxnKind::Void,
        TxnKind::GrantExpiring,
    ];

    /// True for notification records, which move no credits.
    pub fn is_notification(self) -> bool {
        matches!(self, TxnKind::BalanceLow | TxnKind::GrantExpiring)
    }

    /// The lowercase name used by the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TxnKind::Purchase => "purchase",
            TxnKind::Grant => "grant",
            TxnKind::Usage => "usage",
            TxnKind::Refund => "refund",
            TxnKind::Adjustment => "adjustment",
            TxnKind::BalanceLow => "balance-low",
            TxnKind::Expiration => "expiration",
            TxnKind::Void => "void",
            TxnKind::GrantExpiring => "grant-expiring",
        }
    }
}

impl fmt::Display for TxnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TxnKind::Purchase => "Purchase",
            TxnKind::Grant => "Grant",
            TxnKind::Usage => "Usage",
            TxnKind::Refund => "Refund",
            TxnKind::Adjustment => "Adjustment",
            TxnKind::BalanceLow => "Balance Low",
            TxnKind::Expiration => "Expiration",
            TxnKind::Void => "Void",
            TxnKind::GrantExpiring => "Grant Expiring",
        })
    }
}

impl FromStr for TxnKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TxnKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidInput(InvalidInput::UnknownName {
                    field: "transaction type",
                    value: s.to_string(),
                    expected:
                        "purchase, grant, usage, refund, adjustment, balance-low, expiration, void, grant-expiring",
                })
            })
    }
}

/// The status a user sees next to a transaction in history.
///
/// A Usage is `Pending` while its generation runs, `Completed` once it succeeded and `Failed`
/// once it was refunded. Every other transaction is `Completed` the moment it exists: a refund is
/// written in the same atomic commit as the failure that caused it, so it is never pending and
/// can never fail on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// The generation this Usage pays for is still running.
    Pending,
    /// Done: the transaction stands.
    Completed,
    /// The generation this Usage paid for failed, and its cost was refunded.
    Failed,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 3] = [Status::Pending, Status::Completed, Status::Failed];

    /// The lowercase name used by the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pending => "Pending",
            Status::Completed => "Completed",
            Status::Failed => "Failed",
        })
    }
}

impl FromStr for Status {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Status::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidInput(InvalidInput::UnknownName {
                    field: "status",
                    value: s.to_string(),
                    expected: "pending, completed, failed",
                })
            })
    }
}

/// Why a generation was refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RefundReason {
    /// The AI model failed to produce the content.
    ModelFailure,
    /// The external AI service returned an error.
    ApiFailure,
    /// The external AI service could not be reached.
    ServiceUnavailable,
    /// A platform or infrastructure error.
    SystemError,
    /// The input parameters made the generation fail.
    InvalidInput,
    /// The generation ran past its deadline. Only the ledger assigns this reason.
    Timeout,
}

/// The family a refund message belongs to, as the product guide groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageCategory {
    /// Service or API failures.
    Technical,
    /// Platform infrastructure issues.
    System,
    /// Input issues that prevented generation.
    Validation,
    /// The generation took too long.
    Timeout,
}

impl RefundReason {
    /// Every reason.
    pub const ALL: [RefundReason; 6] = [
        RefundReason::ModelFailure,
        RefundReason::ApiFailure,
        RefundReason::ServiceUnavailable,
        RefundReason::SystemError,
        RefundReason::InvalidInput,
        RefundReason::Timeout,
    ];

    /// The kebab-case name used by the CLI and JSON (`model-failure`).
    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::ModelFailure => "model-failure",
            RefundReason::ApiFailure => "api-failure",
            RefundReason::ServiceUnavailable => "service-unavailable",
            RefundReason::SystemError => "system-error",
            RefundReason::InvalidInput => "invalid-input",
            RefundReason::Timeout => "timeout",
        }
    }

    /// The wording the product guide uses ("Generation Failure").
    pub fn label(self) -> &'static str {
        match self {
            RefundReason::ModelFailure => "Generation Failure",
            RefundReason::ApiFailure => "API Failure",
            RefundReason::ServiceUnavailable => "Service Unavailable",
            RefundReason::SystemError => "System Error",
            RefundReason::InvalidInput => "Invalid Input",
            RefundReason::Timeout => "Processing Timeout",
        }
    }

    /// The message category of this reason.
    pub fn category(self) -> MessageCategory {
        match self {
            RefundReason::ModelFailure
            | RefundReason::ApiFailure
            | RefundReason::ServiceUnavailable => MessageCategory::Technical,
            RefundReason::SystemError => MessageCategory::System,
            RefundReason::InvalidInput => MessageCategory::Validation,
            RefundReason::Timeout => MessageCategory::Timeout,
        }
    }
}

impl fmt::Display for RefundReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for RefundReason {
    type Err = Error;
    /// Accepts `model-failure`, `model_failure` and `ModelFailure`, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Error> {
        let wanted: String = s
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect();
        RefundReason::ALL
            .into_iter()
            .find(|r| r.as_str().replace('-', "").eq_ignore_ascii_case(&wanted))
            .ok_or_else(|| {
                Error::InvalidInput(InvalidInput::UnknownName {
                    field: "reason",
                    value: s.to_string(),
                    expected: "model-failure, api-failure, service-unavailable, system-error, invalid-input",
                })
            })
    }
}

/// Whether credits were bought or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CreditKind {
    /// Bought credits.
    Purchase,
    /// Given credits.
    Grant,
}

impl CreditKind {
    /// The transaction kind this credit writes.
    pub fn txn_kind(self) -> TxnKind {
        match self {
            CreditKind::Purchase => TxnKind::Purchase,
            CreditKind::Grant => TxnKind::Grant,
        }
    }
}

impl FromStr for CreditKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "purchase" => Ok(CreditKind::Purchase),
            "grant" => Ok(CreditKind::Grant),
            _ => Err(Error::InvalidInput(InvalidInput::UnknownName {
                field: "credit kind",
                value: s.to_string(),
                expected: "purchase, grant",
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in TxnKind::ALL {
            assert_eq!(k.as_str().parse::<TxnKind>().ok(), Some(k));
        }
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().ok(), Some(s));
        }
        for r in RefundReason::ALL {
            assert_eq!(r.as_str().parse::<RefundReason>().ok(), Some(r));
            assert_eq!(format!("{r:?}").parse::<RefundReason>().ok(), Some(r));
        }
    }

    #[test]
    fn unknown_names_are_typed_errors() {
        assert!(matches!(
            "melted".parse::<RefundReason>(),
            Err(Error::InvalidInput(InvalidInput::UnknownName {
                field: "reason",
                ..
            }))
        ));
        assert!("".parse::<TxnKind>().is_err());
        assert!("done".parse::<Status>().is_err());
        assert!("gift".parse::<CreditKind>().is_err());
    }
}
