//! HTTP on the client port: `/metrics` (Prometheus), `/health` and `/version`
//! (etcd's JSON).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::{Gateway, ETCD_VERSION};
use crate::metrics::METRICS;
use crate::proto::etcdserverpb::RangeRequest;
use crate::state_machine::ReadRequest;

/// The HTTP routes.
pub fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/version", get(version))
        .with_state(gw)
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.render(),
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
