//! What one operation does, and how operation `i` is chosen.

use metastore::proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::cli::{Args, Workload};

/// One request.
pub enum Op {
    Put(Vec<u8>),
    Get { key: Vec<u8>, serializable: bool },
    Txn(Vec<u8>),
}

/// Everything workers need to build operations.
pub struct Spec {
    pub workload: Workload,
    pub keyspace: u64,
    pub key_size: usize,
    pub random_keys: bool,
    pub read_percent: u8,
    pub value: Vec<u8>,
}

impl Spec {
    pub fn new(args: &Args) -> Spec {
        let mut value = vec![0u8; args.value_size];
        StdRng::seed_from_u64(0x5eed).fill_bytes(&mut value);
        Spec {
            workload: args.workload,
            keyspace: args.keyspace(),
            key_size: args.key_size,
            random_keys: args.random_keys,
            read_percent: args.read_percent,
            value,
        }
    }

    /// Key number `n`: zero-padded decimal, `key_size` bytes.
    pub fn key(&self, n: u64) -> Vec<u8> {
        format!("{n:0width$}", width = self.key_size).into_bytes()
    }

    /// The measured phase's operation number `i`.
    pub fn op(&self, i: u64, rng: &mut StdRng) -> Op {
        let n = if self.random_keys {
            rng.gen_range(0..self.keyspace)
        } else {
            i % self.keyspace
        };
        let key = self.key(n);
        match self.workload {
            Workload::Put => Op::Put(key),
            Workload::Get => Op::Get {
                key,
                serializable: false,
            },
            Workload::GetSerializable => Op::Get {
                key,
                serializable: true,
            },
            // k8s/ and scale.rs run their own operations; bench::run
            // never gets here.
            Workload::Txn | Workload::K8s | Workload::Scale => Op::Txn(key),
            Workload::Mixed => {
                if rng.gen_range(0..100u8) < self.read_percent {
                    Op::Get {
                        key,
                        serializable: false,
                    }
                } else {
                    Op::Put(key)
                }
            }
        }
    }
}

/// A gRPC KV client on one connection: the generated client of the etcd
/// v3 API (wire-compatible with etcd's), with nothing in between, so the
/// load generator spends as little CPU as it can beside the server.
/// Its requests carry a token with `--auth`.
pub type KvClient = metastore::proto::etcdserverpb::kv_client::KvClient<crate::secure::Authed>;

/// Sends one operation; an `Err` is a failed RPC or a wrong answer.
pub async fn execute(kv: &mut KvClient, op: Op, value: &[u8]) -> Result<(), String> {
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match op {
        Op::Put(key) => kv
            .put(PutRequest {
                key,
                value: value.to_vec(),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(status),
        Op::Get { key, serializable } => {
            let resp = kv
                .range(RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await
                .map_err(status)?;
            if resp.get_ref().kvs.is_empty() {
                return Err("get: key not found".into());
            }
            Ok(())
        }
        Op::Txn(key) => {
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Greater as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::Version(-1)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key,
                        value: value.to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            let resp = kv.txn(txn).await.map_err(status)?;
            if !resp.get_ref().succeeded {
                return Err("txn: compare version > -1 failed".into());
            }
            Ok(())
        }
    }
}
