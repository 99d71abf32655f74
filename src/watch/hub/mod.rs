//! The watch hub: every watcher of a member, what each has been sent, and
//! the routing of applied events to them (etcd's `watchableStore` and the
//! stream half of `v3rpc/watch.go`).
//!
//! Owned by the ApplyActor, so it sees applied batches in order and the
//! store at exactly the revision it publishes: a watcher created at
//! revision R is sent every revision after R, exactly once, in order.
//!
//! - An applied batch is encoded once ([`WireBatch`]: one encoded
//!   `mvccpb.Event` per change, with and without its previous state) and
//!   kept in a bounded ring of recent batches. Every matching watcher's
//!   response holds the same `Bytes`: nothing is copied per watcher.
//! - Watchers that ask for the same thing (key range, filters, prev_kv)
//!   form a group; a batch is matched once per group.
//! - Each stream has one bounded outbox (the gRPC response stream). A
//!   watcher whose responses do not fit is demoted: it is "lagging", holds
//!   only the next revision it must be sent, and catches up in bounded
//!   slices ([`Hub::catch_up`]) from the ring or, past it, from the engine's
//!   history, then rejoins its group. Memory is bounded by the outboxes and
//!   the ring however slowly a client reads.
//! - A lagging watcher whose next revision was compacted is canceled with
//!   `compact_revision`, as etcd does.
//! - Control responses (created, canceled, progress) wait in a per-stream
//!   queue that is always flushed before events, so a watcher's `created`
//!   precedes its events.
//!
//! By concern: `ring` (the batch ring and the frames cached with its
//! batches), `groups` (watcher groups and the routing of a batch to them),
//! `streams` (each stream's outbox, control queue and response assembly),
//! `catch_up` (lagging watchers brought back in slices). This file holds
//! the [`Hub`] itself and the requests it answers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::wire::WatchOut;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use crate::proto::metastorepb::WatchResponseWire;
use crate::status::NodeStatus;
use crate::storage::{Event, MvccError};

mod catch_up;
mod groups;
mod ring;
mod streams;

pub use catch_up::CatchUp;
use groups::{Group, GroupKey, KeyRange};
use ring::{WireBatch, WireEvent};
use streams::{Stream, Watcher};

/// What a stream's responses are sent through (bounded: its capacity is
/// how many rounds of responses may wait for a slow client).
pub type Outbox = mpsc::Sender<Vec<WatchOut>>;
/// A watch stream, numbered by the hub.
pub type StreamId = u64;

/// etcd's error for a client-chosen id already in use on the stream.
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's error for a range whose end is not after its start.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// Reads history for catch-up: `(key, range_end, from, max)` as
/// [`KvEngine::history`](crate::storage::engine::KvEngine::history).
pub trait HistorySource {
    /// Changes to the range from `from` on, about `max` at most.
    fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<Event>, MvccError>;
}

/// Sizes and limits.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bytes of encoded events kept for lagging watchers.
    pub ring_bytes: usize,
    /// A response grows to about this many bytes (then a new one starts at
    /// a revision boundary, or a fragment for watchers that asked).
    pub max_response_bytes: usize,
    /// Events read from the engine per catch-up slice.
    pub history_chunk: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ring_bytes: 32 << 20,
            max_response_bytes: (3 << 20) / 2,
            history_chunk: 1000,
        }
    }
}

/// Figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Watchers.
    pub watchers: usize,
    /// Watchers catching up.
    pub lagging: usize,
    /// Streams.
    pub streams: usize,
    /// Bytes of encoded events in the ring, and of frames made of them.
    pub ring_bytes: usize,
}

/// Every watcher of a member.
pub struct Hub {
    cfg: HubConfig,
    status: Arc<NodeStatus>,
    streams: HashMap<StreamId, Stream>,
    next_stream: StreamId,
    groups: HashMap<u64, Group>,
    group_ids: HashMap<GroupKey, u64>,
    next_group: u64,
    /// Single-key groups by key.
    by_key: HashMap<Vec<u8>, Vec<u64>>,
    /// Groups over a span or from a key.
    ranged: Vec<u64>,
    lagging: VecDeque<(StreamId, i64)>,
    /// Streams whose control responses wait for room in their outbox.
    blocked: HashSet<StreamId>,
    /// Watchers that want previous states.
    prev_watchers: usize,
    ring: VecDeque<Arc<WireBatch>>,
    /// Bytes of the ring's encoded events...
    ring_size: usize,
    /// ... and of the frames made of them (counted against the same limit).
    frames_size: usize,
    /// The ring holds every change from this revision on (i64::MAX: none).
    ring_from: i64,
    /// Streams whose progress request waits for their watchers.
    progress_waiting: HashSet<StreamId>,
    current_rev: i64,
    compact_rev: i64,
}

impl Hub {
    /// An empty hub over a store at `current_rev`, compacted at `compact_rev`.
    pub fn new(cfg: HubConfig, status: Arc<NodeStatus>, current_rev: i64, compact_rev: i64) -> Hub {
        Hub {
            cfg,
            status,
            streams: HashMap::new(),
            next_stream: 1,
            groups: HashMap::new(),
            group_ids: HashMap::new(),
            next_group: 1,
            by_key: HashMap::new(),
            ranged: Vec::new(),
            lagging: VecDeque::new(),
            blocked: HashSet::new(),
            prev_watchers: 0,
            ring: VecDeque::new(),
            ring_size: 0,
            frames_size: 0,
            ring_from: i64::MAX,
            progress_waiting: HashSet::new(),
            current_rev,
            compact_rev,
        }
    }

    /// Whether anyone watches (the engine then returns complete events).
    pub fn watching(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Whether some watcher is catching up or some response waits for
    /// room: [`Hub::catch_up`] has work.
    pub fn has_lagging(&self) -> bool {
        !self.lagging.is_empty() || !self.blocked.is_empty()
    }

    /// Figures for metrics.
    pub fn stats(&self) -> HubStats {
        HubStats {
            watchers: self.streams.values().map(|s| s.watchers.len()).sum(),
            lagging: self.lagging.len(),
            streams: self.streams.len(),
            ring_bytes: self.ring_size + self.frames_size,
        }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.status.cluster_id,
            member_id: self.status.member_id,
            revision,
            raft_term: self.status.term(),
        })
    }

    fn control(&self, watch_id: i64, revision: i64) -> WatchResponseWire {
        WatchResponseWire {
            header: self.header(revision),
            watch_id,
            ..Default::default()
        }
    }

    /// Answers a create request that is refused before it is looked at
    /// (no permission): created and canceled at once, with `reason`.
    pub fn refuse(&mut self, stream: StreamId, reason: &str) {
        if !self.streams.contains_key(&stream) {
            return;
        }
        let mut resp = self.control(-1, self.current_rev);
        resp.created = true;
        resp.canceled = true;
        resp.cancel_reason = reason.to_owned();
        self.queue_control(stream, resp);
    }

    /// WatchCreateRequest on `stream` (etcd's rules: an empty key is
    /// "\0", a range end of "\0" means every key from the key on, a start
    /// revision of 0 means "after the current one", watch id 0 means "pick
    /// one").
    pub fn create(&mut self, stream: StreamId, req: &WatchCreateRequest) {
        let rev = self.current_rev;
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        let key = watched_key(&req.key).to_vec();
        let range = match req.range_end.as_slice() {
            [] => KeyRange::One(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Span(key, end.to_vec()),
        };
        let refused = match &range {
            KeyRange::Span(k, end) if k >= end => Some(EMPTY_RANGE),
            _ if req.watch_id != 0 && s.watchers.contains_key(&req.watch_id) => Some(DUPLICATE_ID),
            _ => None,
        };
        if let Some(reason) = refused {
            let mut resp = self.control(-1, rev);
            resp.created = true;
            resp.canceled = true;
            resp.cancel_reason = reason.to_owned();
            self.queue_control(stream, resp);
            return;
        }
        let filter = |f: FilterType| req.filters.contains(&(f as i32));
        let gkey = GroupKey {
            range,
            no_put: filter(FilterType::Noput),
            no_delete: filter(FilterType::Nodelete),
            prev_kv: req.prev_kv,
        };
        let group = self.group_for(gkey);
        let start = if req.start_revision <= 0 {
            rev + 1
        } else {
            req.start_revision
        };
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let id = if req.watch_id == 0 {
            while s.watchers.contains_key(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        } else {
            req.watch_id
        };
        let synced = start > rev;
        s.watchers.insert(
            id,
            Watcher {
                group,
                min_rev: start,
                next_rev: start,
                synced,
                progress_notify: req.progress_notify,
                quiet: true,
                fragment: req.fragment,
            },
        );
        let g = self.groups.get_mut(&group).expect("group just made");
        g.members += 1;
        if g.key.prev_kv {
            self.prev_watchers += 1;
        }
        if synced {
            g.synced.insert((stream, id));
        } else {
            self.lagging.push_back((stream, id));
        }
        let mut resp = self.control(id, rev);
        resp.created = true;
        self.queue_control(stream, resp);
    }

    /// WatchCancelRequest: an unknown id gets no answer (as in etcd).
    pub fn cancel(&mut self, stream: StreamId, id: i64) {
        let Some(w) = self
            .streams
            .get_mut(&stream)
            .and_then(|s| s.watchers.remove(&id))
        else {
            return;
        };
        self.leave_group(stream, id, &w);
        self.lagging.retain(|k| *k != (stream, id));
        let mut resp = self.control(id, self.current_rev);
        resp.canceled = true;
        self.queue_control(stream, resp);
        self.maybe_progress(stream);
    }

    /// WatchProgressRequest: the current revision with watch id -1, once
    /// every watcher of the stream has been sent everything before it.
    pub fn progress(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.progress_wanted = true;
        }
        self.maybe_progress(stream);
    }

    /// Progress notification (every `--experimental-watch-progress-notify-
    /// interval`): each synced watcher that asked for it and was sent no
    /// events since the last tick gets the current revision.
    pub fn progress_tick(&mut self) {
        let rev = self.current_rev;
        let header = self.header(rev);
        for (sid, s) in self.streams.iter_mut() {
            let mut any = false;
            for (id, w) in s.watchers.iter_mut() {
                if w.progress_notify && w.quiet && w.current_at(rev) {
                    s.control.push(
                        WatchResponseWire {
                            header,
                            watch_id: *id,
                            ..Default::default()
                        }
                        .into(),
                    );
                    any = true;
                }
                w.quiet = true;
            }
            if any && !s.flush_control() {
                self.blocked.insert(*sid);
            }
        }
        self.drop_closed();
    }

    /// The store was compacted at `rev`: lagging watchers behind it are
    /// canceled when their turn to catch up comes.
    pub fn compacted(&mut self, rev: i64) {
        self.compact_rev = self.compact_rev.max(rev);
    }

    /// The whole state was replaced (a snapshot from the leader): every
    /// watcher catches up from the new state (or is canceled if it needs
    /// what the snapshot compacted away).
    pub fn state_replaced(&mut self, current_rev: i64, compact_rev: i64) {
        self.clear_ring();
        let old = self.current_rev;
        self.current_rev = current_rev;
        self.compact_rev = compact_rev;
        for g in self.groups.values_mut() {
            g.synced.clear();
        }
        self.lagging.clear();
        for (sid, s) in self.streams.iter_mut() {
            for (id, w) in s.watchers.iter_mut() {
                if w.synced {
                    w.next_rev = w.min_rev.max(old + 1);
                    w.synced = false;
                }
                self.lagging.push_back((*sid, *id));
            }
        }
    }

    /// Routes one applied batch: `events` in revision order, the store at
    /// `current_rev` afterwards.
    pub fn publish(&mut self, events: &[Event], current_rev: i64) {
        self.current_rev = current_rev;
        if !events.is_empty() && !self.groups.is_empty() {
            self.route(events, current_rev);
        }
        // A progress request that waited for a watcher on a future revision
        // is answered once the store reaches it, after the batch's events
        // (a progress at R tells the client everything up to R was sent).
        let waiting: Vec<StreamId> = self.progress_waiting.iter().copied().collect();
        for sid in waiting {
            self.maybe_progress(sid);
        }
    }

    /// Encodes one applied batch, keeps it in the ring and sends it to the
    /// synced watchers it matches.
    fn route(&mut self, events: &[Event], current_rev: i64) {
        let want_prev = self.prev_watchers > 0;
        let encoded: Vec<WireEvent> = events
            .iter()
            .map(|e| WireEvent::encode(e, want_prev))
            .collect();
        let size = encoded.iter().map(WireEvent::size).sum();
        let batch = Arc::new(WireBatch {
            first: encoded[0].rev,
            last: current_rev,
            events: encoded,
            size,
            frames: parking_lot::Mutex::new(Vec::new()),
        });
        if self.ring.is_empty() {
            self.ring_from = batch.first;
        }
        self.ring_size += size;
        self.ring.push_back(batch.clone());
        self.deliver(&batch);
        self.trim_ring();
    }
}

/// The key a create request watches: etcd reads an empty key as "\0".
pub fn watched_key(key: &[u8]) -> &[u8] {
    if key.is_empty() {
        &[0]
    } else {
        key
    }
}

#[cfg(test)]
mod tests;
