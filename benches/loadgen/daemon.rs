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
    pub port: u16,
    /// A plain `--listen-metrics-urls` port (with TLS on the client port).
    metrics_port: Option<u16>,
    log: PathBuf,
    /// The binary and its flags, to start the member again (`restart`).
    bin: PathBuf,
    flags: Vec<OsString>,
    _dir: tempfile::TempDir,
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
        let mut planned = Vec::with_capacity(n);
        for i in 0..n {
            let prefix = format!("loadgen-{}-{i}-", kind.name());
            let mut tmp = tempfile::Builder::new();
            tmp.prefix(&prefix);
            let dir = match root {
                Some(r) => tmp.tempdir_in(r),
                None => tmp.tempdir(),
            }
            .map_err(|e| format!("temp dir: {e}"))?;
            planned.push(Planned {
                name: format!("m{i}"),
                port: free_port()?,
                peer_port: free_port()?,
                metrics_port: match tls {
                    Some(_) => Some(free_port()?),
                    None => None,
                },
                dir,
            });
        }
        let initial = planned
            .iter()
            .map(|p| format!("{}=http://127.0.0.1:{}", p.name, p.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(n);
        for p in planned {
            let data = p.dir.path().join("data");
            let log = p.dir.path().join("server.log");
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client = format!("{scheme}://127.0.0.1:{}", p.port);
            let mut secure = Vec::new();
            if let (Some(flags), Some(port)) = (tls, p.metrics_port) {
                secure.extend(flags.iter().cloned());
                secure.push("--listen-metrics-urls".to_owned());
                secure.push(format!("http://127.0.0.1:{port}"));
            }
            let peer = format!("http://127.0.0.1:{}", p.peer_port);
            let mut flags: Vec<OsString> = vec![
                "--name".into(),
                p.name.into(),
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
                initial.clone().into(),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            flags.extend(secure.iter().chain(extra).map(OsString::from));
            let mut d = Daemon {
                kind,
                child: None,
                port: p.port,
                metrics_port: p.metrics_port,
                log,
                bin: bin.to_path_buf(),
                flags,
                _dir: p.dir,
            };
            d.spawn(File::create(&d.log))?;
            members.push(d);
        }
        for d in &mut members {
            d.wait_ready()?;
        }
        Ok(members)
    }

    /// Starts the process with the member's flags, its stderr to `log`.
    fn spawn(&mut self, log: std::io::Result<File>) -> Result<(), String> {
        let stderr = log.map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(&self.bin)
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
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
