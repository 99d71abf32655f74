//! Write transactions (etcd `storeTxnWrite`).

use bytes::Bytes;

use super::history::{KeyHistory, Version};
use super::store::{key_bounds, key_size, MemStore};
use super::value::Value;
use super::{Event, EventKind, KeyValue, MvccError, RangeOptions, RangeResult};
use crate::storage::Revision;

/// A write transaction over a [`MemStore`].
///
/// As in etcd, every put/delete is applied to the store immediately, at
/// revision `current + 1` with the next sub revision; reads inside the
/// transaction therefore see its own earlier writes. `end()` only publishes
/// the new current revision and hands back the events.
///
/// Dropping the transaction without calling `end()` commits it exactly as
/// `end()` would (the events are discarded): the writes are already in the
/// store, and rolling them back would need an undo log nobody asked for.
pub struct WriteTxn<'a> {
    store: &'a mut MemStore,
    begin_rev: i64,
    /// One entry per change when the store records events.
    events: Vec<Event>,
    /// Where each event's previous version was stored (with `events`).
    prev_revs: Vec<Option<Revision>>,
    /// Changes so far: the next sub revision.
    changes: i64,
    finished: bool,
}

impl<'a> WriteTxn<'a> {
    /// Starts a transaction on top of the store's current revision.
    pub(super) fn new(store: &'a mut MemStore) -> Self {
        let begin_rev = store.current_rev;
        WriteTxn {
            store,
            begin_rev,
            events: Vec::new(),
            prev_revs: Vec::new(),
            changes: 0,
            finished: false,
        }
    }

    /// Revision this transaction's reads treat as current: its own revision
    /// once it has changed something, as etcd's `storeTxnWrite.Range`.
    fn read_rev(&self) -> i64 {
        if self.changes == 0 {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    /// Revision the next put/delete of this transaction is stored at.
    pub fn next_revision(&self) -> Revision {
        self.next_rev()
    }

    /// Like `range`, also returning each returned kv's revision (see
    /// [`MemStore::range_with_revisions`]).
    pub fn range_with_revisions(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<(RangeResult, Vec<Revision>), MvccError> {
        self.store
            .range_with_revisions_at(key, range_end, opts, self.read_rev())
    }

    fn next_rev(&self) -> Revision {
        Revision::new(self.begin_rev + 1, self.changes)
    }

    /// Range read that sees this transaction's own writes; `opts.rev == 0`
    /// means the latest state including them.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.store.range_at(key, range_end, opts, self.read_rev())
    }

    /// The latest live value of `key`, including this transaction's writes.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let h = self.store.keys.get(key)?;
        h.latest_live().map(|v| v.to_kv(key, true))
    }

    /// Writes `key = value`; returns the key's previous live state, if any.
    pub fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> Option<KeyValue> {
        self.put_inner(key, value, lease, true)
    }

    /// Writes `key = value` without materialising the previous state: the hot
    /// path when the caller asked for no prev_kv (saves a copy of the old value).
    pub fn put_blind(&mut self, key: &[u8], value: Bytes, lease: i64) {
        self.put_inner(key, value, lease, false);
    }

    fn put_inner(
        &mut self,
        key: &[u8],
        value: Bytes,
        lease: i64,
        want_prev: bool,
    ) -> Option<KeyValue> {
        let rev = self.next_rev();
        self.changes += 1;
        let store = &mut *self.store;
        let record = store.record_events;
        // The event shares the stored bytes (a reference, not a copy); an
        // index-only store keeps no value, so the event takes it whole.
        let (event_value, kept) = match (record, store.keep_values) {
            (true, true) => {
                let kept = Value::new(value);
                (kept.to_bytes(), kept)
            }
            (true, false) => (value, Value::default()),
            (false, true) => (Bytes::new(), Value::new(value)),
            (false, false) => (Bytes::new(), Value::default()),
        };
        let mut version = Version {
            rev,
            create_revision: rev.main,
            version: 1,
            lease,
            value: kept,
        };
        store.size_bytes += version.size();
        let mut prev_rev = None;
        let (had_prev, prev_kv, create_revision, ver) = match store.keys.get_mut(key) {
            Some(h) => {
                let prev = h.latest_live();
                // An index-only store's events leave prev_kv out: its caller
                // keeps the values and the index holds none to copy.
                let prev_kv = if want_prev || (record && (store.keep_values || store.event_prevs)) {
                    prev.map(|p| p.to_kv(key, true))
                } else {
                    None
                };
                prev_rev = prev.map(|p| p.rev);
                let had_prev = prev.is_some();
                if let Some(p) = prev {
                    version.create_revision = p.create_revision;
                    version.version = p.version + 1;
                }
                let (create_revision, ver) = (version.create_revision, version.version);
                h.push(version);
                (had_prev, prev_kv, create_revision, ver)
            }
            None => {
                store.size_bytes += key_size(key);
                store
                    .keys
                    .insert(key.into(), KeyHistory::with_first(version));
                (false, None, rev.main, 1)
            }
        };
        if !had_prev {
            store.live_keys += 1;
        }
        if !record {
            return prev_kv;
        }
        self.prev_revs.push(prev_kv.as_ref().and(prev_rev));
        self.events.push(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_vec(),
                create_revision,
                mod_revision: rev.main,
                version: ver,
                value: event_value,
                lease,
            },
            prev_kv: prev_kv.clone(),
        });
        prev_kv
    }

    /// Deletes every live key in `[key, range_end)` (same conventions as
    /// `range`); returns their previous states in ascending key order.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        self.delete_range_inner(key, range_end, None)
    }

    /// Like `delete_range`, also returning where each deleted version was
    /// written (`revs[i]` for the i-th previous state).
    pub fn delete_range_with_revisions(
        &mut self,
        key: &[u8],
        range_end: &[u8],
    ) -> (Vec<KeyValue>, Vec<Revision>) {
        let mut revs = Vec::new();
        let deleted = self.delete_range_inner(key, range_end, Some(&mut revs));
        (deleted, revs)
    }

    fn delete_range_inner(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        mut revs: Option<&mut Vec<Revision>>,
    ) -> Vec<KeyValue> {
        let Some(bounds) = key_bounds(key, range_end) else {
            return Vec::new();
        };
        let main = self.begin_rev + 1;
        let store = &mut *self.store;
        let record = store.record_events;
        let events = &mut self.events;
        let prev_revs = &mut self.prev_revs;
        let changes = &mut self.changes;
        let mut deleted = Vec::new();
        for (k, h) in store.keys.range_mut::<[u8], _>(bounds) {
            let Some(live) = h.latest_live() else {
                continue;
            };
            let prev = live.to_kv(k, true);
            let live_rev = live.rev;
            if let Some(revs) = revs.as_deref_mut() {
                revs.push(live_rev);
            }
            let tomb = Version::tombstone(Revision::new(main, *changes));
            *changes += 1;
            store.size_bytes += tomb.size();
            h.push(tomb);
            if record {
                prev_revs.push(Some(live_rev));
                events.push(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: k.to_vec(),
                        mod_revision: main,
                        ..KeyValue::default()
                    },
                    prev_kv: Some(prev.clone()),
                });
            }
            deleted.push(prev);
        }
        store.live_keys -= deleted.len();
        deleted
    }

    /// Commits: returns the store's revision afterwards (unchanged if the
    /// transaction changed nothing) and the changes in order.
    pub fn end(mut self) -> (i64, Vec<Event>) {
        self.finish()
    }

    /// Like `end`, also returning where each event's `prev_kv` was stored
    /// (for an index-only store whose caller keeps the values).
    pub fn end_with_prev_revisions(mut self) -> (i64, Vec<Event>, Vec<Option<Revision>>) {
        let (rev, events) = self.finish();
        (rev, events, std::mem::take(&mut self.prev_revs))
    }

    fn finish(&mut self) -> (i64, Vec<Event>) {
        if !self.finished {
            self.finished = true;
            if self.changes > 0 {
                self.store.current_rev = self.begin_rev + 1;
            }
        }
        (self.store.current_rev, std::mem::take(&mut self.events))
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        // Writes are already in the store; leaving the revision behind would
        // let the next transaction reuse it.
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::tests::put1;
    use super::*;

    fn get(s: &MemStore, k: &[u8]) -> Option<KeyValue> {
        s.range(k, b"", &RangeOptions::default()).unwrap().kvs.pop()
    }

    /// The same writes with and without event recording leave identical stores.
    #[test]
    fn recording_events_changes_nothing_but_the_events() {
        let run = |record: bool| {
            let mut s = MemStore::new();
            s.set_record_events(record);
            let mut t = s.write();
            t.put_blind(b"a", b"1".to_vec().into(), 0);
            t.put(b"b", b"2".to_vec().into(), 0);
            let (rev, events) = t.end();
            assert_eq!(rev, 2);
            assert_eq!(events.len(), if record { 2 } else { 0 });
            let mut t = s.write();
            assert_eq!(t.delete_range(b"a", b"c").len(), 2);
            t.put_blind(b"a", b"3".to_vec().into(), 0);
            assert_eq!(t.end().0, 3);
            assert_eq!(get(&s, b"a").unwrap().mod_revision, 3);
            assert!(get(&s, b"b").is_none());
            s.set_record_events(true);
            s
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn revision_numbering_like_etcd() {
        let mut s = MemStore::new();
        assert_eq!(put1(&mut s, b"foo", b"bar"), 2);
        let kv = get(&s, b"foo").unwrap();
        assert_eq!(
            kv,
            KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec().into(),
                lease: 0
            }
        );
        assert_eq!(put1(&mut s, b"foo", b"baz"), 3);
        let kv = get(&s, b"foo").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

        // Two puts in one txn share the main revision, subs 0 and 1.
        let mut t = s.write();
        assert_eq!(t.put(b"x", b"1".to_vec().into(), 7), None);
        t.put(b"y", b"2".to_vec().into(), 0);
        assert_eq!(t.end().0, 4);
        let revs: Vec<Revision> = [&b"x"[..], b"y"]
            .iter()
            .map(|k| s.keys[*k].versions()[0].rev)
            .collect();
        assert_eq!(revs, vec![Revision::new(4, 0), Revision::new(4, 1)]);
        assert_eq!(get(&s, b"x").unwrap().lease, 7);

        // Delete bumps and leaves a tombstone.
        let mut t = s.write();
        let del = t.delete_range(b"foo", b"");
        assert_eq!(del.len(), 1);
        assert_eq!(del[0].value, &b"baz"[..]);
        assert_eq!(t.end().0, 5);
        assert!(get(&s, b"foo").is_none());
        assert!(s.keys[&b"foo"[..]].versions()[2].is_tombstone());
        assert_eq!(s.key_count(), 2);

        // Deleting a missing key changes nothing.
        let mut t = s.write();
        assert!(t.delete_range(b"foo", b"").is_empty());
        assert!(t.delete_range(b"nope", b"nopf").is_empty());
        assert_eq!(t.end(), (5, vec![]));
        // Nor does an empty txn, or one that only reads.
        let t = s.write();
        assert_eq!(t.end(), (5, vec![]));

        // Re-put after delete starts a new generation.
        assert_eq!(put1(&mut s, b"foo", b"again"), 6);
        let kv = get(&s, b"foo").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1));
    }

    #[test]
    fn same_key_twice_in_one_txn() {
        let mut s = MemStore::new();
        let mut t = s.write();
        t.put(b"k", b"1".to_vec().into(), 0);
        let prev = t.put(b"k", b"2".to_vec().into(), 0).unwrap();
        assert_eq!((prev.version, prev.mod_revision), (1, 2));
        let now = t.get(b"k").unwrap();
        assert_eq!(
            (now.create_revision, now.mod_revision, now.version),
            (2, 2, 2)
        );
        let (rev, ev) = t.end();
        assert_eq!(rev, 2);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].kv.version, 2);
    }

    #[test]
    fn txn_range_sees_own_writes() {
        let mut s = MemStore::new();
        put1(&mut s, b"a", b"old"); // 2
        let mut t = s.write();
        let o = RangeOptions::default();
        assert_eq!(t.range(b"a", b"", &o).unwrap().rev, 2);
        // Before any change, the txn's revision is the store's.
        let future = RangeOptions { rev: 3, ..o };
        assert_eq!(t.range(b"a", b"", &future), Err(MvccError::FutureRevision));
        t.put(b"a", b"new".to_vec().into(), 0);
        t.put(b"b", b"1".to_vec().into(), 0);
        let r = t.range(b"", &[0], &o).unwrap();
        assert_eq!(r.rev, 3);
        assert_eq!(r.count, 2);
        assert_eq!(r.kvs[0].value, &b"new"[..]);
        // Its own revision is now readable; the previous one shows old data.
        assert_eq!(t.range(b"", &[0], &future).unwrap(), r);
        let old = t.range(b"", &[0], &RangeOptions { rev: 2, ..o }).unwrap();
        assert_eq!(
            (old.count, &old.kvs[0].value[..], old.rev),
            (1, &b"old"[..], 3)
        );
        t.delete_range(b"a", b"");
        assert_eq!(t.range(b"", &[0], &o).unwrap().count, 1);
        assert!(t.get(b"a").is_none());
        assert_eq!(t.end().0, 3);
        assert_eq!(s.range(b"", &[0], &o).unwrap().count, 1);
    }

    #[test]
    fn events_from_end() {
        let mut s = MemStore::new();
        put1(&mut s, b"a", b"1"); // 2
        put1(&mut s, b"b", b"1"); // 3
        let mut t = s.write();
        t.put(b"a", b"2".to_vec().into(), 5);
        let deleted = t.delete_range(b"a", b"c");
        assert_eq!(
            deleted
                .iter()
                .map(|kv| kv.key.as_slice())
                .collect::<Vec<_>>(),
            vec![&b"a"[..], b"b"]
        );
        assert_eq!(deleted[0].value, &b"2"[..]);
        t.put(b"c", b"3".to_vec().into(), 0);
        let (rev, ev) = t.end();
        assert_eq!(rev, 4);
        let a2 = KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 4,
            version: 2,
            value: b"2".to_vec().into(),
            lease: 5,
        };
        let a1 = KeyValue {
            mod_revision: 2,
            version: 1,
            value: b"1".to_vec().into(),
            lease: 0,
            ..a2.clone()
        };
        let b1 = KeyValue {
            key: b"b".to_vec(),
            create_revision: 3,
            mod_revision: 3,
            version: 1,
            value: b"1".to_vec().into(),
            lease: 0,
        };
        let tomb = |k: &[u8]| KeyValue {
            key: k.to_vec(),
            mod_revision: 4,
            ..Default::default()
        };
        let c = KeyValue {
            key: b"c".to_vec(),
            create_revision: 4,
            mod_revision: 4,
            version: 1,
            value: b"3".to_vec().into(),
            lease: 0,
        };
        assert_eq!(
            ev,
            vec![
                Event {
                    kind: EventKind::Put,
                    kv: a2.clone(),
                    prev_kv: Some(a1)
                },
                Event {
                    kind: EventKind::Delete,
                    kv: tomb(b"a"),
                    prev_kv: Some(a2)
                },
                Event {
                    kind: EventKind::Delete,
                    kv: tomb(b"b"),
                    prev_kv: Some(b1)
                },
                Event {
                    kind: EventKind::Put,
                    kv: c,
                    prev_kv: None
                },
            ]
        );
        let subs: Vec<i64> = s.keys[&b"a"[..]]
            .versions()
            .iter()
            .map(|v| v.rev.sub)
            .collect();
        assert_eq!(subs, vec![0, 0, 1]);
        assert_eq!(s.keys[&b"c"[..]].versions()[0].rev, Revision::new(4, 3));
    }

    #[test]
    fn drop_without_end_commits() {
        let mut s = MemStore::new();
        {
            let mut t = s.write();
            t.put(b"a", b"1".to_vec().into(), 0);
        }
        assert_eq!(s.current_revision(), 2);
        assert_eq!(put1(&mut s, b"b", b"1"), 3);
        assert_eq!(s.key_count(), 2);
    }
}
