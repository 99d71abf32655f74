//! Start-up, the top floor: open the data dir (bootstrapping a new member
//! first, see [`crate::bootstrap`]), start the member's core
//! ([`crate::actors::start_core`]), then serve clients and peers until told
//! to stop; flush what can be flushed at the end.
//!
//! A member's identity (member and cluster IDs) is stored in the data dir's
//! marker; a restart uses it and ignores the initial-cluster flags, as etcd
//! does.

use std::fs;
use std::sync::Arc;

use actix::prelude::*;

use crate::actors::{start_core, Recovered};
use crate::bootstrap::{discover, discover_once, plan_join, plan_new};
use crate::config::{Config, InitialClusterState};
use crate::error::ServeError;
use crate::state_machine::membership::Membership;
use crate::state_machine::StateMachine;
use crate::status::{Faults, NodeStatus};
use crate::storage::{self, AtShutdown, Identity, StorageError, StorageOptions};

/// What storage needs of the configuration.
pub fn storage_options(cfg: &Config) -> StorageOptions {
    StorageOptions {
        engine: cfg.engine,
        data_dir: cfg.data_dir.clone(),
        wal_segment_size: cfg.wal_segment_size,
        raft_log_memory_entries: cfg.raft_log_memory_entries,
    }
}

/// Opens the data dir: who this member is, bootstrapping it first when the
/// dir is new.
pub fn prepare(cfg: &Config) -> Result<Identity, Box<dyn std::error::Error>> {
    // Durably: a data dir whose own entry is lost in a power cut takes
    // every acknowledged write with it.
    storage::dirs::create_all(&cfg.data_dir)
        .map_err(|e| StorageError::io(format!("create {}", cfg.data_dir.display()), e))?;
    let opts = storage_options(cfg);
    if let Some(id) = storage::marker::read(&cfg.data_dir, cfg.engine)? {
        if cfg.restore_image.is_some() {
            return Err(Box::new(StorageError::DataDir {
                path: cfg.data_dir.clone(),
                why: "--restore-image needs a new, empty data dir".into(),
            }));
        }
        tracing::info!(
            member = format!("{:x}", id.member_id),
            cluster = format!("{:x}", id.cluster_id),
            "known member; initial-cluster flags are ignored"
        );
        if cfg.initial_cluster_state == InitialClusterState::Existing {
            // Joining a cluster with a data dir of another one would split
            // two histories: ask the cluster named in the flags first (if
            // nobody answers, this is an ordinary restart).
            if let Ok(theirs) = discover_once(cfg) {
                if theirs.cluster_id != id.cluster_id {
                    return Err(format!(
                        "data dir {} belongs to cluster {:x}, but the members in --initial-cluster \
                         are cluster {:x}; use an empty data dir to join them",
                        cfg.data_dir.display(),
                        id.cluster_id,
                        theirs.cluster_id
                    )
                    .into());
                }
            }
        }
        return Ok(id);
    }
    let plan = match (cfg.initial_cluster_state, &cfg.restore_image) {
        (InitialClusterState::Existing, Some(_)) => {
            return Err(
                "--restore-image seeds a new cluster; use --initial-cluster-state new".into(),
            )
        }
        (InitialClusterState::Existing, None) => {
            plan_join(cfg).map_err(|e| format!("cannot join: {e}"))?
        }
        (InitialClusterState::New, _) => plan_new(cfg)?,
    };
    let done = match &cfg.restore_image {
        Some(image) => storage::restore(&opts, image, &plan.point).map(|h| {
            tracing::info!(image = %image.display(), index = h.index, revision = h.current_rev, "data dir restored from an image");
        }),
        None => storage::bootstrap(&opts, &plan.point),
    }
    .and_then(|()| storage::marker::write(&cfg.data_dir, cfg.engine, plan.identity));
    if let Err(e) = done {
        // The dir was empty: leave it so, never half-bootstrapped (a later
        // start would otherwise begin from it).
        let _ = fs::remove_dir_all(&cfg.data_dir);
        return Err(Box::new(e));
    }
    tracing::info!(
        dir = %cfg.data_dir.display(),
        member = format!("{:x}", plan.identity.member_id),
        cluster = format!("{:x}", plan.identity.cluster_id),
        index = plan.point.index,
        "bootstrapped a new member"
    );
    Ok(plan.identity)
}

/// Opens a prepared data dir: the member's state for [`start_core`], and
/// what to run once the member stopped.
pub fn recover(cfg: &Config) -> Result<(Recovered, AtShutdown), StorageError> {
    let opened = storage::open(&storage_options(cfg))?;
    let rec = Recovered {
        state_machine: StateMachine::new(opened.store, opened.point),
        log: opened.log,
        log_store: opened.log_store,
        intake: opened.intake,
    };
    Ok((rec, opened.at_shutdown))
}

/// Runs a member until SIGINT/SIGTERM (or until it is removed).
pub fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    run_until(cfg, crate::api::shutdown_signal())
}

/// Runs a member until `stop` completes (or until it is removed). Nothing
/// of a member is process-wide: several can run in one process, each on
/// its own threads.
pub fn run_until(
    cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    // TLS first: auto-TLS certificates are made (a joining member dials
    // with them) and every file is loaded, or the start is refused.
    let tls = crate::tls::Setup::load(&cfg)?;
    let identity = prepare(&cfg)?;
    let (mut rec, at_shutdown) = recover(&cfg)?;
    if rec.state_machine.membership().is_empty()
        && cfg.initial_cluster_state == InitialClusterState::Existing
    {
        // Joined, but restarted before the leader's first snapshot arrived:
        // find the cluster again to know whom to talk to.
        let pb = discover(&cfg).map_err(|e| format!("cannot rejoin: {e}"))?;
        rec.state_machine.seed_membership(Membership::from_pb(pb));
    }
    let status = Arc::new(NodeStatus::new(identity.cluster_id, identity.member_id));
    let faults = Arc::new(Faults::default());
    let client_addr = cfg.client_listen_addr()?;
    let peer_listener = std::net::TcpListener::bind(cfg.peer_listen_addr()?)
        .map_err(|e| format!("cannot listen on peer URL {}: {e}", cfg.listen_peer_urls))?;
    peer_listener.set_nonblocking(true)?;
    tracing::info!(
        name = %cfg.name,
        member = format!("{:x}", identity.member_id),
        cluster = format!("{:x}", identity.cluster_id),
        %client_addr,
        engine = cfg.engine.as_str(),
        "starting"
    );

    let system = System::new();
    let (served, threads) = system.block_on(async move {
        // Bound before any actor runs: a fatal error stops THIS System.
        status.fatal.arm(System::current());
        let (core, threads) = start_core(&cfg, status, faults, tls.dialer.clone(), rec)?;
        let served = actix_rt::spawn(async move {
            let result = crate::api::serve(cfg, core, tls, peer_listener, stop).await;
            System::current().stop();
            result
        });
        Ok::<_, StorageError>((served, threads))
    })?;
    let code = system.run_with_code()?;
    // The actors are gone with the System; the WAL writer follows them.
    threads.join();
    // A clean stop leaves nothing to replay.
    if let Err(e) = at_shutdown.flush() {
        tracing::warn!(error = %e, "flush at shutdown failed; the next start replays the log");
    }
    if code != 0 {
        return Err(Box::new(crate::error::MemberStopped { code }));
    }
    match system_result(served) {
        Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The API task's outcome once the System has stopped.
fn system_result(
    served: actix_rt::task::JoinHandle<Result<(), ServeError>>,
) -> Result<(), ServeError> {
    if !served.is_finished() {
        return Ok(());
    }
    futures::executor::block_on(served).unwrap_or_else(|e| Err(ServeError::Task(e.to_string())))
}
