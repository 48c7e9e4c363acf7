//! The audit of the lots a Refund's record carries (schema 6, see
//! [`TxnRecord::refund_lots`]): every Refund from where they start carries them, they are
//! exactly what its own storage (its `allocations` row, or its generation record) says it gave
//! back, and no other kind of transaction carries any.

use redb::{ReadOnlyTable, ReadableTable};

use super::{AuditReport, Invariant};
use crate::error::Error;
use crate::model::records::TxnRecord;
use crate::model::TxnKind;
use crate::storage::tables;

/// What the check needs: where the lots start, and the table that holds a Refund's lots when
/// its generation record does not.
pub(super) struct RefundLots<'a> {
    /// The first transaction id whose Refund must carry its lots; `None` in a file from
    /// before schema 6 (a record that carries some anyway is still checked).
    pub from: Option<u64>,
    pub allocs: Option<&'a ReadOnlyTable<u64, &'static [u8]>>,
}

impl RefundLots<'_> {
    /// Check the lots `rec` carries.
    pub fn check(
        &self,
        report: &mut AuditReport,
        rec: &TxnRecord,
        gens: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<(), Error> {
        let (id, ws) = (rec.id, rec.workspace.as_str());
        let mut flag = |detail: String| {
            report.add(
                Invariant::RefundLots,
                detail,
                vec![id],
                rec.generation_id.as_deref(),
                Some(ws),
            )
        };
        let lots = match (&rec.refund_lots, rec.kind) {
            (Some(_), kind) if kind != TxnKind::Refund => {
                flag(format!("{kind:?} #{id} carries refund lots"));
                return Ok(());
            }
            (Some(lots), _) => lots,
            (None, TxnKind::Refund) if self.from.is_some_and(|from| id >= from) => {
                flag(format!(
                    "Refund #{id} does not say which grant lots it gave back, though every \
                     Refund from #{} on must",
                    self.from.unwrap_or_default()
                ));
                return Ok(());
            }
            (None, _) => return Ok(()),
        };
        // A damaged allocations row or generation is reported by their own checks.
        if let Ok(stored) = tables::refund_allocations(self.allocs, gens, rec) {
            if *lots != stored {
                flag(format!(
                    "Refund #{id} says it gave back other grant lots than its allocations \
                     say: {lots:?} against {stored:?}"
                ));
            }
        }
        Ok(())
    }
}
