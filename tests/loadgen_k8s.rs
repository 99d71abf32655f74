//! The k8s workload's consistency checker (benches/loadgen/k8s/check.rs,
//! plain data and std, so that it can be included here) against planted bugs: a
//! dropped, a repeated and a late event, a wrong `prev_kv`, a page gap or
//! overlap, stale and future list entries.
//!
//! `cargo test --profile bench --test loadgen_k8s` reuses the bench build.

// The load generator uses the rest of the checker's surface.
#[allow(dead_code)]
#[path = "../benches/loadgen/k8s/check.rs"]
mod check;

use check::*;
use std::time::Instant;

fn key(n: u32) -> Vec<u8> {
    format!("/registry/pods/ns/p{n}").into_bytes()
}

/// p1 created at 10 (value 1), updated at 12 (value 2, seen 10),
/// p2 updated at 11 (value 3, seen 5 with value 9), p3 deleted at 13
/// (seen 6 with value 8).
fn model(now: Instant) -> Model {
    let mut m = Model::default();
    let w = |k, rev, value, prev| Write {
        key: key(k),
        rev,
        value,
        prev,
        acked: now,
    };
    m.record(w(1, 10, Some(1), Prev::Absent));
    m.record(w(2, 11, Some(3), Prev::Value { rev: 5, hash: 9 }));
    m.record(w(1, 12, Some(2), Prev::Value { rev: 10, hash: 1 }));
    m.record(w(3, 13, None, Prev::Value { rev: 6, hash: 8 }));
    m
}

fn ev(k: u32, rev: i64, value: Option<Hash>, prev: Option<(i64, Hash)>, at: Instant) -> Delivery {
    Delivery::Event(Event {
        key: key(k),
        rev,
        value,
        prev,
        at,
    })
}

fn watch(deliveries: Vec<Delivery>) -> WatchLog {
    WatchLog {
        start: b"/registry/pods/".to_vec(),
        end: b"/registry/pods0".to_vec(),
        from: 10,
        covered_until: 13,
        deliveries,
    }
}

fn all_events(now: Instant) -> Vec<Delivery> {
    vec![
        ev(1, 10, Some(1), None, now),
        ev(2, 11, Some(3), Some((5, 9)), now),
        Delivery::Progress(11),
        ev(1, 12, Some(2), Some((10, 1)), now),
        ev(3, 13, None, Some((6, 8)), now),
        Delivery::Progress(13),
    ]
}

#[test]
fn a_complete_watch_passes() {
    let now = Instant::now();
    let c = model(now).check_watch(&watch(all_events(now)));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!(c.verified, 4);
}

#[test]
fn a_dropped_event_is_caught() {
    let now = Instant::now();
    let mut d = all_events(now);
    d.remove(3);
    let c = model(now).check_watch(&watch(d));
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    assert!(c.violations[0].contains("never arrived"));
}

#[test]
fn a_duplicated_event_is_caught() {
    let now = Instant::now();
    let mut d = all_events(now);
    d.insert(4, ev(1, 12, Some(2), Some((10, 1)), now));
    let c = model(now).check_watch(&watch(d));
    assert!(
        c.violations.iter().any(|v| v.contains("repeated")),
        "{:?}",
        c.violations
    );
}

#[test]
fn a_wrong_prev_kv_is_caught() {
    let now = Instant::now();
    let mut d = all_events(now);
    d[3] = ev(1, 12, Some(2), Some((10, 7)), now);
    let c = model(now).check_watch(&watch(d));
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    assert!(c.violations[0].contains("prev_kv"));
}

#[test]
fn a_missing_prev_kv_is_allowed_only_after_compaction() {
    let now = Instant::now();
    let mut d = all_events(now);
    d[3] = ev(1, 12, Some(2), None, now);
    let mut m = model(now);
    assert_eq!(m.check_watch(&watch(d.clone())).violations.len(), 1);
    m.compacted(now, 12);
    assert!(m.check_watch(&watch(d)).violations.is_empty());
}

#[test]
fn an_event_behind_a_progress_notification_is_caught() {
    let now = Instant::now();
    let mut d = all_events(now);
    // Progress 12 sent before the event at 12.
    d[2] = Delivery::Progress(12);
    let c = model(now).check_watch(&watch(d));
    assert!(
        c.violations.iter().any(|v| v.contains("after a progress")),
        "{:?}",
        c.violations
    );
}

#[test]
fn an_unwritten_event_is_caught_unless_the_key_is_uncertain() {
    let now = Instant::now();
    let mut d = all_events(now);
    d.insert(5, ev(4, 13, Some(5), None, now));
    let mut m = model(now);
    assert_eq!(m.check_watch(&watch(d.clone())).violations.len(), 1);
    m.uncertain(&key(4));
    let c = m.check_watch(&watch(d));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!(c.unverified, 1);
}

fn kv(k: u32, create_rev: i64, mod_rev: i64, hash: Hash) -> Kv {
    Kv {
        key: key(k),
        create_rev,
        mod_rev,
        hash,
    }
}

/// A list at 11 over two pages of two keys at most.
fn list(pages: Vec<Page>) -> List {
    List {
        start: b"/registry/pods/".to_vec(),
        end: b"/registry/pods0".to_vec(),
        rev: 11,
        pages,
    }
}

fn good_pages() -> Vec<Page> {
    vec![
        Page {
            kvs: vec![kv(1, 10, 10, 1), kv(2, 2, 11, 3)],
            count: 3,
            more: true,
        },
        Page {
            kvs: vec![kv(3, 6, 6, 8)],
            count: 1,
            more: false,
        },
    ]
}

#[test]
fn a_consistent_list_passes() {
    let v = model(Instant::now()).check_list(&list(good_pages()));
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn a_page_gap_is_caught() {
    // The second page skipped p3: it says one key was left but is empty.
    let mut pages = good_pages();
    pages[1].kvs.clear();
    let v = model(Instant::now()).check_list(&list(pages));
    assert!(v.iter().any(|x| x.contains("missing")), "{v:?}");
    assert!(v.iter().any(|x| x.contains("more")), "{v:?}");
}

#[test]
fn a_page_overlap_is_caught() {
    let mut pages = good_pages();
    pages[1].kvs.insert(0, kv(2, 2, 11, 3));
    pages[1].count = 2;
    let v = model(Instant::now()).check_list(&list(pages));
    assert!(v.iter().any(|x| x.contains("gap or overlap")), "{v:?}");
    assert!(v.iter().any(|x| x.contains("not ascending")), "{v:?}");
}

#[test]
fn a_stale_or_future_list_entry_is_caught() {
    let m = model(Instant::now());
    // p1 at 12 in a list at 11: from the future.
    let mut pages = good_pages();
    pages[0].kvs[0] = kv(1, 10, 12, 2);
    let v = m.check_list(&list(pages));
    assert!(v.iter().any(|x| x.contains("mod_revision 12")), "{v:?}");
    // p2 still at 5 in a list at 11, though written at 11: stale.
    let mut pages = good_pages();
    pages[0].kvs[1] = kv(2, 2, 5, 9);
    let v = m.check_list(&list(pages));
    assert!(v.iter().any(|x| x.contains("a write at 11")), "{v:?}");
    // p1 at 10 with another value than the one written there.
    let mut pages = good_pages();
    pages[0].kvs[0] = kv(1, 10, 10, 4);
    let v = m.check_list(&list(pages));
    assert!(v.iter().any(|x| x.contains("another value")), "{v:?}");
}
