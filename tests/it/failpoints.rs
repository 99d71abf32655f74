//! Failpoints on the write and recovery paths (the `failpoints` feature:
//! `scripts/test.sh` builds the tests with it; see `src/failpoints.rs` for
//! the names). Each case arms one failpoint to panic on every member, runs
//! the put/txn/lease load of the power-loss tests (plus what reaches the
//! point: compactions, defragmentation, lease revokes, membership changes,
//! a follower catching up by snapshot) until a member crashes there, then
//! SIGKILLs the rest, restarts everyone without failpoints and checks: every
//! acknowledged write present at its revision, revisions gap-free and the
//! same on every member, HashKV equal. A case whose failpoint is never
//! reached fails: the point is on the path it names.
//!
//! Delays: `apply::delay` and `watch::send_delay` on every member slow the
//! apply loop and the watch send path; the cluster keeps its leader,
//! answers, and every watcher gets every event once, in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use parking_lot::Mutex;

use crate::harness::{status_of, Cluster, Engine, Kind, Server};
use crate::power::{client_loop, verify_at, Acked};

/// Small snapshots, WAL segments and catch-up window, so snapshots, segment
/// rotation, log purges and snapshot sends happen within a few hundred
/// writes.
const FLAGS: &[&str] = &[
    "--snapshot-count",
    "200",
    "--snapshot-catchup-entries",
    "50",
    "--wal-segment-size",
    "65536",
];

/// What, beside the load, makes the cluster reach a failpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// The put/txn/lease load alone.
    Load,
    /// Compaction at the head every 100 ms.
    Compact,
    /// Maintenance.Defragment every 200 ms.
    Defrag,
    /// A lease with a key, revoked, again and again.
    Revoke,
    /// A learner added and removed, again and again.
    Members,
    /// A follower down while the leader's log moves past it, then started:
    /// it catches up by snapshot.
    Snapshot,
}

/// Acknowledged writes wanted before the snapshot-catch-up follower comes
/// back (the leader's log has moved past it by then).
const SNAPSHOT_AFTER: usize = 500;

async fn connect(endpoint: &str) -> Option<Client> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    Client::connect([endpoint], Some(opts)).await.ok()
}

/// Runs `trigger`'s side of the work against `endpoints` until `stop`.
async fn trigger_loop(trigger: Trigger, endpoints: Vec<String>, stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let every = match trigger {
            Trigger::Compact => 100,
            Trigger::Defrag => 200,
            Trigger::Revoke => 50,
            Trigger::Members => 300,
            Trigger::Load | Trigger::Snapshot => return,
        };
        tokio::time::sleep(Duration::from_millis(every)).await;
        let ep = &endpoints[i as usize % endpoints.len()];
        let Some(mut c) = connect(ep).await else {
            continue;
        };
        // Errors are expected once a member is down: the loop goes on.
        match trigger {
            Trigger::Compact => {
                if let Ok(r) = c
                    .get("pw/", Some(GetOptions::new().with_count_only()))
                    .await
                {
                    if let Some(h) = r.header() {
                        let _ = c.compact(h.revision(), None).await;
                    }
                }
            }
            Trigger::Defrag => {
                let _ = c.defragment().await;
            }
            Trigger::Revoke => {
                if let Ok(l) = c.lease_grant(60, None).await {
                    let opts = PutOptions::new().with_lease(l.id());
                    let _ = c.put(format!("fpl/{i}"), "v", Some(opts)).await;
                    let _ = c.lease_revoke(l.id()).await;
                }
            }
            Trigger::Members => {
                let peer = format!("http://127.0.0.1:{}", 40000 + i % 1000);
                if let Ok(r) = c.member_add([peer], None).await {
                    if let Some(m) = r.member() {
                        let _ = c.member_remove(m.id()).await;
                    }
                }
            }
            Trigger::Load | Trigger::Snapshot => {}
        }
    }
}

/// The member that crashed at `point`, if one did.
fn crashed(c: &mut Cluster, point: &str) -> Option<usize> {
    let i = (0..c.members.len()).find(|&i| !c.members[i].is_running())?;
    let log = c.members[i].log();
    assert!(
        log.contains(&format!("failpoint {point} panic")),
        "member {i} exited, not at {point}:\n{}",
        c.members[i].log_tail_pub()
    );
    Some(i)
}

/// Arms `point` to panic after `after` passes on every member of a fresh
/// cluster of `n`, drives it there and checks the recovery.
async fn crash_at(point: &'static str, after: u32, n: usize, engine: Engine, trigger: Trigger) {
    let started = Instant::now();
    let armed = if after == 0 {
        format!("{point}=panic")
    } else {
        format!("{point}={after}*off->panic")
    };
    let mut c = tokio::task::block_in_place(|| {
        Cluster::start_configured(&vec![Kind::MetaStore(engine); n], FLAGS, |_, s| {
            s.failpoints = Some(armed.clone());
        })
    });
    let mut endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    // The snapshot cases keep a follower down while the log moves on.
    let away = if trigger == Trigger::Snapshot {
        let leader = tokio::task::block_in_place(|| c.wait_leader(Duration::from_secs(10)));
        let f = (leader + 1) % n;
        c.members[f].kill9();
        Some(f)
    } else {
        None
    };
    let serving: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != away)
        .map(|(_, e)| e.clone())
        .collect();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks: Vec<_> = (0..6)
        .map(|k| {
            tokio::spawn(client_loop(
                serving[k % serving.len()].clone(),
                format!("c{k}"),
                0,
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(trigger_loop(
        trigger,
        serving.clone(),
        stop.clone(),
    )));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut back = false;
    let victim = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(f) = away.filter(|_| !back) {
            if acked.lock().keys.len() >= SNAPSHOT_AFTER {
                c.members[f].launch();
                back = true;
            }
        } else if let Some(i) = crashed(&mut c, point) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "{point} never reached ({} writes acknowledged)",
            acked.lock().keys.len()
        );
    };
    let at_crash = acked.lock().keys.len();
    // Everyone else dies too (they hold the same armed failpoint), and
    // everyone starts again without it.
    for m in &mut c.members {
        m.kill9();
        m.failpoints = None;
    }
    tokio::task::block_in_place(|| {
        for m in &mut c.members {
            m.launch();
        }
        for m in &mut c.members {
            m.wait_started();
        }
    });
    // The load goes on a little against the recovered cluster.
    endpoints = c.members.iter().map(|m| m.endpoint()).collect();
    let more_from = acked.lock().keys.len();
    let t = Instant::now();
    while acked.lock().keys.len() < more_from + 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no writes after the restart"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let expected = acked.lock().clone();
    // Revokes delete their keys: revisions the load did not write.
    verify_at(&endpoints, &expected, point, trigger != Trigger::Revoke).await;
    eprintln!(
        "{point} ({} x{n}): member {victim} crashed there after {at_crash} acknowledged \
         writes; {} checked after recovery, {:.1} s",
        engine.name(),
        expected.keys.len(),
        started.elapsed().as_secs_f64()
    );
}

/// One test per (failpoint, members, engine, trigger).
macro_rules! crash_cases {
    ($($name:ident: $point:literal after $after:literal on $n:literal, $engine:ident, $trigger:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crash_at($point, $after, $n, Engine::$engine, Trigger::$trigger).await
            }
        )*
    };
}

crash_cases! {
    wal_before_write_memory: "wal::before_write" after 40 on 1, Memory, Load;
    wal_before_write_rocksdb: "wal::before_write" after 40 on 1, Rocksdb, Load;
    wal_before_fsync_memory: "wal::before_fsync" after 40 on 1, Memory, Load;
    wal_before_fsync_rocksdb: "wal::before_fsync" after 40 on 3, Rocksdb, Load;
    wal_after_fsync_memory: "wal::after_fsync" after 40 on 3, Memory, Load;
    wal_after_fsync_rocksdb: "wal::after_fsync" after 40 on 1, Rocksdb, Load;
    wal_rotate_memory: "wal::rotate" after 0 on 1, Memory, Load;
    wal_purge_rocksdb: "wal::purge" after 0 on 1, Rocksdb, Load;
    apply_before_entry_memory: "apply::before_entry" after 100 on 1, Memory, Load;
    apply_before_entry_rocksdb: "apply::before_entry" after 100 on 3, Rocksdb, Load;
    apply_before_commit_memory: "apply::before_commit" after 40 on 3, Memory, Load;
    apply_before_commit_rocksdb: "apply::before_commit" after 40 on 1, Rocksdb, Load;
    apply_after_commit_memory: "apply::after_commit" after 40 on 1, Memory, Load;
    apply_after_commit_rocksdb: "apply::after_commit" after 40 on 1, Rocksdb, Load;
    snapshot_save_memory: "snapshot::save" after 1 on 1, Memory, Load;
    snapshot_send_memory: "snapshot::send" after 0 on 3, Memory, Snapshot;
    snapshot_receive_rocksdb: "snapshot::receive" after 0 on 3, Rocksdb, Snapshot;
    snapshot_before_install_memory: "snapshot::before_install" after 0 on 3, Memory, Snapshot;
    snapshot_before_install_rocksdb: "snapshot::before_install" after 0 on 3, Rocksdb, Snapshot;
    snapshot_after_install_memory: "snapshot::after_install" after 0 on 3, Memory, Snapshot;
    snapshot_after_install_rocksdb: "snapshot::after_install" after 0 on 3, Rocksdb, Snapshot;
    engine_compact_memory: "engine::compact" after 3 on 1, Memory, Compact;
    engine_compact_rocksdb: "engine::compact" after 3 on 3, Rocksdb, Compact;
    engine_compact_files_rocksdb: "engine::compact_files" after 2 on 1, Rocksdb, Compact;
    engine_defrag_rocksdb: "engine::defrag" after 2 on 1, Rocksdb, Defrag;
    lease_revoke_memory: "lease::revoke" after 3 on 3, Memory, Revoke;
    lease_revoke_rocksdb: "lease::revoke" after 3 on 1, Rocksdb, Revoke;
    membership_apply_memory: "membership::apply" after 1 on 3, Memory, Members;
    membership_apply_rocksdb: "membership::apply" after 1 on 3, Rocksdb, Members;
}

/// Every event of `pw/` a watcher got: key → mod revisions, in arrival
/// order.
type Seen = Arc<Mutex<BTreeMap<String, Vec<i64>>>>;

async fn watch_all(endpoint: String, seen: Seen, stop: Arc<AtomicBool>) {
    let mut c = Client::connect([endpoint], None).await.unwrap();
    let mut stream = c
        .watch("pw/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut last = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(Some(resp))) =
            tokio::time::timeout(Duration::from_millis(200), stream.message()).await
        else {
            continue;
        };
        for e in resp.events() {
            let kv = e.kv().unwrap();
            assert!(kv.mod_revision() >= last, "event out of order");
            last = kv.mod_revision();
            seen.lock()
                .entry(kv.key_str().unwrap().to_owned())
                .or_default()
                .push(kv.mod_revision());
        }
    }
}

/// A slow apply loop and a slow watch send path on every member: the
/// leader stays, puts and linearizable reads on a follower are answered,
/// and watchers on a follower and on the leader get every acknowledged
/// write exactly once, in order.
async fn slow_apply_and_watch_send_lose_nothing(engine: Engine) {
    let mut c = tokio::task::block_in_place(|| {
        let mut c = Cluster::start(3, engine, &[]);
        for m in &mut c.members {
            m.failpoints = Some("apply::delay=return(25);watch::send_delay=return(5)".into());
        }
        // Restarted one at a time, so the cluster keeps a quorum.
        for m in &mut c.members {
            m.restart();
        }
        c
    });
    let (leader, slow, before) = tokio::task::block_in_place(|| {
        let leader = c.wait_leader(Duration::from_secs(10));
        let before = status_of(&c.members[leader].endpoint()).unwrap().2;
        (leader, (leader + 1) % 3, before)
    });
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Seen> = vec![Seen::default(), Seen::default()];
    let watchers: Vec<_> = [slow, leader]
        .iter()
        .zip(&seen)
        .map(|(&i, s)| {
            tokio::spawn(watch_all(
                endpoints[i].clone(),
                s.clone(),
                watch_stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let tasks: Vec<_> = (0..6)
        .map(|k| {
            tokio::spawn(client_loop(
                endpoints[k % 3].clone(),
                format!("s{k}"),
                0,
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A linearizable read on a follower is answered.
    let mut slow_client = Client::connect([endpoints[slow].clone()], None)
        .await
        .unwrap();
    let t = Instant::now();
    slow_client.get("pw/", None).await.unwrap();
    let read_ms = t.elapsed().as_millis();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let expected = acked.lock().clone();
    assert!(expected.keys.len() > 100, "{} writes", expected.keys.len());
    // Every acknowledged write reaches both watchers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = seen
            .iter()
            .all(|s| expected.keys.keys().all(|k| s.lock().contains_key(k)));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watchers missed events: {} / {} of {} keys",
            seen[0].lock().len(),
            seen[1].lock().len(),
            expected.keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch_stop.store(true, Ordering::Relaxed);
    for w in watchers {
        w.await.unwrap();
    }
    for (which, s) in ["follower", "leader"].iter().zip(&seen) {
        for (key, (_, rev, _)) in &expected.keys {
            assert_eq!(
                s.lock().get(key),
                Some(&vec![*rev]),
                "{which}'s watcher: {key} not exactly once at its revision"
            );
        }
    }
    let after = tokio::task::block_in_place(|| status_of(&endpoints[leader]).unwrap());
    assert_eq!(after.2, before, "the term moved: an election happened");
    // The delays did happen.
    for (i, m) in c.members.iter().enumerate() {
        let log = m.log();
        assert!(log.contains("failpoint apply::delay fired"), "{log}");
        if i == slow || i == leader {
            assert!(log.contains("failpoint watch::send_delay fired"), "{log}");
        }
    }
    eprintln!(
        "slow apply and watch sends ({}): {} writes, every one delivered once to both \
         watchers; a linearizable read on a follower took {read_ms} ms",
        engine.name(),
        expected.keys.len()
    );
    verify_at(&endpoints, &expected, "slow apply", true).await;
}

engine_tests!(async: slow_apply_and_watch_send_lose_nothing);

/// Both engines remove a compaction's versions in slices between their
/// other work (here 150 ms apart): a Compact is answered at once, reads
/// and writes go on meanwhile and see the compacted store, a hash taken
/// meanwhile is the hash after it (the memory engine's images leave out
/// what it removes, the rocksdb engine's wait for the end), and a Compact
/// with `physical` is answered only once the removal is through.
async fn a_physical_compact_waits_for_the_sliced_removal_others_do_not(engine: Engine) {
    use etcd_client::{CompactionOptions, Txn, TxnOp};
    let s = tokio::task::block_in_place(|| {
        let mut s = Server::start_on(engine);
        s.failpoints = Some("engine::removal_delay=return(150)".into());
        s.restart();
        s
    });
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    // 20,000 keys written three times: a compaction drops 20,000 versions
    // (five slices of the removal).
    let value = vec![b'v'; 100];
    let mut revs = Vec::new();
    for _ in 0..3 {
        for chunk in 0..200 {
            let ops: Vec<TxnOp> = (0..100)
                .map(|i| TxnOp::put(format!("k{:05}", chunk * 100 + i), value.clone(), None))
                .collect();
            c.txn(Txn::new().and_then(ops)).await.unwrap();
        }
        revs.push(c.get("k", None).await.unwrap().header().unwrap().revision());
    }
    let before = c.status().await.unwrap().db_size();
    let t = Instant::now();
    c.compact(revs[1], None).await.unwrap();
    let plain = t.elapsed();
    let at = |rev: i64| Some(GetOptions::new().with_prefix().with_revision(rev));
    let gone = c.get("k", at(revs[1] - 1)).await.expect_err("compacted");
    assert!(
        gone.to_string()
            .contains("required revision has been compacted"),
        "{gone}"
    );
    let kept = c.get("k", at(revs[1])).await.unwrap();
    assert_eq!(kept.count(), 20_000);
    assert!(kept.kvs().iter().all(|kv| kv.mod_revision() > revs[0]));
    let mut m = c.maintenance_client();
    let midway = m.hash_kv(revs[2]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let through = m.hash_kv(revs[2]).await.unwrap();
    assert_eq!(
        (midway.hash(), midway.compact_version()),
        (through.hash(), revs[1]),
        "a hash taken during the removal"
    );
    let t = Instant::now();
    c.put("during", "the removal", None).await.unwrap();
    let put = t.elapsed();
    let head = c
        .get("during", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let t = Instant::now();
    c.compact(head, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let physical = t.elapsed();
    let after = c.status().await.unwrap().db_size();
    eprintln!(
        "compact {plain:?}, put during the removal {put:?}, physical compact {physical:?}; \
         size {before} -> {after} bytes"
    );
    assert!(
        plain < Duration::from_millis(600),
        "Compact waited: {plain:?}"
    );
    assert!(put < Duration::from_millis(600), "a put waited: {put:?}");
    assert!(
        physical >= Duration::from_millis(450),
        "a physical Compact answered before its removal (five slices 150 ms apart): {physical:?}"
    );
    if engine == Engine::Memory {
        // (RocksDB's files shrink when its own compaction gets to them.)
        assert!(
            after * 2 < before,
            "size {before} -> {after}: versions left"
        );
    }
    assert!(
        s.log().contains("failpoint engine::removal_delay fired"),
        "{}",
        s.log()
    );
}

engine_tests!(async: a_physical_compact_waits_for_the_sliced_removal_others_do_not);

/// A gRPC Range of more than a slice (1,024 keys) is read a slice per turn
/// of the apply thread (here 1 s apart): puts and a get are answered while
/// it is open, it sees nothing written meanwhile (every slice reads at the
/// first one's revision), it may take longer than the 7 s request timeout
/// (which bounds the wait on Raft, not the read), and a compaction above
/// its revision, applied while one is open, first lets it read to its end.
/// A limited Range (a LIST's page) counts the keys after its kvs in slices
/// too.
async fn a_large_range_is_read_in_slices_between_other_work(engine: Engine) {
    use etcd_client::{Txn, TxnOp};
    let s = tokio::task::block_in_place(|| {
        let mut s = Server::start_on(engine);
        s.failpoints = Some("apply::range_slice_delay=return(1000)".into());
        s.restart();
        s
    });
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    // 9,000 keys: nine slices, eight turns 1 s apart.
    let mut rev = 0;
    for chunk in 0..90 {
        let ops: Vec<TxnOp> = (0..100)
            .map(|i| TxnOp::put(format!("r/{:05}", chunk * 100 + i), "v0", None))
            .collect();
        let resp = c.txn(Txn::new().and_then(ops)).await.unwrap();
        rev = resp.header().unwrap().revision();
    }
    let all = || Some(GetOptions::new().with_prefix());
    // (The header has the store's revision, whatever the one read at.)
    let check = |r: &etcd_client::GetResponse, header: i64, what: &str| {
        assert_eq!(r.header().unwrap().revision(), header, "{what}");
        assert_eq!((r.kvs().len(), r.count()), (9000, 9000), "{what}");
        for (i, kv) in r.kvs().iter().enumerate() {
            assert_eq!(kv.key(), format!("r/{i:05}").as_bytes(), "{what}");
            assert_eq!(kv.value(), b"v0", "{what}");
        }
    };

    let mut c2 = c.clone();
    let range = tokio::spawn(async move {
        let t = Instant::now();
        let r = c2.get("r/", all()).await;
        (r, t.elapsed())
    });
    let t = Instant::now();
    while !s.log().contains("failpoint apply::range_slice_delay fired") {
        assert!(t.elapsed() < Duration::from_secs(10), "no slice waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    c.put("r/00000", "changed", None).await.unwrap();
    c.put("r/99999", "new", None).await.unwrap();
    let one = c.get("r/00000", None).await.unwrap();
    let meanwhile = t.elapsed();
    assert_eq!(one.kvs()[0].value(), b"changed");
    assert!(
        !range.is_finished(),
        "the Range was answered before the writes made while it was open"
    );
    let (r, took) = range.await.unwrap();
    check(&r.unwrap(), rev, "a Range with writes between its slices");
    eprintln!("Range in slices {took:?}; two puts and a get meanwhile {meanwhile:?}");
    assert!(
        took >= Duration::from_secs(8),
        "nine slices 1 s apart: {took:?}"
    );
    assert!(meanwhile < Duration::from_millis(900), "{meanwhile:?}");

    // A LIST's first page: ten kvs, then the 8,990 keys after them counted
    // 1,024 a slice (nine turns), a put answered meanwhile.
    let mut c2 = c.clone();
    let page = tokio::spawn(async move {
        let opts = all().map(|o| o.with_revision(rev).with_limit(10));
        let t = Instant::now();
        let r = c2.get("r/", opts).await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    c.put("r/99999", "newer", None).await.unwrap();
    let meanwhile = t.elapsed();
    assert!(!page.is_finished(), "the page was counted in one turn");
    let (r, took) = page.await.unwrap();
    let r = r.unwrap();
    assert_eq!((r.kvs().len(), r.count(), r.more()), (10, 9000, true));
    eprintln!("a page counted in slices {took:?}; a put meanwhile {meanwhile:?}");
    assert!(took >= Duration::from_secs(8), "{took:?}");
    assert!(meanwhile < Duration::from_millis(900), "{meanwhile:?}");
    let head = c.get("r/99999", None).await.unwrap();
    let head = head.header().unwrap().revision();

    // A compaction past the revision of an open Range.
    let mut c2 = c.clone();
    let range = tokio::spawn(async move {
        let t = Instant::now();
        let r = c2.get("r/", all().map(|o| o.with_revision(rev))).await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!range.is_finished());
    c.compact(head, None).await.unwrap();
    let (r, took) = range.await.unwrap();
    check(
        &r.unwrap(),
        head,
        "a Range open when a compaction past it came",
    );
    assert!(took < Duration::from_millis(900), "{took:?}");
    let gone = c.get("r/", all().map(|o| o.with_revision(rev))).await;
    assert!(gone
        .unwrap_err()
        .to_string()
        .contains("required revision has been compacted"));
}

engine_tests!(async: a_large_range_is_read_in_slices_between_other_work);
