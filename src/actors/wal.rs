//! The WalWriter: makes Raft's entries and hard state durable, on a thread of
//! its own so an fsync never stalls Raft or the client handlers.
//!
//! Group commit: it takes one command from its mailbox, then everything else
//! already queued, writes all of it with one write and ONE fsync, and answers
//! one `Persisted` with the highest ready number. While it syncs, the RaftActor
//! keeps sending appends, which pile up and become the next batch. (An actix
//! SyncArbiter cannot drain its mailbox this way, hence a plain thread with a
//! channel: still one owner of the WAL and typed messages in, typed messages out.)

use std::time::Instant;

use actix::Addr;
use crossbeam_channel::{Receiver, Sender};
use raft::eraftpb::HardState;

use super::messages::{Append, Persisted, Purge};
use super::raft::RaftActor;
use crate::metrics::METRICS;
use crate::storage::raft_log::{encode_entries, encode_message, record};
use crate::storage::wal::Wal;

/// What the WalWriter is asked to do.
pub enum WalCommand {
    /// Make a ready durable.
    Append(Append),
    /// Delete segments a durable snapshot covers.
    Purge(Purge),
}

/// The RaftActor's handle on the WalWriter's mailbox.
#[derive(Clone)]
pub struct WalHandle {
    tx: Sender<WalCommand>,
}

impl WalHandle {
    /// Queues a command. The mailbox is unbounded: its depth is bounded by
    /// Raft itself (max-uncommitted-size), and the RaftActor must never block.
    pub fn send(&self, cmd: WalCommand) {
        if self.tx.send(cmd).is_err() {
            // The writer only stops by exiting the process.
            tracing::error!("WAL writer is gone");
        }
    }
}

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
    /// Starts the writer thread over an opened WAL.
    pub fn spawn(
        wal: Wal,
        raft: Addr<RaftActor>,
        hard_state: HardState,
    ) -> std::io::Result<WalHandle> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut writer = WalWriter {
            wal,
            raft,
            hard_state,
            buf: Vec::new(),
        };
        std::thread::Builder::new()
            .name("wal".into())
            .spawn(move || writer.run(rx))?;
        Ok(WalHandle { tx })
    }

    fn run(&mut self, rx: Receiver<WalCommand>) {
        while let Ok(first) = rx.recv() {
            let mut highest = None;
            let mut must_sync = false;
            let mut purges = Vec::new();
            let mut entries = 0usize;
            for cmd in std::iter::once(first).chain(rx.try_iter()) {
                match cmd {
                    WalCommand::Append(a) => {
                        entries += a.entries.len();
                        must_sync |= a.must_sync;
                        highest = Some(a.number);
                        self.buffer(a);
                    }
                    WalCommand::Purge(p) => purges.push(p),
                }
            }
            if must_sync {
                self.sync();
                METRICS.wal_batch_entries.observe(entries as f64);
            }
            // Without must_sync (commit-index changes only) the records ride
            // along with the next sync: losing them loses nothing Raft cannot
            // recompute.
            if let Some(number) = highest {
                self.raft.do_send(Persisted { number });
            }
            for p in purges {
                self.purge(p);
            }
        }
    }

    fn buffer(&mut self, msg: Append) {
        if let Some(last) = msg.entries.last() {
            self.buf.clear();
            encode_entries(&msg.entries, &mut self.buf);
            self.wal.append(record::ENTRIES, &self.buf, last.index);
        }
        if let Some(hs) = msg.hard_state {
            self.wal.append(record::HARD_STATE, &encode_message(&hs), 0);
            self.hard_state = hs;
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

    fn purge(&mut self, msg: Purge) {
        match self.wal.purge(msg.upto) {
            Ok(n) if n > 0 => tracing::info!(segments = n, upto = msg.upto, "WAL segments purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL purge failed"),
        }
    }
}
