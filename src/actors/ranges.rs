//! The ApplyActor's reads, and the gRPC Ranges it reads a slice per turn.
//!
//! A Range answered as the wire's bytes ([`ReadRequest::RangeWire`]) reads
//! its first slice when it is served; if more is left it stays open here,
//! and each idle turn of the apply thread reads one slice of the range
//! that waited longest, so applies, other reads and the client API run in
//! between (a 100,000-key range held the thread 130-450 ms in one turn).
//!
//! Where a slice leaves its values for later (rocksdb, see
//! [`KvEngine::range_later`](crate::storage::engine::KvEngine::range_later)),
//! its kvs go to the `range-values` thread, which reads the values, encodes
//! them and answers the Range after its last slice: the apply thread walks
//! only the key index (about 0.3 µs a key; the values' point reads took
//! about 3 µs each, 1 ms for a 300-key slice), and the reads run on the
//! other core while it goes on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::messages::{PendingRead, ReadResult};
use crate::error::ApiError;
use crate::state_machine::kv::sliced::{Chunk, SlicedRange, Slices, WireRange};
use crate::state_machine::{ReadRequest, ReadResponse, StateMachine};

/// The Ranges being read a slice at a time.
#[derive(Default)]
pub struct OpenRanges {
    open: VecDeque<Open>,
    /// Where kvs go whose values are read off the apply thread (started
    /// the first time a slice leaves values for later).
    reader: Option<mpsc::Sender<Job>>,
    /// The id the next Range opened gets.
    next_id: u64,
    /// The reader thread read some kvs (a Range waiting for it may go on).
    progress: Arc<Notify>,
}

struct Open {
    id: u64,
    range: SlicedRange,
    reply: oneshot::Sender<ReadResult>,
    /// Its kvs go to the reader thread, which answers it.
    shipping: bool,
    /// Chunks of it sent to the reader thread and not read yet.
    in_flight: Arc<AtomicUsize>,
}

impl Open {
    /// Its kvs wait for the reader thread: the key index runs about ten
    /// times faster than the values' reads, and kvs queued without values
    /// (about 150 bytes a key) would add half the answer's size to it.
    fn waits(&self) -> bool {
        self.shipping && self.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT
    }
}

/// Chunks (slices) of a Range sent to the reader thread and not read yet,
/// at most: the apply thread reads no further slice of it meanwhile.
const MAX_IN_FLIGHT: usize = 16;

/// What the reader thread is told, Range by Range (`u64`: the Range's id).
enum Job {
    /// More kvs of a Range, in key order after those sent before; the
    /// count of its chunks in flight, which goes down as they are read.
    Chunks(u64, Vec<Chunk>, Arc<AtomicUsize>),
    /// The Range is read: the answer but its kvs (or why it failed), and
    /// where it goes.
    Done(
        u64,
        Result<WireRange, ApiError>,
        oneshot::Sender<ReadResult>,
    ),
}

/// The reader thread: reads the values the slices left for later (a
/// RocksDB multi-get from the snapshot each slice took), encodes them, and
/// answers each Range once its last kvs are in.
fn read_values(jobs: mpsc::Receiver<Job>, progress: Arc<Notify>) {
    let mut read: HashMap<u64, Result<Vec<Bytes>, ApiError>> = HashMap::new();
    for job in jobs {
        match job {
            Job::Chunks(id, chunks, in_flight) => {
                let got = read.entry(id).or_insert_with(|| Ok(Vec::new()));
                let n = chunks.len();
                for chunk in chunks {
                    let Ok(bytes) = got else { break };
                    match chunk.encode() {
                        Ok(b) => bytes.extend(b),
                        Err(e) => *got = Err(e),
                    }
                }
                in_flight.fetch_sub(n, Ordering::AcqRel);
                progress.notify_one();
            }
            Job::Done(id, head, reply) => {
                let kvs = read.remove(&id).unwrap_or_else(|| Ok(Vec::new()));
                let answer = head.and_then(|mut head| {
                    head.kvs = kvs?;
                    Ok(ReadResponse::RangeWire(head))
                });
                let _ = reply.send(answer);
            }
        }
    }
}

/// How much a slice reads. (Test-only: with slowed slices, a fixed number
/// of keys, so that a test knows how many slices there are.)
fn slicing() -> Slices {
    crate::failpoints::delay("apply::range_slice_delay")
        .map_or(Slices::APPLY, |_| Slices::keys(Slices::APPLY.keys))
}

impl OpenRanges {
    /// Serves `read` against `sm`: answered now, or (a Range with more
    /// than a slice to read) opened.
    pub fn serve(&mut self, sm: &mut StateMachine, read: PendingRead) {
        let PendingRead {
            request,
            caller,
            reply,
            opened,
        } = read;
        match request {
            ReadRequest::RangeWire(r) => match sm.start_range(&caller, &r, slicing()) {
                Ok(range) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let o = Open {
                        id,
                        range,
                        reply,
                        shipping: false,
                        in_flight: Arc::default(),
                    };
                    if let Some(o) = self.after_slice(o, Ok(())) {
                        if let Some(opened) = opened {
                            let _ = opened.send(());
                        }
                        self.open.push_back(o);
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            other => {
                let _ = reply.send(sm.read(&caller, &other));
            }
        }
    }

    /// After a slice of `o` (that ended with `result`): its kvs whose
    /// values are left for later go to the reader thread; the Range is
    /// answered if it is through, else given back.
    fn after_slice(&mut self, mut o: Open, result: Result<(), ApiError>) -> Option<Open> {
        if !o.shipping && o.range.has_unfilled() {
            // (If the thread cannot start, the values are read here when
            // the Range is answered.)
            o.shipping = self.reader().is_some();
        }
        if o.shipping {
            let chunks = o.range.take_chunks();
            if !chunks.is_empty() {
                o.in_flight.fetch_add(chunks.len(), Ordering::AcqRel);
                self.send(Job::Chunks(o.id, chunks, o.in_flight.clone()));
            }
        }
        if result.is_ok() && !o.range.is_done() {
            return Some(o);
        }
        let head = result.and_then(|()| o.range.finish());
        if o.shipping {
            self.send(Job::Done(o.id, head, o.reply));
        } else {
            let _ = o.reply.send(head.map(ReadResponse::RangeWire));
        }
        None
    }

    /// The reader thread, started if it is not yet.
    fn reader(&mut self) -> Option<&mpsc::Sender<Job>> {
        if self.reader.is_none() {
            let (tx, rx) = mpsc::channel();
            let progress = self.progress.clone();
            match std::thread::Builder::new()
                .name("range-values".into())
                .spawn(move || read_values(rx, progress))
            {
                Ok(_) => self.reader = Some(tx),
                Err(e) => tracing::error!(error = %e, "cannot start the range-values thread"),
            }
        }
        self.reader.as_ref()
    }

    fn send(&mut self, job: Job) {
        let Some(reader) = &self.reader else {
            return;
        };
        if let Err(mpsc::SendError(job)) = reader.send(job) {
            // The thread is gone (it panicked): the Range cannot be
            // answered with its kvs.
            tracing::error!("the range-values thread is gone");
            self.reader = None;
            if let Job::Done(_, _, reply) = job {
                let _ = reply.send(Err(ApiError::Internal(
                    "the range-values thread is gone".into(),
                )));
            }
        }
    }

    /// No Range is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Every open Range waits for the reader thread: nothing to step until
    /// [`OpenRanges::progress`] says it read some.
    pub fn all_wait(&self) -> bool {
        !self.open.is_empty() && self.open.iter().all(Open::waits)
    }

    /// Notified when the reader thread read some kvs.
    pub fn progress(&self) -> Arc<Notify> {
        self.progress.clone()
    }

    /// Reads one slice of the Range that waited longest; answers it if that
    /// was its last. A Range whose client went away is dropped.
    pub fn step(&mut self, sm: &StateMachine) {
        // Each open Range once at most: those waiting for the reader
        // thread are passed over (to the back).
        for _ in 0..self.open.len() {
            let Some(mut o) = self.open.pop_front() else {
                return;
            };
            if o.reply.is_closed() {
                if o.shipping {
                    // (So that the reader forgets what it holds of it.)
                    let gone = Err(ApiError::Internal("the client went away".into()));
                    self.send(Job::Done(o.id, gone, o.reply));
                }
                continue;
            }
            if o.waits() {
                self.open.push_back(o);
                continue;
            }
            let result = sm.continue_range(&mut o.range);
            if let Some(o) = self.after_slice(o, result) {
                self.open.push_back(o);
            }
            return;
        }
    }

    /// Reads to their end, now, the Ranges reading below `rev`: a
    /// compaction to `rev` (or, with `i64::MAX`, a new state) is about to
    /// be applied, after which what they still need may be gone.
    pub fn finish_below(&mut self, sm: &StateMachine, rev: i64) {
        let (below, rest): (VecDeque<Open>, VecDeque<Open>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|o| o.range.revision() < rev);
        self.open = rest;
        for mut o in below {
            let mut result = Ok(());
            while result.is_ok() && !o.range.is_done() {
                result = sm.continue_range(&mut o.range);
            }
            let _ = self.after_slice(o, result);
        }
    }
}
