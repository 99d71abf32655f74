//! Results, their text tables and JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::Args;
use crate::driver::Outcome;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// One workload against one server.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub server: String,
    pub workload: String,
    pub ops: u64,
    pub errors: u64,
    pub error_samples: BTreeMap<String, u64>,
    pub cut_short: bool,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub latency_us: Latency,
    pub server_cpu_us_per_op: Option<f64>,
    pub client_cpu_us_per_op: Option<f64>,
    pub server_rss_kib: Option<u64>,
    /// CPU used on the whole machine during the phase, % of all cores.
    pub host_cpu_busy_pct: Option<f64>,
    /// ... of which neither the server nor the load generator: other
    /// processes competing for the cores (noise), % of all cores.
    pub other_cpu_pct: Option<f64>,
    pub wal_fsyncs: Option<u64>,
    pub ops_per_fsync: Option<f64>,
    pub fsync_mean_us: Option<f64>,
    /// `--idle-conns` held through the phase.
    pub idle_conns: usize,
    /// Server RSS (KiB, all members) before and after the side loads were
    /// set up (idle connections opened, watchers created, leases granted).
    pub side_rss_kib: Option<(u64, u64)>,
    /// What `--watchers` saw.
    pub watch: Option<crate::side::WatchStats>,
    /// What `--leases` saw.
    pub lease: Option<crate::side::LeaseStats>,
    /// What `--defrag-every-ms` saw.
    pub defrag: Option<crate::side::DefragStats>,
    /// What `--auth-storm` did.
    pub auth_storm: Option<crate::storm::StormStats>,
    /// Throughput and latency over the phase.
    pub timeline: Vec<TimePoint>,
    /// What --workload k8s measured per kind and found.
    pub k8s: Option<crate::k8s::K8sStats>,
    /// What --workload scale measured per step.
    pub scale: Option<crate::scale::ScaleStats>,
}

/// One interval of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TimePoint {
    /// End of the interval, seconds since the phase started.
    pub t_s: f64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Cuts a run's samples into about 100 intervals (at least 100 ms each).
pub fn timeline(samples: &[(u32, u32)], elapsed: std::time::Duration) -> Vec<TimePoint> {
    let total_ms = elapsed.as_millis().max(1) as u64;
    let step = (total_ms / 100).max(100);
    let n = total_ms.div_ceil(step) as usize;
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); n.max(1)];
    for &(at, us) in samples {
        let i = ((at as u64) / step) as usize;
        if let Some(b) = buckets.get_mut(i.min(n.saturating_sub(1))) {
            b.push(us);
        }
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(i, mut b)| {
            b.sort_unstable();
            let q = |f: f64| {
                if b.is_empty() {
                    0
                } else {
                    b[((b.len() - 1) as f64 * f).round() as usize] as u64
                }
            };
            let end = ((i as u64 + 1) * step).min(total_ms);
            let span = end - i as u64 * step;
            TimePoint {
                t_s: end as f64 / 1000.0,
                ops_per_s: b.len() as f64 * 1000.0 / span.max(1) as f64,
                p50_us: q(0.5),
                p99_us: q(0.99),
                max_us: b.last().copied().unwrap_or(0) as u64,
            }
        })
        .collect()
}

/// Figures taken around the measured phase.
pub struct Probes {
    pub server_cpu_us: Option<u64>,
    pub client_cpu_us: Option<u64>,
    pub rss_kib: Option<u64>,
    /// (busy, total) machine CPU deltas in microseconds.
    pub host_cpu_us: Option<(u64, u64)>,
    /// (count, seconds) deltas of WAL fsyncs, summed over members.
    pub fsync: Option<(f64, f64)>,
    /// Members the figures are summed over.
    pub members: usize,
}

impl RunResult {
    pub fn new(server: &str, workload: &str, o: &Outcome, p: &Probes) -> RunResult {
        let ops = o.ok;
        let per_op = |us: Option<u64>| us.filter(|_| ops > 0).map(|us| us as f64 / ops as f64);
        let q = |v: f64| {
            if o.hist.is_empty() {
                0
            } else {
                o.hist.value_at_quantile(v)
            }
        };
        RunResult {
            server: server.to_owned(),
            workload: workload.to_owned(),
            ops,
            errors: o.errors,
            error_samples: o.error_samples.clone(),
            cut_short: o.cut_short,
            elapsed_s: o.elapsed.as_secs_f64(),
            ops_per_s: ops as f64 / o.elapsed.as_secs_f64().max(1e-9),
            latency_us: Latency {
                p50: q(0.5),
                p99: q(0.99),
                p999: q(0.999),
                max: o.hist.max(),
                mean: o.hist.mean(),
            },
            server_cpu_us_per_op: per_op(p.server_cpu_us),
            client_cpu_us_per_op: per_op(p.client_cpu_us),
            server_rss_kib: p.rss_kib,
            host_cpu_busy_pct: p
                .host_cpu_us
                .filter(|(_, total)| *total > 0)
                .map(|(busy, total)| busy as f64 * 100.0 / total as f64),
            other_cpu_pct: p.host_cpu_us.filter(|(_, total)| *total > 0).and_then(
                |(busy, total)| {
                    let ours = p.server_cpu_us? + p.client_cpu_us?;
                    Some(busy.saturating_sub(ours) as f64 * 100.0 / total as f64)
                },
            ),
            wal_fsyncs: p.fsync.map(|(n, _)| n as u64),
            // Per member: each member fsyncs every write once.
            ops_per_fsync: p
                .fsync
                .filter(|(n, _)| *n > 0.0)
                .map(|(n, _)| ops as f64 * p.members as f64 / n),
            fsync_mean_us: p.fsync.filter(|(n, _)| *n > 0.0).map(|(n, s)| s * 1e6 / n),
            watch: None,
            lease: None,
            defrag: None,
            idle_conns: 0,
            side_rss_kib: None,
            auth_storm: None,
            timeline: Vec::new(),
            k8s: None,
            scale: None,
        }
    }

    /// The per-run block printed as soon as a run ends.
    pub fn summary(&self) -> String {
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.1} {unit}"));
        let l = &self.latency_us;
        let mut s = format!(
            "[{}] {}: {} ops in {:.2} s, {} errors{}\n",
            self.server,
            self.workload,
            self.ops,
            self.elapsed_s,
            self.errors,
            if self.cut_short {
                " (stopped at --max-seconds)"
            } else {
                ""
            }
        );
        s += &format!("  throughput  {:.0} ops/s\n", self.ops_per_s);
        s += &format!(
            "  latency us  p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}\n",
            l.p50, l.p99, l.p999, l.max, l.mean
        );
        s += &format!(
            "  server      CPU {}/op  RSS {} (all members)\n",
            opt(self.server_cpu_us_per_op, "us"),
            opt(self.server_rss_kib.map(|k| k as f64 / 1024.0), "MiB")
        );
        s += &format!(
            "  client      CPU {}/op\n",
            opt(self.client_cpu_us_per_op, "us")
        );
        s += &format!(
            "  machine     CPU busy {} of all cores, other processes {}\n",
            opt(self.host_cpu_busy_pct, "%"),
            opt(self.other_cpu_pct, "%")
        );
        if let Some(n) = self.wal_fsyncs {
            s += &format!(
                "  WAL fsyncs  {n} ({} ops/fsync, mean fsync {})\n",
                self.ops_per_fsync
                    .map_or("n/a".to_owned(), |v| format!("{v:.1}")),
                opt(self.fsync_mean_us, "us")
            );
        }
        if let Some(w) = &self.watch {
            let what = if w.own_key {
                format!("events of its own key (~{} each)", w.expected_per_watcher)
            } else {
                format!("{} revisions", w.expected_per_watcher)
            };
            s += &format!(
                "  watchers    {}/{} got all {what} once, in order ({} streams); {} events, {} lost, {} repeated, {} canceled; last one done {} ms after the last write\n",
                w.complete, w.watchers, w.streams, w.events, w.lost, w.repeated, w.canceled, w.drain_ms
            );
        }
        if let Some(l) = &self.lease {
            s += &format!(
                "  leases      {} kept alive (TTL {} s): {} keep-alives sent, {} answered, {} expired\n",
                l.leases, l.ttl_s, l.keepalives_sent, l.keepalives_answered, l.expired
            );
        }
        if let Some((before, after)) = self.side_rss_kib {
            let grew = after as i64 - before as i64;
            let mut each = Vec::new();
            if self.idle_conns > 0 {
                each.push(format!("{} idle connections", self.idle_conns));
            }
            if let Some(w) = &self.watch {
                each.push(format!("{} watchers", w.watchers));
            }
            let n = self.idle_conns + self.watch.as_ref().map_or(0, |w| w.watchers);
            s += &format!(
                "  side RSS    {before} -> {after} KiB while setting up {}: {} bytes each\n",
                each.join(" and "),
                if n > 0 { grew * 1024 / n as i64 } else { 0 }
            );
        }
        if let Some(d) = &self.defrag {
            s += &format!(
                "  defragment  every {} ms: {} calls, {} errors, {:.1} ms mean, {:.1} ms max\n",
                d.every_ms, d.calls, d.errors, d.mean_ms, d.max_ms
            );
        }
        if let Some(a) = &self.auth_storm {
            s += &format!(
                "  auth storm  {} clients: {} Authenticate in {:.2} s = {:.0}/s, p50 {} us, p99 {} us, {} errors{}\n",
                a.clients,
                a.ok,
                a.elapsed_s,
                a.per_s,
                a.p50_us,
                a.p99_us,
                a.errors,
                a.error_sample
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (e.g. {e})"))
            );
        }
        if let Some(k) = &self.k8s {
            s += &k.summary();
        }
        if let Some(x) = &self.scale {
            s += &x.summary();
        }
        for (msg, n) in &self.error_samples {
            s += &format!("  error x{n}: {msg}\n");
        }
        s
    }
}

/// MetaStore / etcd for the headline figures.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub throughput: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu_per_op: Option<f64>,
    pub rss: Option<f64>,
}

impl Ratios {
    pub fn new(ms: &RunResult, etcd: &RunResult) -> Ratios {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Ratios {
            throughput: div(ms.ops_per_s, etcd.ops_per_s),
            p50: div(ms.latency_us.p50 as f64, etcd.latency_us.p50 as f64),
            p99: div(ms.latency_us.p99 as f64, etcd.latency_us.p99 as f64),
            cpu_per_op: ms
                .server_cpu_us_per_op
                .zip(etcd.server_cpu_us_per_op)
                .map(|(a, b)| div(a, b)),
            rss: ms
                .server_rss_kib
                .zip(etcd.server_rss_kib)
                .map(|(a, b)| div(a as f64, b as f64)),
        }
    }
}

/// The workload's parameters, echoed in the output.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub workload: String,
    pub clients: usize,
    /// Connections per client thread (None: one per client).
    pub conns: Option<usize>,
    pub members: usize,
    pub total: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub keyspace: u64,
    pub random_keys: bool,
    pub read_percent: Option<u8>,
    /// (watchers, streams) during the phase.
    pub watchers: Option<(usize, usize)>,
    /// (leases, TTL) kept alive during the phase.
    pub leases: Option<(usize, i64)>,
    /// Defragment called every so many ms during the phase.
    pub defrag_every_ms: Option<u64>,
    /// Client TLS (`--tls`).
    pub tls: bool,
    /// Auth enabled, clients with tokens (`--auth`).
    pub auth: bool,
    /// Authenticate clients during the phase (`--auth-storm`).
    pub auth_storm: Option<usize>,
    /// --workload k8s: (objects, phase seconds, compaction interval seconds).
    pub k8s: Option<(u64, f64, f64)>,
    /// --workload scale: keys filled.
    pub scale: Option<u64>,
    /// `--server-cpus` and `--client-cpus` as given (empty: not pinned).
    pub server_cpus: Vec<usize>,
    pub client_cpus: Vec<usize>,
}

impl Config {
    pub fn new(a: &Args) -> Config {
        Config {
            workload: a.workload.name().to_owned(),
            clients: a.clients,
            conns: a.conns,
            members: a.members,
            total: a.total,
            key_size: a.key_size,
            value_size: a.value_size,
            keyspace: a.keyspace(),
            random_keys: a.random_keys,
            read_percent: (a.workload == crate::cli::Workload::Mixed).then_some(a.read_percent),
            watchers: (a.watchers > 0).then_some((a.watchers, a.watch_streams)),
            leases: (a.leases > 0).then_some((a.leases, a.lease_ttl)),
            defrag_every_ms: (a.defrag_every_ms > 0).then_some(a.defrag_every_ms),
            tls: a.tls,
            auth: a.auth,
            auth_storm: (a.auth_storm > 0).then_some(a.auth_storm),
            k8s: (a.workload == crate::cli::Workload::K8s).then_some((
                a.keys(),
                a.k8s_duration.as_secs_f64(),
                a.k8s_compact_interval.as_secs_f64(),
            )),
            scale: (a.workload == crate::cli::Workload::Scale).then(|| a.keys()),
            server_cpus: a.server_cpus.clone(),
            client_cpus: a.client_cpus.clone(),
        }
    }

    /// The settings in one line, as flags.
    pub fn line(&self) -> String {
        let cpus = |flag: &str, cpus: &[usize]| {
            if cpus.is_empty() {
                return String::new();
            }
            let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
            format!(" {flag}={}", list.join(","))
        };
        self.workload_line()
            + &cpus("server-cpus", &self.server_cpus)
            + &cpus("client-cpus", &self.client_cpus)
    }

    fn workload_line(&self) -> String {
        if let Some(k) = self.scale {
            return format!(
                "workload=scale clients={} members={} keys={k} value-size={}{}{}",
                self.clients,
                self.members,
                self.value_size,
                if self.tls { " tls" } else { "" },
                if self.auth { " auth" } else { "" }
            );
        }
        if let Some((k, d, c)) = self.k8s {
            return format!(
                "workload=k8s clients={} members={} keys={k} k8s-duration={d}s k8s-compact-interval={c}s{}{}",
                self.clients,
                self.members,
                if self.tls { " tls" } else { "" },
                if self.auth { " auth" } else { "" }
            );
        }
        format!(
            "workload={} clients={} conns={} members={} total={} key-size={} value-size={} keyspace={} keys={}{}",
            self.workload,
            self.clients,
            self.conns
                .map_or("one per client".to_owned(), |c| format!("{c} per thread")),
            self.members,
            self.total,
            self.key_size,
            self.value_size,
            self.keyspace,
            if self.random_keys { "random" } else { "sequential" },
            self.read_percent
                .map_or(String::new(), |p| format!(" read-percent={p}"))
        ) + &self
            .watchers
            .map_or(String::new(), |(w, s)| format!(" watchers={w} watch-streams={s}"))
            + &self
                .leases
                .map_or(String::new(), |(n, t)| format!(" leases={n} lease-ttl={t}"))
            + &self
                .defrag_every_ms
                .map_or(String::new(), |d| format!(" defrag-every-ms={d}"))
            + if self.tls { " tls" } else { "" }
            + if self.auth { " auth" } else { "" }
            + &self
                .auth_storm
                .map_or(String::new(), |n| format!(" auth-storm={n}"))
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Config,
    pub results: Vec<RunResult>,
    /// Each MetaStore run against the first run (etcd), in --compare mode.
    pub ratios: Vec<(String, Ratios)>,
}

/// The ratios of several rounds of --compare, each with its median.
pub fn rounds_summary(reports: &[Report]) -> String {
    let mut names: Vec<&String> = Vec::new();
    for r in reports {
        for (n, _) in &r.ratios {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    };
    let mut s = format!("{} rounds:\n", reports.len());
    for r in reports {
        let line: Vec<String> = r
            .results
            .iter()
            .map(|x| format!("{} {:.0}", x.server, x.ops_per_s))
            .collect();
        s += &format!("  {}\n", line.join("  "));
    }
    for name in names {
        let of = |f: &dyn Fn(&Ratios) -> Option<f64>| -> Vec<f64> {
            reports
                .iter()
                .filter_map(|r| r.ratios.iter().find(|(n, _)| n == name))
                .filter_map(|(_, x)| f(x))
                .collect()
        };
        let tput = of(&|x| Some(x.throughput));
        let list: Vec<String> = tput.iter().map(|t| format!("{t:.2}x")).collect();
        s += &format!(
            "{name}: throughput {} (median {:.2}x), p99 median {:.2}x, CPU/op median {:.2}x\n",
            list.join(" "),
            median(tput.clone()),
            median(of(&|x| Some(x.p99))),
            median(of(&|x| x.cpu_per_op)),
        );
    }
    if reports
        .iter()
        .any(|r| r.results.iter().any(|x| x.scale.is_some()))
    {
        s += &scale_rounds(reports, &median);
    }
    s
}

/// --workload scale over several rounds: each figure of each server
/// against the first server's (etcd's) in the same round, every round and
/// the median.
fn scale_rounds(reports: &[Report], median: &dyn Fn(Vec<f64>) -> f64) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let Some(base) = first.results.first().and_then(|r| r.scale.as_ref()) else {
        return String::new();
    };
    // (server, step) -> that step's figures, in one round.
    let figures = |r: &Report, server: &str, step: &str| {
        r.results
            .iter()
            .find(|x| x.server == server)
            .and_then(|x| x.scale.as_ref())
            .and_then(|x| x.steps.iter().find(|t| t.step == step))
            .map(|t| t.figures())
            .unwrap_or_default()
    };
    let base_name = &first.results[0].server;
    let mut s = String::new();
    for other in first.results.iter().skip(1) {
        s += &format!("{}/{base_name}, each round and the median:\n", other.server);
        for step in &base.steps {
            for (i, (label, _)) in step.figures().into_iter().enumerate() {
                let ratios: Vec<f64> = reports
                    .iter()
                    .filter_map(|r| {
                        let a = figures(r, &other.server, &step.step).get(i)?.1?;
                        let b = figures(r, base_name, &step.step).get(i)?.1?;
                        (a > 0.0 && b > 0.0).then_some(a / b)
                    })
                    .collect();
                let list: Vec<String> = ratios.iter().map(|x| format!("{x:.2}x")).collect();
                let m = median(ratios);
                let m = if m.is_finite() {
                    format!("{m:.2}x")
                } else {
                    "n/a".to_owned()
                };
                s += &format!(
                    "  {:<9} {label:<27} {} (median {m})\n",
                    step.step,
                    list.join(" ")
                );
            }
        }
    }
    s
}

impl Report {
    /// The final table.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
        let mut s = format!("{}\n", self.config.line());
        s += &format!(
            "{:<10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>7} {:>11} {:>8} {:>10} {:>8}\n",
            "server",
            "ops/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "errors",
            "CPU us/op",
            "RSS MiB",
            "ops/fsync",
            "other %"
        );
        for r in &self.results {
            let l = &r.latency_us;
            s += &format!(
                "{:<10} {:>9.0} {:>8} {:>8} {:>9} {:>8} {:>7} {:>11} {:>8} {:>10} {:>8}\n",
                r.server,
                r.ops_per_s,
                l.p50,
                l.p99,
                l.p999,
                l.max,
                r.errors,
                opt(r.server_cpu_us_per_op),
                opt(r.server_rss_kib.map(|k| k as f64 / 1024.0)),
                opt(r.ops_per_fsync),
                opt(r.other_cpu_pct),
            );
        }
        if self.results.iter().any(|r| r.k8s.is_some()) {
            s += &self.k8s_table();
        }
        if self.results.iter().any(|r| r.scale.is_some()) {
            s += &self.scale_table();
        }
        for (name, x) in &self.ratios {
            let opt2 = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}x"));
            s += &format!(
                "{name}: throughput {:.2}x  p50 {:.2}x  p99 {:.2}x  CPU/op {}  RSS {}\n",
                x.throughput,
                x.p50,
                x.p99,
                opt2(x.cpu_per_op),
                opt2(x.rss)
            );
        }
        s
    }
}

impl Report {
    /// --workload k8s: each kind on each server, and each server against
    /// the first (etcd in --compare).
    fn k8s_table(&self) -> String {
        let runs: Vec<(&str, &crate::k8s::K8sStats)> = self
            .results
            .iter()
            .filter_map(|r| r.k8s.as_ref().map(|k| (r.server.as_str(), k)))
            .collect();
        let mut s = format!("{:<9}", "kind");
        for (name, _) in &runs {
            s += &format!(" | {name:>9} ops/s  p50 us  p99 us   max us");
        }
        for (name, _) in runs.iter().skip(1) {
            s += &format!(" | {name}/{}: ops/s p99", runs[0].0);
        }
        s.push('\n');
        let kinds: Vec<&str> = runs
            .first()
            .map(|(_, k)| k.kinds.iter().map(|x| x.kind.as_str()).collect())
            .unwrap_or_default();
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        for kind in kinds {
            let of = |k: &crate::k8s::K8sStats| k.kinds.iter().find(|x| x.kind == kind).cloned();
            s += &format!("{kind:<9}");
            for (_, k) in &runs {
                if let Some(x) = of(k) {
                    s += &format!(
                        " | {:>15.1} {:>7} {:>7} {:>8}",
                        x.ops_per_s, x.p50_us, x.p99_us, x.max_us
                    );
                }
            }
            if let Some(base) = of(runs[0].1) {
                for (_, k) in runs.iter().skip(1) {
                    if let Some(x) = of(k) {
                        s += &format!(
                            " | {:.2}x {:.2}x",
                            div(x.ops_per_s, base.ops_per_s),
                            div(x.p99_us as f64, base.p99_us as f64)
                        );
                    }
                }
            }
            s.push('\n');
        }
        s += &format!("{:<9}", "watch lag");
        for (_, k) in &runs {
            s += &format!(
                " | {:>15} {:>7} {:>7} {:>8}",
                k.watch_verified, k.watch_lag_p50_us, k.watch_lag_p99_us, k.watch_lag_max_us
            );
        }
        s.push('\n');
        let v: Vec<String> = runs
            .iter()
            .map(|(n, k)| format!("{n} {}", k.violations))
            .collect();
        s += &format!("violations: {}\n", v.join(", "));
        let p: Vec<String> = runs
            .iter()
            .map(|(n, k)| {
                format!(
                    "{n} {} (longest {} ms)",
                    k.pauses.len(),
                    k.pauses.iter().map(|p| p.ms).max().unwrap_or(0)
                )
            })
            .collect();
        s += &format!("pauses over 100 ms: {}\n", p.join(", "));
        s
    }
}

impl Report {
    /// --workload scale: every figure of every step on each server side by
    /// side, and each server against the first (etcd in --compare).
    fn scale_table(&self) -> String {
        let runs: Vec<(&str, &crate::scale::ScaleStats)> = self
            .results
            .iter()
            .filter_map(|r| r.scale.as_ref().map(|x| (r.server.as_str(), x)))
            .collect();
        let Some((base_name, base)) = runs.first() else {
            return String::new();
        };
        let mut s = format!("{:<9} {:<27}", "step", "figure");
        for (name, _) in &runs {
            s += &format!(" {name:>11}");
        }
        for (name, _) in runs.iter().skip(1) {
            s += &format!(" {:>16}", format!("{name}/{base_name}"));
        }
        s.push('\n');
        let cell = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
        for step in &base.steps {
            let of = |x: &crate::scale::ScaleStats| {
                x.steps
                    .iter()
                    .find(|t| t.step == step.step)
                    .map(|t| t.figures())
                    .unwrap_or_default()
            };
            for (i, (label, v0)) in step.figures().into_iter().enumerate() {
                s += &format!("{:<9} {label:<27}", step.step);
                for (_, x) in &runs {
                    s += &format!(" {:>11}", cell(of(x).get(i).and_then(|f| f.1)));
                }
                for (_, x) in runs.iter().skip(1) {
                    let r = of(x)
                        .get(i)
                        .and_then(|f| f.1)
                        .zip(v0)
                        // A difference that fell has no meaningful ratio.
                        .filter(|(a, b)| *a > 0.0 && *b > 0.0)
                        .map(|(a, b)| a / b);
                    s += &format!(
                        " {:>16}",
                        r.map_or("n/a".to_owned(), |r| format!("{r:.2}x"))
                    );
                }
                s.push('\n');
            }
        }
        for (name, x) in &runs {
            for t in &x.steps {
                if let Some(e) = &t.error {
                    s += &format!("{name} {}: ERROR {e}\n", t.step);
                }
            }
        }
        s
    }
}
