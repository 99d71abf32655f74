//! Snapshot encoding of the whole store.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "MSKV" | format u8 (=1) | crc32c(body) u32 | body length u64 | body
//! body    = current_rev zz | compact_rev zz | key count uv | key*
//! key     = key length uv | key bytes | version count uv | version*
//! version = main zz | sub zz | version zz
//!           [ create_revision zz | lease zz | value length uv | value bytes ]
//! ```
//!
//! `uv` is an unsigned LEB128 varint, `zz` a zigzag-encoded one; the
//! bracketed part is absent for tombstones (version 0). Decoding checks the
//! checksum and then every store invariant, so a snapshot that decodes is as
//! consistent as a store built by writes.

use std::collections::BTreeMap;

use super::history::{KeyHistory, Version};
use super::revision::Revision;
use super::store::{key_size, MemStore};
use super::{KeyValue, MvccError};

const MAGIC: &[u8; 4] = b"MSKV";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 4 + 8;

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn corrupt(what: &str) -> MvccError {
    MvccError::CorruptSnapshot(what.to_string())
}

/// Bounds-checked cursor over the body; every read can fail, none can panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn uvarint(&mut self, what: &str) -> Result<u64, MvccError> {
        let mut v = 0u64;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(corrupt(what));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(v);
            }
        }
        Err(corrupt(what))
    }

    fn varint(&mut self, what: &str) -> Result<i64, MvccError> {
        let u = self.uvarint(what)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A length that must fit in what is left of the input, so a corrupt
    /// length cannot trigger a huge allocation.
    fn len(&mut self, what: &str) -> Result<usize, MvccError> {
        let n = self.uvarint(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.buf.len() => Ok(n),
            _ => Err(corrupt(what)),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], MvccError> {
        let n = self.len(what)?;
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }
}

impl MemStore {
    /// Appends the full store state to `out` (see the module docs for the
    /// format).
    pub fn encode_snapshot(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(HEADER_LEN + self.size_bytes as usize / 2);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&[0; 12]); // crc and length, patched below
        let body_start = out.len();
        put_varint(out, self.current_rev);
        put_varint(out, self.compact_rev);
        put_uvarint(out, self.keys.len() as u64);
        for (k, h) in &self.keys {
            put_bytes(out, k);
            put_uvarint(out, h.versions().len() as u64);
            for v in h.versions() {
                put_varint(out, v.rev.main);
                put_varint(out, v.rev.sub);
                put_varint(out, v.version);
                if !v.is_tombstone() {
                    put_varint(out, v.create_revision);
                    put_varint(out, v.lease);
                    put_bytes(out, &v.value);
                }
            }
        }
        let crc = crc32c::crc32c(&out[body_start..]);
        let body_len = (out.len() - body_start) as u64;
        out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
        out[start + 9..start + 17].copy_from_slice(&body_len.to_le_bytes());
    }

    /// Rebuilds a store from `encode_snapshot` output, rejecting anything
    /// truncated, corrupt or inconsistent with [`MvccError::CorruptSnapshot`].
    pub fn decode_snapshot(bytes: &[u8]) -> Result<MemStore, MvccError> {
        if bytes.len() < HEADER_LEN {
            return Err(corrupt("truncated header"));
        }
        let (header, body) = bytes.split_at(HEADER_LEN);
        if &header[..4] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if header[4] != FORMAT_VERSION {
            return Err(corrupt(&format!("unknown format version {}", header[4])));
        }
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&header[5..9]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[9..17]);
        if u64::from_le_bytes(len) != body.len() as u64 {
            return Err(corrupt("body length mismatch"));
        }
        if u32::from_le_bytes(crc) != crc32c::crc32c(body) {
            return Err(corrupt("checksum mismatch"));
        }
        decode_body(body)
    }
}

fn decode_body(body: &[u8]) -> Result<MemStore, MvccError> {
    let mut r = Reader { buf: body };
    let current_rev = r.varint("current revision")?;
    let compact_rev = r.varint("compacted revision")?;
    if current_rev < 1 || compact_rev < -1 || compact_rev > current_rev {
        return Err(corrupt("revisions out of range"));
    }
    let nkeys = r.uvarint("key count")?;
    let mut entries: Vec<(Box<[u8]>, KeyHistory)> = Vec::new();
    let mut live_keys = 0usize;
    let mut size_bytes = 0u64;
    for _ in 0..nkeys {
        // Every key takes at least four bytes, so this loop cannot outlive
        // the input by much even when the count is garbage.
        let key = r.bytes("key")?;
        if entries.last().is_some_and(|(prev, _)| **prev >= *key) {
            return Err(corrupt("keys not strictly ascending"));
        }
        let nversions = r.len("version count")?;
        if nversions == 0 {
            return Err(corrupt("key without versions"));
        }
        let mut versions: Vec<Version> = Vec::with_capacity(nversions);
        for _ in 0..nversions {
            let main = r.varint("main revision")?;
            let sub = r.varint("sub revision")?;
            let version = r.varint("version")?;
            let v = if version == 0 {
                Version::tombstone(Revision::new(main, sub))
            } else {
                Version {
                    rev: Revision::new(main, sub),
                    create_revision: r.varint("create revision")?,
                    version,
                    lease: r.varint("lease")?,
                    value: r.bytes("value")?.into(),
                }
            };
            check_version(&v, versions.last(), current_rev)?;
            versions.push(v);
        }
        // Compaction at C leaves at most one version at or below C, live.
        if versions.get(1).is_some_and(|v| v.rev.main <= compact_rev)
            || (versions[0].rev.main <= compact_rev && versions[0].is_tombstone())
        {
            return Err(corrupt("history older than the compacted revision"));
        }
        let h = KeyHistory::from_versions(versions);
        live_keys += usize::from(h.latest_live().is_some());
        size_bytes += key_size(key) + h.size();
        entries.push((key.into(), h));
    }
    if !r.buf.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(MemStore {
        // Input is sorted, so this bulk-builds the tree in linear time.
        keys: BTreeMap::from_iter(entries),
        current_rev,
        compact_rev,
        live_keys,
        size_bytes,
        record_events: true,
        keep_values: true,
    })
}

/// Rebuilds a store from versions fed one by one in revision order (as an
/// engine that keeps every version under its revision reads them back),
/// checking every history as `decode_snapshot` does.
pub struct Rebuild {
    store: MemStore,
    last: Revision,
}

impl Rebuild {
    /// Starts an empty store; `keep_values` as in [`MemStore::index_only`].
    pub fn new(keep_values: bool) -> Rebuild {
        let mut store = MemStore::new();
        store.keep_values = keep_values;
        Rebuild {
            store,
            last: Revision::default(),
        }
    }

    /// Adds one stored version: `kv.version == 0` is a tombstone;
    /// `kv.mod_revision` with `sub` is where it was written. Revisions must
    /// strictly increase from call to call.
    pub fn push(&mut self, kv: KeyValue, sub: i64) -> Result<(), MvccError> {
        let rev = Revision::new(kv.mod_revision, sub);
        if rev <= self.last {
            return Err(corrupt("revisions not strictly ascending"));
        }
        self.last = rev;
        let v = if kv.version == 0 {
            Version::tombstone(rev)
        } else {
            Version {
                rev,
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                value: if self.store.keep_values {
                    kv.value.into_boxed_slice()
                } else {
                    Box::default()
                },
            }
        };
        let store = &mut self.store;
        match store.keys.get_mut(kv.key.as_slice()) {
            Some(h) => {
                check_version(&v, h.versions().last(), i64::MAX)?;
                let was_live = h.latest_live().is_some();
                store.size_bytes += v.size();
                let live = !v.is_tombstone();
                h.push(v);
                match (was_live, live) {
                    (false, true) => store.live_keys += 1,
                    (true, false) => store.live_keys -= 1,
                    _ => {}
                }
            }
            None => {
                check_version(&v, None, i64::MAX)?;
                store.size_bytes += key_size(&kv.key) + v.size();
                store.live_keys += usize::from(!v.is_tombstone());
                store
                    .keys
                    .insert(kv.key.into_boxed_slice(), KeyHistory::with_first(v));
            }
        }
        Ok(())
    }

    /// The store at `current_rev`, compacted at `compact_rev` (-1: never).
    pub fn finish(self, current_rev: i64, compact_rev: i64) -> Result<MemStore, MvccError> {
        let mut store = self.store;
        if current_rev < 1
            || compact_rev < -1
            || compact_rev > current_rev
            || self.last.main > current_rev
        {
            return Err(corrupt("revisions out of range"));
        }
        for h in store.keys.values() {
            let vs = h.versions();
            if vs.get(1).is_some_and(|v| v.rev.main <= compact_rev)
                || (vs[0].rev.main <= compact_rev && vs[0].is_tombstone())
            {
                return Err(corrupt("history older than the compacted revision"));
            }
        }
        store.current_rev = current_rev;
        store.compact_rev = compact_rev;
        Ok(store)
    }
}

/// Checks `v` against the version before it in the same key's history.
fn check_version(v: &Version, prev: Option<&Version>, current_rev: i64) -> Result<(), MvccError> {
    // The first write of any store is revision 2.
    if v.rev.main < 2 || v.rev.main > current_rev || v.rev.sub < 0 {
        return Err(corrupt("revision out of range"));
    }
    if prev.is_some_and(|p| p.rev >= v.rev) {
        return Err(corrupt("versions not strictly ascending"));
    }
    let ok = if v.is_tombstone() {
        prev.is_some_and(|p| !p.is_tombstone())
    } else {
        match prev {
            Some(p) if !p.is_tombstone() => {
                v.version == p.version.wrapping_add(1) && v.create_revision == p.create_revision
            }
            Some(_) => v.version == 1 && v.create_revision == v.rev.main,
            // The first retained version may be mid-generation after compaction.
            None => {
                v.version > 0
                    && v.create_revision >= 2
                    && v.create_revision <= v.rev.main
                    && (v.version > 1 || v.create_revision == v.rev.main)
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(corrupt("inconsistent version history"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::tests::put1;
    use super::super::RangeOptions;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sample() -> MemStore {
        let mut s = MemStore::new();
        put1(&mut s, b"a", b"1");
        put1(&mut s, b"b", b"");
        put1(&mut s, b"a", b"22");
        let mut t = s.write();
        t.put(b"\x00\xff", vec![7; 200], -3);
        t.delete_range(b"b", b"");
        t.end();
        put1(&mut s, b"b", b"again");
        s
    }

    fn encode(s: &MemStore) -> Vec<u8> {
        let mut buf = Vec::new();
        s.encode_snapshot(&mut buf);
        buf
    }

    #[test]
    fn roundtrip_empty_and_populated() {
        let empty = MemStore::new();
        assert_eq!(MemStore::decode_snapshot(&encode(&empty)).unwrap(), empty);
        let mut s = sample();
        let d = MemStore::decode_snapshot(&encode(&s)).unwrap();
        assert_eq!(d, s);
        assert_eq!(d.approximate_size_bytes(), s.approximate_size_bytes());
        s.compact(4).unwrap();
        let d = MemStore::decode_snapshot(&encode(&s)).unwrap();
        assert_eq!(d, s);
        assert_eq!(d.compacted_revision(), 4);
        assert_eq!(
            d.range(
                b"a",
                b"",
                &RangeOptions {
                    rev: 3,
                    ..Default::default()
                }
            ),
            Err(MvccError::Compacted)
        );
        // The decoded store keeps working.
        let mut d = d;
        assert_eq!(put1(&mut d, b"c", b"1"), put1(&mut s, b"c", b"1"));
        assert_eq!(d, s);
    }

    #[test]
    fn encode_appends() {
        let s = sample();
        let mut buf = b"prefix".to_vec();
        s.encode_snapshot(&mut buf);
        assert_eq!(MemStore::decode_snapshot(&buf[6..]).unwrap(), s);
    }

    #[test]
    fn rejects_every_truncation() {
        let buf = encode(&sample());
        for n in 0..buf.len() {
            assert!(
                matches!(
                    MemStore::decode_snapshot(&buf[..n]),
                    Err(MvccError::CorruptSnapshot(_))
                ),
                "length {n}"
            );
        }
        let mut long = buf.clone();
        long.push(0);
        assert!(MemStore::decode_snapshot(&long).is_err());
    }

    #[test]
    fn rejects_bit_flips() {
        let buf = encode(&sample());
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    MemStore::decode_snapshot(&b),
                    Err(MvccError::CorruptSnapshot(_))
                ),
                "bit {bit}"
            );
        }
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let mut b = buf.clone();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            if b != buf {
                assert!(MemStore::decode_snapshot(&b).is_err());
            }
        }
    }

    /// Re-seals a body with a valid header so the parser itself is exercised.
    fn seal(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn parser_survives_garbage_with_valid_checksum() {
        let buf = encode(&sample());
        let body = &buf[HEADER_LEN..];
        assert!(MemStore::decode_snapshot(&seal(body)).is_ok());
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..5000 {
            let mut b = body.to_vec();
            match rng.gen_range(0..3) {
                0 => {
                    for _ in 0..rng.gen_range(1..4) {
                        let i = rng.gen_range(0..b.len());
                        b[i] = rng.gen();
                    }
                }
                1 => b.truncate(rng.gen_range(0..b.len())),
                _ => {
                    b = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
                }
            }
            // Must return, never panic; a decoded store must be self-consistent.
            if let Ok(s) = MemStore::decode_snapshot(&seal(&b)) {
                assert_eq!(s.recount(), (s.live_keys, s.size_bytes));
                let _ = s.range(b"", &[0], &RangeOptions::default());
            }
        }
        // Huge counts and lengths are refused without allocating for them.
        let mut b = Vec::new();
        put_varint(&mut b, 5);
        put_varint(&mut b, -1);
        put_uvarint(&mut b, u64::MAX);
        put_bytes(&mut b, b"k");
        put_uvarint(&mut b, u64::MAX);
        assert!(MemStore::decode_snapshot(&seal(&b)).is_err());
        let mut b = Vec::new();
        b.extend_from_slice(&[0xff; 11]);
        assert!(MemStore::decode_snapshot(&seal(&b)).is_err());
    }

    #[test]
    fn rejects_inconsistent_history() {
        // A well-formed body whose second put forgot to bump the version.
        let mut b = Vec::new();
        put_varint(&mut b, 3);
        put_varint(&mut b, -1);
        put_uvarint(&mut b, 1);
        put_bytes(&mut b, b"k");
        put_uvarint(&mut b, 2);
        for main in [2, 3] {
            put_varint(&mut b, main);
            put_varint(&mut b, 0);
            put_varint(&mut b, 1);
            put_varint(&mut b, 2);
            put_varint(&mut b, 0);
            put_bytes(&mut b, b"v");
        }
        assert!(matches!(
            MemStore::decode_snapshot(&seal(&b)),
            Err(MvccError::CorruptSnapshot(_))
        ));
    }
}
