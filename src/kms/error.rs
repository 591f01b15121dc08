//! KMS errors and their single mapping to gRPC status codes.
use tonic::{Code, Status};

use crate::openbao;

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("unknown key_id: this provider never issued it")]
    UnknownKeyId,
    #[error("not ready: {0}")]
    FailedPrecondition(String),
    #[error("OpenBao unavailable: {0}")]
    Unavailable(String),
    #[error("OpenBao authentication failed: {0}")]
    Unauthenticated(String),
    #[error("OpenBao permission denied: {0}")]
    PermissionDenied(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl KmsError {
    pub fn class(&self) -> &'static str {
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

    pub fn code(&self) -> Code {
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

impl From<openbao::Error> for KmsError {
    fn from(e: openbao::Error) -> Self {
        use openbao::Error as E;
        match e {
            E::Unreachable(_) | E::Timeout(_) | E::Sealed | E::RateLimited | E::Server { .. } => {
                Self::Unavailable(e.to_string())
            }
            // Wrong AAD or a tampered ciphertext: the caller's data is bad, not OpenBao.
            E::BadRequest(_) => Self::InvalidArgument(e.to_string()),
            E::PermissionDenied(_) => Self::PermissionDenied(e.to_string()),
            E::NoToken(_) | E::Credential { .. } => Self::Unauthenticated(e.to_string()),
            // The token may come back (re-inserted, unhung); the caller should retry.
            E::Pkcs11(_) => Self::Unavailable(e.to_string()),
            E::NotFound(_) | E::ResponseTooLarge(_) | E::Protocol(_) | E::Tls(_) => {
                Self::Internal(e.to_string())
            }
        }
    }
}
