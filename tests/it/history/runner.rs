//! Makes histories: concurrent clients doing puts, deletes, gets, ranges
//! and txn compare-and-sets over a few keys (so they conflict), a stream of
//! watchers on every member (prev_kv, filters, progress requests every
//! 250 ms, resumed on the next member from the last revision when a stream
//! breaks), a compactor every 200 ms, and faults ([`Fault`]) injected into
//! one member at a time while they run. Every call and watch response is
//! recorded for the checkers ([`judge`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metastore::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore::proto::etcdserverpb::kv_client::KvClient;
use metastore::proto::etcdserverpb::request_op::Request;
use metastore::proto::etcdserverpb::watch_client::WatchClient;
use metastore::proto::etcdserverpb::watch_create_request::FilterType;
use metastore::proto::etcdserverpb::watch_request::RequestUnion;
use metastore::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use metastore::proto::mvccpb;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::watch::{self, Event, Item, Log, Spec};
use super::{lin, Call, Kv, Op, Ret, Violations};
use crate::harness::{free_port, Cluster, Engine, Kind};
use crate::lossy::LossyDisk;
use crate::netproxy::{member_ip, NetProxy};

/// The keys the clients use: `h/k0` .. `h/k5`.
pub(crate) const PREFIX: &str = "h/";
const KEYS: usize = 6;

/// A call without an answer within this is recorded as of unknown outcome.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// A cluster whose members may have their data dirs on lossy disks
/// (members first: they die before their disks unmount).
pub(crate) struct Faulty {
    pub cluster: Cluster,
    pub disks: Vec<LossyDisk>,
    /// Every member's peer traffic crosses it (member `i` listens for
    /// peers on `netproxy::member_ip(i)`).
    pub proxy: NetProxy,
}

impl Faulty {
    /// `n` members on `engine`, on lossy disks if `lossy`, with fault
    /// injection on and progress notifications every 300 ms.
    pub fn start(n: usize, engine: Engine, lossy: bool, extra: &[&str]) -> Faulty {
        let disks: Vec<LossyDisk> = if lossy {
            (0..n).map(|_| LossyDisk::mount()).collect()
        } else {
            Vec::new()
        };
        let mut flags = vec![
            "--experimental-watch-progress-notify-interval",
            "300ms",
            "--snapshot-count",
            "300",
        ];
        flags.extend_from_slice(extra);
        let kinds = vec![Kind::MetaStore(engine); n];
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let targets: Vec<std::net::SocketAddr> = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| (member_ip(i), p).into())
            .collect();
        let proxy = NetProxy::start(&targets);
        let cluster = Cluster::start_configured(&kinds, &flags, |i, s| {
            if let Some(d) = disks.get(i) {
                s.dir = d.path().join("data");
                s.log_file = Some(d.path().with_extension("log"));
            }
            s.peer_host = member_ip(i).to_string();
            s.peer_port = ports[i];
            s.advertised_peer_url = Some(proxy.url(i));
        });
        Faulty {
            cluster,
            disks,
            proxy,
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Starts member `m` again and waits until it is healthy.
    pub fn restart(&mut self, m: usize) {
        let s = &mut self.cluster.members[m];
        s.launch();
        s.wait_started();
    }
}

/// A fault injected into one member; returns once the member is back.
pub(crate) trait Fault: Send {
    fn name(&self) -> &'static str;
    fn inject(&mut self, f: &mut Faulty, m: usize);
}

/// SIGKILL, then a restart.
pub(crate) struct Kill;

/// SIGSTOP for a while, then SIGCONT.
pub(crate) struct Pause(pub Duration);

/// A power cut on lossyfs (everything not fsynced is gone), then a
/// restart.
pub(crate) struct PowerCut;

/// Its links to every other member slowed to 50 ± 40 ms each way (at the
/// proxy) for a while.
pub(crate) struct Slow(pub Duration);

/// Cut off from its peers (a blackhole at the proxy, both ways) for a
/// while.
pub(crate) struct Isolate(pub Duration);

/// Everything it sends to its peers lost at the proxy (it still hears
/// them) for a while: a one-way partition.
pub(crate) struct Deaf(pub Duration);

/// 30 % of the chunks on its links lost, both ways, for a while (each lost
/// chunk cuts its connection at the proxy, so the peers redial).
pub(crate) struct Lossy(pub Duration);

impl Fault for Kill {
    fn name(&self) -> &'static str {
        "kill"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        f.cluster.members[m].kill9();
        f.restart(m);
    }
}

/// Sends `sig` to member `m`.
pub(crate) fn signal(f: &Faulty, m: usize, sig: libc::c_int) {
    let pid = f.cluster.members[m].pid().expect("member running");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

impl Fault for Pause {
    fn name(&self) -> &'static str {
        "pause"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        signal(f, m, libc::SIGSTOP);
        std::thread::sleep(self.0);
        signal(f, m, libc::SIGCONT);
    }
}

impl Fault for PowerCut {
    fn name(&self) -> &'static str {
        "power"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        assert!(!f.disks.is_empty(), "a power cut needs lossy disks");
        f.disks[m].freeze();
        f.cluster.members[m].kill9();
        f.disks[m].cut();
        f.restart(m);
    }
}

/// Sets `rule(from, to)` at the proxy on member `m`'s links to every other
/// member (and, with `both_ways`, theirs to it) for `d`, then heals.
fn on_links(
    f: &mut Faulty,
    m: usize,
    d: Duration,
    both_ways: bool,
    rule: impl Fn(&NetProxy, usize, usize),
) {
    for o in (0..f.cluster.members.len()).filter(|&o| o != m) {
        rule(&f.proxy, m, o);
        if both_ways {
            rule(&f.proxy, o, m);
        }
    }
    std::thread::sleep(d);
    f.proxy.heal();
}

impl Fault for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        let (mean, jitter) = (Duration::from_millis(50), Duration::from_millis(40));
        on_links(f, m, self.0, true, |p, a, b| p.delay(a, b, mean, jitter));
    }
}

/// Restarted with a failpoint armed to panic after some passes (the
/// `failpoints` feature), run until it dies there (or 8 s), then restarted
/// without it. Each injection takes the next point of the list.
#[cfg(feature = "failpoints")]
pub(crate) struct Crash(pub usize);

#[cfg(feature = "failpoints")]
impl Fault for Crash {
    fn name(&self) -> &'static str {
        "crash"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        const POINTS: [&str; 4] = [
            "wal::after_fsync",
            "apply::before_commit",
            "apply::after_commit",
            "wal::before_fsync",
        ];
        let point = POINTS[self.0 % POINTS.len()];
        self.0 += 1;
        let s = &mut f.cluster.members[m];
        s.kill9();
        s.failpoints = Some(format!("{point}=30*off->panic"));
        s.launch();
        let deadline = Instant::now() + Duration::from_secs(8);
        while s.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if s.is_running() {
            eprintln!("crash fault: {point} not reached in 8 s; killed instead");
        }
        s.kill9();
        s.failpoints = None;
        f.restart(m);
    }
}

impl Fault for Isolate {
    fn name(&self) -> &'static str {
        "isolate"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        f.proxy.isolate(m);
        std::thread::sleep(self.0);
        f.proxy.heal();
    }
}

impl Fault for Deaf {
    fn name(&self) -> &'static str {
        "one-way"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        on_links(f, m, self.0, false, |p, a, b| p.one_way(a, b));
    }
}

impl Fault for Lossy {
    fn name(&self) -> &'static str {
        "loss"
    }
    fn inject(&mut self, f: &mut Faulty, m: usize) {
        on_links(f, m, self.0, true, |p, a, b| p.loss(a, b, 0.3));
    }
}

/// Every fault kind, in a shuffled order.
pub(crate) fn every_fault(lossy: bool) -> Vec<Box<dyn Fault>> {
    let mut v: Vec<Box<dyn Fault>> = vec![
        Box::new(Kill),
        Box::new(Pause(Duration::from_millis(1600))),
        Box::new(Isolate(Duration::from_millis(1600))),
        Box::new(Slow(Duration::from_millis(1600))),
        Box::new(Deaf(Duration::from_millis(1600))),
        Box::new(Lossy(Duration::from_millis(1600))),
        #[cfg(feature = "failpoints")]
        Box::new(Crash(0)),
    ];
    if lossy {
        v.push(Box::new(PowerCut));
    }
    v
}

/// What a run does.
pub(crate) struct Plan {
    pub members: usize,
    pub engine: Engine,
    pub run_for: Duration,
    /// Injected in turn, one member at a time (the leader every other time).
    pub faults: Vec<Box<dyn Fault>>,
    pub pause_between: Duration,
    pub clients: usize,
    pub seed: u64,
}

/// What a run recorded.
pub(crate) struct Record {
    pub calls: Vec<Call>,
    pub logs: Vec<Log>,
    /// The revision the clients started from.
    pub base: i64,
    /// The final read's revision; every watcher was drained to it.
    pub final_rev: i64,
    pub max_compacted: i64,
    pub compactions: usize,
    pub faults: Vec<String>,
}

impl Record {
    /// One line of figures.
    pub fn figures(&self) -> String {
        let acked = self
            .calls
            .iter()
            .filter(|c| !matches!(c.ret, Ret::Unknown))
            .count();
        let unknown = self.calls.len() - acked;
        let (mut events, mut progress, mut resumes) = (0, 0, 0);
        for l in &self.logs {
            for it in &l.items {
                match it {
                    Item::Events { events: e, .. } => events += e.len(),
                    Item::Progress { .. } => progress += 1,
                    Item::Broken => resumes += 1,
                    _ => {}
                }
            }
        }
        format!(
            "{} calls ({acked} answered, {unknown} unknown), {} revisions, {events} events, {progress} progress notifications, {resumes} resumptions, {} compactions (last at {}), faults {:?}",
            self.calls.len(),
            self.final_rev - self.base,
            self.compactions,
            self.max_compacted,
            self.faults
        )
    }
}

/// Runs both checkers over a record.
pub(crate) fn judge(r: &Record) -> Violations {
    let seen = watch::seen(&r.logs);
    let (committed, mut v) = lin::check(&r.calls, &seen, r.base);
    for l in &r.logs {
        watch::check(l, &committed, Some(r.final_rev), r.max_compacted, &mut v);
    }
    v
}

/// The watchers of each stream: (id, spec).
pub(crate) fn watcher_specs() -> Vec<(i64, Spec)> {
    let mut all = Spec::prefix(PREFIX);
    all.prev_kv = true;
    let mut puts = Spec::prefix(PREFIX);
    puts.no_delete = true;
    let deletes = Spec {
        key: format!("{PREFIX}k0"),
        range_end: format!("{PREFIX}k3"),
        prev_kv: true,
        no_put: true,
        no_delete: false,
    };
    vec![(1, all), (2, puts), (3, deletes)]
}

/// A lazily connected channel (a new connection on the next call after a
/// failure).
pub(crate) fn channel(ep: &str) -> Channel {
    Channel::from_shared(format!("http://{ep}"))
        .expect("endpoint URI")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

fn kv_of(kv: &mvccpb::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        create: kv.create_revision,
        modified: kv.mod_revision,
        version: kv.version,
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn prefix_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

/// Sends `op`; Err: no answer (the outcome is unknown).
pub(crate) async fn send(kv: &mut KvClient<Channel>, op: &Op) -> Result<Ret, tonic::Status> {
    let rev =
        |h: Option<metastore::proto::etcdserverpb::ResponseHeader>| h.map_or(0, |h| h.revision);
    Ok(match op {
        Op::Put { key, value } => {
            let r = kv
                .put(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ret::Put { rev: rev(r.header) }
        }
        Op::Delete { key } => {
            let r = kv
                .delete_range(DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ret::Delete {
                rev: rev(r.header),
                deleted: r.deleted,
            }
        }
        Op::Cas {
            key,
            expect,
            value,
            also,
        } => {
            let mut success = vec![put_op(key, value)];
            if let Some(a) = also {
                success.push(put_op(a, value));
            }
            let r = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        key: key.as_bytes().to_vec(),
                        target_union: Some(TargetUnion::ModRevision(*expect)),
                        ..Default::default()
                    }],
                    success,
                    failure: vec![],
                })
                .await?
                .into_inner();
            Ret::Cas {
                rev: rev(r.header),
                succeeded: r.succeeded,
            }
        }
        Op::Get { key } => {
            let r = kv
                .range(RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ret::Read {
                rev: rev(r.header),
                kvs: r.kvs.iter().map(kv_of).collect(),
            }
        }
        Op::Range { prefix } => {
            let r = kv
                .range(RangeRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ret::Read {
                rev: rev(r.header),
                kvs: r.kvs.iter().map(kv_of).collect(),
            }
        }
    })
}

/// A recording client: the clock and the record are shared.
#[derive(Clone)]
pub(crate) struct Recorder {
    origin: Instant,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            origin: Instant::now(),
            calls: Arc::default(),
        }
    }

    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Calls `op` through `kv` and records it: a write with no answer as
    /// unknown, a read with none not at all. Returns the answer.
    pub async fn call(&self, client: usize, kv: &mut KvClient<Channel>, op: Op) -> Ret {
        let start = self.now();
        let ret = match tokio::time::timeout(CALL_TIMEOUT, send(kv, &op)).await {
            Ok(Ok(r)) => r,
            _ => Ret::Unknown,
        };
        let end = self.now();
        if op.is_write() || !matches!(ret, Ret::Unknown) {
            self.calls.lock().push(Call {
                client,
                op,
                start,
                end,
                ret: ret.clone(),
            });
        }
        ret
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }
}

async fn client_loop(id: usize, ep: String, stop: Arc<AtomicBool>, rec: Recorder, seed: u64) {
    let mut kv = KvClient::new(channel(&ep));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mods: HashMap<String, i64> = HashMap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = format!("{PREFIX}k{}", rng.gen_range(0..KEYS));
        let value = format!("c{id}-{seq}");
        let op = match rng.gen_range(0..100) {
            0..=34 => Op::Put { key, value },
            35..=54 => {
                let other = format!("{PREFIX}k{}", rng.gen_range(0..KEYS));
                Op::Cas {
                    expect: mods.get(&key).copied().unwrap_or(0),
                    also: (rng.gen_bool(0.5) && other != key).then_some(other),
                    key,
                    value,
                }
            }
            55..=64 => Op::Delete { key },
            65..=89 => Op::Get { key },
            _ => Op::Range {
                prefix: PREFIX.to_owned(),
            },
        };
        let key = match &op {
            Op::Put { key, .. } | Op::Cas { key, .. } | Op::Delete { key } | Op::Get { key } => {
                key.clone()
            }
            Op::Range { .. } => String::new(),
        };
        match rec.call(id, &mut kv, op).await {
            Ret::Read { kvs, .. } => {
                if !key.is_empty() {
                    mods.insert(key, kvs.first().map_or(0, |k| k.modified));
                }
            }
            Ret::Put { rev } => {
                mods.insert(key, rev);
            }
            Ret::Cas { .. } | Ret::Delete { .. } => {
                mods.remove(&key);
            }
            Ret::Unknown => {
                // A new connection after a pause: the member may be gone.
                kv = KvClient::new(channel(&ep));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One watcher as its stream's task tracks it.
struct Tracked {
    id: i64,
    spec: Spec,
    /// The revision to create it from next time.
    next: i64,
    /// The highest revision it knows complete.
    known: i64,
    /// Created on the current stream.
    live: bool,
    items: Vec<Item>,
}

fn create_request(w: &Tracked, start: i64) -> WatchRequest {
    let mut filters = Vec::new();
    if w.spec.no_put {
        filters.push(FilterType::Noput as i32);
    }
    if w.spec.no_delete {
        filters.push(FilterType::Nodelete as i32);
    }
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: w.spec.key.as_bytes().to_vec(),
            range_end: w.spec.range_end.as_bytes().to_vec(),
            start_revision: start,
            progress_notify: true,
            filters,
            prev_kv: w.spec.prev_kv,
            watch_id: w.id,
            fragment: false,
        })),
    }
}

fn event_of(e: &mvccpb::Event) -> Event {
    let kv = e.kv.as_ref().map(kv_of).unwrap_or(Kv {
        key: String::new(),
        value: String::new(),
        create: 0,
        modified: 0,
        version: 0,
    });
    Event {
        kv,
        delete: e.r#type == mvccpb::event::EventType::Delete as i32,
        prev: e.prev_kv.as_ref().map(kv_of),
    }
}

/// What a watch stream's task shares with the run.
#[derive(Clone)]
pub(crate) struct WatchShared {
    /// Set once the final read answered: drain every watcher to it.
    pub final_rev: Arc<AtomicI64>,
    /// Streams whose watchers were all created once.
    pub ready: Arc<AtomicUsize>,
    /// Give up draining at this instant.
    pub give_up: Arc<Mutex<Option<Instant>>>,
}

/// One stream of watchers, starting on `endpoints[first]` and moving to the
/// next member whenever the stream breaks.
pub(crate) async fn watch_stream(
    name: String,
    endpoints: Vec<String>,
    first: usize,
    specs: Vec<(i64, Spec)>,
    start: i64,
    shared: WatchShared,
) -> Vec<Log> {
    let mut ws: Vec<Tracked> = specs
        .into_iter()
        .map(|(id, spec)| Tracked {
            id,
            spec,
            next: start,
            known: start - 1,
            live: false,
            items: Vec::new(),
        })
        .collect();
    let mut at = first;
    let mut announced = false;
    'connect: loop {
        let done = |ws: &[Tracked]| {
            let f = shared.final_rev.load(Ordering::Relaxed);
            (f > 0 && ws.iter().all(|w| w.known >= f))
                || shared.give_up.lock().is_some_and(|t| Instant::now() > t)
        };
        if done(&ws) {
            break;
        }
        let ep = &endpoints[at % endpoints.len()];
        let (tx, rx) = mpsc::channel(64);
        for w in &ws {
            tx.try_send(create_request(w, w.next))
                .expect("room for the creates");
        }
        let asked: HashMap<i64, i64> = ws.iter().map(|w| (w.id, w.next)).collect();
        let mut client = WatchClient::new(channel(ep));
        let opened = tokio::time::timeout(
            Duration::from_secs(2),
            client.watch(ReceiverStream::new(rx)),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(s)) => s.into_inner(),
            _ => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'connect;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut quiet_since = Instant::now();
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Ok(Some(resp)) = msg else { break };
                    quiet_since = Instant::now();
                    if handle(&mut ws, &resp, &asked, &tx) && !announced {
                        announced = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = tick.tick() => {
                    if done(&ws) {
                        break 'connect;
                    }
                    let _ = tx.try_send(WatchRequest {
                        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    });
                    // While draining, a stream on a member that does not
                    // answer moves on, as clients do.
                    let draining = shared.final_rev.load(Ordering::Relaxed) > 0;
                    if draining && quiet_since.elapsed() > Duration::from_secs(4) {
                        break;
                    }
                }
            }
        }
        for w in &mut ws {
            if w.live {
                w.items.push(Item::Broken);
            }
            w.live = false;
        }
        at += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ws.into_iter()
        .map(|w| Log {
            name: format!("{name}/w{}", w.id),
            spec: w.spec,
            items: w.items,
        })
        .collect()
}

/// Records one response; true once every watcher was created.
fn handle(
    ws: &mut [Tracked],
    resp: &WatchResponse,
    asked: &HashMap<i64, i64>,
    tx: &mpsc::Sender<WatchRequest>,
) -> bool {
    let rev = resp.header.as_ref().map_or(0, |h| h.revision);
    if resp.watch_id == -1 && resp.events.is_empty() && !resp.created && !resp.canceled {
        for w in ws.iter_mut().filter(|w| w.live) {
            w.items.push(Item::Progress { rev });
            w.known = w.known.max(rev);
            w.next = w.next.max(rev + 1);
        }
        return false;
    }
    let Some(w) = ws.iter_mut().find(|w| w.id == resp.watch_id) else {
        return false;
    };
    if resp.created {
        let start = asked.get(&w.id).copied().unwrap_or(w.next);
        // A watcher created again after a compaction asked for `w.next`.
        let start = if w
            .items
            .iter()
            .rev()
            .find(|i| !matches!(i, Item::Broken))
            .is_some_and(|i| matches!(i, Item::Compacted { .. }))
        {
            w.next
        } else {
            start
        };
        w.items.push(Item::Created { rev, start });
        w.live = true;
    } else if resp.canceled {
        w.live = false;
        if resp.compact_revision > 0 {
            w.items.push(Item::Compacted {
                compact: resp.compact_revision,
            });
            w.next = resp.compact_revision;
            w.known = w.known.max(resp.compact_revision - 1);
            let _ = tx.try_send(create_request(w, w.next));
        } else {
            // Canceled for another reason: created again from where it was.
            w.items.push(Item::Broken);
            let _ = tx.try_send(create_request(w, w.next));
        }
    } else if resp.events.is_empty() {
        w.items.push(Item::Progress { rev });
        w.known = w.known.max(rev);
        w.next = w.next.max(rev + 1);
    } else {
        let events: Vec<Event> = resp.events.iter().map(event_of).collect();
        let last = events.iter().map(|e| e.kv.modified).max().unwrap_or(0);
        w.items.push(Item::Events { rev, events });
        w.known = w.known.max(last);
        w.next = w.next.max(last + 1);
    }
    ws.iter().all(|w| w.live)
}

/// The current revision as `kv`'s member answers it.
pub(crate) async fn current_rev(kv: &mut KvClient<Channel>) -> Option<i64> {
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        kv.range(RangeRequest {
            key: b"h/".to_vec(),
            limit: 1,
            ..Default::default()
        }),
    )
    .await
    .ok()?
    .ok()?;
    r.into_inner().header.map(|h| h.revision)
}

/// Every 200 ms: compacts at the revision seen three rounds (600 ms)
/// before. Returns (compactions answered, the highest revision asked).
async fn compactor(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> (usize, i64) {
    let mut seen: Vec<i64> = Vec::new();
    let (mut done, mut asked) = (0, 0);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        i += 1;
        let mut kv = KvClient::new(channel(&endpoints[i % endpoints.len()]));
        let Some(rev) = current_rev(&mut kv).await else {
            continue;
        };
        seen.push(rev);
        let Some(&target) = seen.len().checked_sub(4).and_then(|k| seen.get(k)) else {
            continue;
        };
        if target <= asked {
            continue;
        }
        asked = target;
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            kv.compact(CompactionRequest {
                revision: target,
                physical: false,
            }),
        )
        .await;
        if matches!(r, Ok(Ok(_))) {
            done += 1;
        }
    }
    (done, asked)
}

/// Runs `plan` and returns what it recorded.
pub(crate) fn run(mut plan: Plan) -> Record {
    let lossy = plan.faults.iter().any(|f| f.name() == "power");
    let mut f = Faulty::start(plan.members, plan.engine, lossy, &[]);
    let endpoints = f.endpoints();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rec = Recorder::new();
    let base = rt.block_on(async {
        let mut kv = KvClient::new(channel(&endpoints[0]));
        loop {
            if let Some(r) = current_rev(&mut kv).await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let shared = WatchShared {
        final_rev: Arc::default(),
        ready: Arc::default(),
        give_up: Arc::default(),
    };
    let watchers: Vec<_> = (0..plan.members)
        .map(|m| {
            rt.spawn(watch_stream(
                format!("s{m}"),
                endpoints.clone(),
                m,
                watcher_specs(),
                base + 1,
                shared.clone(),
            ))
        })
        .collect();
    let t0 = Instant::now();
    while shared.ready.load(Ordering::Relaxed) < plan.members {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "watchers not created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..plan.clients)
        .map(|c| {
            rt.spawn(client_loop(
                c,
                endpoints[c % endpoints.len()].clone(),
                stop.clone(),
                rec.clone(),
                plan.seed * 1000 + c as u64,
            ))
        })
        .collect();
    let compacting = rt.spawn(compactor(endpoints.clone(), stop.clone()));

    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut done_faults = Vec::new();
    let started = Instant::now();
    let mut k = 0;
    while started.elapsed() < plan.run_for || k < plan.faults.len() {
        std::thread::sleep(plan.pause_between);
        if plan.faults.is_empty() {
            continue;
        }
        let m = if k % 2 == 0 {
            f.cluster.wait_leader(Duration::from_secs(20))
        } else {
            rng.gen_range(0..plan.members)
        };
        let n = plan.faults.len();
        let fault = &mut plan.faults[k % n];
        fault.inject(&mut f, m);
        done_faults.push(format!("{}@m{}", fault.name(), m + 1));
        k += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (compactions, max_compacted) = rt.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
        compacting.await.unwrap()
    });
    f.cluster.wait_leader(Duration::from_secs(20));
    // The final read, from the first member, until it answers.
    let final_rev = rt.block_on(async {
        let mut kv = KvClient::new(channel(&endpoints[0]));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let op = Op::Range {
                prefix: PREFIX.to_owned(),
            };
            if let Ret::Read { rev, .. } = rec.call(usize::MAX, &mut kv, op).await {
                return rev;
            }
            assert!(Instant::now() < deadline, "no final read within 20 s");
            kv = KvClient::new(channel(&endpoints[0]));
        }
    });
    *shared.give_up.lock() = Some(Instant::now() + Duration::from_secs(20));
    shared.final_rev.store(final_rev, Ordering::Relaxed);
    let logs = rt.block_on(async {
        let mut logs = Vec::new();
        for w in watchers {
            logs.extend(w.await.unwrap());
        }
        logs
    });
    drop(rt);
    drop(f);
    Record {
        calls: rec.calls(),
        logs,
        base,
        final_rev,
        max_compacted,
        compactions,
        faults: done_faults,
    }
}

/// A watch stream whose responses are all kept, for tests that drive one
/// by hand.
pub(crate) struct Recorded {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
    /// Every response, in order.
    pub resps: Vec<WatchResponse>,
    /// (watch id, start asked) of every create, in order.
    pub asked: Vec<(i64, i64)>,
}

impl Recorded {
    /// Opens a stream on `ep` creating `watchers` (id, spec) from `start`.
    pub async fn open(ep: &str, watchers: &[(i64, Spec)], start: i64) -> Recorded {
        Recorded::open_asking(ep, watchers, start, false).await
    }

    /// As [`Recorded::open`]; with `progress`, a progress request follows
    /// the creates in the stream's first message batch.
    pub async fn open_asking(
        ep: &str,
        watchers: &[(i64, Spec)],
        start: i64,
        progress: bool,
    ) -> Recorded {
        let (tx, rx) = mpsc::channel(64);
        let mut asked = Vec::new();
        for (id, spec) in watchers {
            let t = Tracked {
                id: *id,
                spec: spec.clone(),
                next: start,
                known: 0,
                live: false,
                items: Vec::new(),
            };
            tx.try_send(create_request(&t, start)).expect("room");
            asked.push((*id, start));
        }
        if progress {
            tx.try_send(WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            })
            .expect("room");
        }
        let rx = WatchClient::new(channel(ep))
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch stream")
            .into_inner();
        Recorded {
            tx,
            rx,
            resps: Vec::new(),
            asked,
        }
    }

    /// Asks for a progress notification.
    pub async fn request_progress(&self) {
        self.tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            })
            .await
            .expect("stream open");
    }

    /// The next response within `within`, kept.
    pub async fn next(&mut self, within: Duration) -> Option<WatchResponse> {
        let r = tokio::time::timeout(within, self.rx.message())
            .await
            .ok()?
            .ok()??;
        self.resps.push(r.clone());
        Some(r)
    }

    /// Reads (and keeps) whatever comes for `d`.
    pub async fn read_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if self.next(left).await.is_none() {
                break;
            }
        }
    }

    /// Reads until a progress notification at `rev` or above (asking for
    /// one every 250 ms) or `within` passes; whether it came.
    pub async fn drain_to(&mut self, rev: i64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.request_progress().await;
            while let Some(r) = self.next(Duration::from_millis(250)).await {
                let progress = r.events.is_empty() && !r.created && !r.canceled;
                if progress && r.header.as_ref().is_some_and(|h| h.revision >= rev) {
                    return true;
                }
            }
        }
        false
    }

    /// Watcher `id`'s items.
    pub fn items(&self, id: i64) -> Vec<Item> {
        let mut starts = self.asked.iter().filter(|(i, _)| *i == id).map(|(_, s)| *s);
        let mut out = Vec::new();
        for r in &self.resps {
            let rev = r.header.as_ref().map_or(0, |h| h.revision);
            let mine = r.watch_id == id || (r.watch_id == -1 && !r.created && !r.canceled);
            if !mine {
                continue;
            }
            if r.created {
                out.push(Item::Created {
                    rev,
                    start: starts.next().unwrap_or(0),
                });
            } else if r.canceled {
                out.push(Item::Compacted {
                    compact: r.compact_revision,
                });
            } else if r.events.is_empty() {
                out.push(Item::Progress { rev });
            } else {
                out.push(Item::Events {
                    rev,
                    events: r.events.iter().map(event_of).collect(),
                });
            }
        }
        out
    }
}
