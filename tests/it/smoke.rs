//! The daemon starts, answers etcdctl and its HTTP endpoints.

use crate::harness::{http_get, Engine, Server};

fn etcdctl_put_get_and_http_endpoints(engine: Engine) {
    let s = Server::start_on(engine);
    let out = s.etcdctl(&["put", "foo", "bar"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let out = s.etcdctl(&["get", "foo"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "foo\nbar\n");
    let (status, body) = http_get(s.port, "/version").unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("etcdserver"), "{body}");
    let (_, metrics) = http_get(s.port, "/metrics").unwrap();
    assert!(metrics.contains("etcd_server_has_leader 1"), "{metrics}");
    assert!(metrics.contains("etcd_disk_wal_fsync_duration_seconds"));
    // SIGTERM: a clean exit (status 0), and everything is there afterwards.
    let mut s = s;
    s.stop();
    s.restart();
    let out = s.etcdctl(&["get", "foo"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "foo\nbar\n");
}

engine_tests!(sync: etcdctl_put_get_and_http_endpoints);
