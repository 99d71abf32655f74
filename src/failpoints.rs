//! Failpoints on the write and recovery paths, for tests: with the
//! `failpoints` feature, `FAILPOINTS='name=action;...'` (the `fail` crate's
//! syntax: `panic`, `sleep(ms)`, `return(arg)`, counts as `20*off->panic`)
//! sets them at start-up. Without the feature they compile to nothing.
//!
//! Crash points use `fail::fail_point!(name)` where they stand. The names:
//! `wal::before_write`, `wal::before_fsync`, `wal::after_fsync`,
//! `wal::rotate`, `wal::purge`; `apply::before_entry`,
//! `apply::before_commit`, `apply::after_commit`; `snapshot::save`,
//! `snapshot::send`, `snapshot::receive`, `snapshot::before_install`,
//! `snapshot::after_install`; `engine::compact`, `engine::compact_files` (rocksdb), `engine::defrag`;
//! `lease::revoke`; `membership::apply`. Delays that must not block a
//! thread others share read a value instead: `apply::delay`,
//! `watch::send_delay`, `engine::removal_delay` (between the slices of
//! the memory engine's compaction removal) and `apply::range_slice_delay`
//! (between the slices of a gRPC Range) (`return(ms)`).

/// Sets the failpoints named in `FAILPOINTS`; kept for the process's life.
#[cfg(feature = "failpoints")]
pub fn setup() {
    let scenario = fail::FailScenario::setup();
    std::mem::forget(scenario);
}

/// Without the feature: nothing to set.
#[cfg(not(feature = "failpoints"))]
pub fn setup() {}

/// The milliseconds failpoint `name` is set to return (`return(ms)`), if it
/// is set and fires.
#[cfg(feature = "failpoints")]
pub fn delay(name: &str) -> Option<std::time::Duration> {
    let ms: u64 = fail::eval(name, |arg| arg.and_then(|a| a.parse().ok())).flatten()?;
    // Said once per name, so a test can tell the delay happened.
    static SAID: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
    let mut said = SAID.lock();
    if !said.iter().any(|n| n == name) {
        said.push(name.to_owned());
        tracing::warn!("failpoint {name} fired: {ms} ms");
    }
    Some(std::time::Duration::from_millis(ms))
}

/// Without the feature: never.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn delay(_: &str) -> Option<std::time::Duration> {
    None
}
