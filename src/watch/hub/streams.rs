//! Streams: each watch stream's bounded outbox (its gRPC response stream),
//! its queue of control responses (created, canceled, progress) and its
//! watchers; and the assembly of events into responses of bounded size.
//!
//! Invariants: control responses are always flushed before events, so a
//! watcher's `created` precedes its events; a stream whose control
//! responses do not fit is in the hub's `blocked` set until they do; a
//! stream whose client went away is marked closed and dropped with its
//! watchers (`drop_closed`); a response holds whole revisions unless the
//! watcher asked for fragments.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;

use super::ring::Frame;
use super::{Hub, Outbox, StreamId};
use crate::proto::metastorepb::WatchResponseWire;
use crate::watch::wire::{frame, WatchOut};

/// Part of a response being put together: one encoded event, or a
/// batch's shared frame.
pub(super) enum Piece {
    Event(i64, Bytes),
    Frame(Frame),
}

pub(super) struct Watcher {
    pub(super) group: u64,
    /// Events before this revision are not sent (a start revision in the
    /// future).
    pub(super) min_rev: i64,
    /// While lagging: the next revision this watcher must be sent.
    pub(super) next_rev: i64,
    pub(super) synced: bool,
    pub(super) progress_notify: bool,
    /// No events sent since the last progress tick.
    pub(super) quiet: bool,
    pub(super) fragment: bool,
}

pub(super) struct Stream {
    pub(super) tx: Outbox,
    pub(super) control: Vec<WatchOut>,
    pub(super) watchers: HashMap<i64, Watcher>,
    pub(super) next_id: i64,
    /// A progress request waits for every watcher to be synced.
    pub(super) progress_wanted: bool,
    pub(super) closed: bool,
}

impl Watcher {
    /// Synced, and not waiting for a revision beyond the next one: a
    /// progress notification at `current_rev` is true for it.
    pub(super) fn current_at(&self, current_rev: i64) -> bool {
        self.synced && self.min_rev <= current_rev + 1
    }
}

impl Stream {
    /// Sends the queued control responses; true when none is left.
    pub(super) fn flush_control(&mut self) -> bool {
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

    /// Every watcher has been sent everything up to `current_rev`: each is
    /// synced, and none starts beyond the next revision (a watcher on a
    /// future revision, e.g. one resumed here from a member that was ahead,
    /// must not be told of a revision older than its start: etcd#20221).
    pub(super) fn all_synced(&self, current_rev: i64) -> bool {
        self.watchers.values().all(|w| w.current_at(current_rev))
    }
}

impl Hub {
    /// Sends the control responses that waited for room.
    pub(super) fn flush_blocked(&mut self) {
        let blocked: Vec<StreamId> = self.blocked.drain().collect();
        for sid in blocked {
            if let Some(s) = self.streams.get_mut(&sid) {
                if !s.flush_control() && !s.closed {
                    self.blocked.insert(sid);
                }
            }
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
        self.progress_waiting.remove(&stream);
    }

    pub(super) fn maybe_progress(&mut self, stream: StreamId) {
        let rev = self.current_rev;
        let resp = self.control(-1, rev);
        self.progress_waiting.remove(&stream);
        if let Some(s) = self.streams.get_mut(&stream) {
            if s.progress_wanted && s.all_synced(rev) {
                s.progress_wanted = false;
                s.control.push(resp.into());
                if !s.flush_control() {
                    self.blocked.insert(stream);
                }
            } else if s.progress_wanted {
                self.progress_waiting.insert(stream);
            }
        }
        self.drop_closed();
    }

    pub(super) fn queue_control(&mut self, stream: StreamId, resp: WatchResponseWire) {
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

    pub(super) fn drop_closed(&mut self) {
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

    /// Puts `pieces` (in revision order) into responses of about the size
    /// limit, split at revision boundaries (a frame holds whole revisions);
    /// a single revision over the limit goes in fragments when the watcher
    /// asked for them. The last response carries revision `covered`.
    pub(super) fn responses(
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
}
