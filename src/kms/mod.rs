//! The Kubernetes side: the KMS v2 gRPC contract on a unix socket. Handlers work on plain Rust
//! types behind `KeyService`; `service` adapts them to the generated protobuf types and maps
//! `KmsError` to gRPC codes in exactly one place.
mod authority;
pub mod client;
mod conn;
mod error;
mod goaway;
mod linger;
mod server;
mod service;
mod validate;

use std::collections::HashMap;

pub(crate) use error::KmsError;
pub use server::{bind_unix_socket, SocketError};
pub(crate) use server::{serve, Limits};
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

/// Decrypt and Encrypt requests as the service sees them (decoded by prost, as tonic does), run
/// through the input rules (`cargo fuzz`, fuzz/, through `fuzzing::kms_request`). Returns the
/// ciphertext of a Decrypt request that passed them, for the checks the provider runs next.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_request(data: &[u8]) -> Option<Vec<u8>> {
    use prost::Message;
    let (kind, wire) = data.split_first()?;
    if kind & 1 == 0 {
        if let Ok(req) = crate::pb::EncryptRequest::decode(wire) {
            let _ = clip(&req.uid);
            let _ = validate::plaintext(&req.plaintext);
        }
        return None;
    }
    let req = crate::pb::DecryptRequest::decode(wire).ok()?;
    let _ = (clip(&req.uid), clip(&req.key_id));
    let input = DecryptInput {
        ciphertext: req.ciphertext,
        key_id: req.key_id,
        annotations: req.annotations,
    };
    validate::decrypt_input(&input).ok()?;
    let _ = input.claimed_key_version().map_err(|e| e.to_string());
    Some(input.ciphertext)
}

#[cfg(feature = "fuzzing")]
pub(crate) use authority::fuzz_frames;

/// Longest client-supplied string (uid, key_id, annotation key) echoed into a log line,
/// metric or error message: a hostile or broken client cannot flood the journal.
pub(crate) const MAX_ECHO_BYTES: usize = 128;

/// `s` cut to `MAX_ECHO_BYTES` at a character boundary, marked with its full length if cut.
pub(crate) fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_ECHO_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut cut = MAX_ECHO_BYTES;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…({} bytes)", &s[..cut], s.len()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_strings_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(clip("uid-1"), "uid-1");
        let long = "é".repeat(100); // 200 bytes, 2 per char
        let c = clip(&long);
        assert!(
            c.starts_with(&"é".repeat(64)) && c.ends_with("…(200 bytes)"),
            "{c}"
        );
        assert!(c.len() < MAX_ECHO_BYTES + 20);
    }
}
