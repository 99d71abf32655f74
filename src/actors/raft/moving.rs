//! A member that started as the only voter runs its RaftActor on the client
//! thread: it has no heartbeats to send and no election to lose, and two
//! thread hand-offs per batch fewer are worth ~15% more puts/s on 2 cores
//! (measured: `loadgen --compare --workload put --clients 50 --total 50000
//! --engine memory`, 3 runs of 3 rounds each, against the same binary with
//! Raft on its own thread: 21–32k vs 15–23k puts/s, CPU per put ~15% lower).
//! Once it gains a peer, a heavy request on the client thread would delay
//! its ticks and heartbeats, so the actor moves to the Raft thread, without
//! a restart:
//!
//! - its state is moved whole into a new RaftActor started on the Raft
//!   thread, with a Ticker of its own there; PeerActors are started anew
//!   by the moved actor, on its thread;
//! - every holder of the actor's address reads it from a [`RaftAddr`] at
//!   each send, which now names the new actor;
//! - what is already in the old mailbox is forwarded by the husk left
//!   behind, which stops after [`HUSK_GRACE`] (its Ticker with it). A
//!   forwarded message may arrive after a newer one from the same sender:
//!   every handler takes cumulative positions (persisted, applied,
//!   snapshotted) as "at least", and Raft messages as a network would.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::{RaftActor, RaftSettings};
use crate::actors::messages::{InitialMembers, Stop};
use crate::actors::ticker::Ticker;
use crate::consensus::Node;
use crate::proto::etcdserverpb::Member;
use crate::storage::raft_log::RaftLog;

/// How long the husk of a moved actor forwards what was sent to it.
pub const HUSK_GRACE: Duration = Duration::from_secs(5);

/// The RaftActor's current address (it changes once if a lone member gains
/// peers, see the module note); clones share it.
#[derive(Clone)]
pub struct RaftAddr(Arc<parking_lot::RwLock<Addr<RaftActor>>>);

impl RaftAddr {
    /// A cell naming `addr`.
    pub fn new(addr: Addr<RaftActor>) -> RaftAddr {
        RaftAddr(Arc::new(parking_lot::RwLock::new(addr)))
    }

    /// The address now.
    pub fn get(&self) -> Addr<RaftActor> {
        self.0.read().clone()
    }

    fn set(&self, addr: Addr<RaftActor>) {
        *self.0.write() = addr;
    }

    /// [`Addr::do_send`] to the actor where it is now.
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        RaftActor: Handler<M>,
    {
        self.0.read().do_send(msg)
    }

    /// [`Addr::send`] to the actor where it is now.
    pub fn send<M>(&self, msg: M) -> actix::dev::Request<RaftActor, M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        RaftActor: Handler<M>,
    {
        self.0.read().send(msg)
    }
}

/// Forwards `$msg` and returns when the actor moved away (the husk).
macro_rules! forward_if_moved {
    ($self:ident, $msg:ident) => {
        if let Some(to) = &$self.moved_to {
            to.do_send($msg);
            return;
        }
    };
}
pub(super) use forward_if_moved;

impl RaftActor {
    /// Moves this actor's state to a new RaftActor on `thread` (see the
    /// module note); `self` becomes the husk. False if it could not move
    /// (it then stays on the client thread).
    pub(super) fn move_to(
        &mut self,
        thread: ArbiterHandle,
        members: Vec<Member>,
        ctx: &mut Context<Self>,
    ) -> bool {
        let husk = match self.husk() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot move Raft to its own thread; it stays on the client thread");
                return false;
            }
        };
        let mut moved = std::mem::replace(self, husk);
        moved.turn_scheduled = false;
        // PeerActors start anew on the Raft thread; the old ones send what
        // they hold, then stop.
        for (_, (_, peer)) in moved.peers.drain() {
            peer.do_send(Stop);
        }
        let tick = moved.settings.tick;
        let me = moved.me();
        let new = RaftActor::start_in_arbiter(&thread, move |_| moved);
        let ticked = new.clone();
        Ticker::start_in_arbiter(&thread, move |_| Ticker::new(ticked, tick));
        new.do_send(InitialMembers(members));
        self.settings.addr.set(new.clone());
        self.moved_to = Some(new);
        ctx.run_later(HUSK_GRACE, |_, ctx| ctx.stop());
        tracing::info!(member = %me, "this member has peers now: Raft moved to its own thread");
        true
    }

    /// What stays behind a moved actor: it only forwards.
    fn husk(&self) -> Result<RaftActor, raft::Error> {
        let config = raft::Config {
            id: self.node.id(),
            ..Default::default()
        };
        let log = RaftLog::from_snapshot(Default::default(), Default::default());
        let node = Node::new(&config, log, &crate::consensus::logger())?;
        let settings = RaftSettings {
            snapshot_catchup_entries: self.settings.snapshot_catchup_entries,
            tick: self.settings.tick,
            peers: self.settings.peers.clone(),
            raft_thread: None,
            addr: self.settings.addr.clone(),
        };
        Ok(RaftActor::new(
            node,
            self.wal.clone(),
            self.apply.clone(),
            self.status.clone(),
            settings,
        ))
    }
}
