//! Proposing a write through Raft and waiting for its applied answer: what
//! the client handlers and the Lessor (lease revocations, checkpoints) do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use tokio::sync::oneshot;

use super::messages::{Propose, WriteResult};
use super::raft::RaftAddr;
use crate::error::ApiError;
use crate::proto::metastorepb::{internal_request, InternalRequest};
use crate::state_machine::auth::Caller;
use crate::state_machine::WriteResponse;
use crate::status::NodeStatus;

/// etcd's default request timeout: 5 s plus two election timeouts.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// Unique request ids: member id in the top 16 bits, start time and a counter
/// below (etcd's idutil scheme), so ids never repeat across restarts.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    /// A generator for a member.
    pub fn new(member_id: u64) -> RequestIds {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        RequestIds {
            prefix: (member_id & 0xffff) << 48,
            next: AtomicU64::new((ms & 0xff_ffff_ffff) << 8),
        }
    }

    /// The next id.
    pub fn next(&self) -> u64 {
        self.prefix | (self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff)
    }
}

/// Proposes writes for one member.
#[derive(Clone)]
pub struct Proposer {
    /// The RaftActor.
    pub raft: RaftAddr,
    /// Request ids.
    pub ids: Arc<RequestIds>,
    /// Live status (is there a leader?).
    pub status: Arc<NodeStatus>,
    /// Largest encoded request.
    pub max_request_bytes: usize,
}

impl Proposer {
    /// Proposes this member's own `request` (no client: unchecked) and
    /// waits for its applied answer.
    pub async fn write(&self, request: internal_request::Request) -> WriteResult {
        self.write_as(&Caller::System, request).await
    }

    /// Proposes a client's write: checked as `caller` when applied.
    pub async fn write_as(
        &self,
        caller: &Caller,
        request: internal_request::Request,
    ) -> WriteResult {
        let id = self.ids.next();
        let data = InternalRequest {
            id,
            request: Some(request),
            caller: caller.to_pb(),
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(ApiError::RequestTooLarge);
        }
        let (reply, rx) = oneshot::channel();
        crate::actors::deliver(&self.raft.get(), Propose { id, data, reply }).await?;
        self.wait(rx).await
    }

    /// Waits for a proposal's applied answer, at most the request timeout.
    pub async fn wait(
        &self,
        rx: oneshot::Receiver<WriteResult>,
    ) -> Result<WriteResponse, ApiError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::Stopped),
            // No leader all along: say so (etcd's clients see "no leader"
            // from a member cut off from the cluster).
            Err(_) if self.status.leader() == 0 => Err(ApiError::NoLeader),
            Err(_) => Err(ApiError::Timeout),
        }
    }
}
