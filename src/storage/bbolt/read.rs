//! Reads a bbolt file (see the format in the parent module) and turns
//! etcd's buckets into a MetaStore state image.

use std::io::Write;
use std::path::Path;

use prost::Message as _;

use super::{
    bad, fnv1a64, EtcdLease, AUTH, AUTH_ENABLED, AUTH_REVISION, AUTH_ROLES, AUTH_USERS, BRANCH,
    BUCKET_LEAF, CONSISTENT_INDEX, ELEMENT, FINISHED_COMPACT, KEY, LEAF, LEASE, MAGIC, META,
    META_CHECKSUM, META_PAGE_SIZE, META_ROOT, META_SIZE, META_TXID, PAGE_HEADER, TERM,
};
use crate::proto::mvccpb;
use crate::storage::image::{revision_key, ImageHeader, ImageWriter};
use crate::storage::leases::{LeaseEntry, LeaseTable};
use crate::storage::Revision;
use crate::storage::StorageError;

/// Whether `head` (the file's first bytes) is a bbolt database.
pub fn is_bbolt(head: &[u8]) -> bool {
    head.len() >= PAGE_HEADER + 4 && u32_at(head, PAGE_HEADER) == Some(MAGIC)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// A bucket's (key, value) pairs, in key order.
pub(super) type Entries<'a> = Vec<(&'a [u8], &'a [u8])>;

/// A bbolt file in memory.
pub(super) struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    root: u64,
}

/// A page: its flags, element count and bytes (header included).
struct Page<'a> {
    flags: u16,
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Page<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Page<'a>, StorageError> {
        let flags = u16_at(bytes, 8).ok_or_else(|| bad("truncated page"))?;
        let count = u16_at(bytes, 10).ok_or_else(|| bad("truncated page"))? as usize;
        Ok(Page {
            flags,
            count,
            bytes,
        })
    }

    fn element(&self, i: usize) -> Result<usize, StorageError> {
        let at = PAGE_HEADER + i * ELEMENT;
        if at + ELEMENT > self.bytes.len() {
            return Err(bad("element past its page"));
        }
        Ok(at)
    }

    fn slice(&self, at: usize, len: usize) -> Result<&'a [u8], StorageError> {
        self.bytes
            .get(at..at.checked_add(len).ok_or_else(|| bad("bad length"))?)
            .ok_or_else(|| bad("key or value past its page"))
    }
}

impl<'a> Db<'a> {
    pub(super) fn open(data: &'a [u8]) -> Result<Db<'a>, StorageError> {
        if !is_bbolt(data) {
            return Err(bad("not a bbolt database"));
        }
        let page_size =
            u32_at(data, PAGE_HEADER + META_PAGE_SIZE).ok_or_else(|| bad("no meta"))? as usize;
        if !(512..=(1 << 20)).contains(&page_size) {
            return Err(bad(format!("page size {page_size}")));
        }
        // Meta: magic, version, page size, flags, root bucket (root, seq),
        // freelist, high water mark, txid, checksum (FNV-1a 64 of the rest).
        let mut best: Option<(u64, u64)> = None;
        for p in 0..2 {
            let m = p * page_size + PAGE_HEADER;
            let Some(meta) = data.get(m..m + META_SIZE) else {
                continue;
            };
            if u32_at(meta, 0) != Some(MAGIC) {
                continue;
            }
            let sum = u64_at(meta, META_CHECKSUM).unwrap_or(0);
            if fnv1a64(&meta[..META_CHECKSUM]) != sum {
                continue;
            }
            let root = u64_at(meta, META_ROOT).unwrap_or(0);
            let txid = u64_at(meta, META_TXID).unwrap_or(0);
            if best.is_none_or(|(_, t)| txid > t) {
                best = Some((root, txid));
            }
        }
        let (root, _) = best.ok_or_else(|| bad("no valid meta page"))?;
        Ok(Db {
            data,
            page_size,
            root,
        })
    }

    fn page(&self, id: u64) -> Result<Page<'a>, StorageError> {
        let start = (id as usize)
            .checked_mul(self.page_size)
            .ok_or_else(|| bad("page id"))?;
        let past = || bad(format!("page {id} past the end"));
        let head = self
            .data
            .get(start..start.checked_add(PAGE_HEADER).ok_or_else(past)?)
            .ok_or_else(past)?;
        let overflow = u32_at(head, 12).unwrap_or(0) as usize;
        let end = (overflow + 1)
            .checked_mul(self.page_size)
            .and_then(|n| n.checked_add(start))
            .ok_or_else(past)?;
        let bytes = self
            .data
            .get(start..end.min(self.data.len()))
            .ok_or_else(|| bad(format!("page {id} past the end")))?;
        Page::parse(bytes)
    }

    /// Every (flags, key, value) of the tree at `page`, in key order.
    /// `seen` holds the pages walked so far: a page reached twice (a damaged
    /// or hostile file whose branches point back up or at each other) is an
    /// error, so the walk visits each page once and ends.
    fn walk(
        &self,
        page: Page<'a>,
        out: &mut Vec<(u32, &'a [u8], &'a [u8])>,
        depth: usize,
        seen: &mut std::collections::HashSet<u64>,
    ) -> Result<(), StorageError> {
        if depth > 64 {
            return Err(bad("tree too deep"));
        }
        if page.flags & BRANCH != 0 {
            for i in 0..page.count {
                let at = page.element(i)?;
                let child = u64_at(page.bytes, at + 8).ok_or_else(|| bad("branch"))?;
                if !seen.insert(child) {
                    return Err(bad(format!("page {child} reached twice")));
                }
                self.walk(self.page(child)?, out, depth + 1, seen)?;
            }
        } else if page.flags & LEAF != 0 {
            for i in 0..page.count {
                let at = page.element(i)?;
                let flags = u32_at(page.bytes, at).unwrap_or(0);
                let pos = u32_at(page.bytes, at + 4).unwrap_or(0) as usize;
                let ksize = u32_at(page.bytes, at + 8).unwrap_or(0) as usize;
                let vsize = u32_at(page.bytes, at + 12).unwrap_or(0) as usize;
                let key = page.slice(at + pos, ksize)?;
                let value = page.slice(at + pos + ksize, vsize)?;
                out.push((flags, key, value));
            }
        } else {
            return Err(bad(format!("page of kind {:#x} inside a tree", page.flags)));
        }
        Ok(())
    }

    /// The entries of top-level bucket `name` (None: no such bucket).
    pub(super) fn bucket(&self, name: &[u8]) -> Result<Option<Entries<'a>>, StorageError> {
        let mut top = Vec::new();
        let mut seen = std::collections::HashSet::from([self.root]);
        self.walk(self.page(self.root)?, &mut top, 0, &mut seen)?;
        let Some(&(_, _, header)) = top
            .iter()
            .find(|(f, k, _)| f & BUCKET_LEAF != 0 && *k == name)
        else {
            return Ok(None);
        };
        let root = u64_at(header, 0).ok_or_else(|| bad("bucket header"))?;
        let mut entries = Vec::new();
        if root == 0 {
            // Inline: the bucket's one page follows its header.
            let page = Page::parse(header.get(16..).ok_or_else(|| bad("inline bucket"))?)?;
            self.walk(page, &mut entries, 0, &mut std::collections::HashSet::new())?;
        } else {
            let mut seen = std::collections::HashSet::from([root]);
            self.walk(self.page(root)?, &mut entries, 0, &mut seen)?;
        }
        Ok(Some(
            entries
                .into_iter()
                .filter(|(f, _, _)| f & BUCKET_LEAF == 0)
                .map(|(_, k, v)| (k, v))
                .collect(),
        ))
    }
}

/// What a conversion found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Versions written (deletions included).
    pub versions: u64,
    /// The store's revision.
    pub current_rev: i64,
    /// The compaction point (-1: never compacted).
    pub compact_rev: i64,
    /// Leases.
    pub leases: usize,
    /// etcd's applied index.
    pub index: u64,
}

/// Writes the state in the etcd data file `data` as a MetaStore image to
/// `out`.
pub fn convert(data: &[u8], out: impl Write) -> Result<Converted, StorageError> {
    let db = Db::open(data)?;
    let keys = db.bucket(KEY)?.ok_or_else(|| bad("no `key` bucket"))?;
    let meta = db.bucket(META)?.unwrap_or_default();
    let meta_u64 = |name: &[u8]| {
        meta.iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.get(..8))
            .map(|v| u64::from_be_bytes(v.try_into().expect("8 bytes")))
    };
    // etcd stores compaction revisions as revision keys (main, sub).
    let compact_rev = meta_u64(FINISHED_COMPACT).map_or(-1, |r| r as i64);
    let index = meta_u64(CONSISTENT_INDEX).unwrap_or(0);
    let term = meta_u64(TERM).unwrap_or(1).max(1);
    let mut leases = LeaseTable::default();
    for (_, v) in db.bucket(LEASE)?.unwrap_or_default() {
        let l = EtcdLease::decode(v).map_err(|e| bad(format!("lease: {e}")))?;
        leases.insert(
            l.id,
            LeaseEntry {
                ttl: l.ttl,
                remaining: l.remaining_ttl,
            },
        );
    }
    let auth = read_auth(&db)?;
    let mut current_rev = compact_rev.max(1);
    let mut records = Vec::with_capacity(keys.len());
    for (k, v) in keys {
        if k.len() < 17 || k[8] != b'_' {
            return Err(bad(format!("revision key of {} bytes", k.len())));
        }
        let main = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
        let sub = i64::from_be_bytes(k[9..17].try_into().expect("8 bytes"));
        let tombstone = k.get(17) == Some(&b't');
        let kv = mvccpb::KeyValue::decode(v).map_err(|e| bad(format!("version {main}: {e}")))?;
        let kv = if tombstone {
            mvccpb::KeyValue {
                key: kv.key,
                mod_revision: main,
                ..Default::default()
            }
        } else {
            kv
        };
        current_rev = current_rev.max(main);
        records.push((revision_key(Revision::new(main, sub)), kv.encode_to_vec()));
    }
    records.sort_by_key(|r| r.0);
    let header = ImageHeader {
        index: index.max(1),
        term,
        current_rev,
        compact_rev,
        leases: leases.clone(),
        auth,
        ..Default::default()
    };
    let mut w = ImageWriter::new(out, &header).map_err(|e| bad(e.to_string()))?;
    for (k, v) in &records {
        w.raw_record(k, v).map_err(|e| bad(e.to_string()))?;
    }
    w.finish().map_err(|e| bad(e.to_string()))?;
    Ok(Converted {
        versions: records.len() as u64,
        current_rev,
        compact_rev,
        leases: leases.len(),
        index,
    })
}

/// etcd's auth store: the `auth` bucket (`authEnabled`: one byte,
/// `authRevision`: u64 big-endian), `authUsers` and `authRoles` (name →
/// authpb record; passwords are bcrypt hashes, as MetaStore keeps them).
fn read_auth(db: &Db<'_>) -> Result<crate::proto::metastorepb::AuthState, StorageError> {
    use crate::proto::{authpb, metastorepb};
    let meta = db.bucket(AUTH)?.unwrap_or_default();
    let get = |name: &[u8]| meta.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let enabled = get(AUTH_ENABLED).is_some_and(|v| v.first() == Some(&1));
    let revision = get(AUTH_REVISION)
        .and_then(|v| v.get(..8))
        .map_or(0, |v| u64::from_be_bytes(v.try_into().expect("8 bytes")));
    let mut users = Vec::new();
    for (_, v) in db.bucket(AUTH_USERS)?.unwrap_or_default() {
        let user = authpb::User::decode(v).map_err(|e| bad(format!("auth user: {e}")))?;
        users.push(metastorepb::AuthUser {
            user: Some(user),
            credential_revision: revision,
        });
    }
    let mut roles = Vec::new();
    for (_, v) in db.bucket(AUTH_ROLES)?.unwrap_or_default() {
        roles.push(authpb::Role::decode(v).map_err(|e| bad(format!("auth role: {e}")))?);
    }
    Ok(metastorepb::AuthState {
        enabled,
        revision,
        users,
        roles,
        enabled_revision: revision,
    })
}

/// The database in a file `etcdctl snapshot save` stored: its SHA-256
/// checked and cut off. As etcd's restore, a file whose length is 32 bytes
/// past a multiple of 512 carries one; a bare database (copied from a data
/// dir) is taken as it is.
fn verified(file: &[u8]) -> Result<&[u8], StorageError> {
    use sha2::{Digest, Sha256};
    if file.len() % 512 != 32 {
        return Ok(file);
    }
    let (db, sum) = file.split_at(file.len() - 32);
    if Sha256::digest(db).as_slice() != sum {
        return Err(bad("SHA-256 mismatch: the file is damaged"));
    }
    Ok(db)
}

/// Converts the etcd data file at `path` into an image file next to
/// `image` (written whole, then renamed).
pub fn convert_file(path: &Path, image: &Path) -> Result<Converted, StorageError> {
    let data =
        std::fs::read(path).map_err(|e| StorageError::io(format!("read {}", path.display()), e))?;
    let data = verified(&data)?;
    let partial = image.with_extension("partial");
    let file = std::fs::File::create(&partial)
        .map_err(|e| StorageError::io(format!("create {}", partial.display()), e))?;
    let c = convert(data, std::io::BufWriter::new(file))?;
    std::fs::rename(&partial, image)
        .map_err(|e| StorageError::io(format!("rename {}", partial.display()), e))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::storage::alloc_probe::{bound, largest_allocation};
    use crate::storage::bbolt::write::{write_bbolt, PAGE_SIZE};
    use crate::storage::engine::AppliedPoint;
    use crate::storage::image::write_memory_image;
    use crate::storage::memory::mvcc::MemStore;

    /// A small valid etcd data file: a few keys.
    fn seed_file() -> Vec<u8> {
        let mut s = MemStore::new();
        for i in 0..40u32 {
            let mut t = s.write();
            t.put(format!("k{i:03}").as_bytes(), vec![b'v'; 50].into(), 0);
            t.end();
        }
        let h = AppliedPoint::default().header(s.current_revision(), s.compact_main_revision());
        let image = write_memory_image(&s, &h, Vec::new()).unwrap();
        let (file, _) = write_bbolt(image.as_slice(), Cursor::new(Vec::new())).unwrap();
        file.into_inner()
    }

    /// Runs `convert` on another thread; None if it did not end in 10 s.
    fn convert_within(data: Vec<u8>) -> Option<(bool, usize)> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (ok, largest) = largest_allocation(|| convert(&data, Vec::new()).is_ok());
            let _ = tx.send((ok, largest));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
    }

    /// Pages shared down a tree: the root and five added pages are
    /// branches whose 255 children are all the next page, the last a leaf.
    /// No cycle and never deeper than 7, yet a walk that revisits pages
    /// reads 255^6 of them (it never ended); refused at the second visit.
    #[test]
    fn pages_reached_twice_are_refused() {
        let mut data = seed_file();
        let root = Db::open(&data).unwrap().root;
        let first_added = (data.len() / PAGE_SIZE) as u64;
        data.resize(data.len() + 6 * PAGE_SIZE, 0);
        let mut chain = vec![root];
        chain.extend(first_added..first_added + 6);
        for pair in chain.windows(2) {
            let (id, next) = (pair[0] as usize, pair[1]);
            let page = &mut data[id * PAGE_SIZE..(id + 1) * PAGE_SIZE];
            page[..8].copy_from_slice(&(id as u64).to_le_bytes());
            page[8..10].copy_from_slice(&BRANCH.to_le_bytes());
            page[10..12].copy_from_slice(&255u16.to_le_bytes());
            page[12..16].copy_from_slice(&0u32.to_le_bytes());
            for i in 0..255 {
                let at = PAGE_HEADER + i * ELEMENT;
                page[at + 8..at + 16].copy_from_slice(&next.to_le_bytes());
            }
        }
        let leaf = *chain.last().unwrap() as usize * PAGE_SIZE;
        data[leaf + 8..leaf + 10].copy_from_slice(&LEAF.to_le_bytes());
        let (ok, _) = convert_within(data).expect("the walk never ended");
        assert!(!ok);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// A valid file with bytes changed past its meta pages (so its
        /// checksums still hold) or cut short: an error or an image, in
        /// bounded time and memory, never a panic.
        #[test]
        fn hostile_bbolt_files_never_panic_loop_or_overallocate(
            pokes in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                1..24,
            ),
            cut in proptest::prelude::any::<usize>(),
            shorten in proptest::prelude::any::<bool>(),
        ) {
            let mut data = seed_file();
            let body = data.len() - 2 * PAGE_SIZE;
            for (at, b) in pokes {
                data[2 * PAGE_SIZE + at % body] = b;
            }
            if shorten {
                data.truncate(2 * PAGE_SIZE + cut % body);
            }
            let len = data.len();
            let (_, largest) = convert_within(data).expect("convert did not end in 10 s");
            proptest::prop_assert!(largest <= bound(len), "{largest} for {len} bytes");
        }
    }
}
