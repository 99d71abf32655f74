//! Recorded histories and two checkers over them (issue 16 item 4).
//!
//! Clients record every call they make (what they asked, when they asked,
//! when the answer came and what it was) and every watch response they get;
//! after the run two checkers judge the records:
//!
//! - [`lin`]: linearizability of puts, deletes, gets, ranges and txn
//!   compare-and-sets. It leans on etcd's revisions: every change has its
//!   own revision, so the order of the writes is known; the checker places
//!   every write at its revision, replays them into a model and checks each
//!   answer against the model at the answer's revision and against real
//!   time. A call whose answer never came (a timeout, a lost connection) may
//!   or may not have taken effect: it is placed where a read or a watch
//!   event shows it, and dropped if nothing does.
//! - [`watch`]: etcd's watch guarantees per watcher, against the committed
//!   history the first checker rebuilt: ordered, unique, atomic per
//!   revision, no gaps, prev_kv and IsCreate right, filters honoured,
//!   progress notifications only once everything before them was
//!   delivered, resumable from the last revision, compaction errors only
//!   for compacted revisions.
//!
//! [`runner`] makes histories from real clusters under faults (SIGKILL,
//! SIGSTOP, power cuts on lossyfs, network isolation), compacting every
//! 200 ms; `runs` holds the tests: the checkers catching planted faults, the
//! runs under faults, and the shapes of known etcd bugs.

pub(crate) mod lin;
pub(crate) mod runner;
mod runs;
pub(crate) mod watch;

use std::fmt;

/// A key's state as a read or an event shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: String,
    pub value: String,
    pub create: i64,
    pub modified: i64,
    pub version: i64,
}

/// What a client asked.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// A txn: if `key`'s mod_revision is `expect` (0: absent), put `value`
    /// at `key` and at `also` (if any); else nothing.
    Cas {
        key: String,
        expect: i64,
        value: String,
        also: Option<String>,
    },
    Get {
        key: String,
    },
    /// Every key that starts with `prefix`.
    Range {
        prefix: String,
    },
}

impl Op {
    /// The value a put or compare-and-set writes (unique in a history).
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Op::Put { value, .. } | Op::Cas { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Whether the call may change the store.
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. } | Op::Cas { .. })
    }
}

/// What the answer said.
#[derive(Clone, Debug)]
pub(crate) enum Ret {
    Put {
        rev: i64,
    },
    Delete {
        rev: i64,
        deleted: i64,
    },
    Cas {
        rev: i64,
        succeeded: bool,
    },
    Read {
        rev: i64,
        kvs: Vec<Kv>,
    },
    /// No answer (timeout, lost connection, error): may or may not have
    /// taken effect.
    Unknown,
}

/// One call: times in nanoseconds since the run's start.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub client: usize,
    pub op: Op,
    pub start: u64,
    pub end: u64,
    pub ret: Ret,
}

/// One broken guarantee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub kind: Kind,
    pub detail: String,
}

/// The kinds of violations the checkers report (the planted-fault tests
/// assert the kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Two different writes claim one revision (an acknowledged write lost
    /// and its revision reused, or an answer with a wrong revision).
    RevisionConflict,
    /// A value no put or txn wrote.
    UnknownValue,
    /// A revision no write accounts for.
    RevisionGap,
    /// A write or read that ignores one completed before it was invoked.
    Stale,
    /// An answer that shows a write invoked after the answer came.
    Future,
    /// A read whose contents differ from the model at its revision.
    ReadMismatch,
    /// A txn whose outcome disagrees with the model.
    TxnMismatch,
    /// A delete whose count disagrees with the model.
    DeleteMismatch,
    /// An event at or below a revision already delivered.
    OutOfOrder,
    /// A committed change the watcher should have got and did not.
    MissingEvent,
    /// An event that is not the committed change at its revision.
    WrongEvent,
    /// An event whose prev_kv is not the key's previous state.
    WrongPrevKv,
    /// An event whose IsCreate (create == mod revision) is wrong.
    WrongIsCreate,
    /// An event the watcher's filter or key range excludes.
    FilterIgnored,
    /// One revision's events split over responses.
    SplitRevision,
    /// A progress notification before everything up to it was delivered,
    /// or one lower than what the watcher already knew.
    BadProgress,
    /// A watch resumed somewhere else than after its last revision.
    BadResume,
    /// A compaction error for a revision that was not compacted.
    BadCompacted,
    /// The watcher never caught up with the final revision.
    NotCaughtUp,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

/// Collects violations, keeping the first few of each kind in full.
#[derive(Default)]
pub(crate) struct Violations {
    pub all: Vec<Violation>,
}

impl Violations {
    pub fn add(&mut self, kind: Kind, detail: String) {
        self.all.push(Violation { kind, detail });
    }

    /// Kinds found, sorted, without repeats.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut k: Vec<Kind> = self.all.iter().map(|v| v.kind).collect();
        k.sort();
        k.dedup();
        k
    }

    /// The first `n` violations, one per line.
    pub fn summary(&self, n: usize) -> String {
        let mut s: Vec<String> = self.all.iter().take(n).map(|v| v.to_string()).collect();
        if self.all.len() > n {
            s.push(format!("... and {} more", self.all.len() - n));
        }
        s.join("\n")
    }
}
