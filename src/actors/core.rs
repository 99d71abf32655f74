//! A member's core: the actors that make it a Raft member and a state
//! machine, wired together, and the handles the API layer talks to.
//!
//! Threads: the RaftActor, the Ticker, the PeerActors and the peer server
//! share one thread of their own (an actix Arbiter), so that nothing the
//! rest of the member does (a large range, an image, a snapshot install)
//! delays a tick or a heartbeat. The client API, the ApplyActor, the Lessor
//! and the client-session actors share the caller's actix thread; the
//! WalWriter has its own.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::apply::ApplyActor;
use super::messages::InitialMembers;
use super::peer::PeerContext;
use super::raft::{RaftActor, RaftAddr, RaftSettings};
use super::ticker::Ticker;
use super::wal::WalWriter;
use crate::config::Config;
use crate::consensus::{raft_config, Node};
use crate::error::ApiError;
use crate::state_machine::StateMachine;
use crate::status::{Faults, NodeStatus};
use crate::storage::engine::{ImageIntake, LogStore};
use crate::storage::raft_log::RaftLog;
use crate::storage::StorageError;

/// A member's state opened from its data dir, ready to hand to the actors.
pub struct Recovered {
    /// The state machine at its applied index.
    pub state_machine: StateMachine,
    /// The Raft log after it.
    pub log: RaftLog,
    /// Where the WalWriter makes new entries durable.
    pub log_store: Box<dyn LogStore>,
    /// What takes in images from the leader as they arrive.
    pub intake: Arc<dyn ImageIntake>,
}

/// Handles to the running core, for the API layer.
#[derive(Clone)]
pub struct Core {
    /// The RaftActor.
    pub raft: RaftAddr,
    /// The ApplyActor.
    pub apply: Addr<ApplyActor>,
    /// The Lessor.
    pub lessor: Addr<crate::actors::lessor::Lessor>,
    /// Request ids of this member.
    pub ids: Arc<crate::actors::propose::RequestIds>,
    /// Live status.
    pub status: Arc<NodeStatus>,
    /// Test-only fault switches of the transport.
    pub faults: Arc<Faults>,
    /// The Raft thread (the peer server runs there too).
    pub raft_thread: ArbiterHandle,
    /// This member's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The client thread (the ApplyActor's; client sessions run there).
    pub client_thread: ArbiterHandle,
    /// How peer URLs are dialed (plain, or TLS with the peer certificate).
    pub dialer: crate::tls::Dialer,
    /// The auth store as of the last applied batch.
    pub auth: crate::actors::apply::AuthCell,
    /// What takes in images from the leader as they arrive (the peer
    /// service hands it each one it receives).
    pub intake: Arc<dyn ImageIntake>,
}

impl Core {
    /// Starts a client-session actor (one per Watch or LeaseKeepAlive
    /// stream) on the client thread: the one way sessions start, from a
    /// gRPC task or anywhere else.
    pub fn start_session<A>(
        &self,
        make: impl FnOnce(&mut Context<A>) -> A + Send + 'static,
    ) -> Addr<A>
    where
        A: Actor<Context = Context<A>>,
    {
        A::start_in_arbiter(&self.client_thread, make)
    }

    /// Opens a Watch stream in the ApplyActor's hub (its responses go to
    /// `outbox`) and starts its session for what the client sends.
    pub async fn open_watch(
        &self,
        outbox: crate::watch::Outbox,
        requests: super::messages::WatchRequests,
        caller: crate::state_machine::auth::Caller,
    ) -> Result<(), ApiError> {
        let stream = self
            .apply
            .send(super::messages::WatchOpen { outbox })
            .await
            .map_err(|_| ApiError::Stopped)?;
        let apply = self.apply.clone();
        self.start_session(move |ctx| {
            ctx.add_stream(requests);
            super::watch::WatchSession::new(apply, stream, caller)
        });
        Ok(())
    }

    /// Starts an image of the applied state (see [`super::images`]).
    pub async fn take_image(&self) -> Result<super::images::ImageJob, ApiError> {
        self.apply
            .send(super::messages::TakeImage)
            .await
            .map_err(|_| ApiError::Stopped)?
    }
}

/// The threads a core runs on besides the caller's, joined at shutdown.
pub struct CoreThreads {
    raft: Arbiter,
    wal: std::thread::JoinHandle<()>,
}

impl CoreThreads {
    /// Waits for the Raft thread (stopped with the System) and the
    /// WalWriter (which ends when the RaftActor is gone).
    pub fn join(self) {
        self.raft.stop();
        let _ = self.raft.join();
        let _ = self.wal.join();
    }
}

/// Starts the RaftActor, Ticker and WalWriter on their own threads and the
/// ApplyActor on the CURRENT actix arbiter, for a recovered member; its
/// PeerActors dial with `dialer`.
pub fn start_core(
    cfg: &Config,
    status: Arc<NodeStatus>,
    faults: Arc<Faults>,
    dialer: crate::tls::Dialer,
    rec: Recovered,
) -> Result<(Core, CoreThreads), StorageError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let id = status.member_id;
    let rcfg = raft_config(&cfg.raft, id, rec.state_machine.applied_index());
    let logger = crate::consensus::logger();
    let mut node: Node<crate::actors::messages::PendingRead> =
        Node::new(&rcfg, rec.log, &logger)
            .map_err(|e| StorageError::Decode(format!("raft: {e}")))?;
    node.set_pipeline(cfg.raft.pipeline_appends);
    let tick = Duration::from_millis(cfg.raft.tick_ms);
    let members = rec.state_machine.membership().members();

    let apply_ctx = Context::<ApplyActor>::new();
    let apply = apply_ctx.address();
    let raft_thread = Arbiter::new();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let log_store = rec.log_store;
    let intake = rec.intake;
    let max_batch_bytes = usize::try_from(cfg.raft.max_size_per_msg).unwrap_or(usize::MAX);
    let peers = {
        let status = status.clone();
        let metrics = metrics.clone();
        let cluster_id = status.cluster_id;
        let dialer = dialer.clone();
        move |raft: RaftAddr, apply: Addr<ApplyActor>| PeerContext {
            from: id,
            cluster_id,
            raft,
            apply,
            status,
            metrics,
            max_batch_bytes,
            dialer,
        }
    };
    let settings_catchup = cfg.snapshot_catchup_entries;
    let raft_status = status.clone();
    let wal_ctx = crate::actors::wal::WalContext {
        metrics: metrics.clone(),
        member: id,
        fatal: status.fatal.clone(),
        faults: faults.clone(),
    };
    let apply_for_raft = apply.clone();
    // A lone voter has no heartbeats to send and no election to lose: its
    // Raft runs on the client thread, which saves two thread hand-offs per
    // batch, until it gains a peer (see `raft::moving`). Any other member
    // gives Raft a thread of its own.
    let cs = rec.state_machine.conf_state();
    let lone = cs.voters == [id] && cs.learners.is_empty();
    let thread_of_raft = raft_thread.handle();
    let start = move || {
        let ctx = Context::<RaftActor>::new();
        let addr = ctx.address();
        let raft = RaftAddr::new(addr.clone());
        let wal = match WalWriter::spawn(log_store, raft.clone(), wal_ctx) {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        Ticker::new(addr.clone(), tick).start();
        let settings = RaftSettings {
            snapshot_catchup_entries: settings_catchup,
            tick,
            peers: peers(raft.clone(), apply_for_raft.clone()),
            raft_thread: lone.then_some(thread_of_raft),
            addr: raft.clone(),
        };
        ctx.run(RaftActor::new(
            node,
            wal.0,
            apply_for_raft,
            raft_status,
            settings,
        ));
        addr.do_send(InitialMembers(members));
        let _ = tx.send(Ok((raft, wal.1)));
    };
    let spawned = if lone {
        start();
        true
    } else {
        raft_thread.spawn_fn(start)
    };
    if !spawned {
        return Err(StorageError::io(
            "start the Raft thread",
            std::io::Error::other("arbiter stopped"),
        ));
    }
    let (raft, wal_thread) = rx
        .recv()
        .map_err(|_| StorageError::io("start the Raft thread", std::io::Error::other("gone")))?
        .map_err(|e| StorageError::io("start the WAL writer thread", e))?;
    let ids = Arc::new(crate::actors::propose::RequestIds::new(id));
    let proposer = crate::actors::propose::Proposer {
        raft: raft.clone(),
        ids: ids.clone(),
        status: status.clone(),
        max_request_bytes: cfg.max_request_bytes,
    };
    let lessor = crate::actors::lessor::Lessor::new(
        crate::actors::lessor::LessorConfig {
            extend: Duration::from_millis(cfg.raft.tick_ms * cfg.raft.election_tick as u64),
            checkpoint_interval: Duration::from_millis(cfg.lease_checkpoint_interval_ms),
        },
        status.clone(),
        proposer,
        rec.state_machine.leases(),
    )
    .start();
    let auth: crate::actors::apply::AuthCell =
        Arc::new(parking_lot::RwLock::new(rec.state_machine.auth().clone()));
    apply_ctx.run(ApplyActor::new(
        rec.state_machine,
        raft.clone(),
        lessor.clone(),
        status.clone(),
        metrics.clone(),
        crate::actors::apply::ApplySettings {
            auth: auth.clone(),
            data_dir: cfg.data_dir.clone(),
            snapshot_count: cfg.snapshot_count,
            warn_apply: Duration::from_millis(cfg.warning_apply_duration_ms),
            watch: crate::actors::apply::WatchSettings {
                hub: crate::watch::HubConfig {
                    max_response_bytes: cfg.max_request_bytes,
                    ..Default::default()
                },
                progress_notify: Duration::from_millis(cfg.watch_progress_notify_interval_ms),
            },
            faults: faults.clone(),
        },
    ));
    let handle = raft_thread.handle();
    Ok((
        Core {
            raft,
            apply,
            lessor,
            ids,
            status,
            faults,
            raft_thread: handle,
            metrics,
            client_thread: Arbiter::current(),
            dialer,
            auth,
            intake,
        },
        CoreThreads {
            raft: raft_thread,
            wal: wal_thread,
        },
    ))
}

/// Puts a message in an actor's mailbox without waiting for it to be handled;
/// waits only while the mailbox is full (backpressure).
pub async fn deliver<A, M>(addr: &Addr<A>, msg: M) -> Result<(), ApiError>
where
    A: Actor<Context = Context<A>> + Handler<M>,
    M: actix::Message<Result = ()> + Send + 'static,
{
    match addr.try_send(msg) {
        Ok(()) => Ok(()),
        Err(SendError::Full(msg)) => addr.send(msg).await.map_err(|_| ApiError::Stopped),
        Err(SendError::Closed(_)) => Err(ApiError::Stopped),
    }
}
