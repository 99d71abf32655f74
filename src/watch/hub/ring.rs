//! The ring: recent applied batches, each encoded once ([`WireBatch`]: one
//! encoded `mvccpb.Event` per change, with and without its previous
//! state), and the frames made of them for each group that wanted them
//! ([`WireBatch::frame_for`]), kept with their batch. Every matching
//! watcher's response holds the same `Bytes`: nothing is copied per
//! watcher.
//!
//! Invariants: batches are in revision order and the ring holds every
//! change from `ring_from` on (i64::MAX: none); encoded events and frames
//! are counted together (`ring_size + frames_size`) against
//! `HubConfig::ring_bytes`, the oldest batches going first and the newest
//! always staying; a frame is made at most once per group and batch.

use bytes::Bytes;
use prost::Message as _;

use super::catch_up::Slice;
use super::groups::GroupKey;
use super::streams::Piece;
use super::Hub;
use crate::proto::mvccpb;
use crate::storage::{Event, EventKind};
use crate::watch::wire::frame;

/// One change, encoded for the wire.
#[derive(Debug)]
pub(super) struct WireEvent {
    pub(super) key: Vec<u8>,
    pub(super) kind: EventKind,
    pub(super) rev: i64,
    /// The encoded `mvccpb.Event` without `prev_kv`.
    pub(super) plain: Bytes,
    /// With `prev_kv`: the same as `plain` when the key had no previous
    /// state; None when nobody wanted it when the batch was encoded.
    pub(super) with_prev: Option<Bytes>,
}

impl WireEvent {
    pub(super) fn encode(e: &Event, want_prev: bool) -> WireEvent {
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

    pub(super) fn bytes_for(&self, prev_kv: bool) -> Option<&Bytes> {
        if prev_kv {
            self.with_prev.as_ref()
        } else {
            Some(&self.plain)
        }
    }

    pub(super) fn size(&self) -> usize {
        let prev = match &self.with_prev {
            Some(b) if b.as_ptr() != self.plain.as_ptr() => b.len(),
            _ => 0,
        };
        self.key.len() + self.plain.len() + prev + 64
    }
}

/// The changes of one applied batch, encoded once.
#[derive(Debug)]
pub(super) struct WireBatch {
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) events: Vec<WireEvent>,
    pub(super) size: usize,
    /// The events each group wants, framed once (see [`WireBatch::frame_for`]).
    pub(super) frames: parking_lot::Mutex<Vec<(u64, Option<Frame>)>>,
}

/// A group's events of one batch, framed as `WatchResponse.events` entries.
#[derive(Debug, Clone)]
pub(super) struct Frame {
    pub(super) bytes: Bytes,
    /// The revision of the last event in it (0: none).
    pub(super) last: i64,
}

impl WireBatch {
    /// The events of this batch that group `gid` (`gkey`) wants, framed;
    /// made once per group and batch and kept with the batch. None when
    /// one of them lacks the previous state the group needs (encoded
    /// before anyone wanted it).
    /// What it adds is counted in `total` (the ring's frame bytes).
    pub(super) fn frame_for(
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
    pub(super) fn frames_size(&self) -> usize {
        self.frames.lock().iter().map(|(_, f)| frame_cost(f)).sum()
    }
}

/// What a cached frame costs the ring.
fn frame_cost(f: &Option<Frame>) -> usize {
    f.as_ref().map_or(0, |f| f.bytes.len()) + 32
}

impl Hub {
    /// Drops the oldest batches while the ring (with its frames) is over
    /// its limit; the newest always stays.
    pub(super) fn trim_ring(&mut self) {
        while self.ring_size + self.frames_size > self.cfg.ring_bytes && self.ring.len() > 1 {
            if let Some(old) = self.ring.pop_front() {
                self.ring_size -= old.size;
                self.frames_size -= old.frames_size();
                self.ring_from = old.last + 1;
            }
        }
    }

    pub(super) fn clear_ring(&mut self) {
        self.ring.clear();
        self.ring_size = 0;
        self.frames_size = 0;
        self.ring_from = i64::MAX;
    }

    /// Events for group `gid` (`gkey`) from `from` on out of the ring, if
    /// the ring holds `from`: (pieces, revision covered, events looked at).
    /// A batch wanted whole goes as its shared frame.
    pub(super) fn ring_slice(&mut self, gkey: &GroupKey, gid: u64, from: i64) -> Option<Slice> {
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
}
