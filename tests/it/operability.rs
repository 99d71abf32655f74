//! The operators' handles: health endpoints (HTTP and gRPC), `/version`,
//! `--listen-metrics-urls`, JSON logs, and every metric the dashboards and
//! alert rules use.

use std::time::Duration;

use metastore::proto::health::health_check_response::ServingStatus;
use metastore::proto::health::health_client::HealthClient;
use metastore::proto::health::HealthCheckRequest;

use crate::harness::{etcdctl_at, free_port, http_get, Cluster, Engine, Kind, Server};

/// gRPC health of `endpoint` for `service`: the status, or the error code.
pub async fn grpc_health(endpoint: &str, service: &str) -> Result<ServingStatus, tonic::Code> {
    let mut client = HealthClient::connect(format!("http://{endpoint}"))
        .await
        .map_err(|_| tonic::Code::Unavailable)?;
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

/// A healthy member answers every check as etcd does; the metrics port
/// serves the same metrics; logs are JSON lines when asked.
async fn health_version_metrics_port_and_json_logs(engine: Engine) {
    let mport = free_port();
    let murl = format!("http://127.0.0.1:{mport}");
    let s = tokio::task::spawn_blocking(move || {
        Server::start_with(
            Kind::MetaStore(engine),
            &["--listen-metrics-urls", &murl, "--log-format", "json"],
        )
    })
    .await
    .unwrap();
    assert!(s.etcdctl(&["put", "k", "v"]).status.success());

    let (status, body) = http_get(s.port, "/health").unwrap();
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    let (_, body) = http_get(s.port, "/health?serializable=true").unwrap();
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    for path in ["/livez", "/readyz"] {
        let (status, body) = http_get(s.port, path).unwrap();
        assert!(status.contains("200"), "{path}: {status}");
        assert_eq!(body, "ok\n", "{path}");
    }
    let (_, body) = http_get(s.port, "/readyz?verbose").unwrap();
    assert_eq!(
        body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
    );
    let (_, body) = http_get(s.port, "/version").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["etcdserver"].as_str().unwrap().starts_with("3."),
        "{body}"
    );
    assert!(
        v["etcdcluster"].as_str().unwrap().starts_with("3."),
        "{body}"
    );

    assert_eq!(
        grpc_health(&s.endpoint(), "").await,
        Ok(ServingStatus::Serving)
    );
    assert_eq!(
        grpc_health(&s.endpoint(), "no.such.Service").await,
        Err(tonic::Code::NotFound)
    );

    // The metrics port: metrics and health, not the API.
    let (status, body) = http_get(mport, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
    assert!(body.contains(
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\",grpc_code=\"OK\"} 1"
    ), "{body}");
    let (_, body) = http_get(mport, "/health").unwrap();
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    let (status, _) = http_get(mport, "/version").unwrap();
    assert!(status.contains("404"), "{status}");

    // JSON logs: every line is an object; start-up names the member.
    let log = s.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 0);
    assert!(
        log.lines()
            .any(|l| l.contains(r#""message":"starting""#) && l.contains(r#""member":"#)),
        "{log}"
    );
}

engine_tests!(async: health_version_metrics_port_and_json_logs);

/// `--log-format` refuses what it does not know, naming the key.
#[test]
fn unknown_log_format_is_refused() {
    let mut s = Server::unstarted(
        Kind::MetaStore(Engine::Memory),
        "default",
        &["--log-format", "xml"],
    );
    let out = s.run_to_exit();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log-format") && err.contains("xml"), "{err}");
}

/// Every metric the alert rules and the dashboard use (deploy/metrics.txt)
/// and every one the operability issue names is exported by a member of a
/// 3-member cluster that has served puts, a watch and a lease: names as
/// Prometheus scrapes them (a histogram by its `_bucket` series).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported() {
    let mut c = tokio::task::spawn_blocking(|| Cluster::start(3, Engine::Memory, &[]))
        .await
        .unwrap();
    let leader = c.wait_leader(Duration::from_secs(5));
    let ep = c.members[leader].endpoint();
    for args in [
        &["put", "a", "1"][..],
        &["get", "a"],
        &["lease", "grant", "60"],
        &["watch", "a", "--rev", "1"],
    ] {
        // A watch keeps watching: a timeout ends it.
        if args[0] == "watch" {
            let _ = std::process::Command::new("timeout")
                .args(["1", "etcdctl", "--endpoints", &ep])
                .args(args)
                .output();
        } else {
            assert!(etcdctl_at(&ep, args).status.success(), "{args:?}");
        }
    }
    // Heartbeats have been answered by now (round-trip times).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, text) = http_get(c.members[leader].port, "/metrics").unwrap();
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let listed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/metrics.txt"))
            .unwrap();
    let named = [
        "raft_leader_changes_total",
        "raft_election_timeout_total",
        "raft_heartbeat_timeout_total",
        "raft_propose_duration_ms",
        "raft_apply_duration_ms",
        "raft_inflight_messages",
        "grpc_request_duration_ms",
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_network_peer_round_trip_time_seconds",
        "etcd_network_peer_sent_bytes_total",
        "etcd_network_peer_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "etcd_network_client_grpc_received_bytes_total",
        "grpc_server_handled_total",
        "grpc_server_started_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ];
    let wanted = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .chain(named);
    let mut missing = Vec::new();
    for name in wanted {
        let found = exported.contains(name) || exported.contains(format!("{name}_bucket").as_str());
        if !found {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
    // Moving values, not just names.
    for (name, labels) in [
        ("etcd_network_peer_round_trip_time_seconds_count", "{To=\""),
        ("etcd_network_peer_sent_bytes_total", "{To=\""),
        ("grpc_server_started_total", "grpc_method=\"LeaseGrant\""),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l.contains(labels))
            .unwrap_or_else(|| panic!("no {name} {labels}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v > 0.0, "{line}");
    }
}

/// The revision a member has applied (a serializable read's header).
fn revision_of(ep: &str) -> i64 {
    let out = etcdctl_at(ep, &["get", "none", "-w", "json", "--consistency=s"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["header"]["revision"].as_i64().unwrap_or(0)
}

/// `etcdctl endpoint hashkv --cluster` lines: (endpoint, hash).
fn hashkv_cluster(ep: &str, rev: Option<i64>) -> Vec<(String, u64)> {
    let mut args = vec!["endpoint", "hashkv", "--cluster"];
    let rev_arg;
    if let Some(r) = rev {
        rev_arg = format!("--rev={r}");
        args.push(&rev_arg);
    }
    let out = etcdctl_at(ep, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (ep, hash) = l.split_once(", ").expect("endpoint, hash");
            (ep.to_owned(), hash.trim().parse().expect("a number"))
        })
        .collect()
}

/// HashKV is the same on every member of a cluster whose members run
/// different engines, at the current revision and at a past one; it
/// changes when history does, and not when later history is added.
#[test]
fn hashkv_is_equal_across_members_and_engines() {
    let mut c = Cluster::start_kinds(
        &[
            Kind::MetaStore(Engine::Memory),
            Kind::MetaStore(Engine::Rocksdb),
            Kind::MetaStore(Engine::Memory),
        ],
        &[],
    );
    c.wait_leader(Duration::from_secs(5));
    let ep = c.endpoints()[0].clone();
    for i in 0..40 {
        let out = etcdctl_at(&ep, &["put", &format!("k{}", i % 15), &format!("v{i}")]);
        assert!(out.status.success());
    }
    assert!(etcdctl_at(&ep, &["del", "k3"]).status.success());
    assert!(etcdctl_at(&ep, &["compact", "20"]).status.success());
    // Every member applied it all.
    let want = revision_of(&ep);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.endpoints().iter().any(|e| revision_of(e) < want) {
        assert!(
            std::time::Instant::now() < deadline,
            "members did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let now = hashkv_cluster(&ep, None);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|(_, h)| *h == now[0].1), "{now:?}");
    let at30 = hashkv_cluster(&ep, Some(30));
    assert!(at30.iter().all(|(_, h)| *h == at30[0].1), "{at30:?}");
    assert_ne!(
        at30[0].1, now[0].1,
        "history up to 30 differs from all of it"
    );
    // Later writes leave the hash of revision 30 alone and move the current one.
    assert!(etcdctl_at(&ep, &["put", "later", "x"]).status.success());
    std::thread::sleep(Duration::from_millis(300));
    let again = hashkv_cluster(&ep, Some(30));
    assert!(again.iter().all(|(_, h)| *h == at30[0].1), "{again:?}");
    let moved = hashkv_cluster(&ep, None);
    assert!(moved.iter().all(|(_, h)| *h == moved[0].1), "{moved:?}");
    assert_ne!(moved[0].1, now[0].1);
    // Below the compaction point: etcd's error.
    let out = etcdctl_at(&ep, &["endpoint", "hashkv", "--rev=5"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Past `--quota-backend-bytes` a member raises NOSPACE as etcd does:
/// writes that grow the store fail with etcd's error, reads and deletes
/// work, `/health` and `endpoint status` show the alarm; deleting,
/// compacting, defragmenting and `alarm disarm` bring writes back.
fn quota_raises_nospace_until_disarmed(engine: Engine) {
    let s = Server::start_with(
        Kind::MetaStore(engine),
        &["--quota-backend-bytes", "100000"],
    );
    let value = "x".repeat(1000);
    let mut failed = None;
    for i in 0..400 {
        let out = s.etcdctl(&["put", &format!("k{i:03}"), &value]);
        if !out.status.success() {
            failed = Some((i, String::from_utf8_lossy(&out.stderr).into_owned()));
            break;
        }
    }
    let (at, err) = failed.expect("the quota was never hit");
    assert!(at > 20, "failed after only {at} puts: {err}");
    assert!(
        err.contains("etcdserver: mvcc: database space exceeded"),
        "{err}"
    );
    let id = format!("{}", crate::harness::status_of(&s.endpoint()).unwrap().0);
    let list = String::from_utf8_lossy(&s.etcdctl(&["alarm", "list"]).stdout).into_owned();
    assert_eq!(list, format!("memberID:{id} alarm:NOSPACE \n"));
    // Every write that grows the store is refused, even a small one.
    let out = s.etcdctl(&["put", "small", "v"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("database space exceeded"));
    let out = s.etcdctl(&["lease", "grant", "60"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("database space exceeded"));
    // Reads work.
    let out = s.etcdctl(&["get", "k000", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), value);
    let (status, body) = http_get(s.port, "/health").unwrap();
    assert!(status.contains("503"), "{status}");
    assert_eq!(body, r#"{"health":"false","reason":"ALARM NOSPACE"}"#);
    let (_, body) = http_get(s.port, "/health?exclude=NOSPACE").unwrap();
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    let out = s.etcdctl(&["endpoint", "status", "-w", "json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("memberID:{id} alarm:NOSPACE")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Free the space: delete, compact, defragment, disarm.
    let out = s.etcdctl(&["del", "k", "--prefix"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), at.to_string());
    let rev = revision_of(&s.endpoint());
    assert!(s.etcdctl(&["compact", &rev.to_string()]).status.success());
    assert!(s.etcdctl(&["defrag"]).status.success());
    // Still raised until disarmed.
    assert!(!s.etcdctl(&["put", "small", "v"]).status.success());
    let out = s.etcdctl(&["alarm", "disarm"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("memberID:{id} alarm:NOSPACE \n")
    );
    assert_eq!(
        String::from_utf8_lossy(&s.etcdctl(&["alarm", "list"]).stdout),
        ""
    );
    let out = s.etcdctl(&["put", "small", "v"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = http_get(s.port, "/health").unwrap();
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    // The alarm is replicated state: raised, it survives a restart.
    for i in 0..400 {
        if !s
            .etcdctl(&["put", &format!("k{i:03}"), &value])
            .status
            .success()
        {
            break;
        }
    }
    let mut s = s;
    s.stop();
    // (Not `restart`: it waits for /health, which the alarm keeps false.)
    s.launch();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = s.etcdctl(&["alarm", "list"]);
        if out.status.success() {
            let list = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(list, format!("memberID:{id} alarm:NOSPACE \n"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not back after a restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

engine_tests!(sync: quota_raises_nospace_until_disarmed);

/// POST to a fault switch; the answer's body.
fn post(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

/// The leader's periodic check compares every member's HashKV with its
/// own: a healthy cluster raises nothing; a member whose store diverged
/// (a key written outside Raft) gets a CORRUPT alarm, after which every
/// member refuses writes with etcd's error and /readyz and /health say so.
#[test]
fn corruption_check_raises_corrupt_for_a_diverged_member() {
    let mut c = Cluster::start(
        3,
        Engine::Memory,
        &[
            "--experimental-fault-injection",
            "--experimental-corrupt-check-time",
            "500ms",
        ],
    );
    let leader = c.wait_leader(Duration::from_secs(5));
    let ep = c.members[leader].endpoint();
    for i in 0..10 {
        assert!(etcdctl_at(&ep, &["put", &format!("k{i}"), "v"])
            .status
            .success());
    }
    // Several checks on a healthy cluster: no alarm.
    std::thread::sleep(Duration::from_millis(2000));
    let out = etcdctl_at(&ep, &["alarm", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let f = (leader + 1) % 3;
    let body = post(c.members[f].port, "/debug/fault/diverge?key=evil&value=x");
    assert!(body.contains("diverged"), "{body}");
    // The next write lands at the revision the diverged member used.
    assert!(etcdctl_at(&ep, &["put", "after", "v"]).status.success());
    let fid = crate::harness::status_of(&c.members[f].endpoint())
        .unwrap()
        .0;
    let want = format!("memberID:{fid} alarm:CORRUPT \n");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = etcdctl_at(&ep, &["alarm", "list"]);
        if String::from_utf8_lossy(&out.stdout) == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no CORRUPT alarm: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Writes stop everywhere; reads go on.
    let other = (leader + 2) % 3;
    let out = etcdctl_at(&c.members[other].endpoint(), &["put", "x", "y"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcdserver: corrupt cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl_at(&ep, &["get", "k1", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v\n");
    let (status, body) = http_get(c.members[leader].port, "/readyz").unwrap();
    assert!(status.contains("503"), "{status}");
    assert!(
        body.starts_with("[-]data_corruption failed: alarm activated: CORRUPT\n"),
        "{body}"
    );
    let (_, body) = http_get(c.members[other].port, "/health").unwrap();
    assert_eq!(body, r#"{"health":"false","reason":"ALARM CORRUPT"}"#);
}

/// `etcdctl check perf` (its smallest load: 150 writes/s for a minute from
/// 50 clients) passes against a member. Takes its turn with the heavy
/// cluster test: both measure latency on a shared machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_check_perf_passes() {
    let _turn = crate::cluster::HEAVY.lock().await;
    let s = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let ep = s.endpoint();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args([
                "150",
                "etcdctl",
                "--endpoints",
                &ep,
                "check",
                "perf",
                "--load",
                "s",
            ])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // (The verdicts follow a progress bar on the same line.)
    let verdicts: Vec<&str> = text
        .match_indices("PASS:")
        .chain(text.match_indices("FAIL"))
        .map(|(i, _)| text[i..].lines().next().unwrap_or(""))
        .collect();
    assert!(
        out.status.success(),
        "{verdicts:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("FAIL"), "{verdicts:?}");
    for what in ["PASS: Throughput", "PASS: Slowest request", "PASS: Stddev"] {
        assert!(text.contains(what), "{what} missing: {verdicts:?}");
    }
}
