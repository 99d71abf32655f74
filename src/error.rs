//! Errors of every layer, and the ONE place where they become gRPC statuses with
//! etcd's exact codes and messages (`From<ApiError> for tonic::Status`).

use std::path::PathBuf;

use tonic::{Code, Status};

/// An error a client sees. The messages are etcd's, word for word, so that
/// clients that match on them (etcdctl, clientv3's rpctypes) behave the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// ignore_value / ignore_lease on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// ignore_value together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// ignore_lease together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn branch or compare list over the limit.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// The same key written twice in one txn.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A revision at or below the compacted one.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A revision above the current one.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A lease ID that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// LeaseGrant with an ID in use.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// LeaseGrant with a TTL over etcd's maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A request over --max-request-bytes.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// No leader is known.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The store passed its quota, or a NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// The request did not finish in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Raft refused the proposal (too much uncommitted data, or a transfer).
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// Leadership changed while the request was pending.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// MemberAdd with an ID already in the cluster.
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    /// A peer URL another member uses.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// Too few started members for a safe reconfiguration.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    /// Peer URLs that do not parse.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// An unknown (or removed) member ID.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberPromote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner that lags the leader.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// More learners than etcd allows.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A request only the leader serves, sent to another member.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// MoveLeader to a member that cannot lead.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader did not finish in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    /// Some voting member is not connected.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// A request a learner does not serve.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// A request without a user name (no credentials while auth is on).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// UserAdd of a user that exists.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// A user that does not exist.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of a role that exists.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// A role that does not exist.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// RoleAdd without a name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// A wrong user name or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// RoleGrantPermission without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not hold.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not hold.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is off.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is unknown, expired or revoked.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Removing root, or root's root role, while auth is on.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// AuthEnable without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while root lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// A request that is well-formed but not supported yet.
    #[error("etcdserver: {0}")]
    Unsupported(String),
    /// Something broke inside the server; the message says what.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl ApiError {
    /// etcd's gRPC code for this error.
    pub fn code(&self) -> Code {
        use ApiError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            LeaseExist => Code::FailedPrecondition,
            TooManyRequests | NoSpace => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
            NoLeader
            | Timeout
            | LeaderChanged
            | Stopped
            | TimeoutLeaderTransfer
            | Unhealthy
            | NotSupportedForLearner => Code::Unavailable,
            MemberExist | PeerUrlExist | NotEnoughStarted | MemberNotLearner | LearnerNotReady
            | TooManyLearners | NotLeader | BadLeaderTransferee => Code::FailedPrecondition,
            MemberBadUrls => Code::InvalidArgument,
            MemberNotFound => Code::NotFound,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt => {
                Code::InvalidArgument
            }
            UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound | RoleNotGranted
            | PermissionNotGranted | AuthNotEnabled | RootUserNotExist | RootRoleNotExist => {
                Code::FailedPrecondition
            }
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            Unsupported(_) => Code::Unimplemented,
            Internal(_) => Code::Internal,
        }
    }
}

impl ApiError {
    /// The error a status from another member's peer service stands for,
    /// so a forwarded request fails as if it ran here. The error is named by
    /// the [`API_ERROR_KEY`] metadata the peer service sets (see
    /// [`ApiError::into_peer_status`]), never recognized by its text; a
    /// status without it (a transport failure) is `Internal`.
    pub fn from_status(s: &Status) -> ApiError {
        let named = s
            .metadata()
            .get(API_ERROR_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| {
                Self::known()
                    .into_iter()
                    .find(|e| e.wire_name() == Some(name))
            });
        named.unwrap_or_else(|| {
            let m = s.message();
            ApiError::Internal(m.strip_prefix("etcdserver: ").unwrap_or(m).to_owned())
        })
    }

    /// This error as the peer service answers it: etcd's code and message,
    /// and the error's name under [`API_ERROR_KEY`] for the calling member.
    pub fn into_peer_status(self) -> Status {
        let name = self.wire_name();
        let mut status = Status::from(self);
        if let Some(name) = name {
            status.metadata_mut().insert(
                API_ERROR_KEY,
                tonic::metadata::MetadataValue::from_static(name),
            );
        }
        status
    }

    /// A stable name for the variants without data (their Rust name).
    fn wire_name(&self) -> Option<&'static str> {
        Self::known()
            .iter()
            .position(|k| k == self)
            .map(|i| KNOWN_NAMES[i])
    }

    /// Every variant without data, in [`KNOWN_NAMES`]' order.
    fn known() -> [ApiError; KNOWN_NAMES.len()] {
        use ApiError::*;
        [
            EmptyKey,
            KeyNotFound,
            ValueProvided,
            LeaseProvided,
            TooManyOps,
            DuplicateKey,
            Compacted,
            FutureRevision,
            LeaseNotFound,
            LeaseExist,
            LeaseTtlTooLarge,
            RequestTooLarge,
            NoLeader,
            NoSpace,
            Corrupt,
            Timeout,
            TooManyRequests,
            LeaderChanged,
            Stopped,
            MemberExist,
            PeerUrlExist,
            NotEnoughStarted,
            MemberBadUrls,
            MemberNotFound,
            MemberNotLearner,
            LearnerNotReady,
            TooManyLearners,
            NotLeader,
            BadLeaderTransferee,
            TimeoutLeaderTransfer,
            Unhealthy,
            NotSupportedForLearner,
            UserEmpty,
            UserAlreadyExist,
            UserNotFound,
            RoleAlreadyExist,
            RoleNotFound,
            RoleEmpty,
            AuthFailed,
            PermissionNotGiven,
            PermissionDenied,
            RoleNotGranted,
            PermissionNotGranted,
            AuthNotEnabled,
            InvalidAuthToken,
            InvalidAuthMgmt,
            RootUserNotExist,
            RootRoleNotExist,
        ]
    }
}

/// The gRPC metadata key naming an [`ApiError`] in the peer service's
/// answers (the caller decides on it, not on the message text).
pub const API_ERROR_KEY: &str = "metastore-api-error";

/// The wire names of [`ApiError::known`]'s variants, in its order.
const KNOWN_NAMES: [&str; 48] = [
    "EmptyKey",
    "KeyNotFound",
    "ValueProvided",
    "LeaseProvided",
    "TooManyOps",
    "DuplicateKey",
    "Compacted",
    "FutureRevision",
    "LeaseNotFound",
    "LeaseExist",
    "LeaseTtlTooLarge",
    "RequestTooLarge",
    "NoLeader",
    "NoSpace",
    "Corrupt",
    "Timeout",
    "TooManyRequests",
    "LeaderChanged",
    "Stopped",
    "MemberExist",
    "PeerUrlExist",
    "NotEnoughStarted",
    "MemberBadUrls",
    "MemberNotFound",
    "MemberNotLearner",
    "LearnerNotReady",
    "TooManyLearners",
    "NotLeader",
    "BadLeaderTransferee",
    "TimeoutLeaderTransfer",
    "Unhealthy",
    "NotSupportedForLearner",
    "UserEmpty",
    "UserAlreadyExist",
    "UserNotFound",
    "RoleAlreadyExist",
    "RoleNotFound",
    "RoleEmpty",
    "AuthFailed",
    "PermissionNotGiven",
    "PermissionDenied",
    "RoleNotGranted",
    "PermissionNotGranted",
    "AuthNotEnabled",
    "InvalidAuthToken",
    "InvalidAuthMgmt",
    "RootUserNotExist",
    "RootRoleNotExist",
];

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<crate::storage::MvccError> for ApiError {
    fn from(e: crate::storage::MvccError) -> ApiError {
        use crate::storage::MvccError;
        match e {
            MvccError::Compacted => ApiError::Compacted,
            MvccError::FutureRevision => ApiError::FutureRevision,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A configuration problem found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {key} {why}")]
    Invalid {
        /// The key.
        key: String,
        /// Why.
        why: String,
    },
}

/// Why the client port (or a metrics port) stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A metrics URL could not be bound.
    #[error("cannot listen on metrics URL {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The client URL could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    ClientListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error(transparent)]
    Serve(std::io::Error),
    /// The listen URLs do not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The task serving the API failed (panicked or was cancelled).
    #[error("api task: {0}")]
    Task(String),
}

/// Why a member could not learn the cluster it joins from the members in
/// `--initial-cluster`.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `--initial-cluster` does not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No runtime to ask with.
    #[error("cannot start a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The peer TLS files do not load.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Nobody answered: each URL asked (every round) with its answer.
    #[error("no member of --initial-cluster answered: {}", answers(.0))]
    NoAnswer(Vec<(String, PeerError)>),
    /// The cluster answered but does not know this member's peer URLs.
    #[error(
        "the cluster has no member with peer URLs {urls}; add it first \
         (etcdctl member add {name} --peer-urls={urls})"
    )]
    NotAdded {
        /// This member's name.
        name: String,
        /// Its advertised peer URLs, comma-separated.
        urls: String,
    },
}

fn answers(tried: &[(String, PeerError)]) -> String {
    tried
        .iter()
        .map(|(url, e)| format!("{url}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A member stopped on a fatal error (see [`crate::fatal`]): its
/// System ended with a nonzero code, which `main` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped with code {code}")]
pub struct MemberStopped {
    /// The System's exit code.
    pub code: i32,
}

/// The gRPC metadata key a member's peer service sets when it refuses the
/// caller for good: the caller decides on this, never on the message text.
pub const PEER_REFUSAL_KEY: &str = "metastore-peer-refusal";

/// Why a call on the peer port failed, as the calling member sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The receiver removed the caller from the cluster (etcd's words).
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    /// The receiver belongs to another cluster.
    #[error("etcdserver: cluster ID mismatch")]
    ClusterMismatch,
    /// The receiver ended the stream without an error.
    #[error("closed by the peer")]
    Closed,
    /// No connection to the receiver.
    #[error("connect: {0}")]
    Connect(String),
    /// The call ended with another status.
    #[error("{message} ({code:?})")]
    Status {
        /// The status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// Something on this side failed (building or reading an image).
    #[error("{0}")]
    Local(String),
}

impl PeerError {
    /// The refusal value of [`PEER_REFUSAL_KEY`] for this error, if it is one.
    fn refusal(&self) -> Option<&'static str> {
        match self {
            PeerError::Removed => Some("removed"),
            PeerError::ClusterMismatch => Some("cluster-mismatch"),
            _ => None,
        }
    }

    /// What a caller got back: a refusal by its metadata, anything else by
    /// its code and message.
    pub fn from_status(status: &Status) -> PeerError {
        let refusal = status
            .metadata()
            .get(PEER_REFUSAL_KEY)
            .and_then(|v| v.to_str().ok());
        match refusal {
            Some("removed") => PeerError::Removed,
            Some("cluster-mismatch") => PeerError::ClusterMismatch,
            _ => PeerError::Status {
                code: status.code(),
                message: status.message().to_owned(),
            },
        }
    }

    /// A failure on this side.
    pub fn local(e: impl std::fmt::Display) -> PeerError {
        PeerError::Local(e.to_string())
    }
}

/// The peer service's refusals go on the wire with their etcd message and a
/// [`PEER_REFUSAL_KEY`] entry; other variants never leave the caller.
impl From<PeerError> for Status {
    fn from(e: PeerError) -> Status {
        let mut status = match &e {
            PeerError::Removed => Status::permission_denied(e.to_string()),
            PeerError::ClusterMismatch => Status::failed_precondition(e.to_string()),
            PeerError::Status { code, message } => Status::new(*code, message.clone()),
            _ => Status::unavailable(e.to_string()),
        };
        if let Some(refusal) = e.refusal() {
            status.metadata_mut().insert(
                PEER_REFUSAL_KEY,
                tonic::metadata::MetadataValue::from_static(refusal),
            );
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every named error survives the peer port as itself; the same words
    /// without the name are not recognized (no decision on remote text).
    #[test]
    fn api_errors_travel_between_members_by_name() {
        for e in ApiError::known() {
            let status = e.clone().into_peer_status();
            assert_eq!(status.message(), e.to_string());
            assert_eq!(ApiError::from_status(&status), e);
        }
        let lookalike = Status::from(ApiError::NoLeader);
        assert_eq!(
            ApiError::from_status(&lookalike),
            ApiError::Internal("no leader".into())
        );
    }

    /// A refusal survives the wire as a refusal; a status that merely says
    /// the same words does not (no decision on a remote error's text).
    #[test]
    fn peer_refusals_travel_as_metadata_not_text() {
        for e in [PeerError::Removed, PeerError::ClusterMismatch] {
            let status = Status::from(e.clone());
            assert_eq!(status.message(), e.to_string());
            assert_eq!(PeerError::from_status(&status), e);
        }
        let lookalike = Status::permission_denied(PeerError::Removed.to_string());
        assert!(matches!(
            PeerError::from_status(&lookalike),
            PeerError::Status {
                code: Code::PermissionDenied,
                ..
            }
        ));
    }
}
