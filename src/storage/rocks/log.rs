//! [`RocksLog`]: the `rocksdb` engine's [`LogStore`], written by the WalWriter.

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use rocksdb::{WriteBatch, WriteOptions, DB};

use super::{cf, db_error, encode, index_key, Dbs, CF_META, CF_RAFT, META_HARD_STATE};
use crate::error::StorageError;
use crate::storage::engine::LogStore;

/// Raft entries and hard state in the `raft` and `meta` families.
pub struct RocksLog {
    /// The raft database.
    db: Arc<DB>,
    /// The kv database, synced before entries it was built from are dropped.
    kv: Arc<DB>,
    batch: WriteBatch,
    /// Index of the last entry written (to drop a replaced suffix).
    last: u64,
    sync: WriteOptions,
}

impl RocksLog {
    /// Wraps the opened databases; the log ends at `last`.
    pub fn new(dbs: &Dbs, last: u64) -> RocksLog {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        RocksLog {
            db: dbs.raft.clone(),
            kv: dbs.kv.clone(),
            batch: WriteBatch::default(),
            last,
            sync,
        }
    }
}

impl LogStore for RocksLog {
    fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) {
        let raft = cf(&self.db, CF_RAFT);
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            for e in entries {
                let bytes = e
                    .write_to_bytes()
                    .unwrap_or_else(|err| unreachable!("an entry always encodes: {err}"));
                self.batch.put_cf(raft, index_key(e.index), bytes);
            }
            if first.index <= self.last && last.index < self.last {
                // A new leader's entries replace our tail: drop what is beyond.
                self.batch.delete_range_cf(
                    raft,
                    index_key(last.index + 1),
                    index_key(self.last + 1),
                );
            }
            self.last = last.index;
        }
        if let Some(hs) = hard_state {
            self.batch
                .put_cf(cf(&self.db, CF_META), META_HARD_STATE, encode(hs));
        }
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let batch = std::mem::take(&mut self.batch);
        self.db
            .write_opt(batch, &self.sync)
            .map_err(|e| db_error("write the raft log", e))
    }

    fn purge(&mut self, upto: u64) -> Result<(), StorageError> {
        // The applied state up to `upto` was written unsynced: make it durable
        // before the entries that could rebuild it go.
        self.kv
            .flush_wal(true)
            .map_err(|e| db_error("sync the rocksdb WAL", e))?;
        let raft = cf(&self.db, CF_RAFT);
        self.db
            .delete_range_cf(raft, index_key(0), index_key(upto + 1))
            .map_err(|e| db_error("truncate the raft log", e))?;
        tracing::info!(upto, "raft log truncated");
        Ok(())
    }
}
