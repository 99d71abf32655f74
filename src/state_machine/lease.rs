//! Leases in the replicated state: the table (granted TTL, checkpointed
//! remaining TTL) and which keys each lease holds. Applied identically on
//! every member; only the leader's Lessor decides when a lease expires (it
//! then proposes its revocation).
//!
//! The key index is derived, never stored: a key belongs to the lease in
//! its `lease` field. It is rebuilt from the store at start-up and after a
//! snapshot install, and kept up to date by every applied write.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::proto::etcdserverpb::{
    request_op, response_op, DeleteRangeRequest, PutRequest, TxnRequest, TxnResponse,
};
use crate::storage::engine::KvEngine;
use crate::storage::RangeOptions;

/// etcd's largest lease TTL (`MaxLeaseTTL`), in seconds.
pub const MAX_TTL: i64 = 9_000_000_000;

/// What applying changed about leases, for the Lessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// Granted with this TTL.
    Granted { id: i64, ttl: i64 },
    /// Revoked (or expired): gone.
    Revoked { id: i64 },
    /// The leader recorded the TTL that remained.
    Checkpointed { id: i64, remaining: i64 },
}

/// Which keys each lease holds.
#[derive(Debug, Default)]
pub struct LeaseIndex {
    /// Live keys with a lease, and their lease.
    leased: BTreeMap<Vec<u8>, i64>,
    /// The same, by lease.
    keys: HashMap<i64, BTreeSet<Vec<u8>>>,
}

impl LeaseIndex {
    /// The index of `store`'s live keys.
    pub fn rebuild<E: KvEngine>(store: &E) -> LeaseIndex {
        let mut idx = LeaseIndex::default();
        let opts = RangeOptions {
            keys_only: true,
            ..Default::default()
        };
        match store.range(&[0], &[0], &opts) {
            Ok(r) => {
                for kv in r.kvs.into_iter().filter(|kv| kv.lease != 0) {
                    idx.attach(kv.key, kv.lease);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot index leased keys"),
        }
        idx
    }

    fn attach(&mut self, key: Vec<u8>, lease: i64) {
        if let Some(old) = self.leased.insert(key.clone(), lease) {
            if old == lease {
                return;
            }
            self.unlink(&key, old);
        }
        self.keys.entry(lease).or_default().insert(key);
    }

    fn detach(&mut self, key: &[u8]) {
        if let Some(old) = self.leased.remove(key) {
            self.unlink(key, old);
        }
    }

    fn unlink(&mut self, key: &[u8], lease: i64) {
        if let Some(set) = self.keys.get_mut(&lease) {
            set.remove(key);
            if set.is_empty() {
                self.keys.remove(&lease);
            }
        }
    }

    /// A put took effect (`ignore_lease` puts keep the key's lease).
    pub fn put(&mut self, p: &PutRequest) {
        if p.ignore_lease {
            return;
        }
        if p.lease == 0 {
            if !self.leased.is_empty() {
                self.detach(&p.key);
            }
        } else {
            self.attach(p.key.clone(), p.lease);
        }
    }

    /// A delete of `[key, range_end)` took effect.
    pub fn delete_range(&mut self, d: &DeleteRangeRequest) {
        if self.leased.is_empty() {
            return;
        }
        let gone: Vec<Vec<u8>> = match d.range_end.as_slice() {
            [] => self
                .leased
                .get_key_value(&d.key)
                .map(|(k, _)| k.clone())
                .into_iter()
                .collect(),
            [0] => self
                .leased
                .range(d.key.clone()..)
                .map(|(k, _)| k.clone())
                .collect(),
            end if d.key.as_slice() < end => self
                .leased
                .range(d.key.clone()..end.to_vec())
                .map(|(k, _)| k.clone())
                .collect(),
            _ => Vec::new(),
        };
        for k in gone {
            self.detach(&k);
        }
    }

    /// A txn took effect: its taken branches' puts and deletes.
    pub fn txn(&mut self, t: &TxnRequest, r: &TxnResponse) {
        let branch = if r.succeeded { &t.success } else { &t.failure };
        for (op, resp) in branch.iter().zip(&r.responses) {
            match (&op.request, &resp.response) {
                (Some(request_op::Request::RequestPut(p)), _) => self.put(p),
                (Some(request_op::Request::RequestDeleteRange(d)), _) => self.delete_range(d),
                (
                    Some(request_op::Request::RequestTxn(inner)),
                    Some(response_op::Response::ResponseTxn(inner_resp)),
                ) => self.txn(inner, inner_resp),
                _ => {}
            }
        }
    }

    /// The keys lease `id` holds, in order.
    pub fn keys_of(&self, id: i64) -> Vec<Vec<u8>> {
        self.keys
            .get(&id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The lease is gone: its keys hold none.
    pub fn forget(&mut self, id: i64) {
        if let Some(keys) = self.keys.remove(&id) {
            for k in keys {
                self.leased.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{RequestOp, ResponseOp};

    fn put(key: &str, lease: i64) -> PutRequest {
        PutRequest {
            key: key.into(),
            lease,
            ..Default::default()
        }
    }

    #[test]
    fn puts_deletes_and_txns_move_keys_between_leases() {
        let mut idx = LeaseIndex::default();
        idx.put(&put("a", 1));
        idx.put(&put("b", 1));
        idx.put(&put("c", 2));
        assert_eq!(idx.keys_of(1), vec![b"a".to_vec(), b"b".to_vec()]);
        idx.put(&put("a", 2)); // moves to lease 2
        idx.put(&put("b", 0)); // leaves its lease
        let mut keep = put("c", 0);
        keep.ignore_lease = true; // keeps lease 2
        idx.put(&keep);
        assert!(idx.keys_of(1).is_empty());
        assert_eq!(idx.keys_of(2), vec![b"a".to_vec(), b"c".to_vec()]);
        idx.delete_range(&DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        });
        assert_eq!(idx.keys_of(2), vec![b"c".to_vec()]);
        // A txn whose failure branch ran: only that branch counts.
        let t = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("x", 3))),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("y", 3))),
            }],
            ..Default::default()
        };
        let r = TxnResponse {
            succeeded: false,
            responses: vec![ResponseOp::default()],
            ..Default::default()
        };
        idx.txn(&t, &r);
        assert_eq!(idx.keys_of(3), vec![b"y".to_vec()]);
        idx.forget(3);
        assert!(idx.keys_of(3).is_empty());
        idx.put(&put("y", 0));
        assert_eq!(idx.leased.len(), 1, "only c is leased");
    }
}
