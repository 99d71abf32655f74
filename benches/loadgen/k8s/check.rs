//! The consistency checker of the k8s workload: a model of what the clients
//! really know about the writes they made, and the checks of every LIST and
//! every watcher against it. Plain data in, violations out (no I/O; std and
//! the `crc32c` crate only), so it is unit-tested on planted bugs
//! (`tests/loadgen_k8s.rs` includes this file).
//!
//! # What a client can know
//!
//! Many clients write concurrently and a request that errors may or may not
//! have committed, so the model holds only facts that an acknowledged answer
//! proves:
//!
//! * a write acknowledged at revision `r` (the txn's header revision) put
//!   value `h` on key `k` (or deleted it);
//! * a compare-and-swap `If mod_revision(k) == p` that succeeded at `r`
//!   proves the key had the value seen at `p` during all of `[p, r)`, so its
//!   watch event's `prev_kv` is that value, and a LIST at any revision in
//!   `[p, r)` must show it; `If mod_revision(k) == 0` proves the key was
//!   absent just before `r` (the event has no `prev_kv`);
//! * a plain put (events) proves only its own value at `r`: what it replaced
//!   is unknown;
//! * a write whose answer never came (an error) makes the key *uncertain*:
//!   a watcher may see a change of it that no fact explains, which is then
//!   not a violation (counted as unverified).
//!
//! Everything else (which of two racing writers won, when an uncertain write
//! happened) is not claimed. Each check below is implied by the facts alone.
//!
//! # Checks
//!
//! A LIST (all pages read at the first page's revision `L`): keys in range,
//! strictly ascending over all pages (no overlap); each continuation page's
//! `count` equals the previous page's `count` minus its length (a page that
//! skipped or repeated keys breaks this); `more` equals `count > len`;
//! `create_revision <= mod_revision <= L`; a listed key whose `mod_revision`
//! is a known write has that write's value; no known write to a listed key
//! lies in `(mod_revision, L]` (a stale value); a key proven present at `L`
//! is listed.
//!
//! A watcher from revision `S` covered up to `C` (its last progress
//! notification once the writers stopped): events in strictly increasing
//! (revision, key) order (no duplicate), in its range, at or after `S`;
//! every known write of its range in `[S, C]` delivered; each delivered
//! event matching its known write (type, value, `prev_kv`), or its key
//! uncertain; a progress revision never below an earlier one or a delivered
//! event, and no event at or below a progress revision delivered after it.
//! A `prev_kv` may be missing only when the revision before the event had
//! been compacted away when it arrived (etcd reads `prev_kv` at send time).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// A value's fingerprint: its CRC32C beside its length. (CRC32C runs at the
/// speed of memory with SSE 4.2; SipHash of every listed value took a fifth
/// of the load generator's CPU, and with the server on the same two cores
/// that skews the side-by-side figures toward the slower server.)
pub type Hash = u64;

/// The fingerprint of a value.
pub fn hash(value: &[u8]) -> Hash {
    ((value.len() as u64) << 32) | u64::from(crc32c::crc32c(value))
}

/// What a write replaced, as far as its writer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prev {
    /// `If mod_revision == 0` held: the key did not exist.
    Absent,
    /// `If mod_revision == rev` held: the value seen at `rev`.
    Value { rev: i64, hash: Hash },
    /// A plain put: unknown.
    Unknown,
}

/// An acknowledged write.
#[derive(Clone, Debug)]
pub struct Write {
    pub key: Vec<u8>,
    /// The revision it committed at (the answer's header revision).
    pub rev: i64,
    /// The value put, or `None` for a delete.
    pub value: Option<Hash>,
    pub prev: Prev,
    /// When its answer arrived (for the watch lag).
    pub acked: Instant,
}

#[derive(Clone, Debug)]
struct Rec {
    value: Option<Hash>,
    prev: Prev,
    acked: Instant,
}

/// One key-value as a read returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub hash: Hash,
}

/// One page of a paginated LIST.
#[derive(Clone, Debug)]
pub struct Page {
    pub kvs: Vec<Kv>,
    /// The answer's `count`: keys in the page request's range at `L`.
    pub count: i64,
    pub more: bool,
}

/// A whole LIST of `[start, end)`, every page read at revision `rev`.
#[derive(Clone, Debug)]
pub struct List {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub rev: i64,
    pub pages: Vec<Page>,
}

/// A watch event as delivered.
#[derive(Clone, Debug)]
pub struct Event {
    pub key: Vec<u8>,
    /// The event's `kv.mod_revision`.
    pub rev: i64,
    /// `None` for a delete.
    pub value: Option<Hash>,
    /// `prev_kv` as (mod_revision, value).
    pub prev: Option<(i64, Hash)>,
    pub at: Instant,
}

/// What a watcher received, in order.
#[derive(Clone, Debug)]
pub enum Delivery {
    Event(Event),
    /// A progress notification (no events) at this header revision.
    Progress(i64),
}

/// A watcher's record.
#[derive(Clone, Debug)]
pub struct WatchLog {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// The watch's start revision.
    pub from: i64,
    /// Every known write of the range up to here must have arrived.
    pub covered_until: i64,
    pub deliveries: Vec<Delivery>,
}

/// What checking a watcher found.
#[derive(Debug, Default)]
pub struct WatchCheck {
    pub violations: Vec<String>,
    /// Events matched to a known write.
    pub verified: u64,
    /// Events of uncertain keys with no known write.
    pub unverified: u64,
    /// Commit acknowledgement to delivery, µs, one per verified event (0
    /// when the event arrived before its writer's acknowledgement).
    pub lag_us: Vec<u64>,
}

/// The facts.
#[derive(Default)]
pub struct Model {
    keys: BTreeMap<Vec<u8>, BTreeMap<i64, Rec>>,
    uncertain: HashSet<Vec<u8>>,
    /// Compactions as (requested at, revision).
    compactions: Vec<(Instant, i64)>,
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && key < end
}

impl Model {
    /// Records an acknowledged write.
    pub fn record(&mut self, w: Write) {
        self.keys.entry(w.key).or_default().insert(
            w.rev,
            Rec {
                value: w.value,
                prev: w.prev,
                acked: w.acked,
            },
        );
    }

    /// A write of `key` ended without an answer: it may have committed.
    pub fn uncertain(&mut self, key: &[u8]) {
        self.uncertain.insert(key.to_vec());
    }

    /// A compaction at `rev` was requested at `at`.
    pub fn compacted(&mut self, at: Instant, rev: i64) {
        self.compactions.push((at, rev));
    }

    /// Known writes.
    pub fn writes(&self) -> usize {
        self.keys.values().map(BTreeMap::len).sum()
    }

    /// The highest compaction revision requested before `at`.
    fn compacted_before(&self, at: Instant) -> i64 {
        self.compactions
            .iter()
            .filter(|(t, _)| *t <= at)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    }

    /// Checks one key-value read at revision `rev` (a get, a list entry):
    /// a known write at its `mod_revision` has its value, and no known write
    /// lies between its `mod_revision` and `rev`.
    pub fn check_kv(&self, kv: &Kv, rev: i64) -> Option<String> {
        Self::check_recs(self.keys.get(&kv.key)?, kv, rev)
    }

    /// [`Model::check_kv`] against the known writes of `kv`'s key.
    fn check_recs(recs: &BTreeMap<i64, Rec>, kv: &Kv, rev: i64) -> Option<String> {
        if let Some(rec) = recs.get(&kv.mod_rev) {
            match rec.value {
                None => {
                    return Some(format!(
                        "read at {rev}: {} shows a value at {}, where it was deleted",
                        show(&kv.key),
                        kv.mod_rev
                    ))
                }
                Some(h) if h != kv.hash => {
                    return Some(format!(
                        "read at {rev}: {} at mod_revision {} has another value than the write acknowledged there",
                        show(&kv.key),
                        kv.mod_rev
                    ))
                }
                Some(_) => {}
            }
        }
        // (BTreeMap::range panics on an empty range.)
        let later = if kv.mod_rev < rev {
            recs.range(kv.mod_rev + 1..=rev).next()
        } else {
            None
        };
        if let Some((r, _)) = later {
            return Some(format!(
                "read at {rev}: {} shows mod_revision {} but a write at {r} was acknowledged",
                show(&kv.key),
                kv.mod_rev
            ));
        }
        None
    }

    /// The (mod_revision, value) `key` is proven to have at `rev`: a
    /// compare-and-swap at `r > rev` that saw `p <= rev`.
    fn proven_at(recs: &BTreeMap<i64, Rec>, rev: i64) -> Option<(i64, Hash)> {
        let (_, rec) = recs.range(rev + 1..).next()?;
        match rec.prev {
            Prev::Value { rev: p, hash } if p <= rev => Some((p, hash)),
            _ => None,
        }
    }

    /// Checks a whole LIST.
    pub fn check_list(&self, list: &List) -> Vec<String> {
        let mut out = Vec::new();
        let at = list.rev;
        let mut prev_key: Option<&[u8]> = None;
        let mut prev_page: Option<&Page> = None;
        let mut ascending = true;
        for (i, page) in list.pages.iter().enumerate() {
            if page.more != (page.count > page.kvs.len() as i64) {
                out.push(format!(
                    "list at {at}: page {i} says more={} with count {} and {} keys",
                    page.more,
                    page.count,
                    page.kvs.len()
                ));
            }
            if let Some(p) = prev_page {
                let expected = p.count - p.kvs.len() as i64;
                if page.count != expected {
                    out.push(format!(
                        "list at {at}: page {i} counts {} keys left, the page before left {expected} (a gap or overlap)",
                        page.count
                    ));
                }
                if !p.more {
                    out.push(format!("list at {at}: page {i} follows a last page"));
                }
            }
            for kv in &page.kvs {
                if !in_range(&kv.key, &list.start, &list.end) {
                    out.push(format!(
                        "list at {at}: {} outside the listed range",
                        show(&kv.key)
                    ));
                }
                if let Some(pk) = prev_key {
                    if kv.key.as_slice() <= pk {
                        ascending = false;
                        out.push(format!(
                            "list at {at}: page {i}: {} after {} (not ascending, or repeated)",
                            show(&kv.key),
                            show(pk)
                        ));
                    }
                }
                prev_key = Some(&kv.key);
                if kv.mod_rev > at || kv.create_rev > kv.mod_rev || kv.create_rev <= 0 {
                    out.push(format!(
                        "list at {at}: {} with create_revision {} mod_revision {}",
                        show(&kv.key),
                        kv.create_rev,
                        kv.mod_rev
                    ));
                }
            }
            prev_page = Some(page);
        }
        if prev_page.is_some_and(|p| p.more) {
            out.push(format!("list at {at}: the last page says more"));
        }
        let known = if list.start < list.end {
            self.keys.range(list.start.clone()..list.end.clone())
        } else {
            self.keys.range(list.start.clone()..list.start.clone())
        };
        // The listed keys against the model's, both ascending: a merge, not
        // a lookup per listed key (this runs over every key of every LIST,
        // on the cores the servers measured use too).
        let mut listed: Vec<&Kv> = list.pages.iter().flat_map(|p| &p.kvs).collect();
        if !ascending {
            // Already a violation; sorted (stably) so the rest is checked too.
            listed.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let mut rest = listed.as_slice();
        for (key, recs) in known {
            // Listed keys the model has no write of need no check here.
            rest = &rest[rest.partition_point(|kv| kv.key < *key)..];
            let (same, after) = rest.split_at(rest.partition_point(|kv| kv.key == *key));
            rest = after;
            for kv in same {
                if let Some(v) = Self::check_recs(recs, kv, at) {
                    out.push(v);
                }
            }
            let Some((p, h)) = Self::proven_at(recs, at) else {
                continue;
            };
            match same.last() {
                None => out.push(format!(
                    "list at {at}: {} missing, though it had mod_revision {p} there",
                    show(key)
                )),
                Some(kv) if kv.mod_rev != p || kv.hash != h => out.push(format!(
                    "list at {at}: {} at mod_revision {}, though it had mod_revision {p} there",
                    show(key),
                    kv.mod_rev
                )),
                Some(_) => {}
            }
        }
        out
    }

    /// Checks a watcher's record.
    pub fn check_watch(&self, w: &WatchLog) -> WatchCheck {
        let mut c = WatchCheck::default();
        let mut last: Option<(i64, &[u8])> = None;
        let mut progress = 0i64;
        let mut seen: HashSet<(i64, &[u8])> = HashSet::new();
        for d in &w.deliveries {
            match d {
                Delivery::Progress(p) => {
                    if *p < progress {
                        c.violations
                            .push(format!("watch: progress {p} after progress {progress}"));
                    }
                    if let Some((r, _)) = last {
                        if *p < r {
                            c.violations
                                .push(format!("watch: progress {p} after an event at {r}"));
                        }
                    }
                    progress = progress.max(*p);
                }
                Delivery::Event(e) => {
                    if let Some((r, k)) = last {
                        if (e.rev, e.key.as_slice()) <= (r, k) {
                            c.violations.push(format!(
                                "watch: event {} at {} after {} at {r} (repeated or out of order)",
                                show(&e.key),
                                e.rev,
                                show(k)
                            ));
                        }
                    }
                    last = Some((e.rev, &e.key));
                    if e.rev <= progress {
                        c.violations.push(format!(
                            "watch: event {} at {} after a progress notification at {progress}",
                            show(&e.key),
                            e.rev
                        ));
                    }
                    if e.rev < w.from || !in_range(&e.key, &w.start, &w.end) {
                        c.violations.push(format!(
                            "watch: event {} at {} outside the watch (from {})",
                            show(&e.key),
                            e.rev,
                            w.from
                        ));
                    }
                    seen.insert((e.rev, &e.key));
                    self.check_event(e, &mut c);
                }
            }
        }
        let known = if w.start < w.end {
            self.keys.range(w.start.clone()..w.end.clone())
        } else {
            self.keys.range(w.start.clone()..w.start.clone())
        };
        for (key, recs) in known {
            if w.from > w.covered_until {
                break;
            }
            for (&rev, _) in recs.range(w.from..=w.covered_until) {
                if !seen.contains(&(rev, key.as_slice())) {
                    c.violations.push(format!(
                        "watch: the write of {} at {rev} never arrived (watched from {} up to {})",
                        show(key),
                        w.from,
                        w.covered_until
                    ));
                }
            }
        }
        c
    }

    fn check_event(&self, e: &Event, c: &mut WatchCheck) {
        let Some(rec) = self.keys.get(&e.key).and_then(|r| r.get(&e.rev)) else {
            if self.uncertain.contains(&e.key) {
                c.unverified += 1;
            } else {
                c.violations.push(format!(
                    "watch: event {} at {} that no client wrote",
                    show(&e.key),
                    e.rev
                ));
            }
            return;
        };
        c.verified += 1;
        c.lag_us
            .push(e.at.saturating_duration_since(rec.acked).as_micros() as u64);
        if rec.value != e.value {
            c.violations.push(format!(
                "watch: event {} at {} is not the acknowledged write ({} expected)",
                show(&e.key),
                e.rev,
                if rec.value.is_some() { "put" } else { "delete" }
            ));
        }
        let ok = match (rec.prev, e.prev) {
            (Prev::Unknown, _) => true,
            (Prev::Absent, None) => true,
            (Prev::Absent, Some(_)) => false,
            (Prev::Value { rev, hash }, Some(got)) => got == (rev, hash),
            // etcd reads prev_kv when it sends the event: gone if compacted.
            (Prev::Value { .. }, None) => self.compacted_before(e.at) > e.rev - 1,
        };
        if !ok {
            c.violations.push(format!(
                "watch: event {} at {} has prev_kv {:?}, the write replaced {:?}",
                show(&e.key),
                e.rev,
                e.prev.map(|(r, _)| r),
                rec.prev
            ));
        }
    }
}
