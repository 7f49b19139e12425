//! The state machine's tables, opened together in one write transaction.

use redb::{Table, WriteTransaction};

use super::mvcc::{IndexKey, RevKey};
use crate::error::Result;
use crate::schema;

pub(crate) struct WriteTables<'t> {
    pub index: Table<'t, IndexKey, &'static [u8]>,
    pub revs: Table<'t, RevKey, &'static [u8]>,
    pub leases: Table<'t, u64, &'static [u8]>,
    pub lease_keys: Table<'t, (u64, &'static [u8]), ()>,
}

impl<'t> WriteTables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<WriteTables<'t>> {
        Ok(WriteTables {
            index: txn.open_table(schema::KV_INDEX)?,
            revs: txn.open_table(schema::KV_REVS)?,
            leases: txn.open_table(schema::LEASES)?,
            lease_keys: txn.open_table(schema::LEASE_KEYS)?,
        })
    }
}
