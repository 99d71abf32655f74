//! The actors and the messages between them (see ARCHITECTURE.md):
//! handlers → RaftActor (proposals, reads) → WalWriter (fsync) → RaftActor →
//! ApplyActor (apply, answer clients). Nothing on the write path is shared
//! behind a lock; batching comes from mailboxes filling while an actor is busy.

pub mod apply;
pub mod fatal;
pub mod lessor;
pub mod messages;
pub mod peer;
pub mod propose;
pub mod raft;
pub mod ticker;
pub mod wal;
pub mod watch;
