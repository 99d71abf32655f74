//! Nothing of a member is process-wide (no static WAL writer, background
//! job counter or metrics registry): three whole members run in this test's
//! own process, each on its own threads, and form a cluster.

use std::time::Duration;

use metastore::config::Config;

use crate::harness::{etcdctl_at, free_port, http_get};

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
