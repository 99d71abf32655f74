//! Test-only: the largest single allocation a thread makes while probed, so
//! the decoders of untrusted bytes (WAL records, images, bbolt files, peer
//! messages, the `:authority` rewriter) can be held to allocations that
//! their input backs, never one sized by a length the input merely claims.
//!
//! The test binary's global allocator is the system's, wrapped to note
//! allocation sizes on the threads that asked for it (other tests' threads
//! are not probed; a thread-local flag, no locks).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Probe;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// notes touch only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Probe = Probe;

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|m| m.set(0));
    ON.with(|on| on.set(true));
    let out = f();
    ON.with(|on| on.set(false));
    (out, LARGEST.with(Cell::get))
}

/// What a probed decoder may allocate at once for an input of `len` bytes:
/// a few times the input, plus 1 MiB of fixed buffers.
pub fn bound(len: usize) -> usize {
    4 * len + (1 << 20)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_probe_sees_an_allocation_on_its_thread_only() {
        let (v, largest) = super::largest_allocation(|| vec![0u8; 3 << 20]);
        assert_eq!(v.len(), 3 << 20);
        assert!(largest >= 3 << 20, "{largest}");
        let (_, small) = super::largest_allocation(|| vec![0u8; 10]);
        assert!(small < 1024, "{small}");
    }
}
