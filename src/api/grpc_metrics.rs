//! Per-RPC metrics for every gRPC service on the client port, counted in one
//! place as go-grpc-prometheus counts them for etcd:
//! `grpc_server_started_total` and `grpc_server_handled_total` (labels
//! `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`), the report's
//! `grpc_request_duration_ms` (per service and method; for a stream, its
//! lifetime), and etcd's `etcd_network_client_grpc_{sent,received}_bytes_total`.
//!
//! The code comes from `grpc-status`: in the response headers when the
//! handler failed before answering (a trailers-only response), else in the
//! trailers at the end of the body; a body dropped before its trailers is a
//! call the client canceled. Only the methods MetaStore serves are counted,
//! so a client cannot grow the label sets with made-up paths.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Metrics, RpcLabels};

/// The methods served on the client port and their kinds (the rest are
/// unary).
const STREAMING: [(&str, &str, &str); 5] = [
    ("grpc.health.v1.Health", "Watch", "server_stream"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("v3electionpb.Election", "Observe", "server_stream"),
];

const UNARY: [(&str, &[&str]); 7] = [
    ("grpc.health.v1.Health", &["Check"]),
    (
        "etcdserverpb.KV",
        &["Range", "Put", "DeleteRange", "Txn", "Compact"],
    ),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    (
        "v3electionpb.Election",
        &["Campaign", "Proclaim", "Leader", "Resign"],
    ),
];

/// go-grpc's names of the status codes, by number.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The kind of `service/method`, if MetaStore serves it.
fn kind(service: &str, method: &str) -> Option<&'static str> {
    if let Some((_, _, k)) = STREAMING
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
    {
        return Some(k);
    }
    UNARY
        .iter()
        .any(|(s, ms)| *s == service && ms.contains(&method))
        .then_some("unary")
}

/// The name of a `grpc-status` value.
fn code_name(status: &[u8]) -> &'static str {
    std::str::from_utf8(status)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("Unknown")
}

/// One call being counted.
struct Call {
    metrics: Arc<Metrics>,
    labels: RpcLabels,
    started: Instant,
}

impl Call {
    fn finish(self, code: &'static str) {
        let m = &self.metrics;
        m.grpc_handled
            .get_or_create(&self.labels.with_code(code))
            .inc();
        m.grpc_duration_ms
            .get_or_create(&self.labels.duration_labels())
            .observe(self.started.elapsed().as_secs_f64() * 1000.0);
    }
}

/// Middleware over the gRPC routes (state: the member's metrics).
pub async fn observe(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return next.run(req).await;
    };
    let Some(grpc_type) = kind(service, method) else {
        return next.run(req).await;
    };
    let labels = RpcLabels {
        grpc_type,
        grpc_service: service.to_owned(),
        grpc_method: method.to_owned(),
    };
    metrics.grpc_started.get_or_create(&labels).inc();
    let received = metrics.grpc_received_bytes.clone();
    let req = req.map(|b| {
        Body::new(Counted {
            inner: b,
            bytes: received,
            call: None,
        })
    });
    let call = Call {
        metrics: metrics.clone(),
        labels,
        started: Instant::now(),
    };
    let resp = next.run(req).await;
    let sent = metrics.grpc_sent_bytes.clone();
    if let Some(status) = resp.headers().get("grpc-status") {
        // Trailers-only: the call ended with its headers.
        call.finish(code_name(status.as_bytes()));
        return resp.map(|b| {
            Body::new(Counted {
                inner: b,
                bytes: sent,
                call: None,
            })
        });
    }
    resp.map(|b| {
        Body::new(Counted {
            inner: b,
            bytes: sent,
            call: Some(call),
        })
    })
}

/// A body whose data bytes are counted; for a response, the call ends with
/// its trailers (or, dropped before them, as canceled).
struct Counted {
    inner: Body,
    bytes: Counter,
    call: Option<Call>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.inc_by(data.len() as u64);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(call) = this.call.take() {
                        let code = trailers
                            .get("grpc-status")
                            .map_or("Unknown", |s| code_name(s.as_bytes()));
                        call.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish("Unknown");
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    // Ended without trailers: not a proper gRPC answer.
                    call.finish("Unknown");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish("Canceled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes() {
        assert_eq!(kind("etcdserverpb.KV", "Put"), Some("unary"));
        assert_eq!(kind("etcdserverpb.Watch", "Watch"), Some("bidi_stream"));
        assert_eq!(
            kind("etcdserverpb.Maintenance", "Snapshot"),
            Some("server_stream")
        );
        assert_eq!(kind("etcdserverpb.KV", "Nope"), None);
        assert_eq!(kind("x.Y", "Put"), None);
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"14"), "Unavailable");
        assert_eq!(code_name(b"99"), "Unknown");
        assert_eq!(code_name(b"x"), "Unknown");
    }
}
