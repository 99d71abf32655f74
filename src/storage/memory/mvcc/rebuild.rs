//! Rebuilding a store from its versions, one by one in revision order: what
//! reading a state image (see `storage::image`) or the rocksdb engine's
//! `kv` family amounts to. Every history is checked against the store's
//! invariants (see the module docs of `mvcc`), so a damaged image or
//! database is refused rather than served.

use super::history::{KeyHistory, Version};
use super::store::{key_size, MemStore};
use super::value::Value;
use super::{KeyValue, MvccError};
use crate::storage::Revision;

fn corrupt(what: &str) -> MvccError {
    MvccError::CorruptSnapshot(what.to_string())
}

/// Rebuilds a store from versions fed one by one in revision order (as an
/// engine that keeps every version under its revision reads them back),
/// checking every history: a store that rebuilds is as consistent as one
/// built by writes.
pub struct Rebuild {
    store: MemStore,
    last: Revision,
}

impl Rebuild {
    /// Starts an empty store; `keep_values` as in [`MemStore::index_only`].
    pub fn new(keep_values: bool) -> Rebuild {
        let mut store = MemStore::new();
        store.keep_values = keep_values;
        Rebuild {
            store,
            last: Revision::default(),
        }
    }

    /// Adds one stored version: `kv.version == 0` is a tombstone;
    /// `kv.mod_revision` with `sub` is where it was written. Revisions must
    /// strictly increase from call to call.
    pub fn push(&mut self, kv: KeyValue, sub: i64) -> Result<(), MvccError> {
        let rev = Revision::new(kv.mod_revision, sub);
        if rev <= self.last {
            return Err(corrupt("revisions not strictly ascending"));
        }
        self.last = rev;
        let v = if kv.version == 0 {
            Version::tombstone(rev)
        } else {
            Version {
                rev,
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                value: if self.store.keep_values {
                    Value::new(kv.value)
                } else {
                    Value::default()
                },
            }
        };
        let store = &mut self.store;
        match store.keys.get_mut(kv.key.as_slice()) {
            Some(h) => {
                check_version(&v, h.versions().last(), i64::MAX)?;
                let was_live = h.latest_live().is_some();
                store.size_bytes += v.size();
                let live = !v.is_tombstone();
                h.push(v);
                match (was_live, live) {
                    (false, true) => store.live_keys += 1,
                    (true, false) => store.live_keys -= 1,
                    _ => {}
                }
            }
            None => {
                check_version(&v, None, i64::MAX)?;
                store.size_bytes += key_size(&kv.key) + v.size();
                store.live_keys += usize::from(!v.is_tombstone());
                store
                    .keys
                    .insert(kv.key.into_boxed_slice(), KeyHistory::with_first(v));
            }
        }
        Ok(())
    }

    /// The store at `current_rev`, compacted at `compact_rev` (-1: never).
    pub fn finish(self, current_rev: i64, compact_rev: i64) -> Result<MemStore, MvccError> {
        self.finish_with(current_rev, compact_rev, false)
    }

    /// [`Rebuild::finish`] for versions read back while the removal of the
    /// compaction at `compact_rev` (or of several, each taking the last
    /// one's pass over) was under way: keys may hold history it (or an
    /// older compaction) still had to remove, so that is not checked; the
    /// store goes on with the removal ([`MemStore::removal_step`]).
    pub fn finish_mid_removal(
        self,
        current_rev: i64,
        compact_rev: i64,
    ) -> Result<MemStore, MvccError> {
        let mut store = self.finish_with(current_rev, compact_rev, true)?;
        store.removal = Some(super::store::Removal::new(compact_rev, None));
        Ok(store)
    }

    fn finish_with(
        self,
        current_rev: i64,
        compact_rev: i64,
        mid_removal: bool,
    ) -> Result<MemStore, MvccError> {
        let mut store = self.store;
        if current_rev < 1
            || compact_rev < -1
            || compact_rev > current_rev
            || self.last.main > current_rev
        {
            return Err(corrupt("revisions out of range"));
        }
        // Midway through a removal, keys may still hold what it drops.
        let older = |h: &KeyHistory| {
            let vs = h.versions();
            vs.get(1).is_some_and(|v| v.rev.main <= compact_rev)
                || (vs[0].is_tombstone() && vs[0].rev.main != compact_rev)
        };
        if !mid_removal && store.keys.values().any(older) {
            return Err(corrupt("history older than the compacted revision"));
        }
        store.current_rev = current_rev;
        store.compact_rev = compact_rev;
        Ok(store)
    }
}

/// Checks `v` against the version before it in the same key's history.
fn check_version(v: &Version, prev: Option<&Version>, current_rev: i64) -> Result<(), MvccError> {
    // The first write of any store is revision 2.
    if v.rev.main < 2 || v.rev.main > current_rev || v.rev.sub < 0 {
        return Err(corrupt("revision out of range"));
    }
    if prev.is_some_and(|p| p.rev >= v.rev) {
        return Err(corrupt("versions not strictly ascending"));
    }
    let ok = if v.is_tombstone() {
        // A first retained tombstone is checked against the compacted
        // revision when the store is finished.
        prev.is_none_or(|p| !p.is_tombstone())
    } else {
        match prev {
            Some(p) if !p.is_tombstone() => {
                v.version == p.version.wrapping_add(1) && v.create_revision == p.create_revision
            }
            Some(_) => v.version == 1 && v.create_revision == v.rev.main,
            // The first retained version may be mid-generation after compaction.
            None => {
                v.version > 0
                    && v.create_revision >= 2
                    && v.create_revision <= v.rev.main
                    && (v.version > 1 || v.create_revision == v.rev.main)
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(corrupt("inconsistent version history"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &[u8], main: i64, create: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: main,
            version,
            value: b"v".to_vec().into(),
            lease: 0,
        }
    }

    #[test]
    fn a_history_that_forgot_a_version_is_refused() {
        let mut r = Rebuild::new(true);
        r.push(kv(b"k", 2, 2, 1), 0).unwrap();
        // The second put of a generation must be version 2.
        assert!(matches!(
            r.push(kv(b"k", 3, 2, 1), 0),
            Err(MvccError::CorruptSnapshot(_))
        ));
    }

    #[test]
    fn revisions_must_ascend_and_stay_below_the_head() {
        let mut r = Rebuild::new(true);
        r.push(kv(b"a", 3, 3, 1), 0).unwrap();
        assert!(r.push(kv(b"b", 2, 2, 1), 0).is_err());
        let mut r = Rebuild::new(true);
        r.push(kv(b"a", 5, 5, 1), 0).unwrap();
        assert!(
            r.finish(4, -1).is_err(),
            "a version after the current revision"
        );
    }

    #[test]
    fn history_older_than_the_compaction_is_refused() {
        let mut r = Rebuild::new(true);
        r.push(kv(b"a", 2, 2, 1), 0).unwrap();
        r.push(kv(b"a", 3, 2, 2), 0).unwrap();
        // Compacted at 3: the version at 2 should be gone.
        assert!(r.finish(3, 3).is_err());
    }
}
