//! Connects, loads, measures.
//!
//! Clients are split over `--threads` client threads (each a single-threaded
//! runtime, like separate application processes); operations are split into
//! disjoint ranges, one per thread, so every operation number (and key) is
//! used once. Each client has its own connection unless `--conns` makes the
//! clients of a thread share some; connection `k` (counted over all
//! threads) goes to endpoint `k % endpoints`, so a cluster's members get
//! equal shares of the clients.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::Args;
use crate::driver::{self, Outcome, Phase};
use crate::http;
use crate::procfs;
use crate::report::{Probes, RunResult};
use crate::workload::{KvClient, Spec};

/// A server (one member or a whole cluster) to measure.
pub struct Target {
    pub name: String,
    pub endpoints: Vec<String>,
    /// Its processes, for CPU and RSS (summed over members).
    pub pids: Vec<u32>,
    /// `host:port` serving /metrics, one per member.
    pub http_addrs: Vec<String>,
    /// How clients connect (TLS, token).
    pub dial: crate::secure::Dial,
    /// The members' data dirs (--compare), watched for snapshot files.
    pub data_dirs: Vec<std::path::PathBuf>,
}

/// `n` connections, the first going to endpoint `first % endpoints`.
async fn connect(
    dial: &crate::secure::Dial,
    endpoints: &[String],
    name: &str,
    n: usize,
    first: usize,
) -> Result<Vec<KvClient>, String> {
    let mut conns = Vec::with_capacity(n);
    for k in 0..n {
        let ep = &endpoints[(first + k) % endpoints.len()];
        // With --auth each connection authenticates (not measured).
        let channel = dial
            .client_channel(ep, |e| {
                e.connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(60))
                    .tcp_nodelay(true)
            })
            .await?;
        let mut kv = KvClient::new(channel);
        // Warm-up: the connection is established before the clock starts.
        let warm = metastore::proto::etcdserverpb::RangeRequest {
            key: b"loadgen-warmup".to_vec(),
            ..Default::default()
        };
        kv.range(warm)
            .await
            .map_err(|e| format!("warm-up request to {name} ({ep}): {}", e.message()))?;
        conns.push(kv);
    }
    Ok(conns)
}

/// One client thread's share: clients, operations and connections.
struct Share {
    clients: usize,
    first_client: usize,
    ops: (u64, u64),
    conns: usize,
}

fn shares(args: &Args, total: u64) -> Vec<Share> {
    let n = args.threads.min(args.clients).max(1);
    let mut out = Vec::with_capacity(n);
    let (mut client, mut op) = (0, 0);
    for t in 0..n {
        // As evenly as possible.
        let clients = args.clients / n + usize::from(t < args.clients % n);
        let ops = total / n as u64 + u64::from((t as u64) < total % n as u64);
        out.push(Share {
            clients,
            first_client: client,
            ops: (op, ops),
            conns: args.conns.unwrap_or(clients).min(clients).max(1),
        });
        client += clients;
        op += ops;
    }
    out
}

/// Client threads running a phase, connected and waiting at a barrier until
/// `finish` releases them.
struct Threads {
    barrier: Arc<std::sync::Barrier>,
    handles: Vec<std::thread::JoinHandle<Result<Outcome, String>>>,
}

impl Threads {
    fn start(
        args: &Args,
        target: &Target,
        spec: Arc<Spec>,
        phase: Phase,
        total: u64,
        max: Duration,
    ) -> Result<Threads, String> {
        let shares = shares(args, total);
        let barrier = Arc::new(std::sync::Barrier::new(shares.len() + 1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut handles = Vec::with_capacity(shares.len());
        for share in shares {
            let endpoints = target.endpoints.clone();
            let dial = target.dial.clone();
            let name = target.name.clone();
            let spec = spec.clone();
            let barrier = barrier.clone();
            let ready_tx = ready_tx.clone();
            handles.push(std::thread::spawn(move || -> Result<Outcome, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let conns =
                        connect(&dial, &endpoints, &name, share.conns, share.first_client).await;
                    let _ = ready_tx.send(conns.as_ref().map(|_| ()).map_err(Clone::clone));
                    barrier.wait();
                    let conns = conns?;
                    Ok(driver::run(&conns, spec, phase, share.ops, share.clients, max).await)
                })
            }));
        }
        drop(ready_tx);
        let n = handles.len();
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    barrier.wait();
                    return Err(e);
                }
                Err(_) => return Err("a client thread died while connecting".into()),
            }
        }
        Ok(Threads { barrier, handles })
    }

    /// Releases the threads and merges their outcomes.
    fn finish(self) -> Outcome {
        self.barrier.wait();
        let mut parts = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(Ok(o)) => parts.push(o),
                Ok(Err(e)) => parts.push(Outcome::failed(e)),
                Err(_) => parts.push(Outcome::failed("client thread panicked".into())),
            }
        }
        Outcome::merge(parts)
    }
}

pub fn sum<T: std::iter::Sum<T>>(parts: impl Iterator<Item = Option<T>>) -> Option<T> {
    parts
        .collect::<Option<Vec<T>>>()
        .map(|v| v.into_iter().sum())
}

pub fn fsync_totals(target: &Target) -> Option<(f64, f64)> {
    let parts: Option<Vec<(f64, f64)>> = target
        .http_addrs
        .iter()
        .map(|a| http::fsync_totals(a))
        .collect();
    parts.map(|v| {
        v.into_iter()
            .fold((0.0, 0.0), |(n, s), (a, b)| (n + a, s + b))
    })
}

/// Runs the configured workload against `target`; `say` prints progress.
pub async fn run(args: &Args, target: &Target, say: &dyn Fn(&str)) -> Result<RunResult, String> {
    if args.workload == crate::cli::Workload::K8s {
        return crate::k8s::run(args, target, say);
    }
    if args.workload == crate::cli::Workload::Scale {
        // No member to restart or add: steps 5 and 6 are left out.
        return crate::scale::run(args, target, &mut Vec::new(), say);
    }
    let spec = Arc::new(Spec::new(args));
    let max = Duration::from_secs(args.max_seconds);
    if args.workload.needs_preload() {
        say(&format!(
            "[{}] preloading {} keys (not measured)",
            target.name, spec.keyspace
        ));
        let o = Threads::start(
            args,
            target,
            spec.clone(),
            Phase::Preload,
            spec.keyspace,
            max,
        )?
        .finish();
        if o.errors > 0 || o.cut_short {
            return Err(format!(
                "preload against {} failed: {} errors, cut short: {}, e.g. {:?}",
                target.name,
                o.errors,
                o.cut_short,
                o.error_samples.keys().next()
            ));
        }
    }
    say(&format!(
        "[{}] measuring {} x {} from {} clients on {} endpoint(s)",
        target.name,
        args.total,
        args.workload.name(),
        args.clients,
        target.endpoints.len()
    ));
    // Watchers and kept-alive leases first (not measured), from the next
    // revision on.
    let first_rev = current_revision(target).await? + 1;
    let rss_before_side = procfs::rss_sum(&target.pids);
    let side = crate::side::Side::start(args, &target.endpoints, first_rev)?;
    let side_rss = side
        .as_ref()
        .and_then(|_| rss_before_side.zip(procfs::rss_sum(&target.pids)));
    if side.is_some() {
        say(&format!(
            "[{}] {} watchers on {} streams, {} leases (TTL {} s) kept alive, defragment every {} ms",
            target.name,
            args.watchers,
            args.watch_streams,
            args.leases,
            args.lease_ttl,
            args.defrag_every_ms
        ));
    }
    // Every client thread connects first; the clock starts when all are ready.
    let threads = Threads::start(args, target, spec, Phase::Measure, args.total, max)?;
    // --auth-storm: its clients connected too, started with the phase.
    let storm = if args.auth_storm > 0 {
        say(&format!(
            "[{}] {} clients calling Authenticate in a loop during the phase",
            target.name, args.auth_storm
        ));
        Some(crate::storm::Storm::start(
            &target.dial,
            &target.endpoints,
            args.auth_storm,
        )?)
    } else {
        None
    };
    let self_pid = std::process::id();
    let server_cpu = || sum(target.pids.iter().map(|&p| procfs::cpu_micros(p)));
    let server_cpu0 = server_cpu();
    let client_cpu0 = procfs::cpu_micros(self_pid);
    let fsync0 = fsync_totals(target);
    let host0 = procfs::host_cpu_micros();

    let progress = Progress::start(&target.name, args.total);
    if let Some(s) = &storm {
        s.go();
    }
    let outcome = threads.finish();
    let storm = storm.map(crate::storm::Storm::finish).transpose()?;
    progress.stop();

    // The side load finishes first (watchers wait for every event of the
    // phase), so the CPU figures count all the work until the last event is
    // delivered, not only until the last put.
    let seen = match side {
        Some(side) => {
            let last = current_revision(target).await?;
            side.finish(last)?
        }
        None => Default::default(),
    };
    let server_cpu1 = server_cpu();
    let client_cpu1 = procfs::cpu_micros(self_pid);
    let host1 = procfs::host_cpu_micros();
    let fsync1 = fsync_totals(target);
    let probes = Probes {
        server_cpu_us: server_cpu0.zip(server_cpu1).map(|(a, b)| b - a),
        client_cpu_us: client_cpu0.zip(client_cpu1).map(|(a, b)| b - a),
        rss_kib: procfs::rss_sum(&target.pids),
        host_cpu_us: host0
            .zip(host1)
            .map(|((b0, t0), (b1, t1))| (b1.saturating_sub(b0), t1.saturating_sub(t0))),
        fsync: fsync0
            .zip(fsync1)
            .map(|((n0, s0), (n1, s1))| (n1 - n0, s1 - s0)),
        members: target.http_addrs.len().max(1),
    };
    let mut r = RunResult::new(&target.name, args.workload.name(), &outcome, &probes);
    r.timeline = crate::report::timeline(&outcome.samples, outcome.elapsed);
    r.watch = seen.watch;
    r.idle_conns = seen.idle_conns;
    r.side_rss_kib = side_rss;
    r.lease = seen.lease;
    r.defrag = seen.defrag;
    r.auth_storm = storm;
    Ok(r)
}

/// The server's current revision (a serializable read of a missing key).
async fn current_revision(target: &Target) -> Result<i64, String> {
    let endpoint = &target.endpoints[0];
    let channel = target.dial.client_channel(endpoint, |e| e).await?;
    let r = KvClient::new(channel)
        .range(metastore::proto::etcdserverpb::RangeRequest {
            key: b"loadgen-revision".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("revision of {endpoint}: {}", e.message()))?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

/// A progress line on stderr every few seconds while a phase runs (long
/// runs only: the first line comes after the first interval).
struct Progress {
    stop: std::sync::mpsc::Sender<()>,
    handle: std::thread::JoinHandle<()>,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(5);

    fn start(name: &str, total: u64) -> Progress {
        use std::sync::atomic::Ordering;
        crate::driver::PROGRESS.store(0, Ordering::Relaxed);
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let name = name.to_owned();
        let handle = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut last = 0;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Self::EVERY)
            {
                let done = crate::driver::PROGRESS.load(Ordering::Relaxed);
                eprintln!(
                    "[{name}] {done} / {total} ops after {:.0} s ({:.0} ops/s in the last {} s)",
                    started.elapsed().as_secs_f64(),
                    (done - last) as f64 / Self::EVERY.as_secs_f64(),
                    Self::EVERY.as_secs()
                );
                last = done;
            }
        });
        Progress { stop, handle }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.join();
    }
}
