//! The one way a member stops on an error it cannot survive (a failed fsync,
//! a failed engine commit, a snapshot it cannot install).
//!
//! Going on after such an error would acknowledge writes the disk does not
//! hold, so the member stops, as etcd does. But one process may run several
//! members (the in-process tests do), so stopping means stopping THIS
//! member's actix System with [`FATAL_EXIT_CODE`], never the process: the
//! System's runner returns the code, `server::run_until` flushes what can be
//! flushed (the RocksDB engine's databases) and returns
//! [`MemberStopped`](crate::error::MemberStopped), and `main` exits with it.
//!
//! Invariants: the error is logged once (the first trip wins; later trips of
//! the same member are silent); a caller that trips it must itself stop
//! doing work (the WAL writer stops taking commands, the ApplyActor stops),
//! since the System stops asynchronously.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The exit code of a member stopped on a fatal error (as `process::exit(2)`
/// before this handle existed).
pub const FATAL_EXIT_CODE: i32 = 2;

/// A member's fatal-error switch; clones share it. Every actor of a member
/// reaches it through the member's [`NodeStatus`](crate::status::NodeStatus).
#[derive(Debug, Clone, Default)]
pub struct Fatal {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The member's System, set once it runs.
    system: OnceLock<actix::System>,
    /// Tripped already: log and stop once.
    tripped: AtomicBool,
}

impl Fatal {
    /// Binds the handle to the member's System (the first binding stays).
    pub fn arm(&self, system: actix::System) {
        let _ = self.inner.system.set(system);
    }

    /// Whether the member has hit a fatal error.
    pub fn tripped(&self) -> bool {
        self.inner.tripped.load(Ordering::Acquire)
    }

    /// Logs `error` (the first time) and stops this member's System with
    /// [`FATAL_EXIT_CODE`]. Returns at once: the caller must stop working.
    pub fn stop(&self, what: &str, error: &dyn std::fmt::Display) {
        if self.inner.tripped.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(error = %error, "{what}; stopping this member");
        // An unarmed handle (a member started without run_until) stops the
        // System of the thread it is called on, if there is one.
        let system = self
            .inner
            .system
            .get()
            .cloned()
            .or_else(actix::System::try_current);
        match system {
            Some(system) => system.stop_with_code(FATAL_EXIT_CODE),
            None => tracing::error!("no actix System to stop; the member's actors stop alone"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Systems on two threads, as two members in one process: tripping
    /// one stops it with the fatal code, the other keeps running.
    #[test]
    fn a_tripped_member_stops_alone_with_its_code() {
        let run = |trip: bool| {
            let (tx, rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let system = actix::System::new();
                let fatal = Fatal::default();
                system.block_on(async {
                    fatal.arm(actix::System::current());
                });
                tx.send((actix::System::current(), fatal.clone())).unwrap();
                if trip {
                    fatal.stop("test", &"boom");
                    fatal.stop("test again", &"boom");
                }
                system.run_with_code().unwrap()
            });
            (thread, rx.recv().unwrap())
        };
        let (tripped, _) = run(true);
        let (healthy, (healthy_system, healthy_fatal)) = run(false);
        assert_eq!(tripped.join().unwrap(), FATAL_EXIT_CODE);
        // The test's own thread, not async: give the healthy one a chance
        // to (wrongly) stop too.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!healthy.is_finished(), "the other member must keep running");
        assert!(!healthy_fatal.tripped());
        healthy_system.stop();
        assert_eq!(healthy.join().unwrap(), 0);
    }
}
