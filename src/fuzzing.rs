//! Entry points for `cargo fuzz` (the `fuzz/` crate), compiled only with the `fuzzing` feature:
//! the parsers that read untrusted or damaged input, reached without widening the product's
//! API. Whatever the bytes, each must return (an error is fine) and never panic.
use std::path::Path;

use crate::config::{self, Environment};
use crate::envelope;
use crate::keys::{Registry, Store};

/// KMS v2 Decrypt/Encrypt requests (first byte: which), decoded and validated as the service
/// does before OpenBao is asked anything; a valid Decrypt's ciphertext then goes through the
/// Transit ciphertext check the provider runs (`kms` itself knows nothing of OpenBao).
pub fn kms_request(data: &[u8]) {
    if let Some(ciphertext) = crate::kms::fuzz_request(data) {
        if let Ok(text) = std::str::from_utf8(&ciphertext) {
            let _ = crate::openbao::ciphertext_version(text);
        }
    }
}

/// An etcd value as kube-apiserver would hand it to the restore drill: prefix, protobuf
/// `EncryptedObject`, kube-apiserver's validation; and the protobuf alone.
pub fn etcd_value(data: &[u8]) {
    let _ = envelope::Envelope::parse(data, "openbao-kms");
    if let Ok(o) = envelope::decode(data) {
        // `encode` validates first, as kube-apiserver's write path does.
        let _ = envelope::encode("openbao-kms", &o);
    }
}

/// The key registry file and its integrity check (hash, format, scope, generation witness).
/// Random bytes rarely carry a matching SHA-256, so bytes that parse as a registry body are
/// also sealed with a correct hash, to reach the checks behind it.
pub fn key_registry(data: &[u8]) {
    let store = Store::open_readonly(Path::new("/nonexistent/fuzz"), "fuzz-scope");
    let _ = store.check(data, None);
    let _ = store.check(data, Some(3));
    if let Ok(registry) = serde_json::from_slice::<Registry>(data) {
        for scope in ["fuzz-scope", "other-scope"] {
            if let Some(sealed) = Store::seal_for_fuzzing(scope, 2, &registry) {
                let _ = store.check(&sealed, Some(2));
                let _ = store.check(&sealed, Some(3));
            }
        }
    }
}

/// The config loader: TOML parse (deny_unknown_fields) and `validate`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = config::parse(text, Path::new("/etc/openbao-kms/fuzz.toml")) {
        let env = Environment {
            credentials_directory: Some("/run/credentials/fuzz".into()),
        };
        let _ = config::validate(&raw, &env);
        let _ = config::validate(&raw, &Environment::default());
        let _ = config::render_effective(&raw);
    }
}

/// OpenBao's answers: key metadata, encrypt/decrypt data, login and lookup, mounts, errors.
pub fn openbao_response(data: &[u8]) {
    crate::openbao::fuzz_decoders(data);
}

/// HTTP/2 frames from a client on the KMS socket: header blocks decoded against the client's
/// HPACK table and re-encoded with any `:authority` accepted (first byte: read size).
pub fn http2_frames(data: &[u8]) {
    crate::kms::fuzz_frames(data);
}
