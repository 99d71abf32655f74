//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive (a stream,
//! one session actor each), LeaseTimeToLive, LeaseLeases.
//!
//! Grants and revocations go through Raft. Keep-alives and TTL queries are
//! the leader's business (its Lessor's clock decides expiry): a follower
//! forwards them to the leader's peer service.

use crate::actors::propose::REQUEST_TIMEOUT;

use actix::prelude::*;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Backend;
use crate::actors::messages::LeaseKeys;
use crate::actors::messages::{LeasesByExpiry, Renew, TimeToLive};
use crate::error::ApiError;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::metastorepb::internal_request::Request as Internal;
use crate::state_machine::lease::MAX_TTL;
use crate::state_machine::WriteResponse;

/// Keep-alive answers a stream may hold for a client that does not read.
const OUTBOX: usize = 64;
/// Between two tries to reach the leader.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs `ask` until it answers, or fails with an error a new or reachable
/// leader would not fix, or the request timeout passes (as etcd's followers
/// retry renewals).
async fn until_leader_answers<T, F, Fut>(mut ask: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match ask().await {
            Err(e) if retry(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Errors that pass once a leader is elected and reachable.
fn retry(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::NoLeader | ApiError::NotLeader | ApiError::LeaderChanged | ApiError::Stopped
    )
}

/// A forwarded call's failure: the leader's own answer, or (the leader
/// could not be reached) "no leader" for now.
fn forwarding_error(s: &Status) -> ApiError {
    match s.code() {
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded => {
            let e = ApiError::from_status(s);
            if matches!(e, ApiError::Internal(_)) {
                ApiError::NoLeader
            } else {
                e
            }
        }
        _ => ApiError::from_status(s),
    }
}

impl Backend {
    /// etcd's minimum lease TTL: one and a half election timeouts, rounded
    /// up to whole seconds (2 s with the defaults).
    pub fn min_lease_ttl(&self) -> i64 {
        (self.election_timeout_ms * 3 / 2).div_ceil(1000) as i64
    }

    fn is_leader(&self) -> bool {
        let st = self.status();
        st.leader() == st.member_id
    }

    /// Renews a lease on the leader; its TTL (LeaseNotFound if it is gone).
    /// Without a leader, or while the leader cannot be reached, it tries
    /// again until the request timeout (as etcd's followers do).
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ApiError> {
        until_leader_answers(|| async {
            if self.is_leader() {
                return self.lease_renew_here(id).await;
            }
            let mut peer = self.leader_peer().await?;
            match peer.lease_renew(LeaseKeepAliveRequest { id }).await {
                Ok(resp) if resp.get_ref().ttl <= 0 => Err(ApiError::LeaseNotFound),
                Ok(resp) => Ok(resp.into_inner().ttl),
                Err(s) => Err(forwarding_error(&s)),
            }
        })
        .await
    }

    /// The keys lease `id` holds, in order.
    pub async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, ApiError> {
        self.core
            .apply
            .send(LeaseKeys(id))
            .await
            .map_err(|_| ApiError::Stopped)
    }

    /// Every lease's ID, soonest expiry first.
    pub async fn leases_by_expiry(&self) -> Result<Vec<i64>, ApiError> {
        self.core
            .lessor
            .send(LeasesByExpiry)
            .await
            .map_err(|_| ApiError::Stopped)
    }

    /// Renews a lease here, if this member leads.
    pub async fn lease_renew_here(&self, id: i64) -> Result<i64, ApiError> {
        self.core
            .lessor
            .send(Renew(id))
            .await
            .map_err(|_| ApiError::Stopped)?
    }

    /// etcd's check before LeaseTimeToLive lists a lease's keys: the
    /// caller holds the root role or may write every key it holds.
    pub async fn check_lease_keys(
        &self,
        caller: &crate::state_machine::auth::Caller,
        id: i64,
    ) -> Result<(), ApiError> {
        let view = self.auth_view();
        if view.check_admin(caller).is_ok() {
            return Ok(());
        }
        for key in self.lease_keys(id).await? {
            view.check(caller, &key, &[], crate::state_machine::auth::Access::Write)?;
        }
        Ok(())
    }

    /// LeaseTimeToLive, answered by the leader (retried as renewals are).
    pub async fn lease_time_to_live(
        &self,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ApiError> {
        until_leader_answers(|| async {
            if self.is_leader() {
                return self.lease_time_to_live_here(&r).await;
            }
            let mut peer = self.leader_peer().await?;
            match peer.lease_time_to_live(r).await {
                Ok(resp) => {
                    let mut resp = resp.into_inner();
                    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                    resp.header = self.header(revision);
                    Ok(resp)
                }
                Err(s) => Err(forwarding_error(&s)),
            }
        })
        .await
    }

    /// LeaseTimeToLive here, if this member leads. An unknown lease gets
    /// TTL -1 (etcd's answer, not an error).
    pub async fn lease_time_to_live_here(
        &self,
        r: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ApiError> {
        let ttl = self
            .core
            .lessor
            .send(TimeToLive(r.id))
            .await
            .map_err(|_| ApiError::Stopped)?;
        let (left, granted) = match ttl {
            Ok(t) => t,
            Err(ApiError::LeaseNotFound) => {
                return Ok(LeaseTimeToLiveResponse {
                    header: self.header(self.status().revision()),
                    id: r.id,
                    ttl: -1,
                    ..Default::default()
                })
            }
            Err(e) => return Err(e),
        };
        let keys = if r.keys {
            self.lease_keys(r.id).await?
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header: self.header(self.status().revision()),
            id: r.id,
            ttl: left,
            granted_ttl: granted,
            keys,
        })
    }
}

/// The Lease service.
pub struct LeaseService {
    backend: Backend,
}

impl LeaseService {
    /// A Lease service over the backend.
    pub fn new(backend: Backend) -> LeaseService {
        LeaseService { backend }
    }

    async fn grant(&self, r: LeaseGrantRequest) -> Result<LeaseGrantResponse, ApiError> {
        if r.ttl > MAX_TTL {
            return Err(ApiError::LeaseTtlTooLarge);
        }
        let id = if r.id == 0 {
            // etcd: a fresh request id, made positive.
            (self.backend.next_id() & (i64::MAX as u64)) as i64
        } else {
            r.id
        };
        let ttl = r.ttl.max(self.backend.min_lease_ttl());
        match self
            .backend
            .write(
                &crate::state_machine::auth::Caller::System,
                Internal::LeaseGrant(LeaseGrantRequest { ttl, id }),
            )
            .await?
        {
            WriteResponse::LeaseGrant(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(ApiError::Internal("unexpected lease grant answer".into())),
        }
    }

    async fn revoke(
        &self,
        caller: &crate::state_machine::auth::Caller,
        r: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, ApiError> {
        match self.backend.write(caller, Internal::LeaseRevoke(r)).await? {
            WriteResponse::LeaseRevoke(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(ApiError::Internal("unexpected lease revoke answer".into())),
        }
    }

    async fn leases(&self) -> Result<LeaseLeasesResponse, ApiError> {
        // As etcd: soonest expiry first.
        let ids = self.backend.leases_by_expiry().await?;
        Ok(LeaseLeasesResponse {
            header: self.backend.header(self.backend.status().revision()),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        })
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let r = self.grant(req.into_inner()).await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.backend.caller_of(&req)?;
        let r = self.revoke(&caller, req.into_inner()).await;
        r.map(Response::new).map_err(Status::from)
    }

    type LeaseKeepAliveStream = BoxStream<'static, Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let requests = req.into_inner();
        let session = KeepAliveSession {
            backend: self.backend.clone(),
            out: tx,
        };
        self.backend.start_session(move |ctx| {
            ctx.add_stream(requests);
            session
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = self.backend.caller_of(&req)?;
        let r = req.into_inner();
        if r.keys {
            self.backend.check_lease_keys(&caller, r.id).await?;
        }
        let r = self.backend.lease_time_to_live(r).await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let r = self.leases().await;
        r.map(Response::new).map_err(Status::from)
    }
}

/// One LeaseKeepAlive stream (the design's client-session actor): each
/// request renews its lease (here on the leader, else forwarded to it) and
/// is answered in order. One request at a time: a client sending faster
/// than renewals are answered is read no faster.
struct KeepAliveSession {
    backend: Backend,
    out: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
}

impl Actor for KeepAliveSession {
    type Context = Context<Self>;
}

impl StreamHandler<Result<LeaseKeepAliveRequest, Status>> for KeepAliveSession {
    fn handle(&mut self, item: Result<LeaseKeepAliveRequest, Status>, ctx: &mut Context<Self>) {
        let Ok(req) = item else {
            ctx.stop();
            return;
        };
        let backend = self.backend.clone();
        let out = self.out.clone();
        let work = async move {
            let answer = match backend.lease_renew(req.id).await {
                Ok(ttl) => Ok(ttl),
                // etcd: a lease that is gone is renewed to TTL 0.
                Err(ApiError::LeaseNotFound) => Ok(0),
                Err(e) => Err(Status::from(e)),
            };
            let failed = answer.is_err();
            let resp = answer.map(|ttl| LeaseKeepAliveResponse {
                header: backend.header(backend.status().revision()),
                id: req.id,
                ttl,
            });
            // A client gone or an error that ends the stream: stop reading.
            out.send(resp).await.is_err() || failed
        };
        ctx.wait(work.into_actor(self).map(|stop, _, ctx| {
            if stop {
                ctx.stop();
            }
        }));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
