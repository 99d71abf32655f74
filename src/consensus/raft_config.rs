//! The glue to raft-rs: its configuration from ours, its logs into tracing.

use crate::config::RaftConfig;

/// A slog drain that forwards raft-rs's logs to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// Raft configuration from ours.
pub fn raft_config(r: &RaftConfig, id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: r.election_tick,
        heartbeat_tick: r.heartbeat_tick,
        applied,
        max_size_per_msg: r.max_size_per_msg,
        max_inflight_msgs: r.max_inflight_msgs,
        check_quorum: r.check_quorum,
        pre_vote: r.pre_vote,
        max_uncommitted_size: r.max_uncommitted_size,
        ..Default::default()
    }
}

/// raft-rs's logger, writing through tracing.
pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Fuse(TracingDrain), slog::o!())
}
