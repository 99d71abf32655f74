//! etcd's applier for the KV requests (Range, Put, DeleteRange, Txn, Compact)
//! on the MVCC store: the same checks, the same order, the same revisions.

mod gosort;
pub mod sliced;

use bytes::Bytes;

use crate::error::ApiError;
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb;
use crate::storage::engine::{KvEngine, KvTxn};
use crate::storage::leases::LeaseTable;
use crate::storage::{Event, KeyValue, MvccError, RangeOptions, RangeResult};

/// Read access shared by the store and an open write txn.
trait View {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError>;
    /// Revision a range in this view reports (etcd: the txn's read revision).
    fn rev(&self) -> i64;
    /// etcd's `FirstRev()` of a read view: `compactMainRev`, -1 before any
    /// compaction (so a negative range revision passes a fresh store's check).
    fn compacted(&self) -> i64;
}

impl<E: KvEngine> View for E {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        KvEngine::range(self, key, end, opts)
    }
    fn rev(&self) -> i64 {
        self.current_revision()
    }
    fn compacted(&self) -> i64 {
        self.compact_main_revision()
    }
}

/// A write txn plus what etcd tracks beside it: the revision it began at and
/// whether it changed anything yet.
struct Writer<'a, E: KvEngine + 'a> {
    txn: E::Txn<'a>,
    begin: i64,
    compacted: i64,
    changed: bool,
}

impl<'a, E: KvEngine + 'a> Writer<'a, E> {
    fn new(store: &'a mut E) -> Writer<'a, E> {
        let begin = store.current_revision();
        let compacted = store.compact_main_revision();
        Writer {
            txn: store.write(),
            begin,
            compacted,
            changed: false,
        }
    }

    fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> i64 {
        self.txn.put_blind(key, value, lease);
        self.changed = true;
        self.begin + 1
    }

    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> (Vec<KeyValue>, i64) {
        let deleted = self.txn.delete_range(key, end);
        if !deleted.is_empty() {
            self.changed = true;
        }
        let rev = if self.changed {
            self.begin + 1
        } else {
            self.begin
        };
        (deleted, rev)
    }
}

impl<'a, E: KvEngine + 'a> View for Writer<'a, E> {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        self.txn.range(key, end, opts)
    }
    fn rev(&self) -> i64 {
        if self.changed {
            self.begin + 1
        } else {
            self.begin
        }
    }
    fn compacted(&self) -> i64 {
        self.compacted
    }
}

/// A header with only the revision set (the API layer fills the rest).
pub fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// mvcc's KeyValue as the wire's.
pub fn to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    kv.into()
}

/// Range (etcd applierV3backend.Range).
pub fn range<E: KvEngine>(store: &E, r: &RangeRequest) -> Result<RangeResponse, ApiError> {
    range_in(store, r)
}

fn range_in(view: &impl View, r: &RangeRequest) -> Result<RangeResponse, ApiError> {
    use range_request::{SortOrder, SortTarget};
    // Out-of-enum values behave as in etcd: an unknown order still fetches
    // everything but sorts nothing. (An unknown target with an order makes
    // etcd 3.4 panic; here it sorts by key.)
    let sort_order = SortOrder::try_from(r.sort_order).ok();
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting and filtering need everything; otherwise fetch one extra for `more`.
    let limit = if sort_order != Some(SortOrder::None) || filtered {
        0
    } else if r.limit > 0 {
        r.limit.saturating_add(1)
    } else {
        0
    };
    let opts = RangeOptions {
        limit,
        rev: r.revision,
        count_only: r.count_only,
        keys_only: false,
        uncounted: false,
    };
    let rr = view.range(&r.key, &r.range_end, &opts)?;
    let mut kvs = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let order = if r.sort_target != SortTarget::Key as i32 && sort_order == Some(SortOrder::None) {
        // The store returns key order; any other target sorts ascending by default.
        Some(SortOrder::Ascend)
    } else {
        sort_order
    };
    if let Some(order @ (SortOrder::Ascend | SortOrder::Descend)) = order {
        let less = |a: &KeyValue, b: &KeyValue| match sort_target {
            SortTarget::Key => a.key < b.key,
            SortTarget::Version => a.version < b.version,
            SortTarget::Create => a.create_revision < b.create_revision,
            SortTarget::Mod => a.mod_revision < b.mod_revision,
            SortTarget::Value => a.value < b.value,
        };
        // etcd uses Go's sort.Sort, unstable: equal elements end up where it
        // leaves them, so the same algorithm is used here. DESCEND is
        // sort.Reverse, i.e. the reversed comparison, not a reversed result.
        if order == SortOrder::Descend {
            gosort::sort(&mut kvs, |a, b| less(b, a));
        } else {
            gosort::sort(&mut kvs, less);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    let kvs = kvs
        .into_iter()
        .map(|mut kv| {
            if r.keys_only {
                kv.value = Bytes::new();
            }
            to_pb(kv)
        })
        .collect();
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs,
        more,
        count: rr.count,
    })
}

/// Put outside a txn (etcd: the lease is checked before the write txn opens).
pub fn put<E: KvEngine>(
    store: &mut E,
    p: &PutRequest,
    leases: &LeaseTable,
) -> Result<(PutResponse, Vec<Event>), ApiError> {
    check_lease(p.lease, leases)?;
    let mut w = Writer::new(store);
    let resp = put_in(&mut w, p)?;
    let (_, events) = w.txn.end();
    Ok((resp, events))
}

/// A put's lease must exist (0: none).
fn check_lease(lease: i64, leases: &LeaseTable) -> Result<(), ApiError> {
    if lease != 0 && !leases.contains(lease) {
        return Err(ApiError::LeaseNotFound);
    }
    Ok(())
}

fn put_in<E: KvEngine>(w: &mut Writer<'_, E>, p: &PutRequest) -> Result<PutResponse, ApiError> {
    let mut value = Bytes::from(p.value.clone());
    let mut lease = p.lease;
    let mut prev_kv = None;
    if p.ignore_value || p.ignore_lease || p.prev_kv {
        let rr = w.range(&p.key, &[], &RangeOptions::default())?;
        let prev = rr.kvs.into_iter().next();
        if p.ignore_value || p.ignore_lease {
            let Some(prev) = &prev else {
                return Err(ApiError::KeyNotFound);
            };
            if p.ignore_value {
                value = prev.value.clone();
            }
            if p.ignore_lease {
                lease = prev.lease;
            }
        }
        if p.prev_kv {
            prev_kv = prev.map(to_pb);
        }
    }
    let rev = w.put(&p.key, value, lease);
    Ok(PutResponse {
        header: header(rev),
        prev_kv,
    })
}

/// DeleteRange outside a txn.
pub fn delete_range<E: KvEngine>(
    store: &mut E,
    d: &DeleteRangeRequest,
) -> (DeleteRangeResponse, Vec<Event>) {
    let mut w = Writer::new(store);
    let resp = delete_in(&mut w, d);
    let (_, events) = w.txn.end();
    (resp, events)
}

fn delete_in<E: KvEngine>(w: &mut Writer<'_, E>, d: &DeleteRangeRequest) -> DeleteRangeResponse {
    let (deleted, rev) = w.delete_range(&d.key, &d.range_end);
    DeleteRangeResponse {
        header: header(rev),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv {
            deleted.into_iter().map(to_pb).collect()
        } else {
            Vec::new()
        },
    }
}

/// Compact: reads below the revision fail from now on; the store may go on
/// removing the versions it lets go (a `physical` Compact is answered once
/// they are gone, see the apply actor).
pub fn compact<E: KvEngine>(
    store: &mut E,
    c: &CompactionRequest,
) -> Result<CompactionResponse, ApiError> {
    fail::fail_point!("engine::compact");
    store.compact(c.revision)?;
    Ok(CompactionResponse {
        header: header(store.current_revision()),
    })
}

/// Whether a txn writes anything in either branch, at any depth.
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_read_only(inner),
            Some(_) => false,
        })
}

/// Whether some branch of a txn (or of a txn in it) puts: what a NOSPACE
/// alarm refuses (etcd: a txn whose quota cost is not zero; deletes may
/// free space).
pub fn txn_has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_has_put(inner),
            _ => false,
        })
}

/// Whether every range in a (read-only) txn asks for a serializable read.
pub fn txn_is_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_serializable(inner),
            _ => true,
        })
}

/// Txn (etcd applierV3backend.Txn): compares and checks against the state
/// before the txn, then the chosen branch in one write txn.
pub fn txn<E: KvEngine>(
    store: &mut E,
    t: &TxnRequest,
    leases: &LeaseTable,
) -> Result<(TxnResponse, Vec<Event>), ApiError> {
    let mut path = Vec::new();
    compare_path(store, t, &mut path);
    let read_only = txn_is_read_only(t);
    if !read_only {
        check_branch(store, t, &path, &mut 0, Some(leases))?;
    }
    check_branch(store, t, &path, &mut 0, None)?;
    if read_only {
        let resp = apply_txn_read(store, t, &path, &mut 0)?;
        let mut resp = resp;
        resp.header = header(store.current_revision());
        return Ok((resp, Vec::new()));
    }
    let mut w = Writer::new(store);
    let mut resp = apply_txn(&mut w, t, &path, &mut 0)?;
    let rev = w.rev();
    let (_, events) = w.txn.end();
    resp.header = header(rev);
    Ok((resp, events))
}

/// The outcome of every txn's compares, in pre-order of the branches taken.
fn compare_path(view: &impl View, t: &TxnRequest, path: &mut Vec<bool>) {
    let ok = t.compare.iter().all(|c| apply_compare(view, c));
    path.push(ok);
    let branch = if ok { &t.success } else { &t.failure };
    for op in branch {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            compare_path(view, inner, path);
        }
    }
}

/// Validates the branch taken: puts (with `puts` the lease table: lease
/// exists, key exists for ignore_value/ignore_lease) or ranges (revision
/// neither future nor compacted).
fn check_branch(
    view: &impl View,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
    puts: Option<&LeaseTable>,
) -> Result<(), ApiError> {
    let ok = path[*at];
    *at += 1;
    let branch = if ok { &t.success } else { &t.failure };
    for op in branch {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) if puts.is_some() => {
                if p.ignore_value || p.ignore_lease {
                    let rr = view.range(&p.key, &[], &RangeOptions::default())?;
                    if rr.kvs.is_empty() {
                        return Err(ApiError::KeyNotFound);
                    }
                }
                if let Some(leases) = puts {
                    check_lease(p.lease, leases)?;
                }
            }
            Some(request_op::Request::RequestRange(r)) if puts.is_none() && r.revision != 0 => {
                if r.revision > view.rev() {
                    return Err(ApiError::FutureRevision);
                }
                if r.revision < view.compacted() {
                    return Err(ApiError::Compacted);
                }
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                check_branch(view, inner, path, at, puts)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn apply_compare(view: &impl View, c: &Compare) -> bool {
    let Ok(rr) = view.range(&c.key, &c.range_end, &RangeOptions::default()) else {
        return false;
    };
    // An unknown target compares as equal (etcd's compareKV leaves result 0).
    let target = compare::CompareTarget::try_from(c.target).ok();
    if rr.kvs.is_empty() {
        // A missing key has no value to compare; every other target compares as 0.
        if target == Some(compare::CompareTarget::Value) {
            return false;
        }
        return compare_kv(c, target, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, target, kv))
}

fn compare_kv(c: &Compare, target: Option<compare::CompareTarget>, kv: &KeyValue) -> bool {
    use compare::{CompareTarget, TargetUnion};
    use std::cmp::Ordering;
    let Some(target) = target else {
        return compare_result(c.result, Ordering::Equal);
    };
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value[..].cmp(want)
        }
        CompareTarget::Create => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(r)) => r,
            _ => 0,
        }),
        CompareTarget::Mod => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(r)) => r,
            _ => 0,
        }),
        CompareTarget::Version => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        CompareTarget::Lease => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(l)) => l,
            _ => 0,
        }),
    };
    compare_result(c.result, ord)
}

/// Whether `ord` satisfies the compare's result; an unknown result holds, as in etcd.
fn compare_result(result: i32, ord: std::cmp::Ordering) -> bool {
    use compare::CompareResult;
    use std::cmp::Ordering;
    match CompareResult::try_from(result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

fn branch_of<'t>(t: &'t TxnRequest, path: &[bool], at: &mut usize) -> (bool, &'t [RequestOp]) {
    let ok = path[*at];
    *at += 1;
    (ok, if ok { &t.success } else { &t.failure })
}

fn apply_txn<E: KvEngine>(
    w: &mut Writer<'_, E>,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<TxnResponse, ApiError> {
    let (succeeded, ops) = branch_of(t, path, at);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range_in(w, r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put_in(w, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_in(w, d))
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                response_op::Response::ResponseTxn(apply_txn(w, inner, path, at)?)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

fn apply_txn_read(
    view: &impl View,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<TxnResponse, ApiError> {
    let (succeeded, ops) = branch_of(t, path, at);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range_in(view, r)?)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                response_op::Response::ResponseTxn(apply_txn_read(view, inner, path, at)?)
            }
            _ => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use crate::storage::memory::mvcc::MemStore;

    fn put_req(k: &str, v: &str) -> PutRequest {
        PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
    }

    fn get(store: &MemStore, k: &str) -> RangeResponse {
        range(
            store,
            &RangeRequest {
                key: k.into(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn op_put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(put_req(k, v))),
        }
    }

    fn op_get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn cmp_version(k: &str, res: CompareResult, v: i64) -> Compare {
        Compare {
            key: k.into(),
            target: CompareTarget::Version as i32,
            result: res as i32,
            target_union: Some(TargetUnion::Version(v)),
            range_end: vec![],
        }
    }

    #[test]
    fn put_revisions_and_prev_kv_match_etcd() {
        let mut s = MemStore::new();
        let (r, _) = put(&mut s, &put_req("foo", "bar"), &LeaseTable::default()).unwrap();
        assert_eq!(r.header.unwrap().revision, 2);
        let mut p = put_req("foo", "baz");
        p.prev_kv = true;
        let (r, _) = put(&mut s, &p, &LeaseTable::default()).unwrap();
        assert_eq!(r.header.unwrap().revision, 3);
        let prev = r.prev_kv.unwrap();
        assert_eq!(
            (&prev.value[..], prev.version, prev.mod_revision),
            (&b"bar"[..], 1, 2)
        );
        let got = get(&s, "foo");
        assert_eq!(got.kvs[0].version, 2);
        assert_eq!(got.kvs[0].create_revision, 2);
    }

    #[test]
    fn ignore_value_on_a_missing_key_fails_without_a_revision() {
        let mut s = MemStore::new();
        let mut p = put_req("k", "");
        p.ignore_value = true;
        assert_eq!(
            put(&mut s, &p, &LeaseTable::default()).unwrap_err(),
            ApiError::KeyNotFound
        );
        assert_eq!(s.current_revision(), 1);
        put(&mut s, &put_req("k", "v1"), &LeaseTable::default()).unwrap();
        put(&mut s, &p, &LeaseTable::default()).unwrap();
        assert_eq!(get(&s, "k").kvs[0].value, &b"v1"[..]);
    }

    #[test]
    fn a_lease_that_does_not_exist_is_refused() {
        let mut s = MemStore::new();
        let mut p = put_req("k", "v");
        p.lease = 42;
        assert_eq!(
            put(&mut s, &p, &LeaseTable::default()).unwrap_err(),
            ApiError::LeaseNotFound
        );
        assert_eq!(s.current_revision(), 1);
    }

    #[test]
    fn delete_of_nothing_keeps_the_revision() {
        let mut s = MemStore::new();
        let (r, ev) = delete_range(
            &mut s,
            &DeleteRangeRequest {
                key: b"nope".to_vec(),
                ..Default::default()
            },
        );
        assert_eq!((r.deleted, r.header.unwrap().revision), (0, 1));
        assert!(ev.is_empty());
    }

    #[test]
    fn txn_success_branch_shares_one_revision() {
        let mut s = MemStore::new();
        let t = TxnRequest {
            compare: vec![cmp_version("a", CompareResult::Equal, 0)],
            success: vec![op_put("a", "1"), op_put("b", "2"), op_get("a")],
            failure: vec![op_get("a")],
        };
        let (r, events) = txn(&mut s, &t, &LeaseTable::default()).unwrap();
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 2);
        assert_eq!(events.len(), 2);
        // The range inside the txn sees the txn's own put.
        let Some(response_op::Response::ResponseRange(rr)) = &r.responses[2].response else {
            panic!("range response expected");
        };
        assert_eq!(rr.kvs[0].value, &b"1"[..]);
        assert_eq!(rr.header.as_ref().unwrap().revision, 2);
        // Second time the compare fails: the failure branch only reads.
        let (r, events) = txn(&mut s, &t, &LeaseTable::default()).unwrap();
        assert!(!r.succeeded);
        assert!(events.is_empty());
        assert_eq!(r.header.unwrap().revision, 2);
    }

    #[test]
    fn value_compare_on_a_missing_key_is_false() {
        let mut s = MemStore::new();
        let t = TxnRequest {
            compare: vec![Compare {
                key: b"x".to_vec(),
                target: CompareTarget::Value as i32,
                result: CompareResult::NotEqual as i32,
                target_union: Some(TargetUnion::Value(b"y".to_vec())),
                range_end: vec![],
            }],
            success: vec![],
            failure: vec![],
        };
        assert!(!txn(&mut s, &t, &LeaseTable::default()).unwrap().0.succeeded);
    }

    #[test]
    fn nested_txn_follows_its_own_compare() {
        let mut s = MemStore::new();
        put(&mut s, &put_req("a", "1"), &LeaseTable::default()).unwrap();
        let inner = TxnRequest {
            compare: vec![cmp_version("a", CompareResult::Greater, 5)],
            success: vec![op_put("x", "then")],
            failure: vec![op_put("x", "else")],
        };
        let outer = TxnRequest {
            compare: vec![cmp_version("a", CompareResult::Equal, 1)],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(inner)),
            }],
            failure: vec![],
        };
        let (r, _) = txn(&mut s, &outer, &LeaseTable::default()).unwrap();
        assert!(r.succeeded);
        let Some(response_op::Response::ResponseTxn(inner_resp)) = &r.responses[0].response else {
            panic!("nested txn response expected");
        };
        assert!(!inner_resp.succeeded);
        assert_eq!(get(&s, "x").kvs[0].value, &b"else"[..]);
    }

    #[test]
    fn a_failing_check_applies_nothing() {
        let mut s = MemStore::new();
        let mut bad = put_req("k2", "v");
        bad.ignore_value = true;
        bad.value = vec![];
        let t = TxnRequest {
            compare: vec![],
            success: vec![
                op_put("k1", "v"),
                RequestOp {
                    request: Some(request_op::Request::RequestPut(bad)),
                },
            ],
            failure: vec![],
        };
        assert_eq!(
            txn(&mut s, &t, &LeaseTable::default()).unwrap_err(),
            ApiError::KeyNotFound
        );
        assert_eq!(s.current_revision(), 1);
        assert!(get(&s, "k1").kvs.is_empty());
    }

    #[test]
    fn range_sorts_limits_and_reports_more() {
        let mut s = MemStore::new();
        for (k, v) in [("a", "3"), ("b", "1"), ("c", "2")] {
            put(&mut s, &put_req(k, v), &LeaseTable::default()).unwrap();
        }
        let r = range(
            &s,
            &RangeRequest {
                key: b"a".to_vec(),
                range_end: b"d".to_vec(),
                limit: 2,
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Value as i32,
                ..Default::default()
            },
        )
        .unwrap();
        let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
        assert!(r.more);
        assert_eq!(r.count, 3);
    }

    fn read_txn(rev: i64) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    revision: rev,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        }
    }

    #[test]
    fn negative_range_revision_in_a_txn_passes_until_a_compaction() {
        let mut s = MemStore::new();
        put(&mut s, &put_req("k", "v"), &LeaseTable::default()).unwrap();
        // etcd compares with compactMainRev, which is -1 before any compaction.
        assert!(txn(&mut s, &read_txn(-1), &LeaseTable::default()).is_ok());
        compact(
            &mut s,
            &CompactionRequest {
                revision: 0,
                physical: false,
            },
        )
        .unwrap();
        assert_eq!(
            txn(&mut s, &read_txn(-1), &LeaseTable::default()).unwrap_err(),
            ApiError::Compacted
        );
    }

    #[test]
    fn unknown_compare_target_is_equal_and_unknown_result_holds() {
        let mut s = MemStore::new();
        put(&mut s, &put_req("a", "1"), &LeaseTable::default()).unwrap();
        let with = |target: i32, result: i32| TxnRequest {
            compare: vec![Compare {
                target,
                result,
                ..cmp_version("a", CompareResult::Equal, 5)
            }],
            success: vec![],
            failure: vec![],
        };
        let ok = |s: &mut MemStore, t| txn(s, &t, &LeaseTable::default()).unwrap().0.succeeded;
        assert!(ok(&mut s, with(42, CompareResult::Equal as i32)));
        assert!(!ok(&mut s, with(42, CompareResult::Less as i32)));
        assert!(ok(&mut s, with(CompareTarget::Version as i32, 42)));
        assert!(!ok(
            &mut s,
            with(CompareTarget::Version as i32, CompareResult::Equal as i32)
        ));
    }

    #[test]
    fn sorting_follows_go_sort_not_a_stable_sort() {
        let mut s = MemStore::new();
        // 40 keys, every 4th at version 2: etcd 3.4.23 answered this order.
        for i in 0..40 {
            put(
                &mut s,
                &put_req(&format!("s{i:02}"), "v"),
                &LeaseTable::default(),
            )
            .unwrap();
        }
        for i in (0..40).step_by(4) {
            put(
                &mut s,
                &put_req(&format!("s{i:02}"), "v"),
                &LeaseTable::default(),
            )
            .unwrap();
        }
        let r = range(
            &s,
            &RangeRequest {
                key: b"s".to_vec(),
                range_end: b"t".to_vec(),
                sort_target: range_request::SortTarget::Version as i32,
                ..Default::default()
            },
        )
        .unwrap();
        let got: Vec<String> = r
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        let want = "s30 s34 s02 s03 s39 s05 s18 s07 s38 s09 s10 s11 s37 s13 s14 s15 s35 \
                    s19 s06 s01 s17 s21 s22 s23 s33 s25 s26 s27 s31 s29 s00 s28 s32 s24 \
                    s20 s16 s36 s12 s08 s04";
        assert_eq!(
            got.join(" "),
            want.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        // Up to 12 items Go sorts by insertion: DESCEND keeps ties in key order.
        let r = range(
            &s,
            &RangeRequest {
                key: b"s0".to_vec(),
                range_end: b"s1".to_vec(),
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Version as i32,
                ..Default::default()
            },
        )
        .unwrap();
        let got: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        let want: Vec<&[u8]> = vec![
            b"s00", b"s04", b"s08", b"s01", b"s02", b"s03", b"s05", b"s06", b"s07", b"s09",
        ];
        assert_eq!(got, want);
    }
}
