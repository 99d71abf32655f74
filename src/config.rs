//! Configuration: `config.toml` with etcd-named keys, overridden by command-line
//! flags of the same names. `Config::default()` equals the shipped `config.toml`
//! (a test holds the two together).

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::error::ConfigError;

/// Raft timing and flow-control knobs (the `[raft]` table).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RaftConfig {
    /// Length of one logical tick in milliseconds.
    pub tick_ms: u64,
    /// Ticks without a heartbeat before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Ask before bumping the term (stops term storms after a partition heals).
    pub pre_vote: bool,
    /// A leader without a quorum for an election timeout steps down.
    pub check_quorum: bool,
    /// Largest append message in bytes.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Bytes of uncommitted entries after which proposals are refused.
    pub max_uncommitted_size: u64,
    /// Hand new entries to the WAL (and to followers) while an earlier
    /// append is still being written, instead of one append at a time.
    pub pipeline_appends: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: 100,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 4 * 1024 * 1024,
            max_inflight_msgs: 512,
            max_uncommitted_size: 1 << 30,
            pipeline_appends: true,
        }
    }
}

pub use crate::storage::Engine;

/// Whether this member starts a cluster or joins a running one (etcd's
/// `--initial-cluster-state`). Parsed by [`FromStr`](std::str::FromStr) in
/// the flags and the file alike, so a bad value gets the same reason in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum InitialClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a running cluster (the member was added with MemberAdd).
    Existing,
}

/// How logs are written (etcd's `--log-format`), parsed like
/// [`InitialClusterState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for InitialClusterState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(InitialClusterState::New),
            "existing" => Ok(InitialClusterState::Existing),
            _ => Err(format!("{s:?} is neither \"new\" nor \"existing\"")),
        }
    }
}

impl TryFrom<String> for InitialClusterState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is neither \"text\" nor \"json\"")),
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// etcd's default backend quota: 2 GiB.
pub const DEFAULT_QUOTA: u64 = 2 << 30;

/// Free space kept on the data dir's filesystem by default: 128 MiB.
pub const DEFAULT_DISK_RESERVE: u64 = 128 << 20;

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Directory for WAL, snapshots and engine files.
    pub data_dir: PathBuf,
    /// Storage engine.
    pub engine: Engine,
    /// Client URLs to listen on (gRPC + HTTP share the port).
    pub listen_client_urls: String,
    /// Client URLs advertised to clients.
    pub advertise_client_urls: String,
    /// Peer URLs to listen on.
    pub listen_peer_urls: String,
    /// Peer URLs advertised to the other members.
    pub initial_advertise_peer_urls: String,
    /// `name=url,...` of the initial members.
    pub initial_cluster: String,
    /// `new` or `existing`.
    pub initial_cluster_state: InitialClusterState,
    /// Token mixed into the cluster ID.
    pub initial_cluster_token: String,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// When the store passes this size a NOSPACE alarm is raised and writes
    /// that grow it fail (etcd's `--quota-backend-bytes`; 0: the 2 GiB
    /// default).
    pub quota_backend_bytes: u64,
    /// Free space the data dir's filesystem must keep: below it the member
    /// raises NOSPACE (as past the quota) so writes stop before the disk is
    /// full (0: no check).
    pub disk_reserve_bytes: u64,
    /// Most operations per Txn branch.
    pub max_txn_ops: usize,
    /// How Authenticate's tokens are made (etcd's `--auth-token`):
    /// `simple` (random, kept by the member that issued them).
    pub auth_token: String,
    /// Seconds a simple token lives unused (etcd's `--auth-token-ttl`).
    pub auth_token_ttl: u64,
    /// bcrypt cost of stored passwords (etcd's `--bcrypt-cost`, 4..=31).
    pub bcrypt_cost: u32,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Entries a leader keeps behind a snapshot so a slightly lagging
    /// follower catches up from the log instead of a snapshot.
    pub snapshot_catchup_entries: u64,
    /// rocksdb: Raft log entries kept in memory (the newest; older ones are
    /// read back from the database for a follower behind).
    pub raft_log_memory_entries: usize,
    /// WAL segment size in bytes; whole segments are purged after a snapshot
    /// (rocksdb: the Raft log database's WAL file and memtable size).
    pub wal_segment_size: u64,
    /// tracing filter.
    pub log_level: String,
    /// `text` or `json` (one JSON object per line).
    pub log_format: LogFormat,
    /// An applied batch slower than this is logged as a warning (etcd's
    /// `--warning-apply-duration`, 100 ms).
    pub warning_apply_duration_ms: u64,
    /// Extra URLs serving only `/metrics` and the health endpoints (etcd's
    /// `--listen-metrics-urls`); empty: none.
    pub listen_metrics_urls: String,
    /// How often a watcher that asked for progress notifications and got no
    /// events is sent the current revision (etcd's
    /// `--experimental-watch-progress-notify-interval`, 10 minutes).
    pub watch_progress_notify_interval_ms: u64,
    /// How often the leader records how long leases have left (etcd's
    /// `--experimental-lease-checkpoint-interval`).
    pub lease_checkpoint_interval_ms: u64,
    /// How often the leader compares every member's HashKV with its own and
    /// raises CORRUPT on a mismatch (etcd's
    /// `--experimental-corrupt-check-time`, off there by default); 0: never.
    pub corrupt_check_ms: u64,
    /// The client port's certificate (PEM); with `https://` listen client
    /// URLs, TLS is served with it (etcd's `--cert-file`); empty: none.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// CA certificates client certificates must be signed by; setting it
    /// requires client certificates, as in etcd.
    pub trusted_ca_file: String,
    /// Require a client certificate signed by `trusted-ca-file`.
    pub client_cert_auth: bool,
    /// Revoked client certificates (PEM or DER CRL).
    pub client_crl_file: String,
    /// Without `cert-file`: serve TLS with a self-signed certificate made in
    /// `<data-dir>/fixtures/client`.
    pub auto_tls: bool,
    /// The peer port's certificate, also presented when dialing members'
    /// `https://` peer URLs.
    pub peer_cert_file: String,
    /// Its private key.
    pub peer_key_file: String,
    /// CA certificates members' certificates must be signed by.
    pub peer_trusted_ca_file: String,
    /// Require a client certificate from dialing members.
    pub peer_client_cert_auth: bool,
    /// Revoked member certificates.
    pub peer_crl_file: String,
    /// Members' certificates must have this common name; empty: any.
    pub peer_cert_allowed_cn: String,
    /// Without `peer-cert-file`: a self-signed peer certificate in
    /// `<data-dir>/fixtures/peer`; members' certificates are not verified.
    pub peer_auto_tls: bool,
    /// Validity of auto-TLS certificates, in years.
    pub self_signed_cert_validity: u32,
    /// Lowest TLS version (`TLS1.2` or `TLS1.3`).
    pub tls_min_version: String,
    /// Highest TLS version; empty: the highest supported (TLS1.3).
    pub tls_max_version: String,
    /// TLS 1.2 cipher suites by Go's names, comma-separated; empty: rustls'
    /// defaults (AEAD suites only).
    pub cipher_suites: String,
    /// Raft knobs.
    pub raft: RaftConfig,
    /// Flag only: seed a brand-new data dir from a state image (what
    /// `etcdctl snapshot save` stored) before starting.
    #[serde(skip)]
    pub restore_image: Option<PathBuf>,
    /// Flag only, for tests: serve the `POST /debug/fault/...` switches
    /// (slow apply, failing fsync or commit, a write outside Raft) and
    /// `/debug/client-cn` on the client port.
    #[serde(skip)]
    pub fault_injection: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "default".into(),
            data_dir: PathBuf::from("default.metastore"),
            engine: Engine::Memory,
            listen_client_urls: "http://127.0.0.1:2379".into(),
            advertise_client_urls: "http://127.0.0.1:2379".into(),
            listen_peer_urls: "http://127.0.0.1:2380".into(),
            initial_advertise_peer_urls: "http://127.0.0.1:2380".into(),
            initial_cluster: "default=http://127.0.0.1:2380".into(),
            initial_cluster_state: InitialClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: DEFAULT_QUOTA,
            disk_reserve_bytes: DEFAULT_DISK_RESERVE,
            max_txn_ops: 128,
            auth_token: "simple".into(),
            auth_token_ttl: 300,
            bcrypt_cost: 10,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5000,
            raft_log_memory_entries: 8192,
            wal_segment_size: 64 * 1024 * 1024,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            warning_apply_duration_ms: 100,
            listen_metrics_urls: String::new(),
            watch_progress_notify_interval_ms: 10 * 60 * 1000,
            lease_checkpoint_interval_ms: 5000,
            corrupt_check_ms: 300_000,
            cert_file: String::new(),
            key_file: String::new(),
            trusted_ca_file: String::new(),
            client_cert_auth: false,
            client_crl_file: String::new(),
            auto_tls: false,
            peer_cert_file: String::new(),
            peer_key_file: String::new(),
            peer_trusted_ca_file: String::new(),
            peer_client_cert_auth: false,
            peer_crl_file: String::new(),
            peer_cert_allowed_cn: String::new(),
            peer_auto_tls: false,
            self_signed_cert_validity: 1,
            tls_min_version: "TLS1.2".into(),
            tls_max_version: String::new(),
            cipher_suites: String::new(),
            raft: RaftConfig::default(),
            restore_image: None,
            fault_injection: false,
        }
    }
}

/// Command-line flags. Each one overrides the config file key of the same name.
#[derive(Debug, Default, Parser)]
#[command(
    name = "metastore",
    version,
    about = "A distributed metadata store that speaks the etcd v3 API"
)]
pub struct Flags {
    /// Path to a config.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Member name.
    #[arg(long, env = "ETCD_NAME")]
    pub name: Option<String>,
    /// Data directory.
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage engine.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// Client URLs to listen on, comma-separated.
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Client URLs to advertise.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Peer URLs to listen on.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Peer URLs to advertise.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster, `name=url,...`.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", value_parser = str::parse::<InitialClusterState>)]
    pub initial_cluster_state: Option<InitialClusterState>,
    /// Cluster token.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Largest request in bytes.
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Store size that raises the NOSPACE alarm (0: 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: Option<u64>,
    /// Free space to keep on the data dir's filesystem; below it NOSPACE
    /// is raised (0: no check).
    #[arg(long)]
    pub disk_reserve_bytes: Option<u64>,
    /// Most operations per txn branch.
    #[arg(long)]
    pub max_txn_ops: Option<usize>,
    /// Token type of Authenticate ("simple").
    #[arg(long, env = "ETCD_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Seconds an unused simple token lives.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost of stored passwords.
    #[arg(long, env = "ETCD_BCRYPT_COST")]
    pub bcrypt_cost: Option<u32>,
    /// Applied entries between snapshots.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Entries kept behind a snapshot for lagging followers.
    #[arg(long, alias = "experimental-snapshot-catchup-entries")]
    pub snapshot_catchup_entries: Option<u64>,
    /// rocksdb: Raft log entries kept in memory.
    #[arg(long)]
    pub raft_log_memory_entries: Option<usize>,
    /// WAL segment size in bytes (rocksdb: Raft log WAL file size).
    #[arg(long)]
    pub wal_segment_size: Option<u64>,
    /// Log filter: a level (`debug`, `info`, `warn`, `error`) or a tracing
    /// filter (`RUST_LOG` overrides).
    #[arg(long)]
    pub log_level: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "ETCD_LOG_FORMAT", value_parser = str::parse::<LogFormat>)]
    pub log_format: Option<LogFormat>,
    /// Applies slower than this are logged ("100ms").
    #[arg(long, value_parser = parse_duration_ms)]
    pub warning_apply_duration: Option<u64>,
    /// URLs that serve only /metrics and the health endpoints, comma-separated.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// etcd's heartbeat interval in ms; sets raft.heartbeat-tick in ticks of raft.tick-ms.
    #[arg(long)]
    pub heartbeat_interval: Option<u64>,
    /// etcd's election timeout in ms; sets raft.election-tick in ticks of raft.tick-ms.
    #[arg(long)]
    pub election_timeout: Option<u64>,
    /// Progress notification interval for watchers that ask for it, as a
    /// duration ("10m", "5s", "500ms").
    #[arg(long, value_parser = parse_duration_ms)]
    pub experimental_watch_progress_notify_interval: Option<u64>,
    /// How often the leader checkpoints remaining lease TTLs ("5s").
    #[arg(long, value_parser = parse_duration_ms)]
    pub experimental_lease_checkpoint_interval: Option<u64>,
    /// How often the leader checks members' data against its own ("5m";
    /// "0s": never).
    #[arg(long, value_parser = parse_duration_ms)]
    pub experimental_corrupt_check_time: Option<u64>,
    /// Client port certificate (PEM) for https:// listen client URLs.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<String>,
    /// Client port private key (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<String>,
    /// CA that signs client certificates (requires them).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<String>,
    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Revoked client certificates (CRL file).
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<String>,
    /// Serve client TLS with a generated self-signed certificate.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub auto_tls: Option<bool>,
    /// Peer certificate (PEM), served and presented to members.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<String>,
    /// Peer private key (PEM).
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<String>,
    /// CA that signs members' certificates.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<String>,
    /// Require client certificates from dialing members.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// Revoked member certificates (CRL file).
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<String>,
    /// Members' certificates must carry this common name.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Peer TLS with a generated self-signed certificate.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub peer_auto_tls: Option<bool>,
    /// Validity of auto-TLS certificates in years.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY")]
    pub self_signed_cert_validity: Option<u32>,
    /// Lowest TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,
    /// Highest TLS version: TLS1.2 or TLS1.3 (default: TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION")]
    pub tls_max_version: Option<String>,
    /// TLS 1.2 cipher suites (Go's names), comma-separated.
    #[arg(long, env = "ETCD_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
    /// Seed a new (empty) data dir from a state image, e.g. a file written by
    /// `etcdctl snapshot save` against MetaStore, then start. Either engine
    /// restores an image either engine wrote.
    #[arg(long)]
    pub restore_image: Option<PathBuf>,
    /// For tests only: serve the POST /debug/fault/... switches (slow apply,
    /// failing fsync or commit, a write outside Raft) on the client port.
    #[arg(long, hide = true)]
    pub experimental_fault_injection: bool,
    /// For measurements: one append in flight at a time (sets
    /// raft.pipeline-appends = false).
    #[arg(long, hide = true)]
    pub experimental_unpipelined_appends: bool,
}

impl Config {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses config text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })
    }

    /// The config file (if any) with the flags applied on top, validated.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let mut cfg = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => { $( if let Some(v) = flags.$field { cfg.$field = v; } )* };
        }
        apply!(
            name,
            data_dir,
            engine,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token,
            max_request_bytes,
            quota_backend_bytes,
            disk_reserve_bytes,
            max_txn_ops,
            auth_token,
            auth_token_ttl,
            bcrypt_cost,
            snapshot_count,
            snapshot_catchup_entries,
            raft_log_memory_entries,
            wal_segment_size,
            log_level,
            log_format,
            listen_metrics_urls,
            cert_file,
            key_file,
            trusted_ca_file,
            client_cert_auth,
            client_crl_file,
            auto_tls,
            peer_cert_file,
            peer_key_file,
            peer_trusted_ca_file,
            peer_client_cert_auth,
            peer_crl_file,
            peer_cert_allowed_cn,
            peer_auto_tls,
            self_signed_cert_validity,
            tls_min_version,
            tls_max_version,
            cipher_suites
        );
        if let Some(ms) = flags.warning_apply_duration {
            cfg.warning_apply_duration_ms = ms;
        }
        if let Some(ms) = flags.experimental_watch_progress_notify_interval {
            cfg.watch_progress_notify_interval_ms = ms;
        }
        if let Some(ms) = flags.experimental_lease_checkpoint_interval {
            cfg.lease_checkpoint_interval_ms = ms;
        }
        if let Some(ms) = flags.experimental_corrupt_check_time {
            cfg.corrupt_check_ms = ms;
        }
        cfg.fault_injection = flags.experimental_fault_injection;
        if flags.experimental_unpipelined_appends {
            cfg.raft.pipeline_appends = false;
        }
        let ticks = |ms: u64, tick_ms: u64| (ms / tick_ms.max(1)).max(1) as usize;
        if let Some(ms) = flags.heartbeat_interval {
            cfg.raft.heartbeat_tick = ticks(ms, cfg.raft.tick_ms);
        }
        cfg.restore_image = flags.restore_image;
        if let Some(ms) = flags.election_timeout {
            cfg.raft.election_tick = ticks(ms, cfg.raft.tick_ms);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// What `auth-token` asks for (etcd's syntax: `simple`, or
    /// `jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>[,ttl=<dur>]`).
    pub fn auth_tokens(&self) -> Result<AuthTokens, ConfigError> {
        let bad = |why: String| ConfigError::Invalid {
            key: "auth-token".into(),
            why,
        };
        let mut parts = self.auth_token.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut opts = std::collections::HashMap::new();
        for part in parts {
            let Some((k, v)) = part.split_once('=') else {
                return Err(bad(format!("option {part:?} is not key=value")));
            };
            if opts.insert(k, v).is_some() {
                return Err(bad(format!("option {k:?} given twice")));
            }
        }
        match kind {
            "simple" if opts.is_empty() => Ok(AuthTokens::Simple),
            "jwt" => {
                let mut jwt = JwtOptions {
                    ttl_secs: 300,
                    ..JwtOptions::default()
                };
                for (k, v) in opts {
                    match k {
                        "pub-key" => jwt.pub_key = Some(PathBuf::from(v)),
                        "priv-key" => jwt.priv_key = Some(PathBuf::from(v)),
                        "sign-method" => jwt.sign_method = v.to_owned(),
                        "ttl" => {
                            jwt.ttl_secs = parse_duration_ms(v).map_err(bad)?.div_ceil(1000);
                        }
                        other => return Err(bad(format!("unknown JWT option {other:?}"))),
                    }
                }
                if jwt.sign_method.is_empty() {
                    return Err(bad("JWT needs sign-method".into()));
                }
                if jwt.pub_key.is_none() && jwt.priv_key.is_none() {
                    return Err(bad("JWT needs pub-key or priv-key".into()));
                }
                Ok(AuthTokens::Jwt(jwt))
            }
            other => Err(bad(format!("unknown token type {other:?} (simple or jwt)"))),
        }
    }

    /// Checks values a typo could break.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                why,
            })
        };
        if self.name.is_empty() {
            return bad("name", "must not be empty".into());
        }
        self.auth_tokens()?;
        if self.auth_token_ttl == 0 {
            return bad("auth-token-ttl", "must be positive".into());
        }
        if self.raft.election_tick <= self.raft.heartbeat_tick {
            return bad(
                "raft.election-tick",
                "must be greater than raft.heartbeat-tick".into(),
            );
        }
        if self.wal_segment_size < 4096 {
            return bad("wal-segment-size", "must be at least 4096 bytes".into());
        }
        if self.lease_checkpoint_interval_ms == 0 {
            return bad("lease-checkpoint-interval-ms", "must be positive".into());
        }
        if self.watch_progress_notify_interval_ms == 0 {
            return bad(
                "watch-progress-notify-interval-ms",
                "must be positive".into(),
            );
        }
        for url in split_urls(&self.listen_metrics_urls) {
            if parse_url_addr(&url).is_none() {
                return bad(
                    "listen-metrics-urls",
                    format!("{url:?} is not http://host:port with an IP host"),
                );
            }
        }
        if self.raft.tick_ms == 0 {
            return bad("raft.tick-ms", "must be positive".into());
        }
        let members = self.initial_members()?;
        let Some((_, mine)) = members.iter().find(|(n, _)| n == &self.name) else {
            return bad(
                "initial-cluster",
                format!("has no member named {:?} (this member's --name)", self.name),
            );
        };
        let mut mine = mine.clone();
        let mut advertised = self.advertise_peer_list();
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return bad(
                "initial-cluster",
                format!(
                    "has {}={} but --initial-advertise-peer-urls is {}",
                    self.name,
                    mine.join(","),
                    advertised.join(",")
                ),
            );
        }
        for (name, urls) in &members {
            for u in urls {
                if parse_url_addr(u).is_none() {
                    return bad(
                        "initial-cluster",
                        format!("{name}={u}: not http://host:port with an IP host"),
                    );
                }
            }
        }
        self.peer_listen_addr()?;
        self.client_listeners()?;
        crate::tls::Policy::from_config(self).map_err(|e| ConfigError::Invalid {
            key: "tls".into(),
            why: e.to_string(),
        })?;
        Ok(())
    }

    /// `initial-cluster` parsed into members: (name, peer URLs), in the
    /// order names first appear (a name may be listed once per URL).
    pub fn initial_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for pair in self
            .initial_cluster
            .split(',')
            .filter(|s| !s.trim().is_empty())
        {
            let (name, url) = pair
                .split_once('=')
                .map(|(n, u)| (n.trim().to_owned(), u.trim().to_owned()))
                .ok_or_else(|| ConfigError::Invalid {
                    key: "initial-cluster".into(),
                    why: format!("{pair:?} is not name=url"),
                })?;
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, urls)) => urls.push(url),
                None => out.push((name, vec![url])),
            }
        }
        Ok(out)
    }

    /// The socket address of the first listen peer URL.
    pub fn peer_listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let first = self.listen_peer_urls.split(',').next().unwrap_or("").trim();
        parse_url_addr(first).ok_or_else(|| ConfigError::Invalid {
            key: "listen-peer-urls".into(),
            why: format!("{first:?} is not http://host:port with an IP host"),
        })
    }

    /// The socket address of the first listen client URL.
    pub fn client_listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let first = self
            .listen_client_urls
            .split(',')
            .next()
            .unwrap_or("")
            .trim();
        parse_url_addr(first).ok_or_else(|| ConfigError::Invalid {
            key: "listen-client-urls".into(),
            why: format!("{first:?} is not http://host:port with an IP host"),
        })
    }

    /// Every listen client URL: its address and whether it is `https://`.
    pub fn client_listeners(&self) -> Result<Vec<(std::net::SocketAddr, bool)>, ConfigError> {
        let urls = split_urls(&self.listen_client_urls);
        if urls.is_empty() {
            return Err(ConfigError::Invalid {
                key: "listen-client-urls".into(),
                why: "no URL".into(),
            });
        }
        urls.iter()
            .map(|u| {
                let addr = parse_url_addr(u).ok_or_else(|| ConfigError::Invalid {
                    key: "listen-client-urls".into(),
                    why: format!("{u:?} is not http(s)://host:port with an IP host"),
                })?;
                Ok((addr, u.starts_with("https://")))
            })
            .collect()
    }

    /// Whether the (first) listen peer URL is `https://`.
    pub fn peer_listen_tls(&self) -> bool {
        self.listen_peer_urls.trim().starts_with("https://")
    }

    /// The store size that raises NOSPACE (0 means etcd's default).
    pub fn quota(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            DEFAULT_QUOTA
        } else {
            self.quota_backend_bytes
        }
    }

    /// Where `/metrics` is served besides the client port.
    pub fn metrics_listen_addrs(&self) -> Vec<std::net::SocketAddr> {
        split_urls(&self.listen_metrics_urls)
            .iter()
            .filter_map(|u| parse_url_addr(u))
            .collect()
    }

    /// Advertised client URLs as a list.
    pub fn advertise_client_list(&self) -> Vec<String> {
        split_urls(&self.advertise_client_urls)
    }

    /// Advertised peer URLs as a list.
    pub fn advertise_peer_list(&self) -> Vec<String> {
        split_urls(&self.initial_advertise_peer_urls)
    }
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `http://127.0.0.1:2379` → 127.0.0.1:2379. `localhost` is taken as 127.0.0.1.
pub fn parse_url_addr(url: &str) -> Option<std::net::SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let rest = match rest.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => rest.to_owned(),
    };
    rest.parse().ok()
}

/// How Authenticate's tokens are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthTokens {
    /// Random strings kept by the issuing member.
    Simple,
    /// Signed JSON Web Tokens, valid on every member with the key.
    Jwt(JwtOptions),
}

/// `--auth-token jwt,...`'s options (etcd's names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwtOptions {
    /// The public key (PEM) tokens are verified with.
    pub pub_key: Option<PathBuf>,
    /// The private key (PEM; the secret for HS*) tokens are signed with;
    /// without it the member only verifies.
    pub priv_key: Option<PathBuf>,
    /// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, HS256,
    /// HS384 or HS512.
    pub sign_method: String,
    /// Token lifetime (etcd's default: 5 minutes).
    pub ttl_secs: u64,
}

/// A Go-style duration ("10m", "1m30s", "5s", "250ms", "1h") in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {text:?} (e.g. 10m, 5s, 500ms)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        // As Go's time.ParseDuration, which etcd's flags use.
        return Ok(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let ms = match unit {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        total += n * ms;
        rest = tail;
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_token_takes_etcds_syntax_and_refuses_the_rest() {
        let with = |t: &str| Config {
            auth_token: t.into(),
            ..Config::default()
        };
        assert_eq!(with("simple").auth_tokens().unwrap(), AuthTokens::Simple);
        let AuthTokens::Jwt(j) = with("jwt,pub-key=/p,priv-key=/k,sign-method=RS256,ttl=1m")
            .auth_tokens()
            .unwrap()
        else {
            panic!("not jwt")
        };
        assert_eq!(
            (
                j.pub_key.unwrap(),
                j.priv_key.unwrap(),
                j.sign_method.as_str(),
                j.ttl_secs
            ),
            (PathBuf::from("/p"), PathBuf::from("/k"), "RS256", 60)
        );
        for bad in [
            "jws",
            "simple,x=1",
            "jwt,pub-key=/p",
            "jwt,sign-method=RS256",
            "jwt,pub-key=/p,pub-key=/q,sign-method=RS256",
            "jwt,pub-key,sign-method=RS256",
            "jwt,pub-key=/p,sign-method=RS256,color=red",
        ] {
            assert!(with(bad).auth_tokens().is_err(), "{bad}");
            assert!(with(bad).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn shipped_config_toml_equals_the_defaults() {
        let text = include_str!("../config.toml");
        let cfg = Config::from_toml(text).expect("config.toml parses");
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert!(parse_duration_ms("10").is_err());
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("").is_err());
    }

    #[test]
    fn raft_defaults_are_the_tuned_values() {
        let r = RaftConfig::default();
        assert_eq!((r.tick_ms, r.election_tick, r.heartbeat_tick), (100, 10, 1));
        assert!(r.pre_vote && r.check_quorum);
        assert_eq!(r.max_size_per_msg, 4 << 20);
        assert_eq!(r.max_inflight_msgs, 512);
        assert_eq!(r.max_uncommitted_size, 1 << 30);
    }

    #[test]
    fn flags_override_the_file() {
        let flags = Flags::parse_from([
            "metastore",
            "--name",
            "n1",
            "--initial-cluster",
            "n1=http://127.0.0.1:3380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:3380",
            "--listen-client-urls",
            "http://localhost:3379",
            "--max-request-bytes",
            "100",
            "--heartbeat-interval",
            "200",
            "--election-timeout",
            "2000",
        ]);
        let cfg = Config::load(flags).unwrap();
        assert_eq!(cfg.name, "n1");
        assert_eq!(cfg.max_request_bytes, 100);
        assert_eq!(cfg.client_listen_addr().unwrap().port(), 3379);
        assert_eq!((cfg.raft.heartbeat_tick, cfg.raft.election_tick), (2, 20));
    }

    #[test]
    fn a_three_member_cluster_parses_and_checks_its_own_entry() {
        let flags = Flags::parse_from([
            "metastore",
            "--name",
            "b",
            "--initial-cluster",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2",
            "--listen-peer-urls",
            "http://127.0.0.1:2",
        ]);
        let cfg = Config::load(flags).unwrap();
        let members = cfg.initial_members().unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[1], ("b".into(), vec!["http://127.0.0.1:2".into()]));
        let wrong = Config {
            initial_advertise_peer_urls: "http://127.0.0.1:9".into(),
            ..cfg
        };
        let err = wrong.validate().unwrap_err().to_string();
        assert!(err.contains("--initial-advertise-peer-urls"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("nmae = \"x\"").is_err());
        let cfg = Config {
            initial_cluster: "other=http://127.0.0.1:2380".into(),
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
        let mut cfg = Config::default();
        cfg.raft.election_tick = 1;
        assert!(cfg.validate().is_err());
    }

    /// The choices are enums with etcd's spellings, in the file and in the
    /// flags; anything else is refused, naming the key, with the reason the
    /// string-typed check gave.
    #[test]
    fn choices_parse_with_their_spellings_and_refuse_others() {
        let cfg = Config::from_toml("initial-cluster-state = \"existing\"\nlog-format = \"json\"")
            .unwrap();
        assert_eq!(cfg.initial_cluster_state, InitialClusterState::Existing);
        assert_eq!(cfg.log_format, LogFormat::Json);
        let err = Config::from_toml("log-format = \"xml\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log-format") && err.contains("xml"), "{err}");
        let flags = Flags::try_parse_from([
            "metastore",
            "--initial-cluster-state",
            "existing",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(
            flags.initial_cluster_state,
            Some(InitialClusterState::Existing)
        );
        assert_eq!(flags.log_format, Some(LogFormat::Json));
        let err = Flags::try_parse_from(["metastore", "--initial-cluster-state", "old"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--initial-cluster-state")
                && err.contains(r#""old" is neither "new" nor "existing""#),
            "{err}"
        );
    }
}
