//! The `/v3/...` JSON gateway on the client port, as etcd serves it
//! (grpc-gateway's mapping): `POST /v3/kv/range` with a JSON `RangeRequest`
//! answers a JSON `RangeResponse`. Proto3 JSON with the proto field names:
//! bytes in base64, 64-bit integers as strings, enums by name, fields at
//! their default value left out. Errors as grpc-gateway writes them:
//! `{"error":msg,"code":grpc_code,"message":msg}` with its HTTP status.
//! `/v3/watch` and `/v3/lease/keepalive` take the request(s) in the body and
//! stream `{"result":...}` lines for as long as the client stays.
//!
//! Every call goes to the same service code as its gRPC twin.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use prost::Message as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::auth::AuthService;
use super::cluster::ClusterService;
use super::concurrency::{ElectionService, LockService};
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::MaintenanceService;
use super::Backend;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest, WatchResponse};
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;

/// The services the gateway calls.
struct Services {
    backend: Backend,
    kv: KvService,
    lease: LeaseService,
    cluster: ClusterService,
    maintenance: MaintenanceService,
    lock: LockService,
    election: ElectionService,
    auth: AuthService,
}

type S = State<Arc<Services>>;

/// grpc-gateway's HTTP status for a gRPC code (the mapping of the version
/// etcd 3.4 builds with).
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// grpc-gateway's error body, fields in its order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

fn error(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        code: status.code() as i32,
        message: status.message(),
    };
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => error(&Status::internal(e.to_string())),
    }
}

/// The request in a body (empty: every field at its default).
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A gRPC request carrying what the gateway passes on from the HTTP
/// request: the `Authorization` header (the token, grpc-gateway's mapping).
fn grpc_request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes()) {
            req.metadata_mut().insert("authorization", v);
        }
    }
    req
}

/// Parses, calls, answers.
async fn unary<Req, Resp, F, Fut>(headers: HeaderMap, body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    match call(grpc_request(&headers, req)).await {
        Ok(resp) => json(resp.get_ref()),
        Err(s) => error(&s),
    }
}

/// Declares a route handler calling `$svc.$method`.
macro_rules! route {
    ($name:ident, $svc:ident, $trait:ident :: $method:ident) => {
        async fn $name(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
            unary(headers, body, |r| $trait::$method(&s.$svc, r)).await
        }
    };
}

route!(kv_range, kv, Kv::range);
route!(kv_put, kv, Kv::put);
route!(kv_delete_range, kv, Kv::delete_range);
route!(kv_txn, kv, Kv::txn);
route!(kv_compact, kv, Kv::compact);
route!(lease_grant, lease, Lease::lease_grant);
route!(lease_revoke, lease, Lease::lease_revoke);
route!(lease_time_to_live, lease, Lease::lease_time_to_live);
route!(lease_leases, lease, Lease::lease_leases);
route!(member_add, cluster, Cluster::member_add);
route!(member_remove, cluster, Cluster::member_remove);
route!(member_update, cluster, Cluster::member_update);
route!(member_list, cluster, Cluster::member_list);
route!(member_promote, cluster, Cluster::member_promote);
route!(status, maintenance, Maintenance::status);
route!(alarm, maintenance, Maintenance::alarm);
route!(defragment, maintenance, Maintenance::defragment);
route!(hash, maintenance, Maintenance::hash);
route!(hash_kv, maintenance, Maintenance::hash_kv);
route!(move_leader, maintenance, Maintenance::move_leader);
route!(lock, lock, Lock::lock);
route!(unlock, lock, Lock::unlock);
route!(campaign, election, Election::campaign);
route!(proclaim, election, Election::proclaim);
route!(leader, election, Election::leader);
route!(resign, election, Election::resign);
route!(auth_enable, auth, Auth::auth_enable);
route!(auth_disable, auth, Auth::auth_disable);
route!(auth_status, auth, Auth::auth_status);
route!(authenticate, auth, Auth::authenticate);
route!(user_add, auth, Auth::user_add);
route!(user_get, auth, Auth::user_get);
route!(user_list, auth, Auth::user_list);
route!(user_delete, auth, Auth::user_delete);
route!(user_change_password, auth, Auth::user_change_password);
route!(user_grant_role, auth, Auth::user_grant_role);
route!(user_revoke_role, auth, Auth::user_revoke_role);
route!(role_add, auth, Auth::role_add);
route!(role_get, auth, Auth::role_get);
route!(role_list, auth, Auth::role_list);
route!(role_delete, auth, Auth::role_delete);
route!(role_grant_permission, auth, Auth::role_grant_permission);
route!(role_revoke_permission, auth, Auth::role_revoke_permission);

/// The JSON objects in a body, one after another (a streaming request).
fn parse_many<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, Status> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<_, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A line of a streaming answer.
#[derive(Serialize)]
struct StreamLine<T> {
    result: T,
}

/// Streams `{"result":...}` lines from `rx` until the client goes.
fn stream_lines<T: Serialize + Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> Response {
    let lines = ReceiverStream::new(rx).map(|item| {
        let line = match item {
            Ok(v) => serde_json::to_string(&StreamLine { result: v }),
            Err(s) => Ok(serde_json::json!({
                "error": {"grpc_code": s.code() as i32, "http_code": http_status(s.code()).as_u16(), "message": s.message()}
            })
            .to_string()),
        };
        line.map(|mut l| {
            l.push('\n');
            Bytes::from(l)
        })
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `/v3/watch`: the body's WatchRequests (usually one create request) open
/// a watch stream; its responses stream back as lines.
async fn watch(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    let requests = match parse_many::<WatchRequest>(&body) {
        Ok(r) => r,
        Err(st) => return error(&st),
    };
    let caller = match s.backend.caller(grpc_request(&headers, ()).metadata()) {
        Ok(c) => c,
        Err(e) => return error(&Status::from(e)),
    };
    let (outbox, rx) = mpsc::channel(super::watch::OUTBOX);
    // The requests, then nothing more for as long as the client stays.
    let requests = futures::stream::iter(requests.into_iter().map(Ok))
        .chain(futures::stream::pending())
        .boxed();
    if let Err(e) = s.backend.open_watch(outbox, requests, caller).await {
        return error(&Status::from(e));
    }
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut rounds = ReceiverStream::new(rx);
        while let Some(round) = rounds.next().await {
            for wire in round {
                // The wire form encodes exactly as a WatchResponse.
                let resp = WatchResponse::decode(wire.encode_to_vec().as_slice())
                    .map_err(|e| Status::internal(e.to_string()));
                if tx.send(resp).await.is_err() {
                    return;
                }
            }
        }
    });
    stream_lines(out)
}

/// `/v3/lease/keepalive`: each LeaseKeepAliveRequest in the body is sent;
/// the answers stream back.
async fn keep_alive(State(s): S, body: Bytes) -> Response {
    let requests = match parse_many::<LeaseKeepAliveRequest>(&body) {
        Ok(r) => r,
        Err(st) => return error(&st),
    };
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        for r in requests {
            let ttl = match s.backend.lease_renew(r.id).await {
                Ok(ttl) => ttl,
                Err(crate::error::ApiError::LeaseNotFound) => 0,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            let resp = crate::proto::etcdserverpb::LeaseKeepAliveResponse {
                header: s.backend.header(s.backend.status().revision()),
                id: r.id,
                ttl,
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    });
    stream_lines(out)
}

/// The gateway's routes (etcd's paths, and the `/v3/kv/lease/...` aliases
/// etcd keeps).
pub fn router(backend: Backend) -> Router {
    let services = Arc::new(Services {
        kv: KvService::new(backend.clone()),
        lease: LeaseService::new(backend.clone()),
        cluster: ClusterService::new(backend.clone()),
        maintenance: MaintenanceService::new(backend.clone()),
        lock: LockService::new(backend.clone()),
        election: ElectionService::new(backend.clone()),
        auth: AuthService::new(backend.clone()),
        backend,
    });
    Router::new()
        .route("/v3/kv/range", post(kv_range))
        .route("/v3/kv/put", post(kv_put))
        .route("/v3/kv/deleterange", post(kv_delete_range))
        .route("/v3/kv/txn", post(kv_txn))
        .route("/v3/kv/compaction", post(kv_compact))
        .route("/v3/watch", post(watch))
        .route("/v3/lease/grant", post(lease_grant))
        .route("/v3/lease/revoke", post(lease_revoke))
        .route("/v3/kv/lease/revoke", post(lease_revoke))
        .route("/v3/lease/timetolive", post(lease_time_to_live))
        .route("/v3/kv/lease/timetolive", post(lease_time_to_live))
        .route("/v3/lease/leases", post(lease_leases))
        .route("/v3/kv/lease/leases", post(lease_leases))
        .route("/v3/lease/keepalive", post(keep_alive))
        .route("/v3/cluster/member/add", post(member_add))
        .route("/v3/cluster/member/remove", post(member_remove))
        .route("/v3/cluster/member/update", post(member_update))
        .route("/v3/cluster/member/list", post(member_list))
        .route("/v3/cluster/member/promote", post(member_promote))
        .route("/v3/maintenance/status", post(status))
        .route("/v3/maintenance/alarm", post(alarm))
        .route("/v3/maintenance/defragment", post(defragment))
        .route("/v3/maintenance/hash", post(hash))
        .route("/v3/maintenance/hashkv", post(hash_kv))
        .route("/v3/maintenance/transfer-leadership", post(move_leader))
        .route("/v3/lock/lock", post(lock))
        .route("/v3/lock/unlock", post(unlock))
        .route("/v3/election/campaign", post(campaign))
        .route("/v3/election/proclaim", post(proclaim))
        .route("/v3/election/leader", post(leader))
        .route("/v3/election/resign", post(resign))
        .route("/v3/auth/enable", post(auth_enable))
        .route("/v3/auth/disable", post(auth_disable))
        .route("/v3/auth/status", post(auth_status))
        .route("/v3/auth/authenticate", post(authenticate))
        .route("/v3/auth/user/add", post(user_add))
        .route("/v3/auth/user/get", post(user_get))
        .route("/v3/auth/user/list", post(user_list))
        .route("/v3/auth/user/delete", post(user_delete))
        .route("/v3/auth/user/changepw", post(user_change_password))
        .route("/v3/auth/user/grant", post(user_grant_role))
        .route("/v3/auth/user/revoke", post(user_revoke_role))
        .route("/v3/auth/role/add", post(role_add))
        .route("/v3/auth/role/get", post(role_get))
        .route("/v3/auth/role/list", post(role_list))
        .route("/v3/auth/role/delete", post(role_delete))
        .route("/v3/auth/role/grant", post(role_grant_permission))
        .route("/v3/auth/role/revoke", post(role_revoke_permission))
        .with_state(services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{
        LeaseKeepAliveRequest, PutRequest, RangeRequest, TxnRequest, WatchRequest,
    };

    /// Every decoder the gateway runs on a body.
    fn parse_every_way(body: &[u8]) {
        let _ = parse::<RangeRequest>(body);
        let _ = parse::<PutRequest>(body);
        let _ = parse::<TxnRequest>(body);
        let _ = parse_many::<WatchRequest>(body);
        let _ = parse_many::<LeaseKeepAliveRequest>(body);
    }

    /// Deep nesting is refused by the JSON parser's depth limit, not a
    /// stack overflow.
    #[test]
    fn deeply_nested_json_is_refused() {
        let deep = format!(r#"{{"success":[{}]}}"#, "[".repeat(100_000));
        assert!(parse::<TxnRequest>(deep.as_bytes()).is_err());
        parse_every_way(deep.as_bytes());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Bytes, JSON-looking text and real requests with a field's value
        /// replaced: InvalidArgument or a request, never a panic.
        #[test]
        fn hostile_json_bodies_never_panic(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            text in r#"[{}\[\]":,0-9a-z_\-+.eE\\ ]{0,256}"#,
            field in "(key|range_end|value|lease|limit|revision|compare|success|failure|request_put|create_request|watch_id|ID|sort_order|target|result)",
            value in r#"(-?[0-9]{1,30}|"[A-Za-z0-9+/=]{0,64}"|null|true|\[\]|\{\}|1e999|"\\u0000")"#,
        ) {
            parse_every_way(&raw);
            parse_every_way(text.as_bytes());
            let one = format!(r#"{{"key":"Zm9v","{field}":{value}}}"#);
            parse_every_way(one.as_bytes());
            let nested = format!(r#"{{"success":[{{"{field}":{value}}}],"compare":[{{"{field}":{value}}}]}}"#);
            parse_every_way(nested.as_bytes());
        }
    }
}
