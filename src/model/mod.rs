//! The domain: kinds, reasons, limits, requests, receipts and stored records.

mod kinds;
pub mod limits;
mod ops;
pub(crate) mod records;
pub(crate) mod validate;

pub use kinds::{CreditKind, MessageCategory, RefundReason, Status, TxnKind};
pub use ops::{
    AckReceipt, Adjust, AlertReceipt, Allocation, Charge, Completion, Credit, GrantClosure,
    GrantExpiringNotice, Op, Outcome, Receipt, RefundReceipt, StartGeneration, SweepReport,
    VoidGrant,
};
