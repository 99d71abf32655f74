//! Crash safety: SIGKILL in the middle of a concurrent put load, several times;
//! every acknowledged put must be there after restart with the revision it was
//! acknowledged with. Plus start-up on a torn or corrupt WAL, and snapshots that
//! keep the WAL short.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::harness::{Engine, Kind, Server};

/// key → (value, revision the put was acknowledged with)
type Acked = Arc<Mutex<HashMap<String, (String, i64)>>>;

async fn load_until_killed(server: &mut Server, round: usize, acked: &Acked, kill_after: Duration) {
    let mut tasks = Vec::new();
    for c in 0..16 {
        let endpoint = server.endpoint();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = etcd_client::Client::connect([endpoint], None).await else {
                return 0;
            };
            let mut n = 0;
            for i in 0.. {
                let key = format!("r{round}/c{c}/k{i:05}");
                let value = format!("v{round}-{c}-{i}");
                match client.put(key.clone(), value.clone(), None).await {
                    Ok(resp) => {
                        let rev = resp.header().map_or(0, |h| h.revision());
                        acked.lock().insert(key, (value, rev));
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            n
        }));
    }
    tokio::time::sleep(kill_after).await;
    server.kill9();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    assert!(
        total > 0,
        "round {round}: the load made no progress before the kill"
    );
}

async fn verify(server: &Server, acked: &Acked) {
    let mut client = server.client().await;
    let expected = acked.lock().clone();
    let resp = client
        .get("r", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("range after restart");
    let found: HashMap<String, (String, i64, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                (
                    kv.value_str().unwrap().to_owned(),
                    kv.mod_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();
    for (key, (value, rev)) in &expected {
        let Some((v, mod_rev, version)) = found.get(key) else {
            panic!("acknowledged put of {key} (revision {rev}) lost");
        };
        assert_eq!(v, value, "{key}");
        assert_eq!(
            mod_rev, rev,
            "{key}: applied at another revision than acknowledged"
        );
        assert_eq!(*version, 1, "{key}: applied twice");
    }
    // One revision per put: nothing applied twice, no revision skipped.
    let mut revs: Vec<i64> = found.values().map(|(_, r, _)| *r).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), found.len(), "two keys share a revision");
    let header_rev = resp.header().unwrap().revision();
    assert_eq!(
        header_rev,
        found.len() as i64 + 1,
        "revisions are dense from 2"
    );
}

async fn sigkill_under_load_loses_no_acknowledged_put(engine: Engine) {
    // Small snapshots and segments so the kills also land around snapshotting
    // and log truncation.
    let mut server = Server::start_with(
        Kind::MetaStore(engine),
        &["--snapshot-count", "300", "--wal-segment-size", "65536"],
    );
    let acked: Acked = Arc::default();
    for round in 0..4 {
        let kill_after = Duration::from_millis(300 + 250 * round as u64);
        load_until_killed(&mut server, round, &acked, kill_after).await;
        server.restart();
        verify(&server, &acked).await;
    }
    let n = acked.lock().len();
    eprintln!("{n} acknowledged puts survived 4 SIGKILLs");
    assert!(n > 100, "too little load to prove anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_wal_and_restart_restores_everything() {
    let mut server = Server::start_with(
        Kind::MetaStore(Engine::Memory),
        &["--snapshot-count", "200", "--wal-segment-size", "16384"],
    );
    let mut client = server.client().await;
    for i in 0..1500 {
        client
            .put(format!("k{i:04}"), vec![b'x'; 100], None)
            .await
            .unwrap();
    }
    client.delete("k0000", None).await.unwrap();
    let snaps = std::fs::read_dir(server.data_dir().join("snap"))
        .unwrap()
        .count();
    assert!((1..=2).contains(&snaps), "{snaps} snapshot files");
    let segments = std::fs::read_dir(server.data_dir().join("wal"))
        .unwrap()
        .count();
    // 1500 puts of ~130 bytes would need ~15 segments of 16 KiB without purging.
    assert!(segments <= 6, "{segments} WAL segments remain");
    server.restart();
    let mut client = server.client().await;
    let (count, revision) = count_prefix(&mut client, "k").await;
    assert_eq!(count, 1499);
    assert_eq!(revision, 1502);
}

fn newest_segment(server: &Server) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(server.data_dir().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a WAL segment")
}

/// (keys under `prefix`, header revision) via a count-only range.
async fn count_prefix(client: &mut etcd_client::Client, prefix: &str) -> (i64, i64) {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let resp = client.get(prefix, Some(opts)).await.expect("count range");
    (resp.count(), resp.header().expect("a header").revision())
}

/// A byte inside the payload of the middle record of a segment (frames:
/// 8-byte segment magic, then `len u32 | crc u32 | hint u64 | kind | payload`
/// with `len` counting kind and payload).
fn middle_payload_byte(bytes: &[u8]) -> usize {
    let mut offsets = Vec::new();
    let mut at = 8;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        offsets.push((at, len));
        at += 16 + len;
    }
    assert!(offsets.len() > 10, "{} records", offsets.len());
    let (at, len) = offsets[offsets.len() / 2];
    at + 16 + len / 2
}

/// Where the records of a (zero-filled, preallocated) segment end.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Two shapes of a write cut short by a crash: the file ends inside the last
/// record, or the record's last bytes never left the preallocated zeros.
#[derive(Clone, Copy, Debug)]
enum Tear {
    Truncate,
    ZeroOut,
}

async fn torn_tail_case(tear: Tear) {
    let mut server = Server::start();
    let mut client = server.client().await;
    for i in 0..20 {
        client.put(format!("t{i}"), "v", None).await.unwrap();
    }
    server.kill9();
    let seg = newest_segment(&server);
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = data_end(&bytes);
    assert!(end > 3, "the segment holds records");
    match tear {
        Tear::Truncate => bytes.truncate(end - 3),
        Tear::ZeroOut => bytes[end - 3..end].fill(0),
    }
    std::fs::write(&seg, &bytes).unwrap();
    server.restart();
    let mut client = server.client().await;
    let (count, _) = count_prefix(&mut client, "t").await;
    // The torn record is dropped (it may be the last put or a hard state);
    // everything before it survives, and the member takes writes again.
    assert!(count >= 19, "{tear:?}: only {count} keys survived");
    client.put("after", "restart", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_truncated_and_earlier_writes_survive() {
    torn_tail_case(Tear::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_torn_inside_preallocated_space_is_repaired() {
    torn_tail_case(Tear::ZeroOut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_wal_record_refuses_to_start_naming_file_and_offset() {
    let mut server = Server::start();
    let mut client = server.client().await;
    for i in 0..50 {
        client.put(format!("c{i}"), "value", None).await.unwrap();
    }
    server.kill9();
    let seg = newest_segment(&server);
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a byte inside the payload of a record in the middle: records
    // follow it, so this is not a torn tail. (A flipped length field that
    // points past the end of the file would read as a torn write.)
    let mid = middle_payload_byte(&bytes);
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let out = server.run_to_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&name),
        "stderr does not name the file: {stderr}"
    );
    assert!(
        stderr.contains("offset"),
        "stderr does not name the offset: {stderr}"
    );
}

fn a_data_dir_of_another_engine_is_refused(engine: Engine) {
    let mut server = Server::start_on(engine);
    server.kill9();
    let other = engine.other();
    server.set_engine(other);
    let out = server.run_to_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another engine"), "{stderr}");
    // Not a known engine at all.
    std::fs::write(
        server.data_dir().join("metastore.meta"),
        "engine=other\nformat=1\n",
    )
    .unwrap();
    server.set_engine(engine);
    let out = server.run_to_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another engine"), "{stderr}");
}

/// Opens a stopped member's RocksDB databases from the test.
fn open_db(server: &Server) -> metastore::storage::rocks::Dbs {
    metastore::storage::rocks::open(server.data_dir(), false).expect("open the databases")
}

fn count_cf(db: &rocksdb::DB, name: &str) -> usize {
    let cf = db.cf_handle(name).expect("column family");
    db.iterator_cf(cf, rocksdb::IteratorMode::Start).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_truncates_its_raft_log_and_compaction_removes_versions() {
    let mut server = Server::start_with(
        Kind::MetaStore(Engine::Rocksdb),
        &[
            "--snapshot-count",
            "200",
            "--snapshot-catchup-entries",
            "50",
        ],
    );
    let mut client = server.client().await;
    // 1500 puts over 100 keys: 15 versions each.
    for i in 0..1500 {
        client
            .put(format!("k{:03}", i % 100), format!("v{i}"), None)
            .await
            .unwrap();
    }
    client.delete("k000", None).await.unwrap();
    server.stop();
    {
        let db = open_db(&server);
        let entries = count_cf(&db.raft, metastore::storage::rocks::CF_RAFT);
        // ~1503 entries were written; everything up to the last "snapshot"
        // (every 200 applied) but the 50 kept for followers catching up is
        // gone.
        assert!(entries <= 350, "{entries} raft entries remain");
        // 1500 versions + 1 tombstone, none compacted yet.
        assert_eq!(count_cf(&db.kv, metastore::storage::rocks::CF_KV), 1501);
    }
    server.restart();
    let mut client = server.client().await;
    let (count, revision) = count_prefix(&mut client, "k").await;
    assert_eq!((count, revision), (99, 1502));
    client.compact(revision, None).await.unwrap();
    server.stop();
    {
        let db = open_db(&server);
        // etcd keeps the newest version of each live key; every older
        // version is gone from RocksDB itself, and of k000 only its
        // deletion stays (it is at exactly the compaction revision, so a
        // watch from there is sent it; the next compaction removes it).
        assert_eq!(count_cf(&db.kv, metastore::storage::rocks::CF_KV), 100);
    }
    server.restart();
    let mut client = server.client().await;
    let resp = client.get("k042", None).await.unwrap();
    let kv = &resp.kvs()[0];
    assert_eq!(
        (kv.value_str().unwrap(), kv.version(), kv.mod_revision()),
        ("v1442", 15, 1444)
    );
    let err = client
        .get(
            "k042",
            Some(etcd_client::GetOptions::new().with_revision(1400)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_rocksdb_database_refuses_to_start() {
    let mut server = Server::start_on(Engine::Rocksdb);
    let mut client = server.client().await;
    for i in 0..20 {
        client.put(format!("d{i}"), "v", None).await.unwrap();
    }
    server.kill9();
    // A stored version that does not decode.
    {
        let db = open_db(&server);
        let cf = db.kv.cf_handle(metastore::storage::rocks::CF_KV).unwrap();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&5u64.to_be_bytes());
        key[8..].copy_from_slice(&7u64.to_be_bytes());
        db.kv.put_cf(cf, key, b"\xff\xff garbage").unwrap();
        metastore::storage::rocks::flush_kv(&db.kv).unwrap();
    }
    let out = server.run_to_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kv record 00000000000000050000000000000007"),
        "stderr does not name the record: {stderr}"
    );
    // RocksDB's own files damaged: its error, and no start.
    let current = server
        .data_dir()
        .join("rocksdb")
        .join("raft")
        .join("CURRENT");
    let good = std::fs::read(&current).unwrap();
    std::fs::write(&current, b"MANIFEST-999999\n").unwrap();
    let out = server.run_to_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open the RocksDB database"),
        "{stderr}"
    );
    std::fs::write(&current, good).unwrap();
    // No database at all where one was: never a silent empty store.
    std::fs::remove_dir_all(server.data_dir().join("rocksdb")).unwrap();
    let out = server.run_to_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no database"), "{stderr}");
}

engine_tests!(async: sigkill_under_load_loses_no_acknowledged_put);
engine_tests!(sync: a_data_dir_of_another_engine_is_refused);
