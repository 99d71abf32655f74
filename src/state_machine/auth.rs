//! etcd's auth store in the replicated state: users, roles, their key
//! permissions, whether auth is on, and the auth revision; and the checks
//! the applier runs for every client request, as etcd's auth applier does.
//!
//! Everything here runs where entries are applied (and linearizable auth
//! reads are served): a request is checked against the permissions as of
//! the entry that carries it, identically on every member. No password is
//! hashed here: the proposer hashed it (bcrypt is far too slow for the
//! apply thread), and Authenticate checks passwords on the API side.
//!
//! The API layer reads a published copy ([`AuthStore`] behind an `Arc`)
//! to validate tokens and to check what it serves itself (watch creation,
//! maintenance calls).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::ApiError;
use crate::proto::authpb::{permission, Permission, Role, User, UserAddOptions};
use crate::proto::etcdserverpb::{request_op, RequestOp, TxnRequest};
use crate::proto::metastorepb::{self, internal_request, AuthState, AuthUser};

/// The user with every right, who must exist (holding [`ROOT`] role)
/// before auth can be turned on.
pub const ROOT: &str = "root";

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A member's own proposal (lease expiry, alarms, publish): unchecked.
    System,
    /// A client; an empty name is a client without credentials.
    User(String),
}

impl Caller {
    /// A client that sent no credentials.
    pub fn anonymous() -> Caller {
        Caller::User(String::new())
    }

    /// The caller a log entry names (none: the member itself).
    pub fn from_pb(c: Option<&metastorepb::Caller>) -> Caller {
        match c {
            Some(c) => Caller::User(c.username.clone()),
            None => Caller::System,
        }
    }

    /// The caller as a log entry carries it.
    pub fn to_pb(&self) -> Option<metastorepb::Caller> {
        match self {
            Caller::System => None,
            Caller::User(name) => Some(metastorepb::Caller {
                username: name.clone(),
            }),
        }
    }

    /// The user's name, if a client.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::System => None,
            Caller::User(n) => Some(n),
        }
    }
}

/// What an operation needs on a key or range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Range, watch, compares, prev_kv.
    Read,
    /// Put, DeleteRange, lease revoke.
    Write,
}

/// A linearizable read of the auth store (served like a Range).
#[derive(Debug, Clone, PartialEq)]
pub enum AuthRead {
    /// AuthStatus.
    Status,
    /// UserGet.
    UserGet(String),
    /// UserList.
    UserList,
    /// RoleGet.
    RoleGet(String),
    /// RoleList.
    RoleList,
    /// What Authenticate checks a password against (never sent to clients).
    Credentials(String),
}

/// The answer to an [`AuthRead`].
#[derive(Debug, Clone, PartialEq)]
pub enum AuthListing {
    /// AuthStatus: on or off, and the auth revision.
    Status { enabled: bool, revision: u64 },
    /// User or role names, or a user's roles.
    Names(Vec<String>),
    /// A role's permissions.
    Permissions(Vec<Permission>),
    /// A user's password hash and the auth revision it was read at.
    Credentials(Credentials),
}

/// What Authenticate needs to check a password and issue a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    /// The user.
    pub name: String,
    /// The bcrypt hash etcd stores (`$2a$...`).
    pub hash: Vec<u8>,
    /// The auth revision the hash was read at.
    pub revision: u64,
}

/// Merged key intervals a user may read or write: sorted, disjoint, not
/// touching; `None` as an end means "to the end of the keyspace".
#[derive(Debug, Default, PartialEq)]
struct Intervals(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Intervals {
    fn build(mut raw: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Intervals {
        raw.sort();
        let mut out: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(raw.len());
        for (start, end) in raw {
            if let Some(last) = out.last_mut() {
                let touches = match &last.1 {
                    None => true,
                    Some(e) => start <= *e,
                };
                if touches {
                    last.1 = match (last.1.take(), end) {
                        (None, _) | (_, None) => None,
                        (Some(a), Some(b)) => Some(a.max(b)),
                    };
                    continue;
                }
            }
            out.push((start, end));
        }
        Intervals(out)
    }

    /// The interval that starts at or before `key`, if any.
    fn at(&self, key: &[u8]) -> Option<&(Vec<u8>, Option<Vec<u8>>)> {
        let i = self.0.partition_point(|(s, _)| s.as_slice() <= key);
        i.checked_sub(1).map(|i| &self.0[i])
    }

    /// Whether `[key, end)` (a single key when `end` is empty, to the end
    /// of the keyspace when it is `"\0"`) lies inside one permitted
    /// interval. An empty or inverted range is refused, as etcd's interval
    /// tree finds nothing that covers it.
    fn covers(&self, key: &[u8], end: &[u8]) -> bool {
        let Some((_, iend)) = self.at(key) else {
            return false;
        };
        match (end, iend) {
            (_, None) => true,
            ([], Some(e)) => key < e.as_slice(),
            ([0], Some(_)) => false,
            (end, Some(e)) => end > key && end <= e.as_slice(),
        }
    }
}

/// A user's permissions, merged over its roles.
#[derive(Debug, Default)]
struct Perms {
    read: Intervals,
    write: Intervals,
}

/// The interval a permission grants (etcd: an empty range end is the key
/// alone, `"\0"` is everything from the key on).
fn interval(p: &Permission) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    match p.range_end.as_slice() {
        [] => {
            let mut end = p.key.clone();
            end.push(0);
            Some((p.key.clone(), Some(end)))
        }
        [0] => Some((p.key.clone(), None)),
        end if end > p.key.as_slice() => Some((p.key.clone(), Some(end.to_vec()))),
        _ => None,
    }
}

/// etcd's auth store.
#[derive(Debug)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    enabled_revision: u64,
    users: BTreeMap<String, AuthUser>,
    roles: BTreeMap<String, Role>,
    /// Merged permissions per user, built on first use; emptied by every
    /// change.
    cache: parking_lot::Mutex<HashMap<String, Arc<Perms>>>,
}

impl Default for AuthStore {
    fn default() -> AuthStore {
        AuthStore::from_pb(&AuthState::default())
    }
}

impl Clone for AuthStore {
    fn clone(&self) -> AuthStore {
        AuthStore {
            enabled: self.enabled,
            revision: self.revision,
            enabled_revision: self.enabled_revision,
            users: self.users.clone(),
            roles: self.roles.clone(),
            cache: Default::default(),
        }
    }
}

impl PartialEq for AuthStore {
    fn eq(&self, other: &AuthStore) -> bool {
        self.to_pb() == other.to_pb()
    }
}

impl AuthStore {
    /// The store a persisted state describes (a fresh store at revision 1
    /// when there is none, as etcd starts).
    pub fn from_pb(pb: &AuthState) -> AuthStore {
        AuthStore {
            enabled: pb.enabled,
            revision: pb.revision.max(1),
            enabled_revision: pb.enabled_revision,
            users: pb
                .users
                .iter()
                .filter_map(|u| {
                    let user = u.user.as_ref()?;
                    Some((String::from_utf8_lossy(&user.name).into_owned(), u.clone()))
                })
                .collect(),
            roles: pb
                .roles
                .iter()
                .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r.clone()))
                .collect(),
            cache: Default::default(),
        }
    }

    /// The state to persist.
    pub fn to_pb(&self) -> AuthState {
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
            enabled_revision: self.enabled_revision,
        }
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: bumped by every change to users, roles and
    /// permissions, and by AuthDisable (not by AuthEnable), as etcd's.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether a token issued for `user` at auth revision `issued` is
    /// still good: auth is on, has not been turned off and on since, and
    /// the user exists with the credentials it had then.
    pub fn token_valid(&self, user: &str, issued: u64) -> bool {
        self.enabled
            && self.enabled_revision <= issued
            && self
                .users
                .get(user)
                .is_some_and(|u| u.credential_revision <= issued)
    }

    fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name).and_then(|u| u.user.as_ref())
    }

    fn has_role(&self, name: &str, role: &str) -> bool {
        self.user(name)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// etcd's `IsAdminPermitted`: the caller holds the root role (anyone,
    /// while auth is off).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), ApiError> {
        let name = match caller {
            _ if !self.enabled => return Ok(()),
            Caller::System => return Ok(()),
            Caller::User(n) if n.is_empty() => return Err(ApiError::UserEmpty),
            Caller::User(n) => n,
        };
        match self.user(name) {
            None => Err(ApiError::UserNotFound),
            Some(_) if self.has_role(name, ROOT) => Ok(()),
            Some(_) => Err(ApiError::PermissionDenied),
        }
    }

    /// etcd's `isOpPermitted`: may the caller read or write `[key, end)`?
    pub fn check(
        &self,
        caller: &Caller,
        key: &[u8],
        end: &[u8],
        access: Access,
    ) -> Result<(), ApiError> {
        let name = match caller {
            _ if !self.enabled => return Ok(()),
            Caller::System => return Ok(()),
            Caller::User(n) if n.is_empty() => return Err(ApiError::UserEmpty),
            Caller::User(n) => n,
        };
        if self.user(name).is_none() {
            return Err(ApiError::PermissionDenied);
        }
        if self.has_role(name, ROOT) {
            return Ok(());
        }
        let perms = self.perms(name);
        let set = match access {
            Access::Read => &perms.read,
            Access::Write => &perms.write,
        };
        if set.covers(key, end) {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied)
        }
    }

    fn perms(&self, name: &str) -> Arc<Perms> {
        if let Some(p) = self.cache.lock().get(name) {
            return p.clone();
        }
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for role in self.user(name).map(|u| u.roles.as_slice()).unwrap_or(&[]) {
            for p in self
                .roles
                .get(role)
                .map(|r| r.key_permission.as_slice())
                .unwrap_or(&[])
            {
                let Some(ivl) = interval(p) else { continue };
                match permission::Type::try_from(p.perm_type) {
                    Ok(permission::Type::Read) => read.push(ivl),
                    Ok(permission::Type::Write) => write.push(ivl),
                    Ok(permission::Type::Readwrite) => {
                        read.push(ivl.clone());
                        write.push(ivl);
                    }
                    Err(_) => {}
                }
            }
        }
        let perms = Arc::new(Perms {
            read: Intervals::build(read),
            write: Intervals::build(write),
        });
        self.cache.lock().insert(name.to_owned(), perms.clone());
        perms
    }

    /// etcd's Txn check: read on every compare, and every op of both
    /// branches (nested txns included) as if sent alone.
    pub fn check_txn(&self, caller: &Caller, t: &TxnRequest) -> Result<(), ApiError> {
        for c in &t.compare {
            self.check(caller, &c.key, &c.range_end, Access::Read)?;
        }
        self.check_ops(caller, &t.success)?;
        self.check_ops(caller, &t.failure)
    }

    fn check_ops(&self, caller: &Caller, ops: &[RequestOp]) -> Result<(), ApiError> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.check(caller, &r.key, &r.range_end, Access::Read)?
                }
                Some(request_op::Request::RequestPut(p)) => {
                    self.check(caller, &p.key, &[], Access::Write)?
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.check(caller, &d.key, &d.range_end, Access::Read)?;
                    }
                    self.check(caller, &d.key, &d.range_end, Access::Write)?
                }
                Some(request_op::Request::RequestTxn(t)) => self.check_txn(caller, t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Serves a read of the auth store, with etcd's checks: admin for the
    /// lists and the status; a user may get itself, and the roles it holds.
    pub fn read(&self, caller: &Caller, r: &AuthRead) -> Result<AuthListing, ApiError> {
        let is = |name: &str| caller.name() == Some(name);
        match r {
            AuthRead::Status => {
                self.check_admin(caller)?;
                Ok(AuthListing::Status {
                    enabled: self.enabled,
                    revision: self.revision,
                })
            }
            AuthRead::UserList => {
                self.check_admin(caller)?;
                Ok(AuthListing::Names(self.users.keys().cloned().collect()))
            }
            AuthRead::RoleList => {
                self.check_admin(caller)?;
                Ok(AuthListing::Names(self.roles.keys().cloned().collect()))
            }
            AuthRead::UserGet(name) => {
                if let Err(e) = self.check_admin(caller) {
                    if !is(name) {
                        return Err(e);
                    }
                }
                let user = self.user(name).ok_or(ApiError::UserNotFound)?;
                Ok(AuthListing::Names(user.roles.clone()))
            }
            AuthRead::RoleGet(role) => {
                if let Err(e) = self.check_admin(caller) {
                    if !caller.name().is_some_and(|n| self.has_role(n, role)) {
                        return Err(e);
                    }
                }
                // The root role's rights are implied, not stored: its
                // stored (empty) permissions are listed, as etcd 3.4 does.
                let found = self.roles.get(role).ok_or(ApiError::RoleNotFound)?;
                Ok(AuthListing::Permissions(found.key_permission.clone()))
            }
            AuthRead::Credentials(name) => {
                if !self.enabled {
                    return Err(ApiError::AuthNotEnabled);
                }
                let user = self.user(name).ok_or(ApiError::AuthFailed)?;
                if user.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(ApiError::AuthFailed);
                }
                Ok(AuthListing::Credentials(Credentials {
                    name: name.clone(),
                    hash: user.password.clone(),
                    revision: self.revision,
                }))
            }
        }
    }

    /// Applies an auth change if `req` is one (None otherwise): the
    /// caller must hold the root role (while auth is on), then etcd's
    /// checks and errors. A refused change changes nothing.
    pub fn apply(
        &mut self,
        caller: &Caller,
        req: &internal_request::Request,
    ) -> Option<Result<(), ApiError>> {
        if !Self::is_change(req) {
            return None;
        }
        if let Err(e) = self.check_admin(caller) {
            return Some(Err(e));
        }
        let result = self.change(req);
        if result.is_ok() {
            self.cache.lock().clear();
        }
        Some(result)
    }

    /// Whether `req` is a change of the auth store.
    pub fn is_change(req: &internal_request::Request) -> bool {
        use internal_request::Request as R;
        matches!(
            req,
            R::AuthEnable(_)
                | R::AuthDisable(_)
                | R::UserAdd(_)
                | R::UserDelete(_)
                | R::UserChangePassword(_)
                | R::UserGrantRole(_)
                | R::UserRevokeRole(_)
                | R::RoleAdd(_)
                | R::RoleGrantPermission(_)
                | R::RoleRevokePermission(_)
                | R::RoleDelete(_)
        )
    }

    fn commit_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn change(&mut self, req: &internal_request::Request) -> Result<(), ApiError> {
        use internal_request::Request as R;
        match req {
            R::AuthEnable(_) => {
                if self.enabled {
                    return Ok(());
                }
                if self.user(ROOT).is_none() {
                    return Err(ApiError::RootUserNotExist);
                }
                if !self.has_role(ROOT, ROOT) {
                    return Err(ApiError::RootRoleNotExist);
                }
                self.enabled = true;
                self.enabled_revision = self.revision;
                tracing::info!("enabled authentication");
            }
            R::AuthDisable(_) => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
                self.commit_revision();
                tracing::info!("disabled authentication");
            }
            R::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(ApiError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(ApiError::UserAlreadyExist);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let password = if options.no_password {
                    Vec::new()
                } else {
                    r.hashed_password.as_bytes().to_vec()
                };
                let rev = self.commit_revision();
                self.users.insert(
                    r.name.clone(),
                    AuthUser {
                        user: Some(User {
                            name: r.name.as_bytes().to_vec(),
                            password,
                            roles: Vec::new(),
                            options: Some(options),
                        }),
                        credential_revision: rev,
                    },
                );
            }
            R::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(ApiError::InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(ApiError::UserNotFound);
                }
                self.commit_revision();
            }
            R::UserChangePassword(r) => {
                let rev = self.revision + 1;
                let entry = self.users.get_mut(&r.name).ok_or(ApiError::UserNotFound)?;
                let user = entry.user.get_or_insert_with(User::default);
                if !user.options.as_ref().is_some_and(|o| o.no_password) {
                    user.password = r.hashed_password.as_bytes().to_vec();
                }
                entry.credential_revision = rev;
                self.commit_revision();
            }
            R::UserGrantRole(r) => {
                if self.user(&r.user).is_none() {
                    return Err(ApiError::UserNotFound);
                }
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    return Err(ApiError::RoleNotFound);
                }
                let user = self
                    .users
                    .get_mut(&r.user)
                    .and_then(|u| u.user.as_mut())
                    .ok_or(ApiError::UserNotFound)?;
                match user.roles.binary_search(&r.role) {
                    Ok(_) => return Ok(()),
                    Err(i) => user.roles.insert(i, r.role.clone()),
                }
                self.commit_revision();
            }
            R::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(ApiError::InvalidAuthMgmt);
                }
                let user = self
                    .users
                    .get_mut(&r.name)
                    .and_then(|u| u.user.as_mut())
                    .ok_or(ApiError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|x| *x != r.role);
                if user.roles.len() == before {
                    return Err(ApiError::RoleNotGranted);
                }
                self.commit_revision();
            }
            R::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(ApiError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(ApiError::RoleAlreadyExist);
                }
                self.roles.insert(
                    r.name.clone(),
                    Role {
                        name: r.name.as_bytes().to_vec(),
                        key_permission: Vec::new(),
                    },
                );
                self.commit_revision();
            }
            R::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(ApiError::PermissionNotGiven)?;
                let role = self.roles.get_mut(&r.name).ok_or(ApiError::RoleNotFound)?;
                let perms = &mut role.key_permission;
                let i = perms.partition_point(|p| p.key < perm.key);
                match perms
                    .iter_mut()
                    .skip(i)
                    .take_while(|p| p.key == perm.key)
                    .find(|p| p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => perms.insert(i, perm.clone()),
                }
                self.commit_revision();
            }
            R::RoleRevokePermission(r) => {
                let role = self.roles.get_mut(&r.role).ok_or(ApiError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != r.key || p.range_end != r.range_end);
                if role.key_permission.len() == before {
                    return Err(ApiError::PermissionNotGranted);
                }
                self.commit_revision();
            }
            R::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(ApiError::InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(ApiError::RoleNotFound);
                }
                for u in self.users.values_mut().filter_map(|u| u.user.as_mut()) {
                    u.roles.retain(|x| *x != r.role);
                }
                self.commit_revision();
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::*;
    use internal_request::Request as R;

    fn user(name: &str) -> Caller {
        Caller::User(name.into())
    }

    fn perm(t: permission::Type, key: &str, end: &[u8]) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
        }
    }

    fn ok(s: &mut AuthStore, r: R) {
        s.apply(&Caller::System, &r)
            .expect("an auth request")
            .expect("applied");
    }

    /// root (root role) and alice (role `app`), auth on.
    fn store(perms: Vec<Permission>) -> AuthStore {
        let mut s = AuthStore::default();
        for name in [ROOT, "alice"] {
            ok(
                &mut s,
                R::UserAdd(AuthUserAddRequest {
                    name: name.into(),
                    hashed_password: "$2a$10$x".into(),
                    ..Default::default()
                }),
            );
        }
        ok(
            &mut s,
            R::RoleAdd(AuthRoleAddRequest { name: "app".into() }),
        );
        for p in perms {
            ok(
                &mut s,
                R::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                    name: "app".into(),
                    perm: Some(p),
                }),
            );
        }
        ok(
            &mut s,
            R::UserGrantRole(AuthUserGrantRoleRequest {
                user: "alice".into(),
                role: "app".into(),
            }),
        );
        ok(
            &mut s,
            R::UserGrantRole(AuthUserGrantRoleRequest {
                user: ROOT.into(),
                role: ROOT.into(),
            }),
        );
        ok(&mut s, R::AuthEnable(AuthEnableRequest {}));
        s
    }

    #[test]
    fn key_prefix_and_open_ended_permissions_cover_exactly_their_ranges() {
        use permission::Type::*;
        let s = store(vec![
            perm(Read, "k", b""),
            perm(Readwrite, "p/", b"p0"),
            perm(Write, "z", b"\0"),
        ]);
        let a = user("alice");
        let can = |k: &str, e: &[u8], acc| s.check(&a, k.as_bytes(), e, acc).is_ok();
        assert!(can("k", b"", Access::Read));
        assert!(!can("k", b"", Access::Write));
        assert!(
            !can("k1", b"", Access::Read),
            "a key permission is the key alone"
        );
        assert!(!can("k", b"l", Access::Read), "nor a range from it");
        assert!(can("p/a", b"", Access::Write));
        assert!(can("p/", b"p0", Access::Read));
        assert!(can("p/a", b"p/b", Access::Read));
        assert!(!can("p/", b"p1", Access::Read), "past the prefix");
        assert!(
            !can("p/", b"\0", Access::Read),
            "to the end is past the prefix"
        );
        assert!(!can("o", b"p0", Access::Read), "starts before it");
        assert!(can("zz", b"\0", Access::Write));
        assert!(!can("zz", b"\0", Access::Read));
        assert!(!can("y", b"", Access::Write));
        assert!(!can("p/b", b"p/a", Access::Read), "an inverted range");
        // The root role may do anything; an unknown user nothing; no name
        // says so.
        assert!(s.check(&user(ROOT), b"", b"\0", Access::Write).is_ok());
        assert_eq!(
            s.check(&user("bob"), b"k", b"", Access::Read),
            Err(ApiError::PermissionDenied)
        );
        assert_eq!(
            s.check(&Caller::anonymous(), b"k", b"", Access::Read),
            Err(ApiError::UserEmpty)
        );
        assert!(s.check(&Caller::System, b"k", b"", Access::Write).is_ok());
    }

    #[test]
    fn touching_grants_merge_into_one_range() {
        use permission::Type::*;
        let s = store(vec![perm(Read, "a", b"c"), perm(Read, "c", b"e")]);
        assert!(s.check(&user("alice"), b"b", b"d", Access::Read).is_ok());
        assert!(s.check(&user("alice"), b"a", b"e", Access::Read).is_ok());
        assert!(s.check(&user("alice"), b"a", b"f", Access::Read).is_err());
    }

    #[test]
    fn txn_checks_compares_and_both_branches_nested() {
        use permission::Type::*;
        let s = store(vec![perm(Readwrite, "a", b"")]);
        let put = |k: &str| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        };
        let mut t = TxnRequest {
            success: vec![put("a")],
            ..Default::default()
        };
        assert!(s.check_txn(&user("alice"), &t).is_ok());
        t.failure = vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![put("b")],
                ..Default::default()
            })),
        }];
        assert_eq!(
            s.check_txn(&user("alice"), &t),
            Err(ApiError::PermissionDenied)
        );
    }

    #[test]
    fn changes_follow_etcds_rules_and_revisions() {
        let mut s = AuthStore::default();
        assert_eq!(s.revision(), 1);
        assert_eq!(
            s.apply(&Caller::System, &R::AuthEnable(AuthEnableRequest {})),
            Some(Err(ApiError::RootUserNotExist))
        );
        let mut s = store(vec![]);
        let rev = s.revision();
        // Enabling twice changes nothing; a non-root user may not manage.
        ok(&mut s, R::AuthEnable(AuthEnableRequest {}));
        assert_eq!(s.revision(), rev);
        let add = R::RoleAdd(AuthRoleAddRequest { name: "x".into() });
        assert_eq!(
            s.apply(&user("alice"), &add),
            Some(Err(ApiError::PermissionDenied))
        );
        assert_eq!(
            s.apply(&Caller::anonymous(), &add),
            Some(Err(ApiError::UserEmpty))
        );
        assert_eq!(s.apply(&user(ROOT), &add), Some(Ok(())));
        assert_eq!(s.revision(), rev + 1);
        assert_eq!(
            s.apply(&user(ROOT), &add),
            Some(Err(ApiError::RoleAlreadyExist))
        );
        // root cannot be removed while auth is on.
        assert_eq!(
            s.apply(
                &user(ROOT),
                &R::UserDelete(AuthUserDeleteRequest { name: ROOT.into() })
            ),
            Some(Err(ApiError::InvalidAuthMgmt))
        );
        // A deleted role leaves its users.
        ok(
            &mut s,
            R::RoleDelete(AuthRoleDeleteRequest { role: "app".into() }),
        );
        assert_eq!(
            s.read(&user(ROOT), &AuthRead::UserGet("alice".into())),
            Ok(AuthListing::Names(vec![]))
        );
        // A user may read itself but not list everyone.
        assert!(s
            .read(&user("alice"), &AuthRead::UserGet("alice".into()))
            .is_ok());
        assert_eq!(
            s.read(&user("alice"), &AuthRead::UserList),
            Err(ApiError::PermissionDenied)
        );
        // Tokens die with a password change and with auth turned off.
        let issued = s.revision();
        assert!(s.token_valid("alice", issued));
        ok(
            &mut s,
            R::UserChangePassword(AuthUserChangePasswordRequest {
                name: "alice".into(),
                hashed_password: "$2a$10$y".into(),
                ..Default::default()
            }),
        );
        assert!(!s.token_valid("alice", issued));
        let issued = s.revision();
        assert!(s.token_valid("alice", issued));
        ok(&mut s, R::AuthDisable(AuthDisableRequest {}));
        ok(&mut s, R::AuthEnable(AuthEnableRequest {}));
        assert!(!s.token_valid("alice", issued));
        // The persisted form round-trips.
        assert_eq!(AuthStore::from_pb(&s.to_pb()), s);
    }
}
