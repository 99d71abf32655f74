//! The periodic corruption check (etcd's `--experimental-corrupt-check-time`,
//! on by default here): the leader hashes its history up to its current
//! revision and asks every other member, over the peer port, for its HashKV
//! at that revision. A member that answers with the same compaction
//! revision and a different hash holds different data for the same
//! history: the leader raises a CORRUPT alarm for it through Raft, and every
//! member then refuses changes to the keys (`etcdserver: corrupt cluster`)
//! until an operator has looked and disarmed it. A member that is behind
//! (the revision is in its future), compacted differently or unreachable is
//! skipped this round.

use std::time::Duration;

use super::Backend;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, HashKvRequest, HashKvResponse,
};
use crate::proto::metastorepb::internal_request;

/// How long one member may take to answer (it may first wait to apply the
/// revision asked, then images a whole state: seconds at a million keys).
const ASK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a check every `every` while this member leads.
pub async fn run(backend: Backend, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let status = backend.status();
        if status.leader() != status.member_id {
            continue;
        }
        if let Err(e) = check(&backend).await {
            tracing::debug!(error = %e, "corruption check skipped");
        }
    }
}

/// One round; returns the members found corrupt.
pub async fn check(backend: &Backend) -> Result<Vec<u64>, crate::error::ApiError> {
    let me = backend.status().member_id;
    let h = backend.hash_state(0).await?;
    let rev = h.current_rev;
    // Every member is asked at once: each images its whole state, so asking
    // in turn would add their times up (minutes at a million keys).
    let asks = backend
        .members()
        .await?
        .members()
        .iter()
        .filter(|m| m.id != me)
        .map(|m| ask(backend, m.id, rev))
        .collect::<Vec<_>>();
    let answers = futures::future::join_all(asks).await;
    let mut corrupt = Vec::new();
    let mut compared = 0;
    for (id, resp) in answers.into_iter().flatten() {
        compared += 1;
        if resp.compact_revision.max(0) != h.compact_rev.max(0) || resp.hash == h.kv {
            continue;
        }
        tracing::error!(
            member = format!("{id:x}"),
            revision = rev,
            leader_hash = h.kv,
            member_hash = resp.hash,
            "member holds different data for the same history: raising CORRUPT"
        );
        let raise = internal_request::Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Corrupt as i32,
        });
        backend
            .write(&crate::state_machine::auth::Caller::System, raise)
            .await?;
        corrupt.push(id);
    }
    tracing::info!(
        revision = rev,
        compared,
        corrupt = corrupt.len(),
        "corruption check done"
    );
    Ok(corrupt)
}

/// Member `id`'s HashKV at `rev`, or None (unreachable, behind, too slow).
async fn ask(backend: &Backend, id: u64, rev: i64) -> Option<(u64, HashKvResponse)> {
    let mut peer = backend.peer_of(id, ASK_TIMEOUT).await.ok()?;
    match peer.hash_kv(HashKvRequest { revision: rev }).await {
        Ok(r) => Some((id, r.into_inner())),
        Err(s) => {
            tracing::debug!(member = format!("{id:x}"), error = %s.message(), "no hash from member");
            None
        }
    }
}
