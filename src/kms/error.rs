//! KMS errors and their single mapping to gRPC status codes. The backend's errors are
//! translated into these by the provider; this module knows no backend.
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub(crate) enum KmsError {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("unknown key_id: this provider never issued it")]
    UnknownKeyId,
    #[error("not ready: {0}")]
    FailedPrecondition(String),
    /// The key backend is down or overloaded; the message names it.
    #[error("{0}")]
    Unavailable(String),
    /// The provider could not authenticate to its key backend; the message names it.
    #[error("{0}")]
    Unauthenticated(String),
    /// The key backend refused the provider; the message names it.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl KmsError {
    pub(crate) fn class(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::UnknownKeyId => "unknown_key_id",
            Self::FailedPrecondition(_) => "not_ready",
            Self::Unavailable(_) => "unavailable",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Internal(_) => "internal",
        }
    }

    pub(crate) fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::UnknownKeyId => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<KmsError> for Status {
    fn from(e: KmsError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
