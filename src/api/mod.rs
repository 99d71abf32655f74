//! The client-facing API: etcd's gRPC services and, on the same port, HTTP
//! (`/metrics`, `/health`, `/version`). Handlers validate, then hand work to the
//! actors through [`Backend`]; they hold no state of their own.

pub mod auth;
pub mod authority;
pub mod cluster;
pub mod codec;
pub mod concurrency;
pub mod corruption;
pub mod disk;
pub mod gateway;
mod grpc_metrics;
pub mod health;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod peer;
pub mod tls;
pub mod validate;
pub mod watch;
pub mod wire_range;

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::oneshot;

use crate::actors::deliver;
use crate::actors::images::{ImageJob, StateHash};
use crate::actors::messages::{
    LocalRead, PendingRead, ProposeConfChange, QueryMembers, QueryRaft, QueryStore, RaftView,
    ReadIndex, StoreStatus, TransferLeader,
};
use crate::actors::propose::Proposer;
use crate::actors::Core;
use crate::config::Config;
use crate::error::ApiError;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::metastorepb::internal_request;
use crate::state_machine::membership::Membership;
use crate::state_machine::{ReadRequest, ReadResponse, WriteResponse};

/// The etcd server version whose API MetaStore implements, reported by
/// Maintenance.Status and `/version`. Clients gate features on it:
/// kube-apiserver sends watch progress requests (for consistent reads from
/// its cache) only to etcd 3.4.31+ or 3.5.13+, the releases whose requested
/// progress notifications travel in the watch stream behind every event
/// already due (watch id -1, held back until every watcher of the stream is
/// synced, also one that catches up without an event) — as the watch hub
/// sends them. MetaStore's own version is in `/version` as `metastore`.
pub const ETCD_VERSION: &str = "3.5.13";

/// The cluster version as etcd reports it (major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
use crate::actors::propose::REQUEST_TIMEOUT;

pub use crate::actors::propose::RequestIds;

/// What every handler needs: the actors, the ids, the limits.
#[derive(Clone)]
pub struct Backend {
    core: Core,
    proposer: Proposer,
    /// Largest encoded request (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Store size that raises NOSPACE (`--quota-backend-bytes`).
    pub quota: u64,
    /// Most ops per txn branch.
    pub max_txn_ops: usize,
    /// Member name.
    pub name: String,
    /// The data dir (where Maintenance.Snapshot writes its temp file).
    pub data_dir: std::path::PathBuf,
    /// Advertised peer URLs.
    pub peer_urls: Vec<String>,
    /// Advertised client URLs.
    pub client_urls: Vec<String>,
    /// Raft's election timeout (etcd derives the minimum lease TTL from it).
    pub election_timeout_ms: u64,
    /// A channel to the leader's peer service, for forwarded lease calls.
    leader_link: Arc<parking_lot::Mutex<Option<(u64, tonic::transport::Channel)>>>,
    /// Authenticate's tokens (simple or JWT).
    pub tokens: Arc<auth::TokenIssuer>,
    /// bcrypt, off the write path.
    pub hasher: auth::Hasher,
    /// Whom the requests this backend runs on its own behalf are checked
    /// as (Lock and Election act for their client; see [`Backend::acting_for`]).
    pub acting: crate::state_machine::auth::Caller,
    /// Client certificates are required: a request without a token runs
    /// as its certificate's common name.
    pub cert_users: bool,
}

impl Backend {
    /// What takes in images from the leader as they arrive.
    pub fn image_intake(&self) -> Arc<dyn crate::actors::images::ImageIntake> {
        self.core.intake.clone()
    }

    /// The backend of a running core.
    pub fn new(cfg: &Config, core: Core, tokens: auth::TokenIssuer) -> Backend {
        Backend {
            proposer: Proposer {
                raft: core.raft.clone(),
                ids: core.ids.clone(),
                status: core.status.clone(),
                max_request_bytes: cfg.max_request_bytes,
            },
            core,
            max_request_bytes: cfg.max_request_bytes,
            quota: cfg.quota(),
            max_txn_ops: cfg.max_txn_ops,
            name: cfg.name.clone(),
            data_dir: cfg.data_dir.clone(),
            peer_urls: cfg.advertise_peer_list(),
            client_urls: cfg.advertise_client_list(),
            election_timeout_ms: cfg.raft.tick_ms * cfg.raft.election_tick as u64,
            leader_link: Arc::default(),
            tokens: Arc::new(tokens),
            hasher: auth::Hasher::start(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                cfg.bcrypt_cost,
            ),
            acting: crate::state_machine::auth::Caller::System,
            cert_users: cfg.client_cert_auth || !cfg.trusted_ca_file.is_empty(),
        }
    }

    /// This backend acting for the client of `req` (its token's user):
    /// what it then writes, reads and watches is checked as that user.
    pub fn acting_for<T>(&self, req: &tonic::Request<T>) -> Result<Backend, ApiError> {
        Ok(Backend {
            acting: self.caller_of(req)?,
            ..self.clone()
        })
    }

    /// The leader's peer service (for calls only the leader answers).
    pub async fn leader_peer(
        &self,
    ) -> Result<
        crate::proto::metastorepb::peer_client::PeerClient<tonic::transport::Channel>,
        ApiError,
    > {
        use crate::proto::metastorepb::peer_client::PeerClient;
        let leader = self.status().leader();
        if leader == 0 {
            return Err(ApiError::NoLeader);
        }
        if let Some((id, ch)) = self.leader_link.lock().as_ref() {
            if *id == leader {
                return Ok(PeerClient::new(ch.clone()));
            }
        }
        let channel = self
            .peer_channel(leader, REQUEST_TIMEOUT)
            .await
            .map_err(|e| match e {
                ApiError::MemberNotFound => ApiError::NoLeader,
                e => e,
            })?;
        *self.leader_link.lock() = Some((leader, channel.clone()));
        Ok(PeerClient::new(channel))
    }

    /// Live status.
    pub fn status(&self) -> &crate::status::NodeStatus {
        &self.core.status
    }

    /// This member's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.core.metrics
    }

    /// Test-only fault switches.
    pub fn faults(&self) -> &crate::status::Faults {
        &self.core.faults
    }

    /// Starts a client-session actor (see [`Core::start_session`]).
    pub fn start_session<A>(
        &self,
        make: impl FnOnce(&mut actix::Context<A>) -> A + Send + 'static,
    ) -> actix::Addr<A>
    where
        A: actix::Actor<Context = actix::Context<A>>,
    {
        self.core.start_session(make)
    }

    /// Opens a Watch stream (see [`Core::open_watch`]).
    pub async fn open_watch(
        &self,
        outbox: crate::watch::Outbox,
        requests: crate::actors::messages::WatchRequests,
        caller: crate::state_machine::auth::Caller,
    ) -> Result<(), ApiError> {
        self.core.open_watch(outbox, requests, caller).await
    }

    /// Hands Raft messages from a peer to the RaftActor; waits while its
    /// mailbox is full (backpressure on the sending peer).
    pub async fn step(&self, msgs: Vec<raft::eraftpb::Message>) -> Result<(), ApiError> {
        self.core
            .raft
            .send(crate::actors::messages::StepBatch(msgs))
            .await
            .map_err(|_| ApiError::Stopped)
    }

    /// Member `from` opened a Raft stream to this one (see `PeerBack`).
    pub fn peer_back(&self, from: u64) {
        self.core
            .raft
            .do_send(crate::actors::messages::PeerBack(from));
    }

    /// Test-only: writes a key into this member's store outside Raft.
    pub async fn fault_put(&self, put: crate::actors::messages::FaultPut) -> Result<(), ApiError> {
        self.core
            .apply
            .send(put)
            .await
            .map_err(|_| ApiError::Stopped)
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.proposer.ids.next()
    }

    /// Proposes writes for this member.
    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }

    /// A header with this member's ids and term over `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let st = &self.core.status;
        Some(ResponseHeader {
            cluster_id: st.cluster_id,
            member_id: st.member_id,
            revision,
            raft_term: st.term(),
        })
    }

    /// Fills the ids and term into a header the applier set the revision of.
    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let revision = h.as_ref().map_or(0, |h| h.revision);
        *h = self.header(revision);
    }

    /// Proposes a write through Raft and waits for its applied answer;
    /// it is checked as `caller` when applied.
    pub async fn write(
        &self,
        caller: &crate::state_machine::auth::Caller,
        request: internal_request::Request,
    ) -> Result<WriteResponse, ApiError> {
        self.check_quota(&request)?;
        self.proposer.write_as(caller, request).await
    }

    /// etcd's quota check before proposing: while any NOSPACE alarm is
    /// raised (by the quota or a member's disk check) a write that may grow
    /// the store is refused here, without a trip through Raft; a write that
    /// may grow the store past `--quota-backend-bytes` raises this member's
    /// NOSPACE alarm (through Raft, so every member refuses such writes
    /// until it is disarmed) and fails.
    fn check_quota(&self, request: &internal_request::Request) -> Result<(), ApiError> {
        use internal_request::Request as R;
        let cost = match request {
            R::Put(p) => p.encoded_len(),
            R::Txn(t) if crate::state_machine::kv::txn_has_put(t) => t.encoded_len(),
            R::LeaseGrant(_) => 64,
            _ => return Ok(()),
        } as u64;
        if self.nospace_raised(None) {
            return Err(ApiError::NoSpace);
        }
        let size = self
            .core
            .status
            .db_size
            .load(std::sync::atomic::Ordering::Relaxed);
        if size + cost <= self.quota {
            return Ok(());
        }
        if !self.nospace_raised_by_me() {
            tracing::warn!(
                member = format!("{:x}", self.core.status.member_id),
                size,
                quota = self.quota,
                "store over its quota: raising NOSPACE"
            );
            self.raise_nospace();
        }
        Err(ApiError::NoSpace)
    }

    /// Whether this member's NOSPACE alarm is raised (as last applied).
    pub fn nospace_raised_by_me(&self) -> bool {
        self.nospace_raised(Some(self.core.status.member_id))
    }

    /// Whether a NOSPACE alarm of `member` (None: of any member) is raised.
    fn nospace_raised(&self, member: Option<u64>) -> bool {
        let nospace = crate::proto::etcdserverpb::AlarmType::Nospace as i32;
        self.core
            .status
            .alarms
            .read()
            .iter()
            .any(|&(m, a)| a == nospace && member.is_none_or(|id| id == m))
    }

    /// Proposes this member's NOSPACE alarm in the background (a failure
    /// is logged; the next refused write or disk check tries again).
    pub fn raise_nospace(&self) {
        let raise = internal_request::Request::Alarm(crate::proto::etcdserverpb::AlarmRequest {
            action: crate::proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.core.status.member_id,
            alarm: crate::proto::etcdserverpb::AlarmType::Nospace as i32,
        });
        let proposer = self.proposer.clone();
        tokio::spawn(async move {
            if let Err(e) = proposer.write(raise).await {
                tracing::warn!(error = %e, "NOSPACE alarm not raised yet");
            }
        });
    }

    /// Proposes a membership change and waits until it is applied here;
    /// answers the members afterwards.
    pub async fn change_membership(
        &self,
        change: &crate::state_machine::membership::Change,
    ) -> Result<Vec<crate::proto::etcdserverpb::Member>, ApiError> {
        use crate::state_machine::membership::Change;
        let id = self.next_id();
        let member = match change {
            Change::Add(m) => Some(m.clone()),
            Change::Remove(_) | Change::Promote(_) => None,
        };
        let cc = raft::eraftpb::ConfChangeV2 {
            changes: vec![change.conf_change()].into(),
            context: crate::actors::raft::conf_change_context(id, member).into(),
            ..Default::default()
        };
        let (reply, rx) = oneshot::channel();
        deliver(&self.core.raft.get(), ProposeConfChange { id, cc, reply }).await?;
        match self.proposer.wait(rx).await? {
            WriteResponse::Members(m) => Ok(m),
            _ => Err(ApiError::Internal("unexpected membership answer".into())),
        }
    }

    /// The member registry as applied here.
    pub async fn members(&self) -> Result<Membership, ApiError> {
        self.core
            .apply
            .send(QueryMembers)
            .await
            .map_err(|_| ApiError::Stopped)
    }

    /// What Raft knows (leadership, replication progress on a leader).
    pub async fn raft_view(&self) -> Result<RaftView, ApiError> {
        self.core
            .raft
            .send(QueryRaft)
            .await
            .map_err(|_| ApiError::Stopped)
    }

    /// MoveLeader: hands leadership to `to`; answers once it leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        deliver(&self.core.raft.get(), TransferLeader { to, reply }).await?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// MemberPromote on the leader: etcd's readiness checks, then the change.
    pub async fn promote_here(
        &self,
        id: u64,
    ) -> Result<Vec<crate::proto::etcdserverpb::Member>, ApiError> {
        use crate::state_machine::membership::Change;
        let members = self.members().await?;
        members.check(&Change::Promote(id))?;
        let view = self.raft_view().await?;
        if !view.is_leader {
            return Err(ApiError::NotLeader);
        }
        let matched = |m: u64| view.matched.iter().find(|(i, _)| *i == m).map(|(_, v)| *v);
        let leader_match = matched(self.status().member_id).unwrap_or(0);
        // etcd: a learner within 90% of the leader's log may be promoted.
        if let Some(learner) = matched(id) {
            if (learner as f64) < leader_match as f64 * 0.9 {
                return Err(ApiError::LearnerNotReady);
            }
        }
        cluster::check_started_quorum(&members, cluster::NewVoter::Promoted)?;
        self.change_membership(&Change::Promote(id)).await
    }

    /// Serves a read: serializable from local state, otherwise after ReadIndex.
    pub async fn read(
        &self,
        caller: &crate::state_machine::auth::Caller,
        request: ReadRequest,
        serializable: bool,
    ) -> Result<ReadResponse, ApiError> {
        let (reply, mut rx) = oneshot::channel();
        let (opened, mut open) = oneshot::channel();
        let pending = PendingRead {
            request,
            caller: caller.clone(),
            reply,
            opened: Some(opened),
        };
        if serializable {
            deliver(&self.core.apply, LocalRead(pending)).await?;
        } else {
            deliver(&self.core.raft.get(), ReadIndex(pending)).await?;
        }
        let answer = |r: Result<crate::actors::messages::ReadResult, oneshot::error::RecvError>| {
            r.unwrap_or(Err(ApiError::Stopped))
        };
        tokio::select! {
            r = &mut rx => answer(r),
            // A Range being read in slices: as long as it takes (it is
            // dropped if this request goes away).
            Ok(()) = &mut open => answer(rx.await),
            () = tokio::time::sleep(REQUEST_TIMEOUT) => Err(ApiError::Timeout),
        }
    }

    /// The store's figures.
    pub async fn store_status(&self) -> Result<StoreStatus, ApiError> {
        self.core
            .apply
            .send(QueryStore)
            .await
            .map_err(|_| ApiError::Stopped)
    }

    /// Runs the engine's defragmentation (Maintenance.Defragment) on a
    /// blocking thread; returns when it is done.
    pub async fn defragment(&self) -> Result<(), ApiError> {
        let job = self
            .core
            .apply
            .send(crate::actors::messages::Defragment)
            .await
            .map_err(|_| ApiError::Stopped)?;
        if let Some(job) = job {
            tokio::task::spawn_blocking(job)
                .await
                .map_err(|e| ApiError::Internal(format!("defragment: {e}")))?;
            self.core
                .apply
                .send(crate::actors::messages::Defragmented)
                .await
                .map_err(|_| ApiError::Stopped)?;
        }
        Ok(())
    }

    /// Hashes an image of the applied state up to `rev` (0: all): Hash,
    /// HashKV and the corruption check. Errors as etcd's HashKV for a
    /// revision above the current one or below the compacted one.
    pub async fn hash_state(&self, rev: i64) -> Result<StateHash, ApiError> {
        crate::actors::images::hash(self.take_image().await?, rev).await
    }

    /// A client of member `id`'s peer port (connected on first use) whose
    /// calls time out after `timeout`.
    pub async fn peer_of(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<
        crate::proto::metastorepb::peer_client::PeerClient<tonic::transport::Channel>,
        ApiError,
    > {
        Ok(crate::proto::metastorepb::peer_client::PeerClient::new(
            self.peer_channel(id, timeout).await?,
        ))
    }

    /// A channel to member `id`'s first peer URL, connected on first use.
    async fn peer_channel(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<tonic::transport::Channel, ApiError> {
        let members = self.members().await?;
        let url = members
            .get(id)
            .and_then(|m| m.peer_ur_ls.first().cloned())
            .ok_or(ApiError::MemberNotFound)?;
        let (endpoint, connector) = self
            .core
            .dialer
            .endpoint(&url)
            .map_err(ApiError::Internal)?;
        Ok(endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(timeout)
            .connect_with_connector_lazy(connector))
    }

    /// How this member dials peer URLs.
    pub fn dialer(&self) -> &crate::tls::Dialer {
        &self.core.dialer
    }

    /// etcd's HashKV answer for `rev` (0: the current revision).
    pub async fn hash_kv(
        &self,
        rev: i64,
    ) -> Result<crate::proto::etcdserverpb::HashKvResponse, ApiError> {
        let h = self.hash_state(rev).await?;
        Ok(crate::proto::etcdserverpb::HashKvResponse {
            header: self.header(h.current_rev),
            hash: h.kv,
            compact_revision: h.compact_rev,
            hash_revision: if rev > 0 { rev } else { h.current_rev },
        })
    }

    /// Starts an image of the applied state (Maintenance.Snapshot).
    pub async fn take_image(&self) -> Result<ImageJob, ApiError> {
        self.core.take_image().await
    }
}

/// Serves gRPC and HTTP on every listen client URL until `stop` completes
/// (TLS on `https://` ones, with `tls.client`), and the peer service on
/// `peers` (on the Raft thread; TLS with `tls.peer` if the peer URL is
/// `https://`).
pub async fn serve(
    cfg: Config,
    core: Core,
    tls: crate::tls::Setup,
    peers: std::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::error::ServeError> {
    use crate::error::ServeError;
    use crate::proto::etcdserverpb::{
        cluster_server::ClusterServer, kv_server::KvServer, maintenance_server::MaintenanceServer,
    };

    let raft_thread = core.raft_thread.clone();
    let tokens = auth::TokenIssuer::new(&cfg)?;
    let backend = Backend::new(&cfg, core, tokens);
    let incoming = cfg.data_dir.join(crate::storage::INCOMING);
    let peer_backend = backend.clone();
    let max_peer_message =
        peer::max_peer_message_bytes(cfg.raft.max_size_per_msg, cfg.max_request_bytes);
    let peer_tls = if cfg.peer_listen_tls() {
        tls.peer.clone()
    } else {
        None
    };
    raft_thread.spawn(async move {
        peer::serve(peer_backend, peers, peer_tls, incoming, max_peer_message).await
    });
    tokio::spawn(publish(backend.clone()));
    if cfg.disk_reserve_bytes > 0 {
        tokio::spawn(disk::run(
            backend.clone(),
            cfg.data_dir.clone(),
            cfg.disk_reserve_bytes,
        ));
    }
    if cfg.corrupt_check_ms > 0 {
        tokio::spawn(corruption::run(
            backend.clone(),
            Duration::from_millis(cfg.corrupt_check_ms),
        ));
    }
    // gRPC refuses bodies far over the limit before decoding them; the exact
    // limit is checked on the encoded request (etcd's behaviour).
    let max_msg = cfg.max_request_bytes + 512 * 1024;
    let grpc = tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(backend.clone())).max_decoding_message_size(max_msg),
    )
    .add_service(MaintenanceServer::new(
        maintenance::MaintenanceService::new(backend.clone()),
    ))
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        backend.clone(),
    )))
    .add_service(watch::WatchService::new(backend.clone()))
    .add_service(crate::proto::etcdserverpb::lease_server::LeaseServer::new(
        lease::LeaseService::new(backend.clone()),
    ))
    .add_service(crate::proto::v3lockpb::lock_server::LockServer::new(
        concurrency::LockService::new(backend.clone()),
    ))
    .add_service(
        crate::proto::v3electionpb::election_server::ElectionServer::new(
            concurrency::ElectionService::new(backend.clone()),
        ),
    )
    .add_service(crate::proto::etcdserverpb::auth_server::AuthServer::new(
        auth::AuthService::new(backend.clone()),
    ))
    .add_service(crate::proto::health::health_server::HealthServer::new(
        health::HealthService::new(backend.clone()),
    ))
    .prepare()
    .into_axum_router()
    // Range's answer goes out as the slices were encoded (see wire_range).
    .route(
        wire_range::PATH,
        wire_range::route(backend.clone(), max_msg),
    )
    .layer(axum::middleware::map_response(etcd_size_status))
    .layer(axum::middleware::from_fn_with_state(
        backend.core.metrics.clone(),
        grpc_metrics::observe,
    ));
    for maddr in cfg.metrics_listen_addrs() {
        let listener = tokio::net::TcpListener::bind(maddr)
            .await
            .map_err(|source| ServeError::MetricsListen {
                addr: maddr,
                source,
            })?;
        tracing::info!(addr = %maddr, "serving /metrics and health checks");
        let router = http::metrics_router(backend.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let mut app = grpc
        .merge(gateway::router(backend.clone()))
        .merge(http::router(backend, cfg.fault_injection));
    if cfg.fault_injection {
        app = app.merge(tls::debug_router());
    }
    // One stop for every listener.
    let (stopped, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stopped.send(true);
    });
    let mut servers = Vec::new();
    for (addr, https) in cfg.client_listeners()? {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::ClientListen { addr, source })?;
        let mut stopping = stopping.clone();
        let stop = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let app = app.clone();
        match (https, &tls.client) {
            (true, Some(server_tls)) => {
                tracing::info!(%addr, "serving clients over TLS (gRPC and HTTP)");
                let listener = tls::TlsListener::new(tcp, server_tls.clone());
                servers.push(tokio::spawn(async move {
                    axum::serve(
                        listener,
                        app.into_make_service_with_connect_info::<tls::ClientIdentity>(),
                    )
                    .with_graceful_shutdown(stop)
                    .await
                }));
            }
            _ => {
                tracing::info!(%addr, "serving clients (gRPC and HTTP)");
                let listener = authority::Listener(tcp);
                servers.push(tokio::spawn(async move {
                    axum::serve(
                        listener,
                        app.into_make_service_with_connect_info::<tls::ClientIdentity>(),
                    )
                    .with_graceful_shutdown(stop)
                    .await
                }));
            }
        }
    }
    // Any listener's end ends them all (as one did before).
    let (first, _, rest) = futures::future::select_all(servers).await;
    for s in rest {
        s.abort();
    }
    match first {
        Ok(result) => result.map_err(ServeError::Serve),
        Err(e) => Err(ServeError::Task(e.to_string())),
    }
}

/// Announces this member's name and client URLs through the log (as etcd's
/// publish), once a leader exists; retried until applied.
async fn publish(backend: Backend) {
    use crate::proto::metastorepb::PublishRequest;
    let me = backend.status().member_id;
    loop {
        if let Ok(members) = backend.members().await {
            let done = members
                .get(me)
                .is_some_and(|m| m.name == backend.name && m.client_ur_ls == backend.client_urls);
            if done || members.is_removed(me) {
                return;
            }
        }
        let req = internal_request::Request::Publish(PublishRequest {
            member_id: me,
            name: backend.name.clone(),
            client_urls: backend.client_urls.clone(),
        });
        match backend
            .write(&crate::state_machine::auth::Caller::System, req)
            .await
        {
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "publish not applied yet; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// tonic refuses a message over the decoding limit with `OutOfRange` and its
/// own wording; etcd's clients see grpc-go's `ResourceExhausted "grpc:
/// received message larger than max (N vs. M)"`. Rewrite that one status
/// (a trailers-only response) so clients get etcd's answer.
async fn etcd_size_status(mut resp: axum::response::Response) -> axum::response::Response {
    let headers = resp.headers_mut();
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return resp;
    }
    let Some(sizes) = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .and_then(|m| tonic_too_large(&m))
    else {
        return resp;
    };
    let message = format!(
        "grpc: received message larger than max ({} vs. {})",
        sizes.0, sizes.1
    );
    // grpc-message is percent-encoded on the wire (tonic encodes spaces too).
    if let Ok(value) = axum::http::HeaderValue::from_str(&message.replace(' ', "%20")) {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
        headers.insert("grpc-message", value);
    }
    resp
}

/// Undoes grpc-message's %XX escapes.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (found, limit) from tonic's "message length too large" status message.
fn tonic_too_large(msg: &str) -> Option<(u64, u64)> {
    let rest = msg.strip_prefix("Error, decoded message length too large: found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
