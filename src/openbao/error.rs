//! OpenBao failures, classified by what the caller can do about them.
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot reach OpenBao: {0}")]
    Unreachable(String),
    #[error("OpenBao did not answer within {0:?}")]
    Timeout(Duration),
    #[error("OpenBao is sealed or has no active node (503)")]
    Sealed,
    #[error("OpenBao is rate limiting requests (429)")]
    RateLimited,
    #[error("OpenBao denied the request (403): {0}")]
    PermissionDenied(String),
    #[error("OpenBao: not found (404): {0}")]
    NotFound(String),
    #[error("OpenBao rejected the request (400): {0}")]
    BadRequest(String),
    #[error("OpenBao answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("OpenBao response is larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("unexpected OpenBao response: {0}")]
    Protocol(String),
    #[error("cannot read {what} {}: {source}", path.display())]
    Credential {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A setting the client cannot use, named as in the config file.
    #[error("config field `{field}`: {reason}")]
    Setting {
        field: &'static str,
        reason: &'static str,
    },
    #[error("no valid token: {0}")]
    NoToken(String),
    /// The auth method refused the credential (an expired or wrong JWT, an unknown certificate).
    #[error("OpenBao refused the login: {0}")]
    LoginRefused(String),
    /// `openbao.max_connections` requests are in flight and none finished within the budget.
    #[error("too many OpenBao requests in flight (openbao.max_connections = {0})")]
    Overloaded(usize),
    /// The call's budget left does not cover what the node has needed to answer lately (or
    /// its rate-limit backoff and that); the request was not sent.
    #[error("OpenBao has needed {needed:?} to answer lately and only {left:?} of this call's budget is left; not sent")]
    DeadlineTooShort { left: Duration, needed: Duration },
    /// A redirect to an origin that is not one of the configured nodes; never followed.
    #[error("OpenBao redirected to {0}, which is not a configured openbao.address; not followed")]
    RedirectRefused(String),
    /// The client key's token: module, login, key lookup or a signature (timeout, removal).
    #[error(transparent)]
    Pkcs11(#[from] super::Pkcs11Error),
}

/// Errors are shared by every waiter of one login; `io::Error` is not `Clone`, so that one
/// variant is rebuilt from its kind and message.
impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Self::Unreachable(m) => Self::Unreachable(m.clone()),
            Self::Timeout(d) => Self::Timeout(*d),
            Self::Sealed => Self::Sealed,
            Self::RateLimited => Self::RateLimited,
            Self::PermissionDenied(m) => Self::PermissionDenied(m.clone()),
            Self::NotFound(m) => Self::NotFound(m.clone()),
            Self::BadRequest(m) => Self::BadRequest(m.clone()),
            Self::Server { status, message } => Self::Server {
                status: *status,
                message: message.clone(),
            },
            Self::ResponseTooLarge(n) => Self::ResponseTooLarge(*n),
            Self::Protocol(m) => Self::Protocol(m.clone()),
            Self::Credential { what, path, source } => Self::Credential {
                what,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Self::Tls(m) => Self::Tls(m.clone()),
            Self::Setting { field, reason } => Self::Setting { field, reason },
            Self::NoToken(m) => Self::NoToken(m.clone()),
            Self::LoginRefused(m) => Self::LoginRefused(m.clone()),
            Self::Overloaded(n) => Self::Overloaded(*n),
            Self::DeadlineTooShort { left, needed } => Self::DeadlineTooShort {
                left: *left,
                needed: *needed,
            },
            Self::RedirectRefused(m) => Self::RedirectRefused(m.clone()),
            Self::Pkcs11(e) => Self::Pkcs11(e.clone()),
        }
    }
}

/// A short, bounded-cardinality class of an [`Error`]: what callers decide on, and (through
/// [`ErrorClass::as_str`]) the `error_class` log field and the `status` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    Unreachable,
    Timeout,
    Sealed,
    RateLimited,
    PermissionDenied,
    NotFound,
    BadRequest,
    ServerError,
    Protocol,
    /// A credential, TLS material or setting on this host is wrong.
    LocalSetup,
    /// No token, or the login was refused.
    Auth,
    Overloaded,
    DeadlineTooShort,
    RedirectRefused,
    Pkcs11,
}

impl ErrorClass {
    /// The label text in logs and metrics.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Sealed => "sealed",
            Self::RateLimited => "rate_limited",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::ServerError => "server_error",
            Self::Protocol => "protocol",
            Self::LocalSetup => "local_setup",
            Self::Auth => "auth",
            Self::Overloaded => "overloaded",
            Self::DeadlineTooShort => "deadline_too_short",
            Self::RedirectRefused => "redirect_refused",
            Self::Pkcs11 => "pkcs11",
        }
    }

    /// A failed login, whatever request met it: the credential or this host's setup.
    pub(crate) const fn is_login(self) -> bool {
        matches!(self, Self::Auth | Self::LocalSetup)
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The error's class, for callers' decisions, logs and metrics.
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            Self::Unreachable(_) => ErrorClass::Unreachable,
            Self::Timeout(_) => ErrorClass::Timeout,
            Self::Sealed => ErrorClass::Sealed,
            Self::RateLimited => ErrorClass::RateLimited,
            Self::PermissionDenied(_) => ErrorClass::PermissionDenied,
            Self::NotFound(_) => ErrorClass::NotFound,
            Self::BadRequest(_) => ErrorClass::BadRequest,
            Self::Server { .. } => ErrorClass::ServerError,
            Self::ResponseTooLarge(_) | Self::Protocol(_) => ErrorClass::Protocol,
            Self::Credential { .. } | Self::Tls(_) | Self::Setting { .. } => ErrorClass::LocalSetup,
            Self::NoToken(_) | Self::LoginRefused(_) => ErrorClass::Auth,
            Self::Overloaded(_) => ErrorClass::Overloaded,
            Self::DeadlineTooShort { .. } => ErrorClass::DeadlineTooShort,
            Self::RedirectRefused(_) => ErrorClass::RedirectRefused,
            Self::Pkcs11(_) => ErrorClass::Pkcs11,
        }
    }

    /// True when OpenBao itself (or the way to it) is down, as opposed to refusing the request.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_)
                | Self::Timeout(_)
                | Self::Sealed
                | Self::RateLimited
                | Self::Server { .. }
                | Self::Overloaded(_)
                | Self::DeadlineTooShort { .. }
        )
    }

    /// Worth trying on another node (or once more): the node is down, slow, sealed, a standby
    /// without an active node, rate limiting, or failing with a 5xx.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_) | Self::Timeout(_) | Self::Sealed | Self::RateLimited
        ) || matches!(self, Self::Server { status, .. } if *status >= 500)
    }
}
