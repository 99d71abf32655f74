//! What kube-apiserver's storage layer does to etcd, done to etcd 3.4 and
//! MetaStore side by side (see `diff`): creates as Txn(mod_revision == 0),
//! optimistic updates and deletes as Txn(mod_revision == seen) else Get,
//! gets, count-only ranges, paginated LISTs (limit 500, continue from the
//! last key + "\0" at the first page's revision, a compacted continue
//! failing), event keys on one shared lease, the compaction CAS on
//! `compact_rev_key`, and the watch the apiserver's cache opens from a
//! LIST's revision + 1 with prev_kv and progress_notify. Then the version
//! gate and the progress requests the apiserver relies on (MetaStore alone:
//! the etcd binaries here predate 3.5.13's progress fixes).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
};
use metastore::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use metastore::proto::etcdserverpb::watch_request::RequestUnion;
use metastore::proto::etcdserverpb::{
    RangeRequest, StatusRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use metastore::proto::mvccpb;

use crate::diff::{put_with, txn, Both, Op, Out, COMPACTED};
use crate::harness::{http_get, Engine, Pair, Server};
use crate::watch::{prefix, RawWatch};

/// The end of the range of every key under `p`.
fn prefix_end(p: &str) -> Vec<u8> {
    metastore::api::concurrency::prefix_end(p.as_bytes())
}

fn object(resource: &str, ns: &str, name: &str) -> String {
    format!("/registry/{resource}/{ns}/{name}")
}

/// A value of 1-4 KiB, different for every (key, generation).
fn value(key: &str, generation: u32) -> Vec<u8> {
    let len = 1024 + (key.len() * 97 + generation as usize * 389) % 3072;
    let seed = format!("{key}#{generation};");
    seed.bytes().cycle().take(len).collect()
}

/// The apiserver's create: put only if the key does not exist.
fn create(key: &str, v: Vec<u8>, lease: Option<i64>) -> Op {
    let opts = lease.map(|id| PutOptions::new().with_lease(id));
    txn(Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, v, opts)])
        .or_else([TxnOp::get(key, None)]))
}

/// The apiserver's GuaranteedUpdate: put only if nobody changed the key
/// since `seen`; else read it back to retry.
fn update(key: &str, seen: i64, v: Vec<u8>) -> Op {
    txn(Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, seen)])
        .and_then([TxnOp::put(key, v, None)])
        .or_else([TxnOp::get(key, None)]))
}

/// The apiserver's conditional delete.
fn delete(key: &str, seen: i64) -> Op {
    txn(Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, seen)])
        .and_then([TxnOp::delete(
            key,
            Some(DeleteOptions::new().with_prev_key()),
        )])
        .or_else([TxnOp::get(key, None)]))
}

/// One LIST page, as the apiserver's `GetList` asks for it.
fn page(key: Vec<u8>, end: Vec<u8>, revision: i64) -> Op {
    Op::RawGet(RangeRequest {
        key,
        range_end: end,
        limit: 500,
        revision,
        ..Default::default()
    })
}

/// The mod revision of the key a txn's else-branch Get read.
fn current_mod(out: &Out) -> i64 {
    match &out.ops()[0] {
        Out::Get { kvs, .. } => kvs.first().map_or(0, |kv| kv.modr),
        other => panic!("not a get: {other:?}"),
    }
}

/// The apiserver's compaction step: claim the round with a CAS on
/// `compact_rev_key` (its version is the round), then compact.
fn compact_claim(seen_version: i64, rev: i64) -> Op {
    txn(Txn::new()
        .when([Compare::version(
            "compact_rev_key",
            CompareOp::Equal,
            seen_version,
        )])
        .and_then([TxnOp::put("compact_rev_key", rev.to_string(), None)])
        .or_else([TxnOp::get("compact_rev_key", None)]))
}

/// A watch event as a client sees it (what both servers must agree on).
#[derive(Debug, PartialEq, Eq)]
struct Ev {
    put: bool,
    kv: (Vec<u8>, i64, i64, i64, usize),
    prev: Option<(Vec<u8>, i64, i64, usize)>,
}

fn ev(e: &mvccpb::Event) -> Ev {
    let kv = e.kv.as_ref().expect("an event carries its kv");
    Ev {
        put: e.r#type == mvccpb::event::EventType::Put as i32,
        kv: (
            kv.key.clone(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.len(),
        ),
        prev: e
            .prev_kv
            .as_ref()
            .map(|p| (p.value.to_vec(), p.mod_revision, p.version, p.value.len())),
    }
}

/// Reads `n` events (progress notifications and the created response
/// skipped) from a stream with one watcher.
async fn events(w: &mut RawWatch, n: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = w.next().await;
        assert!(!r.canceled, "the watch was canceled: {r:?}");
        out.extend(r.events.iter().map(ev));
    }
    out
}

/// The watch the apiserver's cache opens on a resource.
fn cache_watch(resource_prefix: &str, from: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        start_revision: from,
        prev_kv: true,
        progress_notify: true,
        ..prefix(resource_prefix)
    }
}

async fn the_apiservers_storage_calls_answer_as_etcds(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    let namespaces = ["default", "kube-system", "team-a"];
    // 1. Creates: 420 pods and 60 configmaps in each namespace (1,260 pods:
    // three LIST pages of 500).
    let mut ops = Vec::new();
    for ns in namespaces {
        for i in 0..420 {
            let k = object("pods", ns, &format!("pod-{i:04}"));
            ops.push(create(&k, value(&k, 0), None));
        }
        for i in 0..60 {
            let k = object("configmaps", ns, &format!("cm-{i:02}"));
            ops.push(create(&k, value(&k, 0), None));
        }
    }
    let outs = both.run(&ops).await;
    assert!(outs.iter().all(Out::succeeded));
    // A second create of an existing object fails and reads it.
    let pod = object("pods", "default", "pod-0007");
    let again = both.one(create(&pod, value(&pod, 9), None)).await;
    assert!(!again.succeeded());
    let mut seen = current_mod(&again);

    // 2. GuaranteedUpdate: an update with the right revision, one with a
    // stale revision (fails, returns the object), the retry.
    let ok = both.one(update(&pod, seen, value(&pod, 1))).await;
    assert!(ok.succeeded());
    let stale = both.one(update(&pod, seen, value(&pod, 2))).await;
    assert!(!stale.succeeded());
    seen = current_mod(&stale);
    assert_eq!(seen, ok.rev());
    assert!(both
        .one(update(&pod, seen, value(&pod, 2)))
        .await
        .succeeded());
    // Conditional deletes: a stale one, the right one, one of a missing
    // object.
    let gone = object("pods", "team-a", "pod-0100");
    let read = both
        .one(Op::Get(crate::diff::B(gone.clone().into_bytes()), None))
        .await;
    let gone_rev = match &read {
        Out::Get { kvs, .. } => kvs[0].modr,
        other => panic!("{other:?}"),
    };
    assert!(!both.one(delete(&gone, gone_rev - 1)).await.succeeded());
    assert!(both.one(delete(&gone, gone_rev)).await.succeeded());
    assert!(!both.one(delete(&gone, gone_rev)).await.succeeded());

    // 3. Gets and counts: one object; count-only over a resource, a
    // namespace, and an empty prefix.
    let mut reads = vec![Op::Get(crate::diff::B(pod.clone().into_bytes()), None)];
    for p in [
        "/registry/pods/",
        "/registry/pods/team-a/",
        "/registry/configmaps/",
        "/registry/secrets/",
    ] {
        reads.push(Op::RawGet(RangeRequest {
            key: p.as_bytes().to_vec(),
            range_end: prefix_end(p),
            count_only: true,
            ..Default::default()
        }));
    }
    let counts = both.run(&reads).await;
    assert_eq!(counts[1].count(), 1259);
    assert_eq!(counts[4].count(), 0);

    // 4. A paginated LIST of every pod while writes go on between pages:
    // every page at the first page's revision.
    let pods = "/registry/pods/";
    let first = both
        .one(page(pods.as_bytes().to_vec(), prefix_end(pods), 0))
        .await;
    let list_rev = first.rev();
    let mut last = match &first {
        Out::Get { kvs, more, .. } => {
            assert!(*more);
            kvs.last().unwrap().key.0.clone()
        }
        other => panic!("{other:?}"),
    };
    let mut listed = 500;
    loop {
        let k = object("pods", "default", &format!("late-{listed}"));
        both.one(create(&k, value(&k, 0), None)).await;
        let mut from = last.clone();
        from.push(0);
        let next = both.one(page(from, prefix_end(pods), list_rev)).await;
        let Out::Get { kvs, more, .. } = &next else {
            panic!("{next:?}")
        };
        listed += kvs.len();
        if !more {
            break;
        }
        last = kvs.last().unwrap().key.0.clone();
    }
    assert_eq!(listed, 1259);

    // 5. Events on one shared lease (the apiserver grants one per minute
    // and reuses it for every event it writes).
    let lease = 0x6b38_7300;
    for s in [&pair.etcd, &pair.ms] {
        s.client()
            .await
            .lease_grant(3600, Some(LeaseGrantOptions::new().with_id(lease)))
            .await
            .expect("lease granted");
    }
    let mut ops = Vec::new();
    for i in 0..40 {
        let k = object("events", "default", &format!("pod-{i:04}.17f3a{i}"));
        ops.push(create(&k, value(&k, 0), Some(lease)));
    }
    ops.push(put_with(
        object("events", "default", "pod-0001.17f3a1"),
        "bumped",
        PutOptions::new().with_lease(lease).with_prev_key(),
    ));
    ops.push(Op::Get(
        crate::diff::B(b"/registry/events/".to_vec()),
        Some(GetOptions::new().with_prefix().with_keys_only()),
    ));
    let outs = both.run(&ops).await;
    assert_eq!(outs.last().unwrap().count(), 40);

    // 6. The apiserver's cache: LIST (one page) then watch from its
    // revision + 1 with prev_kv and progress_notify; optimistic updates,
    // deletes and creates go on meanwhile.
    let cms = "/registry/configmaps/";
    let listed = both
        .one(page(cms.as_bytes().to_vec(), prefix_end(cms), 0))
        .await;
    let mut streams = Vec::new();
    for s in [&pair.etcd, &pair.ms] {
        let mut w =
            RawWatch::open_creating(&s.endpoint(), cache_watch(cms, listed.rev() + 1)).await;
        let created = w.next().await;
        assert!(created.created, "{created:?}");
        streams.push(w);
    }
    let mut writes = 0;
    for (i, ns) in namespaces.iter().enumerate() {
        for j in 0..10 {
            let k = object("configmaps", ns, &format!("cm-{j:02}"));
            let got = both
                .one(Op::Get(crate::diff::B(k.clone().into_bytes()), None))
                .await;
            let Out::Get { kvs, .. } = &got else {
                panic!("{got:?}")
            };
            let m = kvs[0].modr;
            if j % 5 == 4 {
                assert!(both.one(delete(&k, m)).await.succeeded());
            } else {
                let v = value(&k, 1 + i as u32);
                assert!(both.one(update(&k, m, v)).await.succeeded());
            }
            writes += 1;
        }
        let k = object("configmaps", ns, "cm-new");
        assert!(both.one(create(&k, value(&k, 0), None)).await.succeeded());
        writes += 1;
    }
    let from_etcd = events(&mut streams[0], writes).await;
    let from_ms = events(&mut streams[1], writes).await;
    assert_eq!(from_etcd.len(), writes);
    assert_eq!(from_etcd, from_ms, "watch events differ from etcd's");
    assert!(from_ms
        .iter()
        .all(|e| !e.put || e.kv.3 == 1 || e.prev.is_some()));

    // 7. Compaction as the apiserver runs it: claim the round with the CAS
    // on compact_rev_key (a second apiserver with the same stale version
    // loses), then compact at the revision claimed.
    let now = both.one(Op::Get(crate::diff::B(b"x".to_vec()), None)).await;
    let target = now.rev();
    let claimed = both.one(compact_claim(0, target)).await;
    assert!(claimed.succeeded());
    let lost = both.one(compact_claim(0, target)).await;
    assert!(!lost.succeeded());
    both.one(crate::diff::compact(target)).await;
    assert!(both.one(compact_claim(1, target + 1)).await.succeeded());
    // A LIST continued at a revision compacted meanwhile fails as etcd's.
    let mut from = b"/registry/pods/default/pod-0100".to_vec();
    from.push(0);
    let stale_page = both.one(page(from, prefix_end(pods), list_rev)).await;
    assert_eq!(stale_page.err(), COMPACTED);
    // And a watch from the compacted revision is canceled with the
    // compaction point on both.
    let mut compacted = Vec::new();
    for s in [&pair.etcd, &pair.ms] {
        let mut w = RawWatch::open_creating(&s.endpoint(), cache_watch(cms, list_rev)).await;
        let mut r = w.next().await;
        if r.created && !r.canceled {
            r = w.next().await;
        }
        compacted.push((r.canceled, r.compact_revision));
    }
    assert_eq!(compacted[0], (true, target));
    assert_eq!(compacted[0], compacted[1]);
}

engine_tests!(async: the_apiservers_storage_calls_answer_as_etcds);

/// kube-apiserver's gate for watch progress requests
/// (k8s.io/apiserver's feature support checker): etcd 3.4.31+ in the 3.4
/// line, 3.5.13+ from 3.5 on.
fn apiserver_sends_progress_requests_to(version: &str) -> bool {
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().expect("a numeric version part"))
        .collect();
    let v = (parts[0], parts[1], parts[2]);
    ((3, 4, 31)..(3, 5, 0)).contains(&v) || v >= (3, 5, 13)
}

/// Maintenance.Status reports an etcd version the apiserver accepts for the
/// progress requests MetaStore serves; `/version` carries it, etcd's cluster
/// version and MetaStore's own version.
async fn the_reported_version_passes_the_apiservers_gate(engine: Engine) {
    let s = Server::start_on(engine);
    let mut m = MaintenanceClient::connect(format!("http://{}", s.endpoint()))
        .await
        .unwrap();
    let st = m.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(
        apiserver_sends_progress_requests_to(&st.version),
        "Status reports {}",
        st.version
    );
    assert!(!apiserver_sends_progress_requests_to("3.5.0"));
    assert!(!apiserver_sends_progress_requests_to("3.4.23"));
    let (_, body) = http_get(s.port, "/version").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["etcdserver"], st.version.as_str(), "{body}");
    assert_eq!(v["etcdcluster"], "3.5.0", "{body}");
    assert_eq!(v["metastore"], env!("CARGO_PKG_VERSION"), "{body}");
}

engine_tests!(async: the_reported_version_passes_the_apiservers_gate);

async fn request_progress(w: &RawWatch) {
    w.tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    })
    .await
    .expect("progress request sent");
}

/// Reads until a requested progress notification (watch id -1, no
/// events); returns it and the events read before it.
async fn until_progress(w: &mut RawWatch) -> (WatchResponse, Vec<mvccpb::Event>) {
    let mut before = Vec::new();
    loop {
        let r = w.next().await;
        if r.watch_id == -1 && r.events.is_empty() {
            return (r, before);
        }
        before.extend(r.events);
    }
}

/// Progress requests as etcd 3.5.13+ answers them, which the apiserver's
/// consistent reads from cache rely on: the notification (watch id -1)
/// comes through the watch stream after every event up to its revision,
/// also when the watcher starts far behind; a watcher whose catch-up
/// finds no event of its own still gets one; with
/// `--experimental-watch-progress-notify-interval`, a quiet watcher with
/// progress_notify gets one with its own id.
async fn progress_requests_follow_every_event_due(engine: Engine) {
    let s = Server::start_with(
        crate::harness::Kind::MetaStore(engine),
        &["--experimental-watch-progress-notify-interval", "1s"],
    );
    let mut c = s.client().await;
    let mut revs = Vec::new();
    for i in 0..2000 {
        let k = object("pods", "default", &format!("p{}", i % 300));
        revs.push(
            c.put(k, value("p", i), None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision(),
        );
    }
    // A watcher from revision 1: 2,000 events to catch up; the progress
    // request right behind the create must not overtake them.
    let mut w = RawWatch::open(&s.endpoint()).await;
    w.create(cache_watch("/registry/pods/", 1)).await;
    request_progress(&w).await;
    let (progress, before) = until_progress(&mut w).await;
    let rev = progress.header.as_ref().unwrap().revision;
    assert!(rev >= *revs.last().unwrap(), "progress at {rev}");
    let delivered: Vec<i64> = before
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(delivered, revs, "events before the progress notification");

    // A watcher whose catch-up has no event of its own (nothing was ever
    // under its prefix) still gets the requested notification.
    let mut quiet = RawWatch::open(&s.endpoint()).await;
    quiet.create(cache_watch("/registry/secrets/", 1)).await;
    request_progress(&quiet).await;
    let (p, before) = until_progress(&mut quiet).await;
    assert!(before.is_empty());
    assert_eq!(p.header.unwrap().revision, *revs.last().unwrap());

    // The periodic notification of a quiet synced watcher with
    // progress_notify carries its own watch id.
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = quiet.next().await;
            if r.events.is_empty() && r.watch_id >= 0 && !r.created {
                return r;
            }
        }
    })
    .await
    .expect("a periodic progress notification within 5 s");
    assert_eq!(r.watch_id, 0);
    assert_eq!(r.header.unwrap().revision, *revs.last().unwrap());
}

engine_tests!(async: progress_requests_follow_every_event_due);
