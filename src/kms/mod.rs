//! The Kubernetes side: the KMS v2 gRPC contract on a unix socket. Handlers work on plain Rust
//! types behind `KeyService`; `service` adapts them to the generated protobuf types and maps
//! `KmsError` to gRPC codes in exactly one place.
pub mod client;
mod conn;
mod error;
mod server;
mod service;

use std::collections::HashMap;

pub use error::KmsError;
pub use server::{bind_unix_socket, serve, Limits, SocketError};
pub use service::{code_name, KmsAdapter};

/// The only API version this plugin speaks; kube-apiserver pins the first value it sees.
pub const API_VERSION: &str = "v2";
/// The annotation Encrypt attaches and Decrypt requires: the Transit version of the ciphertext.
pub const ANNOTATION_KEY_VERSION: &str = "key-version.kms.openbao.org";
/// kube-apiserver limits, enforced on input before OpenBao is asked anything.
pub const MAX_CIPHERTEXT_BYTES: usize = 1024;
pub const MAX_KEY_ID_BYTES: usize = 1024;
pub const MAX_ANNOTATIONS_BYTES: usize = 32 * 1024;
/// The apiserver sends a 32-byte seed; anything that would not fit a 1 KiB ciphertext is refused.
pub const MAX_PLAINTEXT_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReply {
    pub healthz: String,
    pub key_id: String,
}

#[derive(Debug, Clone)]
pub struct EncryptReply {
    pub ciphertext: Vec<u8>,
    pub key_id: String,
    pub annotations: HashMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct DecryptInput {
    pub ciphertext: Vec<u8>,
    pub key_id: String,
    pub annotations: HashMap<String, Vec<u8>>,
}

/// What the provider does for kube-apiserver, free of protobuf types.
#[tonic::async_trait]
pub trait KeyService: Send + Sync + 'static {
    /// Served from memory: never calls OpenBao.
    fn status(&self) -> StatusReply;
    async fn encrypt(&self, plaintext: &[u8]) -> Result<EncryptReply, KmsError>;
    async fn decrypt(&self, input: DecryptInput) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError>;
}
