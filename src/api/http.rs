//! HTTP on the client port: `/metrics` (Prometheus), `/health` and `/version`
//! (etcd's JSON); with `--experimental-fault-injection`, the test-only fault
//! switches of the transport.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use super::{Gateway, ETCD_VERSION};
use crate::proto::etcdserverpb::RangeRequest;
use crate::state_machine::ReadRequest;

/// The HTTP routes.
pub fn router(gw: Gateway, fault_injection: bool) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/version", get(version));
    if fault_injection {
        r = r
            .route("/debug/fault/isolate", post(isolate))
            .route("/debug/fault/heal", post(heal));
    }
    r.with_state(gw)
}

/// Drops every Raft message and snapshot to and from this member, as a
/// network partition would.
async fn isolate(State(gw): State<Gateway>) -> impl IntoResponse {
    gw.core()
        .faults
        .isolated
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!("fault injection: isolated from all peers");
    "isolated\n"
}

/// Ends [`isolate`].
async fn heal(State(gw): State<Gateway>) -> impl IntoResponse {
    gw.core()
        .faults
        .isolated
        .store(false, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!("fault injection: healed");
    "healed\n"
}

async fn metrics(State(gw): State<Gateway>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.core().metrics.render(),
    )
}

/// Healthy when a linearizable read goes through (a leader exists and answers).
async fn health(State(gw): State<Gateway>) -> impl IntoResponse {
    let probe = RangeRequest {
        key: b"health".to_vec(),
        keys_only: true,
        limit: 1,
        ..Default::default()
    };
    let ok = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            gw.read(ReadRequest::Range(probe), false)
        )
        .await,
        Ok(Ok(_))
    );
    let body = if ok {
        r#"{"health":"true","reason":""}"#
    } else {
        r#"{"health":"false","reason":"RAFT NO LEADER"}"#
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"3.5.0"}}"#),
    )
}
