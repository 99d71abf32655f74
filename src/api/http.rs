//! HTTP on the client port: `/metrics` (Prometheus), `/health` and `/version`
//! (etcd's JSON), `/livez` and `/readyz` (etcd's plain-text checks); with `--experimental-fault-injection`, the test-only fault
//! switches of the applier, the WAL and the engine (network faults between
//! members come from outside the process: the tests' TCP proxy).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use super::{Backend, ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::proto::etcdserverpb::{AlarmType, RangeRequest};
use crate::state_machine::ReadRequest;

/// What `--listen-metrics-urls` serves.
pub fn metrics_router(backend: Backend) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(read_whole_body))
        .with_state(backend)
}

/// The HTTP routes.
pub fn router(backend: Backend, fault_injection: bool) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version));
    if fault_injection {
        r = r
            .route("/debug/fault/diverge", post(diverge))
            .route("/debug/fault/slow-apply", post(slow_apply))
            .route("/debug/fault/fail-wal-sync", post(fail_wal_sync))
            .route("/debug/fault/fail-commit", post(fail_commit));
    }
    r.layer(axum::middleware::from_fn(read_whole_body))
        .with_state(backend)
}

/// The most of a body these handlers ignore that is read anyway (Go's
/// net/http reads up to 256 KiB of an unread body).
const UNREAD_BODY_LIMIT: usize = 256 << 10;

/// Reads a request's body before its handler runs, though these handlers
/// ignore it: a GET that carries one (Patroni sends `GET /version` with
/// `{}`) must leave its keep-alive connection usable. hyper, after the
/// response, drains an unread body only if its bytes already arrived, and
/// closes the connection otherwise: the request pipelined behind it got no
/// answer whenever the body came a moment after the headers. A body over
/// the limit is left, and the connection closes after the answer (as etcd
/// closes it).
async fn read_whole_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, UNREAD_BODY_LIMIT)
        .await
        .map(axum::body::Body::from)
        .unwrap_or_else(|_| axum::body::Body::empty());
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

/// Sets one of the member's fault switches and logs it.
fn switch(flag: &std::sync::atomic::AtomicBool, on: bool, what: &str) {
    flag.store(on, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!("fault injection: {what}");
}

/// `?ms=N`: every applied batch takes N ms more from now on (0: back to
/// normal), as on a slow disk.
async fn slow_apply(
    State(backend): State<Backend>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let Some(ms) = q.get("ms").and_then(|v| v.parse::<u64>().ok()) else {
        return (StatusCode::BAD_REQUEST, "ms is required\n");
    };
    backend
        .faults()
        .slow_apply_ms
        .store(ms, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(ms, "fault injection: slow apply");
    (StatusCode::OK, "ok\n")
}

/// Writes `?key=K&value=V` into this member's store only, bypassing Raft,
/// at its next revision: its history diverges from the other members' (what
/// the corruption check must catch).
async fn diverge(
    State(backend): State<Backend>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let (Some(key), Some(value)) = (q.get("key"), q.get("value")) else {
        return (StatusCode::BAD_REQUEST, "key and value are required\n");
    };
    let msg = crate::actors::messages::FaultPut {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    };
    match backend.fault_put(msg).await {
        Ok(()) => {
            tracing::warn!(key = %key, "fault injection: wrote outside Raft");
            (StatusCode::OK, "diverged\n")
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n"),
    }
}

/// Fails the WAL writer's next fsync: the member must stop on its fatal
/// path, alone (other members in the process go on).
async fn fail_wal_sync(State(backend): State<Backend>) -> impl IntoResponse {
    switch(
        &backend.faults().fail_wal_sync,
        true,
        "the next WAL fsync fails",
    );
    "failing\n"
}

/// Fails the engine's next commit of an applied batch: the member stops
/// through the fatal path, alone.
async fn fail_commit(State(backend): State<Backend>) -> impl IntoResponse {
    switch(
        &backend.faults().fail_commit,
        true,
        "the next engine commit fails",
    );
    "failing\n"
}

async fn metrics(State(backend): State<Backend>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        backend.metrics().render(),
    )
}

/// The outcome of one health check (etcd's names and reasons).
struct Check {
    name: &'static str,
    failure: Option<String>,
}

/// A read of a key nobody writes, linearizable or local; the error's text
/// when it fails within two seconds.
async fn probe_read(backend: &Backend, serializable: bool) -> Option<String> {
    let probe = RangeRequest {
        key: b"health".to_vec(),
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    match tokio::time::timeout(
        Duration::from_secs(2),
        backend.read(
            &crate::state_machine::auth::Caller::System,
            ReadRequest::Range(probe),
            serializable,
        ),
    )
    .await
    {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("request timed out".into()),
    }
}

/// etcd's `/health`: `{"health":"true","reason":""}`, or false with the
/// reason (`RAFT NO LEADER`, `QGET ERROR`) and 503. `?serializable=true`
/// reads locally instead of through the leader.
async fn health(
    State(backend): State<Backend>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let serializable = q.get("serializable").is_some_and(|v| v == "true");
    // etcd 3.5: ?exclude=NOSPACE ignores that alarm.
    let excluded: Vec<&str> = q
        .get("exclude")
        .map(|v| v.split(',').collect())
        .unwrap_or_default();
    let alarms: Vec<String> = backend
        .status()
        .alarms
        .read()
        .iter()
        .filter_map(|&(_, a)| {
            let name = AlarmType::try_from(a).ok()?.as_str_name();
            (!excluded.contains(&name)).then(|| format!("ALARM {name}"))
        })
        .collect();
    let alarm_reason = alarms.join(", ");
    let reason = if !alarm_reason.is_empty() {
        Some(alarm_reason.as_str())
    } else if !serializable && backend.status().leader() == 0 {
        Some("RAFT NO LEADER")
    } else if probe_read(&backend, serializable).await.is_some() {
        Some("QGET ERROR")
    } else {
        None
    };
    let body = format!(
        r#"{{"health":"{}","reason":"{}"}}"#,
        reason.is_none(),
        reason.unwrap_or("")
    );
    let code = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

/// etcd's `/livez`: the member answers local reads.
async fn livez(
    State(backend): State<Backend>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let checks = vec![Check {
        name: "serializable_read",
        failure: probe_read(&backend, true).await,
    }];
    checks_response("livez", checks, q.contains_key("verbose"))
}

/// etcd's `/readyz`: no CORRUPT alarm, local and linearizable reads work.
async fn readyz(
    State(backend): State<Backend>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let corrupt = backend
        .status()
        .alarms
        .read()
        .iter()
        .any(|&(_, a)| a == AlarmType::Corrupt as i32);
    let checks = vec![
        Check {
            name: "data_corruption",
            failure: corrupt.then(|| "alarm activated: CORRUPT".to_owned()),
        },
        Check {
            name: "serializable_read",
            failure: probe_read(&backend, true).await,
        },
        Check {
            name: "linearizable_read",
            failure: probe_read(&backend, false).await,
        },
    ];
    checks_response("readyz", checks, q.contains_key("verbose"))
}

/// Kubernetes-style check output, as etcd writes it: `ok`, or the failed
/// checks and `<what> check failed` with 503; `?verbose` lists every check.
fn checks_response(what: &str, checks: Vec<Check>, verbose: bool) -> impl IntoResponse {
    let failed = checks.iter().any(|c| c.failure.is_some());
    let mut body = String::new();
    for c in &checks {
        match &c.failure {
            Some(why) => body.push_str(&format!("[-]{} failed: {why}\n", c.name)),
            None if verbose || failed => body.push_str(&format!("[+]{} ok\n", c.name)),
            None => {}
        }
    }
    let code = if failed {
        body.push_str(&format!("{what} check failed\n"));
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        body.push_str("ok\n");
        StatusCode::OK
    };
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}","metastore":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
    )
}
