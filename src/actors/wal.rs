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
//!
//! A failed fsync is final: the writer answers nothing after it (no
//! `Persisted` for the failed batch or any later one), drops its mailbox so
//! nothing more is queued, and trips the member's [`Fatal`] switch.

use std::time::Instant;

use super::messages::{Append, Persisted, Purge};
use super::raft::RaftAddr;
use crate::fatal::Fatal;
use crate::metrics::Metrics;
use crate::status::Faults;
use crate::storage::engine::LogStore;
use crate::storage::StorageError;
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
            // The writer stopped on a failed fsync and the member with it.
            tracing::debug!("WAL writer is gone");
        }
    }
}

/// Owns the engine's Raft log store.
pub struct WalWriter {
    log: Box<dyn LogStore>,
    raft: RaftAddr,
    metrics: std::sync::Arc<Metrics>,
    /// This member (for logs).
    member: u64,
    /// The term of the last hard state written (for logs).
    term: u64,
    /// Where a failed fsync goes.
    fatal: Fatal,
    /// Test-only switches (a failing fsync).
    faults: std::sync::Arc<Faults>,
}

/// What the writer needs besides its log store and Raft, from the member.
pub struct WalContext {
    /// The member's metrics.
    pub metrics: std::sync::Arc<Metrics>,
    /// This member (for logs).
    pub member: u64,
    /// The member's fatal-error switch.
    pub fatal: Fatal,
    /// Test-only fault switches.
    pub faults: std::sync::Arc<Faults>,
}

/// An fsync slower than this is logged (etcd's threshold).
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_secs(1);

impl WalWriter {
    /// Starts the writer thread over an engine's log store. Join the
    /// returned thread at shutdown (it ends when the RaftActor, and with it
    /// the last handle, is gone) so the process never exits inside a write.
    pub fn spawn(
        log: Box<dyn LogStore>,
        raft: RaftAddr,
        ctx: WalContext,
    ) -> std::io::Result<(WalHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut writer = WalWriter {
            log,
            raft,
            metrics: ctx.metrics,
            member: ctx.member,
            term: 0,
            fatal: ctx.fatal,
            faults: ctx.faults,
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
                        fail::fail_point!("wal::before_write");
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
                fail::fail_point!("wal::before_fsync");
                if let Err(e) = self.sync() {
                    // Raft cannot go on without a durable log, and retrying
                    // after a failed fsync may report success for data that
                    // is gone (as etcd, stop). Returning drops the mailbox:
                    // nothing queued or sent later is acknowledged.
                    self.fatal.stop("Raft log write failed", &e);
                    return;
                }
                self.metrics.wal_batch_entries.observe(entries as f64);
            }
            fail::fail_point!("wal::after_fsync");
            // Without must_sync (nothing but a hard state that needs no fsync)
            // the records ride along with the next sync.
            if let Some(number) = highest {
                self.raft.do_send(Persisted { number });
            }
            for p in purges {
                fail::fail_point!("wal::purge");
                if let Err(e) = self.log.purge(p.upto, p.keep_after) {
                    tracing::warn!(error = %e, upto = p.upto, "log purge failed");
                }
            }
        }
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let started = Instant::now();
        if self
            .faults
            .fail_wal_sync
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(StorageError::io(
                "sync the Raft log",
                std::io::Error::other("fsync failed by fault injection"),
            ));
        }
        self.log.sync()?;
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
        Ok(())
    }
}
