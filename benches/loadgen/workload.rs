//! What one operation does, and how operation `i` is chosen.

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp};
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
            Workload::Txn => Op::Txn(key),
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

/// Sends one operation; an `Err` is a failed RPC or a wrong answer.
pub async fn execute(kv: &mut KvClient, op: Op, value: &[u8]) -> Result<(), String> {
    match op {
        Op::Put(key) => kv
            .put(key, value.to_vec(), None)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Op::Get { key, serializable } => {
            let opts = serializable.then(|| GetOptions::new().with_serializable());
            let resp = kv.get(key, opts).await.map_err(|e| e.to_string())?;
            if resp.kvs().is_empty() {
                return Err("get: key not found".into());
            }
            Ok(())
        }
        Op::Txn(key) => {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Greater, -1)])
                .and_then([TxnOp::put(key, value.to_vec(), None)]);
            let resp = kv.txn(txn).await.map_err(|e| e.to_string())?;
            if !resp.succeeded() {
                return Err("txn: compare version > -1 failed".into());
            }
            Ok(())
        }
    }
}
