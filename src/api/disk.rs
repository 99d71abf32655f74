//! The disk-space check (`--disk-reserve-bytes`): every second, statvfs of
//! the data dir on a blocking-pool thread (never the Raft thread), and when
//! the free space is below the reserve this member raises NOSPACE through
//! Raft, as a store past its quota does. Writes then stop everywhere with
//! etcd's `database space exceeded` while the disk still has room for what
//! is in flight (the WAL, the engine, a snapshot), instead of the member
//! hitting ENOSPC, which stops it (see [`crate::fatal`]).
//!
//! It never disarms: as with the quota, the operator frees space and runs
//! `etcdctl alarm disarm`; if space is still short, the next check raises
//! the alarm again.

use std::path::PathBuf;
use std::time::Duration;

use super::Backend;

/// How often the free space is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs the check until the member stops (the task dies with its System).
pub async fn run(backend: Backend, dir: PathBuf, reserve: u64) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = dir.clone();
        let free =
            match tokio::task::spawn_blocking(move || crate::storage::dirs::free_space(&d)).await {
                Ok(Ok(free)) => free,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "free space unknown");
                    continue;
                }
                Err(_) => continue,
            };
        if below_reserve(free, reserve) && !backend.nospace_raised_by_me() {
            tracing::warn!(free, reserve, "data dir filesystem below its reserve");
            backend.raise_nospace();
        }
    }
}

/// Whether `free` bytes are short of the `reserve` (0: never).
fn below_reserve(free: u64, reserve: u64) -> bool {
    reserve > 0 && free < reserve
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_set_reserve_above_the_free_space_trips() {
        assert!(below_reserve(10, 11));
        assert!(!below_reserve(11, 11));
        assert!(!below_reserve(0, 0), "0 turns the check off");
    }
}
