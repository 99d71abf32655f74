//! etcd's Maintenance service. Status, Alarm (no alarms are raised yet),
//! Defragment (the memory engine has nothing to defragment), MoveLeader for a
//! lone member; Hash, HashKV, Snapshot and Downgrade are not supported yet.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{Gateway, ETCD_VERSION};
use crate::error::ApiError;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;

/// The Maintenance service.
pub struct MaintenanceService {
    gw: Gateway,
}

impl MaintenanceService {
    /// A Maintenance service over the gateway.
    pub fn new(gw: Gateway) -> MaintenanceService {
        MaintenanceService { gw }
    }
}

fn unsupported(what: &str) -> Status {
    ApiError::Unsupported(format!("{what} is not supported yet")).into()
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let st = self.gw.store_status().await?;
        Ok(Response::new(AlarmResponse {
            header: self.gw.header(st.revision),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let st = self.gw.store_status().await?;
        let status = self.gw.status();
        let size = i64::try_from(st.db_size).unwrap_or(i64::MAX);
        Ok(Response::new(StatusResponse {
            header: self.gw.header(st.revision),
            version: ETCD_VERSION.into(),
            db_size: size,
            leader: status.leader(),
            raft_index: status
                .commit_index
                .load(std::sync::atomic::Ordering::Relaxed),
            raft_term: status.term(),
            raft_applied_index: st.applied_index,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let st = self.gw.store_status().await?;
        Ok(Response::new(DefragmentResponse {
            header: self.gw.header(st.revision),
        }))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(unsupported("Hash"))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(unsupported("HashKV"))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unsupported("Snapshot"))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let st = self.gw.store_status().await?;
        if target != self.gw.status().member_id {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.gw.header(st.revision),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unsupported("Downgrade"))
    }
}
