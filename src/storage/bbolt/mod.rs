//! etcd's data file: a bbolt database. [`read`] turns one (as `etcdctl
//! snapshot save` stores it from etcd 3.4 or 3.5) into a MetaStore state
//! image, so `metastore --restore-image etcd.db` moves an etcd user over
//! with every key, value, revision, version, lease and the compaction
//! point; [`write`] does the reverse, so Maintenance.Snapshot hands out a
//! file that `etcdctl snapshot status` / `snapshot restore` and `etcdutl
//! snapshot restore` take as one of etcd's own.
//!
//! bbolt, as far as both need it (little-endian, as written on the machines
//! etcd runs on): the file is pages of `page_size` bytes; page 0 and 1 hold
//! the two meta copies (the valid one with the higher transaction id wins);
//! every page starts with a 16-byte header (id u64, flags u16, count u16,
//! overflow u32) and spans `overflow` more pages. Branch pages hold `count`
//! elements (pos u32, ksize u32, child page u64), leaf pages `count`
//! elements (flags u32, pos u32, ksize u32, vsize u32); an element's key
//! sits `pos` bytes after the element itself, its value right after the
//! key. A branch element's key is the first key of its child. A leaf
//! element flagged 1 is a nested bucket: its value is the bucket's root
//! page id and sequence, and with root 0 the bucket's one page follows
//! inline. A meta is magic, version (2), page size, flags, the root bucket
//! (root, sequence), the freelist page (all ones: none kept, as etcd 3.5
//! writes it; else a page listing the free page ids), the high-water page
//! id, the transaction id and the FNV-1a 64 of the fields before it.
//!
//! etcd's buckets: `key` (17-byte revision keys: main u64 BE, '_', sub u64
//! BE, and a trailing 't' for a deletion; values are `mvccpb.KeyValue`),
//! `meta` (`consistent_index`, `finishedCompactRev`, `scheduledCompactRev`,
//! and since 3.5 `term` and `confState`), `lease` (`leasepb.Lease` by ID),
//! `members` and `members_removed`, `cluster`, `alarm`, and the auth store
//! (`auth`, `authUsers`, `authRoles`).

pub mod read;
pub mod write;

pub use read::{convert, convert_file, is_bbolt, Converted};

use crate::storage::StorageError;

/// bbolt's magic number.
const MAGIC: u32 = 0xED0C_DAED;
/// The bbolt file format version.
const VERSION: u32 = 2;
/// Page flags.
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// Leaf element flag: the value is a nested bucket.
const BUCKET_LEAF: u32 = 0x01;
/// Page header and element sizes.
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
/// Offsets in a meta (after its page header), and its size.
const META_PAGE_SIZE: usize = 8;
const META_ROOT: usize = 16;
const META_FREELIST: usize = 32;
const META_PGID: usize = 40;
const META_TXID: usize = 48;
const META_CHECKSUM: usize = 56;
const META_SIZE: usize = 64;

/// etcd's bucket names.
const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const ALARM: &[u8] = b"alarm";
const CLUSTER: &[u8] = b"cluster";
const MEMBERS: &[u8] = b"members";
const MEMBERS_REMOVED: &[u8] = b"members_removed";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";

/// Keys in `meta`, `auth` and `cluster`.
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TERM: &[u8] = b"term";
const CONF_STATE: &[u8] = b"confState";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
const CLUSTER_VERSION: &[u8] = b"clusterVersion";

fn bad(why: impl Into<String>) -> StorageError {
    StorageError::Image(format!("etcd data file: {}", why.into()))
}

/// FNV-1a, 64 bits: a meta's checksum.
fn fnv1a64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}
