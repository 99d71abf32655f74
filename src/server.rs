//! Start-up: open the data dir, bootstrap a new member (a new cluster from
//! `--initial-cluster`, or joining an existing one) or recover a known one,
//! start the actors, then serve clients and peers.
//!
//! Threads: the RaftActor, the Ticker, the PeerActors and the peer server
//! share one thread of their own (an actix Arbiter), so that nothing the
//! rest of the member does (a large range, an image, a snapshot install)
//! delays a tick or a heartbeat. The client API and the ApplyActor share
//! the main actix thread; the WalWriter has its own.
//!
//! Identity: member and cluster IDs derive from the initial cluster and the
//! token (every initial member computes the same ones); a joining member
//! learns its ID (given by MemberAdd) from a running member. Both are stored
//! in the data dir's marker; a restart uses them and ignores the
//! initial-cluster flags, as etcd does.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

use crate::actors::apply::ApplyActor;
use crate::actors::peer::PeerContext;
use crate::actors::raft::{InitialMembers, RaftActor, RaftSettings};
use crate::actors::ticker::Ticker;
use crate::actors::wal::WalWriter;
use crate::config::{Config, Engine, InitialClusterState};
use crate::consensus::Node;
use crate::error::{DiscoveryError, PeerError, ServeError, StorageError};
use crate::proto::etcdserverpb::Member;
use crate::proto::metastorepb;
use crate::state_machine::membership::Membership;
use crate::state_machine::{StateMachine, Store};
use crate::status::{Faults, NodeStatus};
use crate::storage::engine::{AppliedPoint, LogStore};
use crate::storage::image;
use crate::storage::mvcc::MemStore;
use crate::storage::raft_log::{encode_message, record, RaftLog};
use crate::storage::rocks::{self, RocksKv, RocksLog};
use crate::storage::snapshots;
use crate::storage::wal::{Wal, WalOptions};
use crate::storage::wal_log::WalLog;

/// Name of the file that says which engine wrote a data dir, and whose.
const MARKER: &str = "metastore.meta";
/// Data dir format: 2 added member and cluster IDs and the membership.
const FORMAT: &str = "2";
/// Where snapshots from the leader are received.
pub const INCOMING: &str = "snap-incoming";

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

/// ID of a member added at run time: its URLs and the time, so a member
/// re-added at the same URLs gets a new ID (removed IDs never come back).
pub fn new_member_id(peer_urls: &[String], nanos: u128) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let t = nanos.to_string();
    urls.push(&t);
    fnv64(&urls)
}

/// Cluster ID from the member IDs.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids: Vec<String> = member_ids.iter().map(|id| format!("{id:016x}")).collect();
    ids.sort_unstable();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    fnv64(&refs)
}

/// Who a member is, as its data dir records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// This member.
    pub member_id: u64,
    /// Its cluster.
    pub cluster_id: u64,
}

fn marker_text(cfg: &Config, id: Identity) -> String {
    format!(
        "engine={}\nformat={FORMAT}\nmember={:x}\ncluster={:x}\n",
        cfg.engine.as_str(),
        id.member_id,
        id.cluster_id
    )
}

/// Reads the data dir's marker: None for a new, empty dir; refuses a dir
/// another engine, format or program wrote.
pub fn read_marker(cfg: &Config) -> Result<Option<Identity>, StorageError> {
    let dir = &cfg.data_dir;
    let path = dir.join(MARKER);
    let refuse = |why: String| StorageError::DataDir {
        path: dir.clone(),
        why,
    };
    match fs::read_to_string(&path) {
        Ok(found) => {
            let field = |k: &str| {
                found
                    .lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let engine = field("engine").unwrap_or_default();
            let format = field("format").unwrap_or_default();
            if engine != cfg.engine.as_str() {
                return Err(refuse(format!(
                    "was written by another engine (engine={engine}); this member runs engine={}",
                    cfg.engine.as_str()
                )));
            }
            if format != FORMAT {
                return Err(refuse(format!(
                    "has data format {format:?}, this MetaStore reads format {FORMAT}; \
                     move the data with `etcdctl snapshot save` and --restore-image"
                )));
            }
            let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(&v, 16).ok());
            match (hex("member"), hex("cluster")) {
                (Some(member_id), Some(cluster_id)) => Ok(Some(Identity {
                    member_id,
                    cluster_id,
                })),
                _ => Err(refuse(format!("{MARKER} lacks the member or cluster ID"))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let non_empty = fs::read_dir(dir)
                .map_err(|e| StorageError::io(format!("read {}", dir.display()), e))?
                .next()
                .is_some();
            if non_empty {
                return Err(refuse(format!(
                    "is not empty and has no {MARKER}; refusing to use it"
                )));
            }
            Ok(None)
        }
        Err(e) => Err(StorageError::io(format!("read {}", path.display()), e)),
    }
}

/// Stamps a bootstrapped data dir (the last step of bootstrapping).
pub fn write_marker(cfg: &Config, id: Identity) -> Result<(), StorageError> {
    let dir = &cfg.data_dir;
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.tmp"));
    fs::write(&tmp, marker_text(cfg, id))
        .and_then(|_| fs::File::open(&tmp)?.sync_all())
        .and_then(|_| fs::rename(&tmp, &path))
        .and_then(|_| fs::File::open(dir)?.sync_all())
        .map_err(|e| StorageError::io(format!("write {}", path.display()), e))
}

/// A brand-new member's starting point.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Who it is.
    pub identity: Identity,
    /// Where its state and log start.
    pub point: AppliedPoint,
}

/// A member of a new cluster: every initial member derives the same IDs,
/// membership and starting point from the same flags.
pub fn plan_new(cfg: &Config) -> Result<Bootstrap, crate::error::ConfigError> {
    let initial = cfg.initial_members()?;
    let members: Vec<Member> = initial
        .iter()
        .map(|(name, urls)| Member {
            id: member_id(urls, &cfg.initial_cluster_token),
            name: name.clone(),
            peer_ur_ls: urls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: false,
        })
        .collect();
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cid = cluster_id(&ids);
    let me = member_id(&cfg.advertise_peer_list(), &cfg.initial_cluster_token);
    let membership = Membership::new(cid, members);
    Ok(Bootstrap {
        identity: Identity {
            member_id: me,
            cluster_id: cid,
        },
        point: AppliedPoint {
            index: 1,
            term: 1,
            conf_state: membership.conf_state(),
            membership: membership.to_pb(),
            leases: Default::default(),
        },
    })
}

/// Asks the members listed in `--initial-cluster` (other than this one)
/// for the cluster as they know it; the first answer counts.
pub fn discover(cfg: &Config) -> Result<metastorepb::Membership, DiscoveryError> {
    discover_rounds(cfg, 3)
}

/// [`discover`], one round only.
fn discover_once(cfg: &Config) -> Result<metastorepb::Membership, DiscoveryError> {
    discover_rounds(cfg, 1)
}

fn discover_rounds(cfg: &Config, rounds: usize) -> Result<metastorepb::Membership, DiscoveryError> {
    let initial = cfg.initial_members()?;
    let mine = cfg.advertise_peer_list();
    let urls: Vec<String> = initial
        .into_iter()
        .filter(|(name, _)| *name != cfg.name)
        .flat_map(|(_, urls)| urls)
        .filter(|u| !mine.contains(u))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DiscoveryError::Runtime)?;
    rt.block_on(async {
        let mut errors = Vec::new();
        for round in 0..rounds {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            for url in &urls {
                match ask_membership(url).await {
                    Ok(m) => return Ok(m),
                    Err(e) => errors.push((url.clone(), e)),
                }
            }
        }
        Err(DiscoveryError::NoAnswer(errors))
    })
}

async fn ask_membership(url: &str) -> Result<metastorepb::Membership, PeerError> {
    use crate::proto::metastorepb::peer_client::PeerClient;
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| PeerError::Connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| PeerError::Connect(e.to_string()))?;
    PeerClient::new(channel)
        .membership(metastorepb::MembershipRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| PeerError::from_status(&s))
}

/// A member joining a running cluster (`--initial-cluster-state existing`,
/// after `etcdctl member add`): its ID is the one MemberAdd gave its peer
/// URLs. It starts empty; the leader sends it a snapshot.
pub fn plan_join(cfg: &Config) -> Result<Bootstrap, DiscoveryError> {
    let pb = discover(cfg)?;
    let mut mine = cfg.advertise_peer_list();
    mine.sort();
    let me = pb.members.iter().find(|m| {
        let mut urls = m.peer_ur_ls.clone();
        urls.sort();
        urls == mine
    });
    let Some(me) = me else {
        return Err(DiscoveryError::NotAdded {
            name: cfg.name.clone(),
            urls: mine.join(","),
        });
    };
    Ok(Bootstrap {
        identity: Identity {
            member_id: me.id,
            cluster_id: pb.cluster_id,
        },
        point: AppliedPoint {
            index: 0,
            term: 0,
            conf_state: ConfState::default(),
            membership: pb,
            leases: Default::default(),
        },
    })
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

/// Writes a new member's starting point into its (empty) data dir, with the
/// configured engine.
pub fn bootstrap(cfg: &Config, plan: &Bootstrap) -> Result<(), StorageError> {
    let (meta, hs) = start_point(&plan.point);
    match cfg.engine {
        Engine::Memory => {
            let (mut wal, _) = Wal::open(&cfg.data_dir.join("wal"), wal_options(cfg))?;
            if plan.point.index > 0 {
                // The initial membership lives in the first snapshot file.
                let image = image::write_memory_image(
                    &MemStore::new(),
                    &plan.point.header(1, -1),
                    Vec::new(),
                )
                .map_err(|e| StorageError::io("encode the initial image", e))?;
                snapshots::save(&cfg.data_dir, plan.point.index, &image)?;
            }
            start_wal(&mut wal, &meta, &hs)?;
        }
        Engine::Rocksdb => {
            let dbs = rocks::open(&cfg.data_dir, true)?;
            rocks::bootstrap(&dbs, &plan.point, &hs)?;
            rocks::shutdown(&dbs)?;
        }
    }
    tracing::info!(
        dir = %cfg.data_dir.display(),
        member = format!("{:x}", plan.identity.member_id),
        cluster = format!("{:x}", plan.identity.cluster_id),
        index = plan.point.index,
        "bootstrapped a new member"
    );
    Ok(())
}

/// Seeds a brand-new data dir from the image at `path`: the image's state,
/// applied index and term, with the membership of `plan` (every member of
/// the new cluster restores the same image with the same flags, as with
/// `etcdctl snapshot restore`).
pub fn restore_image(cfg: &Config, path: &Path, plan: &Bootstrap) -> Result<(), StorageError> {
    // An etcd data file (what `etcdctl snapshot save` stores from etcd) is
    // converted to an image first.
    let mut head = [0u8; 64];
    let n = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| StorageError::io(format!("open image {}", path.display()), e))?;
    if !crate::storage::bbolt::is_bbolt(&head[..n]) {
        return restore_metastore_image(cfg, path, plan);
    }
    let converted = cfg.data_dir.with_extension("from-etcd.img");
    let c = crate::storage::bbolt::convert_file(path, &converted)?;
    tracing::info!(
        file = %path.display(),
        versions = c.versions,
        revision = c.current_rev,
        compacted = c.compact_rev,
        leases = c.leases,
        "converted an etcd data file"
    );
    let result = restore_metastore_image(cfg, &converted, plan);
    let _ = fs::remove_file(&converted);
    result
}

fn restore_metastore_image(
    cfg: &Config,
    path: &Path,
    plan: &Bootstrap,
) -> Result<(), StorageError> {
    let open = || {
        fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| StorageError::io(format!("open image {}", path.display()), e))
    };
    let (h, _) = image::ImageReader::new(open()?)?;
    // The new cluster's membership; the image's state, leases included.
    let point = AppliedPoint {
        index: h.index,
        term: h.term,
        leases: h.leases.clone(),
        ..plan.point.clone()
    };
    let (meta, hs) = start_point(&point);
    let data_dir = &cfg.data_dir;
    match cfg.engine {
        Engine::Memory => {
            let (_, store) = image::read_into_store(open()?, true)?;
            let header = point.header(store.current_revision(), store.compact_main_revision());
            let bytes = image::write_memory_image(&store, &header, Vec::new())
                .map_err(|e| StorageError::io("encode the image", e))?;
            snapshots::save(data_dir, h.index, &bytes)?;
            let (mut wal, _) = Wal::open(&data_dir.join("wal"), wal_options(cfg))?;
            start_wal(&mut wal, &meta, &hs)?;
        }
        Engine::Rocksdb => {
            let dbs = rocks::open(data_dir, true)?;
            rocks::bootstrap(&dbs, &point, &hs)?;
            RocksKv::install_image(&dbs, path, Some((&point.conf_state, &point.membership)))?;
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

/// Where a member's log starts: committed at `point`.
fn start_point(point: &AppliedPoint) -> (SnapshotMetadata, HardState) {
    let meta = SnapshotMetadata {
        index: point.index,
        term: point.term,
        conf_state: protobuf::SingularPtrField::some(point.conf_state.clone()),
        ..Default::default()
    };
    let hs = HardState {
        term: point.term,
        commit: point.index,
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

/// Opens a bootstrapped member's data dir with the configured engine.
pub fn recover(cfg: &Config) -> Result<Recovered, StorageError> {
    // Partly received snapshots from a previous run are of no use.
    let incoming = cfg.data_dir.join(INCOMING);
    let _ = fs::remove_dir_all(&incoming);
    fs::create_dir_all(&incoming)
        .map_err(|e| StorageError::io(format!("create {}", incoming.display()), e))?;
    match cfg.engine {
        Engine::Memory => recover_memory(&cfg.data_dir, wal_options(cfg)),
        Engine::Rocksdb => recover_rocks(&cfg.data_dir, cfg.wal_segment_size),
    }
}

/// The `rocksdb` engine: state machine and Raft log from the database; the
/// log is replayed from the persisted applied index.
fn recover_rocks(data_dir: &Path, wal_size: u64) -> Result<Recovered, StorageError> {
    let dbs = rocks::open_with(data_dir, false, Some(wal_size))?;
    let meta = rocks::read_meta(&dbs)?;
    let Some((applied, applied_term)) = meta.applied else {
        return Err(StorageError::DataDir {
            path: data_dir.to_owned(),
            why: "the RocksDB database has no applied index (not written by MetaStore, or damaged)"
                .into(),
        });
    };
    let kv = RocksKv::open(&dbs, meta.revision)?;
    let point = AppliedPoint {
        index: applied,
        term: applied_term,
        conf_state: meta.conf_state.clone(),
        membership: meta.membership.clone(),
        leases: meta.leases.clone(),
    };
    let (base, _) = start_point(&point);
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
        state_machine: StateMachine::new(Store::Rocks(kv), point),
        log,
        log_store: Box::new(RocksLog::new(&dbs, last)),
        rocks: Some(dbs),
    })
}

/// The `memory` engine: latest snapshot file plus the WAL after it.
fn recover_memory(data_dir: &Path, wal_options: WalOptions) -> Result<Recovered, StorageError> {
    let snap = snapshots::load_latest(data_dir)?;
    let (wal, records) = Wal::open(&data_dir.join("wal"), wal_options)?;
    let marker = records
        .iter()
        .find(|r| r.kind == record::SNAPSHOT)
        .map(|r| SnapshotMetadata::parse_from_bytes(&r.payload))
        .transpose()
        .map_err(|e| StorageError::Decode(format!("snapshot marker: {e}")))?;
    let (point, store) = match snap {
        Some((h, store)) => (
            AppliedPoint {
                index: h.index,
                term: h.term,
                conf_state: h.conf_state,
                membership: h.membership,
                leases: h.leases,
            },
            store,
        ),
        None => {
            // A member that joined and has not received its first snapshot.
            let meta = marker.ok_or_else(|| StorageError::DataDir {
                path: data_dir.to_owned(),
                why: "the WAL has no starting point and there is no snapshot".into(),
            })?;
            let point = AppliedPoint {
                index: meta.index,
                term: meta.term,
                conf_state: meta.get_conf_state().clone(),
                ..Default::default()
            };
            (point, MemStore::new())
        }
    };
    let (base, _) = start_point(&point);
    let log = RaftLog::recover(base, &records)?;
    tracing::info!(
        applied = point.index,
        last = log.last(),
        commit = log.hard_state().commit,
        "recovered from snapshot and WAL"
    );
    let hard_state = log.hard_state().clone();
    Ok(Recovered {
        state_machine: StateMachine::new(
            Store::Memory(crate::storage::memory::MemoryEngine::new(store)),
            point,
        ),
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
/// ApplyActor on the CURRENT actix arbiter, for a recovered member.
pub fn start_core(
    cfg: &Config,
    status: Arc<NodeStatus>,
    faults: Arc<Faults>,
    rec: Recovered,
) -> Result<(Core, CoreThreads), StorageError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let id = status.member_id;
    let rcfg = raft_config(cfg, id, rec.state_machine.applied_index());
    let logger = slog::Logger::root(slog::Fuse(TracingDrain), slog::o!());
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
    let max_batch_bytes = usize::try_from(cfg.raft.max_size_per_msg).unwrap_or(usize::MAX);
    let peers = {
        let status = status.clone();
        let faults = faults.clone();
        let metrics = metrics.clone();
        let cluster_id = status.cluster_id;
        move |raft: Addr<RaftActor>, apply: Addr<ApplyActor>| PeerContext {
            from: id,
            cluster_id,
            raft,
            apply,
            status,
            faults,
            metrics,
            max_batch_bytes,
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
    // batch (measured: ~20% more puts/s on 2 cores). Any other member
    // gives Raft a thread of its own.
    let cs = rec.state_machine.conf_state();
    let lone = cs.voters == [id] && cs.learners.is_empty();
    let start = move || {
        let ctx = Context::<RaftActor>::new();
        let raft = ctx.address();
        let wal = match WalWriter::spawn(log_store, raft.clone(), wal_ctx) {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        Ticker::new(raft.clone(), tick).start();
        let settings = RaftSettings {
            snapshot_catchup_entries: settings_catchup,
            tick,
            on_client_thread: lone,
            peers: peers(raft.clone(), apply_for_raft.clone()),
        };
        ctx.run(RaftActor::new(
            node,
            wal.0,
            apply_for_raft,
            raft_status,
            settings,
        ));
        raft.do_send(InitialMembers(members));
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
    apply_ctx.run(ApplyActor::new(
        rec.state_machine,
        raft.clone(),
        lessor.clone(),
        status.clone(),
        metrics.clone(),
        crate::actors::apply::ApplySettings {
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
        },
        CoreThreads {
            raft: raft_thread,
            wal: wal_thread,
        },
    ))
}

/// Opens the data dir: who this member is, bootstrapping it first when the
/// dir is new.
pub fn prepare(cfg: &Config) -> Result<Identity, Box<dyn std::error::Error>> {
    fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| StorageError::io(format!("create {}", cfg.data_dir.display()), e))?;
    if let Some(id) = read_marker(cfg)? {
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
        Some(image) => restore_image(cfg, image, &plan),
        None => bootstrap(cfg, &plan),
    }
    .and_then(|()| write_marker(cfg, plan.identity));
    if let Err(e) = done {
        // The dir was empty: leave it so, never half-bootstrapped (a later
        // start would otherwise begin from it).
        let _ = fs::remove_dir_all(&cfg.data_dir);
        return Err(Box::new(e));
    }
    Ok(plan.identity)
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
    let identity = prepare(&cfg)?;
    let mut rec = recover(&cfg)?;
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
    let rocks_dbs = rec.rocks.clone();
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
        let (core, threads) = start_core(&cfg, status, faults, rec)?;
        let served = actix_rt::spawn(async move {
            let result = crate::api::serve(cfg, core, client_addr, peer_listener, stop).await;
            System::current().stop();
            result
        });
        Ok::<_, StorageError>((served, threads))
    })?;
    let code = system.run_with_code()?;
    // The actors are gone with the System; the WAL writer follows them.
    threads.join();
    if let Some(dbs) = rocks_dbs {
        // A clean stop leaves nothing to replay.
        if let Err(e) = rocks::shutdown(&dbs) {
            tracing::warn!(error = %e, "flush at shutdown failed; the next start replays the log");
        }
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
