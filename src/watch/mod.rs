//! Watch: routing applied changes to the watchers of a member ([`hub`]).
//! The gRPC service is in `api::watch`, the per-stream session actor in
//! `actors::watch`.

pub mod hub;
pub mod wire;

pub use hub::{HistorySource, Hub, HubConfig, HubStats, Outbox, StreamId};
pub use wire::WatchOut;
