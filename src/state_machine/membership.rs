//! The membership registry: who is in the cluster (names, peer and client
//! URLs, learner or voter) and who was removed for good. It is replicated
//! state: changed only by applied log entries (ConfChangeV2 entries for
//! add / remove / promote, normal entries for publish and peer-URL updates),
//! carried in every image and snapshot, restored on restart.
//!
//! Checks follow etcd's `ValidateConfigurationChange`: they run once before
//! proposing (so a client gets the error at once) and again when the entry
//! is applied (two racing changes may both pass the first check; only one
//! can pass the second, and every member decides the same way).
//!
//! IDs: member and cluster IDs derive from the initial cluster and the
//! token (every initial member computes the same ones); a member added at
//! run time gets one from its URLs and the time.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use crate::error::ApiError;
use crate::proto::etcdserverpb::Member;
use crate::proto::metastorepb;

/// etcd's limit on learners in a cluster.
pub const MAX_LEARNERS: usize = 1;

/// The registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    /// Cluster ID (fixed when the cluster is bootstrapped).
    pub cluster_id: u64,
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
    /// Raised alarms: (member, `AlarmType` value).
    alarms: BTreeSet<(u64, i32)>,
}

/// A membership change, as a client asks for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new member (voter or learner).
    Add(Member),
    /// Remove a member.
    Remove(u64),
    /// Promote a learner to voter.
    Promote(u64),
}

impl Change {
    /// The Raft conf change for it.
    pub fn conf_change(&self) -> ConfChangeSingle {
        let (change_type, node_id) = match self {
            Change::Add(m) if m.is_learner => (ConfChangeType::AddLearnerNode, m.id),
            Change::Add(m) => (ConfChangeType::AddNode, m.id),
            Change::Remove(id) => (ConfChangeType::RemoveNode, *id),
            Change::Promote(id) => (ConfChangeType::AddNode, *id),
        };
        ConfChangeSingle {
            change_type,
            node_id,
            ..Default::default()
        }
    }
}

impl Membership {
    /// A registry holding `members`.
    pub fn new(cluster_id: u64, members: impl IntoIterator<Item = Member>) -> Membership {
        Membership {
            cluster_id,
            members: members.into_iter().map(|m| (m.id, m)).collect(),
            removed: BTreeSet::new(),
            alarms: BTreeSet::new(),
        }
    }

    /// From its wire form.
    pub fn from_pb(pb: metastorepb::Membership) -> Membership {
        Membership {
            cluster_id: pb.cluster_id,
            members: pb.members.into_iter().map(|m| (m.id, m)).collect(),
            removed: pb.removed.into_iter().collect(),
            alarms: pb.alarms.iter().map(|a| (a.member_id, a.alarm)).collect(),
        }
    }

    /// Its wire form.
    pub fn to_pb(&self) -> metastorepb::Membership {
        metastorepb::Membership {
            cluster_id: self.cluster_id,
            members: self.members(),
            removed: self.removed.iter().copied().collect(),
            alarms: self
                .alarms
                .iter()
                .map(|&(member_id, alarm)| metastorepb::MemberAlarm { member_id, alarm })
                .collect(),
        }
    }

    /// Raised alarms as (member, `AlarmType` value).
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.alarms.iter().copied().collect()
    }

    /// Whether some member raised `alarm`.
    pub fn has_alarm(&self, alarm: i32) -> bool {
        self.alarms.iter().any(|&(_, a)| a == alarm)
    }

    /// Raises `alarm` for `member`; false when it was raised already.
    pub fn raise_alarm(&mut self, member: u64, alarm: i32) -> bool {
        self.alarms.insert((member, alarm))
    }

    /// Clears `alarm` of `member`; false when it was not raised.
    pub fn clear_alarm(&mut self, member: u64, alarm: i32) -> bool {
        self.alarms.remove(&(member, alarm))
    }

    /// Every member, by ID.
    pub fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// One member.
    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Whether `id` was removed for good.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// Members removed for good.
    pub fn removed(&self) -> impl Iterator<Item = u64> + '_ {
        self.removed.iter().copied()
    }

    /// Whether the registry holds no member (a member that is joining and
    /// has not received its first snapshot yet).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Voting members.
    pub fn voters(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.is_learner)
    }

    /// The ConfState this registry stands for.
    pub fn conf_state(&self) -> ConfState {
        let mut cs = ConfState::default();
        for m in self.members.values() {
            if m.is_learner {
                cs.learners.push(m.id);
            } else {
                cs.voters.push(m.id);
            }
        }
        cs
    }

    /// Whether the member has published its attributes (etcd calls the
    /// others "unstarted").
    pub fn is_started(m: &Member) -> bool {
        !m.name.is_empty()
    }

    /// etcd's `ValidateConfigurationChange` for `change`.
    pub fn check(&self, change: &Change) -> Result<(), ApiError> {
        let id = match change {
            Change::Add(m) => m.id,
            Change::Remove(id) | Change::Promote(id) => *id,
        };
        if self.removed.contains(&id) {
            // etcd's ErrIDRemoved reaches clients as "member not found".
            return Err(ApiError::MemberNotFound);
        }
        match change {
            Change::Add(m) => {
                if self.members.contains_key(&m.id) {
                    return Err(ApiError::MemberExist);
                }
                self.check_urls_free(m.id, &m.peer_ur_ls)?;
                let learners = self.members.values().filter(|m| m.is_learner).count();
                if m.is_learner && learners + 1 > MAX_LEARNERS {
                    return Err(ApiError::TooManyLearners);
                }
                Ok(())
            }
            Change::Remove(id) => {
                if !self.members.contains_key(id) {
                    return Err(ApiError::MemberNotFound);
                }
                Ok(())
            }
            Change::Promote(id) => match self.members.get(id) {
                None => Err(ApiError::MemberNotFound),
                Some(m) if !m.is_learner => Err(ApiError::MemberNotLearner),
                Some(_) => Ok(()),
            },
        }
    }

    /// No member other than `id` uses any of `urls`.
    pub fn check_urls_free(&self, id: u64, urls: &[String]) -> Result<(), ApiError> {
        let taken = self
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.peer_ur_ls.iter())
            .any(|u| urls.contains(u));
        if taken {
            Err(ApiError::PeerUrlExist)
        } else {
            Ok(())
        }
    }

    /// Applies a committed change: checks it again against the registry and
    /// the Raft configuration `cs`, and returns the new ConfState. On error
    /// nothing changed.
    pub fn apply(&mut self, change: &Change, cs: &ConfState) -> Result<ConfState, ApiError> {
        self.check(change)?;
        let next = next_conf_state(cs, &change.conf_change())
            .map_err(|e| ApiError::Internal(format!("conf change: {e}")))?;
        match change {
            Change::Add(m) => {
                self.members.insert(m.id, m.clone());
            }
            Change::Remove(id) => {
                self.members.remove(id);
                self.removed.insert(*id);
            }
            Change::Promote(id) => {
                if let Some(m) = self.members.get_mut(id) {
                    m.is_learner = false;
                }
            }
        }
        Ok(next)
    }

    /// A started member's name and client URLs. Unknown or removed IDs are
    /// ignored (the member was removed while its publish was in flight).
    pub fn publish(&mut self, id: u64, name: &str, client_urls: &[String]) -> bool {
        match self.members.get_mut(&id) {
            Some(m) => {
                m.name = name.to_owned();
                m.client_ur_ls = client_urls.to_vec();
                true
            }
            None => false,
        }
    }

    /// MemberUpdate: new peer URLs.
    pub fn update_peer_urls(&mut self, id: u64, urls: &[String]) -> Result<(), ApiError> {
        if self.removed.contains(&id) || !self.members.contains_key(&id) {
            return Err(ApiError::MemberNotFound);
        }
        self.check_urls_free(id, urls)?;
        if let Some(m) = self.members.get_mut(&id) {
            m.peer_ur_ls = urls.to_vec();
        }
        Ok(())
    }
}

/// Why a conf change cannot be applied as MetaStore makes them (one simple
/// change per entry, never a joint configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    /// More (or fewer) than one change in one entry.
    #[error("{0} changes in one entry; MetaStore makes one at a time")]
    NotOne(usize),
    /// An added member's entry without the member it adds.
    #[error("conf change for {0:x} without its member")]
    NoMember(u64),
    /// The configuration is joint.
    #[error("joint configurations are not used by MetaStore")]
    Joint,
    /// Raft's reserved id.
    #[error("node id 0")]
    ZeroId,
    /// Making a voter a learner (raft-rs needs a joint config for that).
    #[error("{0:x} is a voter; demotion is not supported")]
    Demotion(u64),
    /// The change leaves no voter.
    #[error("removed all voters")]
    NoVoters,
}

/// The membership change a ConfChangeV2 entry carries, with its context.
pub fn decode_change(
    cc: &ConfChangeV2,
    ctx: &metastorepb::ConfChangeContext,
) -> Result<Change, ConfChangeError> {
    let [single] = cc.changes.as_slice() else {
        return Err(ConfChangeError::NotOne(cc.changes.len()));
    };
    let id = single.node_id;
    let member = || {
        ctx.member
            .clone()
            .filter(|m| m.id == id)
            .ok_or(ConfChangeError::NoMember(id))
    };
    match single.get_change_type() {
        ConfChangeType::AddLearnerNode => Ok(Change::Add(member()?)),
        ConfChangeType::AddNode if ctx.member.is_some() => Ok(Change::Add(member()?)),
        ConfChangeType::AddNode => Ok(Change::Promote(id)),
        ConfChangeType::RemoveNode => Ok(Change::Remove(id)),
    }
}

/// The ConfState after one simple (non-joint) change, as raft-rs's
/// `apply_conf_change` computes it: the applier needs it to store with the
/// applied index, before the RaftActor applies the same change to Raft.
pub fn next_conf_state(
    cs: &ConfState,
    change: &ConfChangeSingle,
) -> Result<ConfState, ConfChangeError> {
    if !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() {
        return Err(ConfChangeError::Joint);
    }
    let id = change.node_id;
    if id == 0 {
        return Err(ConfChangeError::ZeroId);
    }
    let mut next = cs.clone();
    next.voters.retain(|&v| v != id);
    next.learners.retain(|&l| l != id);
    match change.get_change_type() {
        ConfChangeType::AddNode => next.voters.push(id),
        ConfChangeType::AddLearnerNode => {
            if cs.voters.contains(&id) {
                // raft-rs refuses to demote a voter outside a joint config.
                return Err(ConfChangeError::Demotion(id));
            }
            next.learners.push(id);
        }
        ConfChangeType::RemoveNode => {}
    }
    if next.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    next.voters.sort_unstable();
    next.learners.sort_unstable();
    Ok(next)
}

/// FNV-1a: a stable hash for IDs (std's hasher may change between releases).
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

/// Member ID from its peer URLs and the cluster token (as etcd derives it).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.push(token);
    fnv64(&urls)
}

/// ID of a member added at run time: its URLs and the time, so a member
/// re-added at the same URLs gets a new ID (removed IDs never come back).
pub fn new_member_id(peer_urls: &[String], nanos: u128) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let t = nanos.to_string();
    urls.push(&t);
    fnv64(&urls)
}

/// Cluster ID from the member IDs.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids: Vec<String> = member_ids.iter().map(|id| format!("{id:016x}")).collect();
    ids.sort_unstable();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    fnv64(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str, learner: bool) -> Member {
        Member {
            id,
            name: String::new(),
            peer_ur_ls: vec![url.into()],
            client_ur_ls: vec![],
            is_learner: learner,
        }
    }

    fn three() -> Membership {
        Membership::new(
            9,
            (1..=3).map(|i| member(i, &format!("http://127.0.0.1:{i}"), false)),
        )
    }

    #[test]
    fn etcd_checks_refuse_bad_changes_and_keep_the_registry() {
        let mut ms = three();
        let cs = ms.conf_state();
        let before = ms.clone();
        let dup = Change::Add(member(4, "http://127.0.0.1:2", false));
        assert_eq!(ms.apply(&dup, &cs), Err(ApiError::PeerUrlExist));
        assert_eq!(
            ms.apply(&Change::Add(member(2, "http://x:1", false)), &cs),
            Err(ApiError::MemberExist)
        );
        assert_eq!(
            ms.apply(&Change::Remove(7), &cs),
            Err(ApiError::MemberNotFound)
        );
        assert_eq!(
            ms.apply(&Change::Promote(2), &cs),
            Err(ApiError::MemberNotLearner)
        );
        assert_eq!(ms, before, "a refused change changes nothing");

        let cs = ms
            .apply(&Change::Add(member(5, "http://x:5", true)), &cs)
            .unwrap();
        assert_eq!(cs.learners, vec![5]);
        assert_eq!(
            ms.apply(&Change::Add(member(6, "http://x:6", true)), &cs),
            Err(ApiError::TooManyLearners)
        );
        let cs = ms.apply(&Change::Promote(5), &cs).unwrap();
        assert_eq!(cs.voters, vec![1, 2, 3, 5]);
        assert!(cs.learners.is_empty());
        let cs = ms.apply(&Change::Remove(2), &cs).unwrap();
        assert_eq!(cs.voters, vec![1, 3, 5]);
        assert!(ms.is_removed(2));
        assert_eq!(
            ms.apply(&Change::Add(member(2, "http://y:2", false)), &cs),
            Err(ApiError::MemberNotFound),
            "a removed ID never comes back"
        );
        assert_eq!(ms.conf_state(), cs, "registry and Raft agree");
    }

    #[test]
    fn the_last_voter_cannot_go() {
        let cs = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        let rm = Change::Remove(1).conf_change();
        assert_eq!(next_conf_state(&cs, &rm), Err(ConfChangeError::NoVoters));
    }

    #[test]
    fn registry_round_trips_through_its_wire_form() {
        let mut ms = three();
        ms.publish(1, "n1", &["http://127.0.0.1:2379".into()]);
        let cs = ms.conf_state();
        ms.apply(&Change::Remove(3), &cs).unwrap();
        assert_eq!(Membership::from_pb(ms.to_pb()), ms);
    }

    #[test]
    fn decode_tells_add_from_promote() {
        let single = |t, id| ConfChangeSingle {
            change_type: t,
            node_id: id,
            ..Default::default()
        };
        let cc = |s| ConfChangeV2 {
            changes: vec![s].into(),
            ..Default::default()
        };
        let with = metastorepb::ConfChangeContext {
            id: 1,
            member: Some(member(4, "http://x:4", false)),
        };
        let without = metastorepb::ConfChangeContext::default();
        assert!(matches!(
            decode_change(&cc(single(ConfChangeType::AddNode, 4)), &with),
            Ok(Change::Add(_))
        ));
        assert_eq!(
            decode_change(&cc(single(ConfChangeType::AddNode, 4)), &without),
            Ok(Change::Promote(4))
        );
        assert_eq!(
            decode_change(&cc(single(ConfChangeType::RemoveNode, 4)), &without),
            Ok(Change::Remove(4))
        );
        assert_eq!(
            decode_change(&cc(single(ConfChangeType::AddLearnerNode, 4)), &without),
            Err(ConfChangeError::NoMember(4))
        );
    }
}
