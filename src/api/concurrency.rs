//! etcd's Lock (v3lock) and Election (v3election) services: the recipes of
//! etcd's client `concurrency` package, run on the server against this
//! member's own KV, Lease and Watch (as etcd's servers run them through an
//! in-process client). Every step is an ordinary request, so the services
//! behave the same on every member and survive leader changes like any
//! client would.
//!
//! - A lock `name` is held by the oldest key under `name/` (by creation
//!   revision); a locker writes `name/<lease hex>` and waits for every older
//!   key to be deleted (its holder unlocked, or its lease ended).
//! - An election is the same queue: the oldest key under `name/` leads,
//!   its value is the proclamation.

use std::collections::VecDeque;

use futures::stream::{BoxStream, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Backend;
use crate::error::ApiError;
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, watch_request, Compare, DeleteRangeRequest,
    LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
};
use crate::proto::metastorepb::internal_request::Request as Internal;
use crate::proto::mvccpb::{self, event::EventType};
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::state_machine::{ReadRequest, ReadResponse, WriteResponse};

/// The TTL of the lease a Lock or Campaign without one gets (etcd's
/// session default; nobody keeps it alive).
const SESSION_TTL: i64 = 60;

/// etcd's election errors (plain errors in etcd: gRPC code Unknown).
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER: &str = "\"leader\" field must be provided";

/// The end of the range of keys starting with `prefix` (clientv3's
/// GetPrefixRangeEnd; `"\0"` when every byte is 0xff: all keys from it).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn get(key: &[u8]) -> RequestOp {
    op(request_op::Request::RequestRange(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }))
}

/// The oldest (`ascend`) or youngest key under `prefix`, created at or
/// before `max_create` (0: any).
fn by_create(prefix: &[u8], ascend: bool, max_create: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if ascend {
            range_request::SortOrder::Ascend
        } else {
            range_request::SortOrder::Descend
        } as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

fn create_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    }))
}

/// The range answers of a txn's responses, in order.
fn ranges(r: &TxnResponse) -> Vec<&RangeResponse> {
    r.responses
        .iter()
        .filter_map(|op| match &op.response {
            Some(response_op::Response::ResponseRange(rr)) => Some(rr),
            _ => None,
        })
        .collect()
}

impl Backend {
    async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, ApiError> {
        match self.write(&self.acting, Internal::Txn(t)).await? {
            WriteResponse::Txn(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            _ => Err(ApiError::Internal("unexpected txn answer".into())),
        }
    }

    async fn range(&self, r: RangeRequest) -> Result<RangeResponse, ApiError> {
        match self
            .read(&self.acting, ReadRequest::Range(r), false)
            .await?
        {
            ReadResponse::Range(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            _ => Err(ApiError::Internal("unexpected range answer".into())),
        }
    }

    async fn delete_key(&self, key: &[u8]) -> Result<Option<ResponseHeader>, ApiError> {
        let d = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        match self.write(&self.acting, Internal::DeleteRange(d)).await? {
            WriteResponse::DeleteRange(mut r) => {
                self.fill(&mut r.header);
                Ok(r.header)
            }
            _ => Err(ApiError::Internal("unexpected delete answer".into())),
        }
    }

    /// etcd's session: the given lease, or a fresh one of 60 s that nobody
    /// keeps alive.
    async fn session_lease(&self, lease: i64) -> Result<i64, ApiError> {
        if lease != 0 {
            return Ok(lease);
        }
        let id = (self.next_id() & (i64::MAX as u64)) as i64;
        let ttl = SESSION_TTL.max(self.min_lease_ttl());
        match self
            .write(
                &self.acting,
                Internal::LeaseGrant(LeaseGrantRequest { ttl, id }),
            )
            .await?
        {
            WriteResponse::LeaseGrant(r) => Ok(r.id),
            _ => Err(ApiError::Internal("unexpected lease grant answer".into())),
        }
    }

    /// Waits until `key` is deleted (watching from revision `rev`).
    async fn wait_delete(&self, key: &[u8], rev: i64) -> Result<(), ApiError> {
        let mut w = ServerWatch::open(self, key, &[], rev).await?;
        loop {
            let (_, ev) = w.next().await?;
            if ev.r#type == EventType::Delete as i32 {
                return Ok(());
            }
        }
    }

    /// Waits until no key under `prefix` created at or before `max_create`
    /// is left; answers the header of the read that found none.
    async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create: i64,
    ) -> Result<Option<ResponseHeader>, ApiError> {
        loop {
            let r = self.range(by_create(prefix, false, max_create)).await?;
            let Some(last) = r.kvs.first() else {
                return Ok(r.header);
            };
            let rev = r.header.as_ref().map_or(0, |h| h.revision);
            self.wait_delete(&last.key, rev).await?;
        }
    }
}

/// A watch this server runs for itself, through the same hub as clients'.
struct ServerWatch {
    _requests: mpsc::Sender<Result<WatchRequest, Status>>,
    responses: mpsc::Receiver<Vec<crate::watch::WatchOut>>,
    pending: VecDeque<(i64, mvccpb::Event)>,
}

impl ServerWatch {
    async fn open(
        backend: &Backend,
        key: &[u8],
        end: &[u8],
        from: i64,
    ) -> Result<ServerWatch, ApiError> {
        let (requests, rx) = mpsc::channel(1);
        let (outbox, responses) = mpsc::channel(16);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: key.to_vec(),
                    range_end: end.to_vec(),
                    start_revision: from,
                    ..Default::default()
                },
            )),
        };
        requests
            .send(Ok(create))
            .await
            .map_err(|_| ApiError::Stopped)?;
        backend
            .open_watch(
                outbox,
                ReceiverStream::new(rx).boxed(),
                backend.acting.clone(),
            )
            .await?;
        Ok(ServerWatch {
            _requests: requests,
            responses,
            pending: VecDeque::new(),
        })
    }

    /// The next event and the revision of the response that carried it.
    async fn next(&mut self) -> Result<(i64, mvccpb::Event), ApiError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let round = self.responses.recv().await.ok_or(ApiError::Stopped)?;
            for out in round {
                let r = &out.resp;
                if r.canceled {
                    return Err(if r.compact_revision > 0 {
                        ApiError::Compacted
                    } else {
                        ApiError::Internal(format!("watch canceled: {}", r.cancel_reason))
                    });
                }
                let rev = r.header.as_ref().map_or(0, |h| h.revision);
                for e in out.events() {
                    let ev = mvccpb::Event::decode(e.as_ref())
                        .map_err(|e| ApiError::Internal(format!("watch event: {e}")))?;
                    self.pending.push_back((rev, ev));
                }
            }
        }
    }
}

/// Deletes a key if the request that wrote it does not finish (the client
/// went away while waiting), as etcd's recipes clean up on cancellation.
struct Cleanup {
    backend: Backend,
    key: Option<Vec<u8>>,
}

impl Cleanup {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let backend = self.backend.clone();
            tokio::spawn(async move {
                if let Err(e) = backend.delete_key(&key).await {
                    tracing::warn!(error = %e, "cannot remove an abandoned lock or campaign key");
                }
            });
        }
    }
}

/// Writes `key` under `prefix` with `lease` unless it exists (then keeps
/// it); answers (its creation revision, the txn, the oldest key's creation
/// revision).
async fn enqueue(
    backend: &Backend,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, TxnResponse, Option<mvccpb::KeyValue>), ApiError> {
    let oldest = op(request_op::Request::RequestRange(by_create(
        prefix, true, 0,
    )));
    let t = TxnRequest {
        compare: vec![create_is(key, 0)],
        success: vec![put(key, value, lease), oldest.clone()],
        failure: vec![get(key), oldest],
    };
    let r = backend.txn(t).await?;
    let found = ranges(&r);
    let mine = if r.succeeded {
        r.header.as_ref().map_or(0, |h| h.revision)
    } else {
        found
            .first()
            .and_then(|rr| rr.kvs.first())
            .map_or(0, |kv| kv.create_revision)
    };
    let owner = found.last().and_then(|rr| rr.kvs.first()).cloned();
    Ok((mine, r, owner))
}

/// The Lock service.
pub struct LockService {
    backend: Backend,
}

impl LockService {
    /// A Lock service over the backend.
    pub fn new(backend: Backend) -> LockService {
        LockService { backend }
    }

    async fn lock(&self, r: LockRequest) -> Result<LockResponse, ApiError> {
        let lease = self.backend.session_lease(r.lease).await?;
        let mut prefix = r.name.clone();
        prefix.push(b'/');
        let key = [prefix.as_slice(), format!("{lease:x}").as_bytes()].concat();
        let (mine, txn, owner) = enqueue(&self.backend, &prefix, &key, b"", lease).await?;
        if owner.as_ref().is_some_and(|o| o.create_revision == mine) {
            return Ok(LockResponse {
                header: txn.header,
                key,
            });
        }
        let cleanup = Cleanup {
            backend: self.backend.clone(),
            key: Some(key.clone()),
        };
        let header = self.backend.wait_deletes(&prefix, mine - 1).await?;
        cleanup.disarm();
        Ok(LockResponse { header, key })
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let this = LockService {
            backend: self.backend.acting_for(&req).map_err(plain)?,
        };
        Ok(Response::new(
            LockService::lock(&this, req.into_inner())
                .await
                .map_err(plain)?,
        ))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let header = self
            .backend
            .acting_for(&req)
            .map_err(plain)?
            .delete_key(&req.into_inner().key)
            .await
            .map_err(plain)?;
        Ok(Response::new(UnlockResponse { header }))
    }
}

/// The Election service.
pub struct ElectionService {
    backend: Backend,
}

fn election_error(msg: &str) -> Status {
    Status::unknown(msg)
}

/// etcd's lock and election servers pass their client's errors on as plain
/// errors: gRPC code Unknown, etcd's message.
fn plain(e: ApiError) -> Status {
    Status::unknown(e.to_string())
}

fn leader_key(l: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    l.ok_or_else(|| election_error(MISSING_LEADER))
}

impl ElectionService {
    /// An Election service over the backend.
    pub fn new(backend: Backend) -> ElectionService {
        ElectionService { backend }
    }

    async fn campaign(&self, r: CampaignRequest) -> Result<CampaignResponse, Status> {
        let lease = self.backend.session_lease(r.lease).await.map_err(plain)?;
        let mut prefix = r.name.clone();
        prefix.push(b'/');
        let key = [prefix.as_slice(), format!("{lease:x}").as_bytes()].concat();
        let (rev, txn, _) = enqueue(&self.backend, &prefix, &key, &r.value, lease)
            .await
            .map_err(plain)?;
        let cleanup = Cleanup {
            backend: self.backend.clone(),
            key: Some(key.clone()),
        };
        if !txn.succeeded {
            // Campaigning again with the same lease: the key stays, the
            // value is proclaimed.
            let kept = ranges(&txn)
                .first()
                .and_then(|rr| rr.kvs.first())
                .map(|kv| kv.value.clone());
            if kept.as_deref() != Some(r.value.as_slice()) {
                // Not leading with that key any more: resign (the cleanup
                // deletes it) and fail, as etcd does.
                self.proclaim_at(&key, rev, lease, &r.value)
                    .await
                    .map_err(plain)??;
            }
        }
        self.backend
            .wait_deletes(&prefix, rev - 1)
            .await
            .map_err(plain)?;
        cleanup.disarm();
        Ok(CampaignResponse {
            header: txn.header,
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        })
    }

    /// Overwrites the leader's value if it still leads; the txn's header.
    async fn proclaim_at(
        &self,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: &[u8],
    ) -> Result<Result<Option<ResponseHeader>, Status>, ApiError> {
        let t = TxnRequest {
            compare: vec![create_is(key, rev)],
            success: vec![put(key, value, lease)],
            failure: Vec::new(),
        };
        let r = self.backend.txn(t).await?;
        Ok(if r.succeeded {
            Ok(r.header)
        } else {
            Err(election_error(NOT_LEADER))
        })
    }

    async fn leader(&self, name: &[u8]) -> Result<RangeResponse, ApiError> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        self.backend.range(by_create(&prefix, true, 0)).await
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let this = ElectionService {
            backend: self.backend.acting_for(&req).map_err(plain)?,
        };
        Ok(Response::new(
            ElectionService::campaign(&this, req.into_inner()).await?,
        ))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let this = ElectionService {
            backend: self.backend.acting_for(&req).map_err(plain)?,
        };
        let r = req.into_inner();
        let l = leader_key(r.leader)?;
        let header = this
            .proclaim_at(&l.key, l.rev, l.lease, &r.value)
            .await
            .map_err(plain)??;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let this = ElectionService {
            backend: self.backend.acting_for(&req).map_err(plain)?,
        };
        let r = ElectionService::leader(&this, &req.into_inner().name)
            .await
            .map_err(plain)?;
        let kv = r
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| election_error(NO_LEADER))?;
        Ok(Response::new(LeaderResponse {
            header: r.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = BoxStream<'static, Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let backend = self.backend.acting_for(&req).map_err(plain)?;
        let name = req.into_inner().name;
        tokio::spawn(async move {
            // Ends when the client goes, even while no leader changes.
            let gone = tx.clone();
            tokio::select! {
                () = gone.closed() => {}
                r = observe(&backend, &name, &tx) => {
                    if let Err(e) = r {
                        let _ = tx.send(Err(plain(e))).await;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let backend = self.backend.acting_for(&req).map_err(plain)?;
        let l = leader_key(req.into_inner().leader)?;
        let t = TxnRequest {
            compare: vec![create_is(&l.key, l.rev)],
            success: vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: l.key.clone(),
                    ..Default::default()
                },
            ))],
            failure: Vec::new(),
        };
        let r = backend.txn(t).await.map_err(plain)?;
        Ok(Response::new(ResignResponse { header: r.header }))
    }
}

/// Every proclamation of every leader in turn, until the client goes
/// (etcd's `Election.Observe`).
async fn observe(
    backend: &Backend,
    name: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), ApiError> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    loop {
        let r = backend.range(by_create(&prefix, true, 0)).await?;
        let (mut header, kv) = match r.kvs.into_iter().next() {
            Some(kv) => (r.header, kv),
            None => {
                // No leader yet: the first key put under the prefix leads.
                let from = r.header.as_ref().map_or(0, |h| h.revision);
                let mut w = ServerWatch::open(backend, &prefix, &prefix_end(&prefix), from).await?;
                loop {
                    let (_, ev) = w.next().await?;
                    if ev.r#type == EventType::Put as i32 {
                        let kv = ev.kv.unwrap_or_default();
                        break (backend.header(kv.mod_revision), kv);
                    }
                }
            }
        };
        let from = header.as_ref().map_or(0, |h| h.revision) + 1;
        let key = kv.key.clone();
        if tx
            .send(Ok(LeaderResponse {
                header: header.take(),
                kv: Some(kv),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
        // Follow this leader's proclamations until its key goes.
        let mut w = ServerWatch::open(backend, &key, &[], from).await?;
        loop {
            let (rev, ev) = w.next().await?;
            if ev.r#type == EventType::Delete as i32 {
                break;
            }
            let sent = tx
                .send(Ok(LeaderResponse {
                    header: backend.header(rev),
                    kv: ev.kv,
                }))
                .await;
            if sent.is_err() {
                return Ok(());
            }
        }
    }
}
