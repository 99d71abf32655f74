//! `--workload k8s`: the traffic kube-apiserver's storage layer
//! (k8s.io/apiserver/pkg/storage/etcd3) sends to etcd, with every answer
//! checked (check.rs).
//!
//! # The data
//!
//! `--keys` objects `/registry/<resource>/ns-<nn>/obj-<j>` over five
//! resources (pods, configmaps, secrets, leases, services) and twenty
//! namespaces, values of 1-4 KiB of random bytes, put before the measured
//! phase (not measured). Object slots run to 5/4 of `--keys`, so creates
//! and deletes find both free and taken slots. Events are
//! `/registry/events/ns-<nn>/ev-<n>` (2000 names), put with one shared lease
//! (TTL 1 h, granted once and kept alive) as the apiserver attaches events to
//! a reused lease.
//!
//! # The load (closed loop, `--k8s-duration`)
//!
//! `--clients` clients, each on its own connection, each with one request
//! in flight, pick per operation (per mille): update 255, create 8,
//! delete 8, event 29 (writes 30 %: 90 % of them optimistic
//! compare-and-swaps), get 140, count 105, namespace LIST 420, resource
//! LIST 35 (reads 70 %: 80 % of them lists and counts).
//!
//! * create: `Txn(If mod_revision(k) == 0, Then Put, Else Get)`;
//! * update (GuaranteedUpdate): from the shared cache of what was last seen
//!   of the key (the apiserver's watch cache), else a Get, then
//!   `Txn(If mod_revision(k) == seen, Then Put, Else Get)`; a failed compare
//!   retries from the value the Else branch returned (up to 16 times);
//!   delete the same with DeleteRange; measured as one operation with all
//!   its retries;
//! * get: linearizable Range of one key; count: `count_only` Range of a
//!   resource prefix;
//! * LIST of a namespace or a whole resource: pages of 500, the first at
//!   the current revision, the next from the last key + "\0" to the prefix
//!   end at the first page's revision (linearizable);
//! * event: `Put(k, v, lease)`.
//!
//! Beside them, not measured as operations: one watcher per resource prefix
//! (and events), each on its own connection, started from a LIST's
//! revision + 1 with `prev_kv` and `progress_notify`, asking for progress
//! (WatchProgressRequest) every second; and the apiserver's compactor every
//! `--k8s-compact-interval`: `Txn(If version(compact_rev_key) == last,
//! Then Put(compact_rev_key, rev), Else Get)` and, if it won, `Compact` at
//! the revision seen the round before.
//!
//! # Checked
//!
//! Every LIST, get and failed compare's value against the writers'
//! acknowledged writes, and every watcher's whole stream once the writers
//! stopped and each watcher got a progress notification past the last
//! revision (check.rs says what and why that is sound). Any violation fails
//! the run.
//!
//! # Reported
//!
//! Per kind: ops/s, p50, p99, max; the watch lag (writer's acknowledgement
//! to the watcher's delivery); the compactions, the snapshot files the
//! members wrote (their data dirs polled every 50 ms) and every window in
//! which some operation took over 100 ms (a stall), with the kinds it hit.

pub mod check;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use crate::driver::histogram;
use metastore::api::concurrency::prefix_end;
use metastore::proto::etcdserverpb::kv_client::KvClient;
use metastore::proto::etcdserverpb::lease_client::LeaseClient;
use metastore::proto::etcdserverpb::watch_client::WatchClient;
use metastore::proto::etcdserverpb::{
    compare, request_op, response_op, watch_request, CompactionRequest, Compare,
    DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use self::check::{Delivery, Kv, List, Model, Page, Prev, WatchLog, Write};
use crate::bench::Target;
use crate::cli::Args;
use crate::driver::Outcome;
use crate::report::{Probes, RunResult};
use crate::secure::Authed;

const RESOURCES: [&str; 5] = ["pods", "configmaps", "secrets", "leases", "services"];
const NAMESPACES: u64 = 20;
const EVENT_NAMES: u64 = 2000;
/// The apiserver's page size for paginated lists.
pub(crate) const PAGE: i64 = 500;
/// An operation slower than this is a stall.
const STALL_MS: u64 = 100;
/// GuaranteedUpdate gives up after this many failed compares.
const MAX_RETRIES: usize = 16;
/// TTL of the events' lease (the apiserver's default --event-ttl).
const EVENT_TTL: i64 = 3600;
/// The apiserver's compaction key.
const COMPACT_KEY: &[u8] = b"compact_rev_key";

/// The kinds of operations measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Create,
    Update,
    Delete,
    Get,
    Count,
    List,
    Event,
    Compact,
}

const KINDS: [Kind; 8] = [
    Kind::Create,
    Kind::Update,
    Kind::Delete,
    Kind::Get,
    Kind::Count,
    Kind::List,
    Kind::Event,
    Kind::Compact,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Get => "get",
            Kind::Count => "count",
            Kind::List => "list",
            Kind::Event => "event",
            Kind::Compact => "compact",
        }
    }
}

/// One kind's figures.
#[derive(Debug, Clone, Serialize)]
pub struct KindStats {
    pub kind: String,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// A compaction round that compacted.
#[derive(Debug, Clone, Serialize)]
pub struct CompactionAt {
    /// Since the measured phase started.
    pub t_ms: u64,
    pub rev: i64,
    /// The CAS txn and the Compact call together.
    pub ms: u64,
}

/// A file that appeared in a member's snapshot directory.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotAt {
    pub t_ms: u64,
    pub member: usize,
    pub file: String,
}

/// A pause: over [`STALL_MS`] in which no operation of any client
/// completed, though every client had one in flight (a closed loop).
#[derive(Debug, Clone, Serialize)]
pub struct Pause {
    /// The last completion before it, since the phase started.
    pub start_ms: u64,
    pub ms: u64,
    /// Operations in flight over the whole pause, their kinds and the
    /// slowest one's latency.
    pub ops: u64,
    pub kinds: Vec<String>,
    pub max_op_ms: u64,
    /// Compactions and snapshot files within a second of it.
    pub near: Vec<String>,
}

/// What the k8s workload did and found.
#[derive(Debug, Clone, Serialize)]
pub struct K8sStats {
    /// Wall clock at the start of the measured phase (for server logs).
    pub started_unix_ms: u64,
    pub keys: u64,
    pub compact_interval_ms: u64,
    pub kinds: Vec<KindStats>,
    pub watchers: usize,
    pub watch_events: u64,
    pub watch_verified: u64,
    pub watch_unverified: u64,
    pub watch_lag_p50_us: u64,
    pub watch_lag_p99_us: u64,
    pub watch_lag_max_us: u64,
    pub lists_checked: u64,
    pub list_keys: u64,
    /// LISTs restarted because their revision was compacted between pages.
    pub list_restarts: u64,
    pub known_writes: u64,
    /// Failed compares that were retried (updates, deletes).
    pub conflicts: u64,
    /// Updates and deletes of keys that did not exist, creates of keys that did.
    pub not_found: u64,
    pub exists: u64,
    pub violations: u64,
    pub violation_samples: Vec<String>,
    pub compactions: Vec<CompactionAt>,
    pub snapshots: Vec<SnapshotAt>,
    /// Operations over STALL_MS.
    pub slow_ops: u64,
    pub pauses: Vec<Pause>,
}

/// What every task shares.
struct Shared {
    model: Mutex<Model>,
    /// Last seen (mod_revision, value hash) per key: the watch cache.
    cache: Mutex<HashMap<Vec<u8>, (i64, check::Hash)>>,
    violations: Mutex<Vec<String>>,
    violation_count: AtomicU64,
    /// The start of the measured phase.
    started: std::sync::OnceLock<Instant>,
    /// Random bytes values are cut from.
    noise: Vec<u8>,
    slots: u64,
    lease: AtomicI64,
}

impl Shared {
    fn violation(&self, v: String) {
        self.violation_count.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.violations);
        if s.len() < 20 {
            s.push(v);
        }
    }

    fn record(&self, w: Write) {
        let entry = w.value.map(|h| (w.rev, h));
        {
            let mut c = lock(&self.cache);
            match entry {
                Some(e) => c.insert(w.key.clone(), e),
                None => c.remove(&w.key),
            };
        }
        lock(&self.model).record(w);
    }

    fn uncertain(&self, key: &[u8]) {
        lock(&self.cache).remove(key);
        lock(&self.model).uncertain(key);
    }

    /// A value of 1-4 KiB: 8 random bytes, then a random cut of the noise.
    fn value(&self, rng: &mut StdRng) -> Vec<u8> {
        let len = rng.gen_range(1024..=4096usize);
        let at = rng.gen_range(0..self.noise.len() - len);
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
        v.extend_from_slice(&self.noise[at..at + len - 8]);
        v
    }

    fn ms(&self, at: Instant) -> u64 {
        let started = self.started.get().copied().unwrap_or(at);
        at.saturating_duration_since(started).as_millis() as u64
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A task that panicked holding it leaves plain data behind.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn object_key(j: u64) -> Vec<u8> {
    let res = RESOURCES[(j % RESOURCES.len() as u64) as usize];
    let ns = (j / RESOURCES.len() as u64) % NAMESPACES;
    format!("/registry/{res}/ns-{ns:02}/obj-{j:07}").into_bytes()
}

fn event_key(n: u64) -> Vec<u8> {
    format!("/registry/events/ns-{:02}/ev-{n:05}", n % NAMESPACES).into_bytes()
}

pub(crate) fn status(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn kv_of(kv: &metastore::proto::mvccpb::KeyValue) -> Kv {
    Kv {
        key: kv.key.clone(),
        create_rev: kv.create_revision,
        mod_rev: kv.mod_revision,
        hash: check::hash(&kv.value),
    }
}

type Kvc = KvClient<Authed>;

/// One client's figures.
struct Stats {
    hists: Vec<Histogram<u64>>,
    errors: Vec<u64>,
    error_samples: BTreeMap<String, u64>,
    /// (start ms, latency ms, kind) of every operation over STALL_MS.
    stalls: Vec<(u64, u64, Kind)>,
    samples: Vec<(u32, u32)>,
    conflicts: u64,
    not_found: u64,
    exists: u64,
    lists: u64,
    list_keys: u64,
    list_restarts: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hists: KINDS.iter().map(|_| histogram()).collect(),
            errors: vec![0; KINDS.len()],
            error_samples: BTreeMap::new(),
            stalls: Vec::new(),
            samples: Vec::new(),
            conflicts: 0,
            not_found: 0,
            exists: 0,
            lists: 0,
            list_keys: 0,
            list_restarts: 0,
        }
    }

    fn done(&mut self, shared: &Shared, kind: Kind, sent: Instant, r: Result<(), String>) {
        let i = kind as usize;
        match r {
            Ok(()) => {
                let us = sent.elapsed().as_micros() as u64;
                self.hists[i].saturating_record(us.max(1));
                let at = shared.ms(sent);
                if us >= STALL_MS * 1000 {
                    self.stalls.push((at, us / 1000, kind));
                }
                self.samples.push((
                    u32::try_from(at).unwrap_or(u32::MAX),
                    u32::try_from(us).unwrap_or(u32::MAX),
                ));
            }
            Err(e) => {
                self.errors[i] += 1;
                let msg = format!("{}: {e}", kind.name());
                if let Some(n) = self.error_samples.get_mut(&msg) {
                    *n += 1;
                } else if self.error_samples.len() < 5 {
                    self.error_samples.insert(msg, 1);
                }
            }
        }
    }

    fn merge(&mut self, o: Stats) {
        for (a, b) in self.hists.iter_mut().zip(&o.hists) {
            a.add(b).expect("histograms with equal bounds");
        }
        for (a, b) in self.errors.iter_mut().zip(&o.errors) {
            *a += b;
        }
        for (m, n) in o.error_samples {
            *self.error_samples.entry(m).or_default() += n;
        }
        self.stalls.extend(o.stalls);
        self.samples.extend(o.samples);
        self.conflicts += o.conflicts;
        self.not_found += o.not_found;
        self.exists += o.exists;
        self.lists += o.lists;
        self.list_keys += o.list_keys;
        self.list_restarts += o.list_restarts;
    }
}

/// A paginated LIST of `[start, end)`, checked; `None` when its revision
/// was compacted between pages (the apiserver then starts over).
async fn list(
    kv: &mut Kvc,
    shared: &Shared,
    start: &[u8],
    end: &[u8],
) -> Result<Option<List>, String> {
    let mut l = List {
        start: start.to_vec(),
        end: end.to_vec(),
        rev: 0,
        pages: Vec::new(),
    };
    let mut key = start.to_vec();
    loop {
        let req = RangeRequest {
            key: key.clone(),
            range_end: end.to_vec(),
            limit: PAGE,
            revision: l.rev,
            ..Default::default()
        };
        let resp = match kv.range(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if l.rev > 0 && s.message().contains("compacted") => return Ok(None),
            Err(s) => return Err(status(&s)),
        };
        if l.rev == 0 {
            l.rev = resp.header.as_ref().map_or(0, |h| h.revision);
        }
        let page = Page {
            kvs: resp.kvs.iter().map(kv_of).collect(),
            count: resp.count,
            more: resp.more,
        };
        let next = page.kvs.last().map(|k| k.key.clone());
        let more = page.more;
        l.pages.push(page);
        match next {
            Some(mut last) if more => {
                last.push(0);
                key = last;
            }
            _ => break,
        }
        if l.pages.len() > 10_000 {
            return Err("list: over 10000 pages".into());
        }
    }
    let found = lock(&shared.model).check_list(&l);
    for v in found {
        shared.violation(v);
    }
    Ok(Some(l))
}

/// What a linearizable get of `key` returned, checked.
async fn get(
    kv: &mut Kvc,
    shared: &Shared,
    key: &[u8],
) -> Result<Option<(i64, check::Hash)>, String> {
    let resp = kv
        .range(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|s| status(&s))?
        .into_inner();
    let rev = resp.header.as_ref().map_or(0, |h| h.revision);
    Ok(seen(shared, resp.kvs.first(), rev))
}

/// Checks a read value and caches it.
fn seen(
    shared: &Shared,
    kv: Option<&metastore::proto::mvccpb::KeyValue>,
    rev: i64,
) -> Option<(i64, check::Hash)> {
    let kv = kv_of(kv?);
    if let Some(v) = lock(&shared.model).check_kv(&kv, rev) {
        shared.violation(v);
    }
    lock(&shared.cache).insert(kv.key.clone(), (kv.mod_rev, kv.hash));
    Some((kv.mod_rev, kv.hash))
}

fn compare_mod(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

fn get_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The Else branch's Get.
fn else_kv(resp: &TxnResponse) -> Option<&metastore::proto::mvccpb::KeyValue> {
    match resp.responses.first()?.response.as_ref()? {
        response_op::Response::ResponseRange(r) => r.kvs.first(),
        _ => None,
    }
}

/// The apiserver's compare-and-swap: `then` if `key`'s mod_revision is
/// `mod_rev` (0: absent), else read the key. Returns the answer and its
/// revision; an error leaves the key's outcome unknown to the checker.
async fn cas(
    kv: &mut Kvc,
    shared: &Shared,
    key: &[u8],
    mod_rev: i64,
    then: request_op::Request,
) -> Result<(TxnResponse, i64), String> {
    let txn = TxnRequest {
        compare: vec![compare_mod(key, mod_rev)],
        success: vec![RequestOp {
            request: Some(then),
        }],
        failure: vec![get_op(key)],
    };
    match kv.txn(txn).await {
        Ok(r) => {
            let resp = r.into_inner();
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            Ok((resp, rev))
        }
        Err(s) => {
            shared.uncertain(key);
            Err(status(&s))
        }
    }
}

async fn create(
    kv: &mut Kvc,
    shared: &Shared,
    st: &mut Stats,
    key: Vec<u8>,
    rng: &mut StdRng,
) -> Result<(), String> {
    let value = shared.value(rng);
    let h = check::hash(&value);
    let put = request_op::Request::RequestPut(PutRequest {
        key: key.clone(),
        value,
        ..Default::default()
    });
    let (resp, rev) = cas(kv, shared, &key, 0, put).await?;
    if resp.succeeded {
        shared.record(Write {
            key,
            rev,
            value: Some(h),
            prev: Prev::Absent,
            acked: Instant::now(),
        });
    } else {
        st.exists += 1;
        seen(shared, else_kv(&resp), rev);
    }
    Ok(())
}

/// GuaranteedUpdate: an update, or with `delete` a delete, by
/// compare-and-swap on the last seen mod_revision, retried on conflict.
async fn guaranteed(
    kv: &mut Kvc,
    shared: &Shared,
    st: &mut Stats,
    key: Vec<u8>,
    rng: &mut StdRng,
    delete: bool,
) -> Result<(), String> {
    let cached = lock(&shared.cache).get(&key).copied();
    let mut current = match cached {
        Some(c) => c,
        None => match get(kv, shared, &key).await? {
            Some(c) => c,
            None => {
                st.not_found += 1;
                return Ok(());
            }
        },
    };
    for _ in 0..MAX_RETRIES {
        let (then, value) = if delete {
            let d = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            (request_op::Request::RequestDeleteRange(d), None)
        } else {
            let v = shared.value(rng);
            let h = check::hash(&v);
            let p = PutRequest {
                key: key.clone(),
                value: v,
                ..Default::default()
            };
            (request_op::Request::RequestPut(p), Some(h))
        };
        let (resp, rev) = cas(kv, shared, &key, current.0, then).await?;
        if resp.succeeded {
            shared.record(Write {
                key,
                rev,
                value,
                prev: Prev::Value {
                    rev: current.0,
                    hash: current.1,
                },
                acked: Instant::now(),
            });
            return Ok(());
        }
        match seen(shared, else_kv(&resp), rev) {
            Some(c) => {
                st.conflicts += 1;
                current = c;
            }
            None => {
                lock(&shared.cache).remove(&key);
                st.not_found += 1;
                return Ok(());
            }
        }
    }
    Err(format!("gave up after {MAX_RETRIES} conflicts"))
}

async fn event(
    kv: &mut Kvc,
    shared: &Shared,
    key: Vec<u8>,
    rng: &mut StdRng,
) -> Result<(), String> {
    let value = shared.value(rng);
    let h = check::hash(&value);
    let put = PutRequest {
        key: key.clone(),
        value,
        lease: shared.lease.load(Ordering::Relaxed),
        ..Default::default()
    };
    match kv.put(put).await {
        Ok(r) => {
            let rev = r.into_inner().header.map_or(0, |h| h.revision);
            shared.record(Write {
                key,
                rev,
                value: Some(h),
                prev: Prev::Unknown,
                acked: Instant::now(),
            });
            Ok(())
        }
        Err(s) => {
            shared.uncertain(&key);
            Err(status(&s))
        }
    }
}

/// One client until `deadline`.
async fn client(c: usize, mut kv: Kvc, shared: Arc<Shared>, deadline: Instant) -> Stats {
    let mut rng = StdRng::seed_from_u64(0x6b38 + c as u64);
    let mut st = Stats::new();
    while Instant::now() < deadline {
        let roll = rng.gen_range(0..1000u32);
        let slot = rng.gen_range(0..shared.slots);
        let res = RESOURCES[rng.gen_range(0..RESOURCES.len())];
        let sent = Instant::now();
        let (kind, r) = match roll {
            0..=254 => {
                let r =
                    guaranteed(&mut kv, &shared, &mut st, object_key(slot), &mut rng, false).await;
                (Kind::Update, r)
            }
            255..=262 => {
                let r = create(&mut kv, &shared, &mut st, object_key(slot), &mut rng).await;
                (Kind::Create, r)
            }
            263..=270 => {
                let r =
                    guaranteed(&mut kv, &shared, &mut st, object_key(slot), &mut rng, true).await;
                (Kind::Delete, r)
            }
            271..=299 => {
                let key = event_key(rng.gen_range(0..EVENT_NAMES));
                (Kind::Event, event(&mut kv, &shared, key, &mut rng).await)
            }
            300..=439 => (
                Kind::Get,
                get(&mut kv, &shared, &object_key(slot)).await.map(drop),
            ),
            440..=544 => {
                let p = format!("/registry/{res}/").into_bytes();
                let req = RangeRequest {
                    range_end: prefix_end(&p),
                    key: p,
                    count_only: true,
                    ..Default::default()
                };
                (
                    Kind::Count,
                    kv.range(req).await.map(drop).map_err(|s| status(&s)),
                )
            }
            _ => {
                let p = if roll < 965 {
                    let ns = rng.gen_range(0..NAMESPACES);
                    format!("/registry/{res}/ns-{ns:02}/")
                } else {
                    format!("/registry/{res}/")
                }
                .into_bytes();
                let r = loop {
                    match list(&mut kv, &shared, &p, &prefix_end(&p)).await {
                        Ok(Some(l)) => {
                            st.lists += 1;
                            st.list_keys += l.pages.iter().map(|p| p.kvs.len() as u64).sum::<u64>();
                            break Ok(());
                        }
                        Ok(None) => st.list_restarts += 1,
                        Err(e) => break Err(e),
                    }
                };
                (Kind::List, r)
            }
        };
        st.done(&shared, kind, sent, r);
    }
    st
}

/// A watcher's end: its log, or why it failed.
struct Watched {
    log: WatchLog,
    events: u64,
    error: Option<String>,
}

/// One watcher on `prefix`: a LIST, then a watch from its revision + 1,
/// until a progress notification reaches `until` (set once the writers
/// stopped) or `give_up` passes.
async fn watcher(
    channel: Authed,
    prefix: Vec<u8>,
    shared: Arc<Shared>,
    until: Arc<AtomicI64>,
    ready: mpsc::Sender<Result<(), String>>,
) -> Watched {
    let end = prefix_end(&prefix);
    let mut log = WatchLog {
        start: prefix.clone(),
        end: end.clone(),
        from: 0,
        covered_until: 0,
        deliveries: Vec::new(),
    };
    let mut events = 0;
    let error = async {
        let mut kv = KvClient::new(channel.clone());
        let l = loop {
            if let Some(l) = list(&mut kv, &shared, &prefix, &end).await? {
                break l;
            }
        };
        log.from = l.rev + 1;
        let (tx, rx) = mpsc::channel(16);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.clone(),
                range_end: end.clone(),
                start_revision: log.from,
                progress_notify: true,
                prev_kv: true,
                ..Default::default()
            })),
        };
        tx.send(create).await.map_err(|e| e.to_string())?;
        let mut stream = WatchClient::new(channel)
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("watch: {}", status(&s)))?
            .into_inner();
        let mut created = false;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut ticks = 0u64;
        let mut give_up: Option<Instant> = None;
        loop {
            tokio::select! {
                m = stream.message() => {
                    let resp = match m {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err("watch stream ended".to_owned()),
                        Err(s) => return Err(format!("watch: {}", status(&s))),
                    };
                    if resp.canceled {
                        return Err(format!("watch canceled: {} (compact revision {})", resp.cancel_reason, resp.compact_revision));
                    }
                    if resp.created {
                        created = true;
                        let _ = ready.send(Ok(())).await;
                        continue;
                    }
                    let rev = resp.header.as_ref().map_or(0, |h| h.revision);
                    if resp.events.is_empty() {
                        log.deliveries.push(Delivery::Progress(rev));
                        log.covered_until = log.covered_until.max(rev);
                        let u = until.load(Ordering::Acquire);
                        if u > 0 && rev >= u {
                            return Ok(());
                        }
                        continue;
                    }
                    let at = Instant::now();
                    for e in resp.events {
                        let Some(kv) = e.kv else { continue };
                        events += 1;
                        let delete = e.r#type == metastore::proto::mvccpb::event::EventType::Delete as i32;
                        log.deliveries.push(Delivery::Event(check::Event {
                            value: (!delete).then(|| check::hash(&kv.value)),
                            key: kv.key,
                            rev: kv.mod_revision,
                            prev: e.prev_kv.map(|p| (p.mod_revision, check::hash(&p.value))),
                            at,
                        }));
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    let u = until.load(Ordering::Acquire);
                    if u > 0 {
                        let g = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
                        if Instant::now() > g {
                            return Err(format!("no progress notification reached revision {u} within 30 s"));
                        }
                    }
                    // Once a second, and every tick once the writers stopped.
                    if created && (u > 0 || ticks % 5 == 0) {
                        let req = WatchRequest {
                            request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
                        };
                        tx.send(req).await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
    .await
    .err();
    if let Some(e) = &error {
        let _ = ready.send(Err(e.clone())).await;
    }
    Watched { log, events, error }
}

/// The apiserver's compactor (storage/etcd3/compact.go) until `stop`.
async fn compactor(
    mut kv: Kvc,
    shared: Arc<Shared>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> (Stats, Vec<CompactionAt>) {
    let mut st = Stats::new();
    let mut done = Vec::new();
    let (mut version, mut rev) = (0i64, 0i64);
    let mut next = Instant::now() + every;
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Acquire) {
                return (st, done);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        next += every;
        let sent = Instant::now();
        let r: Result<bool, String> = async {
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: COMPACT_KEY.to_vec(),
                    target_union: Some(compare::TargetUnion::Version(version)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: COMPACT_KEY.to_vec(),
                        value: rev.to_string().into_bytes(),
                        ..Default::default()
                    })),
                }],
                failure: vec![get_op(COMPACT_KEY)],
            };
            let resp = kv.txn(txn).await.map_err(|s| status(&s))?.into_inner();
            let cur = resp.header.as_ref().map_or(0, |h| h.revision);
            if !resp.succeeded {
                version = else_kv(&resp).map_or(0, |k| k.version);
                rev = cur;
                return Ok(false);
            }
            version += 1;
            let target = rev;
            rev = cur;
            if target == 0 {
                return Ok(false);
            }
            lock(&shared.model).compacted(Instant::now(), target);
            kv.compact(CompactionRequest {
                revision: target,
                physical: false,
            })
            .await
            .map_err(|s| status(&s))?;
            done.push(CompactionAt {
                t_ms: shared.ms(sent),
                rev: target,
                ms: sent.elapsed().as_millis() as u64,
            });
            Ok(true)
        }
        .await;
        match r {
            Ok(true) => st.done(&shared, Kind::Compact, sent, Ok(())),
            Ok(false) => {}
            Err(e) => st.done(&shared, Kind::Compact, sent, Err(e)),
        }
    }
}

/// Grants the events' lease and keeps it alive until `stop`.
async fn lease_keeper(
    channel: Authed,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut lc = LeaseClient::new(channel);
    let id = lc
        .lease_grant(LeaseGrantRequest {
            ttl: EVENT_TTL,
            id: 0,
        })
        .await
        .map_err(|s| format!("lease grant: {}", status(&s)))?
        .into_inner()
        .id;
    shared.lease.store(id, Ordering::Release);
    let (tx, rx) = mpsc::channel(4);
    // The first request goes before the call: etcd (grpc-go) sends the
    // response headers with the first answer, which the call waits for.
    tx.send(LeaseKeepAliveRequest { id })
        .await
        .map_err(|e| e.to_string())?;
    let mut answers = lc
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("keep-alive: {}", status(&s)))?
        .into_inner();
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        if !first {
            tx.send(LeaseKeepAliveRequest { id })
                .await
                .map_err(|e| e.to_string())?;
        }
        first = false;
        match tokio::time::timeout(Duration::from_secs(10), answers.message()).await {
            Ok(Ok(Some(a))) if a.ttl > 0 => {}
            Ok(Ok(_)) => return Err("the events' lease expired".into()),
            Ok(Err(s)) => return Err(format!("keep-alive: {}", status(&s))),
            Err(_) => return Err("keep-alive: no answer within 10 s".into()),
        }
        for _ in 0..100 {
            if stop.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Polls the members' snapshot directories for new files until `stop`.
fn snapshot_poller(
    dirs: Vec<PathBuf>,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<SnapshotAt>> {
    std::thread::spawn(move || {
        let list = |d: &PathBuf| -> Vec<String> {
            // MetaStore's memory engine: data/snap; etcd: data/member/snap.
            [d.join("snap"), d.join("member").join("snap")]
                .iter()
                .filter_map(|s| std::fs::read_dir(s).ok())
                .flat_map(|r| r.flatten())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        let mut known: Vec<BTreeSet<String>> =
            dirs.iter().map(|d| list(d).into_iter().collect()).collect();
        let mut out = Vec::new();
        while !stop.load(Ordering::Acquire) {
            for (m, d) in dirs.iter().enumerate() {
                for f in list(d) {
                    if known[m].insert(f.clone()) {
                        out.push(SnapshotAt {
                            t_ms: started.elapsed().as_millis() as u64,
                            member: m,
                            file: f,
                        });
                    }
                }
            }
            // A plain thread of its own polling files.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(50));
        }
        out
    })
}

/// The pauses in a phase: gaps of over STALL_MS between consecutive
/// completions (of `samples`: start ms, latency µs), with the slow
/// operations (`slow`: start ms, latency ms, kind) that spanned each.
fn pauses(
    samples: &[(u32, u32)],
    slow: &[(u64, u64, Kind)],
    compactions: &[CompactionAt],
    snapshots: &[SnapshotAt],
) -> Vec<Pause> {
    let mut done: Vec<u64> = samples
        .iter()
        .map(|&(at, us)| at as u64 + us as u64 / 1000)
        .collect();
    done.sort_unstable();
    let mut out = Vec::new();
    for w in done.windows(2) {
        let (from, to) = (w[0], w[1]);
        if to - from <= STALL_MS {
            continue;
        }
        let spanning: Vec<&(u64, u64, Kind)> = slow
            .iter()
            .filter(|(at, ms, _)| *at <= from && at + ms >= to)
            .collect();
        let kinds: BTreeSet<Kind> = spanning.iter().map(|(_, _, k)| *k).collect();
        let near = |t: u64| t + 1000 >= from && t <= to + 1000;
        let mut p = Pause {
            start_ms: from,
            ms: to - from,
            ops: spanning.len() as u64,
            kinds: kinds.iter().map(|k| k.name().to_owned()).collect(),
            max_op_ms: spanning.iter().map(|(_, ms, _)| *ms).max().unwrap_or(0),
            near: Vec::new(),
        };
        for c in compactions.iter().filter(|c| near(c.t_ms)) {
            p.near
                .push(format!("compaction at {} ms ({} ms)", c.t_ms, c.ms));
        }
        for f in snapshots.iter().filter(|f| near(f.t_ms)) {
            p.near
                .push(format!("m{} wrote {} at {} ms", f.member, f.file, f.t_ms));
        }
        out.push(p);
    }
    out
}

pub(crate) fn q(h: &Histogram<u64>, v: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(v)
    }
}

/// Runs the k8s workload against `target` on a runtime of its own
/// (`--threads` worker threads) and reports.
pub fn run(args: &Args, target: &Target, say: &dyn Fn(&str)) -> Result<RunResult, String> {
    let args2 = args.clone();
    let endpoints = target.endpoints.clone();
    let dial = target.dial.clone();
    let name = target.name.clone();
    let dirs = target.data_dirs.clone();
    let (say_tx, say_rx) = std::sync::mpsc::channel::<String>();
    let (probe_tx, probe_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || -> Result<Measured, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args2.threads.max(1))
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(measure(
            args2, endpoints, dial, name, dirs, say_tx, probe_tx, go_rx,
        ))
    });
    // The probes are read on this thread around the measured phase.
    let self_pid = std::process::id();
    let server_cpu =
        || crate::bench::sum(target.pids.iter().map(|&p| crate::procfs::cpu_micros(p)));
    let mut before = None;
    loop {
        while let Ok(s) = say_rx.try_recv() {
            say(&s);
        }
        match probe_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) if before.is_none() => {
                before = Some((
                    server_cpu(),
                    crate::procfs::cpu_micros(self_pid),
                    crate::bench::fsync_totals(target),
                    crate::procfs::host_cpu_micros(),
                ));
                let _ = go_tx.send(());
            }
            Ok(()) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let after = (
        server_cpu(),
        crate::procfs::cpu_micros(self_pid),
        crate::bench::fsync_totals(target),
        crate::procfs::host_cpu_micros(),
    );
    let rss = crate::bench::sum(target.pids.iter().map(|&p| crate::procfs::rss_kib(p)));
    let m = handle
        .join()
        .map_err(|_| "the k8s client thread panicked".to_owned())??;
    while let Ok(s) = say_rx.try_recv() {
        say(&s);
    }
    let (s0, c0, f0, h0) = before.unwrap_or((None, None, None, None));
    let probes = Probes {
        server_cpu_us: s0.zip(after.0).map(|(a, b)| b - a),
        client_cpu_us: c0.zip(after.1).map(|(a, b)| b - a),
        rss_kib: rss,
        host_cpu_us: h0
            .zip(after.3)
            .map(|((b0, t0), (b1, t1))| (b1.saturating_sub(b0), t1.saturating_sub(t0))),
        fsync: f0
            .zip(after.2)
            .map(|((n0, s0), (n1, s1))| (n1 - n0, s1 - s0)),
        members: target.http_addrs.len().max(1),
    };
    let mut r = RunResult::new(&target.name, "k8s", &m.outcome, &probes);
    r.timeline = crate::report::timeline(&m.outcome.samples, m.outcome.elapsed);
    r.k8s = Some(m.stats);
    Ok(r)
}

struct Measured {
    outcome: Outcome,
    stats: K8sStats,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: Args,
    endpoints: Vec<String>,
    dial: crate::secure::Dial,
    name: String,
    dirs: Vec<PathBuf>,
    say: std::sync::mpsc::Sender<String>,
    probe: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
) -> Result<Measured, String> {
    let mut noise = vec![0u8; 16 << 10];
    StdRng::seed_from_u64(0x5eed).fill_bytes(&mut noise);
    let keys = args.keys();
    let shared = Arc::new(Shared {
        model: Mutex::new(Model::default()),
        cache: Mutex::new(HashMap::new()),
        violations: Mutex::new(Vec::new()),
        violation_count: AtomicU64::new(0),
        started: std::sync::OnceLock::new(),
        noise,
        slots: keys * 5 / 4 + 1,
        lease: AtomicI64::new(0),
    });
    let connect = |k: usize, stream: bool| {
        let ep = endpoints[k % endpoints.len()].clone();
        let dial = dial.clone();
        async move {
            dial.client_channel(&ep, |e| {
                let e = e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true);
                // A stream (watch, keep-alive) lives the whole run: a
                // request timeout would cut it.
                if stream {
                    e.initial_stream_window_size(Some(4 << 20))
                        .initial_connection_window_size(Some(8 << 20))
                } else {
                    e.timeout(Duration::from_secs(60))
                }
            })
            .await
        }
    };
    let mut conns = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        conns.push(KvClient::new(connect(c, false).await?));
    }
    let _ = say.send(format!("[{name}] preloading {keys} objects (not measured)"));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, kv) in conns.iter().enumerate() {
        let (mut kv, shared, next) = (kv.clone(), shared.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= keys {
                    return Ok::<(), String>(());
                }
                let key = object_key(j);
                let value = shared.value(&mut rng);
                let h = check::hash(&value);
                let r = kv
                    .put(PutRequest {
                        key: key.clone(),
                        value,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("preload: {}", status(&s)))?;
                shared.record(Write {
                    key,
                    rev: r.into_inner().header.map_or(0, |h| h.revision),
                    value: Some(h),
                    prev: Prev::Unknown,
                    acked: Instant::now(),
                });
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    // The events' lease, the watchers and the compactor.
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = tokio::spawn(lease_keeper(
        connect(0, true).await?,
        shared.clone(),
        stop.clone(),
    ));
    while shared.lease.load(Ordering::Acquire) == 0 {
        if keeper.is_finished() {
            return Err(keeper
                .await
                .map_err(|e| e.to_string())?
                .err()
                .unwrap_or_else(|| "lease keeper ended".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let until = Arc::new(AtomicI64::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel(8);
    let mut watchers = Vec::new();
    let prefixes: Vec<Vec<u8>> = RESOURCES
        .iter()
        .chain(&["events"])
        .map(|r| format!("/registry/{r}/").into_bytes())
        .collect();
    for (i, p) in prefixes.iter().enumerate() {
        watchers.push(tokio::spawn(watcher(
            connect(args.clients + i, true).await?,
            p.clone(),
            shared.clone(),
            until.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..prefixes.len() {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err("a watcher ended before it was created".into()),
        }
    }
    let every = args.k8s_compact_interval;
    let _ = say.send(format!(
        "[{name}] measuring k8s for {:.0} s from {} clients on {} endpoint(s); {} watchers; compaction every {:.1} s",
        args.k8s_duration.as_secs_f64(),
        args.clients,
        endpoints.len(),
        prefixes.len(),
        every.as_secs_f64()
    ));
    // The clock starts.
    let _ = probe.send(());
    let _ = go.recv();
    let started = Instant::now();
    let started_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Stall and compaction times count from here.
    let _ = shared.started.set(started);
    let poller = snapshot_poller(dirs, started, stop.clone());
    let compact = tokio::spawn(compactor(
        KvClient::new(connect(args.clients + prefixes.len(), false).await?),
        shared.clone(),
        every,
        stop.clone(),
    ));
    let deadline = started + args.k8s_duration;
    let mut clients = Vec::new();
    for (c, kv) in conns.into_iter().enumerate() {
        clients.push(tokio::spawn(client(c, kv, shared.clone(), deadline)));
    }
    let mut stats = Stats::new();
    for c in clients {
        stats.merge(c.await.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    let (cst, compactions) = compact.await.map_err(|e| e.to_string())?;
    stats.merge(cst);
    let _ = probe.send(());
    let snapshots = poller.join().unwrap_or_default();
    let mut kv0 = KvClient::new(connect(0, false).await?);
    let last = kv0
        .range(RangeRequest {
            key: b"loadgen-revision".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("final revision: {}", status(&s)))?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    until.store(last.max(1), Ordering::Release);
    let mut logs = Vec::new();
    for w in watchers {
        logs.push(w.await.map_err(|e| e.to_string())?);
    }
    if let Err(e) = keeper.await.map_err(|e| e.to_string())? {
        stats.done(&shared, Kind::Event, Instant::now(), Err(e));
    }
    if args.k8s_plant_drop {
        // A planted bug: the middle event of the first watcher that got any
        // is lost before the check, which must then fail the run.
        if let Some(w) = logs.iter_mut().find(|w| w.events > 0) {
            let events: Vec<usize> = (0..w.log.deliveries.len())
                .filter(|&i| matches!(w.log.deliveries[i], Delivery::Event(_)))
                .collect();
            let dropped = w.log.deliveries.remove(events[events.len() / 2]);
            let _ = say.send(format!("[{name}] planted bug: dropped {dropped:?}"));
        }
    }
    // The watchers against everything acknowledged.
    let mut lags = histogram();
    let (mut verified, mut unverified, mut events) = (0, 0, 0);
    {
        let model = lock(&shared.model);
        for w in &logs {
            events += w.events;
            if let Some(e) = &w.error {
                shared.violation(format!(
                    "watcher {}: {e} (checked up to its last progress {})",
                    String::from_utf8_lossy(&w.log.start),
                    w.log.covered_until
                ));
            }
            let c = model.check_watch(&w.log);
            verified += c.verified;
            unverified += c.unverified;
            for l in c.lag_us {
                lags.saturating_record(l.max(1));
            }
            for v in c.violations {
                shared.violation(format!("{}: {v}", String::from_utf8_lossy(&w.log.start)));
            }
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let kinds = KINDS
        .iter()
        .map(|&k| {
            let h = &stats.hists[k as usize];
            KindStats {
                kind: k.name().to_owned(),
                ops: h.len(),
                errors: stats.errors[k as usize],
                ops_per_s: h.len() as f64 / secs,
                p50_us: q(h, 0.5),
                p99_us: q(h, 0.99),
                max_us: h.max(),
            }
        })
        .collect();
    let mut all = histogram();
    for h in &stats.hists {
        all.add(h).expect("histograms with equal bounds");
    }
    let errors: u64 = stats.errors.iter().sum();
    let pauses = pauses(&stats.samples, &stats.stalls, &compactions, &snapshots);
    let outcome = Outcome {
        ok: all.len(),
        hist: all,
        errors,
        error_samples: stats.error_samples.clone(),
        elapsed,
        cut_short: false,
        samples: std::mem::take(&mut stats.samples),
    };
    let k8s = K8sStats {
        started_unix_ms,
        keys,
        compact_interval_ms: every.as_millis() as u64,
        kinds,
        watchers: logs.len(),
        watch_events: events,
        watch_verified: verified,
        watch_unverified: unverified,
        watch_lag_p50_us: q(&lags, 0.5),
        watch_lag_p99_us: q(&lags, 0.99),
        watch_lag_max_us: lags.max(),
        lists_checked: stats.lists,
        list_keys: stats.list_keys,
        list_restarts: stats.list_restarts,
        known_writes: lock(&shared.model).writes() as u64,
        conflicts: stats.conflicts,
        not_found: stats.not_found,
        exists: stats.exists,
        violations: shared.violation_count.load(Ordering::Relaxed),
        violation_samples: lock(&shared.violations).clone(),
        compactions,
        snapshots,
        slow_ops: stats.stalls.len() as u64,
        pauses,
    };
    Ok(Measured {
        outcome,
        stats: k8s,
    })
}

impl K8sStats {
    /// The k8s part of a run's summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "  {:<8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>7}\n",
            "kind", "ops", "ops/s", "p50 us", "p99 us", "max us", "errors"
        );
        for k in &self.kinds {
            s += &format!(
                "  {:<8} {:>8} {:>9.1} {:>8} {:>8} {:>9} {:>7}\n",
                k.kind, k.ops, k.ops_per_s, k.p50_us, k.p99_us, k.max_us, k.errors
            );
        }
        s += &format!(
            "  watch    {} watchers, {} events ({} checked against a write, {} of uncertain keys); lag p50 {} us p99 {} us max {} us\n",
            self.watchers, self.watch_events, self.watch_verified, self.watch_unverified,
            self.watch_lag_p50_us, self.watch_lag_p99_us, self.watch_lag_max_us
        );
        s += &format!(
            "  checked  {} lists ({} keys, {} restarted after a compaction), {} acknowledged writes; {} conflicts retried, {} not found, {} already existed\n",
            self.lists_checked, self.list_keys, self.list_restarts, self.known_writes,
            self.conflicts, self.not_found, self.exists
        );
        s += &format!("  VIOLATIONS {}\n", self.violations);
        for v in &self.violation_samples {
            s += &format!("    {v}\n");
        }
        let c: Vec<String> = self
            .compactions
            .iter()
            .map(|c| format!("{} ms (rev {}, {} ms)", c.t_ms, c.rev, c.ms))
            .collect();
        s += &format!("  compactions at {}\n", c.join(", "));
        let sn: Vec<String> = self
            .snapshots
            .iter()
            .map(|x| format!("{} ms m{} {}", x.t_ms, x.member, x.file))
            .collect();
        s += &format!("  snapshot files at {}\n", sn.join(", "));
        s += &format!(
            "  pauses   (no operation completed for over {STALL_MS} ms; {} ops took over {STALL_MS} ms; phase started at unix ms {}):\n",
            self.slow_ops, self.started_unix_ms
        );
        for p in &self.pauses {
            s += &format!(
                "    at {} ms for {} ms: {} ops in flight throughout (slowest {} ms), kinds {}{}\n",
                p.start_ms,
                p.ms,
                p.ops,
                p.max_op_ms,
                p.kinds.join(","),
                if p.near.is_empty() {
                    String::new()
                } else {
                    format!("; near {}", p.near.join("; "))
                }
            );
        }
        s
    }
}
