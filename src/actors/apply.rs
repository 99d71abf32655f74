//! The ApplyActor: owns the state machine. Applies committed entries in log
//! order, one batch per `Apply` message; answers each waiting client by request
//! id; serves reads once the applied index reaches their read index; reports
//! `Applied` to the RaftActor; writes a snapshot every `snapshot_count` entries.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use raft::eraftpb::EntryType;
use tokio::sync::oneshot;

use super::messages::*;
use super::raft::RaftActor;
use crate::metrics::METRICS;
use crate::state_machine::{snapshot, StateMachine, Store};
use crate::status::NodeStatus;

/// Mailbox depth for handlers' `send().await` (backpressure).
const MAILBOX: usize = 4096;

/// Owns the state machine.
pub struct ApplyActor {
    sm: StateMachine,
    raft: Addr<RaftActor>,
    status: Arc<NodeStatus>,
    waiters: HashMap<u64, (oneshot::Sender<WriteResult>, Instant)>,
    /// Reads waiting for the applied index to reach their key.
    reads: BTreeMap<u64, Vec<PendingRead>>,
    data_dir: PathBuf,
    snapshot_count: u64,
    last_snapshot: u64,
    /// A snapshot file is being written by a background thread.
    saving: bool,
}

impl ApplyActor {
    /// Wraps a (restored) state machine.
    pub fn new(
        sm: StateMachine,
        raft: Addr<RaftActor>,
        status: Arc<NodeStatus>,
        data_dir: PathBuf,
        snapshot_count: u64,
    ) -> ApplyActor {
        let last_snapshot = sm.applied_index();
        let a = ApplyActor {
            sm,
            raft,
            status,
            waiters: HashMap::new(),
            reads: BTreeMap::new(),
            data_dir,
            snapshot_count: snapshot_count.max(1),
            last_snapshot,
            saving: false,
        };
        a.publish();
        a
    }

    fn publish(&self) {
        let size = self.sm.approximate_size_bytes();
        let revision = self.sm.current_revision();
        self.status
            .applied_index
            .store(self.sm.applied_index(), Relaxed);
        self.status.revision.store(revision, Relaxed);
        self.status.db_size.store(size, Relaxed);
        METRICS
            .proposals_applied
            .set(self.sm.applied_index() as i64);
        METRICS.mvcc_revision.set(revision);
        METRICS.db_total_size.set(size as i64);
        METRICS.keys_total.set(self.sm.key_count() as i64);
        METRICS.proposals_pending.set(self.waiters.len() as i64);
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.sm.applied_index();
        let later = self.reads.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.reads, later);
        for read in ready.into_values().flatten() {
            let _ = read.reply.send(self.sm.read(&read.request));
        }
    }

    /// Every `snapshot_count` entries: encode the state here (it must be a
    /// consistent image), write and fsync it on a background thread so apply
    /// does not stall on the disk.
    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let applied = self.sm.applied_index();
        if self.saving || applied < self.last_snapshot + self.snapshot_count {
            return;
        }
        let term = self.sm.applied_term();
        let store = match self.sm.store() {
            Store::Memory(m) => m,
            Store::Rocks(_) => {
                // The applied state is in RocksDB already: the Raft log up to
                // here may go once RocksDB's WAL is synced (RocksLog::purge).
                self.last_snapshot = applied;
                self.raft.do_send(Snapshotted {
                    index: applied,
                    term,
                });
                return;
            }
        };
        let started = Instant::now();
        let image = snapshot::encode(applied, term, self.sm.conf_state(), store);
        tracing::debug!(
            index = applied,
            bytes = image.len(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot encoded"
        );
        self.saving = true;
        let dir = self.data_dir.clone();
        let me = ctx.address();
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let ok = match snapshot::save(&dir, applied, &image) {
                    Ok(path) => {
                        tracing::info!(index = applied, bytes = image.len(), file = %path.display(), "snapshot saved");
                        true
                    }
                    Err(e) => {
                        // The WAL still holds everything; try again later.
                        tracing::error!(error = %e, "snapshot failed");
                        false
                    }
                };
                me.do_send(SnapshotSaved {
                    index: applied,
                    term,
                    ok,
                });
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the snapshot thread");
            self.saving = false;
        }
    }
}

impl Handler<SnapshotSaved> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: SnapshotSaved, _: &mut Context<Self>) {
        self.saving = false;
        if msg.ok {
            self.last_snapshot = msg.index;
            self.raft.do_send(Snapshotted {
                index: msg.index,
                term: msg.term,
            });
        }
    }
}

impl Actor for ApplyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Register> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        let now = Instant::now();
        self.waiters
            .extend(msg.0.into_iter().map(|(id, reply)| (id, (reply, now))));
    }
}

impl Handler<Apply> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let mut last = None;
        for entry in &msg.entries {
            last = Some(entry.index);
            let data: &[u8] = match entry.get_entry_type() {
                EntryType::EntryNormal => &entry.data,
                // Membership changes arrive with multi-member clusters; a conf
                // change entry still counts as applied.
                _ => &[],
            };
            let Some(applied) = self.sm.apply(entry.index, entry.term, data) else {
                continue;
            };
            if let Some((reply, since)) = self.waiters.remove(&applied.id) {
                METRICS
                    .propose_duration_ms
                    .observe(since.elapsed().as_secs_f64() * 1000.0);
                let _ = reply.send(applied.result);
            }
        }
        if let Err(e) = self.sm.commit() {
            // The applied state cannot be recorded; going on would apply the
            // next entries onto a state the disk does not have (as etcd, stop).
            tracing::error!(error = %e, "cannot write applied changes; stopping");
            std::process::exit(2);
        }
        METRICS
            .apply_duration_ms
            .observe(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(index) = last {
            self.raft.do_send(Applied { index });
        }
        self.publish();
        self.serve_ready_reads();
        self.maybe_snapshot(ctx);
    }
}

impl Handler<ServeReads> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: ServeReads, _: &mut Context<Self>) {
        self.reads.entry(msg.index).or_default().extend(msg.reads);
        self.serve_ready_reads();
    }
}

impl Handler<LocalRead> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: LocalRead, _: &mut Context<Self>) {
        let _ = msg.0.reply.send(self.sm.read(&msg.0.request));
    }
}

impl Handler<QueryStore> for ApplyActor {
    type Result = MessageResult<QueryStore>;
    fn handle(&mut self, _: QueryStore, _: &mut Context<Self>) -> Self::Result {
        MessageResult(StoreStatus {
            revision: self.sm.current_revision(),
            db_size: self.sm.approximate_size_bytes(),
            applied_index: self.sm.applied_index(),
        })
    }
}

impl Handler<TakeImage> for ApplyActor {
    type Result = Result<crate::storage::image::ImageJob, crate::error::ApiError>;
    fn handle(&mut self, _: TakeImage, _: &mut Context<Self>) -> Self::Result {
        self.sm
            .take_image(&self.data_dir)
            .map_err(|e| crate::error::ApiError::Internal(e.to_string()))
    }
}

impl Handler<Defragment> for ApplyActor {
    type Result = Option<Box<dyn FnOnce() + Send>>;
    fn handle(&mut self, _: Defragment, _: &mut Context<Self>) -> Self::Result {
        self.sm.defragment_job()
    }
}
