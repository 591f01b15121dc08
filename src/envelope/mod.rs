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
mod writer;

pub use crypto::{
    open_with_key, open_with_seed, seal_with_key, seal_with_seed, DekSourceType, INFO_BYTES,
    KEY_BYTES, NONCE_BYTES, TAG_BYTES,
};
pub use error::{EnvelopeError, Failure, WriteError};
pub use parse::{classify, decode, encode, validate, Envelope};
pub use writer::Writer;

/// Every encrypted value starts with this, whatever the scheme (aescbc, secretbox, kms, ...).
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
/// KMS v2 values start with this, followed by the provider name and `:`.
pub const KMS_V2_PREFIX: &[u8] = b"k8s:enc:kms:v2:";
/// kube-apiserver limits checked on every read (`ValidateEncryptedObject`).
pub const MAX_DEK_SOURCE_BYTES: usize = 1024;
pub const MAX_KEY_ID_BYTES: usize = 1024;
pub const MAX_ANNOTATIONS_BYTES: usize = 32 * 1024;

/// The full prefix kube-apiserver writes for `provider_name`.
pub fn prefix_for(provider_name: &str) -> Vec<u8> {
    let mut p = KMS_V2_PREFIX.to_vec();
    p.extend_from_slice(provider_name.as_bytes());
    p.push(b':');
    p
}
