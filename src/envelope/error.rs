//! Envelope errors. Each says which check failed; none carries plaintext or key bytes.
use super::crypto::DekSourceType;

/// The class of a failure, for callers that map failures to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The value is stored in plaintext (no `k8s:enc:` prefix).
    NotEncrypted,
    /// Another KMS v2 provider name, or another `k8s:enc:` scheme.
    OtherProvider,
    /// Our prefix, but kube-apiserver would refuse the EncryptedObject itself.
    Malformed,
    /// Well-formed, but the data does not decrypt with the DEK source and the etcd key.
    DoesNotDecrypt,
    /// The caller passed something unusable (e.g. a provider name with `:`).
    BadArgument,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(
        "not encrypted: the value ({len} bytes, {looks_like}) does not start with \"k8s:enc:\""
    )]
    NotEncrypted {
        len: usize,
        looks_like: &'static str,
    },
    #[error(
        "encrypted with another scheme: the value starts with {scheme:?}, not \"k8s:enc:kms:v2:\""
    )]
    OtherScheme { scheme: String },
    #[error(
        "encrypted by another KMS v2 provider: the value names {found:?}, expected {expected:?}"
    )]
    OtherProvider { found: String, expected: String },
    #[error("the KMS v2 prefix has no ':' after the provider name")]
    UnterminatedPrefix,
    #[error("EncryptedObject does not decode as protobuf: {0}")]
    Decode(#[source] prost::DecodeError),
    #[error("EncryptedObject.{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the decrypted DEK source is {len} bytes; {kind} needs {need}")]
    DekSourceLength {
        kind: DekSourceType,
        len: usize,
        need: &'static str,
    },
    #[error("encryptedData is {len} bytes, shorter than the {need} bytes {kind} needs")]
    DataTooShort {
        kind: DekSourceType,
        len: usize,
        need: usize,
    },
    #[error("encryptedData does not decrypt: AES-GCM authentication failed (wrong DEK source, wrong etcd key as additional data, or altered bytes)")]
    Authentication,
    #[error("invalid provider name {0:?}: it must be non-empty and must not contain ':'")]
    ProviderName(String),
}

impl EnvelopeError {
    pub(crate) fn failure(&self) -> Failure {
        match self {
            Self::NotEncrypted { .. } => Failure::NotEncrypted,
            Self::OtherScheme { .. } | Self::OtherProvider { .. } => Failure::OtherProvider,
            Self::UnterminatedPrefix | Self::Decode(_) | Self::Invalid { .. } => Failure::Malformed,
            Self::DekSourceLength { .. } | Self::DataTooShort { .. } | Self::Authentication => {
                Failure::DoesNotDecrypt
            }
            Self::ProviderName(_) => Failure::BadArgument,
        }
    }
}

#[cfg(feature = "testkit")]
/// Errors of `Writer`, which talks to a provider the way kube-apiserver does.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("KMS {call} failed: {code}: {message}")]
    Kms {
        call: &'static str,
        code: &'static str,
        message: String,
    },
    #[error("KMS {call} timed out after {timeout:?}")]
    Timeout {
        call: &'static str,
        timeout: std::time::Duration,
    },
    #[error("provider is not healthy (healthz {0:?}); kube-apiserver does not write then")]
    Unhealthy(String),
    #[error("Encrypt returned key_id {encrypt:?} but Status reports {status:?}; kube-apiserver would discard the result")]
    KeyIdMismatch { status: String, encrypt: String },
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}
