//! The audit of the `refund_pages` index (schema 5): every Refund it must cover has an entry
//! holding exactly its log record and the grant lots its own storage says it gave back, and
//! the index holds nothing else (no entry for another kind of transaction, for no transaction,
//! or for a Refund before where the index starts).

use redb::{ReadOnlyTable, ReadableTable, ReadableTableMetadata};

use super::{AuditReport, Invariant};
use crate::error::Error;
use crate::model::records::{RefundPage, TxnRecord};
use crate::model::TxnKind;
use crate::storage::{codec, tables};

/// The covering index of a schema 5 file, with what its check needs.
pub(super) struct RefundPages<'a> {
    pub table: ReadOnlyTable<u64, &'static [u8]>,
    /// The first transaction id it covers.
    pub from: u64,
    pub allocs: Option<&'a ReadOnlyTable<u64, &'static [u8]>>,
}

impl RefundPages<'_> {
    /// Check Refund `rec`'s entry, if the index covers it; `covered` counts those that must
    /// have one.
    pub fn check_refund(
        &self,
        report: &mut AuditReport,
        covered: &mut u64,
        rec: &TxnRecord,
        gens: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<(), Error> {
        if rec.kind != TxnKind::Refund || rec.id < self.from {
            return Ok(());
        }
        *covered += 1;
        let (id, ws) = (rec.id, rec.workspace.as_str());
        let mut flag = |detail: String| {
            report.add(
                Invariant::RefundPageIndex,
                detail,
                vec![id],
                rec.generation_id.as_deref(),
                Some(ws),
            )
        };
        let Some(v) = self.table.get(id)? else {
            flag(format!("Refund #{id} has no refund_pages entry"));
            return Ok(());
        };
        let page: RefundPage = match codec::decode("refund_pages", &id, v.value()) {
            Ok(p) => p,
            Err(e) => {
                flag(format!("the refund_pages entry of Refund #{id}: {e}"));
                return Ok(());
            }
        };
        if page.record != *rec {
            flag(format!(
                "the refund_pages entry of Refund #{id} differs from its log record"
            ));
        }
        // A damaged allocations row or generation is reported by their own checks.
        if let Ok(stored) = tables::refund_allocations(self.allocs, gens, rec) {
            if page.allocations != stored {
                flag(format!(
                    "the refund_pages entry of Refund #{id} names {} grant lots given back \
                     where its allocations say {}: {:?} against {:?}",
                    page.allocations.len(),
                    stored.len(),
                    page.allocations,
                    stored
                ));
            }
        }
        Ok(())
    }

    /// Name the entries that file no Refund the index covers. Run only when the entry count
    /// differs from `expected`, the covered Refunds of the log.
    pub fn check_no_stale(
        &self,
        report: &mut AuditReport,
        txns: &impl ReadableTable<u64, &'static [u8]>,
        expected: u64,
    ) -> Result<(), Error> {
        for entry in self.table.iter()? {
            let (k, _) = entry?;
            let id = k.value();
            let rec = tables::get_txn(txns, id).ok().flatten();
            let stale = match &rec {
                _ if id < self.from => {
                    Some(format!("before #{} where the index starts", self.from))
                }
                None => Some("for no readable transaction".to_string()),
                Some(r) if r.kind != TxnKind::Refund => Some(format!("for a {:?}", r.kind)),
                Some(_) => None,
            };
            if let Some(why) = stale {
                report.add(
                    Invariant::RefundPageIndex,
                    format!("refund_pages entry #{id} is stale: {why}"),
                    vec![id],
                    None,
                    rec.as_ref().map(|r| r.workspace.as_str()),
                );
            }
        }
        let entries = self.table.len()?;
        if entries != expected {
            report.add(
                Invariant::RefundPageIndex,
                format!(
                    "{entries} refund_pages entries where the log has {expected} Refunds from #{} on",
                    self.from
                ),
                vec![],
                None,
                None,
            );
        }
        Ok(())
    }
}
