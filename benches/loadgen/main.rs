//! `loadgen`: one load generator for MetaStore and etcd 3.4, so the two are
//! measured with the same client, the same workload and the same machine in the
//! same run.
//!
//! # Usage
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/metastore-target
//! cargo build --release    # target/release/metastore (cargo bench builds it too)
//! cargo bench --bench loadgen -- --compare --workload put --clients 50 --total 50000
//! cargo bench --bench loadgen -- --endpoints 127.0.0.1:2379 --workload get --json
//! ```
//!
//! Two modes:
//!
//! * `--compare` starts a fresh etcd (`--etcd-bin`, default `etcd` on PATH) and
//!   a fresh MetaStore (each a cluster of `--members` members, default 1, one
//!   cluster at a time), each on free loopback ports with its own temp data dir
//!   (under `--data-root`, default the system temp dir), runs the identical
//!   workload against etcd and then MetaStore, prints both and the
//!   MetaStore/etcd ratios, then stops them. Both daemons run with their default
//!   settings (plus `--engine`, `--metastore-arg` and `--etcd-arg`), so both
//!   fsync their WAL before answering a write (etcd once per Raft ready,
//!   MetaStore once per group-commit batch).
//! * `--endpoints a,b` targets a server that is already running. Its CPU and RSS
//!   are read when `--server-pid` is given or when a listener on the first
//!   (loopback) endpoint's port can be found in /proc.
//!
//! The MetaStore binary is, in order: `--metastore-bin`, `$METASTORE_BIN`, or
//! the release binary `$CARGO_TARGET_DIR/release/metastore` that cargo builds
//! for this bench (the same file `cargo build --release` writes). A warning is
//! printed when that binary is older than the sources under `src/`.
//!
//! Without `--compare` or `--endpoints` the program prints a hint and exits 0,
//! so a plain `cargo bench` or `cargo test --all-targets` does not start daemons.
//!
//! # Workloads
//!
//! `--total` operations are shared by `--clients` concurrent clients (tasks),
//! each with one request in flight and, by default, its own gRPC connection
//! (HTTP/2 channel), as separate application processes would have;
//! `--conns N` makes the clients of each client thread share N connections
//! instead (etcd's `benchmark` tool defaults to one). Clients are split over
//! `--threads` client threads, and the operations into disjoint ranges, one
//! per thread. With several endpoints (`--endpoints a,b,c`, or a cluster
//! from `--members 3`) connection k goes to endpoint k mod n, so every
//! member serves an equal share of the clients. Operation `i` uses key
//! `i % keyspace` (or a uniformly random key with `--random-keys`), written as
//! a zero-padded decimal of `--key-size` bytes; values are `--value-size`
//! random bytes. `--keyspace` defaults to `--total`: every put writes a new key,
//! like `benchmark put --sequential-keys`.
//!
//! * `put`: `Put(k, v)`.
//! * `get`: linearizable `Range(k)`; `get-serializable`: serializable `Range(k)`.
//! * `txn`: `Txn(if version(k) > -1 then Put(k, v))`, a compare-and-put whose
//!   compare always holds (the API has no `>=`; `> -1` is `>= 0`).
//! * `mixed`: linearizable gets (`--read-percent`, default 50) and puts.
//!
//! Read workloads first put every key of the keyspace once (not measured). A
//! get that finds no key, or a txn whose compare fails, counts as an error.
//!
//! * `k8s` (k8s/): what kube-apiserver's storage layer does to etcd, for
//!   `--k8s-duration` (default 60s) after preloading `--keys` objects:
//!   optimistic creates, updates and deletes (compare-and-swap on
//!   mod_revision, retried on conflict), gets, counts, paginated LISTs,
//!   events put with a shared lease, a watcher per resource with prev_kv
//!   and progress requests, and the apiserver's compactor every
//!   `--k8s-compact-interval` (default 5m). Every LIST, read and watch
//!   event is checked against the writers' acknowledged writes; a violation
//!   fails the run. Reported per kind, with the watch lag, compactions,
//!   snapshot files and stalls (operations over 100 ms); `--csv` has one
//!   row per kind. `--keep-logs DIR` keeps the servers' logs.
//! * `scale` (scale.rs): issue 15's large store. `--keys` (default
//!   1,000,000) pods `/registry/pods/ns-<k % 100>/pod-<k>` of `--value-size`
//!   bytes put by `--clients` clients (fill time, RSS after the fill and its
//!   peak during it); three paginated LISTs of them all as the apiserver
//!   pages (500 a page at the first page's revision; each key checked to
//!   come back once, in order; time and RSS peak over the RSS before);
//!   three unpaginated Ranges of 100,000 keys (time, answer bytes, RSS peak
//!   and RSS 5 s after); Compact(revision after the fill) 10 s into 20 s of
//!   puts on other keys (put p50/p99/max before vs during, the call's time);
//!   and, with `--compare`, the first member SIGKILLed and started again
//!   (spawn to its first linearizable read, its RSS 5 s after); with
//!   `--compare` and `--members` 3 or more (not with `--auth`), a new
//!   member added as a learner (MemberAdd) and started empty with
//!   `--initial-cluster-state existing` (spawn to a serializable Range on
//!   it at the revision the cluster had, polled every 15 ms, at most
//!   120 s; its RSS then, 5 s after and its peak; the step fails if the
//!   leader's term moved, i.e. an election happened). RSS is VmRSS summed
//!   over the members, sampled every 100 ms (50 ms around LISTs and
//!   ranges). `--csv` has one row per step, `--timeline-csv` every RSS
//!   sample (round, server, step, seconds, KiB). With `--rounds`, every
//!   second round runs MetaStore before etcd.
//!
//! # Output
//!
//! Each run prints its summary when it ends, long runs a progress line on
//! stderr every 5 s. `--json` prints everything as JSON (each run with its
//! `timeline`: about 100 intervals of throughput and p50/p99/max latency);
//! `--csv FILE` writes one row per run, `--timeline-csv FILE` one row per
//! interval, and `--plot FILE.svg` draws throughput and p99 latency over
//! time for every run of every round, one colour per server.
//!
//! Side loads run next to any workload on a client thread of their own
//! (side.rs): `--watchers N` watchers on the whole keyspace over
//! `--watch-streams` streams (each must get every write of the phase exactly
//! once, in order; the report says how many did, what was lost or repeated,
//! and how long the slowest lagged behind the last write; with
//! `--watch-own-key` watcher j watches only key j mod keyspace and must get
//! every put to it), and `--leases N`
//! leases of `--lease-ttl` seconds kept alive by one client (a keep-alive
//! answered with TTL 0 is a lease that expired).
//!
//! `--tls` and `--auth` (with `--compare`, secure.rs) run the same workload
//! against servers with client TLS (certificates generated for the run,
//! https client URLs, /health and /metrics on a plain metrics port) and with
//! auth enabled (users `root` and `bench`; every client connection
//! authenticates as `bench` first and sends its token with each request).
//! `--auth-storm N` (storm.rs) adds N clients calling Authenticate in a loop
//! during the measured phase and reports their rate.
//!
//! # What is measured
//!
//! Only the measured phase, which starts once every connection has answered a
//! warm-up request:
//!
//! * throughput: successful operations / wall time of the phase;
//! * latency of each successful operation (send to answer) in an HDR histogram
//!   at microsecond resolution: p50, p99, p99.9, max;
//! * errors (failed RPCs, missing keys, failed compares), with samples;
//! * server CPU per operation: utime + stime of the server process (of all
//!   members, summed, for a cluster) from `/proc/<pid>/stat` before and
//!   after the phase, divided by operations;
//!   the load generator's own CPU per operation the same way (it shares the
//!   machine's cores with the server);
//! * server RSS (`VmRSS` from `/proc/<pid>/status`) at the end of the phase;
//! * the machine's CPU use during the phase (`/proc/stat`), and the part of it
//!   that is neither the server nor the load generator ("other %"): other
//!   processes competing for the cores, i.e. how noisy the run was;
//! * WAL fsyncs during the phase from `etcd_disk_wal_fsync_duration_seconds`
//!   at `/metrics` (both servers export it): operations per fsync shows how well
//!   commits are grouped, and the mean fsync time how slow the disk is.
//!
//! `--json` prints the results as one JSON document on stdout (progress goes to
//! stderr). The exit code is 1 when any operation failed.

use std::process::ExitCode;

/// jemalloc, as the server: the client allocates per request too, and the
/// less CPU it spends the less it disturbs the server it measures.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;

mod cli;

mod workload;

mod driver;

mod procfs;

mod http;

mod daemon;

mod report;

mod bench;

mod k8s;
mod output;
mod scale;
mod secure;
mod side;
mod storm;

use std::path::PathBuf;

use bench::Target;
use cli::Args;
use daemon::{Daemon, Kind};
use report::{Config, Ratios, Report};

/// Flushes dirty pages so one server's writeback does not land in the next run.
fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

async fn compare(args: &Args, round: usize, say: &dyn Fn(&str)) -> Result<Report, String> {
    let ms_bin = daemon::metastore_bin(args.metastore_bin.as_deref());
    if let Some(w) = daemon::staleness_warning(&ms_bin) {
        say(&w);
    }
    // No --engine: the configured default; several: one daemon each.
    let engines: Vec<Option<&str>> = if args.engine.is_empty() {
        vec![None]
    } else {
        args.engine.iter().map(|e| Some(e.as_str())).collect()
    };
    let root = args.data_root.as_deref();
    // --tls: certificates for this round (removed when it ends).
    let certs = if args.tls {
        Some(secure::Certs::generate()?)
    } else {
        None
    };
    let tls_flags = certs.as_ref().map(secure::Certs::server_flags);
    let dial = secure::Dial::new(certs.as_ref(), args.auth);
    let mut results = Vec::new();
    // One daemon at a time, so an idle one never shares the cores.
    let mut runs: Vec<(String, Kind, PathBuf, Vec<String>)> = vec![(
        "etcd".to_owned(),
        Kind::Etcd,
        args.etcd_bin.clone(),
        args.etcd_args.clone(),
    )];
    for engine in &engines {
        let mut extra = Vec::new();
        if let Some(e) = engine {
            extra = vec!["--engine".to_owned(), (*e).to_owned()];
        }
        extra.extend(args.metastore_args.iter().cloned());
        let name = match engine {
            Some(e) if engines.len() > 1 => format!("ms-{e}"),
            _ => "metastore".to_owned(),
        };
        runs.push((name, Kind::MetaStore, ms_bin.clone(), extra));
    }
    // --workload scale: every second round runs the servers in the
    // opposite order (MetaStore first), so neither always runs on a machine
    // the other just left; the results are put back in the usual order.
    let reversed = args.workload == cli::Workload::Scale && round % 2 == 1;
    if reversed {
        runs.reverse();
    }
    for (name, kind, bin, extra) in runs {
        say(&format!(
            "starting {name} ({}, {} member(s))",
            bin.display(),
            args.members
        ));
        let mut members =
            Daemon::start_cluster(kind, &bin, args.members, &extra, root, tls_flags.as_deref())?;
        let endpoints: Vec<String> = members.iter().map(Daemon::addr).collect();
        if args.auth {
            secure::enable_auth(&dial, &endpoints[0])
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            say(&format!(
                "[{name}] auth enabled; clients authenticate as {}",
                secure::USER
            ));
        }
        sync_disks();
        let target = Target {
            name,
            endpoints,
            pids: members.iter().filter_map(Daemon::pid).collect(),
            http_addrs: members.iter().map(Daemon::http_addr).collect(),
            dial: dial.clone(),
            data_dirs: members.iter().map(Daemon::data_dir).collect(),
        };
        let r = if args.workload == cli::Workload::Scale {
            scale::run(args, &target, &mut members, say)
        } else {
            bench::run(args, &target, say).await
        };
        let r = r.map_err(|e| {
            let logs: Vec<String> = members.iter().map(Daemon::log_tail).collect();
            format!("{e}\n{} logs:\n{}", target.name, logs.join("\n---\n"))
        })?;
        say(&r.summary());
        results.push(r);
        if let Some(dir) = &args.keep_logs {
            for (i, m) in members.iter().enumerate() {
                let to = dir.join(format!(
                    "{}-{}-m{i}.log",
                    round + 1,
                    results.last().map_or("", |r| r.server.as_str())
                ));
                if let Err(e) = m.copy_log(&to) {
                    say(&format!("cannot keep {}: {e}", to.display()));
                }
            }
        }
        // Stopped before the next server starts: one at a time on the cores.
        drop(members);
    }
    if reversed {
        results.reverse();
    }
    let mut ratios: Vec<(String, Ratios)> = results[1..]
        .iter()
        .map(|r| (format!("{}/etcd", r.server), Ratios::new(r, &results[0])))
        .collect();
    // Engines against the first one (memory, if listed first).
    for r in results.iter().skip(2) {
        ratios.push((
            format!("{}/{}", r.server, results[1].server),
            Ratios::new(r, &results[1]),
        ));
    }
    Ok(Report {
        config: Config::new(args),
        results,
        ratios,
    })
}

async fn external(args: &Args, say: &dyn Fn(&str)) -> Result<Report, String> {
    let http_addr = http::host_port(&args.endpoints[0]).to_owned();
    let pid = args.server_pid.or_else(|| {
        let (host, port) = http_addr.rsplit_once(':')?;
        let loopback = host.starts_with("127.") || host == "localhost" || host == "[::1]";
        loopback.then(|| procfs::listener_pid(port.parse().ok()?))?
    });
    if pid.is_none() {
        say("server pid unknown (--server-pid): no server CPU or RSS");
    }
    let target = Target {
        name: args.label.clone(),
        endpoints: args.endpoints.clone(),
        pids: pid.into_iter().collect(),
        http_addrs: vec![http_addr],
        dial: secure::Dial::default(),
        data_dirs: Vec::new(),
    };
    let r = bench::run(args, &target, say).await?;
    say(&r.summary());
    Ok(Report {
        config: Config::new(args),
        results: vec![r],
        ratios: Vec::new(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.compare && args.endpoints.is_empty() {
        println!(
            "loadgen: nothing to do; pass --compare or --endpoints \
             (cargo bench --bench loadgen -- --help)"
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = args.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    if !args.server_cpus.is_empty() {
        daemon::pin_servers_to(args.server_cpus.clone());
    }
    // Before any thread is started: they all inherit it.
    if !args.client_cpus.is_empty() {
        if let Err(e) = procfs::pin_to(&args.client_cpus) {
            eprintln!("loadgen: --client-cpus: {e}");
            return ExitCode::from(2);
        }
    }
    let json = args.json;
    // Progress goes to stderr when stdout carries JSON.
    let say = move |s: &str| {
        if json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rounds = if args.compare { args.rounds.max(1) } else { 1 };
    let mut reports = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if rounds > 1 {
            say(&format!("round {} of {rounds}", round + 1));
        }
        let report = rt.block_on(async {
            if args.compare {
                compare(&args, round, &say).await
            } else {
                external(&args, &say).await
            }
        });
        match report {
            Ok(r) => {
                if !json {
                    print!("\n{}", r.table());
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if json {
        let out = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(&reports)
        };
        println!("{}", out.expect("results serialize"));
    } else if reports.len() > 1 {
        print!("\n{}", report::rounds_summary(&reports));
    }
    let files: [(&Option<PathBuf>, output::Writer); 2] = [
        (&args.csv, output::write_csv),
        (&args.timeline_csv, output::write_timeline_csv),
    ];
    for (path, write) in files {
        if let Some(path) = path {
            if let Err(e) = write(path, &reports) {
                eprintln!("loadgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &args.plot {
        let title = reports.first().map_or(String::new(), |r| r.config.line());
        if let Err(e) = output::write_svg(path, &reports, &title) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let failed = reports
        .iter()
        .flat_map(|r| &r.results)
        .any(|r| r.errors > 0 || r.cut_short || r.k8s.as_ref().is_some_and(|k| k.violations > 0));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
