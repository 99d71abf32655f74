//! The `memory` engine's side of [`StateEngine`]: the MVCC state lives in a
//! [`MemStore`]; it is durable through the WAL (every applied entry can be
//! replayed) and snapshot files (so the WAL can be purged).

use std::io::BufReader;
use std::path::Path;

use super::engine::{AppliedPoint, Checkpoint, StateEngine};
use super::image::{read_into_store, write_memory_image, ImageHeader, ImageJob};
use super::mvcc::MemStore;
use super::snapshots;
use crate::error::StorageError;

fn encode(store: &MemStore, point: &AppliedPoint) -> Result<Vec<u8>, StorageError> {
    let h = point.header(store.current_revision(), store.compact_main_revision());
    write_memory_image(store, &h, Vec::new()).map_err(|e| StorageError::io("encode the image", e))
}

impl StateEngine for MemStore {
    fn commit(&mut self, _: &AppliedPoint) -> Result<(), StorageError> {
        // The WAL holds every applied entry already.
        Ok(())
    }

    fn image(&self, point: &AppliedPoint, _: &Path) -> Result<ImageJob, StorageError> {
        encode(self, point).map(ImageJob::Ready)
    }

    fn checkpoint(&self, point: &AppliedPoint, data_dir: &Path) -> Checkpoint {
        // Encoded here (it must be a consistent image), written elsewhere.
        let started = std::time::Instant::now();
        let bytes = match encode(self, point) {
            Ok(b) => b,
            Err(e) => return Checkpoint::Write(Box::new(move || Err(e))),
        };
        tracing::debug!(
            index = point.index,
            bytes = bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot encoded"
        );
        let dir = data_dir.to_owned();
        let index = point.index;
        Checkpoint::Write(Box::new(move || {
            let path = snapshots::save(&dir, index, &bytes)?;
            tracing::info!(index, bytes = bytes.len(), file = %path.display(), "snapshot saved");
            Ok(())
        }))
    }

    fn install(&mut self, path: &Path, data_dir: &Path) -> Result<ImageHeader, StorageError> {
        let file = std::fs::File::open(path)
            .map_err(|e| StorageError::io(format!("open {}", path.display()), e))?;
        let (h, mut store) = read_into_store(BufReader::new(file), true)?;
        // The rename into snap/ is the moment the new state counts.
        snapshots::adopt(data_dir, h.index, path)?;
        store.set_record_events(self.records_events());
        *self = store;
        Ok(h)
    }

    fn defragment_job(&self) -> Option<Box<dyn FnOnce() + Send>> {
        None
    }

    fn set_watched(&mut self, on: bool) {
        self.set_record_events(on);
    }
}
