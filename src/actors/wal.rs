//! The WalWriter: makes Raft's entries and hard state durable through the
//! engine's [`LogStore`], on a thread of its own so an fsync never stalls Raft
//! or the client handlers.
//!
//! Group commit: it takes one command from its mailbox, then everything else
//! already queued, writes all of it with one write and ONE fsync, and answers
//! one `Persisted` with the highest ready number. While it syncs, the RaftActor
//! keeps sending appends, which pile up and become the next batch. (An actix
//! SyncArbiter cannot drain its mailbox this way, hence a plain thread with a
//! channel: still one owner of the WAL and typed messages in, typed messages out.)

use std::time::Instant;

use super::messages::{Append, Persisted, Purge};
use super::raft::RaftActor;
use crate::metrics::Metrics;
use crate::storage::engine::LogStore;
use actix::Addr;
use crossbeam_channel::{Receiver, Sender};

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

/// Owns the engine's Raft log store.
pub struct WalWriter {
    log: Box<dyn LogStore>,
    raft: Addr<RaftActor>,
    metrics: std::sync::Arc<Metrics>,
    /// This member (for logs).
    member: u64,
    /// The term of the last hard state written (for logs).
    term: u64,
}

/// An fsync slower than this is logged (etcd's threshold).
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_secs(1);

impl WalWriter {
    /// Starts the writer thread over an engine's log store. Join the
    /// returned thread at shutdown (it ends when the RaftActor, and with it
    /// the last handle, is gone) so the process never exits inside a write.
    pub fn spawn(
        log: Box<dyn LogStore>,
        raft: Addr<RaftActor>,
        metrics: std::sync::Arc<Metrics>,
        member: u64,
    ) -> std::io::Result<(WalHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut writer = WalWriter {
            log,
            raft,
            metrics,
            member,
            term: 0,
        };
        let thread = std::thread::Builder::new()
            .name("wal".into())
            .spawn(move || writer.run(rx))?;
        Ok((WalHandle { tx }, thread))
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
                        if let Some(hs) = &a.hard_state {
                            self.term = hs.term;
                        }
                        if let Some(meta) = &a.snapshot {
                            let hs = a.hard_state.clone().unwrap_or_default();
                            self.log.reset(meta, &hs);
                            self.log.append(&a.entries, None);
                        } else {
                            self.log.append(&a.entries, a.hard_state.as_ref());
                        }
                    }
                    WalCommand::Purge(p) => purges.push(p),
                }
            }
            if must_sync {
                self.sync();
                self.metrics.wal_batch_entries.observe(entries as f64);
            }
            // Without must_sync (nothing but a hard state that needs no fsync)
            // the records ride along with the next sync.
            if let Some(number) = highest {
                self.raft.do_send(Persisted { number });
            }
            for p in purges {
                if let Err(e) = self.log.purge(p.upto) {
                    tracing::warn!(error = %e, upto = p.upto, "log purge failed");
                }
            }
        }
    }

    fn sync(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.log.sync() {
            // Raft cannot go on without a durable log, and retrying after a failed
            // fsync may report success for data that is gone (as etcd, stop).
            tracing::error!(error = %e, "Raft log write failed; stopping");
            std::process::exit(2);
        }
        let took = started.elapsed();
        self.metrics.wal_fsync_seconds.observe(took.as_secs_f64());
        if took > SLOW_FSYNC {
            tracing::warn!(
                member = format!("{:x}", self.member),
                term = self.term,
                took_ms = took.as_millis() as u64,
                expected_ms = SLOW_FSYNC.as_millis() as u64,
                "slow fdatasync"
            );
        }
    }
}
