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

    async fn range_inner(&self, r: RangeRequest) -> Result<RangeResponse, ApiError> {
        validate::range(&r)?;
        let serializable = r.serializable;
        match self
            .backend
            .read(ReadRequest::Range(r), serializable)
            .await?
        {
            ReadResponse::Range(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            ReadResponse::Txn(_) => Err(Self::unexpected("range")),
        }
    }

    async fn put_inner(&self, r: PutRequest) -> Result<PutResponse, ApiError> {
        validate::put(&r)?;
        match self.backend.write(Internal::Put(r)).await? {
            WriteResponse::Put(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Self::unexpected("put")),
        }
    }

    async fn delete_inner(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse, ApiError> {
        validate::delete_range(&r)?;
        match self.backend.write(Internal::DeleteRange(r)).await? {
            WriteResponse::DeleteRange(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Self::unexpected("delete")),
        }
    }

    async fn txn_inner(&self, r: TxnRequest) -> Result<TxnResponse, ApiError> {
        validate::txn(&r, self.backend.max_txn_ops)?;
        let mut resp = if txn_is_read_only(&r) {
            // A txn without writes is a read: no log entry, no revision.
            let serializable = txn_is_serializable(&r);
            match self.backend.read(ReadRequest::Txn(r), serializable).await? {
                ReadResponse::Txn(resp) => resp,
                ReadResponse::Range(_) => return Err(Self::unexpected("txn")),
            }
        } else {
            match self.backend.write(Internal::Txn(r)).await? {
                WriteResponse::Txn(resp) => resp,
                _ => return Err(Self::unexpected("txn")),
            }
        };
        self.backend.fill(&mut resp.header);
        Ok(resp)
    }

    async fn compact_inner(&self, r: CompactionRequest) -> Result<CompactionResponse, ApiError> {
        match self.backend.write(Internal::Compaction(r)).await? {
            WriteResponse::Compact(mut resp) => {
                self.backend.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Self::unexpected("compact")),
        }
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
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        rpc!(self.range_inner(req.into_inner()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        rpc!(self.put_inner(req.into_inner()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        rpc!(self.delete_inner(req.into_inner()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        rpc!(self.txn_inner(req.into_inner()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        rpc!(self.compact_inner(req.into_inner()))
    }
}
