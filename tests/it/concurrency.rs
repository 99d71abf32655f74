//! Lock and Election: the gRPC services (v3lock, v3election) side by side
//! with etcd 3.4's, and etcdctl's client-side `lock` and `elect`.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::LeaseGrantOptions;
use metastore::proto::v3electionpb::election_client::ElectionClient;
use metastore::proto::v3electionpb::{
    CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};
use metastore::proto::v3lockpb::lock_client::LockClient;
use metastore::proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

use crate::harness::{Engine, Pair, Server};

async fn channel(s: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", s.endpoint()))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// What a client sees, with what differs between any two clusters left out.
fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One scenario of Lock calls; returns what the client saw, step by step.
async fn lock_scenario(s: &Server) -> Vec<String> {
    let mut seen = Vec::new();
    let mut c = s.client().await;
    for id in [0xa1, 0xa2] {
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .expect("grant");
    }
    let ch = channel(s).await;
    let mut lock = LockClient::new(ch.clone());
    let first = lock
        .lock(LockRequest {
            name: b"job".to_vec(),
            lease: 0xa1,
        })
        .await
        .expect("first lock")
        .into_inner();
    seen.push(format!(
        "locked {} at {}",
        String::from_utf8_lossy(&first.key),
        first.header.as_ref().map_or(0, |h| h.revision)
    ));
    // The second locker waits until the first unlocks.
    let mut second = LockClient::new(ch.clone());
    let waiting = tokio::spawn(async move {
        second
            .lock(LockRequest {
                name: b"job".to_vec(),
                lease: 0xa2,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.push(format!("second waiting: {}", !waiting.is_finished()));
    let un = lock
        .unlock(UnlockRequest { key: first.key })
        .await
        .expect("unlock")
        .into_inner();
    seen.push(format!(
        "unlocked at {}",
        un.header.map_or(0, |h| h.revision)
    ));
    let second = waiting
        .await
        .expect("task")
        .expect("second lock")
        .into_inner();
    seen.push(format!(
        "second locked {} at {}",
        String::from_utf8_lossy(&second.key),
        second.header.map_or(0, |h| h.revision)
    ));
    // A lease that does not exist.
    match lock
        .lock(LockRequest {
            name: b"job".to_vec(),
            lease: 0x404,
        })
        .await
    {
        Ok(r) => seen.push(format!(
            "lock with a missing lease: {:?}",
            r.into_inner().key
        )),
        Err(e) => seen.push(format!("lock with a missing lease: {}", status_text(&e))),
    }
    // Revoking the holder's lease hands the lock on.
    let mut third = LockClient::new(ch.clone());
    c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0xa3)))
        .await
        .expect("grant");
    let waiting = tokio::spawn(async move {
        third
            .lock(LockRequest {
                name: b"job".to_vec(),
                lease: 0xa3,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.lease_revoke(0xa2)
        .await
        .expect("revoke the holder's lease");
    let third = waiting
        .await
        .expect("task")
        .expect("third lock")
        .into_inner();
    seen.push(format!(
        "third locked {}",
        String::from_utf8_lossy(&third.key)
    ));
    seen
}

/// One scenario of Election calls; returns what the client saw.
async fn election_scenario(s: &Server) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut c = s.client().await;
    for id in [0xb1, 0xb2] {
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .expect("grant");
    }
    let ch = channel(s).await;
    let mut e = ElectionClient::new(ch.clone());
    match e
        .leader(LeaderRequest {
            name: b"boss".to_vec(),
        })
        .await
    {
        Ok(_) => seen.push("leader before any campaign".into()),
        Err(st) => seen.push(format!("no leader yet: {}", status_text(&st))),
    }
    // etcd answers an Observe call (its headers) with the first
    // proclamation: the observer waits in a task of its own.
    let mut observer_client = ElectionClient::new(ch.clone());
    let observer = tokio::spawn(async move {
        let mut stream = observer_client
            .observe(LeaderRequest {
                name: b"boss".to_vec(),
            })
            .await
            .expect("observe")
            .into_inner();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("an observation within 10 s")
                .expect("stream ok")
                .expect("stream open");
            let kv = r.kv.expect("kv");
            seen.push(format!(
                "observed {} = {} (mod {})",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value),
                kv.mod_revision
            ));
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = e
        .campaign(CampaignRequest {
            name: b"boss".to_vec(),
            lease: 0xb1,
            value: b"a".to_vec(),
        })
        .await
        .expect("campaign a")
        .into_inner();
    let la = a.leader.clone().expect("leader key");
    seen.push(format!(
        "a leads: {} rev {} lease {:x}",
        String::from_utf8_lossy(&la.key),
        la.rev,
        la.lease
    ));
    let mut other = ElectionClient::new(ch.clone());
    let b = tokio::spawn(async move {
        other
            .campaign(CampaignRequest {
                name: b"boss".to_vec(),
                lease: 0xb2,
                value: b"b".to_vec(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.push(format!("b waiting: {}", !b.is_finished()));
    e.proclaim(ProclaimRequest {
        leader: Some(la.clone()),
        value: b"a2".to_vec(),
    })
    .await
    .expect("proclaim");
    let l = e
        .leader(LeaderRequest {
            name: b"boss".to_vec(),
        })
        .await
        .expect("leader")
        .into_inner();
    seen.push(format!(
        "leader value {}",
        String::from_utf8_lossy(&l.kv.expect("kv").value)
    ));
    e.resign(ResignRequest {
        leader: Some(la.clone()),
    })
    .await
    .expect("resign");
    let b = b.await.expect("task").expect("campaign b").into_inner();
    let lb = b.leader.expect("leader key");
    seen.push(format!(
        "b leads: {} rev {}",
        String::from_utf8_lossy(&lb.key),
        lb.rev
    ));
    // The old leader's key no longer proves anything.
    match e
        .proclaim(ProclaimRequest {
            leader: Some(la),
            value: b"stale".to_vec(),
        })
        .await
    {
        Ok(_) => seen.push("stale proclaim accepted".into()),
        Err(st) => seen.push(format!("stale proclaim: {}", status_text(&st))),
    }
    match e
        .proclaim(ProclaimRequest {
            leader: None,
            value: vec![],
        })
        .await
    {
        Ok(_) => seen.push("proclaim without a leader accepted".into()),
        Err(st) => seen.push(format!("proclaim without a leader: {}", status_text(&st))),
    }
    // The observer saw every proclamation, in order.
    seen.extend(observer.await.expect("observer"));
    seen
}

/// The Lock and Election services answer as etcd's, step by step.
async fn lock_and_election_services_match_etcd(engine: Engine) {
    let pair = tokio::task::spawn_blocking(move || Pair::start(engine))
        .await
        .expect("start");
    let want = lock_scenario(&pair.etcd).await;
    let got = lock_scenario(&pair.ms).await;
    assert_eq!(got, want, "Lock: MetaStore (left) against etcd (right)");
    let want = election_scenario(&pair.etcd).await;
    let got = election_scenario(&pair.ms).await;
    assert_eq!(got, want, "Election: MetaStore (left) against etcd (right)");
}

fn etcdctl_spawn(s: &Server, args: &[&str]) -> Child {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(s.endpoint())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed")
}

/// What a long-running etcdctl prints, line by line.
struct Printed {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Printed {
    fn of(child: &mut Child) -> Printed {
        let mut out = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Printed {
            rx,
            buf: Vec::new(),
        }
    }

    /// The next `n` lines (fewer if 10 s pass).
    fn lines(&mut self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.buf.iter().filter(|b| **b == b'\n').count() < n && Instant::now() < deadline {
            if let Ok(chunk) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.buf.extend(chunk);
            }
        }
        let mut cut = 0;
        for _ in 0..n {
            match self.buf[cut..].iter().position(|b| *b == b'\n') {
                Some(i) => cut += i + 1,
                None => {
                    cut = self.buf.len();
                    break;
                }
            }
        }
        let text: Vec<u8> = self.buf.drain(..cut).collect();
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Ctrl-C: etcdctl unlocks (or resigns) and closes its session.
fn interrupt(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Lease ids in etcdctl's output differ between servers.
fn mask_hex(text: &str) -> String {
    text.lines()
        .map(|l| match l.rsplit_once('/') {
            Some((name, id)) if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                format!("{name}/<lease>")
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `etcdctl lock` and `etcdctl elect` (client-side recipes on KV, Lease and
/// Watch): the same output as against etcd, and the same waiting.
fn etcdctl_lock_and_elect_like_etcd(engine: Engine) {
    let pair = Pair::start(engine);
    let mut diffs = Vec::new();
    let run = |s: &Server| -> Vec<String> {
        let mut seen = Vec::new();
        // A held lock: a second locker runs its command only after the
        // first holder goes.
        let mut holder = etcdctl_spawn(s, &["lock", "mylock"]);
        seen.push(mask_hex(&Printed::of(&mut holder).lines(1)));
        let started = Instant::now();
        let mut second = etcdctl_spawn(
            s,
            &["lock", "mylock", "sh", "-c", "echo got $ETCD_LOCK_KEY"],
        );
        std::thread::sleep(Duration::from_millis(800));
        seen.push(format!(
            "second still waiting: {}",
            second.try_wait().ok().flatten().is_none()
        ));
        interrupt(&mut holder);
        let out = second.wait_with_output().expect("second locker");
        seen.push(mask_hex(String::from_utf8_lossy(&out.stdout).trim()));
        seen.push(format!(
            "waited: {}",
            started.elapsed() > Duration::from_millis(700)
        ));
        // Elections: the first campaigner leads, an observer sees it.
        let mut leader = etcdctl_spawn(s, &["elect", "myelection", "p1"]);
        seen.push(mask_hex(&Printed::of(&mut leader).lines(2)));
        let mut observer = etcdctl_spawn(s, &["elect", "-l", "myelection"]);
        let mut observed = Printed::of(&mut observer);
        seen.push(mask_hex(&observed.lines(2)));
        let mut next = etcdctl_spawn(s, &["elect", "myelection", "p2"]);
        let mut next_out = Printed::of(&mut next);
        std::thread::sleep(Duration::from_millis(500));
        seen.push(format!(
            "p2 waiting: {}",
            next.try_wait().ok().flatten().is_none()
        ));
        // Interrupted, the leader resigns: p2 leads, the observer sees it.
        interrupt(&mut leader);
        seen.push(mask_hex(&next_out.lines(2)));
        seen.push(mask_hex(&observed.lines(2)));
        interrupt(&mut next);
        interrupt(&mut observer);
        seen
    };
    let want = run(&pair.etcd);
    let got = run(&pair.ms);
    if want != got {
        diffs.push(format!("etcd:      {want:?}\nmetastore: {got:?}"));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

engine_tests!(async: lock_and_election_services_match_etcd);
engine_tests!(sync: etcdctl_lock_and_elect_like_etcd);
