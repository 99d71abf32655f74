//! etcd's Auth service, who a request runs as (its token), simple tokens,
//! and the password hashing that stays off the write path.
//!
//! Passwords are bcrypt-hashed (etcd's `--bcrypt-cost`) before a change is
//! proposed, and checked by Authenticate, on [`Hasher`] threads of their
//! own at the lowest CPU priority: a storm of logins takes what CPU the
//! writes leave, never the other way round. The log carries only hashes.
//!
//! Authenticate reads the user's hash linearizably, checks the password,
//! and issues a simple token kept by this member ([`Tokens`], etcd's
//! `simple` tokens): valid until unused for `--auth-token-ttl`, and dead
//! once the user's password changes, the user is deleted or auth is turned
//! off (checked against the published auth store on every use).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::Backend;
use crate::error::ApiError;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::metastorepb::internal_request::Request as Internal;
use crate::state_machine::auth::{AuthListing, AuthRead, AuthStore, Caller};
use crate::state_machine::{ReadRequest, ReadResponse, WriteResponse};

/// Where gRPC clients put their token (etcd's `token` metadata); the
/// gateway's clients send `Authorization`.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// Password work waiting for a hashing thread, at most.
const HASH_QUEUE: usize = 4096;

enum HashJob {
    Hash {
        password: String,
        cost: u32,
        reply: oneshot::Sender<Result<String, ApiError>>,
    },
    Verify {
        password: String,
        hash: Vec<u8>,
        reply: oneshot::Sender<bool>,
    },
}

/// bcrypt on threads of its own at the lowest priority (nice 19).
#[derive(Clone)]
pub struct Hasher {
    jobs: crossbeam_channel::Sender<HashJob>,
    cost: u32,
}

impl Hasher {
    /// Starts `threads` hashing threads; `cost` is used for new passwords
    /// (etcd's default 10 when out of bcrypt's 4..=31, as etcd does).
    pub fn start(threads: usize, cost: u32) -> Hasher {
        let cost = if (4..=31).contains(&cost) {
            cost
        } else {
            tracing::warn!(
                given = cost,
                "bcrypt cost out of 4..=31: using the default 10"
            );
            10
        };
        let (jobs, rx) = crossbeam_channel::bounded::<HashJob>(HASH_QUEUE);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    lowest_priority();
                    for job in rx {
                        run(job);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "no bcrypt thread");
            }
        }
        Hasher { jobs, cost }
    }

    /// The bcrypt hash of `password` at the configured cost.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.submit(HashJob::Hash {
            password,
            cost: self.cost,
            reply,
        })?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// Whether `password` matches `hash`.
    pub async fn verify(&self, password: String, hash: Vec<u8>) -> Result<bool, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.submit(HashJob::Verify {
            password,
            hash,
            reply,
        })?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    fn submit(&self, job: HashJob) -> Result<(), ApiError> {
        self.jobs.try_send(job).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => ApiError::TooManyRequests,
            crossbeam_channel::TrySendError::Disconnected(_) => ApiError::Stopped,
        })
    }
}

fn run(job: HashJob) {
    match job {
        HashJob::Hash {
            password,
            cost,
            reply,
        } => {
            let _ = reply.send(
                bcrypt::hash(password, cost)
                    .map_err(|e| ApiError::Internal(format!("bcrypt: {e}"))),
            );
        }
        HashJob::Verify {
            password,
            hash,
            reply,
        } => {
            let ok = std::str::from_utf8(&hash)
                .ok()
                .and_then(|h| bcrypt::verify(password, h).ok())
                .unwrap_or(false);
            let _ = reply.send(ok);
        }
    }
}

/// Lowers the calling thread to nice 19 (Linux: priorities are per thread).
fn lowest_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::warn!("could not lower the bcrypt thread's priority");
    }
}

struct Issued {
    user: String,
    /// The auth revision the password was checked at.
    revision: u64,
    deadline: Instant,
}

/// etcd's simple tokens: random names for (user, auth revision), kept by
/// this member, good while used within the TTL and while the user's
/// credentials and auth's switch are as they were.
pub struct Tokens {
    ttl: Duration,
    issued: parking_lot::Mutex<HashMap<String, Issued>>,
    next: AtomicU64,
    pruned: parking_lot::Mutex<Instant>,
}

impl Tokens {
    /// A token table whose tokens live `ttl` unused.
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            issued: Default::default(),
            next: AtomicU64::new(1),
            pruned: parking_lot::Mutex::new(Instant::now()),
        }
    }

    /// A new token for `user`, whose password was checked at auth
    /// revision `revision` (etcd's form: 16 letters, a dot, a number).
    pub fn issue(&self, user: &str, revision: u64) -> String {
        let mut rng = rand::thread_rng();
        let prefix: String = (0..16)
            .map(|_| {
                let i = rng.gen_range(0..52u8);
                (if i < 26 { b'a' + i } else { b'A' + i - 26 }) as char
            })
            .collect();
        let token = format!("{prefix}.{}", self.next.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        self.prune(now);
        self.issued.lock().insert(
            token.clone(),
            Issued {
                user: user.to_owned(),
                revision,
                deadline: now + self.ttl,
            },
        );
        token
    }

    /// The user `token` stands for, if it is still good under `auth`;
    /// each use extends its life by the TTL.
    pub fn user_of(&self, token: &str, auth: &AuthStore) -> Option<String> {
        let now = Instant::now();
        let mut issued = self.issued.lock();
        let t = issued.get_mut(token)?;
        if t.deadline <= now || !auth.token_valid(&t.user, t.revision) {
            issued.remove(token);
            return None;
        }
        t.deadline = now + self.ttl;
        Some(t.user.clone())
    }

    /// Drops expired tokens, at most once a second.
    fn prune(&self, now: Instant) {
        let mut last = self.pruned.lock();
        if now.duration_since(*last) < Duration::from_secs(1) {
            return;
        }
        *last = now;
        self.issued.lock().retain(|_, t| t.deadline > now);
    }
}

/// etcd's JWT tokens: signed claims (user name, the auth revision the
/// password was checked at, expiry), valid on every member that has the
/// key, and only while the user's credentials and auth's switch are as
/// they were at that revision (the replicated auth store says so on every
/// member alike).
pub struct Jwt {
    algorithm: jsonwebtoken::Algorithm,
    sign: Option<jsonwebtoken::EncodingKey>,
    verify: jsonwebtoken::DecodingKey,
    ttl: Duration,
    /// Tokens already verified (a signature check per request would cost
    /// far more than the request): token → (user, revision, expiry).
    verified: parking_lot::Mutex<HashMap<String, (String, u64, u64)>>,
}

/// Verified tokens remembered at most (then forgotten all at once).
const JWT_CACHE: usize = 10_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Jwt {
    /// Loads the keys `--auth-token jwt,...` names.
    pub fn load(o: &crate::config::JwtOptions) -> Result<Jwt, crate::error::ConfigError> {
        use jsonwebtoken::{Algorithm as A, DecodingKey, EncodingKey};
        let bad = |why: String| crate::error::ConfigError::Invalid {
            key: "auth-token".into(),
            why,
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| bad(format!("cannot read {}: {e}", p.display())))
        };
        let algorithm: A = o
            .sign_method
            .parse()
            .map_err(|_| bad(format!("unknown sign-method {:?}", o.sign_method)))?;
        let key_err = |e: jsonwebtoken::errors::Error| bad(format!("key: {e}"));
        let (sign, verify) = match algorithm {
            A::HS256 | A::HS384 | A::HS512 => {
                let path = o
                    .priv_key
                    .as_ref()
                    .or(o.pub_key.as_ref())
                    .ok_or_else(|| bad("HMAC needs priv-key".into()))?;
                let secret = read(path)?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            A::ES256 | A::ES384 => {
                let public = read(
                    o.pub_key
                        .as_ref()
                        .ok_or_else(|| bad("needs pub-key".into()))?,
                )?;
                let sign = match &o.priv_key {
                    Some(p) => Some(EncodingKey::from_ec_pem(&read(p)?).map_err(key_err)?),
                    None => None,
                };
                (sign, DecodingKey::from_ec_pem(&public).map_err(key_err)?)
            }
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
                let public = read(
                    o.pub_key
                        .as_ref()
                        .ok_or_else(|| bad("needs pub-key".into()))?,
                )?;
                let sign = match &o.priv_key {
                    Some(p) => Some(EncodingKey::from_rsa_pem(&read(p)?).map_err(key_err)?),
                    None => None,
                };
                (sign, DecodingKey::from_rsa_pem(&public).map_err(key_err)?)
            }
            other => return Err(bad(format!("sign-method {other:?} is not supported"))),
        };
        Ok(Jwt {
            algorithm,
            sign,
            verify,
            ttl: Duration::from_secs(o.ttl_secs),
            verified: Default::default(),
        })
    }

    fn issue(&self, user: &str, revision: u64) -> Result<String, ApiError> {
        let key = self.sign.as_ref().ok_or_else(|| {
            ApiError::Internal("auth: token signing attempted with verify-only key".into())
        })?;
        let claims = Claims {
            username: user.to_owned(),
            revision,
            exp: now_secs() + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.algorithm), &claims, key)
            .map_err(|e| ApiError::Internal(format!("sign a token: {e}")))
    }

    fn user_of(&self, token: &str, auth: &AuthStore) -> Option<String> {
        let known = self.verified.lock().get(token).cloned();
        let (user, revision, exp) = match known {
            Some(k) => k,
            None => {
                let mut v = jsonwebtoken::Validation::new(self.algorithm);
                v.leeway = 0;
                let c = jsonwebtoken::decode::<Claims>(token, &self.verify, &v)
                    .ok()?
                    .claims;
                let mut verified = self.verified.lock();
                if verified.len() >= JWT_CACHE {
                    verified.clear();
                }
                verified.insert(token.to_owned(), (c.username.clone(), c.revision, c.exp));
                (c.username, c.revision, c.exp)
            }
        };
        (exp > now_secs() && auth.token_valid(&user, revision)).then_some(user)
    }
}

/// Who makes and checks tokens (`--auth-token`).
pub enum TokenIssuer {
    /// etcd's simple tokens.
    Simple(Tokens),
    /// etcd's JWT tokens.
    Jwt(Jwt),
}

impl TokenIssuer {
    /// The issuer the configuration asks for (keys loaded).
    pub fn new(cfg: &crate::config::Config) -> Result<TokenIssuer, crate::error::ConfigError> {
        Ok(match cfg.auth_tokens()? {
            crate::config::AuthTokens::Simple => {
                TokenIssuer::Simple(Tokens::new(Duration::from_secs(cfg.auth_token_ttl)))
            }
            crate::config::AuthTokens::Jwt(o) => TokenIssuer::Jwt(Jwt::load(&o)?),
        })
    }

    /// A token for `user`, whose password was checked at `revision`.
    pub fn issue(&self, user: &str, revision: u64) -> Result<String, ApiError> {
        match self {
            TokenIssuer::Simple(t) => Ok(t.issue(user, revision)),
            TokenIssuer::Jwt(j) => j.issue(user, revision),
        }
    }

    /// The user `token` stands for, if it is still good under `auth`.
    pub fn user_of(&self, token: &str, auth: &AuthStore) -> Option<String> {
        match self {
            TokenIssuer::Simple(t) => t.user_of(token, auth),
            TokenIssuer::Jwt(j) => j.user_of(token, auth),
        }
    }
}

impl Backend {
    /// The auth store as of the last applied batch.
    pub fn auth_view(&self) -> Arc<AuthStore> {
        self.core.auth.read().clone()
    }

    /// Who a gRPC request runs as (see [`Backend::caller`]); without a
    /// token, with client certificates required, the verified
    /// certificate's common name is the user (etcd's `AuthInfoFromTLS`).
    pub fn caller_of<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        let caller = self.caller(req.metadata())?;
        if caller != Caller::anonymous() || !self.cert_users {
            return Ok(caller);
        }
        Ok(super::tls::client_common_name(req.extensions()).map_or(caller, Caller::User))
    }

    /// Who a request runs as: its token's user while auth is on (etcd's
    /// `AuthInfoFromCtx`); a request without a token runs as nobody, and
    /// one with a bad token is refused.
    pub fn caller(&self, md: &tonic::metadata::MetadataMap) -> Result<Caller, ApiError> {
        // Every client request passes here: while auth is off, only a
        // look under the read lock, no copy of the store's handle.
        let view = {
            let current = self.core.auth.read();
            if !current.enabled() {
                return Ok(Caller::anonymous());
            }
            current.clone()
        };
        let token = TOKEN_KEYS
            .iter()
            .find_map(|k| md.get(*k))
            .and_then(|v| v.to_str().ok());
        match token {
            None => Ok(Caller::anonymous()),
            Some(t) => {
                // The gateway's header may say "Bearer <token>".
                let t = t.strip_prefix("Bearer ").unwrap_or(t);
                self.tokens
                    .user_of(t, &view)
                    .map(Caller::User)
                    .ok_or(ApiError::InvalidAuthToken)
            }
        }
    }

    /// The caller of `req`, who must hold the root role while auth is on
    /// (maintenance and membership calls, as etcd's `IsAdminPermitted`).
    pub fn admin<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        let caller = self.caller_of(req)?;
        self.auth_view().check_admin(&caller)?;
        Ok(caller)
    }
}

/// The Auth service.
pub struct AuthService {
    backend: Backend,
}

impl AuthService {
    /// An Auth service over the backend.
    pub fn new(backend: Backend) -> AuthService {
        AuthService { backend }
    }

    /// Proposes an auth change as the request's caller; answers the
    /// header etcd's auth responses carry.
    async fn change<T>(
        &self,
        req: &Request<T>,
        change: Internal,
    ) -> Result<Option<ResponseHeader>, ApiError> {
        let caller = self.backend.caller_of(req)?;
        match self.backend.write(&caller, change).await? {
            WriteResponse::Auth(rev) => Ok(self.backend.header(rev)),
            _ => Err(ApiError::Internal("unexpected auth answer".into())),
        }
    }

    /// A linearizable read of the auth store as the request's caller.
    async fn listing<T>(
        &self,
        req: &Request<T>,
        read: AuthRead,
    ) -> Result<(AuthListing, Option<ResponseHeader>), ApiError> {
        let caller = self.backend.caller_of(req)?;
        self.read_as(&caller, read).await
    }

    async fn read_as(
        &self,
        caller: &Caller,
        read: AuthRead,
    ) -> Result<(AuthListing, Option<ResponseHeader>), ApiError> {
        match self
            .backend
            .read(caller, ReadRequest::Auth(read), false)
            .await?
        {
            ReadResponse::Auth(l, rev) => Ok((l, self.backend.header(rev))),
            _ => Err(ApiError::Internal("unexpected auth answer".into())),
        }
    }

    async fn names<T>(
        &self,
        req: &Request<T>,
        read: AuthRead,
    ) -> Result<(Vec<String>, Option<ResponseHeader>), ApiError> {
        match self.listing(req, read).await? {
            (AuthListing::Names(n), h) => Ok((n, h)),
            _ => Err(ApiError::Internal("unexpected auth answer".into())),
        }
    }

    /// A password as the log carries it: its bcrypt hash (none for a user
    /// without one).
    async fn hashed(&self, password: &str, no_password: bool) -> Result<String, ApiError> {
        if no_password {
            return Ok(String::new());
        }
        self.backend.hasher.hash(password.to_owned()).await
    }

    async fn authenticate_inner(
        &self,
        r: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, ApiError> {
        let (listing, header) = self
            .read_as(&Caller::System, AuthRead::Credentials(r.name.clone()))
            .await?;
        let AuthListing::Credentials(c) = listing else {
            return Err(ApiError::Internal("unexpected auth answer".into()));
        };
        if !self.backend.hasher.verify(r.password, c.hash).await? {
            tracing::info!(user = %r.name, "invalid password");
            return Err(ApiError::AuthFailed);
        }
        let token = self.backend.tokens.issue(&c.name, c.revision)?;
        Ok(AuthenticateResponse { header, token })
    }
}

macro_rules! rpc {
    ($fut:expr) => {{
        $fut.await.map(Response::new).map_err(Status::from)
    }};
}

/// Auth changes whose request goes into the log as it came and whose
/// answer is only a header: `method, Request, Response, Internal variant`.
macro_rules! changes {
    ($($method:ident, $req:ident, $resp:ident, $variant:ident;)*) => {
        $(
            // The signature `#[tonic::async_trait]` gives an `async fn`
            // (it does not see into macros).
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                req: Request<$req>,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<Response<$resp>, Status>>
                        + Send
                        + 'async_trait,
                >,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move {
                    rpc!(async {
                        let r = req.get_ref().clone();
                        let header = self.change(&req, Internal::$variant(r)).await?;
                        Ok::<_, ApiError>($resp { header })
                    })
                })
            }
        )*
    };
}

#[tonic::async_trait]
impl Auth for AuthService {
    changes! {
        auth_enable, AuthEnableRequest, AuthEnableResponse, AuthEnable;
        auth_disable, AuthDisableRequest, AuthDisableResponse, AuthDisable;
        user_delete, AuthUserDeleteRequest, AuthUserDeleteResponse, UserDelete;
        user_grant_role, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse, UserGrantRole;
        user_revoke_role, AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, UserRevokeRole;
        role_add, AuthRoleAddRequest, AuthRoleAddResponse, RoleAdd;
        role_delete, AuthRoleDeleteRequest, AuthRoleDeleteResponse, RoleDelete;
        role_grant_permission, AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, RoleGrantPermission;
        role_revoke_permission, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, RoleRevokePermission;
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        rpc!(async {
            match self.listing(&req, AuthRead::Status).await? {
                (AuthListing::Status { enabled, revision }, header) => {
                    Ok::<_, ApiError>(AuthStatusResponse {
                        header,
                        enabled,
                        auth_revision: revision,
                    })
                }
                _ => Err(ApiError::Internal("unexpected auth answer".into())),
            }
        })
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        rpc!(self.authenticate_inner(req.into_inner()))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        rpc!(async {
            let mut r = req.get_ref().clone();
            let no_password = r.options.is_some_and(|o| o.no_password);
            r.hashed_password = self.hashed(&r.password, no_password).await?;
            r.password.clear();
            let header = self.change(&req, Internal::UserAdd(r)).await?;
            Ok::<_, ApiError>(AuthUserAddResponse { header })
        })
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        rpc!(async {
            let name = req.get_ref().name.clone();
            let (roles, header) = self.names(&req, AuthRead::UserGet(name)).await?;
            Ok::<_, ApiError>(AuthUserGetResponse { header, roles })
        })
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        rpc!(async {
            let (users, header) = self.names(&req, AuthRead::UserList).await?;
            Ok::<_, ApiError>(AuthUserListResponse { header, users })
        })
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        rpc!(async {
            let mut r = req.get_ref().clone();
            r.hashed_password = self.hashed(&r.password, false).await?;
            r.password.clear();
            let header = self.change(&req, Internal::UserChangePassword(r)).await?;
            Ok::<_, ApiError>(AuthUserChangePasswordResponse { header })
        })
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        rpc!(async {
            let role = req.get_ref().role.clone();
            match self.listing(&req, AuthRead::RoleGet(role)).await? {
                (AuthListing::Permissions(perm), header) => {
                    Ok::<_, ApiError>(AuthRoleGetResponse { header, perm })
                }
                _ => Err(ApiError::Internal("unexpected auth answer".into())),
            }
        })
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        rpc!(async {
            let (roles, header) = self.names(&req, AuthRead::RoleList).await?;
            Ok::<_, ApiError>(AuthRoleListResponse { header, roles })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::metastorepb::internal_request::Request as R;

    fn store() -> AuthStore {
        let mut s = AuthStore::default();
        for r in [
            R::UserAdd(AuthUserAddRequest {
                name: "root".into(),
                hashed_password: "h".into(),
                ..Default::default()
            }),
            R::UserGrantRole(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }),
            R::AuthEnable(AuthEnableRequest {}),
        ] {
            s.apply(&Caller::System, &r)
                .expect("auth")
                .expect("applied");
        }
        s
    }

    #[test]
    fn tokens_expire_unused_and_die_with_the_credentials() {
        let mut s = store();
        let tokens = Tokens::new(Duration::from_millis(50));
        let t = tokens.issue("root", s.revision());
        assert_eq!(tokens.user_of(&t, &s).as_deref(), Some("root"));
        assert_eq!(tokens.user_of("nope.1", &s), None);
        // A plain test thread: nothing async runs on it.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(tokens.user_of(&t, &s), None, "unused past its TTL");
        let tokens = Tokens::new(Duration::from_secs(60));
        let t = tokens.issue("root", s.revision());
        s.apply(
            &Caller::System,
            &R::UserChangePassword(AuthUserChangePasswordRequest {
                name: "root".into(),
                hashed_password: "h2".into(),
                ..Default::default()
            }),
        )
        .expect("auth")
        .expect("applied");
        assert_eq!(tokens.user_of(&t, &s), None, "the password changed");
        let t = tokens.issue("root", s.revision());
        assert!(tokens.user_of(&t, &s).is_some());
        s.apply(&Caller::System, &R::AuthDisable(AuthDisableRequest {}))
            .expect("auth")
            .expect("applied");
        assert_eq!(tokens.user_of(&t, &s), None, "auth was turned off");
    }

    #[tokio::test]
    async fn passwords_hash_and_verify_off_the_caller_thread() {
        let h = Hasher::start(1, 4);
        let hash = h.hash("secret".into()).await.unwrap();
        assert!(hash.starts_with("$2"), "{hash}");
        assert!(h
            .verify("secret".into(), hash.clone().into_bytes())
            .await
            .unwrap());
        assert!(!h.verify("wrong".into(), hash.into_bytes()).await.unwrap());
        assert!(!h.verify("x".into(), b"not a hash".to_vec()).await.unwrap());
    }
}
