//! Starts real daemons on loopback with free ports and temp data dirs: our
//! `metastore` binary and, for side-by-side checks, etcd 3.4 itself.

// Shared by every test module; not each one uses every helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use metastore::proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

/// A free loopback port, below Linux's ephemeral range (32768+), so no
/// outgoing connection of a daemon or client can take it between this probe
/// and the daemon's bind; handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 40) as u16 * 300;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = base + n % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `GET path` over plain HTTP/1.1; returns (status line, body).
pub fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    http_request(port, "GET", path)
}

/// `POST path` (no body) over plain HTTP/1.1; returns (status line, body).
pub fn http_post(port: u16, path: &str) -> Option<(String, String)> {
    http_request(port, "POST", path)
}

fn http_request(port: u16, method: &str, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// MetaStore's storage engine; every KV, error and durability test runs on
/// each (see `engine_tests!`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// MVCC in memory, WAL + snapshot files.
    Memory,
    /// Raft log and MVCC in RocksDB.
    Rocksdb,
}

impl Engine {
    /// The `--engine` value.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Memory => "memory",
            Engine::Rocksdb => "rocksdb",
        }
    }

    /// The engine that is not this one.
    pub fn other(self) -> Engine {
        match self {
            Engine::Memory => Engine::Rocksdb,
            Engine::Rocksdb => Engine::Memory,
        }
    }
}

/// Which daemon to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Our binary, with a storage engine.
    MetaStore(Engine),
    /// The reference etcd (Debian's etcd-server package).
    Etcd,
    /// etcd 3.5.1 (from [`etcd35_dir`]).
    Etcd35,
}

/// Where etcd 3.5.1's `etcd`, `etcdctl` and `etcdutl` are:
/// `$METASTORE_ETCD35_DIR`, else `~/.cache/metastore/etcd-3.5.1`, where
/// scripts/setup.sh puts them; None if they are not there.
pub fn etcd35_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("METASTORE_ETCD35_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/metastore/etcd-3.5.1"),
    };
    ["etcd", "etcdutl"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

/// A running daemon; killed on drop.
pub struct Server {
    child: Option<Child>,
    kind: Kind,
    /// Data dir (kept across restarts).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Client port.
    pub port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Member name.
    pub name: String,
    /// `--initial-cluster` (None: this member alone).
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-state`.
    pub cluster_state: String,
    /// `https` or `http`, of the client URL.
    pub client_scheme: &'static str,
    /// `https` or `http`, of the peer URL.
    pub peer_scheme: &'static str,
    /// A plain `--listen-metrics-urls` port, where readiness is polled
    /// (set with an https client URL).
    pub metrics_port: Option<u16>,
    /// More `--listen-client-urls` beside the client URL.
    pub more_client_urls: Vec<String>,
    /// Where the daemon's stderr goes (None: beside the data dir). Set it
    /// when the data dir is on a disk that loses what is not synced.
    pub log_file: Option<PathBuf>,
    /// `FAILPOINTS` of the next start (a MetaStore built with the
    /// `failpoints` feature), e.g. `wal::before_fsync=20*off->panic`.
    pub failpoints: Option<String>,
    /// The IP the peer port listens on (and peer connections leave from).
    pub peer_host: String,
    /// The peer URL others dial, when it is not the listen one (a proxy).
    pub advertised_peer_url: Option<String>,
    extra: Vec<String>,
}

impl Server {
    /// A fresh MetaStore (memory engine) with a temp data dir.
    pub fn start() -> Server {
        Server::start_on(Engine::Memory)
    }

    /// A fresh MetaStore on `engine` with a temp data dir.
    pub fn start_on(engine: Engine) -> Server {
        Server::start_with(Kind::MetaStore(engine), &[])
    }

    /// A fresh daemon of `kind` with extra flags.
    pub fn start_with(kind: Kind, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Server::unstarted(kind, "default", extra);
        s.dir = dir;
        s._tmp = Some(tmp);
        s.spawn();
        s
    }

    /// An etcd of `kind` started on a data dir that `restore` fills first
    /// (given the server, whose name, peer URL and data dir it uses), as
    /// `etcdctl snapshot restore` or `etcdutl snapshot restore` fill one.
    pub fn start_restored(kind: Kind, restore: impl FnOnce(&Server)) -> Server {
        let mut s = Server::unstarted(kind, "restored", &[]);
        // Part of a cluster now: never moved to other ports.
        s.initial_cluster = Some(format!("{}={}", s.name, s.peer_url()));
        restore(&s);
        s.spawn();
        s
    }

    /// Moves the data dir of a daemon not started yet to a new temp dir
    /// under `base` (e.g. a tmpfs).
    pub fn keep_data_in(&mut self, base: &Path) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let tmp = tempfile::tempdir_in(base).expect("temp dir");
        self.dir = tmp.path().join("data");
        self._tmp = Some(tmp);
    }

    /// A daemon not started yet (a cluster member), with its own temp dir.
    pub fn unstarted(kind: Kind, name: &str, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        Server {
            child: None,
            kind,
            dir: tmp.path().join("data"),
            _tmp: Some(tmp),
            port: free_port(),
            peer_port: free_port(),
            name: name.to_owned(),
            initial_cluster: None,
            cluster_state: "new".into(),
            client_scheme: "http",
            peer_scheme: "http",
            metrics_port: None,
            more_client_urls: Vec::new(),
            log_file: None,
            failpoints: None,
            peer_host: "127.0.0.1".into(),
            advertised_peer_url: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `https://` client and/or peer URLs (their TLS flags go in the extra
    /// flags); an https client URL gets a plain metrics URL beside it,
    /// where the harness polls /health.
    pub fn set_https(&mut self, client: bool, peer: bool) {
        self.client_scheme = if client { "https" } else { "http" };
        self.peer_scheme = if peer { "https" } else { "http" };
        self.metrics_port = client.then(free_port);
    }

    /// The peer URL (the one other members dial).
    pub fn peer_url(&self) -> String {
        self.advertised_peer_url
            .clone()
            .unwrap_or_else(|| self.listen_peer_url())
    }

    /// The URL the peer port listens on.
    pub fn listen_peer_url(&self) -> String {
        format!(
            "{}://{}:{}",
            self.peer_scheme, self.peer_host, self.peer_port
        )
    }

    /// The client URL.
    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.port)
    }

    /// The kind of daemon.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The etcd-style endpoint, `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn command(&self) -> Command {
        let client = self.client_url();
        let peer = self.peer_url();
        let listen_peer = self.listen_peer_url();
        let mut cmd = match self.kind {
            Kind::MetaStore(engine) => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_metastore"));
                c.arg("--engine").arg(engine.name());
                c
            }
            Kind::Etcd => Command::new("etcd"),
            Kind::Etcd35 => Command::new(
                etcd35_dir()
                    .expect("etcd 3.5.1 (scripts/setup.sh)")
                    .join("etcd"),
            ),
        };
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={peer}", self.name));
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen-client-urls")
            .arg(
                std::iter::once(client.clone())
                    .chain(self.more_client_urls.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&listen_peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-state")
            .arg(&self.cluster_state)
            .args(&self.extra)
            .args(
                self.metrics_port
                    .map(|p| {
                        vec![
                            "--listen-metrics-urls".into(),
                            format!("http://127.0.0.1:{p}"),
                        ]
                    })
                    .unwrap_or_default(),
            )
            .args(self.small_wal_segments())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match &self.failpoints {
            Some(f) => cmd.env("FAILPOINTS", f),
            None => cmd.env_remove("FAILPOINTS"),
        };
        if std::env::var_os("METASTORE_TEST_LOGS").is_none() {
            // Kept beside the data dir, shown if the daemon dies at start-up.
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
            {
                Ok(f) => cmd.stderr(f),
                Err(_) => cmd.stderr(Stdio::null()),
            };
        }
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| self.dir.with_extension("log"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// MetaStore zero-fills each WAL segment when it creates it (memory) or
    /// primes a WAL file of that size at start-up (rocksdb); tests keep them
    /// small (4 MiB, not 64) so dozens of daemons start fast and use little
    /// disk. A test that sets its own size keeps it.
    fn small_wal_segments(&self) -> Vec<&'static str> {
        let own = self
            .extra
            .iter()
            .any(|a| a.starts_with("--wal-segment-size"));
        if matches!(self.kind, Kind::MetaStore(_)) && !own {
            vec!["--wal-segment-size", "4194304"]
        } else {
            Vec::new()
        }
    }

    /// Starts the daemon and waits until it is healthy. A daemon that exits
    /// during start-up because a port was taken (free ports are probed and
    /// released before the daemon binds them) is retried on new ports, as
    /// long as nothing depends on them yet; any other exit fails the test
    /// with the daemon's log.
    pub fn spawn(&mut self) {
        for attempt in 1..=3 {
            self.launch();
            match self.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return,
                Err(status) if attempt < 3 && self.port_was_taken() && self.movable() => {
                    eprintln!(
                        "daemon could not bind its ports ({status}); retrying on new ones\n{}",
                        self.log_tail()
                    );
                    self.port = free_port();
                    self.peer_port = free_port();
                    let _ = std::fs::remove_dir_all(&self.dir);
                }
                Err(status) => panic!(
                    "daemon exited during start-up: {status}\n{}",
                    self.log_tail()
                ),
            }
        }
    }

    /// Starts the process without waiting for it.
    pub fn launch(&mut self) {
        let child = self.command().spawn().expect("start the daemon");
        self.child = Some(child);
    }

    /// A brand-new lone member (its ports are part of nothing yet).
    fn movable(&self) -> bool {
        self.initial_cluster.is_none() && !self.dir.join("metastore.meta").exists()
    }

    fn port_was_taken(&self) -> bool {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.contains("Address already in use") || log.contains("address already in use")
    }

    /// Waits until /health says true; Err if the daemon exited first.
    pub fn wait_ready(&mut self, within: Duration) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(status);
                }
            }
            if let Some((_, body)) = http_get(self.metrics_port.unwrap_or(self.port), "/health") {
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon not healthy after {within:?}\n{}", self.log_tail());
    }

    /// Waits until the daemon started and is healthy (a cluster member
    /// launched with [`Server::launch`]); fails the test with its log if it
    /// exits.
    pub fn wait_started(&mut self) {
        if let Err(status) = self.wait_ready(Duration::from_secs(30)) {
            panic!(
                "{} exited during start-up: {status}\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `within` for the process to exit on its own; its exit
    /// status, or None if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the daemon's log.
    pub fn log_tail_pub(&self) -> String {
        self.log_tail()
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process stands still (its sockets stay open, nothing
    /// answers), as a long GC pause or a stalled VM.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let c = self.child.as_ref().expect("the daemon runs");
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", c.id());
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let status = c.wait().expect("wait for the daemon");
            assert!(status.success(), "unclean exit on SIGTERM: {status}");
        }
    }

    /// The extra flags of the next start.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// More extra flags for the next start.
    pub fn add_extra<S: AsRef<str>>(&mut self, more: &[S]) {
        self.extra
            .extend(more.iter().map(|s| s.as_ref().to_owned()));
    }

    /// The next start runs MetaStore on `engine` (same data dir).
    pub fn set_engine(&mut self, engine: Engine) {
        assert!(matches!(self.kind, Kind::MetaStore(_)), "not a MetaStore");
        self.kind = Kind::MetaStore(engine);
    }

    /// Starts again on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the binary on the data dir and returns how it exited, for
    /// start-ups that must fail.
    pub fn run_to_exit(&mut self) -> Output {
        self.kill9();
        let mut cmd = self.command();
        cmd.stderr(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start the daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("collect output");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("collect output");
        panic!(
            "daemon kept running; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A connected etcd client.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect a client")
    }

    /// Runs `etcdctl` (API v3) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_at(&self.endpoint(), args)
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `etcdctl` (API v3) against this server with `input` on stdin.
    pub fn etcdctl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl is installed (scripts/setup.sh)");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).expect("feed etcdctl");
        drop(stdin);
        child.wait_with_output().expect("etcdctl output")
    }

    /// A raw gRPC KV client (MetaStore's generated etcd protos): for requests
    /// the etcd-client crate cannot express. No message size limits.
    pub async fn raw_kv(&self) -> KvClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.endpoint()))
            .expect("endpoint URI")
            .connect()
            .await
            .expect("connect a raw gRPC channel");
        KvClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

/// A real etcd 3.4 and a MetaStore started side by side with the same extra
/// flags, for differential tests (etcd's answers are the reference).
pub struct Pair {
    /// The reference.
    pub etcd: Server,
    /// The system under test.
    pub ms: Server,
}

impl Pair {
    /// Both daemons with default flags, MetaStore on `engine`.
    pub fn start(engine: Engine) -> Pair {
        Pair::start_with(engine, &[])
    }

    /// Both daemons with `extra` flags, started concurrently.
    pub fn start_with(engine: Engine, extra: &[&str]) -> Pair {
        std::thread::scope(|scope| {
            let etcd = scope.spawn(|| Server::start_with(Kind::Etcd, extra));
            let ms = Server::start_with(Kind::MetaStore(engine), extra);
            Pair {
                etcd: etcd.join().expect("etcd started"),
                ms,
            }
        })
    }
}

/// Runs `etcdctl` against an endpoint.
pub fn etcdctl_at(endpoint: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("etcdctl is installed (scripts/setup.sh)")
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Several members of one cluster on loopback (MetaStore or etcd).
pub struct Cluster {
    /// The members, in `--initial-cluster` order.
    pub members: Vec<Server>,
}

impl Cluster {
    /// `n` MetaStore members on `engine`, started together.
    pub fn start(n: usize, engine: Engine, extra: &[&str]) -> Cluster {
        let kinds = vec![Kind::MetaStore(engine); n];
        Cluster::start_kinds(&kinds, extra)
    }

    /// One member per kind (mixed engines, or etcd for every member).
    pub fn start_kinds(kinds: &[Kind], extra: &[&str]) -> Cluster {
        Cluster::start_configured(kinds, extra, |_, _| {})
    }

    /// As [`Cluster::start_kinds`], each member passed to `configure`
    /// (its index, the member) before any starts: its URLs' schemes, its
    /// own flags.
    pub fn start_configured(
        kinds: &[Kind],
        extra: &[&str],
        configure: impl Fn(usize, &mut Server),
    ) -> Cluster {
        let mut members: Vec<Server> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut s = Server::unstarted(*k, &format!("m{}", i + 1), extra);
                configure(i, &mut s);
                s
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = Some(initial.clone());
            m.launch();
        }
        for m in &mut members {
            m.wait_started();
        }
        Cluster { members }
    }

    /// `n` MetaStore members on `engine` whose Raft traffic crosses a
    /// [`NetProxy`](crate::netproxy::NetProxy) the test drives: member `i`
    /// listens for peers on [`member_ip`](crate::netproxy::member_ip)`(i)`
    /// and advertises its proxy's port.
    pub fn start_proxied(
        n: usize,
        engine: Engine,
        extra: &[&str],
    ) -> (Cluster, crate::netproxy::NetProxy) {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let targets: Vec<std::net::SocketAddr> = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| (crate::netproxy::member_ip(i), p).into())
            .collect();
        let proxy = crate::netproxy::NetProxy::start(&targets);
        let kinds = vec![Kind::MetaStore(engine); n];
        let c = Cluster::start_configured(&kinds, extra, |i, s| {
            s.peer_host = crate::netproxy::member_ip(i).to_string();
            s.peer_port = ports[i];
            s.advertised_peer_url = Some(proxy.url(i));
        });
        (c, proxy)
    }

    /// The `--initial-cluster` value of the running members.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client endpoints of the running members.
    pub fn endpoints(&mut self) -> Vec<String> {
        self.members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| m.endpoint()))
            .collect()
    }

    /// Every member's (leader, term) as its Status says (None: down or
    /// not answering).
    pub fn statuses(&mut self) -> Vec<Option<(u64, u64, u64)>> {
        let mut out = Vec::new();
        for m in &mut self.members {
            if !m.is_running() {
                out.push(None);
                continue;
            }
            out.push(status_of(&m.endpoint()));
        }
        out
    }

    /// The index of the member all running members agree leads, waiting up
    /// to `within`.
    pub fn wait_leader(&mut self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses();
            let leaders: Vec<u64> = statuses.iter().flatten().map(|s| s.1).collect();
            if let Some(&l) = leaders.first() {
                if l != 0 && leaders.iter().all(|&x| x == l) {
                    if let Some(i) = statuses
                        .iter()
                        .position(|s| matches!(s, Some((id, _, _)) if *id == l))
                    {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {statuses:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// (member id, leader, term) from `etcdctl endpoint status`.
pub fn status_of(endpoint: &str) -> Option<(u64, u64, u64)> {
    let out = etcdctl_at(
        endpoint,
        &["endpoint", "status", "-w", "json", "--command-timeout=1s"],
    );
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = v.get(0)?.get("Status")?;
    let h = s.get("header")?;
    // etcdctl's JSON leaves out fields that are zero.
    let num = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Some((num(h, "member_id"), num(s, "leader"), num(h, "raft_term")))
}
