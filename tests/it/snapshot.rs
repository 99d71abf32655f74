//! Maintenance.Snapshot streams the applied state as etcd's data file (a
//! bbolt database): `etcdctl snapshot save` stores it, it holds exactly the
//! state the server answers with, etcd's tools read and restore it, and
//! `metastore --restore-image` takes it as well as etcd's own.

use metastore::storage::image::read_into_store;
use metastore::storage::RangeOptions;
use sha2::{Digest, Sha256};

use crate::harness::{Engine, Kind, Server};

/// key, value, create, mod revision, version
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// `puts` puts over `keys` keys `{prefix}000`.. (values `v{i}`, so keys have
/// several versions), then a delete of the ten keys `{prefix}01x`.
async fn history(client: &mut etcd_client::Client, prefix: &str, puts: usize, keys: usize) {
    for i in 0..puts {
        client
            .put(format!("{prefix}{:03}", i % keys), format!("v{i}"), None)
            .await
            .unwrap();
    }
    client
        .delete(
            format!("{prefix}01"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

async fn etcdctl_snapshot_save_stores_a_consistent_image(engine: Engine) {
    let server = Server::start_on(engine);
    let mut client = server.client().await;
    history(&mut client, "s", 400, 150).await;
    let rev = client
        .get("s", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(rev - 100, None).await.unwrap();
    let live = client
        .get("s", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();

    // Defragment (the rocksdb engine compacts its files) changes nothing visible.
    let out = server.etcdctl(&["defrag"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Finished defragmenting etcd member"),
        "{text}"
    );
    let again = client
        .get("s", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let flat = |r: &etcd_client::GetResponse| -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
            .collect()
    };
    assert_eq!(flat(&again), flat(&live));

    let path = server.data_dir().with_extension("image");
    let out = server.etcdctl(&["snapshot", "save", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Snapshot saved at"), "{text}");

    // etcd's framing: 512-byte pages, then the SHA-256 of them.
    let bytes = std::fs::read(&path).unwrap();
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    assert_eq!(body.len() % 512, 0);
    assert_eq!(sum, Sha256::digest(body).as_slice());
    // etcd's data file: our reader turns it back into an image.
    let mut image = Vec::new();
    metastore::storage::bbolt::convert(body, &mut image).unwrap();
    let (header, store) = read_into_store(image.as_slice(), true).unwrap();
    assert_eq!(header.current_rev, rev);
    assert_eq!(header.compact_rev, rev - 100);
    let all = store.range(b"s", b"t", &RangeOptions::default()).unwrap();
    let got: Vec<Row> = all
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value.to_vec(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    let want: Vec<Row> = live
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    assert_eq!(got.len(), 140);
    assert_eq!(got, want);
    // History after the compaction point is in the image too.
    let old = store
        .range(
            b"s149",
            &[],
            &RangeOptions {
                rev: rev - 50,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(old.kvs.len(), 1);
}

/// Every key with its value, create and mod revision and version.
async fn everything(server: &Server) -> (i64, Vec<(String, String, i64, i64, i64)>) {
    let mut client = server.client().await;
    let resp = client
        .get("", Some(etcd_client::GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let rows = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    (resp.header().unwrap().revision(), rows)
}

/// `etcdctl snapshot save` from a member on `engine`, then a new member on
/// the other engine started with `--restore-image`: the same keys, values,
/// revisions and versions, the same compaction point, and it takes writes
/// (and survives a restart). The state image older versions streamed
/// instead restores the same.
async fn an_image_restores_a_new_member_on_the_other_engine(engine: Engine) {
    let source = Server::start_on(engine);
    let mut client = source.client().await;
    history(&mut client, "r", 300, 90).await;
    client.compact(250, None).await.unwrap();
    let before = everything(&source).await;
    let path = source.data_dir().with_extension("image");
    let out = source.etcdctl(&["snapshot", "save", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A damaged image is refused and leaves no data dir behind.
    let broken = source.data_dir().with_extension("broken");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x10;
    std::fs::write(&broken, &bytes).unwrap();
    let fresh_dir = source.data_dir().with_extension("fresh");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["--engine", engine.name(), "--data-dir"])
        .arg(&fresh_dir)
        .arg("--restore-image")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("image:"), "{stderr}");
    assert!(
        !fresh_dir.exists(),
        "a failed restore left {}",
        fresh_dir.display()
    );

    let other = engine.other();
    let image = path.to_str().unwrap();
    let mut restored = Server::start_with(Kind::MetaStore(other), &["--restore-image", image]);
    assert_eq!(everything(&restored).await, before);
    // What older versions streamed (the state image, in etcd's framing)
    // restores the same.
    let bytes = std::fs::read(&path).unwrap();
    let mut old = Vec::new();
    metastore::storage::bbolt::convert(&bytes[..bytes.len() - 32], &mut old).unwrap();
    assert!(old.starts_with(b"MSIMAGE4"));
    old.resize(old.len().div_ceil(512) * 512, 0);
    let sum = Sha256::digest(&old);
    old.extend_from_slice(&sum);
    let old_path = source.data_dir().with_extension("old-image");
    std::fs::write(&old_path, &old).unwrap();
    let from_old = Server::start_with(
        Kind::MetaStore(engine),
        &["--restore-image", old_path.to_str().unwrap()],
    );
    assert_eq!(everything(&from_old).await, before);
    drop(from_old);
    let mut client = restored.client().await;
    let err = client
        .get(
            "r050",
            Some(etcd_client::GetOptions::new().with_revision(200)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");
    let put = client.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.0 + 1);
    // Restoring over a member's data is refused; restarting it without the
    // flag keeps everything.
    let out = restored.run_to_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a new, empty data dir"), "{stderr}");
    restored.set_extra(&[]);
    restored.restart();
    let (rev, rows) = everything(&restored).await;
    assert_eq!(rev, before.0 + 1);
    assert_eq!(rows.len(), before.1.len() + 1);
}

engine_tests!(async: etcdctl_snapshot_save_stores_a_consistent_image, an_image_restores_a_new_member_on_the_other_engine);

/// Every key as of `rev` (0: now), as rows.
async fn everything_at(
    server: &Server,
    rev: i64,
) -> Result<Vec<(String, String, i64, i64, i64, i64)>, String> {
    let mut client = server.client().await;
    let resp = client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_from_key()
                    .with_revision(rev),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect())
}

/// A snapshot `etcdctl snapshot save` took from a real etcd 3.4 (a bbolt
/// file) restores into MetaStore with `--restore-image`: every key, value,
/// revision, version and lease, the history after the compaction point,
/// the compaction point itself; and the member takes writes after it.
async fn an_etcd_snapshot_restores_into_metastore(engine: Engine) {
    restore_from(Kind::Etcd, engine).await
}

/// The same from etcd 3.5.1 (its bbolt file carries 3.5's buckets and
/// `meta` keys).
async fn an_etcd35_snapshot_restores_into_metastore(engine: Engine) {
    if etcd35().is_none() {
        return;
    }
    restore_from(Kind::Etcd35, engine).await
}

async fn restore_from(source: Kind, engine: Engine) {
    let etcd = Server::start_with(source, &[]);
    let (now, leases) = load_everything(&etcd).await;
    let path = etcd.data_dir().with_extension("etcd-snapshot");
    let out = etcd.etcdctl(&["snapshot", "save", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ms = Server::start_with(
        Kind::MetaStore(engine),
        &["--restore-image", path.to_str().unwrap()],
    );
    same_state(&etcd, &ms, now, leases).await;
    // The users came along with their passwords: with auth on, alice reads
    // what her role allows, and nothing else.
    assert!(ms.etcdctl(&["auth", "enable"]).status.success());
    assert!(ms
        .etcdctl(&["--user=alice:alicepw", "get", "h001"])
        .status
        .success());
    let denied = ms.etcdctl(&["--user=alice:alicepw", "get", "t1"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("permission denied"));
    // A damaged file is refused, leaving no data dir.
    let broken = etcd.data_dir().with_extension("etcd-broken");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(8192);
    std::fs::write(&broken, &bytes).unwrap();
    let fresh = etcd.data_dir().with_extension("fresh");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["--engine", engine.name(), "--data-dir"])
        .arg(&fresh)
        .arg("--restore-image")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcd data file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!fresh.exists());
}

engine_tests!(async: an_etcd_snapshot_restores_into_metastore, an_etcd35_snapshot_restores_into_metastore);

/// Keys with several revisions, deletions and a txn, a lease holding two
/// keys and one holding none, a compaction, a user and a role (auth off):
/// all a snapshot must carry over. Returns the revision and the leases.
async fn load_everything(server: &Server) -> (i64, [i64; 2]) {
    let mut client = server.client().await;
    history(&mut client, "h", 120, 30).await;
    let leased = client.lease_grant(600, None).await.unwrap().id();
    let idle = client.lease_grant(300, None).await.unwrap().id();
    for k in ["leased1", "leased2"] {
        let opts = etcd_client::PutOptions::new().with_lease(leased);
        client.put(k, "x", Some(opts)).await.unwrap();
    }
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put("t1", "a", None),
        etcd_client::TxnOp::put("t2", "b", None),
    ]);
    client.txn(txn).await.unwrap();
    client.compact(100, None).await.unwrap();
    client.put("after-compaction", "y", None).await.unwrap();
    client.delete("h005", None).await.unwrap();
    for line in [
        "user add root:rootpw",
        "user grant-role root root",
        "user add alice:alicepw",
        "role add app",
        "role grant-permission app read --prefix h",
        "user grant-role alice app",
    ] {
        let out = server.etcdctl(&line.split(' ').collect::<Vec<_>>());
        assert!(out.status.success(), "{line}: {out:?}");
    }
    (everything(server).await.0, [leased, idle])
}

/// `lease timetolive --keys` of `id`: the granted TTL and the keys.
fn lease_of(s: &Server, id: i64) -> (String, Vec<String>) {
    let out = s.etcdctl(&["lease", "timetolive", &format!("{id:x}"), "--keys"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let granted = text
        .split("granted with ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned();
    let mut keys: Vec<String> = text
        .split("attached keys")
        .nth(1)
        .unwrap_or("")
        .trim()
        .trim_matches(|c| c == '(' || c == ')' || c == '[' || c == ']')
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    keys.sort();
    (granted, keys)
}

/// `restored`, started from a snapshot of `source` after
/// [`load_everything`] (which returned `now` and `leases`), answers as
/// `source` does: every key at every revision since the compaction
/// (values, create and mod revisions, versions, leases), the current
/// revision, the compaction point, the leases with their TTLs and keys, the
/// users and roles; and it takes writes from where `source` was.
async fn same_state(source: &Server, restored: &Server, now: i64, leases: [i64; 2]) {
    for rev in std::iter::once(0).chain(100..=now) {
        assert_eq!(
            everything_at(restored, rev).await.unwrap(),
            everything_at(source, rev).await.unwrap(),
            "at revision {rev}"
        );
    }
    assert_eq!(everything(restored).await.0, now);
    for s in [source, restored] {
        let err = everything_at(s, 99).await.unwrap_err();
        assert!(
            err.contains("required revision has been compacted"),
            "{err}"
        );
    }
    let list = |s: &Server| {
        let out = s.etcdctl(&["lease", "list"]);
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(list(restored), list(source));
    assert_eq!(lease_of(restored, leases[0]), lease_of(source, leases[0]));
    assert_eq!(
        lease_of(restored, leases[0]),
        (
            "TTL(600s)".to_owned(),
            vec!["leased1".into(), "leased2".into()]
        )
    );
    assert_eq!(
        lease_of(restored, leases[1]),
        ("TTL(300s)".to_owned(), vec![])
    );
    let text =
        |s: &Server, args: &[&str]| String::from_utf8_lossy(&s.etcdctl(args).stdout).into_owned();
    for args in [
        &["user", "list"][..],
        &["role", "list"],
        &["role", "get", "app"],
        &["user", "get", "alice"],
    ] {
        assert_eq!(text(restored, args), text(source, args), "{args:?}");
    }
    let mut client = restored.client().await;
    let put = client.put("new", "z", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), now + 1);
}

/// etcd 3.5.1's binaries, or None where they are not installed (outside
/// CI; in CI, scripts/setup.sh fetched them and their absence fails).
fn etcd35() -> Option<std::path::PathBuf> {
    let dir = crate::harness::etcd35_dir();
    if dir.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd 3.5.1 missing: run scripts/setup.sh"
        );
        eprintln!("etcd 3.5.1 not installed (scripts/setup.sh): its part is skipped");
    }
    dir
}

/// `snapshot status` of `path` with the etcdctl (3.4) or etcdutl (3.5) at
/// `tool`: (revision, total keys).
fn snapshot_status(tool: &std::path::Path, path: &std::path::Path) -> (i64, u64) {
    let out = std::process::Command::new(tool)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["revision"].as_i64().unwrap(),
        v["totalKey"].as_u64().unwrap(),
    )
}

/// A MetaStore snapshot is one of etcd's: `etcdctl snapshot status` (3.4)
/// and `etcdutl snapshot status` (3.5) read its revision and key count;
/// `etcdctl snapshot restore` (3.4) and `etcdutl snapshot restore` (3.5)
/// restore it, and etcd started on it answers as MetaStore did.
async fn a_metastore_snapshot_restores_into_etcd(engine: Engine) {
    let ms = Server::start_on(engine);
    let (now, leases) = load_everything(&ms).await;
    let path = ms.data_dir().with_extension("snapshot.db");
    let out = ms.etcdctl(&["snapshot", "save", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    // What etcd counts: every entry of every bucket. Besides the versions,
    // meta (consistent_index, term, confState and the two compaction
    // revisions), two leases, authRevision (auth is off: no authEnabled),
    // two users, one role, one member and the cluster version.
    let status = snapshot_status("etcdctl".as_ref(), &path);
    let etcd35 = etcd35();
    let status35 = etcd35
        .as_ref()
        .map(|dir| snapshot_status(&dir.join("etcdutl"), &path));
    let bytes = std::fs::read(&path).unwrap();
    let mut image = Vec::new();
    let c = metastore::storage::bbolt::convert(&bytes[..bytes.len() - 32], &mut image).unwrap();
    let want = (now, c.versions + 5 + 2 + 1 + 2 + 1 + 1 + 1);
    assert_eq!(status, want);
    if let Some(status35) = status35 {
        assert_eq!(status35, want);
    }

    let restore = |tool: &std::path::Path, s: &Server| {
        let out = std::process::Command::new(tool)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&path)
            .arg("--data-dir")
            .arg(s.data_dir())
            .args(["--name", &s.name])
            .args(["--initial-cluster", &format!("{}={}", s.name, s.peer_url())])
            .args(["--initial-advertise-peer-urls", &s.peer_url()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let etcd = Server::start_restored(Kind::Etcd, |s| restore("etcdctl".as_ref(), s));
    same_state(&ms, &etcd, now, leases).await;
    if let Some(dir) = &etcd35 {
        let etcd = Server::start_restored(Kind::Etcd35, |s| restore(&dir.join("etcdutl"), s));
        same_state(&ms, &etcd, now, leases).await;
    }
    // And back into MetaStore, on the other engine.
    let image = path.to_str().unwrap();
    let back = Server::start_with(Kind::MetaStore(engine.other()), &["--restore-image", image]);
    same_state(&ms, &back, now, leases).await;

    // With auth on, the snapshot carries the switch: alice reads what her
    // role allows and nothing else, in etcd and in MetaStore.
    assert!(ms.etcdctl(&["auth", "enable"]).status.success());
    let out = ms.etcdctl(&["--user=root:rootpw", "snapshot", "save", image]);
    assert!(out.status.success(), "{out:?}");
    let etcd = Server::start_restored(Kind::Etcd, |s| restore("etcdctl".as_ref(), s));
    let back = Server::start_with(Kind::MetaStore(engine.other()), &["--restore-image", image]);
    for s in [&etcd, &back] {
        let anonymous = s.etcdctl(&["get", "h001"]);
        assert!(!anonymous.status.success(), "auth is on: {anonymous:?}");
        let allowed = s.etcdctl(&["--user=alice:alicepw", "get", "h001"]);
        assert!(String::from_utf8_lossy(&allowed.stdout).contains("v91"));
        let denied = s.etcdctl(&["--user=alice:alicepw", "get", "t1"]);
        assert!(String::from_utf8_lossy(&denied.stderr).contains("permission denied"));
    }
}

/// The snapshot's temp file in the data dir (unlinked as soon as it is
/// created) is open while the snapshot streams, and closed once the stream
/// completed or the client went away halfway; no named temp file is left.
/// The stream's header and remaining_bytes are etcd's.
async fn the_snapshot_temp_file_does_not_outlive_its_stream(engine: Engine) {
    let server = Server::start_on(engine);
    let mut client = server.client().await;
    for i in 0..300 {
        client
            .put(format!("big{i:03}"), vec![b'v'; 2048], None)
            .await
            .unwrap();
    }
    let rev = everything(&server).await.0;
    let pid = server.pid().unwrap();
    let dir = server.data_dir().canonicalize().unwrap();
    let open_temp_files = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.starts_with(dir.to_str().unwrap()) && p.contains("snapshot-"))
            .count()
    };
    let named_temp_files = || {
        let mut stack = vec![dir.clone()];
        let mut found = Vec::new();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                // The memory WAL keeps its next segment ready under a
                // temporary name (a "spare"): by design, not the snapshot's.
                if p.is_dir() && !p.ends_with("wal") {
                    stack.push(p);
                } else if p.is_file() && p.to_string_lossy().ends_with(".tmp") {
                    found.push(p);
                }
            }
        }
        found
    };
    let gone_within = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while open_temp_files() > 0 {
            assert!(std::time::Instant::now() < deadline, "{what}: still open");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            named_temp_files(),
            Vec::<std::path::PathBuf>::new(),
            "{what}"
        );
    };

    // Read to the end.
    let mut stream = client.snapshot().await.unwrap();
    let mut body = Vec::new();
    let mut whole = None;
    let mut last = None;
    while let Some(resp) = stream.message().await.unwrap() {
        if whole.is_none() {
            assert_eq!(open_temp_files(), 1, "the stream reads its temp file");
        }
        assert_eq!(resp.header().unwrap().revision(), rev);
        body.extend_from_slice(resp.blob());
        // remaining_bytes: what is still to come after this message.
        let total = body.len() as u64 + resp.remaining_bytes();
        assert_eq!(*whole.get_or_insert(total), total);
        last = Some(resp.remaining_bytes());
    }
    assert_eq!(last, Some(0));
    assert_eq!(Some(body.len() as u64), whole);
    assert_eq!(body.len() % 512, 32, "padding to 512 bytes, then the hash");
    let (db, sum) = body.split_at(body.len() - 32);
    assert_eq!(sum, Sha256::digest(db).as_slice());
    assert_eq!(&db[16..20], &0xED0C_DAEDu32.to_le_bytes(), "a bbolt file");
    assert!(db.len() > 600_000, "many chunks: {}", db.len());
    gone_within("after a completed stream");

    // Go away after the first chunk.
    let mut stream = client.snapshot().await.unwrap();
    let resp = stream.message().await.unwrap().unwrap();
    assert!(resp.remaining_bytes() > 500_000);
    assert_eq!(open_temp_files(), 1);
    drop(stream);
    drop(client);
    gone_within("after the client went away");
}

engine_tests!(async: a_metastore_snapshot_restores_into_etcd, the_snapshot_temp_file_does_not_outlive_its_stream);
