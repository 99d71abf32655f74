//! The peer service, on the peer port and the Raft thread: Raft message
//! batches from other members' PeerActors go straight into the RaftActor's
//! mailbox; snapshots are received into a file, checked whole, and only then
//! stepped into Raft (with the file's path as the snapshot's data); joining
//! members ask for the membership; followers forward MemberPromote here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::Backend;
use crate::error::{ApiError, PeerError};
use crate::proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::metastorepb::peer_server::{Peer, PeerServer};
use crate::proto::metastorepb::{
    Membership, MembershipRequest, PromoteRequest, PromoteResponse, RaftBatch, RaftEnd,
    SnapshotAck, SnapshotChunk,
};

/// How long a member asked for its hash at a revision it has not applied
/// yet waits to apply it.
const HASH_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(3);

/// The peer service.
pub struct PeerService {
    backend: Backend,
    incoming: PathBuf,
    received: Arc<AtomicU64>,
    /// One peer hash at a time: a whole-state image per request, and a
    /// leader that gave up waiting must not leave hashes piling up behind
    /// the one running (a queued request whose asker left is dropped
    /// before it starts).
    hashing: Arc<tokio::sync::Semaphore>,
}

impl PeerService {
    /// A peer service; received snapshots go to `incoming`.
    pub fn new(backend: Backend, incoming: PathBuf) -> PeerService {
        PeerService {
            backend,
            incoming,
            received: Arc::default(),
            hashing: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        let mine = self.backend.status().cluster_id;
        if cluster_id != mine {
            tracing::error!(
                theirs = format!("{cluster_id:x}"),
                mine = format!("{mine:x}"),
                "peer traffic from another cluster refused"
            );
            return Err(PeerError::ClusterMismatch.into());
        }
        Ok(())
    }
}

/// The largest message the peer port decodes: a Raft batch (the sender
/// stops filling one at `max_size_per_msg` bytes, so it holds at most that
/// plus the one message that crossed it: an append of up to
/// `max_size_per_msg`, or a single entry as large as a request) or a
/// snapshot chunk (the MsgSnapshot plus one image chunk), with room for
/// framing. Anything larger is refused before it is buffered.
pub fn max_peer_message_bytes(max_size_per_msg: u64, max_request_bytes: usize) -> usize {
    const FRAMING: usize = 1 << 20;
    let max_size_per_msg = usize::try_from(max_size_per_msg).unwrap_or(usize::MAX);
    let one_message = max_size_per_msg.max(max_request_bytes);
    max_size_per_msg
        .saturating_add(one_message)
        .max(crate::actors::peer::SNAPSHOT_CHUNK)
        .saturating_add(FRAMING)
}

/// The Raft messages of a batch that are for this member (`me`); the others
/// are counted in `misaddressed` and dropped: stepping a message addressed to
/// another member would make Raft answer (and vote, and append) as if it
/// were that member. Undecodable ones are dropped with a warning.
fn decode_batch(
    batch: &RaftBatch,
    me: u64,
    misaddressed: &prometheus_client::metrics::counter::Counter,
) -> Vec<raft::eraftpb::Message> {
    let mut msgs = Vec::with_capacity(batch.messages.len());
    for bytes in &batch.messages {
        match crate::storage::raft_log::parse_bounded::<raft::eraftpb::Message>(bytes) {
            Ok(m) if m.to == me => msgs.push(m),
            Ok(m) => {
                misaddressed.inc();
                tracing::warn!(
                    from = format!("{:x}", m.from),
                    to = format!("{:x}", m.to),
                    "raft message for another member dropped"
                );
            }
            Err(e) => tracing::warn!(error = %e, "undecodable raft message dropped"),
        }
    }
    msgs
}

/// Serves the peer service on `listener` until the process stops; messages
/// over `max_message` bytes (see [`max_peer_message_bytes`]) are refused.
pub async fn serve(
    backend: Backend,
    listener: std::net::TcpListener,
    tls: Option<crate::tls::ServerTls>,
    incoming: PathBuf,
    max_message: usize,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "peer listener");
            return;
        }
    };
    let addr = listener.local_addr().ok();
    // Small writes (acks, heartbeats) must leave at once: without
    // TCP_NODELAY, Nagle and the peer's delayed ACK hold them ~40 ms.
    use futures::StreamExt as _;
    let stream = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(tcp) = &s {
            let _ = tcp.set_nodelay(true);
        }
        s
    });
    let svc = PeerServer::new(PeerService::new(backend, incoming))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX);
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(crate::actors::peer::PEER_WINDOW)
        .initial_connection_window_size(crate::actors::peer::PEER_WINDOW)
        .add_service(svc);
    let served = match tls {
        None => {
            tracing::info!(?addr, "serving peers");
            server.serve_with_incoming(stream).await
        }
        Some(tls) => {
            tracing::info!(?addr, "serving peers over TLS");
            let tcp = stream.into_inner().into_inner();
            let incoming = crate::tls::TlsIncoming::new(tcp, tls);
            let conns = futures::stream::unfold(incoming, |mut incoming| async move {
                let (conn, _) = incoming.accept().await;
                Some((Ok::<_, std::io::Error>(PeerConn(conn)), incoming))
            });
            server.serve_with_incoming(conns).await
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "peer server stopped");
    }
}

/// A member's TLS connection to the peer port.
struct PeerConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for PeerConn {
    /// The dialing member's certificate common name.
    type ConnectInfo = Option<String>;

    fn connect_info(&self) -> Self::ConnectInfo {
        crate::tls::peer_common_name(&self.0)
    }
}

impl tokio::io::AsyncRead for PeerConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeerConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftEnd>, Status> {
        let mut batches = req.into_inner();
        let backend = &self.backend;
        let mut received: Option<(u64, prometheus_client::metrics::counter::Counter)> = None;
        while let Some(batch) = batches.message().await? {
            let counter = match &received {
                Some((from, c)) if *from == batch.from => c,
                _ => {
                    let c = backend
                        .metrics()
                        .peer_received_bytes
                        .get_or_create(&crate::metrics::FromPeer {
                            From: format!("{:x}", batch.from),
                        })
                        .clone();
                    &received.insert((batch.from, c)).1
                }
            };
            counter.inc_by(batch.messages.iter().map(|m| m.len() as u64).sum());
            self.check_cluster(batch.cluster_id)?;
            if backend.status().is_removed(batch.from) {
                // It may not know yet: it never applies its own removal once
                // the others stop replicating to it.
                return Err(PeerError::Removed.into());
            }
            if batch.messages.is_empty() {
                // The stream's first batch (see the PeerActor): the member
                // is up; redial it if this member's stream to it is down.
                backend.peer_back(batch.from);
                continue;
            }
            let msgs = decode_batch(
                &batch,
                backend.status().member_id,
                &backend.metrics().peer_misaddressed_messages,
            );
            // Waits while the Raft mailbox is full: backpressure on the
            // sender, whose next batch coalesces meanwhile.
            if backend.step(msgs).await.is_err() {
                return Err(Status::unavailable("etcdserver: server stopped"));
            }
        }
        Ok(Response::new(RaftEnd {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_cluster(first.cluster_id)?;
        if self.backend.status().is_removed(first.from) {
            return Err(PeerError::Removed.into());
        }
        let mut msg =
            crate::storage::raft_log::parse_bounded::<raft::eraftpb::Message>(&first.message)
                .map_err(|e| Status::invalid_argument(format!("snapshot message: {e}")))?;
        let index = msg.get_snapshot().get_metadata().index;
        let n = self.received.fetch_add(1, Ordering::Relaxed);
        let path = self
            .incoming
            .join(format!("{index:016x}-{:x}-{n}.image", first.from));
        let result = receive(&mut chunks, &path, first.data, self.backend.image_intake()).await;
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(Status::data_loss(format!("snapshot {index}: {e}")));
            }
        };
        tracing::info!(
            from = format!("{:x}", first.from),
            index,
            bytes = size,
            "snapshot received and checked"
        );
        // The snapshot's data names the checked file; the ApplyActor
        // installs from it.
        msg.mut_snapshot()
            .set_data(path.to_string_lossy().into_owned().into_bytes().into());
        self.backend
            .step(vec![msg])
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(SnapshotAck {}))
    }

    async fn membership(
        &self,
        _: Request<MembershipRequest>,
    ) -> Result<Response<Membership>, Status> {
        let m = self
            .backend
            .members()
            .await
            .map_err(ApiError::into_peer_status)?;
        Ok(Response::new(m.to_pb()))
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        let members = self
            .backend
            .promote_here(req.into_inner().member_id)
            .await
            .map_err(ApiError::into_peer_status)?;
        Ok(Response::new(PromoteResponse { members }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let rev = req.into_inner().revision;
        let _one_at_a_time = self
            .hashing
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        // The leader asks at its own revision; a follower a few entries
        // behind (under load it always is) waits to apply them rather than
        // answer "future revision", which would skip it in every round.
        let deadline = tokio::time::Instant::now() + HASH_CATCH_UP;
        while self.backend.status().revision() < rev && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(Response::new(
            self.backend
                .hash_kv(rev)
                .await
                .map_err(ApiError::into_peer_status)?,
        ))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        let ttl = match self.backend.lease_renew_here(id).await {
            Ok(ttl) => ttl,
            Err(ApiError::LeaseNotFound) => 0,
            Err(e) => return Err(e.into_peer_status()),
        };
        Ok(Response::new(LeaseKeepAliveResponse {
            header: self.backend.header(self.backend.status().revision()),
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.backend
                .lease_time_to_live_here(&r)
                .await
                .map_err(ApiError::into_peer_status)?,
        ))
    }
}

/// Chunks received and not yet written and checked: a bound on what a
/// fast sender queues in memory (64 KiB-4 MiB each).
const RECEIVE_QUEUE: usize = 8;

/// Writes the image chunks to `path` and checks them (checksum and every
/// record) as they arrive, on a blocking thread; fsyncs the file; returns
/// its size.
async fn receive(
    chunks: &mut Streaming<SnapshotChunk>,
    path: &std::path::Path,
    first_data: Vec<u8>,
    intake: Arc<dyn crate::actors::images::ImageIntake>,
) -> Result<u64, String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(RECEIVE_QUEUE);
    let path = path.to_owned();
    let checker = tokio::task::spawn_blocking(move || {
        let chunks = std::iter::from_fn(|| rx.blocking_recv());
        crate::actors::images::write_and_check(chunks, &path, file, intake.as_ref())
    });
    let mut size = first_data.len() as u64;
    let mut received = Ok(());
    if tx.send(first_data).await.is_ok() {
        loop {
            match chunks.message().await {
                Ok(Some(chunk)) => {
                    size += chunk.data.len() as u64;
                    if tx.send(chunk.data).await.is_err() {
                        break; // the check failed: its error says why
                    }
                    fail::fail_point!("snapshot::receive");
                }
                Ok(None) => break,
                Err(s) => {
                    received = Err(s.message().to_owned());
                    break;
                }
            }
        }
    }
    // The end of the stream (or of the checker): the checker sees the end
    // of its input; a broken stream's error comes first.
    drop(tx);
    let checked = checker.await.map_err(|e| e.to_string())?;
    received?;
    checked?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use protobuf::Message as _;

    use super::*;

    fn encoded(from: u64, to: u64) -> Vec<u8> {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.write_to_bytes().expect("raft message encodes")
    }

    /// A message addressed to another member is dropped and counted; the
    /// ones for us go through in order.
    #[test]
    fn misaddressed_raft_messages_are_dropped_and_counted() {
        let batch = RaftBatch {
            cluster_id: 1,
            from: 2,
            to: 1,
            messages: vec![encoded(2, 1), encoded(2, 3), encoded(2, 1)],
        };
        let counter = prometheus_client::metrics::counter::Counter::default();
        let msgs = decode_batch(&batch, 1, &counter);
        assert_eq!(msgs.len(), 2);
        assert!(msgs.iter().all(|m| m.to == 1));
        assert_eq!(counter.get(), 1);
    }

    /// The cap leaves room for a full batch plus its last message, and for
    /// a snapshot chunk, with the defaults (4 MiB messages, 1.5 MiB
    /// requests), and stays far below "anything".
    #[test]
    fn the_peer_message_cap_fits_a_batch_and_a_chunk() {
        let cap = max_peer_message_bytes(4 << 20, 1536 * 1024);
        assert!(cap >= (8 << 20));
        assert!(cap > crate::actors::peer::SNAPSHOT_CHUNK);
        assert!(cap <= (16 << 20));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Peer-port bytes of any shape (a batch, a snapshot chunk, the Raft
        /// messages inside, some of them real messages with bytes changed):
        /// decoded or refused, never a panic, never a large allocation the
        /// bytes do not back.
        #[test]
        fn hostile_peer_messages_never_panic_or_overallocate(
            wire in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            inner in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
                0..8,
            ),
            poke in (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
        ) {
            use crate::storage::alloc_probe::{bound, largest_allocation};
            use prost::Message as _;
            let mut real = encoded(2, 1);
            let n = real.len();
            real[poke.0 % n] = poke.1;
            let mut messages = inner;
            messages.push(real);
            let input: usize = wire.len() + messages.iter().map(Vec::len).sum::<usize>();
            let counter = prometheus_client::metrics::counter::Counter::default();
            let (_, largest) = largest_allocation(|| {
                let _ = RaftBatch::decode(wire.as_slice());
                let _ = SnapshotChunk::decode(wire.as_slice());
                let _ = crate::storage::raft_log::parse_bounded::<raft::eraftpb::Message>(&wire);
                let batch = RaftBatch {
                    cluster_id: 1,
                    from: 2,
                    to: 1,
                    messages,
                };
                decode_batch(&batch, 1, &counter)
            });
            proptest::prop_assert!(largest <= bound(input), "{largest} for {input} bytes");
        }
    }
}
