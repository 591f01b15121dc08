//! Reading a raw etcd value: prefix, protobuf, and the checks kube-apiserver runs on every read
//! (`ValidateEncryptedObject`), so a value that passes here is one the API server would accept.
use std::collections::HashMap;

use prost::Message;
use zeroize::Zeroizing;

use super::crypto::{open_with_key, open_with_seed, DekSourceType};
use super::{
    prefix_for, EnvelopeError, ENCRYPTED_PREFIX, KMS_V2_PREFIX, MAX_ANNOTATIONS_BYTES,
    MAX_DEK_SOURCE_BYTES, MAX_KEY_ID_BYTES,
};
use crate::pb;

/// A KMS v2 value of our provider, decoded and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub(crate) provider_name: String,
    pub(crate) key_id: String,
    pub(crate) dek_source_type: DekSourceType,
    /// The provider's ciphertext of the seed (or legacy DEK); public, decrypted only by the provider.
    pub(crate) encrypted_dek_source: Vec<u8>,
    pub(crate) annotations: HashMap<String, Vec<u8>>,
    pub(crate) encrypted_data: Vec<u8>,
}

impl Envelope {
    /// Prefix, decode, validate: what kube-apiserver does before asking the provider anything.
    pub(crate) fn parse(value: &[u8], provider_name: &str) -> Result<Self, EnvelopeError> {
        let o = decode(classify(value, provider_name)?)?;
        let dek_source_type = validate(&o)?;
        Ok(Self {
            provider_name: provider_name.to_owned(),
            key_id: o.key_id,
            dek_source_type,
            encrypted_dek_source: o.encrypted_dek_source,
            annotations: o.annotations,
            encrypted_data: o.encrypted_data,
        })
    }

    #[cfg(any(test, feature = "testkit"))]
    /// The stored bytes: validated, encoded and prefixed (kube-apiserver's `doEncode`).
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let o = pb::EncryptedObject {
            encrypted_data: self.encrypted_data.clone(),
            key_id: self.key_id.clone(),
            encrypted_dek_source: self.encrypted_dek_source.clone(),
            annotations: self.annotations.clone(),
            encrypted_dek_source_type: self.dek_source_type.wire(),
        };
        encode(&self.provider_name, &o)
    }

    /// Decrypts `encryptedData` with the provider's plaintext and the etcd key as AAD.
    pub(crate) fn open(
        &self,
        dek_source: &[u8],
        etcd_key: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        match self.dek_source_type {
            DekSourceType::HkdfSha256XNonceAesGcmSeed => {
                open_with_seed(dek_source, &self.encrypted_data, etcd_key)
            }
            DekSourceType::AesGcmKey => open_with_key(dek_source, &self.encrypted_data, etcd_key),
        }
    }
}

pub(crate) fn check_provider_name(name: &str) -> Result<(), EnvelopeError> {
    if name.is_empty() || name.contains(':') {
        return Err(EnvelopeError::ProviderName(name.to_owned()));
    }
    Ok(())
}

/// Sorts a raw value into ours (returns the protobuf after the prefix) / plaintext / another
/// provider or scheme. Never echoes value bytes but the public prefix: plaintext is a Secret.
pub(crate) fn classify<'a>(
    value: &'a [u8],
    provider_name: &str,
) -> Result<&'a [u8], EnvelopeError> {
    check_provider_name(provider_name)?;
    let ours = prefix_for(provider_name);
    if let Some(body) = value.strip_prefix(ours.as_slice()) {
        return Ok(body);
    }
    if let Some(rest) = value.strip_prefix(KMS_V2_PREFIX) {
        let end = rest
            .iter()
            .take(256)
            .position(|b| *b == b':')
            .ok_or(EnvelopeError::UnterminatedPrefix)?;
        return Err(EnvelopeError::OtherProvider {
            found: printable(&rest[..end]),
            expected: provider_name.to_owned(),
        });
    }
    if let Some(rest) = value.strip_prefix(ENCRYPTED_PREFIX) {
        // `k8s:enc:<scheme>:<version>:<name>:` for every transformer kube-apiserver has.
        let mut end = 0;
        for _ in 0..3 {
            match rest[end..].iter().take(128).position(|b| *b == b':') {
                Some(p) => end += p + 1,
                None => break,
            }
        }
        return Err(EnvelopeError::OtherScheme {
            scheme: format!("k8s:enc:{}", printable(&rest[..end])),
        });
    }
    let looks_like = if value.is_empty() {
        "empty"
    } else if value.starts_with(b"k8s\x00") {
        "Kubernetes protobuf"
    } else if value.starts_with(b"{") {
        "JSON"
    } else {
        "unrecognised bytes"
    };
    Err(EnvelopeError::NotEncrypted {
        len: value.len(),
        looks_like,
    })
}

/// Public prefix bytes, made safe to print.
fn printable(b: &[u8]) -> String {
    b.iter()
        .take(128)
        .map(|c| {
            if c.is_ascii_graphic() {
                *c as char
            } else {
                '?'
            }
        })
        .collect()
}

pub fn decode(body: &[u8]) -> Result<pb::EncryptedObject, EnvelopeError> {
    pb::EncryptedObject::decode(body).map_err(EnvelopeError::Decode)
}

/// The checks of kube-apiserver's `ValidateEncryptedObject`, in its order.
pub(crate) fn validate(o: &pb::EncryptedObject) -> Result<DekSourceType, EnvelopeError> {
    let invalid = |field, reason: String| EnvelopeError::Invalid { field, reason };
    let kind = DekSourceType::from_wire(o.encrypted_dek_source_type).ok_or_else(|| {
        invalid(
            "encryptedDEKSourceType",
            format!(
                "unknown type {} (known: 0 AES_GCM_KEY, 1 HKDF_SHA256_XNONCE_AES_GCM_SEED)",
                o.encrypted_dek_source_type
            ),
        )
    })?;
    if o.encrypted_data.is_empty() {
        return Err(invalid("encryptedData", "is empty".into()));
    }
    check_size(
        "encryptedDEKSource",
        o.encrypted_dek_source.len(),
        MAX_DEK_SOURCE_BYTES,
    )?;
    check_size("keyID", o.key_id.len(), MAX_KEY_ID_BYTES)?;
    let mut total = 0usize;
    for (k, v) in &o.annotations {
        check_fqdn(k).map_err(|reason| invalid("annotations", format!("key {k:?}: {reason}")))?;
        total += k.len() + v.len();
    }
    if total > MAX_ANNOTATIONS_BYTES {
        return Err(invalid(
            "annotations",
            format!("keys and values are {total} bytes, over the limit of {MAX_ANNOTATIONS_BYTES}"),
        ));
    }
    Ok(kind)
}

fn check_size(field: &'static str, len: usize, max: usize) -> Result<(), EnvelopeError> {
    let reason = if len == 0 {
        "is empty".to_owned()
    } else if len > max {
        format!("is {len} bytes, over the limit of {max}")
    } else {
        return Ok(());
    };
    Err(EnvelopeError::Invalid { field, reason })
}

/// apimachinery's `IsFullyQualifiedDomainName`: a lowercase DNS-1123 subdomain with at least
/// two labels (one trailing dot allowed).
fn check_fqdn(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.len() > 253 {
        return Err("must be at most 253 characters".into());
    }
    let labels: Vec<&str> = n.split('.').collect();
    if labels.len() < 2 {
        return Err(
            "must be a fully qualified domain name with at least one dot (e.g. key-version.kms.openbao.org)"
                .into(),
        );
    }
    for l in labels {
        let ok_chars = l
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if l.is_empty() || l.len() > 63 || !ok_chars || l.starts_with('-') || l.ends_with('-') {
            return Err(format!(
                "label {l:?} is not a DNS-1123 label (1-63 lowercase letters, digits or '-', starting and ending alphanumeric)"
            ));
        }
    }
    Ok(())
}

/// Validates and encodes with the provider prefix.
pub fn encode(provider_name: &str, o: &pb::EncryptedObject) -> Result<Vec<u8>, EnvelopeError> {
    check_provider_name(provider_name)?;
    validate(o)?;
    let mut out = prefix_for(provider_name);
    o.encode(&mut out).map_err(|e| EnvelopeError::Invalid {
        field: "EncryptedObject",
        reason: e.to_string(),
    })?;
    Ok(out)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
