//! The storage error: what opening, writing or reading a data dir can fail with.

use std::path::PathBuf;

/// A problem with the data directory found at start-up or while running.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The WAL refused to open or write.
    #[error(transparent)]
    Wal(#[from] crate::storage::memory::wal::WalError),
    /// A snapshot file is unreadable.
    #[error("snapshot {path}: {why}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Plain I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data dir was written by something else.
    #[error("data dir {path}: {why}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A record in the WAL could not be decoded.
    #[error("wal record: {0}")]
    Decode(String),
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(String),
    /// A state-machine image is unreadable.
    #[error("image: {0}")]
    Image(String),
}

impl StorageError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StorageError {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}
