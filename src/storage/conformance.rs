//! The storage conformance suite: what every [`KvEngine`] must do, written
//! once against the trait. Each engine's tests call [`run_all`] with a
//! constructor for a fresh, empty engine.

use super::engine::{KvEngine, KvTxn, StateEngine};
use crate::storage::{EventKind, KeyValue, MvccError, RangeOptions};

fn get<E: KvEngine>(e: &E, key: &[u8], rev: i64) -> Result<Option<KeyValue>, MvccError> {
    let opts = RangeOptions {
        rev,
        ..Default::default()
    };
    Ok(e.range(key, &[], &opts)?.kvs.pop())
}

fn put<E: KvEngine>(e: &mut E, key: &[u8], value: &[u8]) -> i64 {
    let mut t = e.write();
    t.put_blind(key, value.to_vec().into(), 0);
    t.end().0
}

fn keys<E: KvEngine>(e: &E, key: &[u8], end: &[u8]) -> Vec<Vec<u8>> {
    e.range(key, end, &RangeOptions::default())
        .expect("range at the current revision")
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

/// Revisions, versions and create revisions as etcd numbers them.
pub fn revisions<E: KvEngine>(mut e: E) {
    assert_eq!(e.current_revision(), 1, "an empty store is at revision 1");
    assert_eq!(put(&mut e, b"a", b"1"), 2);
    assert_eq!(put(&mut e, b"a", b"2"), 3);
    let kv = get(&e, b"a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // One txn, two puts: one main revision.
    let mut t = e.write();
    t.put_blind(b"b", b"x".to_vec().into(), 0);
    t.put_blind(b"c", b"y".to_vec().into(), 0);
    assert_eq!(t.end().0, 4);
    // Deleting nothing keeps the revision; deleting something bumps it.
    let mut t = e.write();
    assert!(t.delete_range(b"zz", &[]).is_empty());
    assert_eq!(t.end().0, 4);
    let mut t = e.write();
    assert_eq!(t.delete_range(b"a", &[]).len(), 1);
    assert_eq!(t.end().0, 5);
    assert_eq!(get(&e, b"a", 0).unwrap(), None);
    // A new generation after a delete.
    assert_eq!(put(&mut e, b"a", b"3"), 6);
    let kv = get(&e, b"a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (6, 1));
    // History.
    assert_eq!(get(&e, b"a", 2).unwrap().unwrap().value, &b"1"[..]);
    assert_eq!(get(&e, b"a", 5).unwrap(), None);
    assert_eq!(get(&e, b"a", 7), Err(MvccError::FutureRevision));
}

/// Single keys, prefixes, from-key and empty ranges; limit and count.
pub fn ranges<E: KvEngine>(mut e: E) {
    for k in ["a", "ab", "abc", "b", "c"] {
        put(&mut e, k.as_bytes(), b"v");
    }
    assert_eq!(keys(&e, b"ab", &[]), vec![b"ab".to_vec()]);
    assert_eq!(keys(&e, b"ab", b"ac").len(), 2);
    assert_eq!(keys(&e, b"b", &[0]).len(), 2, "from-key");
    assert!(keys(&e, b"c", b"a").is_empty(), "range_end before key");
    let r = e
        .range(
            b"a",
            &[0],
            &RangeOptions {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (2, 5));
    let r = e
        .range(
            b"a",
            &[0],
            &RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 5));
}

/// Reads inside a write txn see its own writes.
pub fn txn_reads_its_writes<E: KvEngine>(mut e: E) {
    put(&mut e, b"k", b"old");
    let mut t = e.write();
    t.put_blind(b"k", b"new".to_vec().into(), 0);
    let seen = t.range(b"k", &[], &RangeOptions::default()).unwrap();
    assert_eq!(seen.kvs[0].value, &b"new"[..]);
    assert_eq!(t.end().0, 3);
}

/// Compaction keeps the newest version of live keys and refuses old reads.
pub fn compaction<E: KvEngine>(mut e: E) {
    put(&mut e, b"a", b"1"); // 2
    put(&mut e, b"a", b"2"); // 3
    put(&mut e, b"b", b"1"); // 4
    let mut t = e.write();
    t.delete_range(b"b", &[]); // 5
    t.end();
    put(&mut e, b"a", b"3"); // 6
    assert_eq!(e.compact(7), Err(MvccError::FutureRevision));
    e.compact(5).unwrap();
    assert_eq!(e.compact(5), Err(MvccError::Compacted));
    // A deletion at exactly the compaction revision is still sent to a
    // watch from that revision (etcd#18089), until the next compaction.
    let at5 = e.history(b"b", b"c", 5, 100).unwrap();
    assert_eq!(at5.len(), 1);
    assert_eq!(
        (at5[0].kind, at5[0].kv.mod_revision),
        (EventKind::Delete, 5)
    );
    assert_eq!(get(&e, b"a", 4), Err(MvccError::Compacted));
    assert_eq!(get(&e, b"a", 5).unwrap().unwrap().value, &b"2"[..]);
    assert_eq!(get(&e, b"b", 5).unwrap(), None);
    assert_eq!(get(&e, b"a", 0).unwrap().unwrap().value, &b"3"[..]);
    assert_eq!(e.current_revision(), 6, "compaction takes no revision");
    e.compact(6).unwrap();
    assert!(e.history(b"b", b"c", 6, 100).unwrap().is_empty());
    assert_eq!(get(&e, b"b", 6).unwrap(), None);
}

/// History (what a watcher from the past is sent): every change in range
/// from a revision on, values and previous values filled, whole revisions.
pub fn history<E: KvEngine>(mut e: E) {
    put(&mut e, b"a", b"1"); // 2
    put(&mut e, b"a", b"2"); // 3
    put(&mut e, b"b", b"x"); // 4
    let mut t = e.write();
    t.delete_range(b"a", b"c"); // 5: a and b
    t.end();
    put(&mut e, b"z", b"out of range"); // 6
    let all = e.history(b"a", b"c", 2, 100).unwrap();
    type Seen<'a> = (EventKind, &'a [u8], i64, &'a [u8], Option<&'a [u8]>);
    let seen: Vec<Seen> = all
        .iter()
        .map(|ev| {
            (
                ev.kind,
                ev.kv.key.as_slice(),
                ev.kv.mod_revision,
                &ev.kv.value[..],
                ev.prev_kv.as_ref().map(|p| &p.value[..]),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, &b"a"[..], 2, &b"1"[..], None),
            (EventKind::Put, b"a", 3, b"2", Some(&b"1"[..])),
            (EventKind::Put, b"b", 4, b"x", None),
            (EventKind::Delete, b"a", 5, b"", Some(&b"2"[..])),
            (EventKind::Delete, b"b", 5, b"", Some(&b"x"[..])),
        ]
    );
    // A chunk never splits a revision: asking for 4 gives through rev 5.
    assert_eq!(e.history(b"a", b"c", 2, 4).unwrap().len(), 5);
    assert_eq!(e.history(b"a", b"c", 2, 2).unwrap().len(), 2);
    assert_eq!(e.history(b"a", b"c", 4, 100).unwrap().len(), 3);
    assert!(e.history(b"a", b"c", 7, 100).unwrap().is_empty());
    e.compact(4).unwrap();
    assert_eq!(e.history(b"a", b"c", 3, 100), Err(MvccError::Compacted));
    // From the compacted revision: what compaction kept of it, and after.
    let kept = e.history(b"a", b"c", 4, 100).unwrap();
    assert_eq!(kept.len(), 3);
    assert_eq!(
        kept[1].prev_kv.as_ref().map(|p| &p.value[..]),
        Some(&b"2"[..])
    );
}

/// Watched, a write txn returns complete events: the written values, and
/// the previous states with their values (as a watcher with prev_kv gets).
pub fn watched_events<E: StateEngine>(mut e: E) {
    e.set_watched(true);
    put(&mut e, b"a", b"1"); // 2
    let mut t = e.write();
    t.put_blind(b"a", b"2".to_vec().into(), 0);
    t.put_blind(b"b", b"x".to_vec().into(), 7);
    let (rev, events) = t.end();
    assert_eq!(rev, 3);
    let seen: Vec<_> = events
        .iter()
        .map(|ev| {
            (
                ev.kind,
                ev.kv.key.clone(),
                ev.kv.value.to_vec(),
                ev.kv.lease,
                ev.prev_kv
                    .as_ref()
                    .map(|p| (p.value.to_vec(), p.mod_revision)),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                EventKind::Put,
                b"a".to_vec(),
                b"2".to_vec(),
                0,
                Some((b"1".to_vec(), 2))
            ),
            (EventKind::Put, b"b".to_vec(), b"x".to_vec(), 7, None),
        ]
    );
    let mut t = e.write();
    t.delete_range(b"a", b"c");
    let (_, events) = t.end();
    let prevs: Vec<_> = events
        .iter()
        .map(|ev| {
            (
                ev.kind,
                ev.kv.mod_revision,
                ev.prev_kv.clone().map(|p| p.value.to_vec()),
            )
        })
        .collect();
    assert_eq!(
        prevs,
        vec![
            (EventKind::Delete, 4, Some(b"2".to_vec())),
            (EventKind::Delete, 4, Some(b"x".to_vec())),
        ]
    );
    e.set_watched(false);
    let mut t = e.write();
    t.put_blind(b"c", b"y".to_vec().into(), 0);
    let (_, events) = t.end();
    assert!(
        events.iter().all(|ev| ev.kv.value.is_empty()),
        "unwatched, no values are copied into events"
    );
}

/// Runs every case, each on a fresh engine from `make`.
pub fn run_all<E: StateEngine>(make: impl Fn() -> E) {
    revisions(make());
    ranges(make());
    txn_reads_its_writes(make());
    compaction(make());
    history(make());
    watched_events(make());
}

#[test]
fn mem_store_conforms() {
    run_all(|| super::memory::MemoryEngine::new(crate::storage::memory::mvcc::MemStore::new()));
}
