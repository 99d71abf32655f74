//! The store itself: key map, revision counters, reads and compaction.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::history::{KeyHistory, KEY_OVERHEAD};
use super::txn::WriteTxn;
use super::{HistoryEvent, KeyValue, MvccError, RangeOptions, RangeResult};
use crate::storage::Revision;

/// Map bounds for etcd's `[key, range_end)` convention, or `None` when the
/// range is empty. An empty `range_end` selects just `key`; a single zero
/// byte selects every key `>= key` (etcd's `mkGteRange`).
pub(super) type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// See [`KeyBounds`].
pub(super) fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        // BTreeMap::range panics on inverted bounds; etcd returns nothing.
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// Bytes charged to a key entry besides its versions.
pub(super) fn key_size(key: &[u8]) -> u64 {
    KEY_OVERHEAD + key.len() as u64
}

/// An in-memory MVCC key-value store with etcd v3 semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemStore {
    /// Every key with retained history, tombstoned ones included.
    pub(super) keys: BTreeMap<Box<[u8]>, KeyHistory>,
    /// Main revision of the last committed change (1 when empty).
    pub(super) current_rev: i64,
    /// Like etcd's `compactMainRev`: -1 until the first compaction, so that
    /// compacting at 0 behaves as there.
    pub(super) compact_rev: i64,
    /// Keys whose newest version is live.
    pub(super) live_keys: usize,
    /// Running total of the size estimate.
    pub(super) size_bytes: u64,
    /// Whether write txns collect events (off until someone watches: building
    /// them copies every written value).
    pub(super) record_events: bool,
    /// Whether versions keep their values. An engine that stores values
    /// elsewhere (RocksDB, by revision) keeps only this index in memory.
    pub(super) keep_values: bool,
    /// Whether an index-only store's events carry previous states (their
    /// values left for the caller to fill).
    pub(super) event_prevs: bool,
    /// Images being taken in slices (see [`MemStore::export_slice`]): while
    /// any is, compaction moves the compacted revision but removes nothing.
    pub(super) compaction_holds: u32,
    /// The newest compaction whose removals are still to be carried out
    /// (see [`MemStore::removal_step`]).
    pub(super) removal: Option<Removal>,
    /// Where the last limited range stopped, to count the next page.
    pub(super) pages: PageMemo,
}

/// Paginated reads count each page in O(page), not O(rest of the range).
///
/// A RangeResponse's `count` is every live key of the range, not only the
/// page; the apiserver (and etcdctl's pagination) reads a large prefix in
/// pages of 500 at one revision, each from the last key + "\0". Counting
/// the rest of the range for every page makes a full LIST quadratic (a
/// million keys: 2,000 pages, each walking half a million keys on average).
/// The live keys of a range at a revision never change once the revision
/// exists (compaction keeps what is live at any revision it leaves
/// readable), so the count of the next page is the count of this one minus
/// the keys it returned. Holds the next page of the last [`PAGE_MEMOS`]
/// paginated reads (several LISTs at once each keep theirs). The API layer
/// asks for one more than its client's page (to learn `more`, and because
/// etcd sorts that many by a non-key target) and drops it, so the next page
/// may start after the last key returned or after the one before it.
#[derive(Default)]
pub(super) struct PageMemo(parking_lot::Mutex<std::collections::VecDeque<NextPage>>);

/// Paginated reads remembered at once.
const PAGE_MEMOS: usize = 32;

/// A compaction whose versions are removed key by key, a slice per
/// [`MemStore::removal_step`], like etcd's scheduled compaction (batches of
/// keys between which writes go on). Reads, history and images leave out
/// what it would remove from the keys it has not reached yet, so a store
/// whose removal is under way answers as one that is through.
///
/// A pass goes once round the key map from where it began: a compaction
/// while one is under way takes it over where it is (compacting at `a`
/// then at `b > a` keeps what `b` alone keeps), so frequent compactions
/// still move it on rather than start it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Removal {
    /// The compaction revision.
    rev: i64,
    /// The last key gone over (`None`: the start of the map).
    cursor: Option<Box<[u8]>>,
    /// Where the pass began (`None`: the start of the map): it goes on to
    /// the end of the map, then from the start up to this key.
    began_after: Option<Box<[u8]>>,
    /// Whether the pass went past the end of the map.
    wrapped: bool,
}

impl Removal {
    /// A pass at `rev` that begins where `under_way` (if any) is.
    pub(super) fn new(rev: i64, under_way: Option<Removal>) -> Removal {
        let at = under_way.and_then(|r| r.cursor);
        Removal {
            rev,
            cursor: at.clone(),
            began_after: at,
            wrapped: false,
        }
    }
}

/// The page that would follow a limited range: its start key, range end,
/// revision, and how many live keys it counts.
pub(super) struct NextPage {
    key: Vec<u8>,
    range_end: Vec<u8>,
    rev: i64,
    count: i64,
}

impl Clone for PageMemo {
    fn clone(&self) -> Self {
        PageMemo::default()
    }
}

impl PartialEq for PageMemo {
    /// A cache: never part of a store's value.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PageMemo {}

impl std::fmt::Debug for PageMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageMemo")
    }
}

/// One stored version as an image exports it (a tombstone has only `key`
/// and `mod_revision` set, as etcd's deletion records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionView<'a> {
    /// Where it was written.
    pub rev: Revision,
    /// The key.
    pub key: &'a [u8],
    /// Start of its generation (0 for tombstones).
    pub create_revision: i64,
    /// Puts in the generation (0 for tombstones).
    pub version: i64,
    /// Attached lease (0 for none).
    pub lease: i64,
    /// The value (empty for tombstones and index-only stores).
    pub value: &'a [u8],
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        MemStore {
            keys: BTreeMap::new(),
            current_rev: 1,
            compact_rev: -1,
            live_keys: 0,
            size_bytes: 0,
            record_events: true,
            keep_values: true,
            event_prevs: false,
            compaction_holds: 0,
            removal: None,
            pages: PageMemo::default(),
        }
    }

    /// An empty index: versions without values (the caller stores them by
    /// revision and fills them in from the revisions reads return).
    pub fn index_only() -> Self {
        MemStore {
            keep_values: false,
            ..MemStore::new()
        }
    }

    /// Turns event collection on or off (the events `WriteTxn::end` returns).
    pub fn set_record_events(&mut self, on: bool) {
        self.record_events = on;
    }

    /// Makes an index-only store's events carry previous states.
    pub fn set_event_prevs(&mut self, on: bool) {
        self.event_prevs = on;
    }

    /// Whether write txns collect events.
    pub fn records_events(&self) -> bool {
        self.record_events
    }

    /// Main revision of the last committed change (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// Revision of the last compaction, 0 if the store was never compacted.
    pub fn compacted_revision(&self) -> i64 {
        self.compact_rev.max(0)
    }

    /// etcd's `compactMainRev` as it is: -1 until the first compaction (which
    /// may be at 0). Txn range checks compare revisions against this value.
    pub fn compact_main_revision(&self) -> i64 {
        self.compact_rev
    }

    /// Number of keys live at the current revision.
    pub fn key_count(&self) -> usize {
        self.live_keys
    }

    /// Rough bytes held by keys, values and per-entry bookkeeping.
    pub fn approximate_size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Reads live keys in `[key, range_end)` (see [`RangeOptions`]).
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.range_at(key, range_end, opts, self.current_rev)
    }

    /// Range read as etcd's `rangeKeys`, with `cur_rev` standing for the
    /// current revision (a write txn with changes passes its own revision).
    pub(super) fn range_at(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
        cur_rev: i64,
    ) -> Result<RangeResult, MvccError> {
        self.range_revs_at(key, range_end, opts, cur_rev, None)
    }

    /// Like [`MemStore::range`], also returning where each returned kv was
    /// written (`revs[i]` for `kvs[i]`): an index-only store's caller reads
    /// the values by these revisions.
    pub fn range_with_revisions(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<(RangeResult, Vec<Revision>), MvccError> {
        self.range_with_revisions_at(key, range_end, opts, self.current_rev)
    }

    /// [`MemStore::range_with_revisions`] with `cur_rev` as the current revision.
    pub(super) fn range_with_revisions_at(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
        cur_rev: i64,
    ) -> Result<(RangeResult, Vec<Revision>), MvccError> {
        let mut revs = Vec::new();
        let r = self.range_revs_at(key, range_end, opts, cur_rev, Some(&mut revs))?;
        Ok((r, revs))
    }

    /// The range read behind every variant; `revs` collects revisions.
    pub(super) fn range_revs_at(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
        cur_rev: i64,
        mut revs: Option<&mut Vec<Revision>>,
    ) -> Result<RangeResult, MvccError> {
        // Check order matters and follows etcd: future before compacted.
        if opts.rev > cur_rev {
            return Err(MvccError::FutureRevision);
        }
        let rev = if opts.rev <= 0 { cur_rev } else { opts.rev };
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut result = RangeResult {
            kvs: Vec::new(),
            count: 0,
            rev: cur_rev,
        };
        let Some(bounds) = key_bounds(key, range_end) else {
            return Ok(result);
        };
        let want = if opts.count_only {
            0
        } else if opts.limit > 0 {
            usize::try_from(opts.limit).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        // Pages of a read at an existing revision (not a write txn's own,
        // whose keys may still change) go through the memo.
        let paged =
            opts.limit > 0 && !opts.count_only && !opts.uncounted && cur_rev == self.current_rev;
        let known = if paged {
            self.page_count(key, range_end, rev)
        } else {
            None
        };
        for (k, h) in self.keys.range::<[u8], _>(bounds) {
            if let Some(v) = h.live_at(rev) {
                if result.kvs.len() < want {
                    result.kvs.push(v.to_kv(k, !opts.keys_only));
                    if let Some(revs) = revs.as_deref_mut() {
                        revs.push(v.rev);
                    }
                } else if known.is_some() || opts.uncounted {
                    break;
                }
                result.count += 1;
            }
        }
        if let Some(count) = known {
            result.count = count;
        }
        if paged && result.count > result.kvs.len() as i64 {
            let n = result.kvs.len();
            for (i, kv) in result.kvs.iter().enumerate().skip(n.saturating_sub(2)) {
                let next = [&kv.key[..], &[0]].concat();
                self.remember_page(next, range_end, rev, result.count - i as i64 - 1);
            }
        }
        Ok(result)
    }

    /// The count a limited read at `rev` left for the page of
    /// `[key, range_end)` (see [`PageMemo`]); taken, as one read uses it.
    pub fn page_count(&self, key: &[u8], range_end: &[u8], rev: i64) -> Option<i64> {
        let mut memo = self.pages.0.lock();
        memo.iter()
            .position(|p| p.key == key && p.range_end == range_end && p.rev == rev)
            .and_then(|i| memo.remove(i))
            .map(|p| p.count)
    }

    /// Remembers that `[key, range_end)` counts `count` live keys at `rev`:
    /// the page that follows a limited read (see [`PageMemo`]).
    pub fn remember_page(&self, key: Vec<u8>, range_end: &[u8], rev: i64, count: i64) {
        let mut memo = self.pages.0.lock();
        if memo.len() == PAGE_MEMOS {
            memo.pop_front();
        }
        memo.push_back(NextPage {
            key,
            range_end: range_end.to_vec(),
            rev,
            count,
        });
    }

    /// Counts the keys of `[key, range_end)` live at `rev` (0 or less: the
    /// current revision), going over at most `max` keys of the index (at
    /// least one): the count, and the key to go on from (`None`: the range
    /// is through). What a Range counts with a slice at a time; it checks
    /// the revision as a range read does.
    pub fn count_slice(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        max: usize,
    ) -> Result<(i64, Option<Vec<u8>>), MvccError> {
        if rev > self.current_rev {
            return Err(MvccError::FutureRevision);
        }
        let rev = if rev <= 0 { self.current_rev } else { rev };
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let Some(bounds) = key_bounds(key, range_end) else {
            return Ok((0, None));
        };
        let mut keys = self.keys.range::<[u8], _>(bounds);
        let mut count = 0;
        for (_, h) in keys.by_ref().take(max.max(1)) {
            if h.live_at(rev).is_some() {
                count += 1;
            }
        }
        Ok((count, keys.next().map(|(k, _)| k.to_vec())))
    }

    /// The changes to keys in `[key, range_end)` from revision `from` on, in
    /// revision order, as watch events (delete events carry the key and
    /// the deleting revision; `prev_kv` is the version before, if it was
    /// live): what a watcher that starts in the past is sent. At most about
    /// `max` events: a main revision is never split, so a chunk ends at a
    /// revision boundary (and holds a whole revision even if it is larger).
    /// Each event comes with the revisions its kv and prev_kv were stored
    /// at, for an engine that keeps the values elsewhere.
    pub fn history(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<HistoryEvent>, MvccError> {
        // As etcd's watchers: history from the compacted revision itself is
        // there (what compaction kept of it), from before it is not.
        if from < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let Some(bounds) = key_bounds(key, range_end) else {
            return Ok(Vec::new());
        };
        // Positions first (cheap), values only for what the chunk keeps.
        let mut found: Vec<(Revision, &[u8], &[super::history::Version], usize)> = Vec::new();
        for (k, h) in self.keys.range::<[u8], _>(bounds) {
            let vs = h.kept(self.compact_rev);
            let start = vs.partition_point(|v| v.rev.main < from);
            found.extend((start..vs.len()).map(|i| (vs[i].rev, &k[..], vs, i)));
        }
        found.sort_unstable_by_key(|f| f.0);
        if found.len() > max {
            let last_main = found[max.max(1) - 1].0.main;
            let cut = found.partition_point(|f| f.0.main <= last_main);
            found.truncate(cut);
        }
        let mut out = Vec::with_capacity(found.len());
        for (_, k, vs, i) in found {
            let v = &vs[i];
            let prev = i
                .checked_sub(1)
                .map(|p| &vs[p])
                .filter(|p| !p.is_tombstone());
            let (kind, kv) = if v.is_tombstone() {
                let kv = KeyValue {
                    key: k.to_vec(),
                    mod_revision: v.rev.main,
                    ..KeyValue::default()
                };
                (super::EventKind::Delete, kv)
            } else {
                (super::EventKind::Put, v.to_kv(k, true))
            };
            out.push(HistoryEvent {
                event: super::Event {
                    kind,
                    kv,
                    prev_kv: prev.map(|p| p.to_kv(k, true)),
                },
                rev: v.rev,
                prev_rev: prev.map(|p| p.rev),
            });
        }
        Ok(out)
    }

    /// Starts a write transaction; see [`WriteTxn`] for commit behaviour.
    pub fn write(&mut self) -> WriteTxn<'_> {
        WriteTxn::new(self)
    }

    /// Discards history no read at a revision `>= rev` can see and makes
    /// reads below `rev` fail with [`MvccError::Compacted`]. The removal is
    /// done at once unless an image holds compaction (then it is left to
    /// [`MemStore::removal_step`]).
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        self.check_compaction(rev)?;
        self.compact_rev = rev;
        if self.compaction_holds > 0 {
            // Reads below `rev` fail from now on; the versions stay until
            // the images that read them are through.
            self.removal = Some(Removal::new(rev, self.removal.take()));
        } else {
            self.removal = None;
            self.remove_compacted(rev);
        }
        Ok(())
    }

    /// [`MemStore::compact`] whose removal is left to
    /// [`MemStore::removal_step`]: at once, reads below `rev` fail and what
    /// it lets go is no longer seen; the memory comes back slice by slice.
    pub fn compact_in_slices(&mut self, rev: i64) -> Result<(), MvccError> {
        self.check_compaction(rev)?;
        self.compact_rev = rev;
        self.removal = Some(Removal::new(rev, self.removal.take()));
        Ok(())
    }

    fn check_compaction(&self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRevision);
        }
        Ok(())
    }

    /// Removes what a compaction at `rev` lets go.
    fn remove_compacted(&mut self, rev: i64) {
        let mut freed = 0u64;
        self.keys.retain(|k, h| {
            freed += h.compact(rev, None);
            if h.is_empty() {
                freed += key_size(k);
                false
            } else {
                true
            }
        });
        self.size_bytes -= freed;
    }

    /// Whether a compaction's removal is still to be carried out.
    pub fn removal_pending(&self) -> bool {
        self.removal.is_some()
    }

    /// Carries the pending compaction's removal on over the next keys,
    /// about `budget` keys and versions; returns whether any is left. Does
    /// nothing while an image holds compaction.
    pub fn removal_step(&mut self, budget: usize) -> bool {
        self.removal_step_collect(budget, None)
    }

    /// [`MemStore::removal_step`], appending the revisions it dropped to
    /// `removed` (if given: an engine that stores versions elsewhere deletes
    /// them there).
    pub fn removal_step_collect(
        &mut self,
        budget: usize,
        mut removed: Option<&mut Vec<Revision>>,
    ) -> bool {
        let Some(removal) = self.removal.as_mut() else {
            return false;
        };
        if self.compaction_holds > 0 {
            return true;
        }
        let lower = match removal.cursor.as_deref() {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let upper = match (removal.wrapped, removal.began_after.as_deref()) {
            (true, Some(k)) => Bound::Included(k),
            _ => Bound::Unbounded,
        };
        if let (Bound::Excluded(from), Bound::Included(to)) = (lower, upper) {
            if from >= to {
                // Round to where it began (a range would be empty, or
                // backwards and panic).
                self.removal = None;
                return false;
            }
        }
        let mut freed = 0u64;
        let mut emptied = Vec::new();
        let mut done = 0usize;
        let mut stopped_at = None;
        for (k, h) in self.keys.range_mut::<[u8], _>((lower, upper)) {
            let before = h.versions().len();
            freed += h.compact(removal.rev, removed.as_deref_mut());
            done += 1 + before - h.versions().len();
            if h.is_empty() {
                freed += key_size(k);
                emptied.push(k.clone());
            }
            if done >= budget {
                stopped_at = Some(k.clone());
                break;
            }
        }
        for k in &emptied {
            self.keys.remove(k);
        }
        self.size_bytes -= freed;
        if stopped_at.is_some() {
            removal.cursor = stopped_at;
        } else if !removal.wrapped && removal.began_after.is_some() {
            // On from the start of the map to where the pass began.
            removal.wrapped = true;
            removal.cursor = None;
        } else {
            self.removal = None;
        }
        self.removal.is_some()
    }

    /// Keeps every version where it is until [`MemStore::release_compaction`]:
    /// a compaction meanwhile only moves the compacted revision. An image
    /// taken in slices holds this, so the versions at or below its revision
    /// are all still there when it reaches their keys.
    pub fn hold_compaction(&mut self) {
        self.compaction_holds += 1;
    }

    /// Ends one [`MemStore::hold_compaction`]; a compaction that happened
    /// meanwhile goes on with [`MemStore::removal_step`].
    pub fn release_compaction(&mut self) {
        self.compaction_holds = self.compaction_holds.saturating_sub(1);
    }

    /// Hands `sink` the versions at or below main revision `upto` of the
    /// keys after `after` (from the first key when `None`), key by key,
    /// until about `budget` versions were handed over, leaving out what a
    /// compaction at `compacted` removes (a removal may be under way).
    /// Returns the last key looked at when keys remain, `None` once the
    /// store is through: the next slice starts after it. Between slices the
    /// store may change; versions at or below `upto` do not while
    /// compaction is held, and keys are only ever removed by compaction, so
    /// the slices together are the store as it was at `upto`, compacted at
    /// `compacted`.
    pub fn export_slice(
        &self,
        after: Option<&[u8]>,
        upto: i64,
        compacted: i64,
        budget: usize,
        sink: &mut dyn FnMut(VersionView<'_>),
    ) -> Option<Box<[u8]>> {
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut handed = 0usize;
        for (k, h) in self.keys.range::<[u8], _>((lower, Bound::Unbounded)) {
            for v in h.kept(compacted).iter().take_while(|v| v.rev.main <= upto) {
                sink(VersionView {
                    rev: v.rev,
                    key: k,
                    create_revision: v.create_revision,
                    version: v.version,
                    lease: v.lease,
                    value: &v.value[..],
                });
                handed += 1;
            }
            // Keys count too, so a slice over keys written after `upto`
            // still ends.
            handed += 1;
            if handed >= budget {
                return Some(k.clone());
            }
        }
        None
    }

    /// Recomputes `(live_keys, size_bytes)` from the map, for other
    /// modules' tests.
    #[cfg(test)]
    pub fn recount_for_tests(&self) -> (usize, u64) {
        self.recount()
    }

    /// Recomputes `(live_keys, size_bytes)` from the map.
    #[cfg(test)]
    pub(super) fn recount(&self) -> (usize, u64) {
        let mut live = 0;
        let mut size = 0;
        for (k, h) in &self.keys {
            live += usize::from(h.latest_live().is_some());
            size += key_size(k) + h.size();
        }
        (live, size)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Event, EventKind, KeyValue, Revision};
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    pub(in super::super) fn put1(s: &mut MemStore, k: &[u8], v: &[u8]) -> i64 {
        let mut t = s.write();
        t.put(k, v.to_vec().into(), 0);
        t.end().0
    }

    fn del1(s: &mut MemStore, k: &[u8], end: &[u8]) -> i64 {
        let mut t = s.write();
        t.delete_range(k, end);
        t.end().0
    }

    fn keys(r: &RangeResult) -> Vec<&[u8]> {
        r.kvs.iter().map(|kv| kv.key.as_slice()).collect()
    }

    fn rng_all(s: &MemStore, rev: i64) -> Result<RangeResult, MvccError> {
        s.range(
            b"",
            &[0],
            &RangeOptions {
                rev,
                ..Default::default()
            },
        )
    }

    /// Pages read one after another at one revision (each from the last
    /// key + "\0"; the first pagination as the API layer reads, one more
    /// than it keeps), two interleaved, writes
    /// and a compaction between pages: every page's keys and count equal a
    /// fresh store's (a clone has no memo, so it walks the whole rest of
    /// the range).
    #[test]
    fn paged_counts_equal_full_counts() {
        let mut s = MemStore::new();
        for i in 0..300u32 {
            put1(&mut s, format!("p/{i:04}").as_bytes(), b"v");
        }
        for i in (0..300u32).step_by(7) {
            del1(&mut s, format!("p/{i:04}").as_bytes(), &[]);
        }
        let at = s.current_revision();
        let page = |s: &MemStore, from: &[u8], end: &[u8], limit: i64| {
            let o = RangeOptions {
                limit,
                rev: at,
                ..Default::default()
            };
            let got = s.range(from, end, &o).unwrap();
            let want = s.clone().range(from, end, &o).unwrap();
            assert_eq!(got, want, "page from {:?}", String::from_utf8_lossy(from));
            got
        };
        let mut next = [b"p/".to_vec(), b"p/0100".to_vec()];
        let ends: [&[u8]; 2] = [b"p0", b"p/0250"];
        let mut seen = [0usize; 2];
        let mut turn = 0;
        while next.iter().any(|n| !n.is_empty()) {
            let w = turn % 2;
            turn += 1;
            if next[w].is_empty() {
                continue;
            }
            // The API layer's pages: 11 of 12 fetched; the other's: 11.
            let (limit, used) = if w == 0 { (12, 11) } else { (11, 11) };
            let r = page(&s, &next[w], ends[w], limit);
            let kept = r.kvs.len().min(used);
            seen[w] += kept;
            next[w] = match r.kvs.get(kept.wrapping_sub(1)) {
                Some(last) if r.count > kept as i64 => [&last.key[..], &[0]].concat(),
                _ => Vec::new(),
            };
            // The store moves on meanwhile; the pages read at `at`.
            put1(&mut s, format!("p/{turn:04}").as_bytes(), b"again");
            del1(&mut s, format!("p/{:04}", 299 - turn).as_bytes(), &[]);
            if turn == 20 {
                s.compact(at).unwrap();
            }
        }
        let live = |from: u32, to: u32| (from..to).filter(|i| i % 7 != 0).count();
        assert_eq!(seen, [live(0, 300), live(100, 250)]);
    }

    #[test]
    fn empty_store() {
        let s = MemStore::new();
        assert_eq!(s.current_revision(), 1);
        assert_eq!(s.compacted_revision(), 0);
        assert_eq!(s.key_count(), 0);
        let r = rng_all(&s, 0).unwrap();
        assert_eq!(
            r,
            RangeResult {
                kvs: vec![],
                count: 0,
                rev: 1
            }
        );
        assert_eq!(rng_all(&s, 2), Err(MvccError::FutureRevision));
    }

    #[test]
    fn historical_reads() {
        let mut s = MemStore::new();
        put1(&mut s, b"a", b"1"); // 2
        put1(&mut s, b"b", b"1"); // 3
        put1(&mut s, b"a", b"2"); // 4
        del1(&mut s, b"b", b""); // 5
        put1(&mut s, b"b", b"3"); // 6
        let at = |rev| {
            rng_all(&s, rev)
                .unwrap()
                .kvs
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.to_vec(),
                        kv.version,
                        kv.create_revision,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(at(1), vec![]);
        assert_eq!(at(2), vec![(b"a".to_vec(), b"1".to_vec(), 1, 2)]);
        assert_eq!(
            at(3),
            vec![
                (b"a".to_vec(), b"1".to_vec(), 1, 2),
                (b"b".to_vec(), b"1".to_vec(), 1, 3)
            ]
        );
        assert_eq!(
            at(4),
            vec![
                (b"a".to_vec(), b"2".to_vec(), 2, 2),
                (b"b".to_vec(), b"1".to_vec(), 1, 3)
            ]
        );
        assert_eq!(at(5), vec![(b"a".to_vec(), b"2".to_vec(), 2, 2)]);
        assert_eq!(
            at(6),
            vec![
                (b"a".to_vec(), b"2".to_vec(), 2, 2),
                (b"b".to_vec(), b"3".to_vec(), 1, 6)
            ]
        );
        assert_eq!(at(0), at(6));
        assert_eq!(at(-3), at(6));
        // Historical reads still report the current revision.
        assert_eq!(rng_all(&s, 3).unwrap().rev, 6);
    }

    #[test]
    fn range_end_variants() {
        let mut s = MemStore::new();
        for k in [&b"a"[..], b"ab", b"abc", b"b", b"ba", b"c", b"\xff"] {
            put1(&mut s, k, b"v");
        }
        let o = RangeOptions::default();
        // Single key.
        assert_eq!(keys(&s.range(b"ab", b"", &o).unwrap()), vec![&b"ab"[..]]);
        assert_eq!(s.range(b"zz", b"", &o).unwrap().count, 0);
        // Prefix "a" = [a, b).
        assert_eq!(
            keys(&s.range(b"a", b"b", &o).unwrap()),
            vec![&b"a"[..], b"ab", b"abc"]
        );
        // From key.
        assert_eq!(
            keys(&s.range(b"b", &[0], &o).unwrap()),
            vec![&b"b"[..], b"ba", b"c", b"\xff"]
        );
        // Everything.
        assert_eq!(s.range(b"", &[0], &o).unwrap().count, 7);
        assert_eq!(s.range(&[0], &[0], &o).unwrap().count, 7);
        // range_end <= key is empty, not a panic.
        assert_eq!(s.range(b"b", b"a", &o).unwrap().count, 0);
        assert_eq!(s.range(b"b", b"b", &o).unwrap().count, 0);
        assert_eq!(s.range(b"b", &[0, 0], &o).unwrap().count, 0);
        assert_eq!(s.range(b"b", b"b", &o).unwrap().rev, s.current_revision());
    }

    #[test]
    fn limit_count_only_keys_only() {
        let mut s = MemStore::new();
        for i in 0..10u8 {
            put1(&mut s, &[b'k', b'0' + i], b"value");
        }
        del1(&mut s, b"k3", b"");
        let r = s
            .range(
                b"k",
                b"l",
                &RangeOptions {
                    limit: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(keys(&r), vec![&b"k0"[..], b"k1", b"k2"]);
        assert_eq!(r.count, 9);
        let r = s
            .range(
                b"k",
                b"l",
                &RangeOptions {
                    limit: 100,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.kvs.len(), 9);
        assert_eq!(r.count, 9);
        // Uncounted: the same kvs, counted only as far as the limit.
        let o = RangeOptions {
            limit: 3,
            uncounted: true,
            ..Default::default()
        };
        let r = s.range(b"k", b"l", &o).unwrap();
        assert_eq!(keys(&r), vec![&b"k0"[..], b"k1", b"k2"]);
        assert_eq!(r.count, 3);
        let r = s
            .range(b"k2", b"l", &RangeOptions { limit: 10, ..o })
            .unwrap();
        assert_eq!((r.kvs.len(), r.count), (7, 7));
        let r = s
            .range(
                b"k",
                b"l",
                &RangeOptions {
                    limit: -1,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.kvs.len(), 9);
        let r = s
            .range(
                b"k",
                b"l",
                &RangeOptions {
                    count_only: true,
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 9);
        let r = s
            .range(
                b"k",
                b"l",
                &RangeOptions {
                    keys_only: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.kvs.len(), 9);
        assert!(r
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1));
        // Count at an older revision includes k3 again.
        let r = s
            .range(
                b"k",
                b"l",
                &RangeOptions {
                    count_only: true,
                    rev: 11,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.count, 10);
        assert_eq!(s.key_count(), 9);
    }

    #[test]
    fn compaction() {
        let mut s = MemStore::new();
        put1(&mut s, b"a", b"1"); // 2
        put1(&mut s, b"b", b"1"); // 3
        put1(&mut s, b"a", b"2"); // 4
        del1(&mut s, b"b", b""); // 5
        put1(&mut s, b"c", b"1"); // 6
        put1(&mut s, b"a", b"3"); // 7
        let before: Vec<_> = (5..=7).map(|r| rng_all(&s, r).unwrap()).collect();

        assert_eq!(s.compact(8), Err(MvccError::FutureRevision));
        assert_eq!(s.compact(5), Ok(()));
        assert_eq!(s.compacted_revision(), 5);
        assert_eq!(s.current_revision(), 7);
        assert_eq!(s.compact(5), Err(MvccError::Compacted));
        assert_eq!(s.compact(4), Err(MvccError::Compacted));
        // "b" was deleted at exactly 5: only its tombstone stays (a watch
        // from 5 is sent the deletion); "a" keeps a@4 (newest <= 5) and a@7.
        let b: Vec<(i64, bool)> = s.keys[&b"b"[..]]
            .versions()
            .iter()
            .map(|v| (v.rev.main, v.is_tombstone()))
            .collect();
        assert_eq!(b, vec![(5, true)]);
        let a: Vec<i64> = s.keys[&b"a"[..]]
            .versions()
            .iter()
            .map(|v| v.rev.main)
            .collect();
        assert_eq!(a, vec![4, 7]);
        // Reads at and above the compacted revision are unchanged.
        for (i, r) in (5..=7).enumerate() {
            assert_eq!(rng_all(&s, r).unwrap(), before[i]);
        }
        assert_eq!(rng_all(&s, 4), Err(MvccError::Compacted));
        assert_eq!(rng_all(&s, 8), Err(MvccError::FutureRevision));
        assert_eq!(s.recount(), (s.live_keys, s.size_bytes));

        // Compacting at the current revision keeps the latest live versions;
        // the tombstone older than it goes, and "b" with it.
        s.compact(7).unwrap();
        assert!(!s.keys.contains_key(&b"b"[..]));
        assert_eq!(rng_all(&s, 7).unwrap(), before[2]);
        assert_eq!(
            s.keys.values().map(|h| h.versions().len()).sum::<usize>(),
            2
        );
        assert_eq!(s.recount(), (s.live_keys, s.size_bytes));
        // Further writes continue the numbering.
        assert_eq!(put1(&mut s, b"d", b"1"), 8);
    }

    #[test]
    fn compact_zero_on_fresh_store_like_etcd() {
        let mut s = MemStore::new();
        assert_eq!(s.compact(-1), Err(MvccError::Compacted));
        assert_eq!(s.compact(0), Ok(()));
        assert_eq!(s.compact(0), Err(MvccError::Compacted));
        assert_eq!(s.compact(1), Ok(()));
        assert_eq!(s.compacted_revision(), 1);
        assert_eq!(rng_all(&s, 1).unwrap().count, 0);
    }

    /// key, revision, and (value, lease) for a put or `None` for a delete.
    type LogEntry = (Vec<u8>, Revision, Option<(Vec<u8>, i64)>);

    /// A deliberately naive reference: a log of every write, replayed from
    /// the start for every question, never compacted.
    #[derive(Default)]
    struct Model {
        log: Vec<LogEntry>,
        cur: i64,
        compacted: i64,
    }

    fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
        if end.is_empty() {
            k == key
        } else if end == [0] {
            k >= key
        } else {
            k >= key && k < end
        }
    }

    impl Model {
        fn new() -> Self {
            Model {
                log: vec![],
                cur: 1,
                compacted: -1,
            }
        }

        fn state_at(&self, rev: i64) -> BTreeMap<Vec<u8>, KeyValue> {
            let mut st: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
            for (k, r, op) in self.log.iter().filter(|e| e.1.main <= rev) {
                match op {
                    None => {
                        st.remove(k);
                    }
                    Some((v, lease)) => {
                        let (create, ver) = match st.get(k) {
                            Some(p) => (p.create_revision, p.version + 1),
                            None => (r.main, 1),
                        };
                        st.insert(
                            k.clone(),
                            KeyValue {
                                key: k.clone(),
                                create_revision: create,
                                mod_revision: r.main,
                                version: ver,
                                value: v.clone().into(),
                                lease: *lease,
                            },
                        );
                    }
                }
            }
            st
        }

        fn range(
            &self,
            key: &[u8],
            end: &[u8],
            o: &RangeOptions,
            cur: i64,
        ) -> Result<RangeResult, MvccError> {
            if o.rev > cur {
                return Err(MvccError::FutureRevision);
            }
            let rev = if o.rev <= 0 { cur } else { o.rev };
            if rev < self.compacted {
                return Err(MvccError::Compacted);
            }
            let all: Vec<KeyValue> = self
                .state_at(rev)
                .into_values()
                .filter(|kv| in_range(&kv.key, key, end))
                .collect();
            let count = all.len() as i64;
            let mut kvs: Vec<KeyValue> = if o.count_only {
                vec![]
            } else if o.limit > 0 {
                all.into_iter().take(o.limit as usize).collect()
            } else {
                all
            };
            if o.keys_only {
                kvs.iter_mut().for_each(|kv| kv.value.clear());
            }
            Ok(RangeResult {
                kvs,
                count,
                rev: cur,
            })
        }
    }

    fn rand_key(rng: &mut StdRng) -> Vec<u8> {
        const ALPHA: &[u8] = &[0, b'a', b'b', b'c', 0xff];
        let len = rng.gen_range(0..=3);
        let mut k: Vec<u8> = (0..len)
            .map(|_| ALPHA[rng.gen_range(0..ALPHA.len())])
            .collect();
        if k.is_empty() {
            k.push(b'a');
        }
        k
    }

    fn rand_end(rng: &mut StdRng) -> Vec<u8> {
        match rng.gen_range(0..10) {
            0..=2 => vec![],
            3 => vec![0],
            _ => rand_key(rng),
        }
    }

    fn rand_opts(rng: &mut StdRng, cur: i64) -> RangeOptions {
        RangeOptions {
            limit: rng.gen_range(-1..4),
            rev: if rng.gen_bool(0.3) {
                0
            } else {
                rng.gen_range(-1..=cur + 2)
            },
            count_only: rng.gen_bool(0.1),
            keys_only: rng.gen_bool(0.1),
            uncounted: false,
        }
    }

    /// `s` with its pending removal carried out.
    fn through(s: &MemStore) -> MemStore {
        let mut t = s.clone();
        while t.removal_step(usize::MAX) {}
        t
    }

    #[test]
    fn randomized_against_model() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut s = MemStore::new();
        let mut m = Model::new();
        let mut compactions = 0;
        for step in 0..3000 {
            match rng.gen_range(0..10) {
                // Write transaction with a few mixed operations.
                0..=5 => {
                    let begin = m.cur;
                    let mut expect_events = vec![];
                    let mut t = s.write();
                    for _ in 0..rng.gen_range(0..4) {
                        let main = begin + 1;
                        let sub = expect_events.len() as i64;
                        let cur = if expect_events.is_empty() {
                            begin
                        } else {
                            main
                        };
                        match rng.gen_range(0..5) {
                            0 | 1 => {
                                let k = rand_key(&mut rng);
                                let v = vec![rng.gen::<u8>(); rng.gen_range(0..4)];
                                let lease = rng.gen_range(0..3);
                                let prev = m.state_at(i64::MAX).remove(&k);
                                assert_eq!(t.put(&k, v.clone().into(), lease), prev);
                                m.log
                                    .push((k.clone(), Revision::new(main, sub), Some((v, lease))));
                                let kv = m.state_at(i64::MAX).remove(&k).unwrap();
                                assert_eq!(t.get(&k).as_ref(), Some(&kv));
                                expect_events.push(Event {
                                    kind: EventKind::Put,
                                    kv,
                                    prev_kv: prev,
                                });
                            }
                            2 => {
                                let (k, e) = (rand_key(&mut rng), rand_end(&mut rng));
                                let prevs: Vec<KeyValue> = m
                                    .state_at(i64::MAX)
                                    .into_values()
                                    .filter(|kv| in_range(&kv.key, &k, &e))
                                    .collect();
                                assert_eq!(t.delete_range(&k, &e), prevs);
                                for (i, p) in prevs.into_iter().enumerate() {
                                    let r = Revision::new(main, sub + i as i64);
                                    m.log.push((p.key.clone(), r, None));
                                    let kv = KeyValue {
                                        key: p.key.clone(),
                                        mod_revision: main,
                                        ..Default::default()
                                    };
                                    expect_events.push(Event {
                                        kind: EventKind::Delete,
                                        kv,
                                        prev_kv: Some(p),
                                    });
                                }
                            }
                            _ => {
                                let (k, e) = (rand_key(&mut rng), rand_end(&mut rng));
                                let o = rand_opts(&mut rng, cur);
                                assert_eq!(t.range(&k, &e, &o), m.range(&k, &e, &o, cur));
                            }
                        }
                    }
                    let (rev, events) = t.end();
                    if !expect_events.is_empty() {
                        m.cur += 1;
                    }
                    assert_eq!(rev, m.cur, "step {step}");
                    assert_eq!(events, expect_events, "step {step}");
                }
                6 | 7 => {
                    for _ in 0..3 {
                        let (k, e) = (rand_key(&mut rng), rand_end(&mut rng));
                        let o = rand_opts(&mut rng, m.cur);
                        assert_eq!(
                            s.range(&k, &e, &o),
                            m.range(&k, &e, &o, m.cur),
                            "step {step}"
                        );
                    }
                }
                8 => {
                    let rev = rng.gen_range(m.compacted - 1..=m.cur + 1);
                    let want = if rev <= m.compacted {
                        Err(MvccError::Compacted)
                    } else if rev > m.cur {
                        Err(MvccError::FutureRevision)
                    } else {
                        m.compacted = rev;
                        compactions += 1;
                        Ok(())
                    };
                    // Half of them leave the removal to slices, taken now
                    // and then below: a store whose removal is under way
                    // answers as one through with it.
                    if rng.gen_bool(0.5) {
                        assert_eq!(s.compact(rev), want, "step {step}");
                        assert!(!s.removal_pending() || want.is_err());
                    } else {
                        assert_eq!(s.compact_in_slices(rev), want, "step {step}");
                    }
                }
                9 if rng.gen_bool(0.5) => {
                    s.removal_step(rng.gen_range(1..6));
                }
                _ => {
                    let h = crate::storage::engine::AppliedPoint::default()
                        .header(s.current_revision(), s.compact_main_revision());
                    let img =
                        crate::storage::image::write_memory_image(&s, &h, Vec::new()).unwrap();
                    let (_, d) =
                        crate::storage::image::read_into_store(img.as_slice(), true).unwrap();
                    assert_eq!(d, through(&s));
                }
            }
            assert_eq!(s.current_revision(), m.cur);
            assert_eq!(s.key_count(), m.state_at(m.cur).len());
            assert_eq!(s.recount(), (s.live_keys, s.size_bytes));
            // Every readable revision must agree, not just the sampled ones,
            // and history from every one as with the removal through.
            if step % 100 == 0 {
                let t = through(&s);
                for from in s.compact_rev.max(1)..=m.cur + 1 {
                    assert_eq!(
                        s.history(b"", &[0], from, usize::MAX),
                        t.history(b"", &[0], from, usize::MAX),
                        "step {step}, history from {from}"
                    );
                }
                for rev in m.compacted.max(1)..=m.cur {
                    let o = RangeOptions {
                        rev,
                        ..Default::default()
                    };
                    assert_eq!(s.range(b"", &[0], &o), m.range(b"", &[0], &o, m.cur));
                }
            }
        }
        assert!(m.cur > 500, "too few writes to mean anything: {}", m.cur);
        assert!(compactions > 20, "too few compactions: {compactions}");
    }
}
