//! Start-up: open the data dir, recover (snapshot + WAL) or bootstrap, start the
//! actors on their own threads, then serve gRPC and HTTP on the client port.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

use crate::actors::apply::ApplyActor;
use crate::actors::raft::RaftActor;
use crate::actors::ticker::Ticker;
use crate::actors::wal::WalWriter;
use crate::config::{Config, Engine};
use crate::consensus::Node;
use crate::error::StorageError;
use crate::state_machine::{snapshot, StateMachine};
use crate::status::NodeStatus;
use crate::storage::engine::LogStore;
use crate::storage::image;
use crate::storage::raft_log::{encode_message, record, RaftLog};
use crate::storage::rocks::{self, RocksKv, RocksLog};
use crate::storage::wal::{Wal, WalOptions};
use crate::storage::wal_log::WalLog;

/// Name of the file that says which engine wrote a data dir.
const MARKER: &str = "metastore.meta";

/// FNV-1a: a stable hash for IDs (std's hasher may change between releases).
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

/// Member ID from its peer URLs and the cluster token (as etcd derives it).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.push(token);
    fnv64(&urls)
}

/// Cluster ID from the member IDs.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids: Vec<String> = member_ids.iter().map(|id| format!("{id:016x}")).collect();
    ids.sort_unstable();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    fnv64(&refs)
}

/// Refuses a data dir another engine (or program) wrote; stamps a new one.
/// Returns whether the dir is brand new.
pub fn check_marker(cfg: &Config) -> Result<bool, StorageError> {
    let dir = &cfg.data_dir;
    let path = dir.join(MARKER);
    let want = format!("engine={}\nformat=1\n", cfg.engine.as_str());
    match fs::read_to_string(&path) {
        Ok(found) if found == want => Ok(false),
        Ok(found) => Err(StorageError::DataDir {
            path: dir.clone(),
            why: format!(
                "was written by another engine or format ({}), this member runs engine={}",
                found.trim().replace('\n', ", "),
                cfg.engine.as_str()
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let non_empty = fs::read_dir(dir)
                .map_err(|e| StorageError::io(format!("read {}", dir.display()), e))?
                .next()
                .is_some();
            if non_empty {
                return Err(StorageError::DataDir {
                    path: dir.clone(),
                    why: format!("is not empty and has no {MARKER}; refusing to use it"),
                });
            }
            fs::write(&path, want)
                .and_then(|_| fs::File::open(dir)?.sync_all())
                .map_err(|e| StorageError::io(format!("write {}", path.display()), e))?;
            Ok(true)
        }
        Err(e) => Err(StorageError::io(format!("read {}", path.display()), e)),
    }
}

/// Everything recovered from disk, ready to hand to the actors.
pub struct Recovered {
    /// The state machine at its applied index.
    pub state_machine: StateMachine,
    /// The Raft log after it.
    pub log: RaftLog,
    /// Where the WalWriter makes new entries durable.
    pub log_store: Box<dyn LogStore>,
    /// The rocksdb engine's databases (flushed at a clean shutdown).
    pub rocks: Option<rocks::Dbs>,
}

/// Opens (or bootstraps) a member's data dir with the configured engine;
/// `fresh` as [`check_marker`] said.
pub fn recover(cfg: &Config, fresh: bool, voters: Vec<u64>) -> Result<Recovered, StorageError> {
    match cfg.engine {
        Engine::Memory => recover_memory(&cfg.data_dir, wal_options(cfg), voters),
        Engine::Rocksdb => recover_rocks(&cfg.data_dir, fresh, cfg.wal_segment_size, voters),
    }
}

/// Seeds a brand-new data dir from the image at `path`, as this lone member
/// (`id`): the image's state, applied index and term, with the membership
/// rewritten to this member (as `etcdctl snapshot restore` does).
pub fn restore_image(cfg: &Config, path: &Path, id: u64) -> Result<(), StorageError> {
    let open = || {
        fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| StorageError::io(format!("open image {}", path.display()), e))
    };
    let (h, _) = image::ImageReader::new(open()?)?;
    let (meta, hs) = start_point(h.index, h.term, vec![id]);
    let cs = meta.get_conf_state().clone();
    let data_dir = &cfg.data_dir;
    match cfg.engine {
        Engine::Memory => {
            let (_, store) = image::read_into_store(open()?, true)?;
            snapshot::save(
                data_dir,
                h.index,
                &snapshot::encode(h.index, h.term, &cs, &store),
            )?;
            let (mut wal, _) = Wal::open(&data_dir.join("wal"), wal_options(cfg))?;
            start_wal(&mut wal, &meta, &hs)?;
        }
        Engine::Rocksdb => {
            let dbs = rocks::open(data_dir, true)?;
            rocks::bootstrap(&dbs, h.index, h.term, &cs, &hs)?;
            // The image carries its source's membership; this member is the
            // cluster now.
            RocksKv::install_image(&dbs, path, Some(&cs))?;
            rocks::shutdown(&dbs)?;
        }
    }
    tracing::info!(image = %path.display(), index = h.index, revision = h.current_rev, "data dir restored from an image");
    Ok(())
}

/// The memory engine's WAL options from the config.
fn wal_options(cfg: &Config) -> WalOptions {
    WalOptions {
        segment_size: cfg.wal_segment_size,
        ..WalOptions::default()
    }
}

/// Where a member's log starts: `index` (committed, at `term`) with `voters`.
/// Every initial member starts from index 1, term 1; a restored one from its
/// image's applied index.
fn start_point(index: u64, term: u64, voters: Vec<u64>) -> (SnapshotMetadata, HardState) {
    let cs = ConfState {
        voters,
        ..Default::default()
    };
    let meta = SnapshotMetadata {
        index,
        term,
        conf_state: protobuf::SingularPtrField::some(cs),
        ..Default::default()
    };
    let hs = HardState {
        term,
        commit: index,
        ..Default::default()
    };
    (meta, hs)
}

/// Writes a new WAL's first records (where the log starts, the hard state), synced.
fn start_wal(wal: &mut Wal, meta: &SnapshotMetadata, hs: &HardState) -> Result<(), StorageError> {
    wal.append(record::SNAPSHOT, &encode_message(meta), meta.index);
    wal.append(record::HARD_STATE, &encode_message(hs), 0);
    wal.sync()?;
    Ok(())
}

/// The `rocksdb` engine: state machine and Raft log from the database; the
/// log is replayed from the persisted applied index.
fn recover_rocks(
    data_dir: &Path,
    fresh: bool,
    wal_size: u64,
    voters: Vec<u64>,
) -> Result<Recovered, StorageError> {
    let dbs = rocks::open_with(data_dir, fresh, Some(wal_size))?;
    let meta = rocks::read_meta(&dbs)?;
    let Some((applied, applied_term)) = meta.applied else {
        if !fresh {
            return Err(StorageError::DataDir {
                path: data_dir.to_owned(),
                why: "the RocksDB database has no applied index (not written by MetaStore, or damaged)".into(),
            });
        }
        let (snap, hs) = start_point(1, 1, voters);
        let cs = snap.get_conf_state().clone();
        rocks::bootstrap(&dbs, snap.index, snap.term, &cs, &hs)?;
        tracing::info!(dir = %data_dir.display(), "bootstrapped a new member (rocksdb)");
        let kv = RocksKv::open(dbs.kv.clone(), (1, -1))?;
        return Ok(Recovered {
            state_machine: StateMachine::rocks(kv, snap.index, snap.term, cs),
            log: RaftLog::from_snapshot(snap, hs),
            log_store: Box::new(RocksLog::new(&dbs, 1)),
            rocks: Some(dbs),
        });
    };
    let kv = RocksKv::open(dbs.kv.clone(), meta.revision)?;
    let base = SnapshotMetadata {
        index: applied,
        term: applied_term,
        conf_state: protobuf::SingularPtrField::some(meta.conf_state.clone()),
        ..Default::default()
    };
    let entries = rocks::read_entries(&dbs.raft, applied)?;
    let mut log = RaftLog::from_snapshot(base, meta.hard_state);
    log.append(&entries)?;
    tracing::info!(
        applied,
        last = log.last(),
        commit = log.hard_state().commit,
        revision = meta.revision.0,
        "recovered from rocksdb"
    );
    let last = log.last();
    Ok(Recovered {
        state_machine: StateMachine::rocks(kv, applied, applied_term, meta.conf_state),
        log,
        log_store: Box::new(RocksLog::new(&dbs, last)),
        rocks: Some(dbs),
    })
}

/// The `memory` engine: latest snapshot file plus the WAL after it.
pub fn recover_memory(
    data_dir: &Path,
    wal_options: WalOptions,
    voters: Vec<u64>,
) -> Result<Recovered, StorageError> {
    let snap = snapshot::load_latest(data_dir)?;
    let (mut wal, records) = Wal::open(&data_dir.join("wal"), wal_options)?;
    if snap.is_none() && records.is_empty() {
        let (meta, hs) = start_point(1, 1, voters);
        let cs = meta.get_conf_state().clone();
        start_wal(&mut wal, &meta, &hs)?;
        tracing::info!(dir = %data_dir.display(), "bootstrapped a new member");
        return Ok(Recovered {
            state_machine: StateMachine::new(1, 1, cs),
            log: RaftLog::from_snapshot(meta, hs.clone()),
            log_store: Box::new(WalLog::new(wal, hs)),
            rocks: None,
        });
    }
    let marker = records
        .iter()
        .rev()
        .find(|r| r.kind == record::SNAPSHOT)
        .map(|r| SnapshotMetadata::parse_from_bytes(&r.payload))
        .transpose()
        .map_err(|e| StorageError::Decode(format!("snapshot marker: {e}")))?;
    let (state_machine, base) = match snap {
        Some(s) => {
            let meta = SnapshotMetadata {
                index: s.index,
                term: s.term,
                conf_state: protobuf::SingularPtrField::some(s.conf_state.clone()),
                ..Default::default()
            };
            (
                StateMachine::restore(s.store, s.index, s.term, s.conf_state),
                meta,
            )
        }
        None => {
            let meta = marker.ok_or_else(|| StorageError::DataDir {
                path: data_dir.to_owned(),
                why: "the WAL has no starting point and there is no snapshot".into(),
            })?;
            let sm = StateMachine::new(meta.index, meta.term, meta.get_conf_state().clone());
            (sm, meta)
        }
    };
    let log = RaftLog::recover(base, &records)?;
    tracing::info!(
        applied = state_machine.applied_index(),
        last = log.last(),
        commit = log.hard_state().commit,
        "recovered from snapshot and WAL"
    );
    let hard_state = log.hard_state().clone();
    Ok(Recovered {
        state_machine,
        log,
        log_store: Box::new(WalLog::new(wal, hard_state)),
        rocks: None,
    })
}

/// A slog drain that forwards raft-rs's logs to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// Raft configuration from ours.
pub fn raft_config(cfg: &Config, id: u64, applied: u64) -> raft::Config {
    let r = &cfg.raft;
    raft::Config {
        id,
        election_tick: r.election_tick,
        heartbeat_tick: r.heartbeat_tick,
        applied,
        max_size_per_msg: r.max_size_per_msg,
        max_inflight_msgs: r.max_inflight_msgs,
        check_quorum: r.check_quorum,
        pre_vote: r.pre_vote,
        max_uncommitted_size: r.max_uncommitted_size,
        ..Default::default()
    }
}

/// Handles to the running core, for the API layer.
#[derive(Clone)]
pub struct Core {
    /// The RaftActor.
    pub raft: Addr<RaftActor>,
    /// The ApplyActor.
    pub apply: Addr<ApplyActor>,
    /// Live status.
    pub status: Arc<NodeStatus>,
}

/// Starts the RaftActor, ApplyActor and Ticker on the CURRENT actix arbiter
/// (and the WalWriter on its own thread), for a recovered member.
///
/// Raft, apply and the client handlers share one thread by default: measured on
/// 2 cores, every thread hand-off on the write path costs a context switch
/// (eventfd wake-up, futex) that is dearer than the work handed off, so only the
/// blocking fsync gets its own thread.
pub fn start_core(
    cfg: &Config,
    id: u64,
    status: Arc<NodeStatus>,
    rec: Recovered,
) -> Result<Core, StorageError> {
    let rcfg = raft_config(cfg, id, rec.state_machine.applied_index());
    let logger = slog::Logger::root(slog::Fuse(TracingDrain), slog::o!());
    let node = Node::new(&rcfg, rec.log, &logger)
        .map_err(|e| StorageError::Decode(format!("raft: {e}")))?;
    let tick = Duration::from_millis(cfg.raft.tick_ms);

    let ctx = Context::<RaftActor>::new();
    let raft = ctx.address();
    let wal_addr = WalWriter::spawn(rec.log_store, raft.clone())
        .map_err(|e| StorageError::io("start the WAL writer thread", e))?;
    let apply = ApplyActor::new(
        rec.state_machine,
        raft.clone(),
        status.clone(),
        cfg.data_dir.clone(),
        cfg.snapshot_count,
    )
    .start();
    Ticker::new(raft.clone(), tick).start();
    ctx.run(RaftActor::new(
        node,
        wal_addr,
        apply.clone(),
        status.clone(),
    ));
    Ok(Core {
        raft,
        apply,
        status,
    })
}

/// Runs a member until SIGINT/SIGTERM.
pub fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| StorageError::io(format!("create {}", cfg.data_dir.display()), e))?;
    let fresh = check_marker(&cfg)?;
    let id = member_id(&cfg.advertise_peer_list(), &cfg.initial_cluster_token);
    let fresh = match &cfg.restore_image {
        Some(image) if fresh => {
            if let Err(e) = restore_image(&cfg, image, id) {
                // The dir was empty: leave it so, never half-restored (a later
                // start without the flag would otherwise begin from it).
                let _ = fs::remove_dir_all(&cfg.data_dir);
                return Err(Box::new(e));
            }
            false
        }
        Some(_) => {
            return Err(Box::new(StorageError::DataDir {
                path: cfg.data_dir.clone(),
                why: "--restore-image needs a new, empty data dir".into(),
            }))
        }
        None => fresh,
    };
    let status = Arc::new(NodeStatus::new(cluster_id(&[id]), id));
    let rec = recover(&cfg, fresh, vec![id])?;
    let rocks_dbs = rec.rocks.clone();
    let addr = cfg.client_listen_addr()?;
    tracing::info!(name = %cfg.name, member_id = format!("{id:x}"), %addr, engine = cfg.engine.as_str(), "starting");

    let system = System::new();
    let served = system.block_on(async move {
        let core = start_core(&cfg, id, status, rec)?;
        let served = actix_rt::spawn(async move {
            let result = crate::api::serve(cfg, core, addr).await;
            System::current().stop();
            result
        });
        Ok::<_, StorageError>(served)
    })?;
    system.run()?;
    // The actors are gone with the System; the WAL writer follows them.
    WalWriter::join();
    if let Some(dbs) = rocks_dbs {
        // A clean stop leaves nothing to replay.
        if let Err(e) = rocks::shutdown(&dbs) {
            tracing::warn!(error = %e, "flush at shutdown failed; the next start replays the log");
        }
    }
    match system_result(served) {
        Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The API task's outcome once the System has stopped.
fn system_result(served: actix_rt::task::JoinHandle<Result<(), String>>) -> Result<(), String> {
    if !served.is_finished() {
        return Ok(());
    }
    futures::executor::block_on(served).unwrap_or_else(|e| Err(format!("api task: {e}")))
}
