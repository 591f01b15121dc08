//! The etcd envelope contract: what kube-apiserver stores for a KMS v2 provider, read and written
//! exactly as the API server does, so an operator can prove a stored value decrypts (restore drill)
//! and tests can write values without a kube-apiserver.
//!
//! Value = `k8s:enc:kms:v2:<provider>:` + protobuf `EncryptedObject`. The provider decrypts only
//! the DEK source; `encryptedData` is decrypted here with AES-256-GCM and the etcd key as AAD.
mod crypto;
mod error;
pub mod etcd;
mod parse;
#[cfg(feature = "testkit")]
mod writer;

pub use crypto::DekSourceType;
pub use error::EnvelopeError;
pub(crate) use error::Failure;
#[cfg(feature = "testkit")]
pub use error::WriteError;
pub(crate) use parse::{check_provider_name, Envelope};
pub use parse::{decode, encode};
/// Writes etcd values as kube-apiserver does; for tests only (feature `testkit`).
#[cfg(feature = "testkit")]
pub use writer::Writer;

/// Every encrypted value starts with this, whatever the scheme (aescbc, secretbox, kms, ...).
pub(crate) const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
/// KMS v2 values start with this, followed by the provider name and `:`.
pub(crate) const KMS_V2_PREFIX: &[u8] = b"k8s:enc:kms:v2:";
/// kube-apiserver limits checked on every read (`ValidateEncryptedObject`): the same KMS v2
/// limits the socket enforces, defined once in `kms`. The DEK source is the provider's ciphertext.
pub(crate) use crate::kms::MAX_CIPHERTEXT_BYTES as MAX_DEK_SOURCE_BYTES;
pub(crate) use crate::kms::{MAX_ANNOTATIONS_BYTES, MAX_KEY_ID_BYTES};

/// The full prefix kube-apiserver writes for `provider_name`.
pub(crate) fn prefix_for(provider_name: &str) -> Vec<u8> {
    let mut p = KMS_V2_PREFIX.to_vec();
    p.extend_from_slice(provider_name.as_bytes());
    p.push(b':');
    p
}
