//! Starts and stops etcd and MetaStore for `--compare`.

use std::ffi::OsString;
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

/// A running server (one member); stopped on drop.
pub struct Daemon {
    pub kind: Kind,
    child: Option<Child>,
    /// `--name`.
    name: String,
    pub port: u16,
    /// Its `--initial-advertise-peer-urls` port.
    peer_port: u16,
    /// A plain `--listen-metrics-urls` port (with TLS on the client port).
    metrics_port: Option<u16>,
    log: PathBuf,
    /// Its flags, to start the member again (`restart`) with `recipe.bin`.
    flags: Vec<OsString>,
    /// How the cluster's members were started, to start one more (`plan_join`).
    recipe: Recipe,
    _dir: tempfile::TempDir,
}

/// What every member of a cluster is started with besides its own name,
/// ports and data dir.
#[derive(Clone)]
struct Recipe {
    kind: Kind,
    bin: PathBuf,
    /// `--engine`, `--metastore-arg`, `--etcd-arg`.
    extra: Vec<String>,
    /// Where the data dirs go (`--data-root`; the system temp dir if none).
    root: Option<PathBuf>,
    /// The certificate flags (`--tls`).
    tls: Option<Vec<String>>,
}

/// The CPUs every server process is started on (`--server-cpus`); all the
/// machine's if unset.
static SERVER_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Starts every server from now on restricted to `cpus`.
pub fn pin_servers_to(cpus: Vec<usize>) {
    let _ = SERVER_CPUS.set(cpus);
}

/// A free loopback port below Linux's ephemeral range, so that no outgoing
/// connection takes it before the daemon binds it.
fn free_port() -> Result<u16, String> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 12_000 + (std::process::id() % 20) as u16 * 400;
    for _ in 0..4000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 8000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback port".into())
}

/// One member to start: its ports and data dir.
struct Planned {
    name: String,
    port: u16,
    peer_port: u16,
    metrics_port: Option<u16>,
    dir: tempfile::TempDir,
}

/// `name=http://127.0.0.1:peer_port`: a member's entry in `--initial-cluster`.
fn initial_entry(name: &str, peer_port: u16) -> String {
    format!("{name}=http://127.0.0.1:{peer_port}")
}

impl Recipe {
    /// Fresh ports and a fresh data dir for member `name`.
    fn plan(&self, name: &str) -> Result<Planned, String> {
        let prefix = format!("loadgen-{}-{name}-", self.kind.name());
        let mut tmp = tempfile::Builder::new();
        tmp.prefix(&prefix);
        let dir = match &self.root {
            Some(r) => tmp.tempdir_in(r),
            None => tmp.tempdir(),
        }
        .map_err(|e| format!("temp dir: {e}"))?;
        Ok(Planned {
            name: name.to_owned(),
            port: free_port()?,
            peer_port: free_port()?,
            metrics_port: match self.tls {
                Some(_) => Some(free_port()?),
                None => None,
            },
            dir,
        })
    }

    /// The member `p` with its command line (not started): `initial` is
    /// `--initial-cluster`, `state` `--initial-cluster-state` (`new` or
    /// `existing`).
    fn daemon(&self, p: Planned, initial: &str, state: &str) -> Daemon {
        let data = p.dir.path().join("data");
        let log = p.dir.path().join("server.log");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", p.port);
        let mut secure = Vec::new();
        if let (Some(flags), Some(port)) = (&self.tls, p.metrics_port) {
            secure.extend(flags.iter().cloned());
            secure.push("--listen-metrics-urls".to_owned());
            secure.push(format!("http://127.0.0.1:{port}"));
        }
        let peer = format!("http://127.0.0.1:{}", p.peer_port);
        let mut flags: Vec<OsString> = vec![
            "--name".into(),
            p.name.clone().into(),
            "--data-dir".into(),
            data.into(),
            "--listen-client-urls".into(),
            client.clone().into(),
            "--advertise-client-urls".into(),
            client.into(),
            "--listen-peer-urls".into(),
            peer.clone().into(),
            "--initial-advertise-peer-urls".into(),
            peer.into(),
            "--initial-cluster".into(),
            initial.into(),
            "--initial-cluster-state".into(),
            state.into(),
        ];
        flags.extend(secure.iter().chain(&self.extra).map(OsString::from));
        Daemon {
            kind: self.kind,
            child: None,
            name: p.name,
            port: p.port,
            peer_port: p.peer_port,
            metrics_port: p.metrics_port,
            log,
            flags,
            recipe: self.clone(),
            _dir: p.dir,
        }
    }
}

/// A member planned to join a running cluster (`Daemon::plan_join`): its
/// ports and data dir, not started yet.
pub struct Joining {
    recipe: Recipe,
    planned: Planned,
}

impl Joining {
    /// Its peer URL, for MemberAdd.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.planned.peer_port)
    }

    /// `name=peer URL`, its entry in `--initial-cluster`.
    pub fn initial_entry(&self) -> String {
        initial_entry(&self.planned.name, self.planned.peer_port)
    }

    /// Spawns the member with `--initial-cluster-state existing` and
    /// `initial` as `--initial-cluster` (the cluster's members and this
    /// one, as `etcdctl member add` prints it), its stderr to its log.
    /// Returns once the process is spawned, with the instant it was; it is
    /// not waited for (the caller polls it).
    pub fn start(self, initial: &str) -> Result<(Daemon, Instant), String> {
        let mut d = self.recipe.daemon(self.planned, initial, "existing");
        let log = File::create(&d.log);
        let spawned = Instant::now();
        d.spawn(log)?;
        Ok((d, spawned))
    }
}

impl Daemon {
    /// Starts a cluster of `n` members of `kind`, each with its own data
    /// dir and ports, and waits until every member is healthy. With `tls`
    /// (the certificate flags) the client port is https and /health and
    /// /metrics are served on a plain metrics port.
    pub fn start_cluster(
        kind: Kind,
        bin: &Path,
        n: usize,
        extra: &[String],
        root: Option<&Path>,
        tls: Option<&[String]>,
    ) -> Result<Vec<Daemon>, String> {
        let recipe = Recipe {
            kind,
            bin: bin.to_path_buf(),
            extra: extra.to_vec(),
            root: root.map(Path::to_path_buf),
            tls: tls.map(<[String]>::to_vec),
        };
        let planned = (0..n)
            .map(|i| recipe.plan(&format!("m{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let initial = planned
            .iter()
            .map(|p| initial_entry(&p.name, p.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(n);
        for p in planned {
            let mut d = recipe.daemon(p, &initial, "new");
            d.spawn(File::create(&d.log))?;
            members.push(d);
        }
        for d in &mut members {
            d.wait_ready()?;
        }
        Ok(members)
    }

    /// Plans one more member of this one's cluster, named `name`: the same
    /// kind, binary and flags, fresh ports and a fresh data dir. Add its
    /// peer URL with MemberAdd, then `Joining::start` it.
    pub fn plan_join(&self, name: &str) -> Result<Joining, String> {
        Ok(Joining {
            recipe: self.recipe.clone(),
            planned: self.recipe.plan(name)?,
        })
    }

    /// `name=peer URL`, the member's entry in `--initial-cluster`.
    pub fn initial_entry(&self) -> String {
        initial_entry(&self.name, self.peer_port)
    }

    /// Starts the process with the member's flags, its stderr to `log`.
    fn spawn(&mut self, log: std::io::Result<File>) -> Result<(), String> {
        let stderr = log.map_err(|e| format!("log file: {e}"))?;
        let bin = &self.recipe.bin;
        let mut command = Command::new(bin);
        command
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(cpus) = SERVER_CPUS.get() {
            use std::os::unix::process::CommandExt;
            let cpus = cpus.clone();
            // SAFETY: the hook only calls sched_setaffinity, which is
            // async-signal-safe, on a set built before the fork.
            unsafe {
                command.pre_exec(move || crate::procfs::pin_to(&cpus));
            }
        }
        let child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL (no clean shutdown), then starts the member again with the
    /// same flags and data dir, its log appended to. Returns once the new
    /// process is spawned, with the instant it was; it is not waited for
    /// (see `wait_ready`).
    pub fn restart(&mut self) -> Result<Instant, String> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = File::options().append(true).open(&self.log);
        let spawned = Instant::now();
        self.spawn(log)?;
        Ok(spawned)
    }

    /// Waits until the member's /health says healthy.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let addr = self.http_addr();
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
            // The load generator's main thread polls a child process.
            #[allow(clippy::disallowed_methods)]
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

    /// `127.0.0.1:port` serving plain /health and /metrics.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port.unwrap_or(self.port))
    }

    /// The member's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Copies the member's log (its stderr so far) to `to`.
    pub fn copy_log(&self, to: &Path) -> std::io::Result<()> {
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::copy(&self.log, to).map(drop)
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
            // The load generator's main thread waits for a child process.
            #[allow(clippy::disallowed_methods)]
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
