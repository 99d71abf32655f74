//! Leases: etcdctl side by side with etcd 3.4, expiry with delete events,
//! keep-alive, restart and snapshots, and a leader failover that keeps the
//! remaining TTL.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};

use crate::etcdctl::{normalise_stderr, normalise_stdout};
use crate::harness::{Cluster, Engine, Kind, Pair, Server};

/// Runs `blocking` work (process control) off the async test's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// etcdctl's output with the hex lease ids and the remaining TTL (which
/// depends on when each daemon is asked) masked.
fn run_masked(s: &Server, args: &[&str]) -> (Option<i32>, String, String) {
    let out = s.etcdctl(args);
    let mask = |text: &str| {
        let mut t = text.to_owned();
        for id in ["1234", "4d2"] {
            t = t.replace(id, "<id>");
        }
        // "remaining(9s)" → "remaining(_)"
        let mut out = String::new();
        let mut rest = t.as_str();
        while let Some(i) = rest.find("remaining(") {
            out.push_str(&rest[..i + 10]);
            rest = &rest[i + 10..];
            let close = rest.find(')').unwrap_or(0);
            out.push('_');
            rest = &rest[close..];
        }
        out.push_str(rest);
        out
    };
    (
        out.status.code(),
        mask(&normalise_stdout(&String::from_utf8_lossy(&out.stdout))),
        mask(&normalise_stderr(&String::from_utf8_lossy(&out.stderr))),
    )
}

/// `lease grant|timetolive|list|keep-alive --once|revoke`, `put --lease`,
/// and their errors, with etcd's output.
async fn etcdctl_lease_commands_match_etcd(engine: Engine) {
    let pair = blocking(move || Pair::start(engine)).await;
    // A fixed lease ID on both, so outputs compare (etcdctl cannot choose).
    for s in [&pair.etcd, &pair.ms] {
        let mut c = s.client().await;
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await
            .expect("grant");
    }
    let cmds: &[&[&str]] = &[
        &["put", "--lease=1234", "k1", "v1"],
        &["get", "k1", "-w", "json"],
        &["lease", "timetolive", "1234"],
        // One key: etcd lists a lease's keys in no particular order.
        &["lease", "timetolive", "1234", "--keys"],
        &["put", "--lease=1234", "k2", "v2"],
        &["lease", "list"],
        &["lease", "keep-alive", "--once", "1234"],
        &["put", "k1", "v3", "--ignore-lease"],
        &["get", "k1", "-w", "json"],
        &["put", "--lease=99", "k3", "v"],
        &["lease", "timetolive", "99"],
        &["lease", "keep-alive", "--once", "99"],
        &["lease", "revoke", "1234"],
        &["get", "--prefix", "k"],
        &["lease", "revoke", "1234"],
        &["lease", "timetolive", "1234"],
        &["lease", "list"],
        &["lease", "grant", "9000000001"],
    ];
    let mut diffs = Vec::new();
    for args in cmds {
        let want = run_masked(&pair.etcd, args);
        let got = run_masked(&pair.ms, args);
        if want != got {
            diffs.push(format!(
                "etcdctl {args:?}\n  etcd:      {want:?}\n  metastore: {got:?}"
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

async fn grant(c: &mut Client, ttl: i64, id: i64) -> i64 {
    c.lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
        .await
        .expect("grant")
        .id()
}

async fn keys(c: &mut Client, prefix: &str) -> Vec<String> {
    c.get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or_default().to_owned())
        .collect()
}

/// An expired lease's keys go in one revision and watchers see the delete
/// events; a lease kept alive outlives its TTL; a revoked one goes at once.
async fn expiry_and_keep_alive(engine: Engine) {
    let s = Server::start_on(engine);
    let mut c = s.client().await;
    let short = grant(&mut c, 2, 100).await;
    let kept = grant(&mut c, 2, 200).await;
    for (k, l) in [("e/a", short), ("e/b", short), ("e/kept", kept)] {
        c.put(k, "v", Some(PutOptions::new().with_lease(l)))
            .await
            .expect("put");
    }
    let mut events = c
        .watch("e/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let (mut keeper, mut acks) = c.lease_keep_alive(kept).await.expect("keep-alive");
    let started = Instant::now();
    let mut deletes = Vec::new();
    while deletes.len() < 2 {
        keeper.keep_alive().await.expect("keep alive");
        let _ = acks.message().await;
        if let Ok(Ok(Some(resp))) =
            tokio::time::timeout(Duration::from_millis(500), events.message()).await
        {
            for e in resp.events() {
                assert_eq!(e.event_type(), EventType::Delete);
                let kv = e.kv().expect("kv");
                deletes.push((
                    kv.key_str().unwrap_or_default().to_owned(),
                    kv.mod_revision(),
                ));
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the 2 s lease did not expire"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "expired early: {took:?}"
    );
    assert_eq!(deletes[0].0, "e/a");
    assert_eq!(deletes[1].0, "e/b");
    assert_eq!(
        deletes[0].1, deletes[1].1,
        "one revision for the whole lease"
    );
    // The kept lease lives on past its TTL.
    for _ in 0..6 {
        keeper.keep_alive().await.expect("keep alive");
        let ack = acks.message().await.expect("ack").expect("open");
        assert_eq!(ack.ttl(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(keys(&mut c, "e/").await, vec!["e/kept"]);
    // Revoked: its key goes at once.
    c.lease_revoke(kept).await.expect("revoke");
    assert!(keys(&mut c, "e/").await.is_empty());
    let ttl = c.lease_time_to_live(kept, None).await.expect("ttl");
    assert_eq!(ttl.ttl(), -1);
}

/// Leases survive a restart (kill -9) and a snapshot, on either engine; a
/// txn puts with a lease; put with ignore_lease keeps it.
async fn leases_survive_restart_and_snapshots(engine: Engine) {
    let mut s = Server::start_with(Kind::MetaStore(engine), &["--snapshot-count", "20"]);
    let mut c = s.client().await;
    let id = grant(&mut c, 300, 0x77).await;
    c.put("r/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    let txn = etcd_client::Txn::new().and_then([etcd_client::TxnOp::put(
        "r/b",
        "2",
        Some(PutOptions::new().with_lease(id)),
    )]);
    c.txn(txn).await.expect("txn with a lease");
    c.put("r/a", "1b", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("ignore lease");
    // Past --snapshot-count: the lease table is in a snapshot now.
    for i in 0..50 {
        c.put(format!("filler/{i}"), "x", None).await.expect("put");
    }
    drop(c);
    let mut s = blocking(move || {
        s.kill9();
        s.restart();
        s
    })
    .await;
    let mut c = s.client().await;
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(ttl.granted_ttl(), 300);
    assert!(ttl.ttl() > 250, "remaining {}", ttl.ttl());
    let mut attached: Vec<String> = ttl
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    attached.sort();
    assert_eq!(attached, vec!["r/a", "r/b"]);
    c.lease_revoke(id).await.expect("revoke after restart");
    assert!(keys(&mut c, "r/").await.is_empty());
    drop(c);
    blocking(move || {
        s.kill9();
        s.restart();
        drop(s);
    })
    .await;
}

/// Three members; the leader is killed. A lease kept alive through a
/// follower outlives the failover; one nobody keeps alive keeps its
/// checkpointed remaining TTL (it is not restarted from its full TTL) and
/// expires on the new leader; TTL queries and keep-alives on followers are
/// answered by the leader.
async fn a_failover_keeps_leases_and_their_remaining_ttl(engine: Engine) {
    let mut cl = blocking(move || {
        Cluster::start(
            3,
            engine,
            &["--experimental-lease-checkpoint-interval", "500ms"],
        )
    })
    .await;
    let (leader, mut cl) = blocking(move || (cl.wait_leader(Duration::from_secs(10)), cl)).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut via_follower = cl.members[follower].client().await;
    let mut via_other = cl.members[other].client().await;
    let kept = grant(&mut via_follower, 4, 0x501).await;
    let dying = grant(&mut via_follower, 20, 0x502).await;
    via_follower
        .put("f/kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .expect("put");
    via_follower
        .put("f/dying", "v", Some(PutOptions::new().with_lease(dying)))
        .await
        .expect("put");
    let (mut keeper, mut acks) = via_follower
        .lease_keep_alive(kept)
        .await
        .expect("keep-alive via a follower");
    // Let the unattended lease pass half its TTL (and be checkpointed).
    let granted = Instant::now();
    while granted.elapsed() < Duration::from_secs(12) {
        keeper.keep_alive().await.expect("keep alive");
        assert_eq!(acks.message().await.expect("ack").expect("open").ttl(), 4);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let before = via_other
        .lease_time_to_live(dying, None)
        .await
        .expect("ttl via a follower")
        .ttl();
    assert!(
        (6..=9).contains(&before),
        "remaining before the failover: {before}"
    );
    let mut cl = blocking(move || {
        cl.members[leader].kill9();
        cl
    })
    .await;
    let failed = Instant::now();
    // Keep-alives go on through the follower, whoever leads (it waits for
    // the new leader, as etcd's followers do).
    while failed.elapsed() < Duration::from_secs(5) {
        keeper.keep_alive().await.expect("keep alive");
        let ack = tokio::time::timeout(Duration::from_secs(8), acks.message())
            .await
            .expect("a keep-alive answer within 8 s")
            .expect("stream ok")
            .expect("stream open");
        assert_eq!(ack.ttl(), 4, "the kept lease expired in the failover");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let cl = blocking(move || {
        cl.wait_leader(Duration::from_secs(10));
        cl
    })
    .await;
    // The unattended lease kept its remaining TTL: not back to 20.
    let after = via_other
        .lease_time_to_live(dying, None)
        .await
        .expect("ttl after failover")
        .ttl();
    assert!(
        after <= before + 1,
        "remaining {after} after the failover, {before} before"
    );
    assert!(after >= 1, "the lease was cut short: {after}");
    // And it expires on the new leader, its key gone; the kept one stays.
    let deadline = Instant::now() + Duration::from_secs(after as u64 + 5);
    loop {
        keeper.keep_alive().await.expect("keep alive");
        let _ = tokio::time::timeout(Duration::from_secs(2), acks.message()).await;
        let left = keys(&mut via_other, "f/").await;
        if left == vec!["f/kept"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unattended lease did not expire: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(cl);
}

engine_tests!(async:
    etcdctl_lease_commands_match_etcd,
    expiry_and_keep_alive,
    leases_survive_restart_and_snapshots,
    a_failover_keeps_leases_and_their_remaining_ttl,
);
