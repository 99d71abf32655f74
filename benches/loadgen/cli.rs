use std::path::PathBuf;

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// `250ms`, `10s`, `5m` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = n.parse().map_err(|e| format!("{s}: {e}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s}: the unit must be ms, s, m or h")),
    };
    if secs <= 0.0 {
        return Err(format!("{s}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

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
    /// kube-apiserver's traffic: optimistic updates, paginated lists,
    /// watchers, events on a lease, compaction; every answer checked (k8s/).
    K8s,
    /// A million keys: fill, paginated LISTs, a 100k-key range, compaction
    /// under load, a killed member's restart (scale.rs).
    Scale,
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
            Workload::K8s => "k8s",
            Workload::Scale => "scale",
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
    /// gRPC connections per client thread, shared by its clients
    /// round-robin. Default: one connection per client, as separate
    /// application processes would have.
    #[arg(long)]
    pub conns: Option<usize>,
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
    /// --compare this many times in a row (etcd, MetaStore, etcd, ...) and
    /// summarise the ratios (median) at the end.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Members per cluster in --compare (1, 3 or 5): each server runs as a
    /// cluster of that many members on loopback, each with its own data
    /// dir, and the clients are spread over their endpoints.
    #[arg(long, default_value_t = 1)]
    pub members: usize,
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
    /// Watchers on the whole keyspace during the measured phase (see
    /// side.rs): each must receive every write of the phase exactly once.
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// Watch streams (each on its own connection) the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub watch_streams: usize,
    /// Each watcher on one key of its own instead of the whole keyspace:
    /// watcher j watches key j mod keyspace and must receive every put to it
    /// exactly once, in order (--workload put, sequential keys).
    #[arg(long, requires = "watchers")]
    pub watch_own_key: bool,
    /// Connections opened before the phase (each answers one Range) and
    /// left idle through it; with the watchers' creation, the server's RSS
    /// growth they cause is reported.
    #[arg(long, default_value_t = 0)]
    pub idle_conns: usize,
    /// Leases kept alive by one client during the measured phase.
    #[arg(long, default_value_t = 0)]
    pub leases: usize,
    /// TTL of those leases in seconds (each is renewed every third of it).
    #[arg(long, default_value_t = 30)]
    pub lease_ttl: i64,
    /// Call Maintenance.Defragment on the first endpoint every this many ms
    /// during the measured phase (0: never), to see what it costs the load.
    #[arg(long, default_value_t = 0)]
    pub defrag_every_ms: u64,
    /// With --compare: both servers serve their client port over TLS
    /// (https, a CA and server certificate generated for the run) and every
    /// client connects over TLS trusting that CA.
    #[arg(long, requires = "compare")]
    pub tls: bool,
    /// With --compare: before the run create users `root` and `bench`
    /// (readwrite on every key) and enable auth; every client connection
    /// authenticates as `bench` and sends its token.
    #[arg(long, requires = "compare")]
    pub auth: bool,
    /// With --auth: this many extra clients (each on its own connection)
    /// call Authenticate as `bench` in a loop during the measured phase;
    /// their rate is reported next to the workload's.
    #[arg(long, default_value_t = 0, requires = "auth")]
    pub auth_storm: usize,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write one CSV row per run to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Also write throughput and latency per interval of each run as CSV.
    #[arg(long)]
    pub timeline_csv: Option<PathBuf>,
    /// Also draw throughput and p99 latency over time of every run as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// --workload k8s: objects preloaded before the measured phase
    /// (default 10,000); --workload scale: keys filled (default 1,000,000).
    #[arg(long)]
    pub keys: Option<u64>,
    /// --workload scale: how many full paginated LISTs (etcd 3.4 walks the
    /// rest of the range for every page: minutes per LIST at a million keys;
    /// 0 leaves them out).
    #[arg(long, default_value_t = 3)]
    pub scale_lists: u64,
    /// --workload k8s: how long the measured phase runs (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub k8s_duration: Duration,
    /// --workload k8s: the apiserver's compaction interval (its default is
    /// 5m; shorter, e.g. 10s, to see several in a run).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub k8s_compact_interval: Duration,
    /// --workload k8s: drop one delivered watch event before the check (a
    /// planted bug the check must catch).
    #[arg(long, hide = true)]
    pub k8s_plant_drop: bool,
    /// With --compare: run every server process on these CPUs only (e.g.
    /// 0), as if the servers had a machine of their own.
    #[arg(long, value_delimiter = ',', requires = "compare")]
    pub server_cpus: Vec<usize>,
    /// Run the load generator on these CPUs only (e.g. 1); with
    /// --server-cpus on the others, the two do not share cores.
    #[arg(long, value_delimiter = ',')]
    pub client_cpus: Vec<usize>,
    /// With --compare: copy each member's log (stderr) here as
    /// `<round>-<server>-m<i>.log` before its data dir is removed.
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Args {
    /// Distinct keys.
    pub fn keyspace(&self) -> u64 {
        self.keyspace.unwrap_or(self.total).max(1)
    }

    /// --keys, or the workload's default.
    pub fn keys(&self) -> u64 {
        let default = match self.workload {
            Workload::Scale => 1_000_000,
            _ => 10_000,
        };
        self.keys.unwrap_or(default)
    }

    /// Checks the flags that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.conns == Some(0) || self.total == 0 || self.members == 0 {
            return Err("--clients, --conns, --members and --total must be at least 1".into());
        }
        if self.watch_own_key && (self.workload != Workload::Put || self.random_keys) {
            return Err("--watch-own-key needs --workload put with sequential keys".into());
        }
        let side =
            self.watchers > 0 || self.leases > 0 || self.defrag_every_ms > 0 || self.idle_conns > 0;
        if (self.tls || self.auth) && side {
            return Err(
                "--tls and --auth do not support the side loads (--watchers, --leases, --defrag-every-ms, --idle-conns) yet".into(),
            );
        }
        if matches!(self.workload, Workload::K8s | Workload::Scale) && (side || self.auth_storm > 0)
        {
            return Err("--workload k8s and scale run no side loads".into());
        }
        if self.keys() == 0 {
            return Err("--keys must be at least 1".into());
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
