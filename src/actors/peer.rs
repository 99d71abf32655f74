//! The PeerActor: one per remote member, on the Raft thread. It owns a
//! long-lived gRPC stream to that member's peer port and carries Raft's
//! messages over it.
//!
//! - Coalescing: one batch is being written at a time (it sits in a
//!   one-slot channel until the gRPC stream takes it); every message queued
//!   meanwhile leaves in the next batch, as one write, up to Raft's max
//!   message size in bytes (the rest in the batch after: the receiver caps
//!   the size of what it decodes, see `api::peer`). There is no
//!   transport-level ack: Raft's own responses acknowledge its appends
//!   (`raft_inflight_messages` counts the appends they have not answered).
//! - Bounded: at most [`MAX_QUEUE`] messages wait; beyond that, and while the
//!   stream is down, messages are dropped and Raft is told the member is
//!   unreachable (it probes again). Memory never grows with a slow peer.
//! - Reconnect with backoff (50 ms doubling to 200 ms).
//! - Snapshots go on their own stream (heartbeats keep flowing beside
//!   them): the leader's MsgSnapshot only names where the log starts; this
//!   actor asks the ApplyActor for a fresh image of the applied state,
//!   rewrites the message's metadata to the image's index, term and
//!   membership, and streams the image in chunks; Raft hears how it ended.
//!
//! Raft messages travel as raft-rs's own protobuf encoding inside our prost
//! batch: one codec for Raft's types (rust-protobuf, which raft-rs is built
//! on) and no second copy of raft's .proto to keep in step.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::apply::ApplyActor;
use super::messages::{
    NewUrls, Outbox, PeerBack, RemovedFromCluster, SnapshotSent, Stop, TakeImage, Unreachable,
};
use super::raft::RaftAddr;
use crate::error::PeerError;
use crate::metrics::Metrics;
use crate::proto::metastorepb::peer_client::PeerClient;
use crate::proto::metastorepb::{RaftBatch, SnapshotChunk};
use crate::status::NodeStatus;
use crate::storage::image::ImageReader;
use crate::tls::Connector;

/// HTTP/2 flow-control windows of peer streams: room for several 4 MiB
/// append messages (the default 64 KiB would throttle a catching-up member).
pub const PEER_WINDOW: u32 = 16 << 20;

/// Messages waiting for a peer, at most.
pub const MAX_QUEUE: usize = 8192;
/// Image bytes per snapshot chunk (the receiver's message cap leaves room
/// for one).
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Redials of a member that cannot be reached: 50 ms, then 100 ms, then
/// every 200 ms. A member that comes back (restarted, or its network healed)
/// hears from the others within that: with a 2 s cap a restarted follower
/// waited up to 2 s for the leader's next dial before it was healthy (etcd
/// redials every 100 ms). A failed dial to a dead port costs a SYN and a
/// reset; one to a silent host waits out the connect timeout, one at a time.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How long a stopping PeerActor tries to deliver what it holds.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What every PeerActor of a member shares.
#[derive(Clone)]
pub struct PeerContext {
    /// This member.
    pub from: u64,
    /// The cluster (receivers refuse other clusters' traffic).
    pub cluster_id: u64,
    /// Where messages from peers and transport outcomes go.
    pub raft: RaftAddr,
    /// Where images for snapshots come from.
    pub apply: Addr<ApplyActor>,
    /// Connectivity for membership checks.
    pub status: Arc<NodeStatus>,
    /// The member's metrics.
    pub metrics: Arc<Metrics>,
    /// A batch stops taking messages once it holds this many bytes (Raft's
    /// max message size), so it fits the receiver's message cap.
    pub max_batch_bytes: usize,
    /// Dials peer URLs (TLS for `https://` ones).
    pub dialer: crate::tls::Dialer,
}

/// Carries Raft messages to one remote member.
pub struct PeerActor {
    to: u64,
    urls: Vec<String>,
    ctx: PeerContext,
    queue: VecDeque<Message>,
    /// The live stream's sending side.
    tx: Option<mpsc::Sender<RaftBatch>>,
    /// A batch sits in the channel, not yet taken by the stream.
    writing: bool,
    /// Stream generation: events of an older stream are ignored.
    generation: u64,
    connecting: bool,
    backoff: Duration,
    sending_snapshot: bool,
    /// Told to stop: goes once what is queued left (the removed member's
    /// last messages carry the commit of its removal).
    stopping: bool,
    /// `etcd_network_peer_sent_bytes_total` for this peer, looked up once.
    sent_bytes: prometheus_client::metrics::counter::Counter,
}

impl PeerActor {
    /// A peer actor for member `to` at `urls`.
    pub fn new(to: u64, urls: Vec<String>, ctx: PeerContext) -> PeerActor {
        let sent_bytes = ctx
            .metrics
            .peer_sent_bytes
            .get_or_create(&crate::metrics::ToPeer {
                To: format!("{to:x}"),
            })
            .clone();
        PeerActor {
            to,
            urls,
            ctx,
            sent_bytes,
            queue: VecDeque::new(),
            tx: None,
            writing: false,
            generation: 0,
            connecting: false,
            backoff: BACKOFF_MIN,
            sending_snapshot: false,
            stopping: false,
        }
    }

    /// Stopping, and nothing is left to send.
    fn stop_if_flushed(&self, ctx: &mut Context<Self>) {
        if self.stopping && (self.queue.is_empty() || self.tx.is_none()) && !self.writing {
            ctx.stop();
        }
    }

    fn endpoint(&self) -> Option<(Endpoint, Connector)> {
        let url = self.urls.first()?;
        match self.ctx.dialer.endpoint(url) {
            Ok((e, connector)) => Some((
                // The connector sets TCP_NODELAY itself.
                e.connect_timeout(Duration::from_secs(1))
                    .initial_stream_window_size(PEER_WINDOW)
                    .initial_connection_window_size(PEER_WINDOW)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5)),
                connector,
            )),
            Err(why) => {
                tracing::warn!(peer = format!("{:x}", self.to), %why, "peer URL not dialable");
                None
            }
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.tx.is_some() {
            return;
        }
        let Some((endpoint, connector)) = self.endpoint() else {
            tracing::warn!(peer = format!("{:x}", self.to), urls = ?self.urls, "no usable peer URL");
            return;
        };
        self.connecting = true;
        self.generation += 1;
        let generation = self.generation;
        let me = ctx.address();
        actix::spawn(async move {
            let channel = match endpoint.connect_with_connector(connector).await {
                Ok(c) => c,
                Err(e) => {
                    let why = PeerError::Connect(e.to_string());
                    return me.do_send(StreamDown { generation, why });
                }
            };
            // One slot: a batch waits there until the stream takes it.
            let (tx, rx) = mpsc::channel::<RaftBatch>(1);
            me.do_send(StreamUp { generation, tx });
            let ended = PeerClient::new(channel)
                .raft(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            let why = match ended {
                Ok(_) => PeerError::Closed,
                Err(s) => PeerError::from_status(&s),
            };
            me.do_send(StreamDown { generation, why });
        });
    }

    /// Sends what is queued if no batch is waiting to be written.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.queue.is_empty() || self.tx.is_none() {
            return;
        }
        let messages = take_batch(&mut self.queue, self.ctx.max_batch_bytes);
        self.sent_bytes
            .inc_by(messages.iter().map(|m| m.len() as u64).sum());
        self.send(messages, ctx);
    }

    /// Hands one batch to the stream; the next may go once it is taken.
    fn send(&mut self, messages: Vec<Vec<u8>>, ctx: &mut Context<Self>) {
        let Some(tx) = &self.tx else { return };
        let batch = RaftBatch {
            cluster_id: self.ctx.cluster_id,
            from: self.ctx.from,
            to: self.to,
            messages,
        };
        match tx.try_send(batch) {
            Ok(()) => {
                self.writing = true;
                // Told when the stream took it: the next batch may go.
                let tx = tx.clone();
                let me = ctx.address();
                let generation = self.generation;
                actix::spawn(async move {
                    let _ = tx.reserve().await;
                    me.do_send(Drained { generation });
                });
            }
            Err(_) => {
                // The stream is going away; its StreamDown follows.
                self.lost();
            }
        }
    }

    /// Messages were lost: Raft probes the member again.
    fn lost(&self) {
        self.ctx.raft.do_send(Unreachable(self.to));
    }

    fn start_snapshot(&mut self, msg: Message, ctx: &mut Context<Self>) {
        if self.sending_snapshot {
            self.ctx.raft.do_send(SnapshotSent {
                to: self.to,
                ok: false,
            });
            return;
        }
        let Some(endpoint) = self.endpoint() else {
            return self.ctx.raft.do_send(SnapshotSent {
                to: self.to,
                ok: false,
            });
        };
        self.sending_snapshot = true;
        let to = self.to;
        let peer = self.ctx.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let started = std::time::Instant::now();
            let result = send_snapshot(endpoint, msg, &peer).await;
            match &result {
                Ok((index, bytes)) => tracing::info!(
                    peer = format!("{to:x}"),
                    index,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot sent"
                ),
                Err(e) => {
                    tracing::warn!(peer = format!("{to:x}"), error = %e, "snapshot send failed")
                }
            }
            let ok = result.is_ok();
            peer.raft.do_send(SnapshotSent { to, ok });
            me.do_send(SnapshotEnded);
        });
    }
}

/// Encodes messages from the front of `queue` into one batch until it holds
/// `budget` bytes or more (at least one message; what stays queued leaves in
/// the next batch), so a batch stays under the receiver's message cap.
fn take_batch(queue: &mut VecDeque<Message>, budget: usize) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    while bytes < budget.max(1) {
        let Some(m) = queue.pop_front() else {
            break;
        };
        let encoded = m.write_to_bytes().expect("raft message encodes");
        bytes += encoded.len();
        messages.push(encoded);
    }
    messages
}

/// Builds the image, rewrites the message to it and streams it.
async fn send_snapshot(
    (endpoint, connector): (Endpoint, Connector),
    mut msg: Message,
    peer: &PeerContext,
) -> Result<(u64, u64), PeerError> {
    let job = peer
        .apply
        .send(TakeImage)
        .await
        .map_err(PeerError::local)?
        .map_err(PeerError::local)?;
    // Materialize the image (the rocksdb engine writes it on a thread).
    let (mut source, total) = tokio::task::spawn_blocking(move || job.open())
        .await
        .map_err(PeerError::local)?
        .map_err(PeerError::local)?;
    let (header, mut source) = tokio::task::spawn_blocking(move || {
        let h = ImageReader::new(&mut source).map(|(h, _)| h);
        (h, source)
    })
    .await
    .map_err(PeerError::local)?;
    let header = header.map_err(PeerError::local)?;
    source.seek(SeekFrom::Start(0)).map_err(PeerError::local)?;
    {
        let meta = msg.mut_snapshot().mut_metadata();
        meta.index = header.index;
        meta.term = header.term;
        meta.set_conf_state(header.conf_state.clone());
    }
    let first = SnapshotChunk {
        cluster_id: peer.cluster_id,
        from: peer.from,
        message: msg.write_to_bytes().map_err(PeerError::local)?,
        data: Vec::new(),
    };
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let (cluster_id, from) = (peer.cluster_id, peer.from);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), PeerError> {
        fail::fail_point!("snapshot::send");
        tx.blocking_send(first)
            .map_err(|_| PeerError::local("stream closed"))?;
        let mut sent = 0u64;
        while sent < total {
            let mut buf = vec![0u8; SNAPSHOT_CHUNK.min((total - sent) as usize)];
            source.read_exact(&mut buf).map_err(PeerError::local)?;
            sent += buf.len() as u64;
            let chunk = SnapshotChunk {
                cluster_id,
                from,
                message: Vec::new(),
                data: buf,
            };
            tx.blocking_send(chunk)
                .map_err(|_| PeerError::local("stream closed"))?;
        }
        Ok(())
    });
    let channel: Channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| PeerError::Connect(e.to_string()))?;
    let mut client = PeerClient::new(channel);
    let answer = client
        .snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.await.map_err(PeerError::local)??;
    answer.map_err(|s| PeerError::from_status(&s))?;
    Ok((header.index, total))
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.ctx.status.forget_peer(self.to);
    }
}

impl Handler<Stop> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // The messages queued for a removed member include the commit of
        // its removal: without it the member never applies the change and
        // cannot answer whoever asked it to leave. Send them, then stop;
        // a member that does not take them gets a second.
        self.stopping = true;
        self.flush(ctx);
        self.stop_if_flushed(ctx);
        ctx.run_later(STOP_GRACE, |_, ctx| ctx.stop());
    }
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct StreamUp {
    generation: u64,
    tx: mpsc::Sender<RaftBatch>,
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct StreamDown {
    generation: u64,
    why: PeerError,
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct Drained {
    generation: u64,
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct SnapshotEnded;

#[derive(actix::Message)]
#[rtype(result = "()")]
struct Reconnect;

impl Handler<Outbox> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Outbox, ctx: &mut Context<Self>) {
        let mut dropped = false;
        for m in msg.0 {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.start_snapshot(m, ctx);
            } else if self.tx.is_none() || self.queue.len() >= MAX_QUEUE {
                dropped = true;
            } else {
                self.queue.push_back(m);
            }
        }
        if dropped {
            self.ctx.metrics.peer_dropped_messages.inc();
            self.lost();
        }
        self.flush(ctx);
    }
}

impl Handler<NewUrls> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: NewUrls, ctx: &mut Context<Self>) {
        if msg.0 == self.urls {
            return;
        }
        self.urls = msg.0;
        // Drop the old stream; the next connect uses the new URLs.
        self.tx = None;
        self.connecting = false;
        self.generation += 1;
        self.writing = false;
        self.connect(ctx);
    }
}

impl Handler<StreamUp> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: StreamUp, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        self.connecting = false;
        self.tx = Some(msg.tx);
        self.writing = false;
        self.backoff = BACKOFF_MIN;
        self.ctx.status.set_peer_active(self.to, true);
        tracing::info!(peer = format!("{:x}", self.to), "peer stream up");
        // A batch without messages first: the peer hears at once that this
        // member is up (a restarted follower has nothing to say to the
        // leader until it hears from it) and redials its own stream to this
        // member if that one is down (`PeerBack`). Queued messages follow.
        self.send(Vec::new(), ctx);
    }
}

impl Handler<PeerBack> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: PeerBack, ctx: &mut Context<Self>) {
        if self.tx.is_none() && !self.connecting && !self.stopping {
            self.backoff = BACKOFF_MIN;
            self.connect(ctx);
        }
    }
}

impl Handler<Drained> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Drained, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        self.writing = false;
        self.flush(ctx);
        self.stop_if_flushed(ctx);
    }
}

impl Handler<StreamDown> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: StreamDown, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        if self.stopping {
            return ctx.stop();
        }
        let removed = msg.why == PeerError::Removed;
        if removed {
            self.ctx.raft.do_send(RemovedFromCluster);
        }
        if msg.why == PeerError::ClusterMismatch {
            tracing::error!(
                peer = format!("{:x}", self.to),
                cluster = format!("{:x}", self.ctx.cluster_id),
                "the peer belongs to another cluster and refuses this member's messages"
            );
        }
        let was_up = self.tx.take().is_some();
        self.connecting = false;
        if was_up {
            tracing::warn!(peer = format!("{:x}", self.to), why = %msg.why, "peer stream down");
        } else {
            tracing::debug!(peer = format!("{:x}", self.to), why = %msg.why, "peer not reachable");
        }
        self.ctx.status.set_peer_active(self.to, false);
        // A batch in the channel or queued may never arrive.
        if self.writing || !self.queue.is_empty() {
            self.writing = false;
            self.queue.clear();
            self.lost();
        }
        if removed {
            // The peer refuses this member for good; it is stopping.
            return;
        }
        ctx.notify_later(Reconnect, self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

impl Handler<Reconnect> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: Reconnect, ctx: &mut Context<Self>) {
        self.connect(ctx);
    }
}

impl Handler<SnapshotEnded> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: SnapshotEnded, _: &mut Context<Self>) {
        self.sending_snapshot = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(to: u64, bytes: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        m.to = to;
        m.mut_entries().push(raft::eraftpb::Entry {
            data: vec![7u8; bytes].into(),
            ..Default::default()
        });
        m
    }

    /// A batch stops at the budget (so it fits the receiver's cap); the rest
    /// waits, in order, for the next one.
    #[test]
    fn a_batch_stops_at_its_byte_budget() {
        let mut queue: VecDeque<Message> = (0..5).map(|_| append(2, 1000)).collect();
        let first = take_batch(&mut queue, 2500);
        assert_eq!(first.len(), 3, "stops once 2500 bytes are reached");
        assert_eq!(queue.len(), 2);
        let second = take_batch(&mut queue, 2500);
        assert_eq!(second.len(), 2);
        assert!(queue.is_empty());
        let mut big: VecDeque<Message> = [append(2, 10_000)].into();
        assert_eq!(
            take_batch(&mut big, 100).len(),
            1,
            "one message always goes"
        );
    }
}
