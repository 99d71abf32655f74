//! Request validation with etcd's limits and messages, applied before anything
//! is proposed: a request that fails here never reaches the log.

use crate::error::ApiError;
use crate::proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Range: a key is required.
pub fn range(r: &RangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

/// Put: a key is required; ignore_value/ignore_lease exclude a value/lease.
pub fn put(r: &PutRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(())
}

/// DeleteRange: a key is required.
pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

/// Txn: op counts, every op and compare, recursively; then no key written twice.
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), ApiError> {
    txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), ApiError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(ApiError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ApiError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => range(x)?,
            Some(request_op::Request::RequestPut(x)) => put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => delete_range(x)?,
            // etcd's checkTxnRequest: a nested txn gets what this one left over.
            Some(request_op::Request::RequestTxn(x)) => txn_ops(x, max_ops - opc)?,
            // etcd answers an empty op this way.
            None => return Err(ApiError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval [start, end) (end None = just `start`), compared as etcd's
/// interval tree compares strings.
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.start.as_slice(),
            Some(end) => self.start.as_slice() <= k && k < end.as_slice(),
        }
    }
}

/// etcd's checkIntervals: within one branch (and the branches of nested txns
/// taken with it), a key may be put once, and not put if a delete covers it.
fn check_intervals(ops: &[RequestOp]) -> Result<(), ApiError> {
    collect(ops).map(|_| ())
}

fn collect(ops: &[RequestOp]) -> Result<(Vec<Vec<u8>>, Vec<Interval>), ApiError> {
    let mut dels: Vec<Interval> = Vec::new();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.push(Interval {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            });
        }
    }
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let covered = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| iv.contains(k));
    for op in ops {
        if let Some(request_op::Request::RequestTxn(t)) = &op.request {
            let (puts_then, dels_then) = collect(&t.success)?;
            let (puts_else, dels_else) = collect(&t.failure)?;
            for k in &puts_then {
                if puts.contains(k) || covered(&dels, k) {
                    return Err(ApiError::DuplicateKey);
                }
                puts.push(k.clone());
            }
            // Then and else exclude each other: an else key may repeat a then key.
            for k in puts_else {
                if (puts.contains(&k) && !puts_then.contains(&k)) || covered(&dels, &k) {
                    return Err(ApiError::DuplicateKey);
                }
                puts.push(k);
            }
            dels.extend(dels_then);
            dels.extend(dels_else);
        }
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || covered(&dels, &p.key) {
                return Err(ApiError::DuplicateKey);
            }
            puts.push(p.key.clone());
        }
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn op_del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn_of(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    #[test]
    fn puts_and_ops_are_checked_like_etcd() {
        assert_eq!(put(&PutRequest::default()), Err(ApiError::EmptyKey));
        let p = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(put(&p), Err(ApiError::ValueProvided));
        let p = PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(put(&p), Err(ApiError::LeaseProvided));
        let empty = TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: None }],
            failure: vec![],
        };
        assert_eq!(txn(&empty, 128), Err(ApiError::KeyNotFound));
    }

    #[test]
    fn too_many_ops() {
        let ops: Vec<_> = (0..129).map(|i| op_put(&format!("k{i}"))).collect();
        assert_eq!(txn(&txn_of(ops), 128), Err(ApiError::TooManyOps));
        let ops: Vec<_> = (0..128).map(|i| op_put(&format!("k{i}"))).collect();
        assert_eq!(txn(&txn_of(ops), 128), Ok(()));
    }

    #[test]
    fn duplicate_keys_in_a_branch() {
        assert_eq!(
            txn(&txn_of(vec![op_put("a"), op_put("a")]), 128),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            txn(&txn_of(vec![op_del("a", "c"), op_put("b")]), 128),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            txn(&txn_of(vec![op_del("a", "c"), op_put("c")]), 128),
            Ok(())
        );
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn_of(vec![op_put("a")]))),
        };
        assert_eq!(
            txn(&txn_of(vec![op_put("a"), nested]), 128),
            Err(ApiError::DuplicateKey)
        );
        // The same key in the success and the failure branch is fine.
        let t = TxnRequest {
            compare: vec![],
            success: vec![op_put("a")],
            failure: vec![op_put("a")],
        };
        assert_eq!(txn(&t, 128), Ok(()));
        // Also inside a nested txn, but not against a sibling's put.
        let both_branches = || RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![op_put("n")],
                failure: vec![op_put("n")],
            })),
        };
        assert_eq!(txn(&txn_of(vec![both_branches()]), 128), Ok(()));
        assert_eq!(
            txn(&txn_of(vec![op_put("n"), both_branches()]), 128),
            Err(ApiError::DuplicateKey)
        );
    }

    #[test]
    fn a_nested_txn_gets_the_ops_its_parent_left() {
        let nested = |outer: usize, inner: usize| {
            let mut ops: Vec<_> = (0..outer - 1).map(|i| op_put(&format!("o{i}"))).collect();
            let inner = (0..inner).map(|i| op_put(&format!("i{i}"))).collect();
            ops.push(RequestOp {
                request: Some(request_op::Request::RequestTxn(txn_of(inner))),
            });
            txn_of(ops)
        };
        assert_eq!(txn(&nested(100, 28), 128), Ok(()));
        assert_eq!(txn(&nested(100, 29), 128), Err(ApiError::TooManyOps));
    }
}
