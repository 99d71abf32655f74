//! Runs a phase: `clients` tasks share `total` operations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::workload::{execute, KvClient, Op, Spec};

/// Distinct error messages kept as samples.
const ERROR_SAMPLES: usize = 5;

/// Operations finished in the current phase, over all client threads (read
/// by the progress line).
pub static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// What a phase did.
pub struct Outcome {
    /// Latency of successful operations, in microseconds.
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// Up to [`ERROR_SAMPLES`] messages with their counts.
    pub error_samples: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// The phase hit --max-seconds before finishing.
    pub cut_short: bool,
    /// Every successful operation as (ms since the phase started, latency
    /// in µs), for the latency-over-time figures.
    pub samples: Vec<(u32, u32)>,
}

/// A latency histogram: 1 µs .. 1 h at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Which operations a phase sends.
#[derive(Clone, Copy)]
pub enum Phase {
    /// Put every key of the keyspace once.
    Preload,
    /// The workload.
    Measure,
}

/// Runs operations `first..first + total` over `clients` tasks on the given
/// connections (client `c` uses connection `c % conns.len()`).
pub async fn run(
    conns: &[KvClient],
    spec: Arc<Spec>,
    phase: Phase,
    (first, total): (u64, u64),
    clients: usize,
    max: Duration,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + total;
    let started = Instant::now();
    let deadline = started + max;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut kv = conns[c % conns.len()].clone();
        let spec = spec.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64 + 1);
            let mut out = Outcome::empty();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                if Instant::now() >= deadline {
                    out.cut_short = true;
                    break;
                }
                let op = match phase {
                    Phase::Preload => Op::Put(spec.key(i)),
                    Phase::Measure => spec.op(i, &mut rng),
                };
                let sent = Instant::now();
                let result = execute(&mut kv, op, &spec.value).await;
                PROGRESS.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        let us = sent.elapsed().as_micros() as u64;
                        out.hist.saturating_record(us.max(1));
                        out.ok += 1;
                        let at = sent.duration_since(started).as_millis();
                        out.samples.push((
                            u32::try_from(at).unwrap_or(u32::MAX),
                            u32::try_from(us).unwrap_or(u32::MAX),
                        ));
                    }
                    Err(e) => {
                        out.errors += 1;
                        note_error(&mut out.error_samples, e, 1);
                    }
                }
            }
            out
        }));
    }
    let mut parts = Vec::with_capacity(tasks.len());
    for t in tasks {
        parts.push(match t.await {
            Ok(o) => o,
            Err(e) => Outcome::failed(format!("client task: {e}")),
        });
    }
    let mut total_out = Outcome::merge(parts);
    total_out.elapsed = started.elapsed();
    total_out
}

impl Outcome {
    /// Nothing done yet.
    pub fn empty() -> Outcome {
        Outcome {
            hist: histogram(),
            ok: 0,
            errors: 0,
            error_samples: BTreeMap::new(),
            elapsed: Duration::ZERO,
            cut_short: false,
            samples: Vec::new(),
        }
    }

    /// An outcome of one failed worker.
    pub fn failed(msg: String) -> Outcome {
        let mut o = Outcome::empty();
        o.errors = 1;
        note_error(&mut o.error_samples, msg, 1);
        o
    }

    /// Adds up workers' outcomes; elapsed is the longest.
    pub fn merge(parts: Vec<Outcome>) -> Outcome {
        let mut total = Outcome::empty();
        for o in parts {
            total
                .hist
                .add(&o.hist)
                .expect("histograms with equal bounds");
            total.ok += o.ok;
            total.errors += o.errors;
            total.samples.extend(o.samples);
            total.cut_short |= o.cut_short;
            total.elapsed = total.elapsed.max(o.elapsed);
            for (msg, n) in o.error_samples {
                note_error(&mut total.error_samples, msg, n);
            }
        }
        total
    }
}

fn note_error(samples: &mut BTreeMap<String, u64>, msg: String, n: u64) {
    if let Some(count) = samples.get_mut(&msg) {
        *count += n;
    } else if samples.len() < ERROR_SAMPLES {
        samples.insert(msg, n);
    }
}
