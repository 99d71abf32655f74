//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use tonic::{Request, Response, Status};

use super::{validate, Backend};
use crate::error::ApiError;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::metastorepb::internal_request::Request as Internal;
use crate::state_machine::auth::Caller;
use crate::state_machine::kv::sliced::WireRange;
use crate::state_machine::kv::{txn_is_read_only, txn_is_serializable};
use crate::state_machine::{ReadRequest, ReadResponse, WriteResponse};

/// The KV service.
pub struct KvService {
    backend: Backend,
}

impl KvService {
    /// A KV service over the backend.
    pub fn new(backend: Backend) -> KvService {
        KvService { backend }
    }

    fn unexpected(what: &str) -> ApiError {
        ApiError::Internal(format!("unexpected {what} answer"))
    }

    async fn range_inner(
        &self,
        caller: Caller,
        r: RangeRequest,
    ) -> Result<RangeResponse, ApiError> {
        // Read as over gRPC, then decoded for the gateway's JSON.
        let wire = read_range(&self.backend, &caller, r).await?;
        let mut resp = wire
            .decode()
            .map_err(|e| ApiError::Internal(format!("range answer: {e}")))?;
        self.backend.fill(&mut resp.header);
        Ok(resp)
    }

    async fn put_inner(&self, caller: Caller, r: PutRequest) -> Result<PutResponse, ApiError> {
        validate::put(&r)?;
        match self.backend.write(&caller, Internal::Put(r)).await? {
            WriteResponse::Put(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Self::unexpected("put")),
        }
    }

    async fn delete_inner(
        &self,
        caller: Caller,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ApiError> {
        validate::delete_range(&r)?;
        match self
            .backend
            .write(&caller, Internal::DeleteRange(r))
            .await?
        {
            WriteResponse::DeleteRange(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Self::unexpected("delete")),
        }
    }

    async fn txn_inner(&self, caller: Caller, r: TxnRequest) -> Result<TxnResponse, ApiError> {
        validate::txn(&r, self.backend.max_txn_ops)?;
        let mut resp = if txn_is_read_only(&r) {
            // A txn without writes is a read: no log entry, no revision.
            let serializable = txn_is_serializable(&r);
            match self
                .backend
                .read(&caller, ReadRequest::Txn(r), serializable)
                .await?
            {
                ReadResponse::Txn(resp) => resp,
                _ => return Err(Self::unexpected("txn")),
            }
        } else {
            match self.backend.write(&caller, Internal::Txn(r)).await? {
                WriteResponse::Txn(resp) => resp,
                _ => return Err(Self::unexpected("txn")),
            }
        };
        self.backend.fill(&mut resp.header);
        Ok(resp)
    }

    async fn compact_inner(
        &self,
        caller: Caller,
        r: CompactionRequest,
    ) -> Result<CompactionResponse, ApiError> {
        match self.backend.write(&caller, Internal::Compaction(r)).await? {
            WriteResponse::Compact(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Self::unexpected("compact")),
        }
    }
}

/// A Range, checked, read a slice per turn of the apply thread and answered
/// as the wire's bytes (see `state_machine::kv::sliced`): the one read of
/// the gRPC route and the JSON gateway.
pub async fn read_range(
    backend: &Backend,
    caller: &Caller,
    r: RangeRequest,
) -> Result<WireRange, ApiError> {
    validate::range(&r)?;
    let serializable = r.serializable;
    match backend
        .read(caller, ReadRequest::RangeWire(r), serializable)
        .await?
    {
        ReadResponse::RangeWire(wire) => Ok(wire),
        _ => Err(KvService::unexpected("range")),
    }
}

/// Runs a handler body and maps the error to etcd's status (the gRPC
/// metrics are counted by the layer in `grpc_metrics`).
macro_rules! rpc {
    ($fut:expr) => {{
        $fut.await.map(Response::new).map_err(Status::from)
    }};
}

#[tonic::async_trait]
impl Kv for KvService {
    /// The JSON gateway's Range (`/v3/kv/range`). Over gRPC the route in
    /// [`super::wire_range`] answers `KV.Range` before tonic sees it; both
    /// are read in slices.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        rpc!(async {
            let caller = self.backend.caller_of(&req)?;
            self.range_inner(caller, req.into_inner()).await
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        rpc!(async {
            let caller = self.backend.caller_of(&req)?;
            self.put_inner(caller, req.into_inner()).await
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        rpc!(async {
            let caller = self.backend.caller_of(&req)?;
            self.delete_inner(caller, req.into_inner()).await
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        rpc!(async {
            let caller = self.backend.caller_of(&req)?;
            self.txn_inner(caller, req.into_inner()).await
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        rpc!(async {
            let caller = self.backend.caller_of(&req)?;
            self.compact_inner(caller, req.into_inner()).await
        })
    }
}
