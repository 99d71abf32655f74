//! Writes a MetaStore state image as etcd's data file: a bbolt database
//! with etcd 3.5's buckets, laid out as a freshly defragmented etcd's
//! (every page in use, none free), so that `etcdctl snapshot status`,
//! `etcdctl snapshot restore` (3.4) and `etcdutl snapshot restore` (3.5)
//! take it as one of etcd's own.
//!
//! The image is read as a stream and the pages are written as they fill,
//! bottom-up: records arrive in revision order, which is the order of
//! etcd's revision keys, so each leaf is final once the next key does not
//! fit; only the first key and page id of each page is kept to build the
//! branch levels above. A million versions are never all in memory.
//!
//! Layout: pages 0 and 1 are the metas (written last), then every bucket's
//! tree, the root bucket's leaf, and an empty freelist page. Every bucket
//! gets its own root page, never an inline one (bbolt reads both; it
//! inlines a small bucket again the next time etcd writes to it). Pages
//! fill to 90%, etcd's fill percent for its sequential writes and its
//! defragmentation, with at least two elements per page as bbolt splits.

use std::io::{self, Read, Seek, SeekFrom, Write};

use prost::Message as _;

use super::{
    bad, fnv1a64, EtcdLease, ALARM, AUTH, AUTH_ENABLED, AUTH_REVISION, AUTH_ROLES, AUTH_USERS,
    BRANCH, BUCKET_LEAF, CLUSTER, CLUSTER_VERSION, CONF_STATE, CONSISTENT_INDEX, ELEMENT,
    FINISHED_COMPACT, FREELIST_PAGE, KEY, LEAF, LEASE, MAGIC, MEMBERS, MEMBERS_REMOVED, META,
    META_CHECKSUM, META_FREELIST, META_PAGE, META_PAGE_SIZE, META_PGID, META_ROOT, META_SIZE,
    META_TXID, PAGE_HEADER, SCHEDULED_COMPACT, TERM, VERSION,
};
use crate::proto::{etcdserverpb, mvccpb};
use crate::storage::image::{parse_revision_key, ImageHeader, ImageReader};
use crate::storage::StorageError;

/// Page size of the files written (etcd's on the machines it runs on).
pub const PAGE_SIZE: usize = 4096;
/// A page is full past this many bytes (bbolt's threshold for a fill
/// percent of 90%).
const THRESHOLD: usize = PAGE_SIZE * 9 / 10;
/// bbolt never splits a page below two elements.
const MIN_KEYS: usize = 2;
/// The cluster version etcd 3.5 records (MetaStore speaks etcd 3.5's API).
const ETCD_CLUSTER_VERSION: &[u8] = b"3.5.0";

/// What a written file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Versions in the `key` bucket (deletions included).
    pub versions: u64,
    /// The file's length in pages.
    pub pages: u64,
}

fn io_err(e: io::Error) -> StorageError {
    bad(format!("write: {e}"))
}

/// The file, page by page.
struct Pages<W> {
    out: W,
    /// Id of the next page written.
    next: u64,
}

impl<W: Write> Pages<W> {
    /// Writes one page (spanning as many as `body` needs) after a header
    /// of `flags` and `count`; its id.
    fn put(&mut self, flags: u16, count: usize, body: &[u8]) -> Result<u64, StorageError> {
        let count =
            u16::try_from(count).map_err(|_| bad(format!("{count} elements in one page")))?;
        let id = self.next;
        let span = (PAGE_HEADER + body.len()).div_ceil(PAGE_SIZE);
        let overflow =
            u32::try_from(span - 1).map_err(|_| bad(format!("a page of {span} pages")))?;
        let mut header = [0u8; PAGE_HEADER];
        header[..8].copy_from_slice(&id.to_le_bytes());
        header[8..10].copy_from_slice(&flags.to_le_bytes());
        header[10..12].copy_from_slice(&count.to_le_bytes());
        header[12..16].copy_from_slice(&overflow.to_le_bytes());
        self.out.write_all(&header).map_err(io_err)?;
        self.out.write_all(body).map_err(io_err)?;
        let pad = span * PAGE_SIZE - PAGE_HEADER - body.len();
        self.out
            .write_all(&[0u8; PAGE_SIZE][..pad])
            .map_err(io_err)?;
        self.next += span as u64;
        Ok(id)
    }
}

/// One element: leaf (flags, key, value) or branch (key, child page).
struct Element {
    flags: u32,
    /// Where its key starts in `Node::data`.
    at: usize,
    ksize: usize,
    vsize: usize,
    child: u64,
}

/// A page being filled.
struct Node {
    branch: bool,
    elements: Vec<Element>,
    /// Keys (and values) back to back.
    data: Vec<u8>,
    /// bbolt's size of the page so far.
    size: usize,
}

impl Node {
    fn new(branch: bool) -> Node {
        Node {
            branch,
            elements: Vec::new(),
            data: Vec::new(),
            size: PAGE_HEADER,
        }
    }

    /// Whether an element of this key and value size goes on this page.
    fn fits(&self, ksize: usize, vsize: usize) -> bool {
        self.elements.len() < MIN_KEYS || self.size + ELEMENT + ksize + vsize <= THRESHOLD
    }

    fn add(&mut self, flags: u32, key: &[u8], value: &[u8], child: u64) {
        self.elements.push(Element {
            flags,
            at: self.data.len(),
            ksize: key.len(),
            vsize: value.len(),
            child,
        });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
        self.size += ELEMENT + key.len() + value.len();
    }

    /// Writes the page and empties the node; the page's first key and id.
    fn flush<W: Write>(&mut self, pages: &mut Pages<W>) -> Result<(Vec<u8>, u64), StorageError> {
        let n = self.elements.len();
        let mut body = Vec::with_capacity(n * ELEMENT + self.data.len());
        for (i, e) in self.elements.iter().enumerate() {
            // An element's key sits `pos` bytes after the element.
            let pos = u32::try_from(n * ELEMENT + e.at - i * ELEMENT)
                .map_err(|_| bad("page too large"))?;
            let ksize = u32::try_from(e.ksize).map_err(|_| bad("key too large"))?;
            if self.branch {
                body.extend_from_slice(&pos.to_le_bytes());
                body.extend_from_slice(&ksize.to_le_bytes());
                body.extend_from_slice(&e.child.to_le_bytes());
            } else {
                let vsize = u32::try_from(e.vsize).map_err(|_| bad("value too large"))?;
                body.extend_from_slice(&e.flags.to_le_bytes());
                body.extend_from_slice(&pos.to_le_bytes());
                body.extend_from_slice(&ksize.to_le_bytes());
                body.extend_from_slice(&vsize.to_le_bytes());
            }
        }
        body.extend_from_slice(&self.data);
        let first = self
            .elements
            .first()
            .map(|e| self.data[e.at..e.at + e.ksize].to_vec())
            .unwrap_or_default();
        let flags = if self.branch { BRANCH } else { LEAF };
        let id = pages.put(flags, n, &body)?;
        self.elements.clear();
        self.data.clear();
        self.size = PAGE_HEADER;
        Ok((first, id))
    }
}

/// A bucket's B+tree, built bottom-up from keys in ascending order.
struct Tree {
    leaf: Node,
    /// First key and id of every leaf written.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl Tree {
    fn new() -> Tree {
        Tree {
            leaf: Node::new(false),
            leaves: Vec::new(),
            last: None,
        }
    }

    /// Adds an element; keys must come in strictly ascending order.
    fn push<W: Write>(
        &mut self,
        pages: &mut Pages<W>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StorageError> {
        if key.is_empty() {
            return Err(bad("an empty key"));
        }
        if let Some(last) = &mut self.last {
            if key <= last.as_slice() {
                return Err(bad(format!("key {key:x?} out of order")));
            }
            last.clear();
            last.extend_from_slice(key);
        } else {
            self.last = Some(key.to_vec());
        }
        if !self.leaf.fits(key.len(), value.len()) {
            self.leaves.push(self.leaf.flush(pages)?);
        }
        self.leaf.add(flags, key, value, 0);
        Ok(())
    }

    /// Writes what is left and the branch levels above; the root's id.
    fn finish<W: Write>(mut self, pages: &mut Pages<W>) -> Result<u64, StorageError> {
        if !self.leaf.elements.is_empty() || self.leaves.is_empty() {
            // An empty bucket is one empty leaf.
            self.leaves.push(self.leaf.flush(pages)?);
        }
        let mut level = self.leaves;
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut node = Node::new(true);
            for (key, child) in &level {
                if !node.fits(key.len(), 0) {
                    up.push(node.flush(pages)?);
                }
                node.add(0, key, &[], *child);
            }
            up.push(node.flush(pages)?);
            level = up;
        }
        Ok(level[0].1)
    }
}

/// Writes a whole bucket from unordered entries; its root page.
fn small_bucket<W: Write>(
    pages: &mut Pages<W>,
    mut entries: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<u64, StorageError> {
    entries.sort();
    let mut tree = Tree::new();
    for (k, v) in &entries {
        tree.push(pages, 0, k, v)?;
    }
    tree.finish(pages)
}

/// etcd's revision key: main u64 BE, '_', sub u64 BE.
fn etcd_revision(main: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&(main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&0u64.to_be_bytes());
    k
}

/// A member as etcd's membership store writes it (Go's encoding/json of
/// its `Member`: the raft attributes, then the others, empty ones left out).
#[derive(serde::Serialize)]
struct MemberJson<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "isLearner", skip_serializing_if = "is_false")]
    is_learner: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

/// raftpb.ConfState as etcd 3.5 keeps it under `meta/confState` (JSON).
#[derive(serde::Serialize)]
struct ConfStateJson<'a> {
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    voters: &'a [u64],
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    learners: &'a [u64],
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    voters_outgoing: &'a [u64],
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    learners_next: &'a [u64],
    auto_leave: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn json(v: &impl serde::Serialize) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(|e| bad(e.to_string()))
}

/// Every bucket but `key`, from the image's header, by name.
fn header_buckets(h: &ImageHeader) -> Result<Vec<(&'static [u8], Entries)>, StorageError> {
    let cs = &h.conf_state;
    let mut meta = vec![
        (CONSISTENT_INDEX.to_vec(), h.index.to_be_bytes().to_vec()),
        (TERM.to_vec(), h.term.to_be_bytes().to_vec()),
        (
            CONF_STATE.to_vec(),
            json(&ConfStateJson {
                voters: &cs.voters,
                learners: &cs.learners,
                voters_outgoing: &cs.voters_outgoing,
                learners_next: &cs.learners_next,
                auto_leave: cs.auto_leave,
            })?,
        ),
    ];
    if h.compact_rev > 0 {
        // etcd records both as revision keys; equal once a compaction ran.
        meta.push((FINISHED_COMPACT.to_vec(), etcd_revision(h.compact_rev)));
        meta.push((SCHEDULED_COMPACT.to_vec(), etcd_revision(h.compact_rev)));
    }
    let leases = h
        .leases
        .iter()
        .map(|(id, l)| {
            let lease = EtcdLease {
                id,
                ttl: l.ttl,
                remaining_ttl: l.remaining,
            };
            ((id as u64).to_be_bytes().to_vec(), lease.encode_to_vec())
        })
        .collect();
    let mut auth = vec![(
        AUTH_REVISION.to_vec(),
        h.auth.revision.to_be_bytes().to_vec(),
    )];
    if h.auth.enabled {
        // etcd writes the flag when auth is switched; absent reads as off.
        auth.push((AUTH_ENABLED.to_vec(), vec![1]));
    }
    let users = h
        .auth
        .users
        .iter()
        .filter_map(|u| u.user.as_ref())
        .map(|u| (u.name.clone(), u.encode_to_vec()))
        .collect();
    let roles = h
        .auth
        .roles
        .iter()
        .map(|r| (r.name.clone(), r.encode_to_vec()))
        .collect();
    let m = &h.membership;
    let members = m
        .members
        .iter()
        .map(|m| {
            let value = json(&MemberJson {
                id: m.id,
                peer_urls: &m.peer_ur_ls,
                is_learner: m.is_learner,
                name: &m.name,
                client_urls: &m.client_ur_ls,
            })?;
            Ok((format!("{:x}", m.id).into_bytes(), value))
        })
        .collect::<Result<_, StorageError>>()?;
    let removed = m
        .removed
        .iter()
        .map(|id| (format!("{id:x}").into_bytes(), b"removed".to_vec()))
        .collect();
    let alarms = m
        .alarms
        .iter()
        .map(|a| {
            let member = etcdserverpb::AlarmMember {
                member_id: a.member_id,
                alarm: a.alarm,
            };
            (member.encode_to_vec(), Vec::new())
        })
        .collect();
    let cluster = vec![(CLUSTER_VERSION.to_vec(), ETCD_CLUSTER_VERSION.to_vec())];
    Ok(vec![
        (META, meta),
        (LEASE, leases),
        (AUTH, auth),
        (AUTH_USERS, users),
        (AUTH_ROLES, roles),
        (MEMBERS, members),
        (MEMBERS_REMOVED, removed),
        (ALARM, alarms),
        (CLUSTER, cluster),
    ])
}

/// A bucket's entries.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A meta page for transaction `txid` (page id `txid % 2`).
fn meta_page(txid: u64, root: u64, freelist: u64, pgid: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    page[..8].copy_from_slice(&(txid % 2).to_le_bytes());
    page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
    let m = &mut page[PAGE_HEADER..PAGE_HEADER + META_SIZE];
    m[..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[META_PAGE_SIZE..META_PAGE_SIZE + 4].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    // Flags (4 bytes) and the root bucket's sequence stay 0.
    m[META_ROOT..META_ROOT + 8].copy_from_slice(&root.to_le_bytes());
    m[META_FREELIST..META_FREELIST + 8].copy_from_slice(&freelist.to_le_bytes());
    m[META_PGID..META_PGID + 8].copy_from_slice(&pgid.to_le_bytes());
    m[META_TXID..META_TXID + 8].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv1a64(&m[..META_CHECKSUM]);
    m[META_CHECKSUM..META_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    page
}

/// Reads the image `image` and writes it to `out` as etcd's data file;
/// returns `out`, positioned at its end.
pub fn write_bbolt<R: Read, W: Write + Seek>(
    image: R,
    out: W,
) -> Result<(W, Written), StorageError> {
    let (header, mut records) = ImageReader::new(image)?;
    let mut pages = Pages { out, next: 2 };
    // The metas come last, once the root is known.
    pages.out.write_all(&[0u8; 2 * PAGE_SIZE]).map_err(io_err)?;
    let mut roots = Vec::new();

    let mut keys = Tree::new();
    let mut versions = 0u64;
    let mut key = [0u8; 18];
    key[8] = b'_';
    while let Some((revision, value)) = records.next_raw()? {
        let rev = parse_revision_key(&revision).ok_or_else(|| bad("bad revision key"))?;
        let kv = mvccpb::KeyValue::decode(value.as_slice())
            .map_err(|e| bad(format!("record at {rev:?}: {e}")))?;
        key[..8].copy_from_slice(&revision[..8]);
        key[9..17].copy_from_slice(&revision[8..]);
        if kv.version == 0 {
            // A deletion: etcd marks the key and stores only the user key.
            key[17] = b't';
            let tombstone = mvccpb::KeyValue {
                key: kv.key,
                ..Default::default()
            };
            keys.push(&mut pages, 0, &key, &tombstone.encode_to_vec())?;
        } else {
            keys.push(&mut pages, 0, &key[..17], &value)?;
        }
        versions += 1;
    }
    roots.push((KEY, keys.finish(&mut pages)?));
    for (name, entries) in header_buckets(&header)? {
        roots.push((name, small_bucket(&mut pages, entries)?));
    }
    roots.sort();
    let mut top = Tree::new();
    for (name, root) in roots {
        // A bucket's header: its root page and sequence (0).
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&root.to_le_bytes());
        top.push(&mut pages, BUCKET_LEAF, name, &value)?;
    }
    let root = top.finish(&mut pages)?;
    let freelist = pages.put(FREELIST_PAGE, 0, &[])?;
    let pgid = pages.next;
    let mut out = pages.out;
    out.seek(SeekFrom::Start(0)).map_err(io_err)?;
    for txid in [2, 3] {
        out.write_all(&meta_page(txid, root, freelist, pgid))
            .map_err(io_err)?;
    }
    out.seek(SeekFrom::End(0)).map_err(io_err)?;
    out.flush().map_err(io_err)?;
    Ok((
        out,
        Written {
            versions,
            pages: pgid,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Cursor;

    use super::super::read::Db;
    use super::*;
    use crate::proto::{authpb, metastorepb};
    use crate::storage::engine::AppliedPoint;
    use crate::storage::image::{read_into_store, write_memory_image};
    use crate::storage::leases::{LeaseEntry, LeaseTable};
    use crate::storage::memory::mvcc::MemStore;

    fn u16_at(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
    }
    fn u32_at(b: &[u8], at: usize) -> usize {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Called with every leaf element's flags, key and value.
    type OnLeaf<'a> = dyn FnMut(u32, &[u8], &[u8]) + 'a;

    /// What bbolt's `Tx.Check` (run by `etcdctl snapshot status`) checks,
    /// and a little more: both metas valid, every page below the high-water
    /// mark reachable exactly once (or free), page ids as their offsets,
    /// keys in order within and across pages, each branch key the first
    /// key of its child. Returns the depth of every bucket's tree.
    fn check(file: &[u8]) -> Vec<(Vec<u8>, usize)> {
        assert_eq!(file.len() % PAGE_SIZE, 0);
        let meta = |p: usize| &file[p * PAGE_SIZE + PAGE_HEADER..][..META_SIZE];
        for p in 0..2 {
            let m = meta(p);
            assert_eq!(u64_at(file, p * PAGE_SIZE), p as u64, "meta page id");
            assert_eq!(u16_at(file, p * PAGE_SIZE + 8) as u16, META_PAGE);
            assert_eq!(u32_at(m, 0) as u32, MAGIC);
            assert_eq!(u32_at(m, 4) as u32, VERSION);
            assert_eq!(u64_at(m, META_CHECKSUM), fnv1a64(&m[..META_CHECKSUM]));
        }
        let m = meta(1);
        let pgid = u64_at(m, META_PGID) as usize;
        assert_eq!(pgid * PAGE_SIZE, file.len(), "high-water mark");
        let mut seen: HashSet<usize> = [0, 1].into();
        let mut mark = |id: usize, span: usize, seen: &mut HashSet<usize>| {
            for p in id..id + span {
                assert!(p < pgid, "page {p} out of bounds");
                assert!(seen.insert(p), "page {p} referenced twice");
            }
        };
        let freelist = u64_at(m, META_FREELIST) as usize;
        let fl = &file[freelist * PAGE_SIZE..];
        assert_eq!(u16_at(fl, 8) as u16, FREELIST_PAGE);
        assert_eq!(u16_at(fl, 10), 0, "no free pages");
        mark(freelist, 1, &mut seen);
        // (page, lower bound) -> walk, returning depth.
        fn walk(
            file: &[u8],
            id: usize,
            min: &[u8],
            seen: &mut HashSet<usize>,
            mark: &mut dyn FnMut(usize, usize, &mut HashSet<usize>),
            leaf: &mut OnLeaf<'_>,
        ) -> usize {
            let page = &file[id * PAGE_SIZE..];
            assert_eq!(u64_at(page, 0) as usize, id, "page header id");
            let flags = u16_at(page, 8) as u16;
            let count = u16_at(page, 10);
            let span = u32_at(page, 12) + 1;
            mark(id, span, seen);
            let page = &page[..span * PAGE_SIZE];
            let mut last: Option<Vec<u8>> = None;
            let mut depth = 1;
            for i in 0..count {
                let at = PAGE_HEADER + i * ELEMENT;
                let (pos, ksize) = if flags == BRANCH {
                    (u32_at(page, at), u32_at(page, at + 4))
                } else {
                    assert_eq!(flags, LEAF, "page {id} kind");
                    (u32_at(page, at + 4), u32_at(page, at + 8))
                };
                let key = &page[at + pos..at + pos + ksize];
                assert!(key >= min, "key below its branch key");
                if let Some(l) = &last {
                    assert!(key > l.as_slice(), "keys out of order in page {id}");
                }
                last = Some(key.to_vec());
                if flags == BRANCH {
                    let child = u64_at(page, at + 8) as usize;
                    let first = {
                        let c = &file[child * PAGE_SIZE..];
                        let p = if u16_at(c, 8) as u16 == BRANCH {
                            u32_at(c, PAGE_HEADER)
                        } else {
                            u32_at(c, PAGE_HEADER + 4)
                        };
                        let k = if u16_at(c, 8) as u16 == BRANCH {
                            u32_at(c, PAGE_HEADER + 4)
                        } else {
                            u32_at(c, PAGE_HEADER + 8)
                        };
                        c[PAGE_HEADER + p..PAGE_HEADER + p + k].to_vec()
                    };
                    assert_eq!(first, key, "branch key is its child's first key");
                    depth = depth.max(1 + walk(file, child, key, seen, mark, leaf));
                } else {
                    let vsize = u32_at(page, at + 12);
                    let value = &page[at + pos + ksize..at + pos + ksize + vsize];
                    leaf(u32_at(page, at) as u32, key, value);
                }
            }
            depth
        }
        let mut buckets = Vec::new();
        let root = u64_at(m, META_ROOT) as usize;
        walk(file, root, &[], &mut seen, &mut mark, &mut |flags, k, v| {
            assert_eq!(flags, BUCKET_LEAF);
            buckets.push((k.to_vec(), u64_at(v, 0) as usize));
        });
        let mut depths = Vec::new();
        for (name, root) in buckets {
            assert_ne!(root, 0, "no inline buckets");
            let d = walk(file, root, &[], &mut seen, &mut mark, &mut |flags, _, _| {
                assert_eq!(flags, 0)
            });
            depths.push((name, d));
        }
        assert_eq!(seen.len(), pgid, "every page reachable");
        depths
    }

    fn lease_table() -> LeaseTable {
        let mut leases = LeaseTable::default();
        for (id, ttl, remaining) in [(7, 60, 0), (-3, 600, 42), (0x1234_5678_9abc, 5, 0)] {
            leases.insert(id, LeaseEntry { ttl, remaining });
        }
        leases
    }

    /// Many versions (several per key, deletions, a compaction, values
    /// that need overflow pages, leased keys), written as a bbolt file and
    /// read back with our reader: the same store, leases, auth and
    /// compaction point, from a file bbolt's checks accept.
    #[test]
    fn an_image_round_trips_through_a_bbolt_file() {
        let mut s = MemStore::new();
        for i in 0..6000u32 {
            let mut t = s.write();
            let key = format!("key/{:05}", i % 2500);
            let value = match i {
                100 => vec![b'x'; 20_000],
                101 => vec![b'y'; 1_500_000],
                _ => format!("value {i}").into_bytes(),
            };
            t.put(key.as_bytes(), value.into(), if i % 7 == 0 { 7 } else { 0 });
            t.end();
        }
        let mut t = s.write();
        t.delete_range(b"key/00010", b"key/00020");
        t.end();
        s.compact(3000).unwrap();
        for i in 0..300u32 {
            let mut t = s.write();
            t.put(format!("late/{i}").as_bytes(), vec![].into(), 0);
            if i % 3 == 0 {
                t.delete_range(format!("key/{:05}", 100 + i).as_bytes(), b"");
            }
            t.end();
        }
        let point = AppliedPoint {
            index: 12_345,
            term: 7,
            leases: lease_table(),
            auth: metastorepb::AuthState {
                enabled: true,
                revision: 9,
                users: vec![metastorepb::AuthUser {
                    user: Some(authpb::User {
                        name: b"alice".to_vec(),
                        password: "$2a$10$hash".into(),
                        roles: vec!["app".into()],
                        ..Default::default()
                    }),
                    credential_revision: 9,
                }],
                roles: vec![authpb::Role {
                    name: b"app".to_vec(),
                    ..Default::default()
                }],
                enabled_revision: 9,
            },
            membership: metastorepb::Membership {
                cluster_id: 5,
                members: vec![etcdserverpb::Member {
                    id: 0xabc,
                    name: "m\"1".into(),
                    peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
                    ..Default::default()
                }],
                removed: vec![0xdef],
                alarms: vec![metastorepb::MemberAlarm {
                    member_id: 0xabc,
                    alarm: 1,
                }],
            },
            ..Default::default()
        };
        let h = point.header(s.current_revision(), s.compact_main_revision());
        let image = write_memory_image(&s, &h, Vec::new()).unwrap();
        let (file, written) = write_bbolt(image.as_slice(), Cursor::new(Vec::new())).unwrap();
        let file = file.into_inner();
        assert_eq!(written.pages as usize * PAGE_SIZE, file.len());

        let depths = check(&file);
        let key_depth = depths.iter().find(|(n, _)| n == KEY).unwrap().1;
        assert_eq!(key_depth, 2, "a branch page over the leaves");
        for (name, d) in &depths {
            assert!(name == KEY || *d == 1, "{name:?}");
        }
        let names: Vec<_> = depths.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(
            names,
            [
                ALARM,
                AUTH,
                AUTH_ROLES,
                AUTH_USERS,
                CLUSTER,
                KEY,
                LEASE,
                MEMBERS,
                MEMBERS_REMOVED,
                META
            ]
        );

        let mut back = Vec::new();
        let c = super::super::convert(&file, &mut back).unwrap();
        assert_eq!(c.versions, written.versions);
        let (rh, rs) = read_into_store(back.as_slice(), true).unwrap();
        assert_eq!(rs, s, "every version, deletion and the compaction point");
        assert_eq!(rh.compact_rev, 3000);
        assert_eq!(rh.current_rev, s.current_revision());
        assert_eq!((rh.index, rh.term), (12_345, 7));
        assert_eq!(rh.leases, lease_table());
        assert_eq!(
            (rh.auth.enabled, rh.auth.revision, &rh.auth.roles),
            (true, 9, &h.auth.roles)
        );
        assert_eq!(rh.auth.users[0].user, h.auth.users[0].user);

        // The buckets the reader leaves alone, as etcd writes them.
        let db = Db::open(&file).unwrap();
        let get = |b: &[u8]| db.bucket(b).unwrap().unwrap();
        assert_eq!(
            get(MEMBERS),
            [(
                &b"abc"[..],
                &br#"{"id":2748,"peerURLs":["http://127.0.0.1:2380"],"name":"m\"1"}"#[..]
            )]
        );
        assert_eq!(get(MEMBERS_REMOVED), [(&b"def"[..], &b"removed"[..])]);
        assert_eq!(get(CLUSTER), [(CLUSTER_VERSION, ETCD_CLUSTER_VERSION)]);
        assert_eq!(get(ALARM).len(), 1);
        let meta = get(META);
        let meta_value = |k: &[u8]| meta.iter().find(|e| e.0 == k).unwrap().1;
        assert_eq!(
            meta_value(FINISHED_COMPACT),
            b"\0\0\0\0\0\0\x0b\xb8_\0\0\0\0\0\0\0\0"
        );
        assert_eq!(meta_value(SCHEDULED_COMPACT), meta_value(FINISHED_COMPACT));
        assert_eq!(meta_value(CONF_STATE), br#"{"auto_leave":false}"#);
        // A deletion: the marked revision key and just the user key.
        let keys = get(KEY);
        let tombstones: Vec<_> = keys.iter().filter(|(k, _)| k.len() == 18).collect();
        assert_eq!(tombstones.len(), 10 + 100);
        assert!(tombstones.iter().all(|(k, _)| k[17] == b't'));
        let kv = mvccpb::KeyValue::decode(tombstones[0].1).unwrap();
        assert_eq!(
            kv,
            mvccpb::KeyValue {
                key: b"key/00010".to_vec(),
                ..Default::default()
            }
        );
    }

    /// An empty store: every bucket an empty leaf, no compaction keys.
    #[test]
    fn an_empty_store_is_a_valid_file() {
        let s = MemStore::new();
        let h = AppliedPoint::default().header(s.current_revision(), s.compact_main_revision());
        let image = write_memory_image(&s, &h, Vec::new()).unwrap();
        let (file, written) = write_bbolt(image.as_slice(), Cursor::new(Vec::new())).unwrap();
        let file = file.into_inner();
        assert_eq!(written.versions, 0);
        assert!(check(&file).iter().all(|(_, d)| *d == 1));
        let db = Db::open(&file).unwrap();
        assert_eq!(db.bucket(KEY).unwrap().unwrap(), []);
        assert!(!db
            .bucket(META)
            .unwrap()
            .unwrap()
            .iter()
            .any(|(k, _)| *k == FINISHED_COMPACT));
        let mut back = Vec::new();
        super::super::convert(&file, &mut back).unwrap();
        assert_eq!(read_into_store(back.as_slice(), true).unwrap().1, s);
    }

    /// Big keys make deep trees quickly: four levels, every page full to
    /// bbolt's threshold but the last of each level.
    #[test]
    fn big_buckets_get_branch_levels() {
        let mut pages = Pages {
            out: Cursor::new(vec![0u8; 2 * PAGE_SIZE]),
            next: 2,
        };
        pages.out.seek(SeekFrom::End(0)).unwrap();
        let mut tree = Tree::new();
        let entries: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("{i:08}{}", "k".repeat(200)).into_bytes())
            .collect();
        for k in &entries {
            tree.push(&mut pages, 0, k, b"v").unwrap();
        }
        assert!(
            tree.push(&mut pages, 0, &entries[0], b"v").is_err(),
            "order"
        );
        let root = tree.finish(&mut pages).unwrap();
        let mut top = Tree::new();
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&root.to_le_bytes());
        top.push(&mut pages, BUCKET_LEAF, KEY, &value).unwrap();
        let top = top.finish(&mut pages).unwrap();
        let freelist = pages.put(FREELIST_PAGE, 0, &[]).unwrap();
        let pgid = pages.next;
        let mut file = pages.out.into_inner();
        file[..PAGE_SIZE].copy_from_slice(&meta_page(2, top, freelist, pgid));
        file[PAGE_SIZE..2 * PAGE_SIZE].copy_from_slice(&meta_page(3, top, freelist, pgid));
        assert_eq!(check(&file), [(KEY.to_vec(), 4)]);
        let db = Db::open(&file).unwrap();
        let back = db.bucket(KEY).unwrap().unwrap();
        assert_eq!(back.len(), entries.len());
        assert!(back
            .iter()
            .zip(&entries)
            .all(|((k, v), e)| k == e && *v == b"v"));
        // 16 elements of 225 bytes fill a page to the threshold.
        let first_leaf = &file[2 * PAGE_SIZE..];
        assert_eq!(u16_at(first_leaf, 10), (THRESHOLD - PAGE_HEADER) / 225);
    }

    /// Garbage in the image comes out as an error, never a panic or a file
    /// etcd would choke on.
    #[test]
    fn a_damaged_image_is_refused() {
        let s = MemStore::new();
        let h = AppliedPoint::default().header(1, -1);
        let mut image = write_memory_image(&s, &h, Vec::new()).unwrap();
        let n = image.len();
        image[n - 1] ^= 1;
        assert!(write_bbolt(image.as_slice(), Cursor::new(Vec::new())).is_err());
    }
}
