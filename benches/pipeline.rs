//! Actor-level load test: drives the RaftActor → WalWriter → ApplyActor
//! pipeline directly with `Propose` messages, no gRPC, to show the core's own
//! ceiling (fsync on, as in the daemon).
//!
//! `cargo bench --bench pipeline -- [--clients 50] [--total 50000] [--value-size 256] [--engine rocksdb]`
//!
//! Prints puts/s, latency percentiles and the entries per fsync the group
//! commit achieved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::System;
use clap::Parser;
use hdrhistogram::Histogram;
use prost::Message as _;
use tokio::sync::oneshot;

use metastore::actors::messages::Propose;
use metastore::actors::{start_core, Core};
use metastore::api::RequestIds;
use metastore::config::{Config, Engine};
use metastore::proto::etcdserverpb::PutRequest;
use metastore::proto::metastorepb::{internal_request, InternalRequest};
use metastore::server::{prepare, recover};
use metastore::status::{Faults, NodeStatus};

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent proposers.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Total puts.
    #[arg(long, default_value_t = 50_000)]
    total: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Storage engine.
    #[arg(long, value_enum, default_value = "memory")]
    engine: Engine,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

async fn proposer(
    core: Core,
    ids: Arc<RequestIds>,
    n: usize,
    client: usize,
    value: Vec<u8>,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..n {
        let id = ids.next();
        let data = InternalRequest {
            id,
            request: Some(internal_request::Request::Put(PutRequest {
                key: format!("c{client:03}/k{i:08}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            })),
            caller: None,
        }
        .encode_to_vec();
        let (reply, rx) = oneshot::channel();
        let started = Instant::now();
        core.raft
            .send(Propose { id, data, reply })
            .await
            .expect("raft actor alive");
        rx.await.expect("answered").expect("put applied");
        let _ = hist.record(started.elapsed().as_micros() as u64);
    }
    hist
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = Config {
        data_dir: dir.path().to_owned(),
        snapshot_count: 100_000,
        engine: args.engine,
        ..Config::default()
    };
    let identity = prepare(&cfg).expect("data dir");
    let id = identity.member_id;
    let (rec, _) = recover(&cfg).expect("recover");
    let status = Arc::new(NodeStatus::new(identity.cluster_id, id));
    let system = System::new();
    system.block_on(async move {
        let (core, _threads) = start_core(
            &cfg,
            status.clone(),
            Arc::new(Faults::default()),
            metastore::tls::Dialer::plain(),
            rec,
        )
            .expect("start core");
        // Wait for the lone member to lead.
        while status.leader() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ids = Arc::new(RequestIds::new(id));
        let per = args.total / args.clients;
        let value = vec![b'v'; args.value_size];
        let wal_batches_before = core.metrics.render();
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.clients)
            .map(|c| tokio::task::spawn_local(proposer(core.clone(), ids.clone(), per, c, value.clone())))
            .collect();
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        for t in tasks {
            hist.add(t.await.expect("proposer")).expect("same bounds");
        }
        let elapsed = started.elapsed();
        let ops = per * args.clients;
        let (batches, entries) = wal_batch_stats(&core.metrics.render());
        let (b0, e0) = wal_batch_stats(&wal_batches_before);
        println!(
            "pipeline put: clients={} ops={} value={}B  {:.0} ops/s  p50={}us p99={}us p99.9={}us max={}us  entries/fsync={:.1}",
            args.clients,
            ops,
            args.value_size,
            ops as f64 / elapsed.as_secs_f64(),
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max(),
            (entries - e0) / (batches - b0).max(1.0),
        );
        System::current().stop();
    });
}

/// (count, sum) of the metastore_wal_batch_entries histogram.
fn wal_batch_stats(text: &str) -> (f64, f64) {
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        get("metastore_wal_batch_entries_count "),
        get("metastore_wal_batch_entries_sum "),
    )
}
