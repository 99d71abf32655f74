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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::wire::{frame, WatchOut};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use crate::proto::metastorepb::WatchResponseWire;
use crate::proto::mvccpb;
use crate::status::NodeStatus;
use crate::storage::mvcc::{Event, EventKind, MvccError};

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

/// The keys a watcher watches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyRange {
    /// One key.
    One(Vec<u8>),
    /// `[start, end)`.
    Span(Vec<u8>, Vec<u8>),
    /// Every key from `start` on.
    From(Vec<u8>),
}

impl KeyRange {
    fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::One(key) => k == key.as_slice(),
            KeyRange::Span(start, end) => k >= start.as_slice() && k < end.as_slice(),
            KeyRange::From(start) => k >= start.as_slice(),
        }
    }

    /// As a range request spells it.
    fn key_and_end(&self) -> (&[u8], &[u8]) {
        match self {
            KeyRange::One(key) => (key, &[]),
            KeyRange::Span(start, end) => (start, end),
            KeyRange::From(start) => (start, &[0]),
        }
    }
}

/// What makes watchers share their matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl GroupKey {
    fn wants(&self, e: &WireEvent) -> bool {
        match e.kind {
            EventKind::Put if self.no_put => false,
            EventKind::Delete if self.no_delete => false,
            _ => self.range.contains(&e.key),
        }
    }
}

struct Group {
    key: GroupKey,
    /// Watchers sent everything so far.
    synced: HashSet<(StreamId, i64)>,
    /// Every watcher of the group, synced or not.
    members: usize,
}

/// One change, encoded for the wire.
#[derive(Debug)]
struct WireEvent {
    key: Vec<u8>,
    kind: EventKind,
    rev: i64,
    /// The encoded `mvccpb.Event` without `prev_kv`.
    plain: Bytes,
    /// With `prev_kv`: the same as `plain` when the key had no previous
    /// state; None when nobody wanted it when the batch was encoded.
    with_prev: Option<Bytes>,
}

impl WireEvent {
    fn encode(e: &Event, want_prev: bool) -> WireEvent {
        let kind = e.kind;
        let mut pb = mvccpb::Event {
            r#type: match kind {
                EventKind::Put => mvccpb::event::EventType::Put as i32,
                EventKind::Delete => mvccpb::event::EventType::Delete as i32,
            },
            kv: Some(e.kv.clone().into()),
            prev_kv: None,
        };
        let plain = Bytes::from(pb.encode_to_vec());
        let with_prev = match &e.prev_kv {
            None => Some(plain.clone()),
            Some(p) if want_prev => {
                pb.prev_kv = Some(p.clone().into());
                Some(Bytes::from(pb.encode_to_vec()))
            }
            Some(_) => None,
        };
        WireEvent {
            key: e.kv.key.clone(),
            kind,
            rev: e.kv.mod_revision,
            plain,
            with_prev,
        }
    }

    fn bytes_for(&self, prev_kv: bool) -> Option<&Bytes> {
        if prev_kv {
            self.with_prev.as_ref()
        } else {
            Some(&self.plain)
        }
    }

    fn size(&self) -> usize {
        let prev = match &self.with_prev {
            Some(b) if b.as_ptr() != self.plain.as_ptr() => b.len(),
            _ => 0,
        };
        self.key.len() + self.plain.len() + prev + 64
    }
}

/// The changes of one applied batch, encoded once.
#[derive(Debug)]
struct WireBatch {
    first: i64,
    last: i64,
    events: Vec<WireEvent>,
    size: usize,
    /// The events each group wants, framed once (see [`WireBatch::frame_for`]).
    frames: parking_lot::Mutex<Vec<(u64, Option<Frame>)>>,
}

/// A group's events of one batch, framed as `WatchResponse.events` entries.
#[derive(Debug, Clone)]
struct Frame {
    bytes: Bytes,
    /// The revision of the last event in it (0: none).
    last: i64,
}

impl WireBatch {
    /// The events of this batch that group `gid` (`gkey`) wants, framed;
    /// made once per group and batch and kept with the batch. None when
    /// one of them lacks the previous state the group needs (encoded
    /// before anyone wanted it).
    /// What it adds is counted in `total` (the ring's frame bytes).
    fn frame_for(
        &self,
        gid: u64,
        gkey: &GroupKey,
        hits: Option<&[usize]>,
        total: &mut usize,
    ) -> Option<Frame> {
        let mut frames = self.frames.lock();
        if let Some((_, f)) = frames.iter().find(|(g, _)| *g == gid) {
            return f.clone();
        }
        let wanted: Vec<&WireEvent> = match hits {
            Some(hits) => hits.iter().map(|&i| &self.events[i]).collect(),
            None => self.events.iter().filter(|e| gkey.wants(e)).collect(),
        };
        let made = wanted
            .iter()
            .map(|e| e.bytes_for(gkey.prev_kv))
            .collect::<Option<Vec<&Bytes>>>()
            .map(|evs| Frame {
                bytes: frame(evs),
                last: wanted.last().map_or(0, |e| e.rev),
            });
        *total += frame_cost(&made);
        frames.push((gid, made.clone()));
        made
    }

    /// Bytes of the frames made of this batch.
    fn frames_size(&self) -> usize {
        self.frames.lock().iter().map(|(_, f)| frame_cost(f)).sum()
    }
}

/// What a cached frame costs the ring.
fn frame_cost(f: &Option<Frame>) -> usize {
    f.as_ref().map_or(0, |f| f.bytes.len()) + 32
}

/// Part of a response being put together: one encoded event, or a
/// batch's shared frame.
enum Piece {
    Event(i64, Bytes),
    Frame(Frame),
}

struct Watcher {
    group: u64,
    /// Events before this revision are not sent (a start revision in the
    /// future).
    min_rev: i64,
    /// While lagging: the next revision this watcher must be sent.
    next_rev: i64,
    synced: bool,
    progress_notify: bool,
    /// No events sent since the last progress tick.
    quiet: bool,
    fragment: bool,
}

struct Stream {
    tx: Outbox,
    control: Vec<WatchOut>,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
    /// A progress request waits for every watcher to be synced.
    progress_wanted: bool,
    closed: bool,
}

impl Stream {
    /// Sends the queued control responses; true when none is left.
    fn flush_control(&mut self) -> bool {
        if self.control.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.control);
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(batch)) => {
                self.control = batch;
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.closed = true;
                false
            }
        }
    }

    fn all_synced(&self) -> bool {
        self.watchers.values().all(|w| w.synced)
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

    /// Sends the control responses that waited for room.
    fn flush_blocked(&mut self) {
        let blocked: Vec<StreamId> = self.blocked.drain().collect();
        for sid in blocked {
            if let Some(s) = self.streams.get_mut(&sid) {
                if !s.flush_control() && !s.closed {
                    self.blocked.insert(sid);
                }
            }
        }
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

    /// A new stream whose responses go to `tx`.
    pub fn open_stream(&mut self, tx: Outbox) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            id,
            Stream {
                tx,
                control: Vec::new(),
                watchers: HashMap::new(),
                next_id: 0,
                progress_wanted: false,
                closed: false,
            },
        );
        id
    }

    /// The stream ended: its watchers go.
    pub fn close_stream(&mut self, stream: StreamId) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        for (id, w) in s.watchers {
            self.leave_group(stream, id, &w);
        }
        self.lagging.retain(|(s, _)| *s != stream);
        self.blocked.remove(&stream);
    }

    fn group_for(&mut self, key: GroupKey) -> u64 {
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

    fn leave_group(&mut self, stream: StreamId, id: i64, w: &Watcher) {
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

    /// WatchCreateRequest on `stream` (etcd's rules: an empty key is
    /// "\0", a range end of "\0" means every key from the key on, a start
    /// revision of 0 means "after the current one", watch id 0 means "pick
    /// one").
    pub fn create(&mut self, stream: StreamId, req: &WatchCreateRequest) {
        let rev = self.current_rev;
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
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

    fn maybe_progress(&mut self, stream: StreamId) {
        let rev = self.current_rev;
        let resp = self.control(-1, rev);
        if let Some(s) = self.streams.get_mut(&stream) {
            if s.progress_wanted && s.all_synced() {
                s.progress_wanted = false;
                s.control.push(resp.into());
                if !s.flush_control() {
                    self.blocked.insert(stream);
                }
            }
        }
        self.drop_closed();
    }

    fn queue_control(&mut self, stream: StreamId, resp: WatchResponseWire) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.control.push(resp.into());
            if !s.flush_control() {
                self.blocked.insert(stream);
            }
        }
        self.drop_closed();
    }

    /// Ends the streams whose clients went away (their outboxes closed).
    pub fn sweep(&mut self) {
        for s in self.streams.values_mut() {
            if s.tx.is_closed() {
                s.closed = true;
            }
        }
        self.drop_closed();
    }

    fn drop_closed(&mut self) {
        let closed: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.closed)
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.close_stream(id);
        }
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
                if w.progress_notify && w.quiet && w.synced {
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
        if events.is_empty() || self.groups.is_empty() {
            return;
        }
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

    /// Drops the oldest batches while the ring (with its frames) is over
    /// its limit; the newest always stays.
    fn trim_ring(&mut self) {
        while self.ring_size + self.frames_size > self.cfg.ring_bytes && self.ring.len() > 1 {
            if let Some(old) = self.ring.pop_front() {
                self.ring_size -= old.size;
                self.frames_size -= old.frames_size();
                self.ring_from = old.last + 1;
            }
        }
    }

    fn clear_ring(&mut self) {
        self.ring.clear();
        self.ring_size = 0;
        self.frames_size = 0;
        self.ring_from = i64::MAX;
    }

    /// Which groups each event of `batch` matches.
    fn match_groups(&self, batch: &WireBatch) -> HashMap<u64, Vec<usize>> {
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

    fn deliver(&mut self, batch: &WireBatch) {
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

    fn demote(&mut self, stream: StreamId, id: i64, next_rev: i64) {
        let Some(w) = self
            .streams
            .get_mut(&stream)
            .and_then(|s| s.watchers.get_mut(&id))
        else {
            return;
        };
        if !w.synced {
            return;
        }
        w.synced = false;
        w.next_rev = next_rev.max(w.min_rev);
        if let Some(g) = self.groups.get_mut(&w.group) {
            g.synced.remove(&(stream, id));
        }
        self.lagging.push_back((stream, id));
    }

    /// Puts `pieces` (in revision order) into responses of about the size
    /// limit, split at revision boundaries (a frame holds whole revisions);
    /// a single revision over the limit goes in fragments when the watcher
    /// asked for them. The last response carries revision `covered`.
    fn responses(
        &self,
        watch_id: i64,
        pieces: Vec<Piece>,
        covered: i64,
        fragment: bool,
    ) -> Vec<WatchOut> {
        let limit = self.cfg.max_response_bytes;
        let mut out = Vec::new();
        let mut cur = WatchOut::default();
        let mut cur_size = 0;
        let mut cur_rev = 0;
        for p in pieces {
            let (rev, size, boundary) = match &p {
                Piece::Event(rev, b) => (*rev, b.len() + 4, *rev != cur_rev),
                Piece::Frame(f) => (f.last, f.bytes.len(), true),
            };
            if cur.has_events() && cur_size + size > limit && (boundary || fragment) {
                let head = self.control(watch_id, cur_rev);
                let mut r = std::mem::take(&mut cur);
                r.resp = WatchResponseWire {
                    fragment: !boundary,
                    events: r.resp.events,
                    ..head
                };
                out.push(r);
                cur_size = 0;
            }
            cur_size += size;
            cur_rev = rev;
            match p {
                // Events before any frame go as the response's own; after
                // one, framed too, to keep their order on the wire.
                Piece::Event(_, b) if cur.framed.is_empty() => cur.resp.events.push(b),
                Piece::Event(_, b) => cur.framed.push(frame([&b])),
                Piece::Frame(f) => cur.framed.push(f.bytes),
            }
        }
        if cur.has_events() {
            let head = self.control(watch_id, covered.max(cur_rev));
            cur.resp = WatchResponseWire {
                events: cur.resp.events,
                ..head
            };
            out.push(cur);
        }
        out
    }

    /// Moves lagging watchers forward by about `budget` events (from the
    /// ring, or from `source` past it); those that reach the current
    /// revision rejoin their group.
    pub fn catch_up(&mut self, source: &dyn HistorySource, budget: usize) -> CatchUp {
        self.flush_blocked();
        let mut progressed = false;
        let mut spent = 0;
        let mut rounds = self.lagging.len();
        while spent < budget && rounds > 0 {
            rounds -= 1;
            let Some((sid, id)) = self.lagging.pop_front() else {
                break;
            };
            match self.step_lagging(source, sid, id) {
                Step::Gone => progressed = true,
                Step::Synced => {
                    progressed = true;
                    self.maybe_progress(sid);
                }
                Step::Blocked => self.lagging.push_back((sid, id)),
                Step::Moved(n) => {
                    progressed = true;
                    spent += n.max(1);
                    self.lagging.push_back((sid, id));
                }
            }
        }
        self.drop_closed();
        self.trim_ring();
        CatchUp {
            lagging: self.has_lagging(),
            progressed,
        }
    }

    fn step_lagging(&mut self, source: &dyn HistorySource, sid: StreamId, id: i64) -> Step {
        let current = self.current_rev;
        let compact = self.compact_rev;
        let Some(s) = self.streams.get_mut(&sid) else {
            return Step::Gone;
        };
        let Some(w) = s.watchers.get(&id) else {
            return Step::Gone;
        };
        if w.synced {
            return Step::Gone;
        }
        let (next_rev, min_rev, group, fragment) = (w.next_rev, w.min_rev, w.group, w.fragment);
        if !s.flush_control() {
            self.blocked.insert(sid);
            return Step::Blocked;
        }
        if s.tx.capacity() == 0 {
            return Step::Blocked;
        }
        if next_rev < compact {
            // etcd: the watcher is canceled with the compacted revision
            // (and a header revision of 0, as etcd sends it).
            let w = s.watchers.remove(&id).expect("present");
            s.control.push(WatchOut::from(WatchResponseWire {
                header: Some(ResponseHeader {
                    cluster_id: self.status.cluster_id,
                    member_id: self.status.member_id,
                    revision: 0,
                    raft_term: self.status.term(),
                }),
                watch_id: id,
                canceled: true,
                compact_revision: compact,
                ..Default::default()
            }));
            if !s.flush_control() {
                self.blocked.insert(sid);
            }
            self.leave_group(sid, id, &w);
            return Step::Gone;
        }
        if next_rev > current {
            return self.sync(sid, id);
        }
        let gkey = self.groups[&group].key.clone();
        let (events, covered, read) = match self.ring_slice(&gkey, group, next_rev.max(min_rev)) {
            Some(found) => found,
            None => {
                let (key, end) = gkey.range.key_and_end();
                let chunk = self.cfg.history_chunk;
                match source.history(key, end, next_rev, chunk) {
                    Ok(hist) => {
                        let covered = if hist.len() < chunk {
                            current
                        } else {
                            hist.last().map_or(current, |e| e.kv.mod_revision)
                        };
                        let read = hist.len();
                        let evs = hist
                            .iter()
                            .map(|e| WireEvent::encode(e, gkey.prev_kv))
                            .filter(|e| gkey.wants(e) && e.rev >= min_rev)
                            .filter_map(|e| {
                                Some(Piece::Event(e.rev, e.bytes_for(gkey.prev_kv)?.clone()))
                            })
                            .collect();
                        (evs, covered, read)
                    }
                    Err(MvccError::Compacted) => {
                        // Compacted under us: cancel on the next turn.
                        self.compact_rev = self.compact_rev.max(next_rev + 1);
                        return Step::Moved(0);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "watch catch-up cannot read history");
                        return Step::Blocked;
                    }
                }
            }
        };
        let has_events = !events.is_empty();
        let resps = if events.is_empty() {
            Vec::new()
        } else {
            self.responses(id, events, covered, fragment)
        };
        let Some(s) = self.streams.get_mut(&sid) else {
            return Step::Gone;
        };
        if !resps.is_empty() {
            match s.tx.try_send(resps) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Step::Blocked,
                Err(TrySendError::Closed(_)) => {
                    s.closed = true;
                    return Step::Gone;
                }
            }
        }
        if let Some(w) = s.watchers.get_mut(&id) {
            w.quiet &= !has_events;
            w.next_rev = covered + 1;
        }
        if covered >= current {
            return self.sync(sid, id);
        }
        Step::Moved(read)
    }

    /// Events for group `gid` (`gkey`) from `from` on out of the ring, if
    /// the ring holds `from`: (pieces, revision covered, events looked at).
    /// A batch wanted whole goes as its shared frame.
    fn ring_slice(&mut self, gkey: &GroupKey, gid: u64, from: i64) -> Option<Slice> {
        if from < self.ring_from || self.ring.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        // Every change up to the current revision is in the ring.
        let mut covered = self.current_rev;
        let mut read = 0;
        // Batches are in revision order: skip those before `from` at once.
        let start = self.ring.partition_point(|b| b.last < from);
        for b in self.ring.range(start..) {
            // A batch encoded before anyone wanted previous states: the
            // engine has them (None).
            let whole = match b.first >= from {
                true => Some(b.frame_for(gid, gkey, None, &mut self.frames_size)?),
                false => None,
            };
            match whole {
                Some(f) if f.bytes.len() < self.cfg.max_response_bytes => {
                    if !f.bytes.is_empty() {
                        out.push(Piece::Frame(f));
                    }
                }
                _ => {
                    for e in b.events.iter().filter(|e| e.rev >= from && gkey.wants(e)) {
                        let bytes = e.bytes_for(gkey.prev_kv)?;
                        out.push(Piece::Event(e.rev, bytes.clone()));
                    }
                }
            }
            read += b.events.len();
            if read >= self.cfg.history_chunk {
                covered = b.last;
                break;
            }
        }
        Some((out, covered, read))
    }

    fn sync(&mut self, sid: StreamId, id: i64) -> Step {
        let Some(w) = self
            .streams
            .get_mut(&sid)
            .and_then(|s| s.watchers.get_mut(&id))
        else {
            return Step::Gone;
        };
        w.synced = true;
        if let Some(g) = self.groups.get_mut(&w.group) {
            g.synced.insert((sid, id));
        }
        Step::Synced
    }
}

/// What a round of [`Hub::catch_up`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Some watcher still lags (or a response still waits for room).
    pub lagging: bool,
    /// Some watcher moved: another round now may move more; when none
    /// moved, every lagging watcher waits for its client to read.
    pub progressed: bool,
}

/// Events of a catch-up slice, the revision the slice covers up to, and how
/// many events were looked at.
type Slice = (Vec<Piece>, i64, usize);

enum Step {
    /// The watcher is gone (canceled, compacted away, stream closed).
    Gone,
    /// Caught up: back in its group.
    Synced,
    /// Its stream cannot take more now.
    Blocked,
    /// Sent some; this many events were looked at.
    Moved(usize),
}

#[cfg(test)]
mod tests;
