//! The lease table as the replicated state keeps it: every lease's granted
//! TTL and its last checkpointed remaining TTL. Stored with the applied
//! point (the rocksdb engine writes it as one meta record whenever it
//! changed) and carried in every image. Which keys a lease holds is not
//! stored: it follows from the keys themselves (their `lease` field).

use std::collections::BTreeMap;

use prost::Message as _;

use crate::proto::metastorepb;

/// One lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// TTL left when the leader last checkpointed it (0: none).
    pub remaining: i64,
}

/// Every lease, with a version that moves on every change (so an engine
/// writes the table only when it changed, without comparing it). Two
/// tables are equal when they hold the same leases, whatever their versions.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, LeaseEntry>,
    version: u64,
}

impl LeaseTable {
    /// The lease `id`.
    pub fn get(&self, id: i64) -> Option<&LeaseEntry> {
        self.leases.get(&id)
    }

    /// Whether lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Adds (or replaces) a lease.
    pub fn insert(&mut self, id: i64, entry: LeaseEntry) {
        self.leases.insert(id, entry);
        self.version += 1;
    }

    /// Removes a lease; whether it existed.
    pub fn remove(&mut self, id: i64) -> bool {
        let had = self.leases.remove(&id).is_some();
        self.version += u64::from(had);
        had
    }

    /// Records a checkpointed remaining TTL; false if the lease is gone.
    pub fn checkpoint(&mut self, id: i64, remaining: i64) -> bool {
        match self.leases.get_mut(&id) {
            Some(e) if e.remaining != remaining => {
                e.remaining = remaining;
                self.version += 1;
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Every lease, by id.
    pub fn iter(&self) -> impl Iterator<Item = (i64, LeaseEntry)> + '_ {
        self.leases.iter().map(|(id, e)| (*id, *e))
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// No lease.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Moves on with every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// As stored and carried in images.
    pub fn to_pb(&self) -> metastorepb::Leases {
        metastorepb::Leases {
            leases: self
                .leases
                .iter()
                .map(|(id, e)| metastorepb::Lease {
                    id: *id,
                    ttl: e.ttl,
                    remaining_ttl: e.remaining,
                })
                .collect(),
        }
    }

    /// Encoded as stored.
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    /// From the stored form.
    pub fn from_pb(pb: &metastorepb::Leases) -> LeaseTable {
        LeaseTable {
            leases: pb
                .leases
                .iter()
                .map(|l| {
                    (
                        l.id,
                        LeaseEntry {
                            ttl: l.ttl,
                            remaining: l.remaining_ttl,
                        },
                    )
                })
                .collect(),
            version: 0,
        }
    }

    /// Decodes the stored form.
    pub fn decode(bytes: &[u8]) -> Result<LeaseTable, prost::DecodeError> {
        metastorepb::Leases::decode(bytes).map(|pb| LeaseTable::from_pb(&pb))
    }
}

impl PartialEq for LeaseTable {
    fn eq(&self, other: &LeaseTable) -> bool {
        self.leases == other.leases
    }
}

impl Eq for LeaseTable {}
