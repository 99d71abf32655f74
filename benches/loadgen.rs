//! `loadgen`: one load generator for MetaStore and etcd 3.4, so the two are
//! measured with the same client, the same workload and the same machine in the
//! same run.
//!
//! # Usage
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/metastore-target
//! cargo build --release    # target/release/metastore (cargo bench builds it too)
//! cargo bench --bench loadgen -- --compare --workload put --clients 50 --total 50000
//! cargo bench --bench loadgen -- --endpoints 127.0.0.1:2379 --workload get --json
//! ```
//!
//! Two modes:
//!
//! * `--compare` starts a fresh etcd (`--etcd-bin`, default `etcd` on PATH) and
//!   a fresh MetaStore, each on free loopback ports with its own temp data dir
//!   (under `--data-root`, default the system temp dir), runs the identical
//!   workload against etcd and then MetaStore, prints both and the
//!   MetaStore/etcd ratios, then stops them. Both daemons run with their default
//!   settings (plus `--engine`, `--metastore-arg` and `--etcd-arg`), so both
//!   fsync their WAL before answering a write (etcd once per Raft ready,
//!   MetaStore once per group-commit batch).
//! * `--endpoints a,b` targets a server that is already running. Its CPU and RSS
//!   are read when `--server-pid` is given or when a listener on the first
//!   (loopback) endpoint's port can be found in /proc.
//!
//! The MetaStore binary is, in order: `--metastore-bin`, `$METASTORE_BIN`, or
//! the release binary `$CARGO_TARGET_DIR/release/metastore` that cargo builds
//! for this bench (the same file `cargo build --release` writes). A warning is
//! printed when that binary is older than the sources under `src/`.
//!
//! Without `--compare` or `--endpoints` the program prints a hint and exits 0,
//! so a plain `cargo bench` or `cargo test --all-targets` does not start daemons.
//!
//! # Workloads
//!
//! `--total` operations are shared by `--clients` concurrent clients (tasks),
//! spread round-robin over `--conns` gRPC connections (HTTP/2 channels). The
//! default is one connection, as etcd's own `benchmark` tool (`--conns 1`):
//! every client is a stream multiplexed on it, which is also what an
//! application with one etcd client object does. Operation `i` uses key
//! `i % keyspace` (or a uniformly random key with `--random-keys`), written as
//! a zero-padded decimal of `--key-size` bytes; values are `--value-size`
//! random bytes. `--keyspace` defaults to `--total`: every put writes a new key,
//! like `benchmark put --sequential-keys`.
//!
//! * `put`: `Put(k, v)`.
//! * `get`: linearizable `Range(k)`; `get-serializable`: serializable `Range(k)`.
//! * `txn`: `Txn(if version(k) > -1 then Put(k, v))`, a compare-and-put whose
//!   compare always holds (the API has no `>=`; `> -1` is `>= 0`).
//! * `mixed`: linearizable gets (`--read-percent`, default 50) and puts.
//!
//! Read workloads first put every key of the keyspace once (not measured). A
//! get that finds no key, or a txn whose compare fails, counts as an error.
//!
//! # What is measured
//!
//! Only the measured phase, which starts once every connection has answered a
//! warm-up request:
//!
//! * throughput: successful operations / wall time of the phase;
//! * latency of each successful operation (send to answer) in an HDR histogram
//!   at microsecond resolution: p50, p99, p99.9, max;
//! * errors (failed RPCs, missing keys, failed compares), with samples;
//! * server CPU per operation: utime + stime of the server process from
//!   `/proc/<pid>/stat` before and after the phase, divided by operations;
//!   the load generator's own CPU per operation the same way (it shares the
//!   machine's cores with the server);
//! * server RSS (`VmRSS` from `/proc/<pid>/status`) at the end of the phase;
//! * the machine's CPU use during the phase (`/proc/stat`), and the part of it
//!   that is neither the server nor the load generator ("other %"): other
//!   processes competing for the cores, i.e. how noisy the run was;
//! * WAL fsyncs during the phase from `etcd_disk_wal_fsync_duration_seconds`
//!   at `/metrics` (both servers export it): operations per fsync shows how well
//!   commits are grouped, and the mean fsync time how slow the disk is.
//!
//! `--json` prints the results as one JSON document on stdout (progress goes to
//! stderr). The exit code is 1 when any operation failed.

use std::process::ExitCode;

use clap::Parser;

mod cli {
    use std::path::PathBuf;

    use clap::{Parser, ValueEnum};

    /// The operation mix.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    pub enum Workload {
        /// Put(k, v).
        Put,
        /// Linearizable Range(k).
        Get,
        /// Serializable Range(k).
        GetSerializable,
        /// Txn(if version(k) > -1 then Put(k, v)).
        Txn,
        /// Linearizable gets and puts (--read-percent gets).
        Mixed,
    }

    impl Workload {
        /// The name used on the command line.
        pub fn name(self) -> &'static str {
            match self {
                Workload::Put => "put",
                Workload::Get => "get",
                Workload::GetSerializable => "get-serializable",
                Workload::Txn => "txn",
                Workload::Mixed => "mixed",
            }
        }

        /// Whether the keyspace is loaded before the measured phase.
        pub fn needs_preload(self) -> bool {
            matches!(
                self,
                Workload::Get | Workload::GetSerializable | Workload::Mixed
            )
        }
    }

    /// Load generator for MetaStore and etcd (see the file's doc comment).
    #[derive(Debug, Clone, Parser)]
    #[command(name = "loadgen")]
    pub struct Args {
        /// Target an already running server: comma-separated endpoints.
        #[arg(long, value_delimiter = ',', conflicts_with = "compare")]
        pub endpoints: Vec<String>,
        /// Start a fresh etcd and a fresh MetaStore and measure both.
        #[arg(long)]
        pub compare: bool,
        /// Operation mix.
        #[arg(long, value_enum, default_value_t = Workload::Put)]
        pub workload: Workload,
        /// Concurrent clients (tasks), each with one request in flight.
        #[arg(long, default_value_t = 50)]
        pub clients: usize,
        /// gRPC connections per client thread; clients are spread over them
        /// round-robin.
        #[arg(long, default_value_t = 1)]
        pub conns: usize,
        /// Client threads, each a single-threaded runtime with its own
        /// connections and an equal share of the clients (like independent
        /// application processes; one runtime per thread avoids cross-thread
        /// wake-ups in the client).
        #[arg(long, default_value_t = 2)]
        pub threads: usize,
        /// Operations in the measured phase.
        #[arg(long, default_value_t = 50_000)]
        pub total: u64,
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        pub key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 256)]
        pub value_size: usize,
        /// Distinct keys (default: --total, a new key for every operation).
        #[arg(long)]
        pub keyspace: Option<u64>,
        /// Pick keys uniformly at random instead of in sequence.
        #[arg(long)]
        pub random_keys: bool,
        /// Percentage of gets in the mixed workload.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
        pub read_percent: u8,
        /// MetaStore binary (default: $METASTORE_BIN, else the release build).
        #[arg(long, env = "METASTORE_BIN")]
        pub metastore_bin: Option<PathBuf>,
        /// etcd binary.
        #[arg(long, default_value = "etcd")]
        pub etcd_bin: PathBuf,
        /// MetaStore's --engine; comma-separated for several, each measured
        /// in the same run (`--engine memory,rocksdb`).
        #[arg(long, value_delimiter = ',')]
        pub engine: Vec<String>,
        /// An extra flag for MetaStore in --compare, e.g.
        /// `--metastore-arg=--snapshot-count=100000` (repeatable).
        #[arg(long = "metastore-arg", allow_hyphen_values = true)]
        pub metastore_args: Vec<String>,
        /// An extra flag for etcd in --compare (repeatable).
        #[arg(long = "etcd-arg", allow_hyphen_values = true)]
        pub etcd_args: Vec<String>,
        /// Where --compare puts the daemons' temp data dirs (default: system temp dir).
        #[arg(long)]
        pub data_root: Option<PathBuf>,
        /// With --endpoints: the server's pid, for CPU and RSS (default: found
        /// from the first endpoint's port).
        #[arg(long)]
        pub server_pid: Option<u32>,
        /// With --endpoints: the name printed for the server.
        #[arg(long, default_value = "target")]
        pub label: String,
        /// Upper bound on one phase's duration; workers stop when it passes.
        #[arg(long, default_value_t = 600)]
        pub max_seconds: u64,
        /// Print the results as JSON on stdout.
        #[arg(long)]
        pub json: bool,
        /// Passed by `cargo bench`; ignored.
        #[arg(long, hide = true)]
        pub bench: bool,
    }

    impl Args {
        /// Distinct keys.
        pub fn keyspace(&self) -> u64 {
            self.keyspace.unwrap_or(self.total).max(1)
        }

        /// Checks the flags that clap cannot.
        pub fn validate(&self) -> Result<(), String> {
            if self.clients == 0 || self.conns == 0 || self.total == 0 {
                return Err("--clients, --conns and --total must be at least 1".into());
            }
            let digits = (self.keyspace() - 1).max(1).ilog10() as usize + 1;
            if digits > self.key_size {
                return Err(format!(
                    "--key-size {} cannot hold {} distinct keys (needs {digits} digits)",
                    self.key_size,
                    self.keyspace()
                ));
            }
            Ok(())
        }
    }
}

/// What one operation does, and how operation `i` is chosen.
mod workload {
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
}

/// Runs a phase: `clients` tasks share `total` operations.
mod driver {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use etcd_client::KvClient;
    use hdrhistogram::Histogram;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::workload::{execute, Op, Spec};

    /// Distinct error messages kept as samples.
    const ERROR_SAMPLES: usize = 5;

    /// What a phase did.
    pub struct Outcome {
        /// Latency of successful operations, in microseconds.
        pub hist: Histogram<u64>,
        pub ok: u64,
        pub errors: u64,
        /// Up to [`ERROR_SAMPLES`] messages with their counts.
        pub error_samples: BTreeMap<String, u64>,
        pub elapsed: Duration,
        /// The phase hit --max-seconds before finishing.
        pub cut_short: bool,
    }

    fn histogram() -> Histogram<u64> {
        // 1 µs .. 1 h at 3 significant digits.
        Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
    }

    /// Which operations a phase sends.
    #[derive(Clone, Copy)]
    pub enum Phase {
        /// Put every key of the keyspace once.
        Preload,
        /// The workload.
        Measure,
    }

    /// Runs `total` operations over `clients` tasks on the given connections.
    pub async fn run(
        conns: &[KvClient],
        spec: Arc<Spec>,
        phase: Phase,
        total: u64,
        clients: usize,
        max: Duration,
    ) -> Outcome {
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + max;
        let mut tasks = Vec::with_capacity(clients);
        for c in 0..clients {
            let mut kv = conns[c % conns.len()].clone();
            let spec = spec.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(c as u64 + 1);
                let mut out = Outcome::empty();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if Instant::now() >= deadline {
                        out.cut_short = true;
                        break;
                    }
                    let op = match phase {
                        Phase::Preload => Op::Put(spec.key(i)),
                        Phase::Measure => spec.op(i, &mut rng),
                    };
                    let sent = Instant::now();
                    match execute(&mut kv, op, &spec.value).await {
                        Ok(()) => {
                            let us = sent.elapsed().as_micros() as u64;
                            out.hist.saturating_record(us.max(1));
                            out.ok += 1;
                        }
                        Err(e) => {
                            out.errors += 1;
                            note_error(&mut out.error_samples, e, 1);
                        }
                    }
                }
                out
            }));
        }
        let mut parts = Vec::with_capacity(tasks.len());
        for t in tasks {
            parts.push(match t.await {
                Ok(o) => o,
                Err(e) => Outcome::failed(format!("client task: {e}")),
            });
        }
        let mut total_out = Outcome::merge(parts);
        total_out.elapsed = started.elapsed();
        total_out
    }

    impl Outcome {
        /// Nothing done yet.
        pub fn empty() -> Outcome {
            Outcome {
                hist: histogram(),
                ok: 0,
                errors: 0,
                error_samples: BTreeMap::new(),
                elapsed: Duration::ZERO,
                cut_short: false,
            }
        }

        /// An outcome of one failed worker.
        pub fn failed(msg: String) -> Outcome {
            let mut o = Outcome::empty();
            o.errors = 1;
            note_error(&mut o.error_samples, msg, 1);
            o
        }

        /// Adds up workers' outcomes; elapsed is the longest.
        pub fn merge(parts: Vec<Outcome>) -> Outcome {
            let mut total = Outcome::empty();
            for o in parts {
                total
                    .hist
                    .add(&o.hist)
                    .expect("histograms with equal bounds");
                total.ok += o.ok;
                total.errors += o.errors;
                total.cut_short |= o.cut_short;
                total.elapsed = total.elapsed.max(o.elapsed);
                for (msg, n) in o.error_samples {
                    note_error(&mut total.error_samples, msg, n);
                }
            }
            total
        }
    }

    fn note_error(samples: &mut BTreeMap<String, u64>, msg: String, n: u64) {
        if let Some(count) = samples.get_mut(&msg) {
            *count += n;
        } else if samples.len() < ERROR_SAMPLES {
            samples.insert(msg, n);
        }
    }
}

/// Reads process figures from /proc (Linux).
mod procfs {
    use std::fs;

    /// utime + stime of `pid` (all its threads) in microseconds.
    pub fn cpu_micros(pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces), from field 3 on.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) * 1_000_000 / clock_ticks())
    }

    /// Machine-wide (busy, total) CPU time in microseconds from /proc/stat.
    pub fn host_cpu_micros() -> Option<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let t: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let total: u64 = t.iter().sum();
        let idle = t.get(3)? + t.get(4)?;
        let us = |ticks: u64| ticks * 1_000_000 / clock_ticks();
        Some((us(total - idle), us(total)))
    }

    fn clock_ticks() -> u64 {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
    }

    /// `VmRSS` of `pid` in KiB.
    pub fn rss_kib(pid: u32) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The process listening on TCP `port`, if it can be seen.
    pub fn listener_pid(port: u16) -> Option<u32> {
        let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| fs::read_to_string(table).ok())
            .find_map(|text| text.lines().skip(1).find_map(|l| listening_inode(l, port)))?;
        let target = format!("socket:[{inode}]");
        let holds_socket = |pid_dir: &std::path::Path| {
            fs::read_dir(pid_dir.join("fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
                })
            })
        };
        fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter(|e| holds_socket(&e.path()))
            .find_map(|e| e.file_name().to_str()?.parse().ok())
    }

    /// The socket inode of a /proc/net/tcp line that listens on `port`.
    fn listening_inode(line: &str, port: u16) -> Option<String> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        let listening = *f.get(3)? == "0A";
        (listening && local_port == port).then(|| f.get(9).map(|s| s.to_string()))?
    }
}

/// Plain HTTP to a server's client port: /health and /metrics.
mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// `host:port` of an endpoint (`http://` prefix and path dropped).
    pub fn host_port(endpoint: &str) -> &str {
        let e = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        e.split('/').next().unwrap_or(e)
    }

    /// The body of `GET path`. HTTP/1.0, so the answer is never chunked.
    pub fn get(addr: &str, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.contains(" 200 ").then(|| body.to_owned())
    }

    /// WAL fsync count and total seconds from `etcd_disk_wal_fsync_duration_seconds`.
    pub fn fsync_totals(addr: &str) -> Option<(f64, f64)> {
        let text = get(addr, "/metrics")?;
        let value = |name: &str| -> Option<f64> {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter(|l| matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .reduce(|a, b| a + b)
        };
        Some((
            value("etcd_disk_wal_fsync_duration_seconds_count")?,
            value("etcd_disk_wal_fsync_duration_seconds_sum")?,
        ))
    }
}

/// Starts and stops etcd and MetaStore for `--compare`.
mod daemon {
    use std::fs::File;
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant, SystemTime};

    use crate::http;

    /// Start-up deadline.
    const READY_WITHIN: Duration = Duration::from_secs(30);
    /// Grace period after SIGTERM before SIGKILL.
    const STOP_WITHIN: Duration = Duration::from_secs(10);

    /// Which server.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Etcd,
        MetaStore,
    }

    impl Kind {
        pub fn name(self) -> &'static str {
            match self {
                Kind::Etcd => "etcd",
                Kind::MetaStore => "metastore",
            }
        }
    }

    /// A running server; stopped on drop.
    pub struct Daemon {
        pub kind: Kind,
        child: Option<Child>,
        pub port: u16,
        log: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn free_port() -> Result<u16, String> {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free loopback port: {e}"))
    }

    impl Daemon {
        /// Starts `bin` with etcd's flags (plus `extra`) and waits until /health
        /// says true.
        pub fn start(
            kind: Kind,
            bin: &Path,
            extra: &[String],
            root: Option<&Path>,
        ) -> Result<Daemon, String> {
            let prefix = format!("loadgen-{}-", kind.name());
            let mut tmp = tempfile::Builder::new();
            tmp.prefix(&prefix);
            let dir = match root {
                Some(r) => tmp.tempdir_in(r),
                None => tmp.tempdir(),
            }
            .map_err(|e| format!("temp dir: {e}"))?;
            let data = dir.path().join("data");
            let log = dir.path().join("server.log");
            let port = free_port()?;
            let peer_port = free_port()?;
            let client = format!("http://127.0.0.1:{port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let stderr = File::create(&log).map_err(|e| format!("log file: {e}"))?;
            let child = Command::new(bin)
                .arg("--name")
                .arg("default")
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(&client)
                .arg("--advertise-client-urls")
                .arg(&client)
                .arg("--listen-peer-urls")
                .arg(&peer)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer)
                .arg("--initial-cluster")
                .arg(format!("default={peer}"))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .map_err(|e| format!("start {}: {e}", bin.display()))?;
            let mut d = Daemon {
                kind,
                child: Some(child),
                port,
                log,
                _dir: dir,
            };
            d.wait_ready()?;
            Ok(d)
        }

        fn wait_ready(&mut self) -> Result<(), String> {
            let deadline = Instant::now() + READY_WITHIN;
            let addr = self.addr();
            while Instant::now() < deadline {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    return Err(format!(
                        "{} exited during start-up ({status}); log:\n{}",
                        self.kind.name(),
                        self.log_tail()
                    ));
                }
                if http::get(&addr, "/health").is_some_and(|b| b.contains("\"health\":\"true\"")) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(format!(
                "{} not healthy after {READY_WITHIN:?}; log:\n{}",
                self.kind.name(),
                self.log_tail()
            ))
        }

        /// `127.0.0.1:port`.
        pub fn addr(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        pub fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(Child::id)
        }

        /// The last lines of the server's stderr.
        pub fn log_tail(&self) -> String {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }

        /// SIGTERM, then SIGKILL after a grace period.
        pub fn stop(&mut self) {
            let Some(mut child) = self.child.take() else {
                return;
            };
            // SAFETY: signals our own child, whose pid we hold until we reap it.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_WITHIN;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// The MetaStore binary to run: `explicit` (flag or $METASTORE_BIN), else
    /// the release binary cargo built for this bench.
    pub fn metastore_bin(explicit: Option<&Path>) -> PathBuf {
        explicit
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_metastore")))
    }

    /// A warning when `bin` is older than a file under the crate's `src/`.
    pub fn staleness_warning(bin: &Path) -> Option<String> {
        let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let newest = newest_mtime(&src)?;
        (newest > built).then(|| {
            format!(
                "warning: {} is older than the sources in {}; rebuild it (cargo build --release)",
                bin.display(),
                src.display()
            )
        })
    }

    fn newest_mtime(dir: &Path) -> Option<SystemTime> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                if meta.is_dir() {
                    newest_mtime(&e.path())
                } else {
                    meta.modified().ok()
                }
            })
            .max()
    }
}

/// Results, their text tables and JSON.
mod report {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use crate::cli::Args;
    use crate::driver::Outcome;

    /// Latency percentiles in microseconds.
    #[derive(Debug, Clone, Serialize)]
    pub struct Latency {
        pub p50: u64,
        pub p99: u64,
        pub p999: u64,
        pub max: u64,
        pub mean: f64,
    }

    /// One workload against one server.
    #[derive(Debug, Clone, Serialize)]
    pub struct RunResult {
        pub server: String,
        pub workload: String,
        pub ops: u64,
        pub errors: u64,
        pub error_samples: BTreeMap<String, u64>,
        pub cut_short: bool,
        pub elapsed_s: f64,
        pub ops_per_s: f64,
        pub latency_us: Latency,
        pub server_cpu_us_per_op: Option<f64>,
        pub client_cpu_us_per_op: Option<f64>,
        pub server_rss_kib: Option<u64>,
        /// CPU used on the whole machine during the phase, % of all cores.
        pub host_cpu_busy_pct: Option<f64>,
        /// ... of which neither the server nor the load generator: other
        /// processes competing for the cores (noise), % of all cores.
        pub other_cpu_pct: Option<f64>,
        pub wal_fsyncs: Option<u64>,
        pub ops_per_fsync: Option<f64>,
        pub fsync_mean_us: Option<f64>,
    }

    /// Figures taken around the measured phase.
    pub struct Probes {
        pub server_cpu_us: Option<u64>,
        pub client_cpu_us: Option<u64>,
        pub rss_kib: Option<u64>,
        /// (busy, total) machine CPU deltas in microseconds.
        pub host_cpu_us: Option<(u64, u64)>,
        /// (count, seconds) deltas of WAL fsyncs.
        pub fsync: Option<(f64, f64)>,
    }

    impl RunResult {
        pub fn new(server: &str, workload: &str, o: &Outcome, p: &Probes) -> RunResult {
            let ops = o.ok;
            let per_op = |us: Option<u64>| us.filter(|_| ops > 0).map(|us| us as f64 / ops as f64);
            let q = |v: f64| {
                if o.hist.is_empty() {
                    0
                } else {
                    o.hist.value_at_quantile(v)
                }
            };
            RunResult {
                server: server.to_owned(),
                workload: workload.to_owned(),
                ops,
                errors: o.errors,
                error_samples: o.error_samples.clone(),
                cut_short: o.cut_short,
                elapsed_s: o.elapsed.as_secs_f64(),
                ops_per_s: ops as f64 / o.elapsed.as_secs_f64().max(1e-9),
                latency_us: Latency {
                    p50: q(0.5),
                    p99: q(0.99),
                    p999: q(0.999),
                    max: o.hist.max(),
                    mean: o.hist.mean(),
                },
                server_cpu_us_per_op: per_op(p.server_cpu_us),
                client_cpu_us_per_op: per_op(p.client_cpu_us),
                server_rss_kib: p.rss_kib,
                host_cpu_busy_pct: p
                    .host_cpu_us
                    .filter(|(_, total)| *total > 0)
                    .map(|(busy, total)| busy as f64 * 100.0 / total as f64),
                other_cpu_pct: p.host_cpu_us.filter(|(_, total)| *total > 0).and_then(
                    |(busy, total)| {
                        let ours = p.server_cpu_us? + p.client_cpu_us?;
                        Some(busy.saturating_sub(ours) as f64 * 100.0 / total as f64)
                    },
                ),
                wal_fsyncs: p.fsync.map(|(n, _)| n as u64),
                ops_per_fsync: p
                    .fsync
                    .filter(|(n, _)| *n > 0.0)
                    .map(|(n, _)| ops as f64 / n),
                fsync_mean_us: p.fsync.filter(|(n, _)| *n > 0.0).map(|(n, s)| s * 1e6 / n),
            }
        }

        /// The per-run block printed as soon as a run ends.
        pub fn summary(&self) -> String {
            let opt = |v: Option<f64>, unit: &str| {
                v.map_or("n/a".to_owned(), |v| format!("{v:.1} {unit}"))
            };
            let l = &self.latency_us;
            let mut s = format!(
                "[{}] {}: {} ops in {:.2} s, {} errors{}\n",
                self.server,
                self.workload,
                self.ops,
                self.elapsed_s,
                self.errors,
                if self.cut_short {
                    " (stopped at --max-seconds)"
                } else {
                    ""
                }
            );
            s += &format!("  throughput  {:.0} ops/s\n", self.ops_per_s);
            s += &format!(
                "  latency us  p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}\n",
                l.p50, l.p99, l.p999, l.max, l.mean
            );
            s += &format!(
                "  server      CPU {}/op  RSS {}\n",
                opt(self.server_cpu_us_per_op, "us"),
                opt(self.server_rss_kib.map(|k| k as f64 / 1024.0), "MiB")
            );
            s += &format!(
                "  client      CPU {}/op\n",
                opt(self.client_cpu_us_per_op, "us")
            );
            s += &format!(
                "  machine     CPU busy {} of all cores, other processes {}\n",
                opt(self.host_cpu_busy_pct, "%"),
                opt(self.other_cpu_pct, "%")
            );
            if let Some(n) = self.wal_fsyncs {
                s += &format!(
                    "  WAL fsyncs  {n} ({} ops/fsync, mean fsync {})\n",
                    self.ops_per_fsync
                        .map_or("n/a".to_owned(), |v| format!("{v:.1}")),
                    opt(self.fsync_mean_us, "us")
                );
            }
            for (msg, n) in &self.error_samples {
                s += &format!("  error x{n}: {msg}\n");
            }
            s
        }
    }

    /// MetaStore / etcd for the headline figures.
    #[derive(Debug, Clone, Serialize)]
    pub struct Ratios {
        pub throughput: f64,
        pub p50: f64,
        pub p99: f64,
        pub cpu_per_op: Option<f64>,
        pub rss: Option<f64>,
    }

    impl Ratios {
        pub fn new(ms: &RunResult, etcd: &RunResult) -> Ratios {
            let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            Ratios {
                throughput: div(ms.ops_per_s, etcd.ops_per_s),
                p50: div(ms.latency_us.p50 as f64, etcd.latency_us.p50 as f64),
                p99: div(ms.latency_us.p99 as f64, etcd.latency_us.p99 as f64),
                cpu_per_op: ms
                    .server_cpu_us_per_op
                    .zip(etcd.server_cpu_us_per_op)
                    .map(|(a, b)| div(a, b)),
                rss: ms
                    .server_rss_kib
                    .zip(etcd.server_rss_kib)
                    .map(|(a, b)| div(a as f64, b as f64)),
            }
        }
    }

    /// The workload's parameters, echoed in the output.
    #[derive(Debug, Clone, Serialize)]
    pub struct Config {
        pub workload: String,
        pub clients: usize,
        pub conns: usize,
        pub total: u64,
        pub key_size: usize,
        pub value_size: usize,
        pub keyspace: u64,
        pub random_keys: bool,
        pub read_percent: Option<u8>,
    }

    impl Config {
        pub fn new(a: &Args) -> Config {
            Config {
                workload: a.workload.name().to_owned(),
                clients: a.clients,
                conns: a.conns,
                total: a.total,
                key_size: a.key_size,
                value_size: a.value_size,
                keyspace: a.keyspace(),
                random_keys: a.random_keys,
                read_percent: (a.workload == crate::cli::Workload::Mixed).then_some(a.read_percent),
            }
        }

        pub fn line(&self) -> String {
            format!(
                "workload={} clients={} conns={} total={} key-size={} value-size={} keyspace={} keys={}{}",
                self.workload,
                self.clients,
                self.conns,
                self.total,
                self.key_size,
                self.value_size,
                self.keyspace,
                if self.random_keys { "random" } else { "sequential" },
                self.read_percent
                    .map_or(String::new(), |p| format!(" read-percent={p}"))
            )
        }
    }

    /// The whole report.
    #[derive(Debug, Clone, Serialize)]
    pub struct Report {
        pub config: Config,
        pub results: Vec<RunResult>,
        /// Each MetaStore run against the first run (etcd), in --compare mode.
        pub ratios: Vec<(String, Ratios)>,
    }

    impl Report {
        /// The final table.
        pub fn table(&self) -> String {
            let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
            let mut s = format!("{}\n", self.config.line());
            s += &format!(
                "{:<10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>7} {:>11} {:>8} {:>10} {:>8}\n",
                "server",
                "ops/s",
                "p50 us",
                "p99 us",
                "p99.9 us",
                "max us",
                "errors",
                "CPU us/op",
                "RSS MiB",
                "ops/fsync",
                "other %"
            );
            for r in &self.results {
                let l = &r.latency_us;
                s += &format!(
                    "{:<10} {:>9.0} {:>8} {:>8} {:>9} {:>8} {:>7} {:>11} {:>8} {:>10} {:>8}\n",
                    r.server,
                    r.ops_per_s,
                    l.p50,
                    l.p99,
                    l.p999,
                    l.max,
                    r.errors,
                    opt(r.server_cpu_us_per_op),
                    opt(r.server_rss_kib.map(|k| k as f64 / 1024.0)),
                    opt(r.ops_per_fsync),
                    opt(r.other_cpu_pct),
                );
            }
            for (name, x) in &self.ratios {
                let opt2 = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}x"));
                s += &format!(
                    "{name}: throughput {:.2}x  p50 {:.2}x  p99 {:.2}x  CPU/op {}  RSS {}\n",
                    x.throughput,
                    x.p50,
                    x.p99,
                    opt2(x.cpu_per_op),
                    opt2(x.rss)
                );
            }
            s
        }
    }
}

/// Connects, loads, measures.
mod bench {
    use std::sync::Arc;
    use std::time::Duration;

    use etcd_client::{Client, ConnectOptions, KvClient};

    use crate::cli::Args;
    use crate::driver::{self, Outcome, Phase};
    use crate::http;
    use crate::procfs;
    use crate::report::{Probes, RunResult};
    use crate::workload::Spec;

    /// A server to measure.
    pub struct Target {
        pub name: String,
        pub endpoints: Vec<String>,
        /// For CPU and RSS.
        pub pid: Option<u32>,
        /// `host:port` serving /metrics.
        pub http_addr: String,
    }

    async fn connect(target: &Target, n: usize) -> Result<Vec<KvClient>, String> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60));
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let client = Client::connect(&target.endpoints, Some(opts.clone()))
                .await
                .map_err(|e| format!("connect {:?}: {e}", target.endpoints))?;
            let mut kv = client.kv_client();
            // Warm-up: the connection is established before the clock starts.
            kv.get("loadgen-warmup", None)
                .await
                .map_err(|e| format!("warm-up request to {}: {e}", target.name))?;
            conns.push(kv);
        }
        Ok(conns)
    }

    /// Client threads running the measured phase, started and waiting at a
    /// barrier until `finish` releases them.
    struct Threads {
        barrier: Arc<std::sync::Barrier>,
        handles: Vec<std::thread::JoinHandle<Result<Outcome, String>>>,
    }

    impl Threads {
        fn start(
            args: &Args,
            target: &Target,
            spec: Arc<Spec>,
            max: Duration,
        ) -> Result<Threads, String> {
            let n = args.threads.min(args.clients).max(1);
            let barrier = Arc::new(std::sync::Barrier::new(n + 1));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let mut handles = Vec::with_capacity(n);
            for t in 0..n {
                // Split clients and operations as evenly as possible.
                let clients = args.clients / n + usize::from(t < args.clients % n);
                let total = args.total / n as u64 + u64::from((t as u64) < args.total % n as u64);
                let conns = args.conns.min(clients);
                let endpoints = target.endpoints.clone();
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
                        let target = Target {
                            name,
                            endpoints,
                            pid: None,
                            http_addr: String::new(),
                        };
                        let conns = connect(&target, conns).await;
                        let _ = ready_tx.send(conns.as_ref().map(|_| ()).map_err(Clone::clone));
                        barrier.wait();
                        let conns = conns?;
                        Ok(driver::run(&conns, spec, Phase::Measure, total, clients, max).await)
                    })
                }));
            }
            drop(ready_tx);
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

    /// Runs the configured workload against `target`; `say` prints progress.
    pub async fn run(
        args: &Args,
        target: &Target,
        say: &dyn Fn(&str),
    ) -> Result<RunResult, String> {
        let spec = Arc::new(Spec::new(args));
        let max = Duration::from_secs(args.max_seconds);
        let conns = connect(target, args.conns.min(args.clients)).await?;
        if args.workload.needs_preload() {
            say(&format!(
                "[{}] preloading {} keys (not measured)",
                target.name, spec.keyspace
            ));
            let o = driver::run(
                &conns,
                spec.clone(),
                Phase::Preload,
                spec.keyspace,
                args.clients,
                max,
            )
            .await;
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
            "[{}] measuring {} x {}",
            target.name,
            args.total,
            args.workload.name()
        ));
        // With several client threads, each connects first; the clock starts
        // when all are ready.
        let measure_threads = if args.threads > 1 {
            Some(Threads::start(args, target, spec.clone(), max)?)
        } else {
            None
        };
        let self_pid = std::process::id();
        let server_cpu0 = target.pid.and_then(procfs::cpu_micros);
        let client_cpu0 = procfs::cpu_micros(self_pid);
        let fsync0 = http::fsync_totals(&target.http_addr);
        let host0 = procfs::host_cpu_micros();

        let outcome = match measure_threads {
            Some(start) => start.finish(),
            None => driver::run(&conns, spec, Phase::Measure, args.total, args.clients, max).await,
        };

        let server_cpu1 = target.pid.and_then(procfs::cpu_micros);
        let client_cpu1 = procfs::cpu_micros(self_pid);
        let host1 = procfs::host_cpu_micros();
        let fsync1 = http::fsync_totals(&target.http_addr);
        let probes = Probes {
            server_cpu_us: server_cpu0.zip(server_cpu1).map(|(a, b)| b - a),
            client_cpu_us: client_cpu0.zip(client_cpu1).map(|(a, b)| b - a),
            rss_kib: target.pid.and_then(procfs::rss_kib),
            host_cpu_us: host0
                .zip(host1)
                .map(|((b0, t0), (b1, t1))| (b1.saturating_sub(b0), t1.saturating_sub(t0))),
            fsync: fsync0
                .zip(fsync1)
                .map(|((n0, s0), (n1, s1))| (n1 - n0, s1 - s0)),
        };
        Ok(RunResult::new(
            &target.name,
            args.workload.name(),
            &outcome,
            &probes,
        ))
    }
}

use std::path::PathBuf;

use bench::Target;
use cli::Args;
use daemon::{Daemon, Kind};
use report::{Config, Ratios, Report};

/// Flushes dirty pages so one server's writeback does not land in the next run.
fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

async fn compare(args: &Args, say: &dyn Fn(&str)) -> Result<Report, String> {
    let ms_bin = daemon::metastore_bin(args.metastore_bin.as_deref());
    if let Some(w) = daemon::staleness_warning(&ms_bin) {
        say(&w);
    }
    // No --engine: the configured default; several: one daemon each.
    let engines: Vec<Option<&str>> = if args.engine.is_empty() {
        vec![None]
    } else {
        args.engine.iter().map(|e| Some(e.as_str())).collect()
    };
    let root = args.data_root.as_deref();
    let mut results = Vec::new();
    // One daemon at a time, so an idle one never shares the cores.
    let mut runs: Vec<(String, Kind, PathBuf, Vec<String>)> = vec![(
        "etcd".to_owned(),
        Kind::Etcd,
        args.etcd_bin.clone(),
        args.etcd_args.clone(),
    )];
    for engine in &engines {
        let mut extra = Vec::new();
        if let Some(e) = engine {
            extra = vec!["--engine".to_owned(), (*e).to_owned()];
        }
        extra.extend(args.metastore_args.iter().cloned());
        let name = match engine {
            Some(e) if engines.len() > 1 => format!("ms-{e}"),
            _ => "metastore".to_owned(),
        };
        runs.push((name, Kind::MetaStore, ms_bin.clone(), extra));
    }
    for (name, kind, bin, extra) in runs {
        say(&format!("starting {name} ({})", bin.display()));
        let d = Daemon::start(kind, &bin, &extra, root)?;
        sync_disks();
        let target = Target {
            name,
            endpoints: vec![d.addr()],
            pid: d.pid(),
            http_addr: d.addr(),
        };
        let r = bench::run(args, &target, say)
            .await
            .map_err(|e| format!("{e}\n{} log:\n{}", target.name, d.log_tail()))?;
        say(&r.summary());
        results.push(r);
    }
    let mut ratios: Vec<(String, Ratios)> = results[1..]
        .iter()
        .map(|r| (format!("{}/etcd", r.server), Ratios::new(r, &results[0])))
        .collect();
    // Engines against the first one (memory, if listed first).
    for r in results.iter().skip(2) {
        ratios.push((
            format!("{}/{}", r.server, results[1].server),
            Ratios::new(r, &results[1]),
        ));
    }
    Ok(Report {
        config: Config::new(args),
        results,
        ratios,
    })
}

async fn external(args: &Args, say: &dyn Fn(&str)) -> Result<Report, String> {
    let http_addr = http::host_port(&args.endpoints[0]).to_owned();
    let pid = args.server_pid.or_else(|| {
        let (host, port) = http_addr.rsplit_once(':')?;
        let loopback = host.starts_with("127.") || host == "localhost" || host == "[::1]";
        loopback.then(|| procfs::listener_pid(port.parse().ok()?))?
    });
    if pid.is_none() {
        say("server pid unknown (--server-pid): no server CPU or RSS");
    }
    let target = Target {
        name: args.label.clone(),
        endpoints: args.endpoints.clone(),
        pid,
        http_addr,
    };
    let r = bench::run(args, &target, say).await?;
    say(&r.summary());
    Ok(Report {
        config: Config::new(args),
        results: vec![r],
        ratios: Vec::new(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.compare && args.endpoints.is_empty() {
        println!(
            "loadgen: nothing to do; pass --compare or --endpoints \
             (cargo bench --bench loadgen -- --help)"
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = args.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    let json = args.json;
    // Progress goes to stderr when stdout carries JSON.
    let say = move |s: &str| {
        if json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(async {
        if args.compare {
            compare(&args, &say).await
        } else {
            external(&args, &say).await
        }
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("results serialize")
        );
    } else {
        print!("\n{}", report.table());
    }
    if report.results.iter().any(|r| r.errors > 0 || r.cut_short) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
