//! The ApplyActor's reads, and the gRPC Ranges it reads a slice per turn.
//!
//! A Range answered as the wire's bytes ([`ReadRequest::RangeWire`]) reads
//! its first slice when it is served; if more is left it stays open here,
//! and each idle turn of the apply thread reads one slice of the range
//! that waited longest, so applies, other reads and the client API run in
//! between (a 100,000-key range held the thread 130-450 ms in one turn).

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::messages::{PendingRead, ReadResult};
use crate::state_machine::kv::sliced::{SlicedRange, Slices};
use crate::state_machine::{ReadRequest, ReadResponse, StateMachine};

/// The Ranges being read a slice at a time.
#[derive(Default)]
pub struct OpenRanges {
    open: VecDeque<Open>,
}

struct Open {
    range: SlicedRange,
    reply: oneshot::Sender<ReadResult>,
}

impl Open {
    fn answer(self, result: Result<(), crate::error::ApiError>) {
        let answer = result.map(|()| ReadResponse::RangeWire(self.range.finish()));
        let _ = self.reply.send(answer);
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
                Ok(range) if !range.is_done() => {
                    if let Some(o) = opened {
                        let _ = o.send(());
                    }
                    self.open.push_back(Open { range, reply });
                }
                Ok(range) => Open { range, reply }.answer(Ok(())),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            other => {
                let _ = reply.send(sm.read(&caller, &other));
            }
        }
    }

    /// No Range is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Reads one slice of the Range that waited longest; answers it if that
    /// was its last. A Range whose client went away is dropped.
    pub fn step(&mut self, sm: &StateMachine) {
        while let Some(mut o) = self.open.pop_front() {
            if o.reply.is_closed() {
                continue;
            }
            match sm.continue_range(&mut o.range) {
                Ok(()) if !o.range.is_done() => self.open.push_back(o),
                result => o.answer(result),
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
            o.answer(result);
        }
    }
}
