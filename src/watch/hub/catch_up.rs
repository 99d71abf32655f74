//! Catch-up: watchers that fell behind (their outbox was full, they started
//! in the past, a snapshot replaced the state) are "lagging": each holds
//! only the next revision it must be sent, and [`Hub::catch_up`] moves
//! them forward in bounded slices, from the ring or, past it, from the
//! engine's history, until they reach the current revision and rejoin
//! their group.
//!
//! Invariants: a watcher is either synced (in its group's `synced` set) or
//! in the hub's `lagging` queue, never both; a lagging watcher is sent
//! every revision from its `next_rev` on, exactly once, in order; one
//! whose next revision was compacted is canceled with `compact_revision`,
//! as etcd does; a round reads about `budget` events at most, so memory is
//! bounded by the outboxes and the ring however slowly a client reads.

use tokio::sync::mpsc::error::TrySendError;

use super::ring::WireEvent;
use super::streams::Piece;
use super::{HistorySource, Hub, StreamId};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::metastorepb::WatchResponseWire;
use crate::storage::MvccError;
use crate::watch::wire::WatchOut;

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
pub(super) type Slice = (Vec<Piece>, i64, usize);

pub(super) enum Step {
    /// The watcher is gone (canceled, compacted away, stream closed).
    Gone,
    /// Caught up: back in its group.
    Synced,
    /// Its stream cannot take more now.
    Blocked,
    /// Sent some; this many events were looked at.
    Moved(usize),
}

impl Hub {
    pub(super) fn demote(&mut self, stream: StreamId, id: i64, next_rev: i64) {
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

    pub(super) fn step_lagging(
        &mut self,
        source: &dyn HistorySource,
        sid: StreamId,
        id: i64,
    ) -> Step {
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

    pub(super) fn sync(&mut self, sid: StreamId, id: i64) -> Step {
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
