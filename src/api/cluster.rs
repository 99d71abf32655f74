//! etcd's Cluster service: MemberList, MemberAdd (voter or learner),
//! MemberRemove, MemberUpdate, MemberPromote, with etcd's checks and errors.
//! Changes go through the log (ConfChangeV2 for add / remove / promote);
//! the answer comes once the change is applied on this member.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use super::Backend;
use crate::config::parse_url_addr;
use crate::error::ApiError;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;
use crate::proto::metastorepb::{internal_request, UpdatePeerUrlsRequest};
use crate::state_machine::membership::{Change, Membership};
use crate::state_machine::WriteResponse;

/// How long a peer must have been connected to count as active (etcd's
/// HealthInterval).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The Cluster service.
pub struct ClusterService {
    backend: Backend,
}

impl ClusterService {
    /// A Cluster service over the backend.
    pub fn new(backend: Backend) -> ClusterService {
        ClusterService { backend }
    }

    /// As etcd's Cluster service: cluster, member and term, no revision.
    fn header(&self) -> Option<ResponseHeader> {
        self.backend.header(0)
    }

    fn active_since(&self) -> Instant {
        Instant::now()
            .checked_sub(HEALTH_INTERVAL)
            .unwrap_or_else(Instant::now)
    }

    async fn add(&self, r: MemberAddRequest) -> Result<MemberAddResponse, ApiError> {
        if r.peer_ur_ls.is_empty() || r.peer_ur_ls.iter().any(|u| parse_url_addr(u).is_none()) {
            return Err(ApiError::MemberBadUrls);
        }
        if self.backend.status().is_learner() {
            return Err(ApiError::NotSupportedForLearner);
        }
        let members = self.backend.members().await?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let member = Member {
            id: crate::state_machine::membership::new_member_id(&r.peer_ur_ls, nanos),
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls,
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        let change = Change::Add(member.clone());
        // etcd's strict reconfiguration check: a started quorum must remain
        // with a new (not yet started) voter counted, and every voter must
        // have been connected for a while.
        if !member.is_learner {
            check_started_quorum(&members, NewVoter::Added)?;
        }
        let since = self.active_since();
        let all_up = members
            .voters()
            .all(|m| self.backend.status().connected_since(m.id, since));
        if !all_up {
            return Err(ApiError::Unhealthy);
        }
        // After the strict checks, as etcd (which checks the change itself
        // when applying it).
        members.check(&change)?;
        let after = self.backend.change_membership(&change).await?;
        Ok(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: after,
        })
    }

    async fn remove(&self, r: MemberRemoveRequest) -> Result<MemberRemoveResponse, ApiError> {
        let members = self.backend.members().await?;
        let change = Change::Remove(r.id);
        members.check(&change)?;
        let target = members.get(r.id).cloned();
        if let Some(t) = target.filter(|m| !m.is_learner) {
            // etcd's mayRemoveMember: the started voters left must form a
            // quorum, and so must the active ones (a member that is down
            // already may always go).
            let rest: Vec<&Member> = members.voters().filter(|m| m.id != t.id).collect();
            let quorum = rest.len() / 2 + 1;
            let started = rest.iter().filter(|m| Membership::is_started(m)).count();
            if started < quorum {
                return Err(ApiError::NotEnoughStarted);
            }
            let since = self.active_since();
            let status = self.backend.status();
            let target_down = t.id != status.member_id && !status.connected_since(t.id, since);
            if !target_down {
                let active = rest
                    .iter()
                    .filter(|m| status.connected_since(m.id, since))
                    .count();
                if active < quorum {
                    return Err(ApiError::NotEnoughStarted);
                }
            }
        }
        let after = self.backend.change_membership(&change).await?;
        Ok(MemberRemoveResponse {
            header: self.header(),
            members: after,
        })
    }

    async fn update(&self, r: MemberUpdateRequest) -> Result<MemberUpdateResponse, ApiError> {
        if r.peer_ur_ls.is_empty() || r.peer_ur_ls.iter().any(|u| parse_url_addr(u).is_none()) {
            return Err(ApiError::MemberBadUrls);
        }
        let members = self.backend.members().await?;
        if members.is_removed(r.id) || members.get(r.id).is_none() {
            return Err(ApiError::MemberNotFound);
        }
        members.check_urls_free(r.id, &r.peer_ur_ls)?;
        let req = internal_request::Request::UpdatePeerUrls(UpdatePeerUrlsRequest {
            member_id: r.id,
            peer_urls: r.peer_ur_ls,
        });
        match self
            .backend
            .write(&crate::state_machine::auth::Caller::System, req)
            .await?
        {
            WriteResponse::Members(after) => Ok(MemberUpdateResponse {
                header: self.header(),
                members: after,
            }),
            _ => Err(ApiError::Internal("unexpected membership answer".into())),
        }
    }

    async fn promote(&self, r: MemberPromoteRequest) -> Result<MemberPromoteResponse, ApiError> {
        let members = self.backend.members().await?;
        members.check(&Change::Promote(r.id))?;
        let view = self.backend.raft_view().await?;
        let after = if view.is_leader {
            self.backend.promote_here(r.id).await?
        } else {
            // Only the leader knows whether the learner caught up.
            let leader = members.get(view.leader).ok_or(ApiError::NoLeader)?;
            forward_promote(&self.backend, leader, r.id).await?
        };
        Ok(MemberPromoteResponse {
            header: self.header(),
            members: after,
        })
    }
}

/// Whose start the strict reconfiguration check counts on top of the
/// started voters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewVoter {
    /// A voter being added (not started yet): etcd's IsReadyToAddVotingMember.
    Added,
    /// A learner being promoted (started: it caught up): etcd's
    /// IsReadyToPromoteMember.
    Promoted,
}

/// etcd's strict reconfiguration check: with the new voter counted, the
/// started voters are a quorum. As etcd, a second voter may always join a
/// lone started one (how a one-member cluster grows).
pub fn check_started_quorum(members: &Membership, new: NewVoter) -> Result<(), ApiError> {
    let voters = members.voters().count() + 1;
    let started = members
        .voters()
        .filter(|m| Membership::is_started(m))
        .count()
        + usize::from(new == NewVoter::Promoted);
    if new == NewVoter::Added && started == 1 && voters == 2 {
        return Ok(());
    }
    if started < voters / 2 + 1 {
        return Err(ApiError::NotEnoughStarted);
    }
    Ok(())
}

/// MemberPromote handled by the leader's peer service.
async fn forward_promote(
    backend: &Backend,
    leader: &Member,
    id: u64,
) -> Result<Vec<Member>, ApiError> {
    use crate::proto::metastorepb::peer_client::PeerClient;
    use crate::proto::metastorepb::PromoteRequest;
    let url = leader.peer_ur_ls.first().ok_or(ApiError::NoLeader)?;
    let (endpoint, connector) = backend.dialer().endpoint(url).map_err(ApiError::Internal)?;
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|_| ApiError::Timeout)?;
    match PeerClient::new(channel)
        .promote(PromoteRequest { member_id: id })
        .await
    {
        Ok(r) => Ok(r.into_inner().members),
        Err(s) => Err(ApiError::from_status(&s)),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.backend.admin(&req)?;
        Ok(Response::new(self.add(req.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.backend.admin(&req)?;
        Ok(Response::new(self.remove(req.into_inner()).await?))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.backend.admin(&req)?;
        Ok(Response::new(self.update(req.into_inner()).await?))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self.backend.members().await?;
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: members.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.backend.admin(&req)?;
        Ok(Response::new(self.promote(req.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: u64, started: bool) -> Member {
        Member {
            id,
            name: if started {
                format!("m{id}")
            } else {
                String::new()
            },
            peer_ur_ls: vec![format!("http://127.0.0.1:{id}")],
            client_ur_ls: Vec::new(),
            is_learner: false,
        }
    }

    #[test]
    fn the_started_quorum_is_checked_as_etcd_does() {
        let lone = Membership::new(1, [voter(1, true)]);
        // A one-member cluster grows: a voter may join, a learner be promoted.
        assert_eq!(check_started_quorum(&lone, NewVoter::Added), Ok(()));
        assert_eq!(check_started_quorum(&lone, NewVoter::Promoted), Ok(()));
        // Two voters, one not started: a third voter would leave 1 of 3.
        let half = Membership::new(1, [voter(1, true), voter(2, false)]);
        assert_eq!(
            check_started_quorum(&half, NewVoter::Added),
            Err(ApiError::NotEnoughStarted)
        );
        // ... but a started learner promoted makes 2 of 3.
        assert_eq!(check_started_quorum(&half, NewVoter::Promoted), Ok(()));
        // Two of three started: a fourth voter would need three.
        let three = Membership::new(1, [voter(1, true), voter(2, true), voter(3, false)]);
        assert_eq!(
            check_started_quorum(&three, NewVoter::Added),
            Err(ApiError::NotEnoughStarted)
        );
        let up = Membership::new(1, [voter(1, true), voter(2, true), voter(3, true)]);
        assert_eq!(check_started_quorum(&up, NewVoter::Added), Ok(()));
        let weak = Membership::new(1, [voter(1, true), voter(2, false), voter(3, false)]);
        assert_eq!(
            check_started_quorum(&weak, NewVoter::Promoted),
            Err(ApiError::NotEnoughStarted)
        );
    }
}
