//! Reading leases and the keys attached to them, for the lessor and the Lease API.

use redb::ReadableTable;

use super::MvccReader;
use super::records::LeaseRecord;
use crate::error::{Result, decode};
use crate::schema;

impl MvccReader {
    /// The lease `id`, if granted and not yet revoked.
    pub fn lease(&self, id: u64) -> Result<Option<LeaseRecord>> {
        let db = self.store.state_db();
        let txn = self.store.begin_state_read(&db)?;
        let table = txn.open_table(schema::LEASES)?;
        match table.get(id)? {
            Some(bytes) => Ok(Some(decode("leases", bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<(u64, LeaseRecord)>> {
        let db = self.store.state_db();
        let txn = self.store.begin_state_read(&db)?;
        let table = txn.open_table(schema::LEASES)?;
        let mut leases = Vec::new();
        for item in table.iter()? {
            let (id, bytes) = item?;
            leases.push((id.value(), decode("leases", bytes.value())?));
        }
        Ok(leases)
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: u64) -> Result<Vec<Vec<u8>>> {
        let db = self.store.state_db();
        let txn = self.store.begin_state_read(&db)?;
        let table = txn.open_table(schema::LEASE_KEYS)?;
        let mut keys = Vec::new();
        let upper = id.checked_add(1);
        let iter = match upper {
            Some(upper) => table.range::<(u64, &[u8])>((id, &[][..])..(upper, &[][..]))?,
            None => table.range::<(u64, &[u8])>((id, &[][..])..)?,
        };
        for item in iter {
            let (key, _) = item?;
            keys.push(key.value().1.to_vec());
        }
        Ok(keys)
    }
}
