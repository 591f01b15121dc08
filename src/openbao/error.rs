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
    #[error("no valid token: {0}")]
    NoToken(String),
    /// The client key's token: module, login, key lookup or a signature (timeout, removal).
    #[error(transparent)]
    Pkcs11(#[from] super::Pkcs11Error),
}

impl Error {
    /// A short, bounded-cardinality class for logs and metrics.
    pub(crate) fn class(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::Sealed => "sealed",
            Self::RateLimited => "rate_limited",
            Self::PermissionDenied(_) => "permission_denied",
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::Server { .. } => "server_error",
            Self::ResponseTooLarge(_) | Self::Protocol(_) => "protocol",
            Self::Credential { .. } | Self::Tls(_) => "local_setup",
            Self::NoToken(_) => "auth",
            Self::Pkcs11(_) => "pkcs11",
        }
    }
}
