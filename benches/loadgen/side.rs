//! Side loads that run next to the measured workload, on a client thread of
//! their own (like another application process):
//!
//! * `--watchers N` watchers on every key (key "\0", range end "\0": the
//!   whole keyspace, so every put matches), spread over `--watch-streams`
//!   streams, each stream on its own connection. Each watcher must receive
//!   every revision written in the measured phase exactly once, in order;
//!   after the phase the load generator waits (up to --max-seconds) until
//!   every watcher has them all and reports what was lost or repeated and how
//!   long the last watcher lagged behind the last write. Responses are read
//!   without decoding the events' keys and values (only each event's
//!   `mod_revision` is read from the bytes), so the watchers' client costs
//!   what an application's receive path must cost at least.
//!   With `--watch-own-key` watcher j watches only key j mod keyspace (one
//!   key each, as 10,000 controllers each watching their object would) and
//!   must receive every put to that key exactly once, in order: the count
//!   is known from the sequential put workload.
//! * `--idle-conns N` connections, each on its own HTTP/2 channel, that
//!   answer one Range before the phase and then stay idle through it (as
//!   many application processes that connected and wait): the server's RSS
//!   growth while the side loads were set up is reported (bench.rs).
//! * `--leases N` leases of `--lease-ttl` seconds, granted before the phase
//!   (not measured) and kept alive by one client on one LeaseKeepAlive
//!   stream: each lease is renewed every third of its TTL. A keep-alive
//!   answered with TTL 0 means the lease expired: counted as lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metastore::proto::etcdserverpb::lease_client::LeaseClient;
use metastore::proto::etcdserverpb::{
    watch_request::RequestUnion, LeaseGrantRequest, LeaseKeepAliveRequest, WatchCreateRequest,
    WatchRequest,
};
use metastore::proto::metastorepb::WatchResponseWire;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What the watchers saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchStats {
    pub watchers: usize,
    pub streams: usize,
    /// Each watcher on its own key (--watch-own-key).
    pub own_key: bool,
    /// Revisions each watcher should have seen (writes in the phase; with
    /// own keys the puts to its key, on average).
    pub expected_per_watcher: u64,
    /// Events received over all watchers.
    pub events: u64,
    /// Watchers that got every revision exactly once, in order.
    pub complete: usize,
    /// Revisions missing, summed over watchers.
    pub lost: u64,
    /// Events received twice or out of order, summed over watchers.
    pub repeated: u64,
    /// From the end of the phase until the last watcher had everything.
    pub drain_ms: u64,
    /// Watchers the server canceled.
    pub canceled: usize,
}

/// What the lease keeper saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeaseStats {
    pub leases: usize,
    pub ttl_s: i64,
    pub keepalives_sent: u64,
    pub keepalives_answered: u64,
    /// Answers with TTL 0: leases that expired while kept alive.
    pub expired: u64,
}

async fn connect(endpoint: &str) -> Result<Channel, String> {
    let url = format!("http://{}", crate::http::host_port(endpoint));
    tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| format!("endpoint {endpoint}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .connect()
        .await
        .map_err(|e| format!("connect {endpoint}: {e}"))
}

/// The `mod_revision` of an encoded `mvccpb.Event` (field 2, kv; inside it
/// field 3), read without decoding the rest.
fn mod_revision(event: &[u8]) -> Option<i64> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn field(b: &[u8], want: u64, want_varint: bool) -> Option<(u64, std::ops::Range<usize>)> {
        let mut i = 0;
        while i < b.len() {
            let tag = varint(b, &mut i)?;
            let (num, wire) = (tag >> 3, tag & 7);
            match wire {
                0 => {
                    let v = varint(b, &mut i)?;
                    if num == want && want_varint {
                        return Some((v, 0..0));
                    }
                }
                2 => {
                    let len = varint(b, &mut i)? as usize;
                    let r = i..i.checked_add(len)?;
                    if r.end > b.len() {
                        return None;
                    }
                    if num == want && !want_varint {
                        return Some((0, r));
                    }
                    i = r.end;
                }
                1 => i += 8,
                5 => i += 4,
                _ => return None,
            }
        }
        None
    }
    let (_, kv) = field(event, 2, false)?;
    field(&event[kv], 3, true).map(|(v, _)| v as i64)
}

/// `--watch-own-key`: watcher j's key and how many puts of the phase go
/// to it.
#[derive(Clone)]
pub struct OwnKeys {
    pub keys: Vec<Vec<u8>>,
    pub expected: Vec<u64>,
}

impl OwnKeys {
    /// Watcher j on key j mod keyspace of the sequential put workload,
    /// which writes key i mod keyspace at operation i of `total`.
    pub fn for_put_workload(args: &crate::cli::Args, watchers: usize) -> OwnKeys {
        let spec = crate::workload::Spec::new(args);
        let (ks, total) = (spec.keyspace, args.total);
        let (keys, expected) = (0..watchers as u64)
            .map(|j| {
                let k = j % ks;
                (spec.key(k), total / ks + u64::from(k < total % ks))
            })
            .unzip();
        OwnKeys { keys, expected }
    }
}

/// Watch streams, started and created before the phase.
pub struct Watchers {
    streams: Vec<tokio::task::JoinHandle<Result<StreamSeen, String>>>,
    /// Last revision written in the phase (0 until known).
    last_rev: Arc<AtomicU64>,
    /// First revision of the phase.
    first_rev: i64,
    watchers: usize,
    stop: Arc<AtomicBool>,
    own: Option<OwnKeys>,
}

#[derive(Default)]
struct StreamSeen {
    /// Per watcher on the stream: next revision expected, events, lost,
    /// repeated, done.
    per: Vec<PerWatcher>,
    canceled: usize,
    done_at: Option<Instant>,
}

#[derive(Default, Clone)]
struct PerWatcher {
    last: i64,
    events: u64,
    lost: u64,
    repeated: u64,
}

impl Watchers {
    /// Opens `streams` streams to `endpoints` (round robin) with
    /// `watchers` watchers in all, each watching every key (or its own key)
    /// from `from`.
    pub async fn start(
        endpoints: &[String],
        watchers: usize,
        streams: usize,
        from: i64,
        own: Option<OwnKeys>,
    ) -> Result<Watchers, String> {
        let streams = streams.clamp(1, watchers.max(1));
        let last_rev = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let (ready_tx, mut ready_rx) = mpsc::channel(streams);
        let mut first = 0;
        for s in 0..streams {
            let n = watchers / streams + usize::from(s < watchers % streams);
            let channel = connect(&endpoints[s % endpoints.len()]).await?;
            let last_rev = last_rev.clone();
            let stop = stop.clone();
            let ready = ready_tx.clone();
            let mine = own.as_ref().map(|o| OwnKeys {
                keys: o.keys[first..first + n].to_vec(),
                expected: o.expected[first..first + n].to_vec(),
            });
            first += n;
            handles.push(tokio::spawn(async move {
                run_stream(channel, n, from, last_rev, stop, ready, mine).await
            }));
        }
        drop(ready_tx);
        for _ in 0..streams {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("a watch stream ended before its watchers were created".into()),
            }
        }
        Ok(Watchers {
            streams: handles,
            last_rev,
            first_rev: from,
            watchers,
            stop,
            own,
        })
    }

    /// The phase wrote up to `last`: waits until every watcher has it (or
    /// `max` passes), then reports.
    pub async fn finish(self, last: i64, max: Duration) -> Result<WatchStats, String> {
        let ended = Instant::now();
        self.last_rev.store(last as u64, Ordering::Release);
        let stop = self.stop.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(max).await;
            stop.store(true, Ordering::Release);
        });
        let expected = match &self.own {
            // Per watcher on average; each is checked against its own count.
            Some(o) => o.expected.iter().sum::<u64>() / o.expected.len().max(1) as u64,
            None => (last - self.first_rev + 1).max(0) as u64,
        };
        let mut stats = WatchStats {
            watchers: self.watchers,
            streams: self.streams.len(),
            expected_per_watcher: expected,
            own_key: self.own.is_some(),
            ..Default::default()
        };
        let mut drained = ended;
        let mut own_expected = self.own.as_ref().map(|o| o.expected.iter());
        for h in self.streams {
            let seen = h.await.map_err(|e| e.to_string())??;
            stats.canceled += seen.canceled;
            if let Some(t) = seen.done_at {
                drained = drained.max(t);
            }
            for w in seen.per {
                stats.events += w.events;
                stats.repeated += w.repeated;
                let (missing, want) = match own_expected.as_mut() {
                    // Its own key's puts: a count, not a run of revisions.
                    Some(exp) => {
                        let want = *exp.next().ok_or("more watchers than keys")?;
                        (want.saturating_sub(w.events - w.repeated), want)
                    }
                    None => (w.lost + (last - w.last).max(0) as u64, expected),
                };
                stats.lost += missing;
                if missing == 0 && w.repeated == 0 && w.events == want {
                    stats.complete += 1;
                }
            }
        }
        timer.abort();
        stats.drain_ms = drained.saturating_duration_since(ended).as_millis() as u64;
        Ok(stats)
    }
}

async fn run_stream(
    channel: Channel,
    watchers: usize,
    from: i64,
    last_rev: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), String>>,
    own: Option<OwnKeys>,
) -> Result<StreamSeen, String> {
    let (tx, rx) = mpsc::channel(watchers.max(1));
    for w in 0..watchers {
        let (key, range_end) = match &own {
            Some(o) => (o.keys[w].clone(), Vec::new()),
            None => (vec![0], vec![0]),
        };
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key,
                range_end,
                start_revision: from,
                ..Default::default()
            })),
        };
        tx.send(create).await.map_err(|e| e.to_string())?;
    }
    // Decoded as WatchResponseWire: the events stay encoded.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let codec = tonic_prost::ProstCodec::<WatchRequest, WatchResponseWire>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let mut responses = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
        .map_err(|e| format!("watch: {}", e.message()))?
        .into_inner();
    let mut seen = StreamSeen {
        per: vec![PerWatcher::default(); watchers],
        ..Default::default()
    };
    let mut ids: std::collections::HashMap<i64, usize> = Default::default();
    let mut created = 0;
    let mut told = false;
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let target = last_rev.load(Ordering::Acquire) as i64;
        let all_in = match &own {
            Some(o) => seen
                .per
                .iter()
                .zip(&o.expected)
                .all(|(p, &e)| p.events - p.repeated >= e),
            None => seen.per.iter().all(|p| p.last >= target),
        };
        if target > 0 && all_in {
            seen.done_at.get_or_insert_with(Instant::now);
            break;
        }
        let msg = match tokio::time::timeout(Duration::from_millis(10), responses.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Err("watch stream ended".into()),
            Ok(Err(e)) => return Err(format!("watch stream: {}", e.message())),
        };
        if msg.created {
            ids.insert(msg.watch_id, created);
            created += 1;
            if created == watchers && !told {
                told = true;
                let _ = ready.send(Ok(())).await;
            }
            continue;
        }
        if msg.canceled {
            seen.canceled += 1;
            continue;
        }
        let Some(&w) = ids.get(&msg.watch_id) else {
            continue;
        };
        let per = &mut seen.per[w];
        for e in &msg.events {
            let rev = mod_revision(e).unwrap_or(0);
            per.events += 1;
            if own.is_some() {
                // One key's revisions have gaps; only the order is checked.
                if rev <= per.last {
                    per.repeated += 1;
                    continue;
                }
            } else if per.last == 0 {
                per.lost += (rev - from).max(0) as u64;
            } else if rev <= per.last {
                per.repeated += 1;
                continue;
            } else {
                per.lost += (rev - per.last - 1) as u64;
            }
            per.last = rev;
        }
    }
    if !told {
        let _ = ready
            .send(Err("not every watcher was created".into()))
            .await;
    }
    drop(tx);
    Ok(seen)
}

/// Leases kept alive during the phase.
pub struct Keeper {
    task: tokio::task::JoinHandle<Result<LeaseStats, String>>,
    stop: Arc<AtomicBool>,
}

impl Keeper {
    /// Grants `n` leases of `ttl` seconds on `endpoint` and starts keeping
    /// them alive.
    pub async fn start(endpoint: &str, n: usize, ttl: i64) -> Result<Keeper, String> {
        let channel = connect(endpoint).await?;
        // Granted 64 at a time (not measured).
        use futures::StreamExt;
        let ids: Vec<i64> = futures::stream::iter(0..n)
            .map(|_| {
                let mut lc = LeaseClient::new(channel.clone());
                async move {
                    lc.lease_grant(LeaseGrantRequest { ttl, id: 0 })
                        .await
                        .map(|r| r.into_inner().id)
                        .map_err(|e| format!("lease grant: {}", e.message()))
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move { keep(channel, ids, ttl, s).await });
        Ok(Keeper { task, stop })
    }

    /// Stops and reports.
    pub async fn finish(self) -> Result<LeaseStats, String> {
        self.stop.store(true, Ordering::Release);
        self.task.await.map_err(|e| e.to_string())?
    }
}

async fn keep(
    channel: Channel,
    ids: Vec<i64>,
    ttl: i64,
    stop: Arc<AtomicBool>,
) -> Result<LeaseStats, String> {
    let (tx, rx) = mpsc::channel(1024);
    // The sender runs before the call is answered: a server may send its
    // response headers only with the first answer.
    let n = ids.len();
    let sender = tokio::spawn(async move {
        // Every lease once per third of its TTL, spread evenly.
        let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
        let gap = period / ids.len().max(1) as u32;
        let mut sent = 0u64;
        let mut next = tokio::time::Instant::now();
        'outer: loop {
            for id in &ids {
                if stop.load(Ordering::Acquire) {
                    break 'outer;
                }
                if tx.send(LeaseKeepAliveRequest { id: *id }).await.is_err() {
                    break 'outer;
                }
                sent += 1;
                next += gap;
                tokio::time::sleep_until(next).await;
            }
        }
        sent
    });
    let mut responses = LeaseClient::new(channel)
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("keep-alive: {}", e.message()))?
        .into_inner();
    let answered = Arc::new(AtomicU64::new(0));
    let expired = Arc::new(AtomicU64::new(0));
    let (a, x) = (answered.clone(), expired.clone());
    let reader = tokio::spawn(async move {
        while let Ok(Some(r)) = responses.message().await {
            a.fetch_add(1, Ordering::Relaxed);
            if r.ttl <= 0 {
                x.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let sent = sender.await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    Ok(LeaseStats {
        leases: n,
        ttl_s: ttl,
        keepalives_sent: sent,
        keepalives_answered: answered.load(Ordering::Relaxed),
        expired: expired.load(Ordering::Relaxed),
    })
}

/// What the side loads report.
#[derive(Default)]
pub struct SideStats {
    /// Idle connections held through the phase.
    pub idle_conns: usize,
    pub watch: Option<WatchStats>,
    pub lease: Option<LeaseStats>,
    pub defrag: Option<DefragStats>,
}

/// What `--defrag-every-ms` saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DefragStats {
    pub every_ms: u64,
    pub calls: u64,
    pub errors: u64,
    /// How long the Defragment calls took.
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// Calls Maintenance.Defragment every `every` while the phase runs.
pub struct Defragger {
    task: tokio::task::JoinHandle<DefragStats>,
    stop: Arc<AtomicBool>,
}

impl Defragger {
    pub async fn start(endpoint: &str, every: Duration) -> Result<Defragger, String> {
        use metastore::proto::etcdserverpb::maintenance_client::MaintenanceClient;
        use metastore::proto::etcdserverpb::DefragmentRequest;
        let mut client = MaintenanceClient::new(connect(endpoint).await?);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut st = DefragStats {
                every_ms: every.as_millis() as u64,
                ..Default::default()
            };
            let mut total = 0.0;
            while !s.load(Ordering::Acquire) {
                tokio::time::sleep(every).await;
                if s.load(Ordering::Acquire) {
                    break;
                }
                let t = Instant::now();
                match client.defragment(DefragmentRequest {}).await {
                    Ok(_) => {
                        let ms = t.elapsed().as_secs_f64() * 1000.0;
                        st.calls += 1;
                        total += ms;
                        st.max_ms = st.max_ms.max(ms);
                    }
                    Err(_) => st.errors += 1,
                }
            }
            st.mean_ms = if st.calls > 0 {
                total / st.calls as f64
            } else {
                0.0
            };
            st
        });
        Ok(Defragger { task, stop })
    }

    pub async fn finish(self) -> Result<DefragStats, String> {
        self.stop.store(true, Ordering::Release);
        self.task.await.map_err(|e| e.to_string())
    }
}

/// `n` connections over `endpoints` (round robin), each past one Range.
async fn open_idle(endpoints: &[String], n: usize) -> Result<Vec<Channel>, String> {
    use metastore::proto::etcdserverpb::kv_client::KvClient;
    use metastore::proto::etcdserverpb::RangeRequest;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let channel = connect(&endpoints[i % endpoints.len()]).await?;
        KvClient::new(channel.clone())
            .range(RangeRequest {
                key: b"idle".to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("idle connection {i}: {}", e.message()))?;
        held.push(channel);
    }
    Ok(held)
}

/// The side loads' own client thread.
pub struct Side {
    handle: std::thread::JoinHandle<Result<SideStats, String>>,
    end: tokio::sync::oneshot::Sender<i64>,
}

impl Side {
    /// Starts the side loads the flags ask for (None: none), watching from
    /// revision `from`; returns once every watcher is created and every
    /// lease granted.
    pub fn start(
        args: &crate::cli::Args,
        endpoints: &[String],
        from: i64,
    ) -> Result<Option<Side>, String> {
        if args.watchers == 0
            && args.leases == 0
            && args.defrag_every_ms == 0
            && args.idle_conns == 0
        {
            return Ok(None);
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (end, end_rx) = tokio::sync::oneshot::channel::<i64>();
        let endpoints = endpoints.to_vec();
        let (watchers, streams, leases, ttl) = (
            args.watchers,
            args.watch_streams,
            args.leases,
            args.lease_ttl,
        );
        let max = Duration::from_secs(args.max_seconds);
        let defrag_every = Duration::from_millis(args.defrag_every_ms);
        let own = args
            .watch_own_key
            .then(|| OwnKeys::for_put_workload(args, watchers));
        let idle_conns = args.idle_conns;
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let started = async {
                    let idle = open_idle(&endpoints, idle_conns).await?;
                    let w = if watchers > 0 {
                        Some(Watchers::start(&endpoints, watchers, streams, from, own).await?)
                    } else {
                        None
                    };
                    let k = if leases > 0 {
                        Some(Keeper::start(&endpoints[0], leases, ttl).await?)
                    } else {
                        None
                    };
                    let d = if !defrag_every.is_zero() {
                        Some(Defragger::start(&endpoints[0], defrag_every).await?)
                    } else {
                        None
                    };
                    Ok::<_, String>((idle, w, k, d))
                }
                .await;
                let (idle, w, k, d) = match started {
                    Ok(x) => {
                        let _ = ready_tx.send(Ok(()));
                        x
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let last = end_rx.await.map_err(|e| e.to_string())?;
                let ws = match w {
                    Some(w) => Some(w.finish(last, max).await?),
                    None => None,
                };
                let ls = match k {
                    Some(k) => Some(k.finish().await?),
                    None => None,
                };
                let ds = match d {
                    Some(d) => Some(d.finish().await?),
                    None => None,
                };
                let idle_conns = idle.len();
                drop(idle);
                Ok(SideStats {
                    idle_conns,
                    watch: ws,
                    lease: ls,
                    defrag: ds,
                })
            })
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Some(Side { handle, end })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the side-load thread died while starting".into()),
        }
    }

    /// The phase ended at revision `last`: waits for the watchers to have
    /// everything, stops the keeper, reports.
    pub fn finish(self, last: i64) -> Result<SideStats, String> {
        let _ = self.end.send(last);
        self.handle
            .join()
            .map_err(|_| "the side-load thread panicked".to_owned())?
    }
}
