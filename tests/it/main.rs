//! Integration tests: real daemons on loopback, real clients (the etcd-client
//! crate and etcdctl), and etcd 3.4 itself where its answers are the reference.

// A test crate: its helpers unwrap like its tests (a panic is the failure
// report), and its threads poll daemons in other processes (or on threads
// of their own), so a sleep here stalls no member's async work.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

/// Runs each named test body (`fn(Engine)`, async or not) once per storage
/// engine, as `name::memory` and `name::rocksdb`: one body, both engines.
macro_rules! engine_tests {
    (async: $($name:ident),* $(,)?) => {
        $(mod $name {
            use crate::harness::Engine;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(Engine::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rocksdb() {
                super::$name(Engine::Rocksdb).await
            }
        })*
    };
    (sync: $($name:ident),* $(,)?) => {
        $(mod $name {
            use crate::harness::Engine;
            #[test]
            fn memory() {
                super::$name(Engine::Memory)
            }
            #[test]
            fn rocksdb() {
                super::$name(Engine::Rocksdb)
            }
        })*
    };
}

mod apiserver;
mod auth;
pub(crate) mod cluster;
mod cluster_diff;
mod concurrency;
mod diff;
mod diskfaults;
mod durability;
mod errors;
pub(crate) mod etcdctl;
// Built with `--features failpoints` (scripts/test.sh does).
#[cfg(feature = "failpoints")]
mod failpoints;
mod flood;
mod gateway;
mod harness;
mod history;
mod inprocess;
mod keepalive;
mod kv;
mod lease;
pub(crate) mod lossy;
mod netfaults;
mod netproxy;
pub(crate) mod operability;
pub(crate) mod power;
mod smoke;
mod snapshot;
mod tls;
pub(crate) mod watch;
