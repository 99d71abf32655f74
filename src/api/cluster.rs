//! etcd's Cluster service. MemberList answers for the one member; membership
//! changes arrive with multi-member clusters.

use tonic::{Request, Response, Status};

use super::Gateway;
use crate::error::ApiError;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;

/// The Cluster service.
pub struct ClusterService {
    gw: Gateway,
}

impl ClusterService {
    /// A Cluster service over the gateway.
    pub fn new(gw: Gateway) -> ClusterService {
        ClusterService { gw }
    }

    fn me(&self) -> Member {
        Member {
            id: self.gw.status().member_id,
            name: self.gw.name.clone(),
            peer_ur_ls: self.gw.peer_urls.clone(),
            client_ur_ls: self.gw.client_urls.clone(),
            is_learner: false,
        }
    }
}

fn unsupported(what: &str) -> Status {
    ApiError::Unsupported(format!(
        "{what} is not supported yet (single-member clusters only)"
    ))
    .into()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unsupported("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unsupported("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unsupported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let revision = self
            .gw
            .status()
            .revision
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(MemberListResponse {
            header: self.gw.header(revision),
            members: vec![self.me()],
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unsupported("MemberPromote"))
    }
}
