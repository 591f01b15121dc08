//! The Kubernetes side: the KMS v2 gRPC contract on a unix socket. Handlers work on plain Rust
//! types behind `KeyService`; `service` adapts them to the generated protobuf types and maps
//! `KmsError` to gRPC codes in exactly one place.
pub mod client;
mod conn;
mod error;
mod server;
mod service;
mod validate;

use std::collections::HashMap;

pub(crate) use error::KmsError;
pub(crate) use server::serve;
pub use server::{bind_unix_socket, SocketError};
pub(crate) use service::{code_name, KmsAdapter};
pub(crate) use validate::key_version_annotation;

/// The only API version this plugin speaks; kube-apiserver pins the first value it sees.
pub(crate) const API_VERSION: &str = "v2";
/// The annotation Encrypt attaches and Decrypt requires: the Transit version of the ciphertext.
pub const ANNOTATION_KEY_VERSION: &str = "key-version.kms.openbao.org";
/// kube-apiserver limits (`ValidateEncryptedObject`), enforced on every KMS call before the
/// provider sees it and on every etcd envelope read (`envelope`).
pub(crate) const MAX_CIPHERTEXT_BYTES: usize = 1024;
pub(crate) const MAX_KEY_ID_BYTES: usize = 1024;
pub(crate) const MAX_ANNOTATIONS_BYTES: usize = 32 * 1024;
/// The apiserver sends a 32-byte seed; anything that would not fit a 1 KiB ciphertext is refused.
pub(crate) const MAX_PLAINTEXT_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusReply {
    pub(crate) healthz: String,
    pub(crate) key_id: String,
}

#[derive(Debug, Clone)]
pub(crate) struct EncryptReply {
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) key_id: String,
    pub(crate) annotations: HashMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
pub(crate) struct DecryptInput {
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) key_id: String,
    pub(crate) annotations: HashMap<String, Vec<u8>>,
}

/// What the provider does for kube-apiserver, free of protobuf types.
#[tonic::async_trait]
pub(crate) trait KeyService: Send + Sync + 'static {
    /// Served from memory: never calls OpenBao.
    fn status(&self) -> StatusReply;
    async fn encrypt(&self, plaintext: &[u8]) -> Result<EncryptReply, KmsError>;
    async fn decrypt(&self, input: DecryptInput) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError>;
}
