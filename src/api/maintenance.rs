//! etcd's Maintenance service. Status, Alarm (NOSPACE raised by the quota
//! check; list, activate, deactivate through Raft),
//! Defragment (compacts the rocksdb engine's files; the memory engine has
//! nothing to defragment), MoveLeader (on the leader, as etcd), Snapshot
//! (etcd's data file, a bbolt database), Hash and HashKV (over an image of
//! the applied state); Downgrade is not supported yet.

use std::io::Read;
use std::pin::Pin;

use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::{Backend, ETCD_VERSION};
use crate::actors::images::ImageJob;
use crate::error::ApiError;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;

/// The Maintenance service.
pub struct MaintenanceService {
    backend: Backend,
}

impl MaintenanceService {
    /// A Maintenance service over the backend.
    pub fn new(backend: Backend) -> MaintenanceService {
        MaintenanceService { backend }
    }
}

fn unsupported(what: &str) -> Status {
    ApiError::Unsupported(format!("{what} is not supported yet")).into()
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// GET lists the raised alarms (this member's view, as etcd answers);
    /// ACTIVATE and DEACTIVATE go through Raft and answer the alarms that
    /// changed (`etcdctl alarm disarm` deactivates every listed one).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        match alarm_request::AlarmAction::try_from(req.action) {
            Ok(alarm_request::AlarmAction::Get) => {
                let alarms = self
                    .backend
                    .status()
                    .alarms
                    .read()
                    .iter()
                    .filter(|&&(m, a)| {
                        (req.member_id == 0 || m == req.member_id)
                            && (req.alarm == AlarmType::None as i32 || a == req.alarm)
                    })
                    .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
                    .collect();
                Ok(Response::new(AlarmResponse {
                    header: self.backend.header(self.backend.status().revision()),
                    alarms,
                }))
            }
            Ok(_) => {
                let r = self
                    .backend
                    .write(
                        &crate::state_machine::auth::Caller::System,
                        crate::proto::metastorepb::internal_request::Request::Alarm(req),
                    )
                    .await?;
                match r {
                    crate::state_machine::WriteResponse::Alarm(mut resp) => {
                        self.backend.fill(&mut resp.header);
                        Ok(Response::new(resp))
                    }
                    _ => Err(ApiError::Internal("unexpected alarm answer".into()).into()),
                }
            }
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let st = self.backend.store_status().await?;
        let status = self.backend.status();
        let size = i64::try_from(st.db_size).unwrap_or(i64::MAX);
        Ok(Response::new(StatusResponse {
            header: self.backend.header(st.revision),
            version: ETCD_VERSION.into(),
            db_size: size,
            leader: status.leader(),
            raft_index: status
                .commit_index
                .load(std::sync::atomic::Ordering::Relaxed),
            raft_term: status.term(),
            raft_applied_index: st.applied_index,
            // etcd lists raised alarms here (what `endpoint status` shows
            // under ERRORS).
            errors: status
                .alarms
                .read()
                .iter()
                .map(|&(m, a)| {
                    let name = AlarmType::try_from(a).map_or("NONE", |t| t.as_str_name());
                    format!("memberID:{m} alarm:{name} ")
                })
                .collect(),
            db_size_in_use: size,
            is_learner: status.is_learner(),
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.backend.admin(&req).map_err(raw_auth_error)?;
        self.backend.defragment().await?;
        // etcd (3.4 and 3.5) answers with an empty response: no header.
        Ok(Response::new(DefragmentResponse::default()))
    }

    /// CRC-32C of every stored version (MetaStore's store holds no Raft
    /// metadata: equal on members that applied the same entries).
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.backend.admin(&req).map_err(raw_auth_error)?;
        let h = self.backend.hash_state(0).await?;
        Ok(Response::new(HashResponse {
            header: self.backend.header(h.current_rev),
            hash: h.all,
        }))
    }

    /// etcd's HashKV: CRC-32C of every version up to `revision` (0: the
    /// current one) still stored, with the compaction revision in effect,
    /// so that members compare equal exactly when they hold the same
    /// history; the same on both engines.
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.backend.admin(&req).map_err(raw_auth_error)?;
        Ok(Response::new(
            self.backend.hash_kv(req.into_inner().revision).await?,
        ))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    /// Streams the applied state as etcd's data file (a bbolt database with
    /// etcd's buckets, converted from the state image on a blocking thread),
    /// framed as etcd frames it (512-byte padding, then SHA-256): `etcdctl
    /// snapshot save` stores and checks it, `etcdctl snapshot status` and
    /// `restore` (and etcd 3.5's `etcdutl`) read it, and so does `metastore
    /// --restore-image`.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.backend.admin(&req).map_err(raw_auth_error)?;
        let st = self.backend.store_status().await?;
        let job = self.backend.take_image().await?;
        let header = self.backend.header(st.revision);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let tmp_dir = self.backend.data_dir.clone();
        tokio::task::spawn_blocking(move || stream_image(job, &tmp_dir, header, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let members = self.backend.members().await?;
        match members.get(target) {
            Some(m) if !m.is_learner => {}
            _ => return Err(ApiError::BadLeaderTransferee.into()),
        }
        self.backend.transfer_leader(target).await?;
        let st = self.backend.store_status().await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.backend.header(st.revision),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unsupported("Downgrade"))
    }
}

/// etcd's chunk size for snapshot streams.
const CHUNK: usize = 32 * 1024;

/// Converts the image to etcd's data file in `tmp_dir` and sends that in
/// chunks (on a blocking thread: it may wait for the image thread, and
/// converts and reads files). Returns, dropping the unlinked temp file, as
/// soon as the client is gone.
fn stream_image(
    job: ImageJob,
    tmp_dir: &std::path::Path,
    header: Option<ResponseHeader>,
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let fail = |e: String| {
        let _ = tx.blocking_send(Err(Status::internal(format!("etcdserver: {e}"))));
    };
    let (mut source, total) = match crate::actors::images::etcd_data_file(job, tmp_dir) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    // etcd's framing, which etcdctl checks: the database padded to 512-byte
    // pages, then the SHA-256 of all of it.
    let padded = total.div_ceil(512) * 512;
    let whole = padded + 32;
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let send = |blob: Vec<u8>, sent: u64| {
        let resp = SnapshotResponse {
            header,
            remaining_bytes: whole - sent,
            blob,
        };
        tx.blocking_send(Ok(resp)).is_ok()
    };
    while sent < total {
        let want = CHUNK.min((total - sent) as usize);
        let n = match source.read(&mut buf[..want]) {
            Ok(0) => return fail("the image ended early".into()),
            Ok(n) => n,
            Err(e) => return fail(e.to_string()),
        };
        sent += n as u64;
        hash.update(&buf[..n]);
        if !send(buf[..n].to_vec(), sent) {
            return;
        }
    }
    let mut tail = vec![0u8; (padded - total) as usize];
    hash.update(&tail);
    tail.extend_from_slice(&hash.finalize());
    let _ = send(tail, whole);
}

/// etcd's maintenance server refuses a caller without the root role with
/// its auth package's own error, untranslated: gRPC code Unknown and
/// `auth: ...` (etcd 3.4 and 3.5 alike; `etcdctl defrag` prints it).
fn raw_auth_error(e: ApiError) -> Status {
    let text = match e {
        ApiError::PermissionDenied => "auth: permission denied",
        ApiError::UserEmpty => "auth: user name is empty",
        ApiError::UserNotFound => "auth: user not found",
        ApiError::InvalidAuthToken => "auth: invalid auth token",
        e => return Status::from(e),
    };
    Status::unknown(text)
}
