//! The hub against a real MVCC store: what every watcher receives.

use std::sync::Arc;

use prost::Message as _;
use tokio::sync::mpsc;

use super::*;
use crate::proto::etcdserverpb::WatchCreateRequest;
use crate::proto::mvccpb;
use crate::storage::engine::KvEngine;
use crate::storage::memory::mvcc::MemStore;

struct Store(MemStore);

impl HistorySource for Store {
    fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        KvEngine::history(&self.0, key, end, from, max)
    }
}

/// A store and a hub fed by it, as the ApplyActor drives them.
struct Fixture {
    store: Store,
    hub: Hub,
}

impl Fixture {
    fn new(cfg: HubConfig) -> Fixture {
        let mut store = MemStore::new();
        store.set_record_events(true);
        let status = Arc::new(NodeStatus::new(7, 9));
        let hub = Hub::new(cfg, status, store.current_revision(), -1);
        Fixture {
            store: Store(store),
            hub,
        }
    }

    fn put(&mut self, key: &str, value: &str) -> i64 {
        let mut t = self.store.0.write();
        t.put_blind(key.as_bytes(), value.as_bytes().to_vec().into(), 0);
        let (rev, events) = t.end();
        self.hub.publish(&events, rev);
        rev
    }

    fn delete(&mut self, key: &str, end: &str) -> i64 {
        let mut t = self.store.0.write();
        t.delete_range(key.as_bytes(), end.as_bytes());
        let (rev, events) = t.end();
        self.hub.publish(&events, rev);
        rev
    }

    fn compact(&mut self, rev: i64) {
        self.store.0.compact(rev).unwrap();
        self.hub.compacted(rev);
    }

    fn catch_up(&mut self) -> bool {
        self.hub.catch_up(&self.store, 10_000).lagging
    }

    fn open(&mut self, capacity: usize) -> (StreamId, mpsc::Receiver<Vec<WatchOut>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (self.hub.open_stream(tx), rx)
    }
}

fn watch(key: &str, end: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// (watch id, event type, key, value, mod revision, prev value) for every
/// event, and the control responses as (watch id, created, canceled,
/// compact revision, cancel reason).
#[derive(Debug, Default)]
struct Seen {
    events: Vec<(i64, i32, String, String, i64, Option<String>)>,
    control: Vec<(i64, bool, bool, i64, String)>,
    fragments: usize,
    headers: Vec<i64>,
}

fn drain(rx: &mut mpsc::Receiver<Vec<WatchOut>>, seen: &mut Seen) {
    while let Ok(batch) = rx.try_recv() {
        for out in batch {
            // What the client reads: the response as it is encoded.
            let r = WatchResponseWire::decode(out.encode_to_vec().as_slice())
                .expect("a response decodes");
            seen.headers
                .push(r.header.as_ref().map_or(-1, |h| h.revision));
            if r.fragment {
                seen.fragments += 1;
            }
            if r.events.is_empty() {
                seen.control.push((
                    r.watch_id,
                    r.created,
                    r.canceled,
                    r.compact_revision,
                    r.cancel_reason.clone(),
                ));
            }
            for e in &r.events {
                let e = mvccpb::Event::decode(e.as_ref()).expect("an encoded event");
                let kv = e.kv.unwrap_or_default();
                seen.events.push((
                    r.watch_id,
                    e.r#type,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision,
                    e.prev_kv
                        .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
                ));
            }
        }
    }
}

fn received(rx: &mut mpsc::Receiver<Vec<WatchOut>>) -> Seen {
    let mut seen = Seen::default();
    drain(rx, &mut seen);
    seen
}

/// What arrived, in order: "event R" per event, "progress R" per
/// progress response (watch id -1).
fn arrival(rx: &mut mpsc::Receiver<Vec<WatchOut>>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        for o in batch {
            let r = WatchResponseWire::decode(o.encode_to_vec().as_slice()).unwrap();
            for e in &r.events {
                let e = mvccpb::Event::decode(e.as_ref()).unwrap();
                out.push(format!("event {}", e.kv.unwrap_or_default().mod_revision));
            }
            if r.events.is_empty() && r.watch_id == -1 {
                out.push(format!("progress {}", r.header.map_or(-1, |h| h.revision)));
            }
        }
    }
    out
}

const PUT: i32 = 0;
const DELETE: i32 = 1;

#[test]
fn live_events_reach_matching_watchers_once() {
    let mut f = Fixture::new(HubConfig::default());
    let (s, mut rx) = f.open(64);
    f.hub.create(s, &watch("a", "")); // id 0: one key
    f.hub.create(s, &watch("p/", "p0")); // id 1: prefix
    f.hub.create(s, &watch("m", "\0")); // id 2: from "m" on
    assert!(f.hub.watching());
    f.put("a", "1"); // 2
    f.put("p/x", "2"); // 3
    f.put("z", "3"); // 4
    f.delete("a", ""); // 5
    let mut seen = received(&mut rx);
    // Within a batch, watchers are served in no particular order.
    seen.events.sort_by_key(|e| (e.4, e.0));
    assert_eq!(
        seen.control,
        vec![
            (0, true, false, 0, String::new()),
            (1, true, false, 0, String::new()),
            (2, true, false, 0, String::new()),
        ]
    );
    assert_eq!(
        seen.events,
        vec![
            (0, PUT, "a".into(), "1".into(), 2, None),
            (1, PUT, "p/x".into(), "2".into(), 3, None),
            (2, PUT, "p/x".into(), "2".into(), 3, None),
            (2, PUT, "z".into(), "3".into(), 4, None),
            (0, DELETE, "a".into(), "".into(), 5, None),
        ]
    );
    // Headers: created at revision 1, events at their revision.
    assert_eq!(seen.headers, vec![1, 1, 1, 2, 3, 3, 4, 5]);
}

#[test]
fn filters_prev_kv_and_ids() {
    let mut f = Fixture::new(HubConfig::default());
    let (s, mut rx) = f.open(64);
    let mut no_put = watch("k", "");
    no_put.filters = vec![FilterType::Noput as i32];
    no_put.watch_id = 5;
    f.hub.create(s, &no_put);
    let mut prev = watch("k", "");
    prev.prev_kv = true;
    f.hub.create(s, &prev); // auto: 0
    let mut dup = watch("k", "");
    dup.watch_id = 5;
    f.hub.create(s, &dup);
    f.hub.create(s, &watch("b", "a")); // empty range
    f.put("k", "1");
    f.put("k", "2");
    f.delete("k", "");
    let mut seen = received(&mut rx);
    seen.events.sort_by_key(|e| (e.4, e.0));
    assert_eq!(
        seen.control,
        vec![
            (5, true, false, 0, String::new()),
            (0, true, false, 0, String::new()),
            (-1, true, true, 0, DUPLICATE_ID.to_owned()),
            (-1, true, true, 0, EMPTY_RANGE.to_owned()),
        ]
    );
    assert_eq!(
        seen.events,
        vec![
            (0, PUT, "k".into(), "1".into(), 2, None),
            (0, PUT, "k".into(), "2".into(), 3, Some("1".into())),
            (0, DELETE, "k".into(), "".into(), 4, Some("2".into())),
            (5, DELETE, "k".into(), "".into(), 4, None),
        ]
    );
}

#[test]
fn a_watch_from_the_past_replays_then_follows() {
    let mut f = Fixture::new(HubConfig::default());
    for i in 0..10 {
        f.put(&format!("k{i}"), &i.to_string()); // revisions 2..=11
    }
    let (s, mut rx) = f.open(64);
    let mut req = watch("k", "l");
    req.start_revision = 4;
    f.hub.create(s, &req);
    assert!(f.hub.has_lagging());
    f.put("k10", "10"); // 12: published while the watcher lags
    assert!(!f.catch_up(), "caught up in one slice");
    f.put("k11", "11"); // 13: live again
    let seen = received(&mut rx);
    let revs: Vec<i64> = seen.events.iter().map(|e| e.4).collect();
    assert_eq!(revs, (4..=13).collect::<Vec<_>>());
}

#[test]
fn compacted_start_is_canceled_with_the_compact_revision() {
    let mut f = Fixture::new(HubConfig::default());
    for i in 0..5 {
        f.put("k", &i.to_string()); // 2..=6
    }
    f.compact(5);
    let (s, mut rx) = f.open(64);
    let mut req = watch("k", "");
    req.start_revision = 3;
    f.hub.create(s, &req);
    f.catch_up();
    let seen = received(&mut rx);
    assert_eq!(
        seen.control,
        vec![
            (0, true, false, 0, String::new()),
            (0, false, true, 5, String::new())
        ]
    );
    assert!(seen.events.is_empty());
    assert!(!f.hub.watching(), "the canceled watcher is gone");
    // From the compacted revision itself: what compaction kept, and on.
    let mut req = watch("k", "");
    req.start_revision = 5;
    f.hub.create(s, &req);
    f.catch_up();
    let seen = received(&mut rx);
    let revs: Vec<i64> = seen.events.iter().map(|e| e.4).collect();
    assert_eq!(revs, vec![5, 6]);
}

#[test]
fn a_reader_that_never_reads_costs_bounded_memory_and_later_gets_everything() {
    let cfg = HubConfig {
        ring_bytes: 16 << 10,
        ..HubConfig::default()
    };
    let mut f = Fixture::new(cfg);
    let (slow, mut slow_rx) = f.open(2);
    let (fast, mut fast_rx) = f.open(2);
    f.hub.create(slow, &watch("k", "l"));
    f.hub.create(fast, &watch("k", "l"));
    let mut fast_seen = Seen::default();
    let value = "v".repeat(200);
    for i in 0..2000 {
        f.put(&format!("k{}", i % 50), &value);
        drain(&mut fast_rx, &mut fast_seen);
        f.catch_up();
        drain(&mut fast_rx, &mut fast_seen);
        assert!(f.hub.stats().ring_bytes <= 16 << 10, "the ring is bounded");
    }
    // The fast reader kept up: every revision once, in order.
    let revs: Vec<i64> = fast_seen.events.iter().map(|e| e.4).collect();
    assert_eq!(revs, (2..=2001).collect::<Vec<_>>());
    assert_eq!(f.hub.stats().lagging, 1, "only the slow one lags");
    // The slow reader starts reading: history from the engine, then the
    // ring, then live; nothing lost, nothing twice.
    let mut slow_seen = Seen::default();
    for _ in 0..10_000 {
        drain(&mut slow_rx, &mut slow_seen);
        if !f.catch_up() {
            break;
        }
    }
    drain(&mut slow_rx, &mut slow_seen);
    f.put("k1", "last");
    drain(&mut slow_rx, &mut slow_seen);
    let revs: Vec<i64> = slow_seen.events.iter().map(|e| e.4).collect();
    assert_eq!(revs, (2..=2002).collect::<Vec<_>>());
}

#[test]
fn progress_requests_wait_for_lagging_watchers() {
    let mut f = Fixture::new(HubConfig::default());
    for i in 0..3 {
        f.put("k", &i.to_string()); // 2..=4
    }
    let (s, mut rx) = f.open(64);
    let mut req = watch("k", "");
    req.start_revision = 2;
    f.hub.create(s, &req);
    f.hub.progress(s);
    let seen = received(&mut rx);
    assert_eq!(
        seen.control.len(),
        1,
        "only created: the watcher still lags"
    );
    f.catch_up();
    let seen = received(&mut rx);
    assert_eq!(seen.events.len(), 3);
    assert_eq!(seen.control, vec![(-1, false, false, 0, String::new())]);
    assert_eq!(seen.headers.last(), Some(&4));
}

#[test]
fn progress_notify_only_for_quiet_synced_watchers() {
    let mut f = Fixture::new(HubConfig::default());
    let (s, mut rx) = f.open(64);
    let mut req = watch("k", "");
    req.progress_notify = true;
    f.hub.create(s, &req);
    f.hub.create(s, &watch("k", "")); // no progress_notify
    received(&mut rx);
    f.hub.progress_tick();
    let seen = received(&mut rx);
    assert_eq!(seen.control, vec![(0, false, false, 0, String::new())]);
    f.put("k", "1");
    f.hub.progress_tick(); // events were sent since the last tick
    let seen = received(&mut rx);
    assert_eq!(seen.control, vec![]);
    f.hub.progress_tick();
    let seen = received(&mut rx);
    assert_eq!(seen.control, vec![(0, false, false, 0, String::new())]);
    assert_eq!(seen.headers, vec![2]);
}

#[test]
fn no_progress_below_a_future_start_revision() {
    // A client resumes its watch here from revision 6 (it saw 5 from a
    // member that was ahead); this member is at 3. Telling it "everything
    // up to 3 was sent" would move its progress back in time (etcd#20221).
    let mut f = Fixture::new(HubConfig::default());
    f.put("k", "a"); // 2
    f.put("k", "b"); // 3
    let (s, mut rx) = f.open(64);
    let mut req = watch("k", "");
    req.start_revision = 6;
    req.progress_notify = true;
    f.hub.create(s, &req);
    received(&mut rx);
    f.hub.progress(s);
    f.hub.progress_tick();
    let seen = received(&mut rx);
    assert_eq!(seen.control, vec![], "no progress at 3 for a watch from 6");
    f.put("other", "x"); // 4
    assert_eq!(received(&mut rx).control, vec![]);
    f.put("other", "y"); // 5: everything before the start revision is here
    let seen = received(&mut rx);
    assert_eq!(seen.control, vec![(-1, false, false, 0, String::new())]);
    assert_eq!(seen.headers, vec![5]);
    f.hub.progress_tick();
    let seen = received(&mut rx);
    assert_eq!(seen.control, vec![(0, false, false, 0, String::new())]);
    assert_eq!(seen.headers, vec![5]);
    f.put("k", "c"); // 6
    let seen = received(&mut rx);
    assert_eq!(seen.events.len(), 1);

    // One applied batch takes the store past the start revision (7 and 8
    // together; the watch is from 8): the event at 8 comes before the
    // progress at 8 that answers the waiting request.
    let (s2, mut rx2) = f.open(64);
    let mut req = watch("k", "");
    req.start_revision = 8;
    f.hub.create(s2, &req);
    received(&mut rx2);
    f.hub.progress(s2);
    assert_eq!(received(&mut rx2).control, vec![]);
    let mut t = f.store.0.write();
    t.put_blind(b"other", b"z".to_vec().into(), 0);
    let (_, mut events) = t.end(); // 7
    let mut t = f.store.0.write();
    t.put_blind(b"k", b"d".to_vec().into(), 0);
    let (rev, more) = t.end(); // 8
    events.extend(more);
    f.hub.publish(&events, rev);
    assert_eq!(arrival(&mut rx2), vec!["event 8", "progress 8"]);
}

#[test]
fn large_revisions_are_fragmented_for_watchers_that_ask() {
    let cfg = HubConfig {
        max_response_bytes: 1000,
        ..HubConfig::default()
    };
    let mut f = Fixture::new(cfg);
    let (s, mut rx) = f.open(64);
    let mut req = watch("k", "l");
    req.fragment = true;
    f.hub.create(s, &req);
    f.hub.create(s, &watch("k", "l"));
    received(&mut rx);
    let mut t = f.store.0.write();
    for i in 0..10 {
        t.put_blind(format!("k{i}").as_bytes(), vec![b'x'; 300].into(), 0);
    }
    let (rev, events) = t.end();
    f.hub.publish(&events, rev);
    let mut seen = Seen::default();
    drain(&mut rx, &mut seen);
    assert_eq!(seen.events.len(), 20);
    assert!(
        seen.fragments >= 3,
        "one revision of 3 KB in 1 KB fragments"
    );
    assert_eq!(seen.headers.len(), seen.fragments + 2);
}

#[test]
fn closing_a_stream_drops_its_watchers() {
    let mut f = Fixture::new(HubConfig::default());
    let (s, rx) = f.open(1);
    f.hub.create(s, &watch("k", ""));
    drop(rx);
    f.put("k", "1");
    assert_eq!(f.hub.stats().streams, 0, "a closed outbox ends the stream");
    assert!(!f.hub.watching());
    let (s, _rx) = f.open(1);
    f.hub.create(s, &watch("k", ""));
    f.hub.close_stream(s);
    assert!(!f.hub.watching());
}

#[test]
fn a_replaced_state_makes_watchers_catch_up_or_cancel() {
    let mut f = Fixture::new(HubConfig::default());
    let (s, mut rx) = f.open(64);
    f.hub.create(s, &watch("k", ""));
    f.put("k", "1"); // 2
                     // The leader's snapshot: revisions 3..=5 happened elsewhere, and the
                     // snapshot kept history from 3 on.
    for v in ["2", "3", "4"] {
        let mut t = f.store.0.write();
        t.put_blind(b"k", v.as_bytes().to_vec().into(), 0);
        t.end();
    }
    f.hub.state_replaced(f.store.0.current_revision(), -1);
    f.catch_up();
    let seen = received(&mut rx);
    let revs: Vec<i64> = seen.events.iter().map(|e| e.4).collect();
    assert_eq!(revs, vec![2, 3, 4, 5]);
}

#[test]
fn control_responses_wait_for_room_and_are_not_lost() {
    let mut f = Fixture::new(HubConfig::default());
    let (s, mut rx) = f.open(2);
    for _ in 0..10 {
        f.hub.create(s, &watch("k", ""));
    }
    let mut seen = received(&mut rx);
    assert!(seen.control.len() < 10, "the outbox holds two rounds");
    assert!(f.hub.has_lagging(), "the rest waits for room");
    while f.catch_up() {
        drain(&mut rx, &mut seen);
    }
    drain(&mut rx, &mut seen);
    let ids: Vec<i64> = seen.control.iter().map(|c| c.0).collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    f.put("k", "1");
    drain(&mut rx, &mut seen);
    f.catch_up();
    drain(&mut rx, &mut seen);
    assert_eq!(seen.events.len(), 10, "each watcher gets the put once");
}

/// Publishes several write transactions as one applied batch, as the
/// ApplyActor does: `sizes[i]` is the value length of the i-th revision.
fn publish_batch(f: &mut Fixture, key: &str, sizes: &[usize]) {
    let mut all = Vec::new();
    let mut rev = 0;
    for &n in sizes {
        let mut t = f.store.0.write();
        t.put_blind(key.as_bytes(), vec![b'v'; n].into(), 0);
        let (r, events) = t.end();
        all.extend(events);
        rev = r;
    }
    f.hub.publish(&all, rev);
}

#[test]
fn catching_up_sends_whole_batches_as_shared_frames_in_order() {
    let cfg = HubConfig {
        max_response_bytes: 2000,
        ..HubConfig::default()
    };
    let mut f = Fixture::new(cfg);
    let (s, mut rx) = f.open(1);
    // Someone watches, so batches are kept in the ring.
    f.hub.create(s, &watch("k", "l"));
    received(&mut rx);
    // Batches of revisions 2-5, 6-9 and 10-13 (small), 14-17 (each
    // revision 600 bytes: too big for one response, sent event by event),
    // 18-21 (small).
    publish_batch(&mut f, "k1", &[10; 4]);
    publish_batch(&mut f, "k2", &[10; 4]);
    publish_batch(&mut f, "k3", &[10; 4]);
    publish_batch(&mut f, "k4", &[600; 4]);
    publish_batch(&mut f, "k5", &[10; 4]);
    drain(&mut rx, &mut Seen::default());
    // Two more watchers of the same group from the past: one from the
    // middle of the first batch, one from its start.
    let (s2, mut rx2) = f.open(64);
    let mut from_mid = watch("k", "l");
    from_mid.start_revision = 4;
    f.hub.create(s2, &from_mid);
    let mut from_start = watch("k", "l");
    from_start.start_revision = 2;
    f.hub.create(s2, &from_start);
    let mut framed = 0;
    let mut seen = Seen::default();
    let mut read = |rx: &mut mpsc::Receiver<Vec<WatchOut>>| {
        while let Ok(round) = rx.try_recv() {
            for out in &round {
                framed += out.framed.len();
                let r = WatchResponseWire::decode(out.encode_to_vec().as_slice()).unwrap();
                assert!(
                    r.encoded_len() <= 2000 + 700,
                    "responses keep near the limit"
                );
                for e in &r.events {
                    let e = mvccpb::Event::decode(e.as_ref()).unwrap();
                    let rev = e.kv.unwrap().mod_revision;
                    seen.events.push((
                        r.watch_id,
                        e.r#type,
                        String::new(),
                        String::new(),
                        rev,
                        None,
                    ));
                }
            }
        }
    };
    for _ in 0..100 {
        let lagging = f.catch_up();
        read(&mut rx2);
        if !lagging {
            break;
        }
    }
    let revs = |id: i64| -> Vec<i64> {
        seen.events
            .iter()
            .filter(|e| e.0 == id)
            .map(|e| e.4)
            .collect()
    };
    assert_eq!(revs(0), (4..=21).collect::<Vec<_>>(), "from the middle");
    assert_eq!(revs(1), (2..=21).collect::<Vec<_>>(), "from the start");
    // Batches 6-9, 10-13 and 18-21 for both, 2-5 for the second.
    assert!(framed >= 7, "whole batches go as frames: {framed}");
    assert!(
        f.hub.stats().ring_bytes > f.hub.ring_size,
        "frames are counted with the ring"
    );
}
