//! Tables a write transaction opens only when an operation needs them.
//!
//! redb charges for every table a write transaction opens: the lookup that opens it, the
//! bookkeeping that closes it, and a look at its root when the transaction commits. Counted
//! with `examples/op_cost.rs` under valgrind, that is about 7.7k instructions a table, and a
//! single durable start over a warm workspace needs half of the fifteen tables a write may
//! touch. A table here opens on its first use, from a shared reference, so reads stay as they
//! were; a write goes through [`LazyTable::write`], whose failure the caller must treat as a
//! failed write (see `Ctx::write`).

use std::cell::OnceCell;

use redb::{Key, Table, TableDefinition, Value, WriteTransaction};

use crate::error::Error;

pub(crate) struct LazyTable<'txn, K: Key + 'static, V: Value + 'static> {
    txn: &'txn WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> LazyTable<'txn, K, V> {
    /// A table of `txn` not opened yet. The file must have it (see `Ctx::open`).
    pub fn new(txn: &'txn WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        LazyTable {
            txn,
            def,
            table: OnceCell::new(),
        }
    }

    /// The table, opened if this is its first use in the transaction.
    pub fn table(&self) -> Result<&Table<'txn, K, V>, Error> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let opened = self.txn.open_table(self.def)?;
        Ok(self.table.get_or_init(|| opened))
    }

    /// Run write `f` on the table, opened first if need be. A failure of either is the
    /// write's: see `Ctx::write`.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Table<'txn, K, V>) -> Result<T, redb::StorageError>,
    ) -> Result<T, Error> {
        Ok(f(self.table_mut()?)?)
    }

    /// The table to write to, opened if this is its first use in the transaction.
    fn table_mut(&mut self) -> Result<&mut Table<'txn, K, V>, Error> {
        self.table()?;
        Ok(self
            .table
            .get_mut()
            .expect("invariant: table() has just opened the table"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableTable, ReadableTableMetadata};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// A table is opened once, on first use, and never when unused: a second open of the
    /// same table in one transaction is an error in redb, so a lazy table that opened twice
    /// would fail here.
    #[test]
    fn opens_once_on_first_use_and_not_at_all_unused() {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut lazy = LazyTable::new(&txn, T);
            assert_eq!(lazy.table().unwrap().len().unwrap(), 0);
            lazy.table_mut().unwrap().insert(1, 2).unwrap();
            assert_eq!(lazy.table().unwrap().get(1).unwrap().unwrap().value(), 2);
            assert!(txn.open_table(T).is_err(), "it is open, once");
        }
        {
            let _unused = LazyTable::new(&txn, T);
            // Never used: never opened, so the transaction may open it itself.
            txn.open_table(T).unwrap();
        }
        txn.commit().unwrap();
    }
}
