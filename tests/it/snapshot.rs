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
                kv.value,
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
/// (and survives a restart).
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
    let etcd = Server::start_with(Kind::Etcd, &[]);
    let mut client = etcd.client().await;
    history(&mut client, "h", 120, 30).await;
    let lease = client.lease_grant(600, None).await.unwrap().id();
    for k in ["leased1", "leased2"] {
        client
            .put(
                k,
                "x",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
    }
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put("t1", "a", None),
        etcd_client::TxnOp::put("t2", "b", None),
    ]);
    client.txn(txn).await.unwrap();
    client.compact(100, None).await.unwrap();
    client.put("after-compaction", "y", None).await.unwrap();
    client.delete("h005", None).await.unwrap();
    let (now, _) = everything(&etcd).await;
    // Users, roles and permissions (auth's buckets; auth stays off so the
    // reads below need no credentials).
    for line in [
        "user add root:rootpw",
        "user grant-role root root",
        "user add alice:alicepw",
        "role add app",
        "role grant-permission app read --prefix h",
        "user grant-role alice app",
    ] {
        let out = etcd.etcdctl(&line.split(' ').collect::<Vec<_>>());
        assert!(out.status.success(), "{line}: {out:?}");
    }
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
    // The same store now and at every revision since the compaction.
    for rev in std::iter::once(0).chain(100..=now) {
        assert_eq!(
            everything_at(&ms, rev).await.unwrap(),
            everything_at(&etcd, rev).await.unwrap(),
            "at revision {rev}"
        );
    }
    let (ms_now, _) = everything(&ms).await;
    assert_eq!(ms_now, now);
    for s in [&etcd, &ms] {
        let err = everything_at(s, 99).await.unwrap_err();
        assert!(err.contains("compacted"), "{err}");
    }
    // Leases: the same IDs, with their keys.
    let ttl = |s: &Server| {
        let out = s.etcdctl(&["lease", "timetolive", &format!("{lease:x}"), "--keys"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // etcd lists them in Go map order: compare as sets.
        let mut keys: Vec<String> = text
            .split("attached keys")
            .nth(1)
            .unwrap_or("")
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(ttl(&ms), ttl(&etcd));
    assert_eq!(ttl(&ms), ["leased1", "leased2"]);
    let list =
        |s: &Server| String::from_utf8_lossy(&s.etcdctl(&["lease", "list"]).stdout).into_owned();
    assert_eq!(list(&ms), list(&etcd));
    // It takes writes where etcd left off.
    let mut mc = ms.client().await;
    let put = mc.put("new", "z", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), now + 1);
    // The users and roles came along, passwords included: with auth on,
    // alice reads what her role allows, and nothing else.
    let text =
        |s: &Server, args: &[&str]| String::from_utf8_lossy(&s.etcdctl(args).stdout).into_owned();
    for args in [
        &["user", "list"][..],
        &["role", "get", "app"],
        &["user", "get", "alice"],
    ] {
        assert_eq!(text(&ms, args), text(&etcd, args), "{args:?}");
    }
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

engine_tests!(async: an_etcd_snapshot_restores_into_metastore);
