//! A disk that fills or fails (issue 16, item 7): the member's data dir on a
//! lossyfs disk (tests/it/lossy.rs) told to hold only so many bytes or to
//! fail fsync with EIO.
//!
//! - Below `--disk-reserve-bytes` of free space the member raises NOSPACE:
//!   writes are refused with etcd's error, reads still served, nothing
//!   lost; once space is back and the alarm disarmed, writes go on.
//! - With the check off, a disk that really fills (ENOSPC) or an fsync that
//!   fails (EIO) stops the member with exit code 2 and one clear log line;
//!   it never retries the fsync, and after a restart (with the unsynced
//!   bytes dropped) every acknowledged write is there.
//! - A snapshot that cannot be written removes its temporary file and is
//!   tried again later, not at every applied batch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{Engine, Kind, Server};
use crate::lossy::LossyDisk;

/// etcd's error for writes refused by a NOSPACE alarm.
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A member whose data dir is on `disk`, its log beside the mount.
fn member_on(disk: &LossyDisk, engine: Engine, extra: &[&str]) -> Server {
    let mut s = Server::unstarted(Kind::MetaStore(engine), "default", extra);
    s.dir = disk.path().join("data");
    s.log_file = Some(disk.path().with_extension("log"));
    s.spawn();
    s
}

fn put(s: &Server, key: &str, value: &str) -> Result<(), String> {
    let out = s.etcdctl(&["put", key, value]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn get(s: &Server, key: &str) -> String {
    let out = s.etcdctl(&["get", key, "--print-value-only"]);
    assert!(
        out.status.success(),
        "get {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every acknowledged key has its value.
fn assert_all_there(s: &Server, acked: &BTreeMap<String, String>) {
    for (k, v) in acked {
        assert_eq!(&get(s, k), v, "acknowledged {k} lost\n{}", s.log_tail_pub());
    }
}

/// Polls `f` every 100 ms for up to `within`.
fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The gRPC code and message a put gets through a real client (None: it
/// worked).
fn grpc_put_status(s: &Server) -> Option<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = s.client().await;
        match c.put("grpc", "v", None).await {
            Ok(_) => None,
            Err(etcd_client::Error::GRpcStatus(st)) => {
                Some((format!("{:?}", st.code()), st.message().to_owned()))
            }
            Err(e) => panic!("not a gRPC status: {e}"),
        }
    })
}

/// The member's Raft index (`etcdctl endpoint status`).
fn raft_index(s: &Server) -> u64 {
    let out = s.etcdctl(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    // etcd's proto names this field raftIndex (camelCase).
    v[0]["Status"]["raftIndex"]
        .as_u64()
        .unwrap_or_else(|| panic!("no raftIndex in {v}"))
}

/// Free space below the reserve raises NOSPACE through Raft: writes refused
/// (ResourceExhausted, etcd's message), reads served, health says so; with
/// space back, `alarm disarm` brings writes back and nothing was lost.
fn a_disk_below_its_reserve_raises_nospace_until_disarmed(engine: Engine) {
    let mut disk = LossyDisk::mount();
    let s = member_on(
        &disk,
        engine,
        &[
            "--disk-reserve-bytes",
            "2097152",
            "--wal-segment-size",
            "262144",
        ],
    );
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        put(&s, &k, &v).unwrap();
        acked.insert(k, v);
    }
    // 1 MiB left: under the 2 MiB reserve, yet room for what is in flight.
    disk.full("+1048576");
    let raised = wait_for(Duration::from_secs(20), || {
        String::from_utf8_lossy(&s.etcdctl(&["alarm", "list"]).stdout).contains("alarm:NOSPACE")
    });
    assert!(raised, "no NOSPACE alarm\n{}", s.log_tail_pub());
    // Refused before proposal: the Raft log does not grow.
    let index = raft_index(&s);
    for _ in 0..5 {
        let err = put(&s, "refused", "v").unwrap_err();
        assert!(err.contains(NOSPACE), "{err}");
    }
    assert_eq!(raft_index(&s), index, "refused puts went through Raft");
    let (code, message) = grpc_put_status(&s).expect("a put while NOSPACE");
    assert_eq!(code, "ResourceExhausted");
    assert_eq!(message, NOSPACE);
    // Reads are served, deletes too.
    assert_eq!(get(&s, "k00"), "v0");
    assert!(s.etcdctl(&["del", "k19"]).status.success());
    acked.remove("k19");
    let (status, body) = crate::harness::http_get(s.port, "/health").unwrap();
    assert!(status.contains("503"), "{status} {body}");
    // Space back; still refused until the operator disarms.
    disk.full("off");
    assert!(put(&s, "refused", "v").unwrap_err().contains(NOSPACE));
    assert!(s.etcdctl(&["alarm", "disarm"]).status.success());
    // The next check sees enough room: the alarm stays down.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        String::from_utf8_lossy(&s.etcdctl(&["alarm", "list"]).stdout),
        ""
    );
    put(&s, "after", "v").unwrap();
    acked.insert("after".into(), "v".into());
    assert_all_there(&s, &acked);
    assert_eq!(get(&s, "refused"), "", "a refused write is not there");
}

engine_tests!(sync: a_disk_below_its_reserve_raises_nospace_until_disarmed);

/// The one clear line a stopped member logs, and its count.
fn fatal_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("stopping this member"))
        .collect()
}

/// 1 KiB that does not compress (RocksDB's LZ4 would shrink a repeated
/// byte to nothing), different for each `seed`.
fn incompressible(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Puts 1 KiB values until one fails or `limit` is reached; the acked ones
/// are added to `acked`. Returns the error of the failed put, if any.
fn put_until_failure(
    s: &Server,
    acked: &mut BTreeMap<String, String>,
    prefix: &str,
    limit: usize,
) -> Option<String> {
    for i in 0..limit {
        let k = format!("{prefix}{i:05}");
        let value = incompressible(acked.len() as u64);
        match put(s, &k, &value) {
            Ok(()) => {
                acked.insert(k, value);
            }
            Err(e) => return Some(e),
        }
    }
    None
}

/// The member stopped with code 2 after exactly one fatal log line that
/// names `cause`.
fn assert_stopped_cleanly(s: &mut Server, cause: &str) {
    let status = s
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the member kept running\n{}", s.log_tail_pub()));
    assert_eq!(status.code(), Some(2), "{status}\n{}", s.log_tail_pub());
    let log = s.log();
    let lines = fatal_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(cause), "{}", lines[0]);
}

/// With the reserve check off, a disk that fills up (ENOSPC on the WAL or
/// the engine) stops the member with exit code 2; with space back it
/// restarts and every acknowledged write is there.
fn enospc_stops_the_member_and_keeps_every_acked_write(engine: Engine) {
    let mut disk = LossyDisk::mount();
    let mut s = member_on(
        &disk,
        engine,
        &[
            "--disk-reserve-bytes",
            "0",
            "--wal-segment-size",
            "65536",
            "--snapshot-count",
            "100000",
        ],
    );
    let mut acked = BTreeMap::new();
    assert!(put_until_failure(&s, &mut acked, "a", 20).is_none());
    disk.full("+65536");
    let failed = put_until_failure(&s, &mut acked, "b", 1000);
    assert!(
        failed.is_some(),
        "1,000 puts of 1 KiB fitted in 64 KiB more?\n{}",
        s.log_tail_pub()
    );
    assert_stopped_cleanly(&mut s, "No space left on device");
    disk.full("off");
    s.spawn();
    assert_all_there(&s, &acked);
    put(&s, "after", "v").unwrap();
}

engine_tests!(sync: enospc_stops_the_member_and_keeps_every_acked_write);

/// EIO from one fsync of the WAL stops the member with exit code 2: it
/// does not retry (a retry would succeed here and acknowledge writes a
/// real disk may have dropped). After a power cut and a restart every
/// acknowledged write is there.
fn eio_on_fsync_stops_the_member_and_keeps_every_acked_write(engine: Engine) {
    let mut disk = LossyDisk::mount();
    let mut s = member_on(
        &disk,
        engine,
        &["--disk-reserve-bytes", "0", "--snapshot-count", "100000"],
    );
    let mut acked = BTreeMap::new();
    assert!(put_until_failure(&s, &mut acked, "a", 20).is_none());
    disk.eio("fsync once");
    let failed = put(&s, "lost", "v");
    assert!(failed.is_err(), "a put acked across a failed fsync");
    assert_stopped_cleanly(&mut s, "Raft log write failed");
    // Whatever the failed fsync did not make durable is gone.
    disk.freeze();
    disk.cut();
    s.spawn();
    assert_all_there(&s, &acked);
    put(&s, "after", "v").unwrap();
}

engine_tests!(sync: eio_on_fsync_stops_the_member_and_keeps_every_acked_write);

/// `.snap.tmp` files in the memory engine's snapshot directory.
fn temp_snapshots(data: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("snap"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// A snapshot that cannot be written on a full disk (memory engine: the
/// rocksdb engine's checkpoint is a flush, no file of its own) leaves no
/// temporary file, is retried after 5 s (not at every applied batch), while
/// writes go on in the WAL's preallocated segment; with space back the
/// next try succeeds.
#[test]
fn a_snapshot_on_a_full_disk_leaves_no_temp_file_and_is_retried_later() {
    let mut disk = LossyDisk::mount();
    let s = member_on(
        &disk,
        Engine::Memory,
        &[
            "--disk-reserve-bytes",
            "0",
            "--snapshot-count",
            "40",
            "--wal-segment-size",
            "8388608",
        ],
    );
    let big = "y".repeat(8192);
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        put(&s, &format!("big{i:02}"), &big).unwrap();
        acked.insert(format!("big{i:02}"), big.clone());
    }
    // No room for a ~240 KiB image; the WAL segment is written in place.
    disk.full("+16384");
    let failures = |s: &Server| s.log().matches("snapshot failed").count();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(8) {
        put(&s, &format!("small{i:04}"), "v").unwrap();
        acked.insert(format!("small{i:04}"), "v".into());
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = failures(&s);
    assert!(
        (1..=2).contains(&failed),
        "{failed} failed snapshots in 8 s of puts ({i} puts)\n{}",
        s.log_tail_pub()
    );
    assert!(
        wait_for(Duration::from_secs(3), || temp_snapshots(&s.dir).is_empty()),
        "temp files left: {:?}",
        temp_snapshots(&s.dir)
    );
    disk.full("off");
    let saved = wait_for(Duration::from_secs(20), || {
        let _ = put(&s, "tick", "v");
        s.log().contains("snapshot saved")
    });
    assert!(
        saved,
        "no snapshot once space was back\n{}",
        s.log_tail_pub()
    );
    assert_all_there(&s, &acked);
}
