//! The Ticker: sends the RaftActor one `Tick` per tick interval (100 ms by
//! default). Kept apart so the clock never waits behind Raft work.

use std::time::Duration;

use actix::prelude::*;

use super::messages::Tick;
use super::raft::RaftActor;

/// Drives Raft's logical clock.
pub struct Ticker {
    raft: Addr<RaftActor>,
    interval: Duration,
}

impl Ticker {
    /// A ticker for `raft` every `interval`.
    pub fn new(raft: Addr<RaftActor>, interval: Duration) -> Ticker {
        Ticker { raft, interval }
    }
}

impl Actor for Ticker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |t, ctx| {
            if t.raft.connected() {
                t.raft.do_send(Tick);
            } else {
                // Its RaftActor stopped (or moved: see `raft::moving`).
                ctx.stop();
            }
        });
    }
}
