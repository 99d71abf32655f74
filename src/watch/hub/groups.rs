//! Watcher groups and routing: watchers that ask for the same thing (key
//! range, filters, prev_kv) share one [`Group`], so an applied batch is
//! matched once per group, not once per watcher ([`Hub::deliver`]).
//!
//! Invariants: a group exists while it has members (`members` counts them,
//! synced or lagging) and is indexed once, in `by_key` for a single key or
//! in `ranged` otherwise; `synced` holds exactly the members that were sent
//! everything so far (lagging ones are in the hub's `lagging` queue
//! instead); when the last group goes the ring is cleared (nobody watches,
//! so the engine stops returning events and the ring would have a gap).

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc::error::TrySendError;

use super::ring::{WireBatch, WireEvent};
use super::streams::{Piece, Watcher};
use super::{Hub, StreamId};
use crate::proto::metastorepb::WatchResponseWire;
use crate::storage::EventKind;
use crate::watch::wire::WatchOut;

/// The keys a watcher watches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum KeyRange {
    /// One key.
    One(Vec<u8>),
    /// `[start, end)`.
    Span(Vec<u8>, Vec<u8>),
    /// Every key from `start` on.
    From(Vec<u8>),
}

impl KeyRange {
    pub(super) fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::One(key) => k == key.as_slice(),
            KeyRange::Span(start, end) => k >= start.as_slice() && k < end.as_slice(),
            KeyRange::From(start) => k >= start.as_slice(),
        }
    }

    /// As a range request spells it.
    pub(super) fn key_and_end(&self) -> (&[u8], &[u8]) {
        match self {
            KeyRange::One(key) => (key, &[]),
            KeyRange::Span(start, end) => (start, end),
            KeyRange::From(start) => (start, &[0]),
        }
    }
}

/// What makes watchers share their matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupKey {
    pub(super) range: KeyRange,
    pub(super) no_put: bool,
    pub(super) no_delete: bool,
    pub(super) prev_kv: bool,
}

impl GroupKey {
    pub(super) fn wants(&self, e: &WireEvent) -> bool {
        match e.kind {
            EventKind::Put if self.no_put => false,
            EventKind::Delete if self.no_delete => false,
            _ => self.range.contains(&e.key),
        }
    }
}

pub(super) struct Group {
    pub(super) key: GroupKey,
    /// Watchers sent everything so far.
    pub(super) synced: HashSet<(StreamId, i64)>,
    /// Every watcher of the group, synced or not.
    pub(super) members: usize,
}

impl Hub {
    pub(super) fn group_for(&mut self, key: GroupKey) -> u64 {
        if let Some(id) = self.group_ids.get(&key) {
            return *id;
        }
        let id = self.next_group;
        self.next_group += 1;
        match &key.range {
            KeyRange::One(k) => self.by_key.entry(k.clone()).or_default().push(id),
            _ => self.ranged.push(id),
        }
        self.group_ids.insert(key.clone(), id);
        self.groups.insert(
            id,
            Group {
                key,
                synced: HashSet::new(),
                members: 0,
            },
        );
        id
    }

    pub(super) fn leave_group(&mut self, stream: StreamId, id: i64, w: &Watcher) {
        let Some(g) = self.groups.get_mut(&w.group) else {
            return;
        };
        g.synced.remove(&(stream, id));
        g.members -= 1;
        if g.key.prev_kv {
            self.prev_watchers -= 1;
        }
        if g.members > 0 {
            return;
        }
        let key = g.key.clone();
        self.groups.remove(&w.group);
        self.group_ids.remove(&key);
        if self.groups.is_empty() {
            // Nobody watches: the engine stops returning events, so the
            // ring would have a gap.
            self.clear_ring();
        }
        match &key.range {
            KeyRange::One(k) => {
                if let Some(ids) = self.by_key.get_mut(k) {
                    ids.retain(|g| *g != w.group);
                    if ids.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            _ => self.ranged.retain(|g| *g != w.group),
        }
    }

    /// Which groups each event of `batch` matches.
    pub(super) fn match_groups(&self, batch: &WireBatch) -> HashMap<u64, Vec<usize>> {
        let mut matched: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, e) in batch.events.iter().enumerate() {
            if let Some(ids) = self.by_key.get(&e.key) {
                for g in ids {
                    if self.groups[g].key.wants(e) {
                        matched.entry(*g).or_default().push(i);
                    }
                }
            }
        }
        for g in &self.ranged {
            let key = &self.groups[g].key;
            let hits: Vec<usize> = (0..batch.events.len())
                .filter(|&i| key.wants(&batch.events[i]))
                .collect();
            if !hits.is_empty() {
                matched.insert(*g, hits);
            }
        }
        matched
    }

    pub(super) fn deliver(&mut self, batch: &WireBatch) {
        let matched = self.match_groups(batch);
        // Per stream: the responses of this batch and who they are for.
        let mut outs: HashMap<StreamId, (Vec<WatchOut>, Vec<i64>)> = HashMap::new();
        let mut stale = Vec::new();
        let header = self.header(batch.last);
        for (gid, hits) in &matched {
            let g = &self.groups[gid];
            if g.synced.is_empty() {
                continue;
            }
            let prev_kv = g.key.prev_kv;
            // The group's events of this batch framed once, for each
            // watcher that wants them all in one response (it has no
            // later start revision, and they fit).
            let first_rev = batch.events[hits[0]].rev;
            let shared = batch
                .frame_for(*gid, &g.key, Some(hits), &mut self.frames_size)
                .filter(|f| f.bytes.len() < self.cfg.max_response_bytes);
            for &(sid, id) in &g.synced {
                let Some(w) = self.streams.get(&sid).and_then(|s| s.watchers.get(&id)) else {
                    continue;
                };
                if let Some(framed) = shared.as_ref().filter(|_| w.min_rev <= first_rev) {
                    let out = outs.entry(sid).or_default();
                    out.0.push(WatchOut {
                        resp: WatchResponseWire {
                            header,
                            watch_id: id,
                            ..Default::default()
                        },
                        framed: vec![framed.bytes.clone()],
                    });
                    out.1.push(id);
                    continue;
                }
                let mut evs = Vec::with_capacity(hits.len());
                let mut missing = false;
                for &i in hits {
                    let e = &batch.events[i];
                    if e.rev < w.min_rev {
                        continue;
                    }
                    match e.bytes_for(prev_kv) {
                        Some(b) => evs.push(Piece::Event(e.rev, b.clone())),
                        None => missing = true,
                    }
                }
                if missing {
                    // Encoded before this watcher wanted previous states:
                    // it catches up from the engine.
                    stale.push((sid, id));
                    continue;
                }
                if evs.is_empty() {
                    continue;
                }
                let resps = self.responses(id, evs, batch.last, w.fragment);
                let out = outs.entry(sid).or_default();
                out.0.extend(resps);
                out.1.push(id);
            }
        }
        for (sid, id) in stale {
            self.demote(sid, id, batch.first);
        }
        for (sid, (resps, ids)) in outs {
            let Some(s) = self.streams.get_mut(&sid) else {
                continue;
            };
            let sent = s.flush_control()
                && match s.tx.try_send(resps) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => false,
                    Err(TrySendError::Closed(_)) => {
                        s.closed = true;
                        false
                    }
                };
            if !s.control.is_empty() {
                self.blocked.insert(sid);
            }
            if sent {
                for id in &ids {
                    if let Some(w) = s.watchers.get_mut(id) {
                        w.quiet = false;
                    }
                }
            } else if !s.closed {
                for id in ids {
                    self.demote(sid, id, batch.first);
                }
            }
        }
        self.drop_closed();
    }
}
