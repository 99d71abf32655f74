//! `--workload scale`: a store of `--keys` keys (default a million) the
//! way kube-apiserver lays out pods, `/registry/pods/ns-<k % 100>/pod-<k>`
//! with `--value-size` (256) random bytes each, then:
//!
//! 1. fill: the `--keys` puts from `--clients` clients, each on its own
//!    connection; the fill time, the servers' RSS right after it and its
//!    peak during it (summed VmRSS of the members, sampled every 100 ms);
//! 2. LIST of the whole prefix as the apiserver pages it (limit 500, the
//!    first page at revision 0, every next one from the last key + "\0" at
//!    the first page's revision), `--scale-lists` times (default 3; the
//!    first is cold): its time
//!    and RSS peak over the RSS before it (sampled every 50 ms); the keys
//!    must come back exactly once each, in order;
//! 3. one Range without a limit over a key range that holds exactly 100,000
//!    of the keys (or all of them, if fewer), three times: its time, the
//!    answer's size, the RSS peak over the RSS before it, the RSS 5 s after;
//! 4. Compact(the revision after the fill, physical = false, as the
//!    apiserver) 10 s into 20 s of puts from `--clients` clients on other
//!    keys: the puts' p50/p99/max in the 10 s before the call against those
//!    that completed from the call until 2 s after it returned (the load runs
//!    on until then if the call takes longer than 8 s), and the call's time;
//! 5. (with `--compare` only) SIGKILL the first member, start it again with
//!    the same flags and data dir: the time from the spawn to its first
//!    successful linearizable Range of one key, its RSS before the kill
//!    and 5 s after that read;
//! 6. (with `--compare` and `--members` 3 or more) a new member catching
//!    up: the leader's term and the revision are noted, MemberAdd adds a
//!    learner with a fresh peer URL, and a new member of the same server
//!    starts empty with `--initial-cluster-state existing`; the time from
//!    its spawn until a serializable Range on it (learners serve no
//!    linearizable reads in etcd 3.4), asked every 15 ms, answers at that
//!    revision or later (at most 120 s), its RSS then, 5 s after and its
//!    peak. The leader's term must not have moved (no election) 5 s after
//!    it caught up. Left out with `--auth` (MemberAdd needs root, and an
//!    etcd learner cannot authenticate). The new member runs until the
//!    cluster is stopped.
//!
//! A step that fails (an RPC error, a wrong LIST) is reported with its error
//! and counts as an error of the run; the next steps still run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use metastore::api::concurrency::prefix_end;
use metastore::proto::etcdserverpb::cluster_client::ClusterClient;
use metastore::proto::etcdserverpb::kv_client::KvClient;
use metastore::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use metastore::proto::etcdserverpb::{
    CompactionRequest, MemberAddRequest, PutRequest, RangeRequest, StatusRequest, StatusResponse,
};
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::bench::{sum, Target};
use crate::cli::Args;
use crate::daemon::Daemon;
use crate::driver::histogram;
use crate::driver::Outcome;
use crate::k8s::{q, status, PAGE};
use crate::procfs;
use crate::procfs::rss_sum as rss;
use crate::report::{Probes, RunResult};
use crate::secure::Authed;

const PREFIX: &[u8] = b"/registry/pods/";
const NAMESPACES: u64 = 100;
/// Keys in the unpaginated range.
const RANGE_KEYS: u64 = 100_000;
/// Unpaginated ranges (LISTs: `--scale-lists`).
const REPEATS: usize = 3;
/// The put load around the compaction: its length, and when Compact is called.
const LOAD: Duration = Duration::from_secs(20);
const COMPACT_AT: Duration = Duration::from_secs(10);
/// The "during" window runs this long past Compact's answer.
const AFTER_COMPACT: Duration = Duration::from_secs(2);
/// RSS is read again this long after a range or a restart.
const SETTLE: Duration = Duration::from_secs(5);
/// A restarted member must answer within this.
const RESTART_WITHIN: Duration = Duration::from_secs(300);
/// A new member must catch up within this.
const JOIN_WITHIN: Duration = Duration::from_secs(120);
/// How often the new member is asked for its revision.
const JOIN_POLL: Duration = Duration::from_millis(15);
/// MemberAdd is retried this long while the cluster answers that it is
/// unhealthy (a voter connected for less than etcd's 5 s health interval,
/// as the member restarted in step 5 may be).
const ADD_WITHIN: Duration = Duration::from_secs(20);

type Kvc = KvClient<Authed>;

/// Pod `k`'s key.
fn key(k: u64) -> Vec<u8> {
    format!("/registry/pods/ns-{}/pod-{k}", k % NAMESPACES).into_bytes()
}

/// `k` if `key` is pod `k`'s key with `k < n`.
fn pod_of(key: &[u8], n: u64) -> Option<u64> {
    let rest = std::str::from_utf8(key.strip_prefix(PREFIX)?).ok()?;
    let (ns, pod) = rest.strip_prefix("ns-")?.split_once("/pod-")?;
    let k: u64 = pod.parse().ok()?;
    (k < n && ns.parse::<u64>().ok()? == k % NAMESPACES && pod == k.to_string()).then_some(k)
}

/// Put latencies in a window of the compaction step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub puts: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Window {
    fn of(lat: impl Iterator<Item = u64>) -> Window {
        let mut h = histogram();
        for us in lat {
            h.saturating_record(us.max(1));
        }
        Window {
            puts: h.len(),
            p50_us: q(&h, 0.5),
            p99_us: q(&h, 0.99),
            max_us: h.max(),
        }
    }
}

/// One step (one repeat of a LIST or range is a step of its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    /// fill, list-1..3, range-1..3, compact, restart, join.
    pub step: String,
    /// The timed action: the whole fill, one LIST, one range, the Compact
    /// call, spawn to the first read (restart), or spawn to a read at the
    /// cluster's revision (join).
    pub ms: f64,
    /// Keys put (fill) or returned (LIST, range).
    pub keys: Option<u64>,
    /// Encoded size of the answers (LIST: all pages; range: the one answer).
    pub bytes: Option<u64>,
    /// Summed over the members (restart, join: the restarted or new
    /// member only).
    pub rss_before_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    /// Right when the action ended.
    pub rss_after_kib: Option<u64>,
    /// 5 s after the action ended.
    pub rss_5s_kib: Option<u64>,
    /// compact: the puts in the 10 s before the call, and from the call
    /// until 2 s after its answer; range: one client's puts while the
    /// range ran (`during`).
    pub before: Option<Window>,
    pub during: Option<Window>,
    pub error: Option<String>,
}

/// One RSS sample of the run, for the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    pub step: String,
    /// Since the step started.
    pub t_s: f64,
    pub rss_kib: u64,
}

/// What the scale workload measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleStats {
    pub keys: u64,
    pub members: usize,
    pub steps: Vec<Step>,
    pub rss: Vec<RssSample>,
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

fn minus(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| (a as f64 - b as f64) / 1024.0)
}

impl Step {
    /// Keeps the first error.
    fn fail(&mut self, e: String) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn named(step: &str) -> Step {
        Step {
            step: step.to_owned(),
            ..Default::default()
        }
    }

    /// The figures shown for this step: (label, value).
    pub fn figures(&self) -> Vec<(&'static str, Option<f64>)> {
        let kind = self.step.split('-').next().unwrap_or_default();
        match kind {
            "fill" => vec![
                ("time s", Some(self.ms / 1000.0)),
                (
                    "puts/s",
                    self.keys.map(|k| k as f64 * 1000.0 / self.ms.max(1e-9)),
                ),
                ("RSS after MiB", mib(self.rss_after_kib)),
                ("RSS peak MiB", mib(self.rss_peak_kib)),
                (
                    "peak / after",
                    self.rss_peak_kib
                        .zip(self.rss_after_kib)
                        .map(|(p, a)| p as f64 / a.max(1) as f64),
                ),
            ],
            "list" => vec![
                ("time ms", Some(self.ms)),
                (
                    "RSS peak - before MiB",
                    minus(self.rss_peak_kib, self.rss_before_kib),
                ),
            ],
            "range" => vec![
                ("time ms", Some(self.ms)),
                (
                    "answer MiB",
                    self.bytes.map(|b| b as f64 / (1 << 20) as f64),
                ),
                (
                    "RSS peak - before MiB",
                    minus(self.rss_peak_kib, self.rss_before_kib),
                ),
                ("RSS 5 s after MiB", mib(self.rss_5s_kib)),
                (
                    "5 s after - before MiB",
                    minus(self.rss_5s_kib, self.rss_before_kib),
                ),
                ("puts meanwhile", self.during.map(|w| w.puts as f64)),
                (
                    "put max meanwhile ms",
                    self.during.map(|w| w.max_us as f64 / 1000.0),
                ),
            ],
            "compact" => {
                let b = self.before;
                let d = self.during;
                let f = |w: Option<Window>, pick: fn(&Window) -> u64| w.map(|w| pick(&w) as f64);
                vec![
                    ("Compact call ms", Some(self.ms)),
                    ("put p50 before us", f(b, |w| w.p50_us)),
                    ("put p99 before us", f(b, |w| w.p99_us)),
                    ("put max before us", f(b, |w| w.max_us)),
                    ("put p50 during us", f(d, |w| w.p50_us)),
                    ("put p99 during us", f(d, |w| w.p99_us)),
                    ("put max during us", f(d, |w| w.max_us)),
                    (
                        "p99 during / before",
                        b.zip(d)
                            .map(|(b, d)| d.p99_us as f64 / b.p99_us.max(1) as f64),
                    ),
                    ("RSS peak MiB", mib(self.rss_peak_kib)),
                ]
            }
            "restart" => vec![
                ("spawn to 1st read ms", Some(self.ms)),
                ("member RSS before kill MiB", mib(self.rss_before_kib)),
                ("member RSS 5 s after MiB", mib(self.rss_5s_kib)),
            ],
            "join" => vec![
                ("spawn to caught up ms", Some(self.ms)),
                ("new member RSS then MiB", mib(self.rss_after_kib)),
                ("new member RSS 5 s MiB", mib(self.rss_5s_kib)),
                ("new member RSS peak MiB", mib(self.rss_peak_kib)),
            ],
            _ => Vec::new(),
        }
    }
}

impl Step {
    /// `name: figure value, ...[, ERROR e]`.
    fn line(&self) -> String {
        let mut f: Vec<String> = self
            .figures()
            .iter()
            .map(|(l, v)| format!("{l} {}", v.map_or("n/a".to_owned(), |v| format!("{v:.1}"))))
            .collect();
        if let Some(e) = &self.error {
            f.push(format!("ERROR {e}"));
        }
        format!("{}: {}", self.step, f.join(", "))
    }
}

impl ScaleStats {
    /// The scale part of a run's summary.
    pub fn summary(&self) -> String {
        self.steps
            .iter()
            .map(|st| format!("  {}\n", st.line()))
            .collect()
    }
}

/// Reads the summed RSS of some processes on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(f64, u64)>>,
}

impl Sampler {
    fn start(pids: &[u32], every: Duration) -> Sampler {
        let pids = pids.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut out = Vec::new();
            loop {
                if let Some(kib) = rss(&pids) {
                    out.push((started.elapsed().as_secs_f64(), kib));
                }
                if stop2.load(Ordering::Acquire) {
                    return out;
                }
                // A plain thread of its own that only samples /proc.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(every);
            }
        });
        Sampler { stop, handle }
    }

    /// Stops (after one last sample): the samples as (s since start, KiB).
    fn stop(self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}

/// What a run collects as it goes.
struct Run<'a> {
    target: &'a Target,
    pids: Vec<u32>,
    say: mpsc::Sender<String>,
    steps: Vec<Step>,
    rss: Vec<RssSample>,
}

impl Run<'_> {
    fn say(&self, s: String) {
        let _ = self.say.send(format!("[{}] {s}", self.target.name));
    }

    /// Keeps a step's samples for the timeline; their peak.
    fn samples(&mut self, step: &str, samples: Vec<(f64, u64)>) -> Option<u64> {
        let peak = samples.iter().map(|&(_, k)| k).max();
        self.rss
            .extend(samples.into_iter().map(|(t_s, rss_kib)| RssSample {
                step: step.to_owned(),
                t_s,
                rss_kib,
            }));
        peak
    }

    fn done(&mut self, st: Step) {
        self.say(st.line());
        self.steps.push(st);
    }
}

/// A KV client on endpoint `k` (mod the endpoints) whose calls time out
/// after `timeout`.
async fn connect(target: &Target, k: usize, timeout: Duration) -> Result<Kvc, String> {
    connect_to(
        target,
        &target.endpoints[k % target.endpoints.len()],
        timeout,
    )
    .await
}

/// A KV client on `ep` whose calls time out after `timeout`.
async fn connect_to(target: &Target, ep: &str, timeout: Duration) -> Result<Kvc, String> {
    let ch = channel_to(target, ep, Duration::from_secs(5), timeout).await?;
    // A 100,000-key answer is tens of MB.
    Ok(KvClient::new(ch).max_decoding_message_size(usize::MAX))
}

/// A channel to `ep` that connects within `connect` and whose calls time
/// out after `timeout`.
async fn channel_to(
    target: &Target,
    ep: &str,
    connect: Duration,
    timeout: Duration,
) -> Result<crate::secure::Authed, String> {
    target
        .dial
        .client_channel(ep, |e| {
            e.connect_timeout(connect)
                .timeout(timeout)
                .tcp_nodelay(true)
        })
        .await
}

/// The current revision, from a linearizable read through `kv`.
async fn revision(kv: &mut Kvc) -> Result<i64, String> {
    let r = kv
        .range(RangeRequest {
            key: key(0),
            ..Default::default()
        })
        .await
        .map_err(|s| status(&s))?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

/// Puts from every client until `stop` (or, with `keys`, until every key
/// below it is taken); (completion since `t0` in ms, latency µs) of each.
struct Puts {
    lat: Vec<(u32, u32)>,
    errors: u64,
    error: Option<String>,
}

async fn put_load(
    conns: &[Kvc],
    keys: Option<u64>,
    value_size: usize,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> Puts {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conns.len());
    for (c, kv) in conns.iter().enumerate() {
        let (mut kv, next, stop) = (kv.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64 + 1);
            let mut out = Puts {
                lat: Vec::new(),
                errors: 0,
                error: None,
            };
            let mut i = 0u64;
            loop {
                let k = match keys {
                    Some(n) => {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= n {
                            break;
                        }
                        key(k)
                    }
                    // Other keys than the pods: each client rewrites its own 1000.
                    None if stop.load(Ordering::Acquire) => break,
                    None => {
                        i += 1;
                        format!("/registry/configmaps/load-{c}/cm-{}", i % 1000).into_bytes()
                    }
                };
                let mut value = vec![0u8; value_size];
                rng.fill_bytes(&mut value);
                let sent = Instant::now();
                let r = kv
                    .put(PutRequest {
                        key: k,
                        value,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => {
                        let us = sent.elapsed().as_micros();
                        let at = t0.elapsed().as_millis();
                        out.lat.push((
                            u32::try_from(at).unwrap_or(u32::MAX),
                            u32::try_from(us).unwrap_or(u32::MAX),
                        ));
                    }
                    Err(s) => {
                        out.errors += 1;
                        out.error = out.error.or_else(|| Some(status(&s)));
                    }
                }
            }
            out
        }));
    }
    let mut all = Puts {
        lat: Vec::new(),
        errors: 0,
        error: None,
    };
    for t in tasks {
        match t.await {
            Ok(p) => {
                all.lat.extend(p.lat);
                all.errors += p.errors;
                all.error = all.error.or(p.error);
            }
            Err(e) => {
                all.errors += 1;
                all.error = all.error.or_else(|| Some(format!("client task: {e}")));
            }
        }
    }
    all
}

/// A paginated LIST of the pods at one revision, checked: (keys, bytes).
async fn list(kv: &mut Kvc, n: u64) -> Result<(u64, u64), String> {
    let end = prefix_end(PREFIX);
    let (mut rev, mut from, mut last): (i64, Vec<u8>, Option<Vec<u8>>) = (0, PREFIX.to_vec(), None);
    let (mut keys, mut bytes) = (0u64, 0u64);
    loop {
        let resp = kv
            .range(RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision: rev,
                ..Default::default()
            })
            .await
            .map_err(|s| {
                format!(
                    "page {} at revision {rev}: {}",
                    keys / PAGE as u64,
                    status(&s)
                )
            })?
            .into_inner();
        bytes += resp.encoded_len() as u64;
        if rev == 0 {
            rev = resp.header.as_ref().map_or(0, |h| h.revision);
        }
        for kv in &resp.kvs {
            if pod_of(&kv.key, n).is_none() {
                return Err(format!(
                    "unexpected key {}",
                    String::from_utf8_lossy(&kv.key)
                ));
            }
            if last.as_ref().is_some_and(|l| *l >= kv.key) {
                return Err(format!(
                    "key {} after {} (repeated or out of order)",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(last.as_deref().unwrap_or_default())
                ));
            }
            last = Some(kv.key.clone());
            keys += 1;
        }
        if !resp.more {
            break;
        }
        match (&last, resp.kvs.is_empty()) {
            (Some(l), false) => {
                from = l.clone();
                from.push(0);
            }
            _ => return Err("an empty page with more = true".into()),
        }
    }
    // In order, each once and each a pod below n: all n pods iff n of them.
    if keys != n {
        return Err(format!("{keys} keys listed, {n} put"));
    }
    Ok((keys, bytes))
}

/// [start, end) holding exactly `m` of the `n` pods (the middle ones in
/// key order; the whole prefix if `m == n`).
fn middle_range(n: u64, m: u64) -> (Vec<u8>, Vec<u8>) {
    let mut all: Vec<Vec<u8>> = (0..n).map(key).collect();
    all.sort_unstable();
    let s = ((n - m) / 2) as usize;
    let end = all
        .get(s + m as usize)
        .cloned()
        .unwrap_or_else(|| prefix_end(PREFIX));
    (all.swap_remove(s), end)
}

/// Runs the scale workload against `target` on a runtime of its own
/// (`--threads` worker threads). With `members` (--compare) the first one
/// is killed and started again in step 5, and with 3 or more a new one is
/// added in step 6 (pushed to `members`, stopped with them).
pub fn run(
    args: &Args,
    target: &Target,
    members: &mut Vec<Daemon>,
    say: &dyn Fn(&str),
) -> Result<RunResult, String> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<String>();
        let h = s.spawn(move || -> Result<RunResult, String> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(measure(args, target, members, tx))
        });
        // Ends when the run drops its sender.
        for line in rx {
            say(&line);
        }
        h.join()
            .map_err(|_| "the scale client thread panicked".to_owned())?
    })
}

async fn measure(
    args: &Args,
    target: &Target,
    members: &mut Vec<Daemon>,
    say: mpsc::Sender<String>,
) -> Result<RunResult, String> {
    let n = args.keys();
    let mut run = Run {
        target,
        pids: target.pids.clone(),
        say,
        steps: Vec::new(),
        rss: Vec::new(),
    };
    let mut conns = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let mut kv = connect(target, c, Duration::from_secs(60)).await?;
        // Connected before the clock starts.
        revision(&mut kv)
            .await
            .map_err(|e| format!("warm-up request: {e}"))?;
        conns.push(kv);
    }

    // 1. Fill.
    run.say(format!(
        "fill: {n} keys of {} bytes from {} clients",
        args.value_size, args.clients
    ));
    let self_pid = std::process::id();
    let server_cpu = || sum(target.pids.iter().map(|&p| procfs::cpu_micros(p)));
    let (cpu0, client0, fsync0, host0) = (
        server_cpu(),
        procfs::cpu_micros(self_pid),
        crate::bench::fsync_totals(target),
        procfs::host_cpu_micros(),
    );
    let mut st = Step::named("fill");
    st.rss_before_kib = rss(&run.pids);
    let sampler = Sampler::start(&run.pids, Duration::from_millis(100));
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn({
        let (say, name, stop) = (run.say.clone(), target.name.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = say.send(format!(
                    "[{name}] fill: {:.0} s",
                    t0.elapsed().as_secs_f64()
                ));
            }
        }
    });
    let puts = put_load(&conns, Some(n), args.value_size, stop.clone(), t0).await;
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Release);
    progress.abort();
    st.rss_after_kib = rss(&run.pids);
    let probes = Probes {
        server_cpu_us: cpu0.zip(server_cpu()).map(|(a, b)| b - a),
        client_cpu_us: client0
            .zip(procfs::cpu_micros(self_pid))
            .map(|(a, b)| b - a),
        rss_kib: st.rss_after_kib,
        host_cpu_us: host0
            .zip(procfs::host_cpu_micros())
            .map(|((b0, t0), (b1, t1))| (b1.saturating_sub(b0), t1.saturating_sub(t0))),
        fsync: fsync0
            .zip(crate::bench::fsync_totals(target))
            .map(|((n0, s0), (n1, s1))| (n1 - n0, s1 - s0)),
        members: target.http_addrs.len().max(1),
    };
    st.rss_peak_kib = run.samples("fill", sampler.stop());
    st.ms = elapsed.as_secs_f64() * 1000.0;
    st.keys = Some(puts.lat.len() as u64);
    if let Some(e) = &puts.error {
        st.fail(format!("{} puts failed, e.g. {e}", puts.errors));
    }
    let mut outcome = Outcome::empty();
    for &(_, us) in &puts.lat {
        outcome.hist.saturating_record(u64::from(us).max(1));
    }
    outcome.ok = puts.lat.len() as u64;
    outcome.elapsed = elapsed;
    // The fill's samples for the throughput timeline: (sent, latency).
    outcome.samples = puts
        .lat
        .iter()
        .map(|&(done, us)| (done.saturating_sub(us / 1000), us))
        .collect();
    run.done(st);
    let filled_rev = revision(&mut conns[0]).await;

    // 2. Paginated LISTs.
    let mut kv = connect(target, 0, Duration::from_secs(600)).await?;
    for i in 1..=args.scale_lists {
        let name = format!("list-{i}");
        let mut st = Step::named(&name);
        st.rss_before_kib = rss(&run.pids);
        let sampler = Sampler::start(&run.pids, Duration::from_millis(50));
        let t = Instant::now();
        let r = list(&mut kv, n).await;
        st.ms = t.elapsed().as_secs_f64() * 1000.0;
        st.rss_after_kib = rss(&run.pids);
        st.rss_peak_kib = run.samples(&name, sampler.stop());
        match r {
            Ok((keys, bytes)) => {
                st.keys = Some(keys);
                st.bytes = Some(bytes);
            }
            Err(e) => st.fail(e),
        }
        run.done(st);
    }

    // 3. One range of 100,000 keys, no limit, while one client puts (other
    // keys) one after the other: what the range costs the writes.
    let m = RANGE_KEYS.min(n);
    let (start, end) = middle_range(n, m);
    for i in 1..=REPEATS {
        let name = format!("range-{i}");
        let mut st = Step::named(&name);
        st.rss_before_kib = rss(&run.pids);
        let sampler = Sampler::start(&run.pids, Duration::from_millis(50));
        let stop = Arc::new(AtomicBool::new(false));
        let t = Instant::now();
        let load = {
            let (conns, stop, size) = (conns[..1].to_vec(), stop.clone(), args.value_size);
            tokio::spawn(async move { put_load(&conns, None, size, stop, t).await })
        };
        let r = kv
            .range(RangeRequest {
                key: start.clone(),
                range_end: end.clone(),
                ..Default::default()
            })
            .await;
        st.ms = t.elapsed().as_secs_f64() * 1000.0;
        st.rss_after_kib = rss(&run.pids);
        stop.store(true, Ordering::Release);
        match load.await {
            Ok(puts) => {
                st.during = Some(Window::of(puts.lat.iter().map(|&(_, us)| u64::from(us))));
                if let Some(e) = puts.error {
                    st.fail(format!("{} puts failed, e.g. {e}", puts.errors));
                }
            }
            Err(e) => st.fail(format!("put load: {e}")),
        }
        match r {
            Ok(resp) => {
                let resp = resp.into_inner();
                st.bytes = Some(resp.encoded_len() as u64);
                st.keys = Some(resp.kvs.len() as u64);
                if resp.kvs.len() as u64 != m || resp.count != m as i64 || resp.more {
                    st.fail(format!(
                        "{} keys, count {}, more {}; {m} expected",
                        resp.kvs.len(),
                        resp.count,
                        resp.more
                    ));
                }
            }
            Err(s) => st.fail(status(&s)),
        }
        tokio::time::sleep(SETTLE).await;
        st.rss_5s_kib = rss(&run.pids);
        st.rss_peak_kib = run.samples(&name, sampler.stop());
        run.done(st);
    }

    // 4. Compaction of the fill's revisions under a put load.
    let mut st = Step::named("compact");
    match filled_rev {
        Ok(rev) => compact(&mut run, &mut st, &conns, &mut kv, rev, args.value_size).await,
        Err(e) => st.fail(format!("revision after the fill: {e}")),
    }
    run.done(st);

    // 5. Restart of the first member.
    if let Some(first) = members.first_mut() {
        let mut st = Step::named("restart");
        restart(&mut run, &mut st, first).await;
        run.done(st);
    }

    // 6. A new member catching up.
    if members.len() >= 3 && target.dial.auth {
        run.say("join: left out with --auth (MemberAdd needs root)".into());
    } else if members.len() >= 3 {
        let mut st = Step::named("join");
        if let Some(new) = join(&mut run, &mut st, members).await {
            members.push(new);
        }
        run.done(st);
    }

    let steps = std::mem::take(&mut run.steps);
    let errors: Vec<String> = steps
        .iter()
        .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.step)))
        .collect();
    outcome.errors = errors.len() as u64;
    for e in errors {
        outcome.error_samples.insert(e, 1);
    }
    let mut r = RunResult::new(&target.name, "scale", &outcome, &probes);
    r.timeline = crate::report::timeline(&outcome.samples, outcome.elapsed);
    r.scale = Some(ScaleStats {
        keys: n,
        members: target.endpoints.len(),
        steps,
        rss: std::mem::take(&mut run.rss),
    });
    Ok(r)
}

/// Step 4: Compact(`rev`) 10 s into a 20 s put load.
async fn compact(
    run: &mut Run<'_>,
    st: &mut Step,
    conns: &[Kvc],
    kv: &mut Kvc,
    rev: i64,
    value_size: usize,
) {
    run.say(format!(
        "compact: {} clients put for {} s, Compact({rev}) at {} s",
        conns.len(),
        LOAD.as_secs(),
        COMPACT_AT.as_secs()
    ));
    st.rss_before_kib = rss(&run.pids);
    let sampler = Sampler::start(&run.pids, Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let load = {
        let (conns, stop) = (conns.to_vec(), stop.clone());
        tokio::spawn(async move { put_load(&conns, None, value_size, stop, t0).await })
    };
    tokio::time::sleep(COMPACT_AT).await;
    let called = t0.elapsed();
    let r = kv
        .compact(CompactionRequest {
            revision: rev,
            physical: false,
        })
        .await;
    let answered = t0.elapsed();
    st.ms = (answered - called).as_secs_f64() * 1000.0;
    st.rss_after_kib = rss(&run.pids);
    if let Err(s) = r {
        st.fail(format!("Compact({rev}): {}", status(&s)));
    }
    let until = (answered + AFTER_COMPACT).max(LOAD);
    tokio::time::sleep(until.saturating_sub(t0.elapsed())).await;
    stop.store(true, Ordering::Release);
    let puts = match load.await {
        Ok(p) => p,
        Err(e) => {
            st.fail(format!("put load: {e}"));
            return;
        }
    };
    st.rss_peak_kib = run.samples("compact", sampler.stop());
    let ms = |d: Duration| d.as_millis() as u32;
    let from = ms(called.saturating_sub(COMPACT_AT));
    let (c, a) = (ms(called), ms(answered + AFTER_COMPACT));
    st.before = Some(Window::of(
        puts.lat
            .iter()
            .filter(|(at, _)| (from..c).contains(at))
            .map(|&(_, us)| u64::from(us)),
    ));
    st.during = Some(Window::of(
        puts.lat
            .iter()
            .filter(|(at, _)| (c..=a).contains(at))
            .map(|&(_, us)| u64::from(us)),
    ));
    if let Some(e) = puts.error {
        st.fail(format!("{} puts failed, e.g. {e}", puts.errors));
    }
}

/// Step 5: SIGKILL the member, start it again, time its first linearizable read.
async fn restart(run: &mut Run<'_>, st: &mut Step, member: &mut Daemon) {
    let Some(old) = member.pid() else {
        st.fail("the member is not running".into());
        return;
    };
    st.rss_before_kib = procfs::rss_kib(old);
    run.say("restart: SIGKILL the first member and start it again".into());
    let spawned = match member.restart() {
        Ok(t) => t,
        Err(e) => {
            st.fail(e);
            return;
        }
    };
    let pids: Vec<u32> = member.pid().into_iter().collect();
    let sampler = Sampler::start(&pids, Duration::from_millis(100));
    let ep = member.addr();
    let mut last_error = String::new();
    let answered = loop {
        if spawned.elapsed() > RESTART_WITHIN {
            break None;
        }
        let attempt = async {
            let ch = channel_to(
                run.target,
                &ep,
                Duration::from_secs(1),
                Duration::from_secs(5),
            )
            .await?;
            let mut kv = KvClient::new(ch);
            revision(&mut kv).await
        };
        match attempt.await {
            Ok(_) => break Some(spawned.elapsed()),
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    match answered {
        Some(d) => {
            st.ms = d.as_secs_f64() * 1000.0;
            st.rss_after_kib = rss(&pids);
            tokio::time::sleep(SETTLE).await;
            st.rss_5s_kib = rss(&pids);
        }
        None => st.fail(format!(
            "no read within {RESTART_WITHIN:?}; last error: {last_error}"
        )),
    }
    st.rss_peak_kib = run.samples("restart", sampler.stop());
}

/// The leader as noted before the join: where it is and its term.
struct Leader {
    /// Its client address.
    addr: String,
    id: u64,
    term: u64,
}

/// Maintenance.Status of the member at `ep`.
async fn status_of(target: &Target, ep: &str) -> Result<StatusResponse, String> {
    let ch = channel_to(target, ep, Duration::from_secs(5), Duration::from_secs(10)).await?;
    MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("Status of {ep}: {}", status(&s)))
}

/// The member of `members` that says it is the leader, with its term.
async fn leader(target: &Target, members: &[Daemon]) -> Result<Leader, String> {
    for m in members {
        let addr = m.addr();
        let s = status_of(target, &addr).await?;
        if s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader) {
            return Ok(Leader {
                addr,
                id: s.leader,
                term: s.raft_term,
            });
        }
    }
    Err("no member says it is the leader".into())
}

/// MemberAdd of a learner at `peer_url` through `ep`, retried while the
/// cluster answers that it is unhealthy: the new member's ID.
async fn add_learner(target: &Target, ep: &str, peer_url: &str) -> Result<u64, String> {
    let ch = channel_to(target, ep, Duration::from_secs(5), Duration::from_secs(30)).await?;
    let mut cluster = ClusterClient::new(ch);
    let t = Instant::now();
    loop {
        let r = cluster
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url.to_owned()],
                is_learner: true,
            })
            .await;
        match r {
            Ok(r) => return Ok(r.into_inner().member.map_or(0, |m| m.id)),
            Err(s) if s.message().contains("unhealthy") && t.elapsed() < ADD_WITHIN => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => return Err(format!("MemberAdd({peer_url}, learner): {}", status(&s))),
        }
    }
}

/// Asks the member at `ep` every `JOIN_POLL` with a serializable Range
/// until its header revision is `rev` or later: the time since `spawned`.
async fn caught_up(
    target: &Target,
    ep: &str,
    rev: i64,
    spawned: Instant,
) -> Result<Duration, String> {
    let mut kv: Option<Kvc> = None;
    let mut last = "no answer".to_owned();
    while spawned.elapsed() < JOIN_WITHIN {
        if kv.is_none() {
            match channel_to(target, ep, Duration::from_secs(1), Duration::from_secs(5)).await {
                Ok(ch) => kv = Some(KvClient::new(ch)),
                Err(e) => last = e,
            }
        }
        if let Some(c) = kv.as_mut() {
            let r = c
                .range(RangeRequest {
                    key: key(0),
                    serializable: true,
                    ..Default::default()
                })
                .await;
            match r {
                Ok(r) => {
                    let at = r.into_inner().header.map_or(0, |h| h.revision);
                    if at >= rev {
                        return Ok(spawned.elapsed());
                    }
                    last = format!("at revision {at}");
                }
                Err(s) => last = status(&s),
            }
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
    Err(format!(
        "not at revision {rev} within {JOIN_WITHIN:?}; last answer: {last}"
    ))
}

/// Step 6: a learner added with MemberAdd and started empty; the time from
/// its spawn until it serves the cluster's revision, and its RSS. The new
/// member, once spawned.
async fn join(run: &mut Run<'_>, st: &mut Step, members: &[Daemon]) -> Option<Daemon> {
    let target = run.target;
    let before = match leader(target, members).await {
        Ok(l) => l,
        Err(e) => {
            st.fail(format!("the leader before: {e}"));
            return None;
        }
    };
    let rev = match connect_to(target, &before.addr, Duration::from_secs(30)).await {
        Ok(mut kv) => revision(&mut kv).await,
        Err(e) => Err(e),
    };
    let rev = match rev {
        Ok(r) => r,
        Err(e) => {
            st.fail(format!("the revision before: {e}"));
            return None;
        }
    };
    let joining = match members[0].plan_join(&format!("m{}", members.len())) {
        Ok(j) => j,
        Err(e) => {
            st.fail(e);
            return None;
        }
    };
    run.say(format!(
        "join: add a learner at {} (revision {rev}, term {}) and start it",
        joining.peer_url(),
        before.term
    ));
    if let Err(e) = add_learner(target, &before.addr, &joining.peer_url()).await {
        st.fail(e);
        return None;
    }
    let initial = members
        .iter()
        .map(Daemon::initial_entry)
        .chain([joining.initial_entry()])
        .collect::<Vec<_>>()
        .join(",");
    let (new, spawned) = match joining.start(&initial) {
        Ok(d) => d,
        Err(e) => {
            st.fail(e);
            return None;
        }
    };
    let pids: Vec<u32> = new.pid().into_iter().collect();
    let sampler = Sampler::start(&pids, Duration::from_millis(100));
    match caught_up(target, &new.addr(), rev, spawned).await {
        Ok(d) => {
            st.ms = d.as_secs_f64() * 1000.0;
            st.rss_after_kib = rss(&pids);
            tokio::time::sleep(SETTLE).await;
            st.rss_5s_kib = rss(&pids);
        }
        Err(e) => st.fail(format!("{e}; log:\n{}", new.log_tail())),
    }
    st.rss_peak_kib = run.samples("join", sampler.stop());
    match status_of(target, &before.addr).await {
        Ok(s) if s.raft_term != before.term || s.leader != before.id => st.fail(format!(
            "an election happened while the member joined: term {} -> {}, leader {:x} -> {:x}",
            before.term, s.raft_term, before.id, s.leader
        )),
        Ok(_) => {}
        Err(e) => st.fail(format!("the leader after: {e}")),
    }
    Some(new)
}
