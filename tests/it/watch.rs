//! Watch: etcdctl side by side with etcd 3.4, and MetaStore's own guarantees
//! (every revision exactly once to every matching watcher, on every member;
//! a slow reader costs bounded memory and slows nobody).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metastore::proto::etcdserverpb::watch_client::WatchClient;
use metastore::proto::etcdserverpb::{
    watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::etcdctl::{normalise_stderr, normalise_stdout};
use crate::harness::{Engine, Pair, Server};

/// Runs `etcdctl watch <args>` until it printed something and then nothing
/// for a second (or exited, or 8 s passed); returns (stdout, stderr),
/// normalised.
fn etcdctl_watch(s: &Server, args: &[&str]) -> (String, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(s.endpoint())
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed");
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let wait = if out.is_empty() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        };
        match rx.recv_timeout(wait) {
            Ok(chunk) => out.extend(chunk),
            Err(_) => break,
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let done = child.wait_with_output().expect("etcdctl output");
    (
        normalise_stdout(&String::from_utf8_lossy(&out)),
        normalise_stderr(&String::from_utf8_lossy(&done.stderr)),
    )
}

fn write_history(s: &Server) {
    for args in [
        &["put", "k1", "a"][..],
        &["put", "k2", "b"],
        &["put", "k1", "c"],
        &["put", "other", "x"],
        &["del", "k", "--prefix"],
        &["put", "k3", "d"],
    ] {
        assert!(s.etcdctl(args).status.success(), "etcdctl {args:?}");
    }
}

/// `etcdctl watch` replaying history (--rev), with --prefix, --prev-kv,
/// ranges, -w json and after compaction: the same output as etcd's.
fn etcdctl_watch_replays_like_etcd(engine: Engine) {
    let pair = Pair::start(engine);
    write_history(&pair.etcd);
    write_history(&pair.ms);
    let cases: &[&[&str]] = &[
        &["--rev", "2", "k1"],
        &["--rev", "2", "--prefix", "k"],
        &["--rev", "2", "--prefix", "k", "--prev-kv"],
        &["--rev", "3", "k1", "k3"],
        &["--rev", "2", "-w", "json", "--prefix", "k"],
        &["--rev", "4", "-w", "json", "--prev-kv", "k1"],
        &["--rev", "1", "--prefix", "''"],
        &["--rev", "2", "--prefix", "k", "-w", "fields"],
    ];
    let mut diffs = Vec::new();
    for args in cases {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "''" { "" } else { a })
            .collect();
        let want = etcdctl_watch(&pair.etcd, &args);
        let got = etcdctl_watch(&pair.ms, &args);
        assert!(!want.0.is_empty(), "etcd printed nothing for {args:?}");
        if want != got {
            diffs.push(format!(
                "watch {args:?}\n  etcd:      {want:?}\n  metastore: {got:?}"
            ));
        }
    }
    // After compaction: the watch is canceled with etcd's message.
    for s in [&pair.etcd, &pair.ms] {
        assert!(s.etcdctl(&["compact", "5"]).status.success());
    }
    let args = ["--rev", "2", "k1"];
    let want = etcdctl_watch(&pair.etcd, &args);
    let got = etcdctl_watch(&pair.ms, &args);
    if want != got {
        diffs.push(format!(
            "watch after compaction {args:?}\n  etcd:      {want:?}\n  metastore: {got:?}"
        ));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

engine_tests!(sync: etcdctl_watch_replays_like_etcd);

/// A raw Watch stream: requests in, responses out.
pub(crate) struct RawWatch {
    pub(crate) tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl RawWatch {
    pub(crate) async fn open(endpoint: &str) -> RawWatch {
        let channel = Channel::from_shared(format!("http://{endpoint}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        RawWatch::on(channel).await
    }

    /// A stream whose first request creates `req`, queued before the call
    /// is made: etcd (grpc-go) sends the response headers only with its
    /// first response, so opening first and creating after would wait
    /// forever.
    pub(crate) async fn open_creating(endpoint: &str, req: WatchCreateRequest) -> RawWatch {
        let channel = Channel::from_shared(format!("http://{endpoint}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(64);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(req)),
        })
        .await
        .expect("queue the create");
        RawWatch::call(channel, tx, rx).await
    }

    async fn on(channel: Channel) -> RawWatch {
        let (tx, rx) = mpsc::channel(64);
        RawWatch::call(channel, tx, rx).await
    }

    async fn call(
        channel: Channel,
        tx: mpsc::Sender<WatchRequest>,
        rx: mpsc::Receiver<WatchRequest>,
    ) -> RawWatch {
        let resp = WatchClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch stream");
        RawWatch {
            tx,
            rx: resp.into_inner(),
        }
    }

    pub(crate) async fn create(&self, req: WatchCreateRequest) {
        self.tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(req)),
            })
            .await
            .expect("send create");
    }

    pub(crate) async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("a watch response within 20 s")
            .expect("stream ok")
            .expect("stream open")
    }
}

pub(crate) fn prefix(p: &str) -> WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    WatchCreateRequest {
        key: p.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    }
}

/// Reads until every watcher on the stream saw `per_watcher` events;
/// asserts each got revisions strictly increasing (no duplicates).
async fn collect(w: &mut RawWatch, watchers: usize, per_watcher: usize) -> Vec<Vec<i64>> {
    let mut seen: Vec<Vec<i64>> = vec![Vec::new(); watchers];
    let mut done = 0;
    while done < watchers {
        let r = w.next().await;
        assert!(!r.canceled, "watcher canceled: {r:?}");
        let id = r.watch_id as usize;
        for e in &r.events {
            let rev = e.kv.as_ref().expect("kv").mod_revision;
            let revs = &mut seen[id];
            assert!(
                revs.last().is_none_or(|l| *l < rev),
                "watcher {id}: {rev} after {:?}",
                revs.last()
            );
            revs.push(rev);
            if revs.len() == per_watcher {
                done += 1;
            }
        }
    }
    seen
}

/// 1,000 watchers on one prefix over 10 streams each receive every event
/// of a concurrent put load exactly once, in order.
async fn a_thousand_watchers_get_every_event_once(engine: Engine) {
    let s = Server::start_on(engine);
    let channel = Channel::from_shared(format!("http://{}", s.endpoint()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut streams = Vec::new();
    for _ in 0..10 {
        let w = RawWatch::on(channel.clone()).await;
        for _ in 0..100 {
            w.create(prefix("w/")).await;
        }
        streams.push(w);
    }
    for w in &mut streams {
        for _ in 0..100 {
            assert!(w.next().await.created);
        }
    }
    const PUTS: usize = 2000;
    let mut writers = Vec::new();
    for c in 0..8 {
        let mut client = s.client().await;
        writers.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in (c..PUTS).step_by(8) {
                let r = client
                    .put(format!("w/{i}"), vec![b'v'; 64], None)
                    .await
                    .expect("put");
                revs.push(r.header().expect("header").revision());
            }
            revs
        }));
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut w| tokio::spawn(async move { collect(&mut w, 100, PUTS).await }))
        .collect();
    let mut written: Vec<i64> = Vec::new();
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    written.sort_unstable();
    for r in readers {
        for revs in r.await.expect("reader") {
            assert_eq!(
                revs, written,
                "every watcher sees every write once, in order"
            );
        }
    }
}

/// A watcher on every member of a 3-member cluster sees the same events as
/// the others, whichever member the writes went to.
async fn watchers_on_followers_see_every_event(engine: Engine) {
    let mut cluster = crate::harness::Cluster::start(3, engine, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let endpoints = cluster.endpoints();
    let mut streams = Vec::new();
    for ep in &endpoints {
        let mut w = RawWatch::open(ep).await;
        w.create(prefix("f/")).await;
        assert!(w.next().await.created);
        streams.push(w);
    }
    const PUTS: usize = 300;
    let mut clients = Vec::new();
    for ep in &endpoints {
        clients.push(
            etcd_client::Client::connect([ep.as_str()], None)
                .await
                .expect("connect"),
        );
    }
    for i in 0..PUTS {
        // Spread over the members: followers forward to the leader.
        let c = &mut clients[(i + leader) % 3];
        if i % 10 == 9 {
            c.delete(format!("f/{}", i - 1), None)
                .await
                .expect("delete");
        } else {
            c.put(format!("f/{i}"), format!("{i}"), None)
                .await
                .expect("put");
        }
    }
    let mut sequences = Vec::new();
    for w in &mut streams {
        let mut events = Vec::new();
        while events.len() < PUTS {
            let r = w.next().await;
            for e in r.events {
                let kv = e.kv.expect("kv");
                events.push((e.r#type, kv.key, kv.value, kv.mod_revision));
            }
        }
        sequences.push(events);
    }
    assert_eq!(sequences[0], sequences[1], "member 1 saw what member 0 saw");
    assert_eq!(sequences[0], sequences[2], "member 2 saw what member 0 saw");
    let revs: Vec<i64> = sequences[0].iter().map(|e| e.3).collect();
    assert!(
        revs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free revisions"
    );
}

/// RSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A watcher whose client never reads: writes go on, the server's memory
/// stays bounded (its responses are not queued without end), and once the
/// client reads it gets events in order, without a gap, until the point
/// compaction took from it (then it is canceled, as etcd does).
async fn a_watcher_that_never_reads_costs_bounded_memory(engine: Engine) {
    // Snapshots every 4,000 entries keep the Raft log (which holds every
    // value until then) from growing over the run.
    let s = Server::start_with(
        crate::harness::Kind::MetaStore(engine),
        &["--snapshot-count", "4000"],
    );
    let pid = s.pid().expect("running");
    let mut stuck = RawWatch::open(&s.endpoint()).await;
    stuck.create(prefix("s/")).await;
    const WRITERS: usize = 4;
    const ROUNDS: usize = 12;
    const PER_ROUND: usize = 640;
    let value = vec![b'x'; 8192];
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(s.client().await);
    }
    // 12 rounds of 2,560 puts of 8 KiB (20 MiB of events per round) on 400
    // keys, compacting after each so the store itself stays small. The
    // server's memory grows in the first rounds with or without a watcher
    // (Raft log until the first snapshots, allocator pools, the watch ring
    // filling up to its bound) and then stays flat; measured without the
    // stuck watcher: +21 MiB (memory) and +24 MiB (rocksdb) from round 4 to
    // round 8. A queue that kept the stuck watcher's responses would grow
    // by the 120 MiB of the last 6 rounds.
    let round = |clients: Vec<etcd_client::Client>, r: usize| {
        let value = value.clone();
        async move {
            let mut tasks = Vec::new();
            for (w, mut c) in clients.into_iter().enumerate() {
                let value = value.clone();
                tasks.push(tokio::spawn(async move {
                    let mut last = 0;
                    for i in 0..PER_ROUND {
                        let key = format!("s/{}", (w * PER_ROUND + i + r) % 400);
                        let resp = c.put(key, value.clone(), None).await.expect("puts go on");
                        last = resp.header().expect("header").revision();
                    }
                    (c, last)
                }));
            }
            let mut back = Vec::new();
            let mut last = 0;
            for t in tasks {
                let (c, l) = t.await.expect("writer");
                back.push(c);
                last = last.max(l);
            }
            (back, last)
        }
    };
    let mut rss = Vec::new();
    for r in 0..ROUNDS {
        let (c, last) = round(clients, r).await;
        clients = c;
        clients[0].compact(last - 100, None).await.expect("compact");
        rss.push(rss_kib(pid) / 1024);
    }
    let half = ROUNDS / 2;
    let grown = rss[half..]
        .iter()
        .max()
        .copied()
        .unwrap_or(0)
        .saturating_sub(rss[half - 1]);
    assert!(
        grown < 50,
        "the server grew {grown} MiB while the last 120 MiB of events went to a stuck \
         watcher (RSS per round, MiB: {rss:?})"
    );
    // The stuck watcher now reads: what was queued before it fell behind,
    // then history until compaction took it away: canceled with the
    // compact revision, never a gap.
    assert!(stuck.next().await.created);
    let mut prev = 0;
    loop {
        let r = stuck.next().await;
        if r.canceled {
            assert!(
                r.compact_revision > prev,
                "canceled at {} after {prev}",
                r.compact_revision
            );
            break;
        }
        for e in r.events {
            let rev = e.kv.expect("kv").mod_revision;
            assert!(prev == 0 || rev == prev + 1, "gap: {rev} after {prev}");
            prev = rev;
        }
    }
}

/// A reader that falls behind and then reads gets every event exactly once.
async fn a_slow_reader_catches_up_exactly_once(engine: Engine) {
    let s = Server::start_on(engine);
    let mut slow = RawWatch::open(&s.endpoint()).await;
    slow.create(prefix("c/")).await;
    assert!(slow.next().await.created);
    let mut client = s.client().await;
    let value = vec![b'y'; 2048];
    let mut revs = Vec::new();
    for i in 0..6000 {
        let r = client
            .put(format!("c/{}", i % 300), value.clone(), None)
            .await
            .expect("put");
        revs.push(r.header().expect("header").revision());
    }
    let mut got = Vec::new();
    while got.len() < revs.len() {
        let r = slow.next().await;
        assert!(!r.canceled);
        got.extend(
            r.events
                .iter()
                .map(|e| e.kv.as_ref().expect("kv").mod_revision),
        );
    }
    assert_eq!(got, revs);
}

engine_tests!(async:
    a_thousand_watchers_get_every_event_once,
    watchers_on_followers_see_every_event,
    a_watcher_that_never_reads_costs_bounded_memory,
    a_slow_reader_catches_up_exactly_once,
);
