//! The state machine's tables in one write transaction, each opened the first time it is used.
//!
//! Why lazily: a redb `open_table` looks the table up in the table tree and checks its
//! definition. Opening all four for every apply batch took a quarter of a lone put's apply
//! (`docs/performance.md`, session 18), and a put of a key without a lease, whose newest entry
//! is in memory (`key_index.rs`), needs `kv_revs` only.
//!
//! A table stays open from its first use until the `WriteTables` is dropped, so nothing else
//! may open one of these four in the same transaction meanwhile (redb refuses a table opened
//! twice).

use std::cell::OnceCell;

use redb::{Key, Table, TableDefinition, TableHandle, Value, WriteTransaction};

use super::mvcc::RevKey;
use crate::error::{Result, StorageError};
use crate::schema;

type RevsTable<'t> = Table<'t, RevKey, &'static [u8]>;
type LeasesTable<'t> = Table<'t, u64, &'static [u8]>;
type LeaseKeysTable<'t> = Table<'t, (u64, &'static [u8]), ()>;

/// Creates every state machine table `txn` lacks (opening one that exists changes nothing):
/// at each open of the state database and after an install deletes them, so that readers never
/// meet a missing table, whatever the apply path has opened.
pub(crate) fn create_all(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(schema::SM_META)?;
    txn.open_table(schema::KV_REVS)?;
    txn.open_table(schema::LEASES)?;
    txn.open_table(schema::LEASE_KEYS)?;
    txn.open_table(schema::AUTH_USERS)?;
    txn.open_table(schema::AUTH_ROLES)?;
    Ok(())
}

pub(crate) struct WriteTables<'t> {
    txn: &'t WriteTransaction,
    revs: OnceCell<RevsTable<'t>>,
    leases: OnceCell<LeasesTable<'t>>,
    lease_keys: OnceCell<LeaseKeysTable<'t>>,
}

impl<'t> WriteTables<'t> {
    /// Opens nothing yet: each table opens on first use.
    pub fn open(txn: &'t WriteTransaction) -> WriteTables<'t> {
        WriteTables {
            txn,
            revs: OnceCell::new(),
            leases: OnceCell::new(),
            lease_keys: OnceCell::new(),
        }
    }

    /// `kv_revs`, to read.
    pub fn revs(&self) -> Result<&RevsTable<'t>> {
        opened(&self.revs, self.txn, schema::KV_REVS)
    }

    pub fn revs_mut(&mut self) -> Result<&mut RevsTable<'t>> {
        opened_mut(&mut self.revs, self.txn, schema::KV_REVS)
    }

    /// `leases`, to read.
    pub fn leases(&self) -> Result<&LeasesTable<'t>> {
        opened(&self.leases, self.txn, schema::LEASES)
    }

    pub fn leases_mut(&mut self) -> Result<&mut LeasesTable<'t>> {
        opened_mut(&mut self.leases, self.txn, schema::LEASES)
    }

    /// `lease_keys`, to read.
    pub fn lease_keys(&self) -> Result<&LeaseKeysTable<'t>> {
        opened(&self.lease_keys, self.txn, schema::LEASE_KEYS)
    }

    pub fn lease_keys_mut(&mut self) -> Result<&mut LeaseKeysTable<'t>> {
        opened_mut(&mut self.lease_keys, self.txn, schema::LEASE_KEYS)
    }
}

fn opened<'c, 't, K: Key + 'static, V: Value + 'static>(
    cell: &'c OnceCell<Table<'t, K, V>>,
    txn: &'t WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<&'c Table<'t, K, V>> {
    if let Some(table) = cell.get() {
        return Ok(table);
    }
    let table = txn.open_table(definition)?;
    Ok(cell.get_or_init(|| table))
}

fn opened_mut<'c, 't, K: Key + 'static, V: Value + 'static>(
    cell: &'c mut OnceCell<Table<'t, K, V>>,
    txn: &'t WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<&'c mut Table<'t, K, V>> {
    if cell.get().is_none() {
        let table = txn.open_table(definition)?;
        if cell.set(table).is_err() {
            return Err(StorageError::Invariant(
                "a table cell filled while it was being opened".into(),
            ));
        }
    }
    match cell.get_mut() {
        Some(table) => Ok(table),
        None => Err(StorageError::Invariant(format!(
            "table {} not open after opening it",
            definition.name()
        ))),
    }
}
