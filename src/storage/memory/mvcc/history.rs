//! One key's version history: lookups by revision and per-key compaction.

use bytes::Bytes;

use super::value::Value;
use super::KeyValue;
use crate::storage::Revision;

/// Bytes charged per stored version besides its value.
pub(super) const VERSION_OVERHEAD: u64 = std::mem::size_of::<Version>() as u64;

/// Bytes charged per key besides its bytes and versions: the map slot
/// (boxed key + history vec headers) plus a share of B-tree node slack.
pub(super) const KEY_OVERHEAD: u64 = 64;

/// One stored version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Version {
    /// Where this version was written.
    pub(super) rev: Revision,
    /// Main revision that started this version's generation (0 for tombstones).
    pub(super) create_revision: i64,
    /// Puts so far in the generation; 0 marks a tombstone, which saves a flag
    /// per version and matches etcd, where a deleted key has no version.
    pub(super) version: i64,
    /// Lease id (0 for none or tombstones).
    pub(super) lease: i64,
    /// Value bytes, shared (by reference count) with every response and
    /// watch event that carries them: a read copies them once, into the
    /// encoded message, rather than first into a response of its own.
    pub(super) value: Value,
}

impl Version {
    /// A deletion marker at `rev`.
    pub(super) fn tombstone(rev: Revision) -> Self {
        Version {
            rev,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: Value::default(),
        }
    }

    /// Whether this version records a deletion.
    pub(super) fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    /// The client-visible form of this version.
    pub(super) fn to_kv(&self, key: &[u8], with_value: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.rev.main,
            version: self.version,
            value: if with_value {
                self.value.to_bytes()
            } else {
                Bytes::new()
            },
            lease: self.lease,
        }
    }

    /// Bytes charged to this version in the size estimate.
    pub(super) fn size(&self) -> u64 {
        VERSION_OVERHEAD + self.value.len() as u64
    }
}

/// All retained versions of one key, ordered strictly by revision.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(super) struct KeyHistory {
    versions: Vec<Version>,
}

impl KeyHistory {
    /// A history holding just `first`.
    pub(super) fn with_first(first: Version) -> Self {
        // Most keys are written once between compactions: `vec![x]` allocates
        // exactly one slot, where pushing onto an empty Vec reserves four.
        KeyHistory {
            versions: vec![first],
        }
    }

    /// The retained versions, oldest first.
    pub(super) fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// Whether no version is retained.
    pub(super) fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Appends a version newer than all retained ones.
    pub(super) fn push(&mut self, v: Version) {
        debug_assert!(self.versions.last().is_none_or(|l| l.rev < v.rev));
        self.versions.push(v);
    }

    /// The newest version if the key is currently live.
    pub(super) fn latest_live(&self) -> Option<&Version> {
        self.versions.last().filter(|v| !v.is_tombstone())
    }

    /// The version visible at main revision `rev`, if the key was live then.
    pub(super) fn live_at(&self, rev: i64) -> Option<&Version> {
        let last = self.versions.last()?;
        // Reads at the current revision are the common case: skip the search.
        let v = if last.rev.main <= rev {
            last
        } else {
            let idx = self.versions.partition_point(|v| v.rev.main <= rev);
            self.versions.get(idx.checked_sub(1)?)?
        };
        (!v.is_tombstone()).then_some(v)
    }

    /// Where the versions a compaction at `rev` keeps begin, as etcd's
    /// `keyIndex.compact`: the newest version at or below `rev` stays unless
    /// it is a tombstone older than `rev`, plus everything newer (all of
    /// them gone: the key goes).
    pub(super) fn kept_from(&self, rev: i64) -> usize {
        let idx = self.versions.partition_point(|v| v.rev.main <= rev);
        if idx == 0 {
            return 0;
        }
        // A deletion at exactly the compaction revision stays until the
        // next compaction, so a watch from `rev` (still allowed) is sent it
        // (etcd#18089).
        let last = &self.versions[idx - 1];
        if last.is_tombstone() && last.rev.main < rev {
            idx
        } else {
            idx - 1
        }
    }

    /// The versions a compaction at `rev` keeps (see
    /// [`KeyHistory::kept_from`]), oldest first: what reads see while the
    /// removal of an earlier compaction has not reached this key.
    pub(super) fn kept(&self, rev: i64) -> &[Version] {
        &self.versions[self.kept_from(rev)..]
    }

    /// Drops versions no read at a revision `>= rev` can see (see
    /// [`KeyHistory::kept_from`]). Returns the bytes freed; `removed` (if
    /// given) collects the dropped revisions.
    pub(super) fn compact(&mut self, rev: i64, removed: Option<&mut Vec<Revision>>) -> u64 {
        let keep_from = self.kept_from(rev);
        if keep_from == 0 {
            return 0;
        }
        let freed = self.versions[..keep_from].iter().map(Version::size).sum();
        let dropped = self.versions.drain(..keep_from);
        match removed {
            Some(out) => out.extend(dropped.map(|v| v.rev)),
            None => drop(dropped),
        }
        // A hot key can pile up many versions between compactions; give the
        // memory back once most of it is gone.
        if self.versions.capacity() > 2 * self.versions.len() + 4 {
            self.versions.shrink_to_fit();
        }
        freed
    }

    /// Bytes charged to all retained versions (tests recount with it).
    #[cfg(test)]
    pub(super) fn size(&self) -> u64 {
        self.versions.iter().map(Version::size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, sub: i64, create: i64, version: i64, value: &[u8]) -> Version {
        Version {
            rev: Revision::new(main, sub),
            create_revision: create,
            version,
            lease: 0,
            value: Value::new(Bytes::copy_from_slice(value)),
        }
    }

    fn mains(h: &KeyHistory) -> Vec<(i64, bool)> {
        h.versions()
            .iter()
            .map(|v| (v.rev.main, v.is_tombstone()))
            .collect()
    }

    // put@2, put@4, del@6, put@8
    fn sample() -> KeyHistory {
        let mut h = KeyHistory::with_first(put(2, 0, 2, 1, b"a"));
        h.push(put(4, 0, 2, 2, b"b"));
        h.push(Version::tombstone(Revision::new(6, 0)));
        h.push(put(8, 1, 8, 1, b"c"));
        h
    }

    /// A million keys are a million versions at least: each word here is
    /// 8 MB there (the value is one word, see `value.rs`).
    #[test]
    fn a_version_is_six_words() {
        assert_eq!(std::mem::size_of::<Version>(), 48);
    }

    #[test]
    fn live_at_follows_history() {
        let h = sample();
        assert!(h.live_at(1).is_none());
        assert_eq!(&*h.live_at(2).unwrap().value, b"a");
        assert_eq!(&*h.live_at(3).unwrap().value, b"a");
        assert_eq!(&*h.live_at(5).unwrap().value, b"b");
        assert!(h.live_at(6).is_none());
        assert!(h.live_at(7).is_none());
        assert_eq!(&*h.live_at(8).unwrap().value, b"c");
        assert_eq!(&*h.live_at(100).unwrap().value, b"c");
        assert_eq!(&*h.latest_live().unwrap().value, b"c");
    }

    #[test]
    fn compact_keeps_newest_live_at_or_below() {
        let mut h = sample();
        assert_eq!(h.compact(1, None), 0);
        assert_eq!(h.versions().len(), 4);
        let mut h2 = h.clone();
        h2.compact(3, None);
        assert_eq!(
            mains(&h2),
            vec![(2, false), (4, false), (6, true), (8, false)]
        );
        h2.compact(5, None);
        assert_eq!(mains(&h2), vec![(4, false), (6, true), (8, false)]);
        // The tombstone at exactly the compaction revision stays (a watch
        // from 6 is sent the delete), and goes at the next compaction.
        let mut h3 = h.clone();
        h3.compact(6, None);
        assert_eq!(mains(&h3), vec![(6, true), (8, false)]);
        h3.compact(7, None);
        assert_eq!(mains(&h3), vec![(8, false)]);
        let mut h4 = h.clone();
        h4.compact(7, None);
        assert_eq!(mains(&h4), vec![(8, false)]);
        let before = h.size();
        let freed = h.compact(9, None);
        assert_eq!(mains(&h), vec![(8, false)]);
        assert_eq!(before - freed, h.size());
    }

    #[test]
    fn compact_removes_everything_when_latest_is_tombstone() {
        let mut h = KeyHistory::with_first(put(2, 0, 2, 1, b"a"));
        h.push(Version::tombstone(Revision::new(3, 0)));
        h.compact(3, None);
        assert_eq!(mains(&h), vec![(3, true)]);
        h.compact(4, None);
        assert!(h.is_empty());
    }
}
