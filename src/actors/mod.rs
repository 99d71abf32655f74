//! The actors and the messages between them (see ARCHITECTURE.md):
//! handlers → RaftActor (proposals, reads) → WalWriter (fsync) → RaftActor →
//! ApplyActor (apply, answer clients). Nothing on the write path is shared
//! behind a lock; batching comes from mailboxes filling while an actor is busy.
//!
//! [`core`] wires a member's actors together (`start_core`) and holds the
//! handles the API layer uses; every message between actors is in
//! [`messages`]. Client-session actors (a Watch stream, a LeaseKeepAlive
//! stream) are started one way: [`core::Core::start_session`], on the
//! client thread.

pub use self::core::{deliver, start_core, Core, CoreThreads, Recovered};

pub mod apply;
pub mod core;
pub mod images;
pub mod lessor;
pub mod messages;
pub mod peer;
pub mod propose;
pub mod raft;
pub mod ranges;
pub mod ticker;
pub mod wal;
pub mod watch;
