//! A Range read a slice at a time and answered as the wire's bytes.
//!
//! A large Range (100,000 keys, 29 MiB at a million keys) held the apply
//! thread for 130-450 ms in one turn, and its answer was built as KeyValue
//! structs, then encoded again into one buffer, both alive at once. Here the
//! range is read at one revision in slices (on the apply thread: at most
//! 1,024 keys, about 1 MiB and about 1 ms each, [`Slices::APPLY`]);
//! each slice is encoded at once into the bytes that RangeResponse's `kvs`
//! fields have on the wire, and its structs dropped. The caller yields the
//! thread between slices (the ApplyActor: one slice per turn), and the gRPC
//! layer sends the bytes as they are, without copying them into one message.
//!
//! What a slice needs from the store at a revision stays there until the
//! read ends as long as no compaction above that revision is applied in
//! between: the ApplyActor finishes such reads before it applies one.
//!
//! Where values are costly to read (rocksdb: a point read per value, about
//! 3 µs each), a slice walks only the key index on the apply thread and
//! leaves its values to a [`Fill`] ([`KvEngine::range_later`]): the slice
//! becomes an [`Unfilled`] chunk that another thread reads and encodes
//! ([`Unfilled::encode`]), while the apply thread goes on.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{range_in, to_pb};
use crate::error::ApiError;
use crate::proto::etcdserverpb::{range_request, RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb;
use crate::storage::engine::{Fill, KvEngine};
use crate::storage::{KeyValue, RangeOptions};

/// How much one slice reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slices {
    /// Keys read, at most.
    pub keys: usize,
    /// Keys of the index a slice that only counts goes over, at most.
    pub count_keys: usize,
    /// The time a slice aims at (`None`: keys and bytes only).
    pub time: Option<Duration>,
}

impl Slices {
    /// The apply thread's: at most 1,024 keys, and about 1 MiB and 1 ms a
    /// slice (a slice of 1,024 keys took about 1 ms on the memory engine
    /// and 3 ms on rocksdb, where a put waiting for a few such turns took
    /// 8 ms instead of 2); a count goes over tens of thousands of keys in
    /// that time.
    pub const APPLY: Slices = Slices {
        keys: 1024,
        count_keys: 1 << 20,
        time: Some(Duration::from_millis(1)),
    };

    /// At most `keys` keys (and about 1 MiB) a slice, read or counted,
    /// whatever the time.
    pub const fn keys(keys: usize) -> Slices {
        Slices {
            keys,
            count_keys: keys,
            time: None,
        }
    }
}

/// Keys of the index the first slice that counts goes over, at most (the
/// next ones aim at the slices' time).
const FIRST_COUNT_KEYS: usize = 16 << 10;

/// Encoded bytes a slice aims at: large values make slices of fewer keys.
const SLICE_BYTES: usize = 1 << 20;
/// Keys read in one slice, at least.
const MIN_SLICE_KEYS: usize = 16;

/// A Range's answer as the wire's bytes: RangeResponse but its header.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireRange {
    /// The header's revision: the store's when the read began.
    pub revision: i64,
    /// The encoded `kvs` fields (field 2), in key order, in chunks.
    pub kvs: Vec<Bytes>,
    /// The limit cut the answer short.
    pub more: bool,
    /// Keys in the range, ignoring the limit.
    pub count: i64,
}

impl WireRange {
    /// The answer of a Range read whole.
    fn from_response(resp: RangeResponse) -> WireRange {
        WireRange {
            revision: resp.header.map_or(0, |h| h.revision),
            kvs: encode_kvs(&resp.kvs).into_iter().collect(),
            more: resp.more,
            count: resp.count,
        }
    }

    /// The answer as the RangeResponse it encodes (its header has the
    /// revision only): for callers that need the structs (the JSON gateway).
    pub fn decode(self) -> Result<RangeResponse, prost::DecodeError> {
        use prost::Message;
        let header = ResponseHeader {
            revision: self.revision,
            ..Default::default()
        };
        RangeResponse::decode(&self.encode(&header)[..])
    }

    /// The RangeResponse with `header`, encoded in one buffer.
    pub fn encode(&self, header: &ResponseHeader) -> Vec<u8> {
        let (before, after) = self.around(header);
        let mut buf = Vec::with_capacity(before.len() + self.kvs_len() + after.len());
        buf.extend_from_slice(&before);
        for c in &self.kvs {
            buf.extend_from_slice(c);
        }
        buf.extend_from_slice(&after);
        buf
    }

    /// Bytes of the `kvs` fields.
    pub fn kvs_len(&self) -> usize {
        self.kvs.iter().map(Bytes::len).sum()
    }

    /// What goes before and after the `kvs` fields in the RangeResponse
    /// with `header`, in prost's field order (header, kvs, more, count):
    /// `before + kvs + after` is that RangeResponse encoded.
    pub fn around(&self, header: &ResponseHeader) -> (Bytes, Bytes) {
        use prost::encoding;
        let mut before = BytesMut::with_capacity(encoding::message::encoded_len(1, header));
        encoding::message::encode(1, header, &mut before);
        let mut after = BytesMut::with_capacity(24);
        if self.more {
            encoding::bool::encode(3, &self.more, &mut after);
        }
        if self.count != 0 {
            encoding::int64::encode(4, &self.count, &mut after);
        }
        (before.freeze(), after.freeze())
    }
}

/// `kvs` as RangeResponse's field 2 on the wire, in one buffer of exactly
/// their size (none for no kvs).
fn encode_kvs(kvs: &[mvccpb::KeyValue]) -> Option<Bytes> {
    use prost::encoding::message;
    if kvs.is_empty() {
        return None;
    }
    let len = kvs.iter().map(|kv| message::encoded_len(2, kv)).sum();
    let mut buf = BytesMut::with_capacity(len);
    for kv in kvs {
        message::encode(2, kv, &mut buf);
    }
    Some(buf.freeze())
}

/// A slice's kvs whose values are still to be read (see the module's
/// comment).
#[derive(Debug)]
pub struct Unfilled {
    kvs: Vec<KeyValue>,
    fill: Fill,
}

impl Unfilled {
    /// Reads the values and encodes the kvs as RangeResponse's `kvs`
    /// fields (on any thread).
    pub fn encode(mut self) -> Result<Option<Bytes>, ApiError> {
        self.fill.run(&mut self.kvs)?;
        let pbs: Vec<mvccpb::KeyValue> = self.kvs.into_iter().map(to_pb).collect();
        Ok(encode_kvs(&pbs))
    }
}

/// A piece of a Range's answer, in key order.
#[derive(Debug)]
pub enum Chunk {
    /// `kvs` fields on the wire.
    Encoded(Bytes),
    /// Kvs whose values are still to be read.
    Unfilled(Unfilled),
}

impl Chunk {
    /// The chunk's bytes (reading the values first if they are not yet).
    pub fn encode(self) -> Result<Option<Bytes>, ApiError> {
        match self {
            Chunk::Encoded(b) => Ok(Some(b)),
            Chunk::Unfilled(u) => u.encode(),
        }
    }
}

/// A Range being read a slice at a time (see the module's comment).
///
/// Its kvs are read first, a slice at a time. A limited Range's count is
/// every key of the range: if the limit cut the kvs short, the keys after
/// them are counted next, also a slice at a time (a LIST's first page of a
/// million keys went over all of them in one turn, 35-40 ms), unless the
/// page before left that count ([`KvEngine::page_count`]).
#[derive(Debug)]
pub struct SlicedRange {
    /// Where the next slice starts.
    from: Vec<u8>,
    end: Vec<u8>,
    /// The revision every slice reads at.
    rev: i64,
    keys_only: bool,
    /// The request's limit (`usize::MAX`: none).
    limit: usize,
    /// Kvs to read in all: the limit and one more (to tell `more`), or all.
    want: usize,
    /// Kvs read so far.
    fetched: usize,
    /// The keys of the last two kvs read (what the next page may start
    /// after).
    last_keys: [Vec<u8>; 2],
    /// The whole range's count, when the page before left it.
    counted: Option<i64>,
    /// The kvs are read; the keys after them are being counted.
    counting: bool,
    /// Keys counted after the kvs read.
    tail: i64,
    /// Keys the next slice reads, and the index keys the next count slice
    /// goes over.
    slice: usize,
    count_slice: usize,
    /// How much slices read at most, and the time they aim at.
    most: Slices,
    done: bool,
    /// The answer but its kvs.
    out: WireRange,
    /// The kvs read and not yet taken, in key order.
    chunks: Vec<Chunk>,
}

impl SlicedRange {
    /// Starts `r` on `store` and reads its first slice (of `slices.keys`
    /// keys). A Range that must be read whole first (sorted, filtered) is
    /// read whole now and comes back done.
    pub fn start<E: KvEngine>(
        store: &E,
        r: &RangeRequest,
        slices: Slices,
    ) -> Result<SlicedRange, ApiError> {
        start_in(store, r, slices)
    }

    /// Reads (or counts) the next slice from `store`.
    pub fn step<E: KvEngine>(&mut self, store: &E) -> Result<(), ApiError> {
        if self.done {
            Ok(())
        } else if self.counting {
            self.count_slice(store)
        } else {
            self.read_slice(store)
        }
    }

    /// Read to its end: [`SlicedRange::finish`] has the answer.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The revision the slices read at.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Whether some kvs read and not yet taken wait for their values.
    pub fn has_unfilled(&self) -> bool {
        self.chunks.iter().any(|c| matches!(c, Chunk::Unfilled(_)))
    }

    /// The kvs read since the last call, in key order: a caller that takes
    /// them puts them before those it takes next.
    pub fn take_chunks(&mut self) -> Vec<Chunk> {
        std::mem::take(&mut self.chunks)
    }

    /// The answer (complete once [`SlicedRange::is_done`]), with the kvs
    /// not taken: values still to be read are read here.
    pub fn finish(self) -> Result<WireRange, ApiError> {
        let mut out = self.out;
        for chunk in self.chunks {
            out.kvs.extend(chunk.encode()?);
        }
        Ok(out)
    }

    /// The next `n` (at most) kvs from where the last slice stopped.
    fn read_slice<E: KvEngine>(&mut self, store: &E) -> Result<(), ApiError> {
        let started = Instant::now();
        let n = self.slice.min(self.want - self.fetched);
        let opts = RangeOptions {
            limit: i64::try_from(n).unwrap_or(i64::MAX),
            rev: self.rev,
            count_only: false,
            keys_only: self.keys_only,
            uncounted: true,
        };
        let (rr, fill) = store.range_later(&self.from, &self.end, &opts)?;
        let got = rr.kvs.len();
        for kv in rr.kvs.iter().skip(got.saturating_sub(2)) {
            self.last_keys.swap(0, 1);
            self.last_keys[1].clone_from(&kv.key);
        }
        if let Some(last) = rr.kvs.last() {
            self.from = [&last.key[..], &[0]].concat();
        }
        // The kv after the limit only tells `more`.
        let keep = got.min(self.limit.saturating_sub(self.fetched));
        self.fetched += got;
        let mut kvs = rr.kvs;
        kvs.truncate(keep);
        let mut next = self.most.keys;
        match fill {
            // Values to read elsewhere: the time this slice took is the
            // walk of the key index.
            Some(fill) if keep > 0 => self.chunks.push(Chunk::Unfilled(Unfilled { kvs, fill })),
            Some(_) => {}
            None => {
                let pbs: Vec<mvccpb::KeyValue> = kvs.into_iter().map(to_pb).collect();
                if let Some(chunk) = encode_kvs(&pbs) {
                    // Fewer keys per slice for large values.
                    next = next.min(SLICE_BYTES / (chunk.len() / keep).max(1));
                    self.chunks.push(Chunk::Encoded(chunk));
                }
            }
        }
        if let Some(aimed) = self.aimed(started, got) {
            next = next.min(aimed);
        }
        self.slice = next.clamp(MIN_SLICE_KEYS.min(self.most.keys), self.most.keys);
        if got < n || self.end.is_empty() {
            // The range is through: its count is what was read.
            self.end(store);
        } else if self.fetched >= self.want {
            if self.counted.is_some() {
                self.end(store);
            } else {
                // The limit cut it short: count the rest.
                self.counting = true;
            }
        }
        Ok(())
    }

    /// Counts the keys of the next slice of the index.
    fn count_slice<E: KvEngine>(&mut self, store: &E) -> Result<(), ApiError> {
        let started = Instant::now();
        let max = self.count_slice;
        let (n, next) = store.count_slice(&self.from, &self.end, self.rev, max)?;
        self.tail += n;
        if let Some(aimed) = self.aimed(started, max) {
            self.count_slice = aimed.clamp(MIN_SLICE_KEYS, self.most.count_keys);
        }
        match next {
            Some(key) => self.from = key,
            None => self.end(store),
        }
        Ok(())
    }

    /// Keys a slice can go over in the time slices aim at, if they aim at
    /// one, after `keys` took since `started`.
    fn aimed(&self, started: Instant, keys: usize) -> Option<usize> {
        let aim = self.most.time?;
        if keys == 0 {
            return None;
        }
        let per_key = (started.elapsed().as_nanos() / keys as u128).max(1);
        Some(usize::try_from(aim.as_nanos() / per_key).unwrap_or(usize::MAX))
    }

    /// The range is read (and counted): the count of the page that follows
    /// goes to `store`'s memo.
    fn end<E: KvEngine>(&mut self, store: &E) {
        self.done = true;
        self.counting = false;
        self.out.more = self.fetched > self.limit;
        self.out.count = self
            .counted
            .unwrap_or(i64::try_from(self.fetched).unwrap_or(i64::MAX) + self.tail);
        self.remember_pages(store);
    }

    /// Leaves the count of the page that follows to `store`'s memo, as a
    /// whole read does: the next page may start after the last kv read or
    /// the one before it (see `PageMemo`).
    fn remember_pages<E: KvEngine>(&self, store: &E) {
        let (read, count) = (self.fetched, self.out.count);
        if self.limit == 0 || read < 2 || count <= read as i64 {
            return;
        }
        for (key, before) in self.last_keys.iter().zip([read - 1, read]) {
            let next = [&key[..], &[0]].concat();
            store.remember_page(next, &self.end, self.rev, count - before as i64);
        }
    }
}

/// Whether `r` can be read in slices: key order, no filter.
fn sliceable(r: &RangeRequest) -> bool {
    r.sort_order == range_request::SortOrder::None as i32
        && r.sort_target == range_request::SortTarget::Key as i32
        && r.min_mod_revision == 0
        && r.max_mod_revision == 0
        && r.min_create_revision == 0
        && r.max_create_revision == 0
}

fn start_in<E: KvEngine>(
    store: &E,
    r: &RangeRequest,
    slices: Slices,
) -> Result<SlicedRange, ApiError> {
    let mut s = SlicedRange {
        from: r.key.clone(),
        end: r.range_end.clone(),
        // A revision of 0 or less reads at the current one.
        rev: if r.revision > 0 {
            r.revision
        } else {
            store.current_revision()
        },
        keys_only: r.keys_only,
        limit: usize::MAX,
        want: usize::MAX,
        fetched: 0,
        last_keys: Default::default(),
        counted: None,
        counting: false,
        tail: 0,
        slice: slices.keys.max(1),
        count_slice: slices.count_keys.clamp(1, FIRST_COUNT_KEYS),
        most: Slices {
            keys: slices.keys.max(1),
            count_keys: slices.count_keys.max(1),
            time: slices.time,
        },
        done: false,
        out: WireRange::default(),
        chunks: Vec::new(),
    };
    if !sliceable(r) {
        let mut whole = WireRange::from_response(range_in(store, r)?);
        s.chunks = whole.kvs.drain(..).map(Chunk::Encoded).collect();
        s.out = whole;
        s.done = true;
        return Ok(s);
    }
    s.out.revision = store.current_revision();
    if r.count_only {
        // Nothing to read: count the range from its start.
        s.limit = 0;
        s.want = 0;
        s.counting = true;
        s.count_slice(store)?;
        return Ok(s);
    }
    if r.limit > 0 {
        s.limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
        s.want = s.limit.saturating_add(1);
        // A page whose count the page before left.
        s.counted = store.page_count(&s.from, &s.end, s.rev);
    }
    s.read_slice(store)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::storage::engine::KvTxn;
    use crate::storage::memory::mvcc::MemStore;

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:04}").into_bytes()
    }

    /// A store of 300 keys with history: updates, deletes, a compaction.
    fn store() -> MemStore {
        let mut s = MemStore::new();
        fill(&mut s, |_| {});
        s
    }

    /// Writes `store()`'s history into `s`, calling `between` after each
    /// round.
    fn fill<E: KvEngine>(s: &mut E, mut between: impl FnMut(&mut E)) {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..3 {
            for i in 0..300u32 {
                if rng.gen_bool(0.4) {
                    let mut t = s.write();
                    let v = vec![b'a' + round as u8; rng.gen_range(0..2000)];
                    t.put_blind(&key(i), v.into(), 0);
                    t.end();
                }
            }
            for i in 0..300u32 {
                if rng.gen_bool(0.05) {
                    let mut t = s.write();
                    t.delete_range(&key(i), &[]);
                    t.end();
                }
            }
            between(s);
        }
    }

    fn encode(w: &WireRange) -> Vec<u8> {
        w.encode(&ResponseHeader {
            revision: w.revision,
            ..Default::default()
        })
    }

    /// `r` read in slices of `slice` keys; the kvs left for later (if
    /// any) are read on another thread, as the ApplyActor has them read.
    fn sliced<E: KvEngine>(s: &E, r: &RangeRequest, slice: usize) -> Result<WireRange, ApiError> {
        let mut range = SlicedRange::start(s, r, Slices::keys(slice))?;
        let mut later = Vec::new();
        let mut steps = 0;
        loop {
            if range.has_unfilled() || !later.is_empty() {
                later.extend(range.take_chunks());
            }
            if range.is_done() {
                break;
            }
            range.step(s)?;
            steps += 1;
            assert!(steps < 10_000, "a sliced range never ends");
        }
        let mut out = range.finish()?;
        if !later.is_empty() {
            let read = std::thread::spawn(move || {
                let mut kvs = Vec::new();
                for chunk in later {
                    kvs.extend(chunk.encode()?);
                }
                Ok::<_, ApiError>(kvs)
            });
            out.kvs = read.join().unwrap()?;
        }
        Ok(out)
    }

    #[test]
    fn a_range_read_in_slices_is_the_range_read_whole_byte_for_byte() {
        ranges_in_slices_are_read_whole(&store(), 0);
    }

    /// On rocksdb, whose slices leave values for later (some of them
    /// still in the pending batch, not yet in the database).
    #[test]
    fn a_rocksdb_range_read_in_slices_is_the_range_read_whole_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = crate::storage::rocks::kv_for_test(dir.path());
        let mut index = 1;
        fill(&mut s, |s| {
            index += 1;
            let point = crate::storage::engine::AppliedPoint {
                index,
                term: 1,
                ..Default::default()
            };
            crate::storage::engine::StateEngine::commit(s, &point).unwrap();
        });
        // The last round's writes are still pending.
        let mut t = s.write();
        t.put_blind(&key(3), Bytes::from_static(b"pending"), 0);
        t.end();
        let (_, fill) = KvEngine::range_later(&s, &key(0), &[0], &RangeOptions::default()).unwrap();
        assert!(fill.is_some(), "values are left for later");
        let unfilled = ranges_in_slices_are_read_whole(&s, 17);
        assert!(
            unfilled > 100,
            "only {unfilled} ranges left values for later"
        );
    }

    /// Reads 600 random ranges of `s` in slices and whole; returns how many
    /// left values for later.
    fn ranges_in_slices_are_read_whole<E: KvEngine>(s: &E, seed: u64) -> usize {
        let cur = s.current_revision();
        let mut rng = StdRng::seed_from_u64(11 + seed);
        let mut several = 0;
        let mut unfilled = 0;
        for _ in 0..600 {
            let a = rng.gen_range(0..320);
            let b = a + rng.gen_range(0..320);
            let r = RangeRequest {
                key: key(a),
                range_end: match rng.gen_range(0..5) {
                    0 => Vec::new(),
                    1 => vec![0],
                    _ => key(b),
                },
                limit: [0, 0, 1, 5, 100, 299, 1000][rng.gen_range(0..7)],
                revision: [0, 0, cur, cur - 20, cur + 1, -1][rng.gen_range(0..6)],
                keys_only: rng.gen_bool(0.2),
                count_only: rng.gen_bool(0.05),
                sort_order: if rng.gen_bool(0.1) { 1 } else { 0 },
                min_mod_revision: if rng.gen_bool(0.05) { cur - 50 } else { 0 },
                ..Default::default()
            };
            let slice = [1, 2, 7, 64, 1024][rng.gen_range(0..5)];
            let whole = super::super::range(s, &r);
            let parts = sliced(s, &r, slice);
            if let Ok(first) = SlicedRange::start(s, &r, Slices::keys(slice)) {
                unfilled += usize::from(first.has_unfilled());
            }
            match (whole, parts) {
                (Ok(w), Ok(p)) => {
                    if p.kvs.len() > 1 {
                        several += 1;
                    }
                    assert_eq!(encode(&p), w.encode_to_vec(), "{r:?}, slices of {slice}");
                    assert_eq!(p.decode().unwrap(), w);
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{r:?}: whole {a:?}, in slices {b:?}"),
            }
        }
        assert!(several > 100, "only {several} ranges took several slices");
        unfilled
    }

    /// A paginated LIST: the first page reads its kvs, then counts the rest
    /// of the range a slice at a time; it leaves that count for the next
    /// page, which is read in one slice and counted without going over the
    /// rest again. Both as a whole read answers them.
    #[test]
    fn a_page_counts_the_rest_in_slices_and_leaves_the_count_to_the_next() {
        let s = store();
        // Whole reads on a copy (whose memo is its own).
        let plain = s.clone();
        let page = |key: Vec<u8>, rev: i64| RangeRequest {
            key,
            range_end: vec![0],
            limit: 6,
            revision: rev,
            ..Default::default()
        };
        let first = page(key(0), 0);
        let mut range = SlicedRange::start(&s, &first, Slices::keys(7)).unwrap();
        let mut steps = 0;
        while !range.is_done() {
            range.step(&s).unwrap();
            steps += 1;
        }
        // About 250 keys left to count, 7 a slice.
        assert!(steps > 20, "counted in {steps} slices");
        let one = range.finish().unwrap();
        let whole = super::super::range(&plain, &first).unwrap();
        assert_eq!(encode(&one), whole.encode_to_vec());
        assert!(one.more);
        // The next page, as the apiserver asks for it: after the last kv.
        let last = whole.kvs.last().unwrap().key.clone();
        let next = page([&last[..], &[0]].concat(), one.revision);
        let range = SlicedRange::start(&s, &next, Slices::keys(7)).unwrap();
        assert!(range.is_done(), "the next page's count was left to it");
        let two = range.finish().unwrap();
        let whole = super::super::range(&plain, &next).unwrap();
        assert_eq!(encode(&two), whole.encode_to_vec());
        assert_eq!(two.count, one.count - 6);
        // And a page that took its count from the memo leaves the next one's.
        let last = whole.kvs.last().unwrap().key.clone();
        let third = page([&last[..], &[0]].concat(), one.revision);
        let range = SlicedRange::start(&s, &third, Slices::keys(7)).unwrap();
        assert!(range.is_done(), "the third page's count was left to it");
        assert_eq!(range.finish().unwrap().count, one.count - 12);
    }

    #[test]
    fn later_slices_read_at_the_first_ones_revision() {
        let mut s = store();
        let r = RangeRequest {
            key: key(0),
            range_end: vec![0],
            ..Default::default()
        };
        let want = super::super::range(&s, &r).unwrap().encode_to_vec();
        let mut range = SlicedRange::start(&s, &r, Slices::keys(10)).unwrap();
        let mut i = 0u32;
        while !range.is_done() {
            // Writes between the slices, ahead of them: updates, deletes,
            // new keys.
            let mut t = s.write();
            t.put_blind(&key(299 - i), Bytes::from_static(b"later"), 0);
            t.delete_range(&key(250 - i), &[]);
            t.put_blind(&key(400 + i), Bytes::from_static(b"new"), 0);
            t.end();
            i += 1;
            range.step(&s).unwrap();
        }
        assert!(i > 5);
        assert_eq!(encode(&range.finish().unwrap()), want);
    }

    #[test]
    fn large_values_make_smaller_slices() {
        let mut s = MemStore::new();
        for i in 0..2000u32 {
            let mut t = s.write();
            t.put_blind(&key(i), vec![1u8; 5000].into(), 0);
            t.end();
        }
        let r = RangeRequest {
            key: key(0),
            range_end: vec![0],
            ..Default::default()
        };
        let mut range = SlicedRange::start(&s, &r, Slices::keys(1024)).unwrap();
        // The first slice read what was asked; the next ones aim at 1 MiB.
        assert_eq!(range.fetched, 1024);
        assert!((150..250).contains(&range.slice), "{}", range.slice);
        range.step(&s).unwrap();
        let Chunk::Encoded(second) = &range.chunks[1] else {
            panic!("the memory engine's values are read at once");
        };
        let second = second.len();
        assert!(
            (SLICE_BYTES - 6000..SLICE_BYTES + 6000).contains(&second),
            "{second}"
        );
    }
}

#[cfg(test)]
mod timed {
    use super::*;
    use crate::storage::memory::mvcc::MemStore;

    #[test]
    fn slices_aim_at_their_time() {
        let mut s = MemStore::new();
        for i in 0..5000u32 {
            let mut t = s.write();
            crate::storage::engine::KvTxn::put_blind(
                &mut t,
                format!("k{i:05}").as_bytes(),
                Bytes::from_static(b"v"),
                0,
            );
            crate::storage::engine::KvTxn::end(t);
        }
        let r = RangeRequest {
            key: b"k".to_vec(),
            range_end: vec![0],
            ..Default::default()
        };
        let none = Slices {
            keys: 1024,
            count_keys: 4096,
            time: Some(Duration::ZERO),
        };
        let count = RangeRequest {
            count_only: true,
            ..r.clone()
        };
        // No time at all: the fewest keys a slice reads or counts.
        let range = SlicedRange::start(&s, &r, none).unwrap();
        assert_eq!(range.slice, MIN_SLICE_KEYS);
        let range = SlicedRange::start(&s, &count, none).unwrap();
        assert_eq!(range.count_slice, MIN_SLICE_KEYS);
        // Ample time: as many keys as allowed.
        let ample = Slices {
            keys: 1024,
            count_keys: 4096,
            time: Some(Duration::from_secs(10)),
        };
        let range = SlicedRange::start(&s, &r, ample).unwrap();
        assert_eq!(range.slice, 1024);
        let range = SlicedRange::start(&s, &count, ample).unwrap();
        assert_eq!(range.count_slice, 4096);
    }
}
