//! MetaStore: a distributed metadata store that speaks the etcd v3 API.
//!
//! Rooms, imports flowing down only (a lower room never names a higher one):
//! - top floor: [`server`] (prepare, run) and [`bootstrap`] (who a new
//!   member is, discovery and join planning);
//! - [`api`]: gRPC/HTTP handlers, talking to the actors only;
//! - [`actors`]: RaftActor, WalWriter, ApplyActor, Lessor, Ticker, peers,
//!   client sessions, and the wiring of a member ([`actors::core`]);
//! - [`consensus`], [`state_machine`], [`watch`]: plain logic;
//! - [`storage`]: the shared vocabulary, the engine traits and the engines;
//! - ground floor, usable from every room: [`proto`], [`config`],
//!   [`error`], [`metrics`], [`status`], [`fatal`].

pub mod actors;
pub mod api;
pub mod bootstrap;
pub mod config;
pub mod consensus;
pub mod error;
pub mod fatal;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod state_machine;
pub mod status;
pub mod storage;
pub mod watch;
