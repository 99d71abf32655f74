//! The replicated state machine: etcd's KV semantics (Range, Put, DeleteRange,
//! Txn, Compact) executed on the MVCC store.
//!
//! Owned by the ApplyActor alone. Every write arrives as a committed Raft entry
//! and is applied exactly once, in log order; a write that fails a check (lease
//! not found, key not found for ignore_value) changes nothing and consumes no
//! revision, as in etcd. Reads run against the same store (serializable reads
//! at once, linearizable reads once the applied index reached their read index).
//!
//! It also holds the member registry ([`membership`]): changed only by
//! applied entries, stored with the applied point, carried in images.

pub mod auth;
pub mod kv;
pub mod lease;
pub mod membership;

use std::path::Path;
use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType};

use crate::error::ApiError;
use crate::proto::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionResponse,
    DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, Member, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::metastorepb::{internal_request, ConfChangeContext, InternalRequest};
use crate::storage::engine::{AppliedPoint, Checkpoint, KvEngine, KvTxn, StateEngine};
use crate::storage::image::{ImageHeader, ImageJob};
use crate::storage::leases::{LeaseEntry, LeaseTable};
use crate::storage::{on_store, StorageError, Store};
use crate::storage::{Event, MvccError};
use auth::{Access, AuthListing, AuthRead, AuthStore, Caller};
use kv::sliced::{SlicedRange, Slices};
use lease::{LeaseChange, LeaseIndex};
use membership::Membership;

/// The answer to a write, before the API layer fills the header's ids and term.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResponse {
    /// Put.
    Put(PutResponse),
    /// DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// Txn.
    Txn(TxnResponse),
    /// Compact.
    Compact(CompactionResponse),
    /// A membership change or publish: the members afterwards.
    Members(Vec<Member>),
    /// LeaseGrant.
    LeaseGrant(LeaseGrantResponse),
    /// LeaseRevoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// A lease checkpoint was recorded.
    LeaseCheckpoint,
    /// Alarm activate / deactivate.
    Alarm(AlarmResponse),
    /// An auth change was applied at this (key-value) revision.
    Auth(i64),
}

/// A read request (Range, or a Txn without writes).
#[derive(Debug, Clone, PartialEq)]
pub enum ReadRequest {
    /// Range.
    Range(RangeRequest),
    /// Range answered as the wire's bytes (a gRPC Range; see
    /// [`kv::sliced`]).
    RangeWire(RangeRequest),
    /// A read-only Txn.
    Txn(TxnRequest),
    /// A read of the auth store.
    Auth(AuthRead),
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadResponse {
    /// Range.
    Range(RangeResponse),
    /// Range as the wire's bytes.
    RangeWire(kv::sliced::WireRange),
    /// Txn.
    Txn(TxnResponse),
    /// An auth read, at this (key-value) revision.
    Auth(AuthListing, i64),
}

/// What applying one entry produced.
#[derive(Debug)]
pub struct Applied {
    /// The request id the proposer waits on (0 for entries nobody waits on).
    pub id: u64,
    /// The answer.
    pub result: Result<WriteResponse, ApiError>,
    /// A membership change took effect: Raft must apply it too.
    pub conf_change: Option<ConfChangeV2>,
    /// The member registry changed.
    pub members_changed: bool,
    /// A Compact with `physical`: answered once its removal is through.
    pub physical: bool,
}

fn keep_events(watched: bool, into: &mut Vec<Event>, events: Vec<Event>) {
    if watched {
        if into.is_empty() {
            *into = events;
        } else {
            into.extend(events);
        }
    }
}

/// A state replaced by an image, ready to swap in (see
/// [`StateMachine::install_job`]).
pub struct Installed {
    header: ImageHeader,
    store: Store,
    lease_index: LeaseIndex,
}

/// An install of an image, run on a worker.
pub type InstallTask = Box<dyn FnOnce() -> Result<Installed, StorageError> + Send>;

/// etcd's KV state machine and the member registry over the engine's store.
#[derive(Debug)]
pub struct StateMachine {
    store: Store,
    point: AppliedPoint,
    members: Membership,
    /// Someone watches: applied writes leave their events in `events`.
    watched: bool,
    events: Vec<Event>,
    /// Which keys each lease holds.
    lease_index: LeaseIndex,
    /// What applying changed about leases, for the Lessor.
    lease_changes: Vec<LeaseChange>,
    /// The auth store (shared with the API once published; a change
    /// copies it).
    auth: Arc<AuthStore>,
}

impl StateMachine {
    /// A state machine over `store` whose applied point is `point`.
    pub fn new(store: Store, point: AppliedPoint) -> StateMachine {
        let mut store = store;
        // Until someone watches, writes build no events (each would copy
        // the written value).
        on_store!(&mut store, s => s.set_watched(false));
        let members = Membership::from_pb(point.membership.clone());
        let lease_index = on_store!(&store, s => LeaseIndex::rebuild(s));
        let auth = Arc::new(AuthStore::from_pb(&point.auth));
        StateMachine {
            auth,
            store,
            point,
            members,
            watched: false,
            events: Vec::new(),
            lease_index,
            lease_changes: Vec::new(),
        }
    }

    /// Every lease as of the applied index.
    pub fn leases(&self) -> &LeaseTable {
        &self.point.leases
    }

    /// The auth store as of the applied index.
    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.auth
    }

    /// The keys lease `id` holds, in order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.lease_index.keys_of(id)
    }

    /// What applying changed about leases since the last call.
    pub fn take_lease_changes(&mut self) -> Vec<LeaseChange> {
        std::mem::take(&mut self.lease_changes)
    }

    /// Turns event collection on (someone watches) or off.
    pub fn set_watched(&mut self, on: bool) {
        if on != self.watched {
            self.watched = on;
            on_store!(&mut self.store, s => s.set_watched(on));
        }
    }

    /// The events of the writes applied since the last call, in order
    /// (none unless watched).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// etcd's compacted revision (-1 before the first compaction).
    pub fn compact_revision(&self) -> i64 {
        on_store!(&self.store, s => s.compact_main_revision())
    }

    /// The MVCC store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Main revision of the last change.
    pub fn current_revision(&self) -> i64 {
        on_store!(&self.store, s => s.current_revision())
    }

    /// Number of live keys.
    pub fn key_count(&self) -> usize {
        on_store!(&self.store, s => KvEngine::key_count(s))
    }

    /// Rough size of the state in bytes.
    pub fn approximate_size_bytes(&self) -> u64 {
        on_store!(&self.store, s => KvEngine::approximate_size_bytes(s))
    }

    /// Ends a batch of applied entries (see [`StateEngine::commit`]).
    pub fn commit(&mut self) -> Result<(), StorageError> {
        on_store!(&mut self.store, s => StateEngine::commit(s, &self.point))
    }

    /// Starts an image of the applied state (see [`ImageJob`]); the memory
    /// engine's needs [`StateMachine::idle_step`] until it returns false.
    pub fn take_image(&mut self, tmp_dir: &Path) -> Result<ImageJob, StorageError> {
        on_store!(&mut self.store, s => s.image(&self.point, tmp_dir))
    }

    /// Whether whole-state work waits for [`StateMachine::idle_step`].
    pub fn has_idle_work(&self) -> bool {
        on_store!(&self.store, s => s.has_idle_work())
    }

    /// Whether a compaction's removal is under way (see
    /// [`StateEngine::compaction_pending`]).
    pub fn compaction_pending(&self) -> bool {
        on_store!(&self.store, s => s.compaction_pending())
    }

    /// Whether an image must wait for a compaction's removal (see
    /// [`StateEngine::image_waits`]).
    pub fn image_waits(&self) -> bool {
        on_store!(&self.store, s => s.image_waits())
    }

    /// How long to rest before the next idle step (see
    /// [`StateEngine::idle_rest`]).
    pub fn idle_rest(&self) -> Option<std::time::Duration> {
        on_store!(&self.store, s => s.idle_rest())
    }

    /// Moves whole-state work on by one slice (see
    /// [`StateEngine::idle_step`]); false once none is left.
    pub fn idle_step(&mut self) -> bool {
        on_store!(&mut self.store, s => s.idle_step())
    }

    /// What a periodic snapshot at the applied point takes.
    pub fn checkpoint(&mut self, data_dir: &Path) -> Checkpoint {
        on_store!(&mut self.store, s => s.checkpoint(&self.point, data_dir))
    }

    /// Replacing the whole state with a snapshot from the leader (the
    /// checked image file at `path`), as a job for a worker (see
    /// [`StateEngine::install_job`]); its result goes to
    /// [`StateMachine::finish_install`]. Until then nothing may be applied.
    pub fn install_job(&self, path: &Path, data_dir: &Path) -> InstallTask {
        let job = self.store.install_job(path, data_dir);
        Box::new(move || {
            job().map(|(header, store)| Installed {
                header,
                lease_index: on_store!(&store, e => LeaseIndex::rebuild(e)),
                store,
            })
        })
    }

    /// Swaps in the state an install job produced; returns its header.
    pub fn finish_install(&mut self, installed: Installed) -> ImageHeader {
        let Installed {
            header: h,
            store,
            lease_index,
        } = installed;
        self.store = store;
        let watched = self.watched;
        on_store!(&mut self.store, s => s.set_watched(watched));
        self.point = AppliedPoint {
            index: h.index,
            term: h.term,
            conf_state: h.conf_state.clone(),
            membership: h.membership.clone(),
            leases: h.leases.clone(),
            auth: h.auth.clone(),
        };
        self.auth = Arc::new(AuthStore::from_pb(&h.auth));
        self.members = Membership::from_pb(h.membership.clone());
        self.lease_index = lease_index;
        self.lease_changes.clear();
        h
    }

    /// What Maintenance.Defragment runs off the apply thread, if anything.
    pub fn defragment_job(&self) -> Option<Box<dyn FnOnce() + Send>> {
        on_store!(&self.store, s => StateEngine::defragment_job(s))
    }

    /// Test-only fault injection: puts `key` at the next revision without a
    /// log entry, so this member's history differs from its peers'.
    pub fn fault_put(&mut self, key: &[u8], value: Vec<u8>) {
        on_store!(&mut self.store, s => {
            let mut t = s.write();
            t.put_blind(key, value.into(), 0);
            let _ = t.end();
        });
    }

    /// A defragmentation finished: measure the store again.
    pub fn forget_size(&self) {
        on_store!(&self.store, s => StateEngine::forget_size(s))
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.point.index
    }

    /// Term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.point.term
    }

    /// Raft membership as of the applied index.
    pub fn conf_state(&self) -> &ConfState {
        &self.point.conf_state
    }

    /// The member registry as of the applied index.
    pub fn membership(&self) -> &Membership {
        &self.members
    }

    /// A joining member's view of the cluster before the leader's first
    /// snapshot arrives (which brings the replicated registry).
    pub fn seed_membership(&mut self, members: Membership) {
        self.set_members(members);
    }

    fn set_members(&mut self, members: Membership) {
        self.point.membership = members.to_pb();
        self.members = members;
    }

    /// Applies one committed entry. A new leader's empty entry only advances
    /// the applied index.
    pub fn apply(&mut self, entry: &Entry) -> Option<Applied> {
        if entry.index <= self.point.index {
            // Already in the snapshot we restored from: never apply twice.
            return None;
        }
        self.point.index = entry.index;
        self.point.term = entry.term;
        if entry.data.is_empty() {
            return None;
        }
        match entry.get_entry_type() {
            EntryType::EntryNormal => self.apply_request(entry.index, &entry.data),
            EntryType::EntryConfChangeV2 => self.apply_conf_change(entry.index, &entry.data),
            // MetaStore proposes ConfChangeV2 only.
            EntryType::EntryConfChange => None,
        }
    }

    fn apply_request(&mut self, index: u64, data: &[u8]) -> Option<Applied> {
        let req = match InternalRequest::decode(data) {
            Ok(r) => r,
            Err(e) => {
                // Every replica decodes the same bytes the same way, so skipping
                // keeps them identical; the proposer validated before proposing.
                tracing::error!(index, error = %e, "undecodable entry skipped");
                return None;
            }
        };
        let mut members_changed = false;
        let caller = Caller::from_pb(req.caller.as_ref());
        let refused = self
            .capped(req.request.as_ref())
            .or_else(|| self.denied(&caller, req.request.as_ref()).err());
        if let Some(refused) = refused {
            return Some(Applied {
                id: req.id,
                result: Err(refused),
                conf_change: None,
                members_changed,
                physical: false,
            });
        }
        if let Some(r) = req.request.as_ref() {
            if let Some(changed) = self.apply_auth(&caller, r) {
                return Some(Applied {
                    id: req.id,
                    result: changed,
                    conf_change: None,
                    members_changed,
                    physical: false,
                });
            }
        }
        let physical = matches!(
            &req.request,
            Some(internal_request::Request::Compaction(c)) if c.physical
        );
        let result = match req.request {
            Some(internal_request::Request::Alarm(a)) => Ok(WriteResponse::Alarm(self.alarm(&a))),
            Some(internal_request::Request::Publish(p)) => {
                let mut members = self.members.clone();
                if members.publish(p.member_id, &p.name, &p.client_urls) {
                    members_changed = members != self.members;
                    self.set_members(members);
                }
                Ok(WriteResponse::Members(self.members.members()))
            }
            Some(internal_request::Request::UpdatePeerUrls(u)) => {
                let mut members = self.members.clone();
                members
                    .update_peer_urls(u.member_id, &u.peer_urls)
                    .map(|()| {
                        members_changed = true;
                        self.set_members(members);
                        WriteResponse::Members(self.members.members())
                    })
            }
            Some(internal_request::Request::LeaseGrant(g)) => {
                if self.point.leases.contains(g.id) {
                    Err(ApiError::LeaseExist)
                } else {
                    self.point.leases.insert(
                        g.id,
                        LeaseEntry {
                            ttl: g.ttl,
                            remaining: 0,
                        },
                    );
                    self.lease_changes.push(LeaseChange::Granted {
                        id: g.id,
                        ttl: g.ttl,
                    });
                    Ok(WriteResponse::LeaseGrant(LeaseGrantResponse {
                        header: kv::header(self.current_revision()),
                        id: g.id,
                        ttl: g.ttl,
                        error: String::new(),
                    }))
                }
            }
            Some(internal_request::Request::LeaseRevoke(r)) => self.revoke(r.id),
            Some(internal_request::Request::LeaseCheckpoint(c)) => {
                for cp in &c.checkpoints {
                    if self.point.leases.checkpoint(cp.id, cp.remaining_ttl) {
                        self.lease_changes.push(LeaseChange::Checkpointed {
                            id: cp.id,
                            remaining: cp.remaining_ttl,
                        });
                    }
                }
                Ok(WriteResponse::LeaseCheckpoint)
            }
            // The events the writes return are for watchers.
            request => on_store!(&mut self.store, store => match request {
                Some(internal_request::Request::Put(p)) => {
                    kv::put(store, &p, &self.point.leases).map(|(r, ev)| {
                        self.lease_index.put(&p);
                        keep_events(self.watched, &mut self.events, ev);
                        WriteResponse::Put(r)
                    })
                }
                Some(internal_request::Request::DeleteRange(d)) => {
                    let (r, ev) = kv::delete_range(store, &d);
                    if r.deleted > 0 {
                        self.lease_index.delete_range(&d);
                    }
                    keep_events(self.watched, &mut self.events, ev);
                    Ok(WriteResponse::DeleteRange(r))
                }
                Some(internal_request::Request::Txn(t)) => {
                    kv::txn(store, &t, &self.point.leases).map(|(r, ev)| {
                        self.lease_index.txn(&t, &r);
                        keep_events(self.watched, &mut self.events, ev);
                        WriteResponse::Txn(r)
                    })
                }
                Some(internal_request::Request::Compaction(c)) => {
                    kv::compact(store, &c).map(WriteResponse::Compact)
                }
                _ => Err(ApiError::Internal("empty request in log entry".into())),
            }),
        };
        Some(Applied {
            id: req.id,
            physical: physical && result.is_ok(),
            result,
            conf_change: None,
            members_changed,
        })
    }

    /// An auth change, if `r` is one: applied to a copy of the store when
    /// the API holds the current one.
    fn apply_auth(
        &mut self,
        caller: &Caller,
        r: &internal_request::Request,
    ) -> Option<Result<WriteResponse, ApiError>> {
        if !AuthStore::is_change(r) {
            return None;
        }
        // The API may hold the current store: change a copy (auth changes
        // are rare and the store small).
        let mut next = (*self.auth).clone();
        let result = next.apply(caller, r)?;
        Some(result.map(|()| {
            self.point.auth = next.to_pb();
            self.auth = Arc::new(next);
            WriteResponse::Auth(self.current_revision())
        }))
    }

    /// etcd's auth applier: may `caller` make this change? Checked against
    /// the auth store as of this entry.
    fn denied(
        &self,
        caller: &Caller,
        req: Option<&internal_request::Request>,
    ) -> Result<(), ApiError> {
        use internal_request::Request as R;
        let auth = &self.auth;
        if !auth.enabled() || *caller == Caller::System {
            return Ok(());
        }
        match req {
            Some(R::Put(p)) => {
                auth.check(caller, &p.key, &[], Access::Write)?;
                self.check_lease_keys(caller, p.lease)?;
                if p.prev_kv {
                    auth.check(caller, &p.key, &[], Access::Read)?;
                }
                Ok(())
            }
            Some(R::DeleteRange(d)) => {
                auth.check(caller, &d.key, &d.range_end, Access::Write)?;
                if d.prev_kv {
                    auth.check(caller, &d.key, &d.range_end, Access::Read)?;
                }
                Ok(())
            }
            Some(R::Txn(t)) => auth.check_txn(caller, t),
            Some(R::LeaseRevoke(r)) => self.check_lease_keys(caller, r.id),
            _ => Ok(()),
        }
    }

    /// etcd's `checkLeasePuts`: writing through lease `id` (revoking it,
    /// attaching a key) needs write permission on every key it holds.
    pub fn check_lease_keys(&self, caller: &Caller, id: i64) -> Result<(), ApiError> {
        if id == 0 || self.auth.check_admin(caller).is_ok() {
            return Ok(());
        }
        for key in self.lease_index.keys_of(id) {
            self.auth.check(caller, &key, &[], Access::Write)?;
        }
        Ok(())
    }

    /// What a raised alarm refuses, as etcd's capped and corrupt appliers
    /// do: with NOSPACE every write that may grow the store (puts, txns
    /// that put, lease grants); with CORRUPT every change to the keys.
    fn capped(&self, req: Option<&internal_request::Request>) -> Option<ApiError> {
        use internal_request::Request as R;
        let corrupt = self.members.has_alarm(AlarmType::Corrupt as i32);
        let nospace = self.members.has_alarm(AlarmType::Nospace as i32);
        if !corrupt && !nospace {
            return None;
        }
        match req? {
            R::Put(_) | R::DeleteRange(_) | R::Compaction(_) | R::LeaseGrant(_) if corrupt => {
                Some(ApiError::Corrupt)
            }
            R::Txn(t) if corrupt && !kv::txn_is_read_only(t) => Some(ApiError::Corrupt),
            R::Put(_) | R::LeaseGrant(_) => Some(ApiError::NoSpace),
            R::Txn(t) if kv::txn_has_put(t) => Some(ApiError::NoSpace),
            _ => None,
        }
    }

    /// Raises or clears an alarm; answers with the alarms that changed.
    fn alarm(&mut self, a: &AlarmRequest) -> AlarmResponse {
        let mut members = self.members.clone();
        let changed = match alarm_request::AlarmAction::try_from(a.action) {
            Ok(alarm_request::AlarmAction::Activate) if a.alarm != AlarmType::None as i32 => {
                members.raise_alarm(a.member_id, a.alarm)
            }
            Ok(alarm_request::AlarmAction::Deactivate) => members.clear_alarm(a.member_id, a.alarm),
            _ => false,
        };
        if changed {
            tracing::warn!(
                member = format!("{:x}", a.member_id),
                alarm = ?AlarmType::try_from(a.alarm).unwrap_or(AlarmType::None),
                action = ?alarm_request::AlarmAction::try_from(a.action).unwrap_or(alarm_request::AlarmAction::Get),
                "alarm changed"
            );
            self.set_members(members);
        }
        AlarmResponse {
            header: kv::header(self.current_revision()),
            alarms: if changed {
                vec![AlarmMember {
                    member_id: a.member_id,
                    alarm: a.alarm,
                }]
            } else {
                Vec::new()
            },
        }
    }

    /// LeaseRevoke (or an expiry the leader proposed): the lease's keys are
    /// deleted in one revision, as in etcd.
    fn revoke(&mut self, id: i64) -> Result<WriteResponse, ApiError> {
        if !self.point.leases.contains(id) {
            return Err(ApiError::LeaseNotFound);
        }
        let keys = self.lease_index.keys_of(id);
        let rev = if keys.is_empty() {
            self.current_revision()
        } else {
            let (rev, events) = on_store!(&mut self.store, store => {
                let mut t = store.write();
                for k in &keys {
                    t.delete_range(k, &[]);
                }
                t.end()
            });
            keep_events(self.watched, &mut self.events, events);
            rev
        };
        fail::fail_point!("lease::revoke");
        self.lease_index.forget(id);
        self.point.leases.remove(id);
        self.lease_changes.push(LeaseChange::Revoked { id });
        Ok(WriteResponse::LeaseRevoke(LeaseRevokeResponse {
            header: kv::header(rev),
        }))
    }

    /// A membership change: checked again against the registry (two racing
    /// changes may both have passed the proposer's check), then applied to
    /// the registry and the conf state; Raft applies it after.
    fn apply_conf_change(&mut self, index: u64, data: &[u8]) -> Option<Applied> {
        let cc = match crate::storage::raft_log::parse_bounded::<ConfChangeV2>(data) {
            Ok(cc) => cc,
            Err(e) => {
                tracing::error!(index, error = %e, "undecodable conf change skipped");
                return None;
            }
        };
        let ctx = ConfChangeContext::decode(cc.context.as_ref()).unwrap_or_default();
        let change = match membership::decode_change(&cc, &ctx) {
            Ok(c) => c,
            Err(why) => {
                tracing::error!(index, %why, "conf change skipped");
                return Some(Applied {
                    id: ctx.id,
                    result: Err(ApiError::Internal(why.to_string())),
                    conf_change: None,
                    members_changed: false,
                    physical: false,
                });
            }
        };
        let mut members = self.members.clone();
        match members.apply(&change, &self.point.conf_state) {
            Ok(cs) => {
                fail::fail_point!("membership::apply");
                tracing::info!(index, ?change, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                self.point.conf_state = cs;
                self.set_members(members);
                Some(Applied {
                    id: ctx.id,
                    result: Ok(WriteResponse::Members(self.members.members())),
                    conf_change: Some(cc),
                    members_changed: true,
                    physical: false,
                })
            }
            Err(e) => {
                tracing::warn!(index, ?change, error = %e, "conf change refused");
                Some(Applied {
                    id: ctx.id,
                    result: Err(e),
                    conf_change: None,
                    members_changed: false,
                    physical: false,
                })
            }
        }
    }

    /// Starts a Range answered as the wire's bytes, as `caller` may: its
    /// first slice is read now, the next ones by
    /// [`StateMachine::continue_range`] (as much as `slices` says each).
    pub fn start_range(
        &self,
        caller: &Caller,
        r: &RangeRequest,
        slices: Slices,
    ) -> Result<SlicedRange, ApiError> {
        self.auth
            .check(caller, &r.key, &r.range_end, Access::Read)?;
        on_store!(&self.store, store => SlicedRange::start(store, r, slices))
    }

    /// Reads the next slice of `range`.
    pub fn continue_range(&self, range: &mut SlicedRange) -> Result<(), ApiError> {
        on_store!(&self.store, store => range.step(store))
    }

    /// The revision `entry` compacts the store to, if it is a Compaction
    /// (looked at before it is applied).
    pub fn compaction_in(entry: &Entry) -> Option<i64> {
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            return None;
        }
        match InternalRequest::decode(&entry.data[..]).ok()?.request {
            Some(internal_request::Request::Compaction(c)) => Some(c.revision),
            _ => None,
        }
    }

    /// Serves a read against the applied state, as `caller` may.
    pub fn read(&mut self, caller: &Caller, req: &ReadRequest) -> Result<ReadResponse, ApiError> {
        let (auth, leases) = (&self.auth, &self.point.leases);
        on_store!(&mut self.store, store => match req {
            ReadRequest::Range(r) => {
                auth.check(caller, &r.key, &r.range_end, Access::Read)?;
                kv::range(store, r).map(ReadResponse::Range)
            }
            // (The ApplyActor reads these in slices; read whole here, one
            // slice of no size limit ends the range.)
            ReadRequest::RangeWire(r) => {
                auth.check(caller, &r.key, &r.range_end, Access::Read)?;
                let range = SlicedRange::start(store, r, Slices::keys(usize::MAX))?;
                debug_assert!(range.is_done());
                range.finish().map(ReadResponse::RangeWire)
            }
            ReadRequest::Txn(t) => {
                auth.check_txn(caller, t)?;
                kv::txn(store, t, leases).map(|(r, _)| ReadResponse::Txn(r))
            }
            ReadRequest::Auth(a) => auth
                .read(caller, a)
                .map(|l| ReadResponse::Auth(l, store.current_revision())),
        })
    }
}

impl crate::watch::HistorySource for StateMachine {
    fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        on_store!(&self.store, s => KvEngine::history(s, key, end, from, max))
    }
}
