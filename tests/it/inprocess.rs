//! Nothing of a member is process-wide (no static WAL writer, background
//! job counter or metrics registry): three whole members run in this test's
//! own process, each on its own threads, and form a cluster.

use std::time::Duration;

use metastore::config::{Config, Engine};

use crate::harness::{etcdctl_at, free_port, http_get, http_post};

#[test]
fn three_members_run_in_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("p{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut stops = Vec::new();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let client = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let cfg = Config {
            name: format!("p{i}"),
            data_dir: tmp.path().join(format!("p{i}")),
            listen_client_urls: client.clone(),
            advertise_client_urls: client,
            listen_peer_urls: peer.clone(),
            initial_advertise_peer_urls: peer,
            initial_cluster: initial.clone(),
            wal_segment_size: 4 << 20,
            ..Config::default()
        };
        cfg.validate().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        members.push(std::thread::spawn(move || {
            metastore::server::run_until(cfg, async move {
                let _ = stopped.await;
            })
            .map_err(|e| e.to_string())
        }));
    }
    for (client, _) in &ports {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !http_get(*client, "/health").is_some_and(|(_, b)| b.contains("\"true\"")) {
            assert!(
                std::time::Instant::now() < deadline,
                "member on {client} not healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let ep = |i: usize| format!("127.0.0.1:{}", ports[i].0);
    let out = etcdctl_at(&ep(0), &["put", "in", "process"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let out = etcdctl_at(&ep(2), &["get", "in", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "process\n");
    // Each member counts its own requests: p0 served the put, p2 did not.
    let count = |i: usize| {
        http_get(ports[i].0, "/metrics")
            .unwrap()
            .1
            .lines()
            .any(|l| {
                l.starts_with("grpc_server_started_total{")
                    && l.contains("grpc_method=\"Put\"")
                    && l.ends_with("} 1")
            })
    };
    assert!(count(0) && !count(2), "metrics are per member");
    for stop in stops {
        let _ = stop.send(());
    }
    for m in members {
        m.join().unwrap().unwrap();
    }
}

/// A member running on a thread of this process.
struct InProcess {
    client_port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Ends with the exit code a fatal error stopped the member with (None:
    /// another error, in the text).
    thread: std::thread::JoinHandle<Result<(), (Option<i32>, String)>>,
}

/// Starts a lone member (a cluster of its own) on its own thread in this
/// process, with the fault switches on, and waits until it is healthy.
fn lone_member(dir: &std::path::Path, name: &str) -> InProcess {
    lone_member_at(dir, name, Engine::Memory, (free_port(), free_port()))
}

/// [`lone_member`] with an engine and ports (the same ports restart it).
fn lone_member_at(
    dir: &std::path::Path,
    name: &str,
    engine: Engine,
    (client_port, peer_port): (u16, u16),
) -> InProcess {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let cfg = Config {
        name: name.into(),
        data_dir: dir.join(name),
        listen_client_urls: client.clone(),
        advertise_client_urls: client,
        listen_peer_urls: peer.clone(),
        initial_advertise_peer_urls: peer.clone(),
        initial_cluster: format!("{name}={peer}"),
        wal_segment_size: 4 << 20,
        fault_injection: true,
        engine,
        ..Config::default()
    };
    cfg.validate().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        metastore::server::run_until(cfg, async move {
            let _ = stopped.await;
        })
        .map_err(|e| {
            let code = e
                .downcast_ref::<metastore::error::MemberStopped>()
                .map(|s| s.code);
            (code, e.to_string())
        })
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !http_get(client_port, "/health").is_some_and(|(_, b)| b.contains("\"true\"")) {
        assert!(std::time::Instant::now() < deadline, "{name} not healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    InProcess {
        client_port,
        stop,
        thread,
    }
}

/// A failed fsync stops the member it happened in, with exit code 2 and
/// without acknowledging the write, while another member in the same process
/// keeps serving (it used to be `process::exit(2)`: the whole process died).
#[test]
fn a_fatal_error_stops_only_its_member() {
    let tmp = tempfile::tempdir().unwrap();
    let a = lone_member(tmp.path(), "fatal-a");
    let b = lone_member(tmp.path(), "fatal-b");
    // a.stop is kept (not sent) until the end: a must stop on its own.
    let (a_port, _stop_a, a_thread) = (a.client_port, a.stop, a.thread);
    let (b_port, stop_b, b_thread) = (b.client_port, b.stop, b.thread);
    let ep = |port: u16| format!("127.0.0.1:{port}");

    let (status, _) = http_post(a_port, "/debug/fault/fail-wal-sync").unwrap();
    assert!(status.contains("200"), "{status}");
    let out = etcdctl_at(&ep(a_port), &["put", "lost", "write"]);
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "OK\n",
        "a write whose fsync failed must not be acknowledged"
    );
    assert_stops_with_fatal_code(a_thread);

    // The process and member b are alive and serve reads and writes.
    let out = etcdctl_at(&ep(b_port), &["put", "still", "here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let out = etcdctl_at(&ep(b_port), &["get", "still", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "here\n");
    let _ = stop_b.send(());
    b_thread.join().unwrap().unwrap();
}

/// A failed engine commit of an applied batch stops the member through the
/// fatal path (exit code 2) while a member beside it in the process goes
/// on; restarted, the member has every write it acknowledged (the Raft log
/// holds them; the engine replays from its last commit).
#[test]
fn a_failed_engine_commit_stops_only_its_member_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let a = lone_member_at(tmp.path(), "commit-a", Engine::Rocksdb, ports);
    let b = lone_member(tmp.path(), "commit-b");
    let (a_port, _stop_a, a_thread) = (a.client_port, a.stop, a.thread);
    let ep = |port: u16| format!("127.0.0.1:{port}");
    for i in 0..20 {
        let out = etcdctl_at(&ep(a_port), &["put", &format!("k{i}"), "before"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    }

    let (status, _) = http_post(a_port, "/debug/fault/fail-commit").unwrap();
    assert!(status.contains("200"), "{status}");
    // Applied (and maybe acknowledged) before the failed commit.
    let last = etcdctl_at(&ep(a_port), &["put", "last", "write"]);
    let acked = String::from_utf8_lossy(&last.stdout) == "OK\n";
    assert_stops_with_fatal_code(a_thread);

    let out = etcdctl_at(&ep(b.client_port), &["put", "still", "here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let _ = b.stop.send(());
    b.thread.join().unwrap().unwrap();

    // Restarted on the same data dir: nothing acknowledged is missing.
    let a = lone_member_at(tmp.path(), "commit-a", Engine::Rocksdb, ports);
    let out = etcdctl_at(&ep(a.client_port), &["get", "k", "--prefix", "--keys-only"]);
    let keys = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        keys.lines().filter(|l| l.starts_with('k')).count(),
        20,
        "{keys}"
    );
    if acked {
        let out = etcdctl_at(&ep(a.client_port), &["get", "last", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "write\n");
    }
    let _ = a.stop.send(());
    a.thread.join().unwrap().unwrap();
}

/// Waits (10 s at most) for a member's thread to end on its own, with the
/// fatal exit code.
fn assert_stops_with_fatal_code(
    thread: std::thread::JoinHandle<Result<(), (Option<i32>, String)>>,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !thread.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the member did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, text) = thread.join().unwrap().unwrap_err();
    assert_eq!(code, Some(metastore::fatal::FATAL_EXIT_CODE), "{text}");
}
