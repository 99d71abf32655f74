//! The standard `grpc.health.v1.Health` service on the client port: the
//! member is SERVING while it knows a leader (it can then serve writes and
//! linearizable reads), NOT_SERVING otherwise. Only the whole server ("") is
//! known, as etcd registers it.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Backend;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::health_server::Health;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};

/// How often a Watch looks at the status.
const WATCH_POLL: Duration = Duration::from_millis(100);

/// The health service.
pub struct HealthService {
    backend: Backend,
}

impl HealthService {
    /// A health service over the backend.
    pub fn new(backend: Backend) -> HealthService {
        HealthService { backend }
    }
}

fn status_of(backend: &Backend, service: &str) -> ServingStatus {
    if !service.is_empty() {
        ServingStatus::ServiceUnknown
    } else if backend.status().leader() != 0 {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match status_of(&self.backend, &req.get_ref().service) {
            ServingStatus::ServiceUnknown => Err(Status::not_found("unknown service")),
            s => Ok(Response::new(answer(s))),
        }
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = req.into_inner().service;
        let backend = self.backend.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = status_of(&backend, &service);
                if last != Some(now) {
                    if tx.send(Ok(answer(now))).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_POLL) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }
}
