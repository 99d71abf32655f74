//! `--auth-storm N`: N clients, each on its own connection, call
//! Authenticate (user `bench`) in a loop, one call in flight each, during
//! the measured phase, on a client thread of their own. Only calls answered
//! before the phase ends are counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::secure::{authenticate, Dial, PASSWORD, USER};

/// What the Authenticate clients did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormStats {
    pub clients: usize,
    /// Tokens received during the phase.
    pub ok: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// One error message, if any.
    pub error_sample: Option<String>,
}

/// The Authenticate clients, connected and waiting for [`Storm::go`].
pub struct Storm {
    barrier: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<StormStats, String>>,
}

impl Storm {
    /// Connects `clients` connections (round robin over `endpoints`).
    pub fn start(dial: &Dial, endpoints: &[String], clients: usize) -> Result<Storm, String> {
        let barrier = Arc::new(Barrier::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (dial, endpoints) = (dial.clone(), endpoints.to_vec());
        let (b, s) = (barrier.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let mut channels = Vec::with_capacity(clients);
                for k in 0..clients {
                    let ep = &endpoints[k % endpoints.len()];
                    match dial
                        .channel(ep, |e| {
                            e.connect_timeout(Duration::from_secs(5))
                                .timeout(Duration::from_secs(60))
                        })
                        .await
                    {
                        Ok(c) => channels.push(c),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                b.wait();
                let started = Instant::now();
                let mut tasks = Vec::with_capacity(clients);
                for channel in channels {
                    let stop = s.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut hist =
                            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                                .expect("valid histogram bounds");
                        let (mut errors, mut sample) = (0u64, None);
                        while !stop.load(Ordering::Acquire) {
                            let sent = Instant::now();
                            let r = authenticate(&channel, USER, PASSWORD).await;
                            if stop.load(Ordering::Acquire) {
                                break;
                            }
                            match r {
                                Ok(_) => hist
                                    .saturating_record((sent.elapsed().as_micros() as u64).max(1)),
                                Err(e) => {
                                    errors += 1;
                                    sample.get_or_insert(e);
                                }
                            }
                        }
                        (hist, errors, sample)
                    }));
                }
                // The phase's end: the stop flag, polled.
                while !s.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let elapsed = started.elapsed().as_secs_f64();
                let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("valid histogram bounds");
                let mut st = StormStats {
                    clients,
                    elapsed_s: elapsed,
                    ..Default::default()
                };
                for t in tasks {
                    let (h, e, sample) = t.await.map_err(|e| e.to_string())?;
                    all.add(&h).expect("histograms with equal bounds");
                    st.errors += e;
                    if st.error_sample.is_none() {
                        st.error_sample = sample;
                    }
                }
                st.ok = all.len();
                st.per_s = st.ok as f64 / elapsed.max(1e-9);
                if !all.is_empty() {
                    st.p50_us = all.value_at_quantile(0.5);
                    st.p99_us = all.value_at_quantile(0.99);
                }
                Ok(st)
            })
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Storm {
                barrier,
                stop,
                handle,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the Authenticate storm thread died while connecting".into()),
        }
    }

    /// Starts the calls.
    pub fn go(&self) {
        self.barrier.wait();
    }

    /// Stops the calls (the phase ended) and reports.
    pub fn finish(self) -> Result<StormStats, String> {
        self.stop.store(true, Ordering::Release);
        self.handle
            .join()
            .map_err(|_| "the Authenticate storm thread panicked".to_owned())?
    }
}
