//! Writing the `refund_pages` index (schema 5): each Refund's entry, in the write transaction
//! that appends the Refund, so no crash, replay or batch can leave one without the other. Keyed
//! by the Refund's id, so a batch's entries append to the end of the table (a sweep of 1,000
//! timeouts over 1,000 workspaces dirties a few leaves, not one per workspace). See
//! [`RefundPage`](crate::model::records::RefundPage) for why it exists.

use serde::Serialize;

use super::Ctx;
use crate::error::Error;
use crate::model::records::{AllocationEntry, TxnRecord};
use crate::storage::{codec, tables};

/// A [`RefundPage`](crate::model::records::RefundPage) by reference: the same encoding,
/// without copying the record to write it.
#[derive(Serialize)]
struct RefundPageRef<'a> {
    record: &'a TxnRecord,
    allocations: &'a [AllocationEntry],
}

impl<'txn> Ctx<'txn> {
    /// Make the covering index ready for a Refund: call before appending it. In a file from
    /// before schema 5 this records schema 5 first (through the notice index, whose creation
    /// records the current schema), and that starts the index at the next transaction id,
    /// the Refund's own, so that every Refund the index should cover has its entry.
    pub fn open_refund_pages(&mut self) -> Result<(), Error> {
        if self.notices().is_none() {
            self.notices_mut()?;
        }
        if self.refund_pages.is_none() {
            let opened = self.txn.open_table(tables::REFUND_PAGES);
            self.dirty = true;
            match opened {
                Ok(t) => self.refund_pages = Some(t),
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// File Refund `rec` (as appended) with the grant lots it gave back.
    pub fn put_refund_page(
        &mut self,
        rec: &TxnRecord,
        allocations: &[AllocationEntry],
    ) -> Result<(), Error> {
        self.open_refund_pages()?;
        let bytes = codec::encode(&RefundPageRef {
            record: rec,
            allocations,
        });
        let r = self
            .refund_pages
            .as_mut()
            .expect("invariant: just opened")
            .insert(rec.id, bytes.as_slice())
            .map(drop);
        self.write(r)
    }
}
