//! etcd's Watch service: one bidirectional stream per call, many watchers
//! per stream.
//!
//! Written by hand rather than generated, for one reason: the responses go
//! out as [`WatchOut`], etcd's `WatchResponse` with every event already
//! encoded (the same bytes on the wire), so an applied batch is encoded
//! once and shared by every watcher it matches. Each call opens a
//! stream in the ApplyActor's watch hub and starts a session actor for what
//! the client sends (see `actors::watch`).

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};

use super::Backend;
use crate::proto::etcdserverpb::WatchRequest;
use crate::watch::WatchOut;

/// Rounds of responses a stream may hold for a slow client before its
/// watchers are demoted to catching up.
pub(crate) const OUTBOX: usize = 16;

/// The Watch service.
#[derive(Clone)]
pub struct WatchService {
    backend: Backend,
}

impl WatchService {
    /// A Watch service over the backend.
    pub fn new(backend: Backend) -> WatchService {
        WatchService { backend }
    }
}

impl NamedService for WatchService {
    const NAME: &'static str = "etcdserverpb.Watch";
}

impl<B> Service<http::Request<B>> for WatchService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let backend = self.backend.clone();
        if req.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(
                async move { Ok(Status::unimplemented("unknown method").into_http()) },
            );
        }
        Box::pin(async move {
            let max = backend.max_request_bytes + 512 * 1024;
            let codec = super::codec::PresizedCodec::<WatchOut, WatchRequest>::default();
            let mut grpc = Grpc::new(codec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(Session(backend), req).await)
        })
    }
}

struct Session(Backend);

impl StreamingService<WatchRequest> for Session {
    type Response = WatchOut;
    type ResponseStream = BoxStream<'static, Result<WatchOut, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<WatchRequest>>) -> Self::Future {
        let backend = self.0.clone();
        Box::pin(async move {
            let caller = backend.caller_of(&request)?;
            let (outbox, rx) = mpsc::channel(OUTBOX);
            let requests = request.into_inner().boxed();
            backend.open_watch(outbox, requests, caller).await?;
            let responses = ReceiverStream::new(rx)
                .flat_map(|round| futures::stream::iter(round.into_iter().map(Ok)));
            // Tests: a slow network or client on the send path.
            #[cfg(feature = "failpoints")]
            let responses = responses.then(|r| async move {
                if let Some(d) = crate::failpoints::delay("watch::send_delay") {
                    tokio::time::sleep(d).await;
                }
                r
            });
            Ok(tonic::Response::new(responses.boxed()))
        })
    }
}
