//! Plain HTTP to a server's client port: /health and /metrics.

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
