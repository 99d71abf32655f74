//! Differential runs: the same KV operations, in the same order, against etcd
//! 3.4 and MetaStore; every answer normalised to [`Out`] and compared.
//!
//! Normalisation keeps everything etcd promises to a client: revisions, every
//! field of every key-value, count, more, deleted, succeeded, the responses of
//! a txn (nested ones included, with their whole headers: etcd leaves the ids
//! of inner headers 0), gRPC code and message. Only the ids and term of the
//! top-level header legitimately differ between two clusters; they become
//! "present or not" so a missing id still shows up as a difference.

use std::fmt;

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions, Txn, TxnOpResponse};
use metastore::proto::etcdserverpb as pb;
use metastore::proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use crate::harness::{Pair, Server};

/// Bytes shown as escaped ASCII, so binary keys stay readable in diffs.
#[derive(Clone, PartialEq, Eq)]
pub struct B(pub Vec<u8>);

impl fmt::Debug for B {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl PartialEq<&str> for B {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A key-value as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: B,
    pub create: i64,
    pub modr: i64,
    pub ver: i64,
    pub value: B,
    pub lease: i64,
}

/// A response header. At the top level ids and term are reduced to 1
/// (present) or 0 (absent); inside a txn they are kept as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hdr {
    pub cluster: u64,
    pub member: u64,
    pub rev: i64,
    pub term: u64,
}

/// A normalised answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    Put {
        hdr: Option<Hdr>,
        prev: Option<Kv>,
    },
    Get {
        hdr: Option<Hdr>,
        kvs: Vec<Kv>,
        count: i64,
        more: bool,
    },
    Del {
        hdr: Option<Hdr>,
        deleted: i64,
        prev: Vec<Kv>,
    },
    Txn {
        hdr: Option<Hdr>,
        ok: bool,
        ops: Vec<Out>,
    },
    Compact {
        hdr: Option<Hdr>,
    },
    Err {
        code: String,
        msg: String,
    },
}

impl Out {
    /// Header revision (panics on errors).
    pub fn rev(&self) -> i64 {
        let hdr = match self {
            Out::Put { hdr, .. }
            | Out::Get { hdr, .. }
            | Out::Del { hdr, .. }
            | Out::Txn { hdr, .. }
            | Out::Compact { hdr } => hdr,
            Out::Err { code, msg } => panic!("no revision in an error: {code} {msg}"),
        };
        hdr.as_ref().expect("a header").rev
    }

    /// The kvs of a Get as (key, value) strings.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            Out::Get { kvs, .. } => kvs
                .iter()
                .map(|kv| {
                    (
                        kv.key.0.escape_ascii().to_string(),
                        kv.value.0.escape_ascii().to_string(),
                    )
                })
                .collect(),
            other => panic!("not a get: {other:?}"),
        }
    }

    /// The (code, message) of an error.
    pub fn err(&self) -> (&str, &str) {
        match self {
            Out::Err { code, msg } => (code, msg),
            other => panic!("not an error: {other:?}"),
        }
    }

    /// The op responses of a txn.
    pub fn ops(&self) -> &[Out] {
        match self {
            Out::Txn { ops, .. } => ops,
            other => panic!("not a txn: {other:?}"),
        }
    }

    /// Whether a txn took its success branch.
    pub fn succeeded(&self) -> bool {
        match self {
            Out::Txn { ok, .. } => *ok,
            other => panic!("not a txn: {other:?}"),
        }
    }

    /// The count of a Get.
    pub fn count(&self) -> i64 {
        match self {
            Out::Get { count, .. } => *count,
            other => panic!("not a get: {other:?}"),
        }
    }
}

fn hdr_of(cluster: u64, member: u64, rev: i64, term: u64, top: bool) -> Hdr {
    if top {
        Hdr {
            cluster: u64::from(cluster != 0),
            member: u64::from(member != 0),
            rev,
            term: u64::from(term != 0),
        }
    } else {
        Hdr {
            cluster,
            member,
            rev,
            term,
        }
    }
}

// ---- etcd-client answers ----

fn ec_hdr(h: Option<&etcd_client::ResponseHeader>, top: bool) -> Option<Hdr> {
    h.map(|h| {
        hdr_of(
            h.cluster_id(),
            h.member_id(),
            h.revision(),
            h.raft_term(),
            top,
        )
    })
}

fn ec_kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: B(kv.key().to_vec()),
        create: kv.create_revision(),
        modr: kv.mod_revision(),
        ver: kv.version(),
        value: B(kv.value().to_vec()),
        lease: kv.lease(),
    }
}

fn ec_put(r: &etcd_client::PutResponse, top: bool) -> Out {
    Out::Put {
        hdr: ec_hdr(r.header(), top),
        prev: r.prev_key().map(ec_kv),
    }
}

fn ec_get(r: &etcd_client::GetResponse, top: bool) -> Out {
    Out::Get {
        hdr: ec_hdr(r.header(), top),
        kvs: r.kvs().iter().map(ec_kv).collect(),
        count: r.count(),
        more: r.more(),
    }
}

fn ec_del(r: &etcd_client::DeleteResponse, top: bool) -> Out {
    Out::Del {
        hdr: ec_hdr(r.header(), top),
        deleted: r.deleted(),
        prev: r.prev_kvs().iter().map(ec_kv).collect(),
    }
}

fn ec_txn(r: &etcd_client::TxnResponse, top: bool) -> Out {
    Out::Txn {
        hdr: ec_hdr(r.header(), top),
        ok: r.succeeded(),
        ops: r
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Put(p) => ec_put(p, false),
                TxnOpResponse::Get(g) => ec_get(g, false),
                TxnOpResponse::Delete(d) => ec_del(d, false),
                TxnOpResponse::Txn(t) => ec_txn(t, false),
            })
            .collect(),
    }
}

fn ec_err(e: etcd_client::Error) -> Out {
    match e {
        etcd_client::Error::GRpcStatus(s) => status_out(&s),
        other => Out::Err {
            code: "client".into(),
            msg: other.to_string(),
        },
    }
}

/// A gRPC status as an [`Out::Err`].
pub fn status_out(s: &tonic::Status) -> Out {
    Out::Err {
        code: format!("{:?}", s.code()),
        msg: s.message().to_owned(),
    }
}

// ---- raw protobuf answers ----

fn pb_hdr(h: &Option<pb::ResponseHeader>, top: bool) -> Option<Hdr> {
    h.as_ref()
        .map(|h| hdr_of(h.cluster_id, h.member_id, h.revision, h.raft_term, top))
}

fn pb_kv(kv: &metastore::proto::mvccpb::KeyValue) -> Kv {
    Kv {
        key: B(kv.key.clone()),
        create: kv.create_revision,
        modr: kv.mod_revision,
        ver: kv.version,
        value: B(kv.value.to_vec()),
        lease: kv.lease,
    }
}

fn pb_put(r: &pb::PutResponse, top: bool) -> Out {
    Out::Put {
        hdr: pb_hdr(&r.header, top),
        prev: r.prev_kv.as_ref().map(pb_kv),
    }
}

fn pb_get(r: &pb::RangeResponse, top: bool) -> Out {
    Out::Get {
        hdr: pb_hdr(&r.header, top),
        kvs: r.kvs.iter().map(pb_kv).collect(),
        count: r.count,
        more: r.more,
    }
}

fn pb_del(r: &pb::DeleteRangeResponse, top: bool) -> Out {
    Out::Del {
        hdr: pb_hdr(&r.header, top),
        deleted: r.deleted,
        prev: r.prev_kvs.iter().map(pb_kv).collect(),
    }
}

fn pb_txn(r: &pb::TxnResponse, top: bool) -> Out {
    use pb::response_op::Response;
    Out::Txn {
        hdr: pb_hdr(&r.header, top),
        ok: r.succeeded,
        ops: r
            .responses
            .iter()
            .map(|op| match &op.response {
                Some(Response::ResponsePut(p)) => pb_put(p, false),
                Some(Response::ResponseRange(g)) => pb_get(g, false),
                Some(Response::ResponseDeleteRange(d)) => pb_del(d, false),
                Some(Response::ResponseTxn(t)) => pb_txn(t, false),
                None => Out::Err {
                    code: "empty".into(),
                    msg: "response op without a response".into(),
                },
            })
            .collect(),
    }
}

// ---- operations ----

/// One operation of a differential script.
#[derive(Clone, Debug)]
pub enum Op {
    Put(B, B, Option<PutOptions>),
    Get(B, Option<GetOptions>),
    Del(B, Option<DeleteOptions>),
    Txn(Txn),
    Compact(i64, bool),
    /// Requests sent as they are, through the raw gRPC client.
    RawGet(pb::RangeRequest),
    RawPut(pb::PutRequest),
    RawDel(pb::DeleteRangeRequest),
    RawTxn(pb::TxnRequest),
    RawCompact(pb::CompactionRequest),
}

pub fn put(k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) -> Op {
    Op::Put(B(k.into()), B(v.into()), None)
}
pub fn put_with(k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>, o: PutOptions) -> Op {
    Op::Put(B(k.into()), B(v.into()), Some(o))
}
pub fn get(k: impl Into<Vec<u8>>) -> Op {
    Op::Get(B(k.into()), None)
}
pub fn get_with(k: impl Into<Vec<u8>>, o: GetOptions) -> Op {
    Op::Get(B(k.into()), Some(o))
}
pub fn del(k: impl Into<Vec<u8>>) -> Op {
    Op::Del(B(k.into()), None)
}
pub fn del_with(k: impl Into<Vec<u8>>, o: DeleteOptions) -> Op {
    Op::Del(B(k.into()), Some(o))
}
pub fn txn(t: Txn) -> Op {
    Op::Txn(t)
}
pub fn compact(rev: i64) -> Op {
    Op::Compact(rev, false)
}

/// Both clients of one server.
pub struct Conn {
    pub client: Client,
    pub raw: KvClient<Channel>,
}

impl Conn {
    pub async fn to(s: &Server) -> Conn {
        Conn {
            client: s.client().await,
            raw: s.raw_kv().await,
        }
    }

    /// Runs one operation and normalises the answer.
    pub async fn apply(&mut self, op: &Op) -> Out {
        let c = &mut self.client;
        let raw = &mut self.raw;
        match op.clone() {
            Op::Put(k, v, o) => c
                .put(k.0, v.0, o)
                .await
                .map_or_else(ec_err, |r| ec_put(&r, true)),
            Op::Get(k, o) => c
                .get(k.0, o)
                .await
                .map_or_else(ec_err, |r| ec_get(&r, true)),
            Op::Del(k, o) => c
                .delete(k.0, o)
                .await
                .map_or_else(ec_err, |r| ec_del(&r, true)),
            Op::Txn(t) => c.txn(t).await.map_or_else(ec_err, |r| ec_txn(&r, true)),
            Op::Compact(rev, physical) => {
                let o = physical.then(|| etcd_client::CompactionOptions::new().with_physical());
                c.compact(rev, o)
                    .await
                    .map_or_else(ec_err, |r| Out::Compact {
                        hdr: ec_hdr(r.header(), true),
                    })
            }
            Op::RawGet(r) => raw
                .range(r)
                .await
                .map_or_else(|s| status_out(&s), |r| pb_get(r.get_ref(), true)),
            Op::RawPut(r) => raw
                .put(r)
                .await
                .map_or_else(|s| status_out(&s), |r| pb_put(r.get_ref(), true)),
            Op::RawDel(r) => raw
                .delete_range(r)
                .await
                .map_or_else(|s| status_out(&s), |r| pb_del(r.get_ref(), true)),
            Op::RawTxn(r) => raw
                .txn(r)
                .await
                .map_or_else(|s| status_out(&s), |r| pb_txn(r.get_ref(), true)),
            Op::RawCompact(r) => raw.compact(r).await.map_or_else(
                |s| status_out(&s),
                |r| Out::Compact {
                    hdr: pb_hdr(&r.get_ref().header, true),
                },
            ),
        }
    }
}

/// Connections to both daemons of a pair.
pub struct Both {
    pub etcd: Conn,
    pub ms: Conn,
}

impl Both {
    pub async fn to(pair: &Pair) -> Both {
        Both {
            etcd: Conn::to(&pair.etcd).await,
            ms: Conn::to(&pair.ms).await,
        }
    }

    /// Runs `ops` in order on etcd and on MetaStore; panics listing every
    /// step whose answers differ. Returns etcd's answers, for absolute checks.
    pub async fn run(&mut self, ops: &[Op]) -> Vec<Out> {
        let mut outs = Vec::with_capacity(ops.len());
        let mut diffs = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let want = self.etcd.apply(op).await;
            let got = self.ms.apply(op).await;
            if want != got {
                let mut op = format!("{op:?}");
                if op.len() > 400 {
                    op.truncate(400);
                    op.push_str("...");
                }
                diffs.push(format!(
                    "step {i}: {op}\n  etcd:      {want:?}\n  metastore: {got:?}"
                ));
            }
            outs.push(want);
        }
        assert!(
            diffs.is_empty(),
            "MetaStore differs from etcd 3.4 in {} of {} steps:\n{}",
            diffs.len(),
            ops.len(),
            diffs.join("\n")
        );
        outs
    }

    /// One operation on both; returns etcd's answer.
    pub async fn one(&mut self, op: Op) -> Out {
        self.run(std::slice::from_ref(&op)).await.remove(0)
    }
}

/// etcd's (gRPC code, message) for the errors the tests provoke.
pub const EMPTY_KEY: (&str, &str) = ("InvalidArgument", "etcdserver: key is not provided");
pub const KEY_NOT_FOUND: (&str, &str) = ("InvalidArgument", "etcdserver: key not found");
pub const TOO_MANY_OPS: (&str, &str) = (
    "InvalidArgument",
    "etcdserver: too many operations in txn request",
);
pub const DUPLICATE: (&str, &str) = (
    "InvalidArgument",
    "etcdserver: duplicate key given in txn request",
);
pub const TOO_LARGE: (&str, &str) = ("InvalidArgument", "etcdserver: request is too large");
pub const VALUE_PROVIDED: (&str, &str) = ("InvalidArgument", "etcdserver: value is provided");
pub const LEASE_PROVIDED: (&str, &str) = ("InvalidArgument", "etcdserver: lease is provided");
pub const LEASE_NOT_FOUND: (&str, &str) = ("NotFound", "etcdserver: requested lease not found");
pub const COMPACTED: (&str, &str) = (
    "OutOfRange",
    "etcdserver: mvcc: required revision has been compacted",
);
pub const FUTURE: (&str, &str) = (
    "OutOfRange",
    "etcdserver: mvcc: required revision is a future revision",
);
