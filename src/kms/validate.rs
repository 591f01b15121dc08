//! The KMS v2 input rules, checked in one place before a `KeyService` sees a request.
use std::collections::HashMap;

use super::{
    DecryptInput, EncryptReply, KmsError, ANNOTATION_KEY_VERSION, MAX_ANNOTATIONS_BYTES,
    MAX_CIPHERTEXT_BYTES, MAX_KEY_ID_BYTES, MAX_PLAINTEXT_BYTES,
};

fn invalid<T>(message: String) -> Result<T, KmsError> {
    Err(KmsError::InvalidArgument(message))
}

/// Encrypt: 1 to `MAX_PLAINTEXT_BYTES` of plaintext.
pub(super) fn plaintext(plaintext: &[u8]) -> Result<(), KmsError> {
    if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT_BYTES {
        return invalid(format!(
            "plaintext must be 1 to {MAX_PLAINTEXT_BYTES} bytes, got {}",
            plaintext.len()
        ));
    }
    Ok(())
}

/// Encrypt's answer must fit what the apiserver stores.
pub(super) fn encrypt_reply(reply: &EncryptReply) -> Result<(), KmsError> {
    if reply.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
        return Err(KmsError::Internal(
            "Transit ciphertext exceeds the 1 KiB KMS limit".into(),
        ));
    }
    Ok(())
}

/// Decrypt: the sizes of ciphertext, key_id and annotations.
pub(super) fn decrypt_input(input: &DecryptInput) -> Result<(), KmsError> {
    if input.ciphertext.is_empty() || input.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
        return invalid(format!(
            "ciphertext must be 1 to {MAX_CIPHERTEXT_BYTES} bytes, got {}",
            input.ciphertext.len()
        ));
    }
    if input.key_id.is_empty() || input.key_id.len() > MAX_KEY_ID_BYTES {
        return invalid(format!("key_id must be 1 to {MAX_KEY_ID_BYTES} bytes"));
    }
    let annotation_bytes: usize = input
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotation_bytes > MAX_ANNOTATIONS_BYTES {
        return invalid(format!("annotations exceed {MAX_ANNOTATIONS_BYTES} bytes"));
    }
    Ok(())
}

impl DecryptInput {
    /// The key version the annotations claim; only `ANNOTATION_KEY_VERSION` may be present.
    /// Called by the service once it knows the key_id, so an unknown key_id is reported first.
    pub(crate) fn claimed_key_version(&self) -> Result<Option<u32>, KmsError> {
        if let Some(k) = self
            .annotations
            .keys()
            .find(|k| k.as_str() != ANNOTATION_KEY_VERSION)
        {
            return invalid(format!("unexpected annotation {k:?}"));
        }
        let claimed = self
            .annotations
            .get(ANNOTATION_KEY_VERSION)
            .ok_or_else(|| {
                KmsError::InvalidArgument(format!("annotation {ANNOTATION_KEY_VERSION} is missing"))
            })?;
        Ok(std::str::from_utf8(claimed)
            .ok()
            .and_then(|s| s.parse::<u32>().ok()))
    }
}

/// The annotations Encrypt attaches for `version`.
pub(crate) fn key_version_annotation(version: u32) -> HashMap<String, Vec<u8>> {
    HashMap::from([(
        ANNOTATION_KEY_VERSION.to_owned(),
        version.to_string().into_bytes(),
    )])
}
