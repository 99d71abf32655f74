//! The WalWriter: makes Raft's entries and hard state durable. It runs on its
//! own thread (a SyncArbiter), so an fsync never stalls the RaftActor; while it
//! syncs, proposals pile up in raft's unstable log and arrive next as one larger
//! append: one write and one fsync per batch (group commit).

use std::time::Instant;

use actix::prelude::*;
use raft::eraftpb::HardState;

use super::messages::{Append, Persisted, Purge};
use super::raft::RaftActor;
use crate::metrics::METRICS;
use crate::storage::raft_log::{encode_entries, encode_message, record};
use crate::storage::wal::Wal;

/// Owns the WAL.
pub struct WalWriter {
    wal: Wal,
    raft: Addr<RaftActor>,
    /// Latest hard state, written at the head of every new segment so each
    /// segment stands alone once older ones are purged.
    hard_state: HardState,
    buf: Vec<u8>,
}

impl WalWriter {
    /// Wraps an opened WAL.
    pub fn new(wal: Wal, raft: Addr<RaftActor>, hard_state: HardState) -> WalWriter {
        WalWriter {
            wal,
            raft,
            hard_state,
            buf: Vec::new(),
        }
    }

    fn sync(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.wal.sync() {
            // Raft cannot go on without a durable log, and retrying after a failed
            // fsync may report success for data that is gone (as etcd, stop).
            tracing::error!(error = %e, "WAL write failed; stopping");
            std::process::exit(2);
        }
        METRICS
            .wal_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        if self.wal.should_rotate() {
            let header = vec![(record::HARD_STATE, encode_message(&self.hard_state))];
            if let Err(e) = self.wal.rotate(&header) {
                tracing::error!(error = %e, "WAL segment rotation failed; stopping");
                std::process::exit(2);
            }
        }
    }
}

impl Actor for WalWriter {
    type Context = SyncContext<Self>;
}

impl Handler<Append> for WalWriter {
    type Result = ();
    fn handle(&mut self, msg: Append, _: &mut SyncContext<Self>) {
        if let Some(last) = msg.entries.last() {
            self.buf.clear();
            encode_entries(&msg.entries, &mut self.buf);
            self.wal.append(record::ENTRIES, &self.buf, last.index);
            METRICS.wal_batch_entries.observe(msg.entries.len() as f64);
        }
        if let Some(hs) = msg.hard_state {
            self.wal.append(record::HARD_STATE, &encode_message(&hs), 0);
            self.hard_state = hs;
        }
        if msg.must_sync {
            self.sync();
        }
        // Without must_sync (a commit-index change only) the record rides along
        // with the next sync: losing it loses nothing Raft cannot recompute.
        self.raft.do_send(Persisted { number: msg.number });
    }
}

impl Handler<Purge> for WalWriter {
    type Result = ();
    fn handle(&mut self, msg: Purge, _: &mut SyncContext<Self>) {
        match self.wal.purge(msg.upto) {
            Ok(n) if n > 0 => tracing::info!(segments = n, upto = msg.upto, "WAL segments purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL purge failed"),
        }
    }
}
