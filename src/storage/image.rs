//! The state-machine image: a consistent copy of the applied MVCC state, the
//! same bytes whichever engine wrote it, for whichever engine installs it.
//! It is what a lagging follower will receive instead of the entries a
//! snapshot let go, and what Maintenance.Snapshot streams.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "MSIMAGE4"
//! header  = index u64 | term u64 | current_rev i64 | compact_rev i64
//!         | conf_state length u32 | conf_state (raft ConfState, protobuf)
//!         | membership length u32 | membership (metastorepb.Membership)
//!         | leases length u32 | leases (metastorepb.Leases)
//!         | auth length u32 | auth (metastorepb.AuthState)
//! record* = length u32 | revision (main u64 BE, sub u64 BE) | mvccpb.KeyValue
//! trailer = 0xFFFFFFFF u32 | record count u64 | crc32c of everything before u32
//! ```
//!
//! Records come in revision order, one per retained version (version 0 marks
//! a tombstone), exactly as the `rocksdb` engine stores them, so it can stream
//! its image straight from a RocksDB snapshot and install one by writing the
//! records back. Readers check the checksum before anything is installed.
//!
//! The same format serves Maintenance.Snapshot, Raft snapshots sent to a
//! lagging member, and the memory engine's snapshot files. Images of other
//! versions are refused with a message that says which: version 1 had no
//! membership and version 2 no leases, so reading them would silently lose
//! what a member of this version must have (a version 2 image's keys may
//! point at leases it does not carry). Version 3 images, from before auth,
//! still load: they are an auth store that was never used (revision 1, off).

use std::io::{self, Read, Seek, Write};
use std::path::Path;

use bytes::Bytes;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::ConfState;

use super::leases::LeaseTable;
use crate::proto::{metastorepb, mvccpb};
use crate::storage::memory::mvcc::{MemStore, Rebuild, VersionView};
use crate::storage::StorageError;
use crate::storage::{KeyValue, Revision};

const MAGIC: &[u8; 8] = b"MSIMAGE4";
/// The version before auth, still read.
const MAGIC_V3: &[u8; 8] = b"MSIMAGE3";
/// What every version's magic starts with.
const MAGIC_PREFIX: &[u8; 7] = b"MSIMAGE";
/// The version this build reads and writes.
const VERSION: u8 = b'4';
const END: u32 = u32::MAX;
/// Largest record accepted (a 1.5 MiB request's key and value, with room).
const MAX_RECORD: u32 = 64 << 20;

/// Where the image stands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageHeader {
    /// Applied index the image holds.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership at that index.
    pub conf_state: ConfState,
    /// MVCC revision at that index.
    pub current_rev: i64,
    /// Compacted revision (-1: never compacted).
    pub compact_rev: i64,
    /// The membership registry at that index.
    pub membership: metastorepb::Membership,
    /// Every lease at that index.
    pub leases: LeaseTable,
    /// The auth store at that index.
    pub auth: metastorepb::AuthState,
}

fn bad(why: impl Into<String>) -> StorageError {
    StorageError::Image(why.into())
}

/// Writes an image, record by record.
pub struct ImageWriter<W: Write> {
    out: W,
    crc: u32,
    count: u64,
}

impl<W: Write> ImageWriter<W> {
    /// Starts an image with its header.
    pub fn new(out: W, h: &ImageHeader) -> io::Result<ImageWriter<W>> {
        let mut w = ImageWriter {
            out,
            crc: 0,
            count: 0,
        };
        let cs = h.conf_state.write_to_bytes().map_err(io::Error::other)?;
        w.put(MAGIC)?;
        w.put(&h.index.to_le_bytes())?;
        w.put(&h.term.to_le_bytes())?;
        w.put(&h.current_rev.to_le_bytes())?;
        w.put(&h.compact_rev.to_le_bytes())?;
        w.put(&(cs.len() as u32).to_le_bytes())?;
        w.put(&cs)?;
        let members = h.membership.encode_to_vec();
        w.put(&(members.len() as u32).to_le_bytes())?;
        w.put(&members)?;
        let leases = h.leases.encode();
        w.put(&(leases.len() as u32).to_le_bytes())?;
        w.put(&leases)?;
        let auth = h.auth.encode_to_vec();
        w.put(&(auth.len() as u32).to_le_bytes())?;
        w.put(&auth)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.out.write_all(b)
    }

    /// Adds the version stored at `key` (16-byte revision) as `value`
    /// (an encoded `mvccpb.KeyValue`).
    pub fn raw_record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Ends the image; returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&END.to_le_bytes())?;
        let count = self.count;
        self.put(&count.to_le_bytes())?;
        let crc = self.crc;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Key of a version: main and sub revision, big-endian (sorts by revision).
pub fn revision_key(r: Revision) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(r.main as u64).to_be_bytes());
    k[8..].copy_from_slice(&(r.sub as u64).to_be_bytes());
    k
}

/// The revision a 16-byte key stands for.
pub fn parse_revision_key(k: &[u8]) -> Option<Revision> {
    let k: &[u8; 16] = k.try_into().ok()?;
    let (main, sub) = k.split_at(8);
    Some(Revision::new(
        u64::from_be_bytes(main.try_into().ok()?) as i64,
        u64::from_be_bytes(sub.try_into().ok()?) as i64,
    ))
}

/// An image being produced.
pub enum ImageJob {
    /// Encoded already (memory engine: the store is encoded on the spot).
    Ready(Vec<u8>),
    /// Being written to an unlinked temp file by a thread (rocksdb engine:
    /// streamed from a RocksDB snapshot while applying goes on).
    Writing(std::thread::JoinHandle<Result<std::io::BufWriter<std::fs::File>, StorageError>>),
}

impl ImageJob {
    /// The finished image as a readable, seekable stream, and its length.
    pub fn open(self) -> Result<(Box<dyn ReadSeek>, u64), String> {
        match self {
            ImageJob::Ready(bytes) => {
                let n = bytes.len() as u64;
                Ok((Box::new(io::Cursor::new(bytes)), n))
            }
            ImageJob::Writing(thread) => {
                let written = thread
                    .join()
                    .map_err(|_| "the image thread panicked".to_owned())?
                    .map_err(|e| e.to_string())?;
                let mut file = written.into_inner().map_err(|e| e.error().to_string())?;
                let len = file.seek(io::SeekFrom::End(0)).map_err(|e| e.to_string())?;
                file.seek(io::SeekFrom::Start(0))
                    .map_err(|e| e.to_string())?;
                Ok((Box::new(file), len))
            }
        }
    }
}

/// Read + Seek + Send, boxed.
pub trait ReadSeek: Read + io::Seek + Send {}
impl<T: Read + io::Seek + Send> ReadSeek for T {}

/// Hashes of an image's key-value state (Maintenance.Hash and HashKV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateHashes {
    /// CRC-32C of every stored version up to the asked revision, in
    /// revision order (revision key, then encoded `mvccpb.KeyValue`, as
    /// etcd hashes its key bucket): equal on every member and engine that
    /// holds the same versions.
    pub kv: u32,
    /// The same over every stored version.
    pub all: u32,
}

/// Reads a whole image, checking its checksum and every record's frame.
pub fn check<R: Read>(input: R) -> Result<(), StorageError> {
    let (_, mut reader) = ImageReader::new(input)?;
    while reader.next_raw()?.is_some() {}
    Ok(())
}

/// Reads a whole image and hashes its versions up to `rev` (0: all).
pub fn hash_image<R: Read>(input: R, rev: i64) -> Result<(ImageHeader, StateHashes), StorageError> {
    let (header, mut reader) = ImageReader::new(input)?;
    let upto = if rev <= 0 { i64::MAX } else { rev };
    let mut kv = crc32c::crc32c(b"key");
    let mut all = kv;
    while let Some((key, value)) = reader.next_raw()? {
        let r = parse_revision_key(&key).ok_or_else(|| bad("bad revision key"))?;
        all = crc32c::crc32c_append(crc32c::crc32c_append(all, &key), &value);
        if r.main <= upto {
            kv = crc32c::crc32c_append(crc32c::crc32c_append(kv, &key), &value);
        }
    }
    Ok((header, StateHashes { kv, all }))
}

/// A record as stored: 16-byte revision key, encoded `mvccpb.KeyValue`.
pub type RawRecord = ([u8; 16], Vec<u8>);

/// Reads an image: header first, then records until the trailer, whose
/// count and checksum are checked.
pub struct ImageReader<R: Read> {
    input: R,
    crc: u32,
    count: u64,
    done: bool,
}

impl<R: Read> ImageReader<R> {
    /// Reads the header.
    pub fn new(input: R) -> Result<(ImageHeader, ImageReader<R>), StorageError> {
        let mut r = ImageReader {
            input,
            crc: 0,
            count: 0,
            done: false,
        };
        let magic: [u8; 8] = r.array()?;
        if !magic.starts_with(MAGIC_PREFIX) {
            return Err(bad("not a MetaStore image (bad magic)"));
        }
        if &magic != MAGIC && &magic != MAGIC_V3 {
            let theirs = magic[7];
            let which = if theirs > VERSION {
                "a newer"
            } else {
                "an older"
            };
            return Err(bad(format!(
                "image format version {} is from {which} MetaStore; this one reads versions 3 and {}",
                theirs as char, VERSION as char
            )));
        }
        let index = u64::from_le_bytes(r.array()?);
        let term = u64::from_le_bytes(r.array()?);
        let current_rev = i64::from_le_bytes(r.array()?);
        let compact_rev = i64::from_le_bytes(r.array()?);
        let len = u32::from_le_bytes(r.array()?);
        if len > MAX_RECORD {
            return Err(bad("conf state too large"));
        }
        let cs = r.bytes(len as usize)?;
        let conf_state = crate::storage::raft_log::parse_bounded::<ConfState>(&cs)
            .map_err(|e| bad(format!("conf state: {e}")))?;
        let len = u32::from_le_bytes(r.array()?);
        if len > MAX_RECORD {
            return Err(bad("membership too large"));
        }
        let bytes = r.bytes(len as usize)?;
        let membership = metastorepb::Membership::decode(bytes.as_slice())
            .map_err(|e| bad(format!("membership: {e}")))?;
        let len = u32::from_le_bytes(r.array()?);
        if len > MAX_RECORD {
            return Err(bad("lease table too large"));
        }
        let bytes = r.bytes(len as usize)?;
        let leases = LeaseTable::decode(&bytes).map_err(|e| bad(format!("leases: {e}")))?;
        let auth = if &magic == MAGIC_V3 {
            metastorepb::AuthState::default()
        } else {
            let len = u32::from_le_bytes(r.array()?);
            if len > MAX_RECORD {
                return Err(bad("auth state too large"));
            }
            let bytes = r.bytes(len as usize)?;
            metastorepb::AuthState::decode(bytes.as_slice())
                .map_err(|e| bad(format!("auth: {e}")))?
        };
        let h = ImageHeader {
            index,
            term,
            conf_state,
            current_rev,
            compact_rev,
            membership,
            leases,
            auth,
        };
        Ok((h, r))
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        self.input
            .read_exact(buf)
            .map_err(|e| bad(format!("truncated: {e}")))?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StorageError> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    /// `n` bytes, in a buffer that grows with the bytes actually read: a
    /// damaged or hostile length (up to 64 MiB) costs no memory the input
    /// does not back.
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, StorageError> {
        let mut b = Vec::with_capacity(n.min(64 << 10));
        (&mut self.input)
            .take(n as u64)
            .read_to_end(&mut b)
            .map_err(|e| bad(format!("truncated: {e}")))?;
        if b.len() != n {
            return Err(bad(format!("truncated: {} of {n} bytes", b.len())));
        }
        self.crc = crc32c::crc32c_append(self.crc, &b);
        Ok(b)
    }

    /// The next record as (16-byte revision key, encoded KeyValue); None at
    /// the end, once the trailer checked out.
    pub fn next_raw(&mut self) -> Result<Option<RawRecord>, StorageError> {
        if self.done {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.array()?);
        if len == END {
            let count = u64::from_le_bytes(self.array()?);
            let want = self.crc;
            let mut crc = [0u8; 4];
            self.input
                .read_exact(&mut crc)
                .map_err(|e| bad(format!("truncated trailer: {e}")))?;
            if count != self.count {
                return Err(bad(format!(
                    "{} records where the trailer says {count}",
                    self.count
                )));
            }
            if u32::from_le_bytes(crc) != want {
                return Err(bad("checksum mismatch"));
            }
            self.done = true;
            return Ok(None);
        }
        if len > MAX_RECORD {
            return Err(bad(format!("record of {len} bytes")));
        }
        let key: [u8; 16] = self.array()?;
        let value = self.bytes(len as usize)?;
        self.count += 1;
        Ok(Some((key, value)))
    }
}

/// A raw record (see [`ImageReader::next_raw`]) as a stored version and its
/// sub revision.
fn decode_record(key: &[u8; 16], value: &[u8]) -> Result<(KeyValue, i64), StorageError> {
    let rev = parse_revision_key(key).ok_or_else(|| bad("bad revision key"))?;
    let kv = mvccpb::KeyValue::decode(value).map_err(|e| bad(format!("record at {rev:?}: {e}")))?;
    if kv.mod_revision != rev.main {
        return Err(bad(format!(
            "record at {rev:?} holds mod_revision {}",
            kv.mod_revision
        )));
    }
    Ok((kv.into(), rev.sub))
}

/// A stored version as the store sees it.
impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

/// The store's key state as the wire (and the stored record) carries it.
impl From<KeyValue> for mvccpb::KeyValue {
    fn from(kv: KeyValue) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

/// Encodes a stored version as its record value (`value` is shared, not
/// copied, until the encoding writes it).
pub fn encode_record(kv: &KeyValue, value: Bytes) -> Vec<u8> {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value,
        lease: kv.lease,
    }
    .encode_to_vec()
}

/// Writes the image of an in-memory store (values included) at `h`.
pub fn write_memory_image<W: Write>(store: &MemStore, h: &ImageHeader, out: W) -> io::Result<W> {
    let mut all = RecordSlice::default();
    store.export_slice(
        None,
        i64::MAX,
        store.compact_main_revision(),
        usize::MAX,
        &mut |v| all.push(v),
    );
    write_sorted(h, &[all], out)
}

/// Versions gathered key by key (as a store is walked), encoded as image
/// records into one buffer, to be written out in revision order by
/// [`write_sorted`].
#[derive(Debug, Default)]
pub struct RecordSlice {
    arena: Vec<u8>,
    /// Revision, start and end of each record in `arena`.
    records: Vec<(Revision, usize, usize)>,
}

impl RecordSlice {
    /// Adds a version.
    pub fn push(&mut self, v: VersionView<'_>) {
        let start = self.arena.len();
        encode_view(&v, &mut self.arena);
        self.records.push((v.rev, start, self.arena.len()));
    }

    /// Number of versions held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no version.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of memory it holds (records and their index).
    pub fn memory_bytes(&self) -> usize {
        self.arena.capacity()
            + self.records.capacity() * std::mem::size_of::<(Revision, usize, usize)>()
    }

    /// Each version's revision and encoded record, in the order pushed.
    pub fn records(&self) -> impl Iterator<Item = (Revision, &[u8])> + '_ {
        self.records.iter().map(|&(r, a, b)| (r, &self.arena[a..b]))
    }

    /// The encoded records, back to back.
    #[cfg(test)]
    pub fn bytes_for_tests(&self) -> &[u8] {
        &self.arena
    }
}

/// Encodes a version as the `mvccpb.KeyValue` of its record, byte for byte
/// what prost writes for [`encode_record`] (proto3: zero fields left out,
/// fields in number order), without building the message first.
fn encode_view(v: &VersionView<'_>, buf: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let bytes = |tag: u32, b: &[u8], buf: &mut Vec<u8>| {
        if !b.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(b.len() as u64, buf);
            buf.extend_from_slice(b);
        }
    };
    let int = |tag: u32, n: i64, buf: &mut Vec<u8>| {
        if n != 0 {
            encode_key(tag, WireType::Varint, buf);
            encode_varint(n as u64, buf);
        }
    };
    bytes(1, v.key, buf);
    int(2, v.create_revision, buf);
    int(3, v.rev.main, buf);
    int(4, v.version, buf);
    bytes(5, v.value, buf);
    int(6, v.lease, buf);
}

/// Writes an image of the versions in `slices`, in revision order.
pub fn write_sorted<W: Write>(h: &ImageHeader, slices: &[RecordSlice], out: W) -> io::Result<W> {
    let mut order: Vec<(Revision, u32, usize, usize)> =
        Vec::with_capacity(slices.iter().map(RecordSlice::len).sum());
    for (i, s) in slices.iter().enumerate() {
        order.extend(s.records.iter().map(|&(r, a, b)| (r, i as u32, a, b)));
    }
    order.sort_unstable_by_key(|o| o.0);
    let mut w = ImageWriter::new(out, h)?;
    for (rev, i, a, b) in order {
        w.raw_record(&revision_key(rev), &slices[i as usize].arena[a..b])?;
    }
    w.finish()
}

/// A read-write temporary file in `tmp_dir`, unlinked at once: it lives as
/// long as the image stream that reads it.
pub fn unlinked_temp(tmp_dir: &Path, name: &str) -> Result<std::fs::File, StorageError> {
    let path = tmp_dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| StorageError::io(format!("create {}", path.display()), e))?;
    std::fs::remove_file(&path)
        .map_err(|e| StorageError::io(format!("unlink {}", path.display()), e))?;
    Ok(file)
}

/// Reads a whole image into an in-memory store (`keep_values` as in
/// [`MemStore::index_only`]), checking every history.
pub fn read_into_store<R: Read>(
    input: R,
    keep_values: bool,
) -> Result<(ImageHeader, MemStore), StorageError> {
    read_into_store_and(input, keep_values, |_, _| Ok(()))
}

/// [`read_into_store`], handing each raw record to `also` as it goes (the
/// rocksdb engine writes them into table files in the same pass).
pub fn read_into_store_and<R: Read>(
    input: R,
    keep_values: bool,
    mut also: impl FnMut(&[u8; 16], &[u8]) -> Result<(), StorageError>,
) -> Result<(ImageHeader, MemStore), StorageError> {
    let (h, mut r) = ImageReader::new(input)?;
    let mut rebuild = Rebuild::new(keep_values);
    while let Some((key, value)) = r.next_raw()? {
        let (kv, sub) = decode_record(&key, &value)?;
        rebuild.push(kv, sub).map_err(|e| bad(e.to_string()))?;
        also(&key, &value)?;
    }
    let store = rebuild
        .finish(h.current_rev, h.compact_rev)
        .map_err(|e| bad(e.to_string()))?;
    Ok((h, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::engine::{AppliedPoint, KvEngine};
    use crate::storage::RangeOptions;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sample() -> MemStore {
        let mut s = MemStore::new();
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b""), (b"a", b"22")] {
            let mut t = s.write();
            t.put(k, v.to_vec().into(), 0);
            t.end();
        }
        let mut t = s.write();
        t.put(b"\x00\xff", vec![7; 200].into(), -3);
        t.delete_range(b"b", b"");
        t.end();
        let mut t = s.write();
        t.put(b"b", b"again".to_vec().into(), 0);
        t.end();
        s
    }

    fn image(s: &MemStore) -> Vec<u8> {
        let mut leases = LeaseTable::default();
        leases.insert(
            -3,
            crate::storage::leases::LeaseEntry {
                ttl: 60,
                remaining: 12,
            },
        );
        let point = AppliedPoint {
            index: 9,
            term: 2,
            membership: metastorepb::Membership {
                cluster_id: 5,
                ..Default::default()
            },
            leases,
            ..Default::default()
        };
        let h = point.header(s.current_revision(), s.compact_main_revision());
        write_memory_image(s, &h, Vec::new()).unwrap()
    }

    #[test]
    fn a_store_round_trips_through_its_image() {
        let empty = MemStore::new();
        assert_eq!(
            read_into_store(image(&empty).as_slice(), true).unwrap().1,
            empty
        );
        let mut s = sample();
        let (h, d) = read_into_store(image(&s).as_slice(), true).unwrap();
        assert_eq!((h.index, h.term, h.membership.cluster_id), (9, 2, 5));
        assert_eq!(
            h.leases.get(-3).map(|l| (l.ttl, l.remaining)),
            Some((60, 12)),
            "the lease table travels with the image"
        );
        assert_eq!(d, s);
        assert_eq!(d.approximate_size_bytes(), s.approximate_size_bytes());
        s.compact(4).unwrap();
        let (_, mut d) = read_into_store(image(&s).as_slice(), true).unwrap();
        assert_eq!(d, s);
        let at3 = RangeOptions {
            rev: 3,
            ..Default::default()
        };
        assert!(KvEngine::range(&d, b"a", b"", &at3).is_err(), "compacted");
        // The rebuilt store keeps working.
        let mut t = d.write();
        t.put(b"c", b"1".to_vec().into(), 0);
        assert_eq!(t.end().0, s.current_revision() + 1);
    }

    /// An image from before auth (version 3: no auth section) loads as a
    /// store whose auth was never used; the same image with auth carries it.
    #[test]
    fn version_3_images_load_without_auth() {
        let s = sample();
        let v4 = image(&s);
        // The header ends after the leases: find its length field.
        let mut at = 8 + 32;
        for _ in 0..3 {
            let len = u32::from_le_bytes(v4[at..at + 4].try_into().unwrap()) as usize;
            at += 4 + len;
        }
        assert_eq!(&v4[at..at + 4], &[0; 4], "an empty auth section");
        let mut v3 = MAGIC_V3.to_vec();
        v3.extend_from_slice(&v4[8..at]);
        v3.extend_from_slice(&v4[at + 4..v4.len() - 4]);
        let crc = crc32c::crc32c(&v3);
        v3.extend_from_slice(&crc.to_le_bytes());
        let (h, d) = read_into_store(v3.as_slice(), true).unwrap();
        assert_eq!(d, s);
        assert_eq!(h.auth, metastorepb::AuthState::default());
        // With auth in the header, it comes back.
        let mut point = AppliedPoint::default();
        point.auth.enabled = true;
        point.auth.revision = 7;
        let h = point.header(s.current_revision(), s.compact_main_revision());
        let bytes = write_memory_image(&s, &h, Vec::new()).unwrap();
        let (h, _) = read_into_store(bytes.as_slice(), true).unwrap();
        assert_eq!((h.auth.enabled, h.auth.revision), (true, 7));
    }

    #[test]
    fn images_of_other_versions_are_refused_saying_which() {
        let mut old = image(&sample());
        old[7] = b'2';
        let e = read_into_store(old.as_slice(), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2 is from an older MetaStore"), "{e}");
        let mut new = image(&sample());
        new[7] = b'5';
        let e = read_into_store(new.as_slice(), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 5 is from a newer MetaStore"), "{e}");
        let e = read_into_store(&b"SQLite format 3\0"[..], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a MetaStore image"), "{e}");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let buf = image(&sample());
        for n in 0..buf.len() {
            assert!(read_into_store(&buf[..n], true).is_err(), "length {n}");
        }
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(read_into_store(b.as_slice(), true).is_err(), "bit {bit}");
        }
    }

    /// Records with a valid checksum but garbage inside: an error, never a
    /// panic, and no allocation sized by a garbage length.
    #[test]
    fn garbage_records_under_a_valid_checksum_are_refused() {
        let h = AppliedPoint::default().header(5, -1);
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..2000 {
            let mut w = ImageWriter::new(Vec::new(), &h).unwrap();
            for _ in 0..rng.gen_range(1..4) {
                let key: [u8; 16] = rng.gen();
                let value: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
                w.raw_record(&key, &value).unwrap();
            }
            let bytes = w.finish().unwrap();
            if let Ok((_, s)) = read_into_store(bytes.as_slice(), true) {
                // Whatever decodes is a consistent store.
                let _ = KvEngine::range(&s, b"", &[0], &RangeOptions::default());
            }
        }
        let mut huge = ImageWriter::new(Vec::new(), &h).unwrap().finish().unwrap();
        // A record length far beyond the input.
        let at = huge.len() - 16;
        huge.splice(at..at, 0x7fff_fff0u32.to_le_bytes());
        assert!(read_into_store(huge.as_slice(), true).is_err());
    }

    /// A valid image of a few records: the seed the hostile inputs grow from.
    fn seed_image() -> Vec<u8> {
        write_memory_image(
            &sample(),
            &AppliedPoint::default().header(3, -1),
            Vec::new(),
        )
        .unwrap()
    }

    /// Reads `bytes` every way the member does (restore, a received
    /// snapshot's check, HashKV of an image): the largest allocation made.
    fn read_every_way(bytes: &[u8]) -> usize {
        let (_, largest) = crate::storage::alloc_probe::largest_allocation(|| {
            let _ = read_into_store(bytes, true);
            let _ = hash_image(bytes, 0);
            if let Ok((_, mut r)) = ImageReader::new(bytes) {
                while let Ok(Some(_)) = r.next_raw() {}
            }
        });
        largest
    }

    /// A header whose first length field claims 60 MiB, with 10 bytes
    /// behind it: refused without allocating the claimed size (it did).
    #[test]
    fn a_claimed_length_is_not_allocated_before_its_bytes() {
        let image = seed_image();
        // magic, index, term, current and compact revision: 40 bytes.
        let mut bytes = image[..40].to_vec();
        bytes.extend_from_slice(&(60u32 << 20).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 10]);
        assert!(read_into_store(bytes.as_slice(), true).is_err());
        let largest = read_every_way(&bytes);
        assert!(
            largest < 1 << 20,
            "allocated {largest} bytes for a 54-byte input"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// A prefix of a valid image, then anything, or a valid image with
        /// a few bytes changed: an error or a store, never a panic, and no
        /// allocation the input does not back.
        #[test]
        fn hostile_images_never_panic_or_overallocate(
            keep in 0usize..400,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            pokes in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                0..6,
            ),
        ) {
            let image = seed_image();
            let mut bytes = image[..keep.min(image.len())].to_vec();
            bytes.extend_from_slice(&tail);
            let mut poked = image.clone();
            for (at, b) in pokes {
                let n = poked.len();
                poked[at % n] = b;
            }
            for input in [bytes, poked] {
                let largest = read_every_way(&input);
                proptest::prop_assert!(
                    largest <= crate::storage::alloc_probe::bound(input.len()),
                    "{largest} bytes allocated for {} bytes of input",
                    input.len()
                );
            }
        }
    }
}
