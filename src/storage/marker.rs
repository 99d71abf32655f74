//! The data dir's marker: which engine and data format wrote the dir, and
//! whose member it is. Written last when a data dir is bootstrapped, so a
//! dir without it is either new and empty or not ours.

use std::fs;
use std::path::Path;

use super::{Engine, StorageError};

/// Name of the file that says which engine wrote a data dir, and whose.
const MARKER: &str = "metastore.meta";
/// Data dir format: 2 added member and cluster IDs and the membership.
const FORMAT: &str = "2";

/// Who a member is, as its data dir records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// This member.
    pub member_id: u64,
    /// Its cluster.
    pub cluster_id: u64,
}

fn marker_text(engine: Engine, id: Identity) -> String {
    format!(
        "engine={}\nformat={FORMAT}\nmember={:x}\ncluster={:x}\n",
        engine.as_str(),
        id.member_id,
        id.cluster_id
    )
}

/// Reads the data dir's marker: None for a new, empty dir; refuses a dir
/// another engine, format or program wrote.
pub fn read(dir: &Path, engine: Engine) -> Result<Option<Identity>, StorageError> {
    let path = dir.join(MARKER);
    let refuse = |why: String| StorageError::DataDir {
        path: dir.to_owned(),
        why,
    };
    match fs::read_to_string(&path) {
        Ok(found) => {
            let field = |k: &str| {
                found
                    .lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let written_by = field("engine").unwrap_or_default();
            let format = field("format").unwrap_or_default();
            if written_by != engine.as_str() {
                return Err(refuse(format!(
                    "was written by another engine (engine={written_by}); this member runs engine={}",
                    engine.as_str()
                )));
            }
            if format != FORMAT {
                return Err(refuse(format!(
                    "has data format {format:?}, this MetaStore reads format {FORMAT}; \
                     move the data with `etcdctl snapshot save` and --restore-image"
                )));
            }
            let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(&v, 16).ok());
            match (hex("member"), hex("cluster")) {
                (Some(member_id), Some(cluster_id)) => Ok(Some(Identity {
                    member_id,
                    cluster_id,
                })),
                _ => Err(refuse(format!("{MARKER} lacks the member or cluster ID"))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Auto TLS's certificates (`fixtures/`, as etcd keeps them) are
            // made before a new member bootstraps.
            let non_empty = fs::read_dir(dir)
                .map_err(|e| StorageError::io(format!("read {}", dir.display()), e))?
                .any(|e| e.map_or(true, |e| e.file_name() != "fixtures"));
            if non_empty {
                return Err(refuse(format!(
                    "is not empty and has no {MARKER}; refusing to use it"
                )));
            }
            Ok(None)
        }
        Err(e) => Err(StorageError::io(format!("read {}", path.display()), e)),
    }
}

/// Stamps a bootstrapped data dir (the last step of bootstrapping).
pub fn write(dir: &Path, engine: Engine, id: Identity) -> Result<(), StorageError> {
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.tmp"));
    fs::write(&tmp, marker_text(engine, id))
        .and_then(|_| fs::File::open(&tmp)?.sync_all())
        .and_then(|_| fs::rename(&tmp, &path))
        .and_then(|_| fs::File::open(dir)?.sync_all())
        .map_err(|e| StorageError::io(format!("write {}", path.display()), e))
}
