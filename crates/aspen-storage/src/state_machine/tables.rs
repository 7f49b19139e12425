//! The state machine's tables, opened together in one write transaction.

use redb::{Table, WriteTransaction};

use super::range::HistoryKey;
use crate::error::Result;
use crate::schema;

pub(crate) struct WriteTables<'t> {
    pub latest: Table<'t, &'static [u8], &'static [u8]>,
    pub history: Table<'t, HistoryKey, &'static [u8]>,
    pub leases: Table<'t, u64, &'static [u8]>,
    pub lease_keys: Table<'t, (u64, &'static [u8]), ()>,
}

impl<'t> WriteTables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<WriteTables<'t>> {
        Ok(WriteTables {
            latest: txn.open_table(schema::KV_LATEST)?,
            history: txn.open_table(schema::KV_HISTORY)?,
            leases: txn.open_table(schema::LEASES)?,
            lease_keys: txn.open_table(schema::LEASE_KEYS)?,
        })
    }
}
