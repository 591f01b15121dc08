//! AES-256-GCM over `encryptedData` in both DEK source modes, bit-compatible with kube-apiserver
//! (`aes.NewHKDFExtendedNonceGCMTransformer` and `aes.NewGCMTransformer`).
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::EnvelopeError;

/// Random per-write HKDF info, stored in front of the nonce (seed mode only).
pub(crate) const INFO_BYTES: usize = 32;
pub(crate) const NONCE_BYTES: usize = 12;
pub(crate) const TAG_BYTES: usize = 16;
/// AES-256 key size; also the seed size kube-apiserver generates.
pub(crate) const KEY_BYTES: usize = 32;

/// `EncryptedObject.encryptedDEKSourceType`: what the provider's plaintext is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DekSourceType {
    /// 0, before Kubernetes 1.29: the plaintext is the AES-256 DEK itself.
    AesGcmKey,
    /// 1, Kubernetes 1.29+: the plaintext is a seed; each write derives its own DEK.
    HkdfSha256XNonceAesGcmSeed,
}

impl DekSourceType {
    pub(crate) fn from_wire(v: i32) -> Option<Self> {
        match v {
            0 => Some(Self::AesGcmKey),
            1 => Some(Self::HkdfSha256XNonceAesGcmSeed),
            _ => None,
        }
    }

    pub(crate) fn wire(self) -> i32 {
        match self {
            Self::AesGcmKey => 0,
            Self::HkdfSha256XNonceAesGcmSeed => 1,
        }
    }

    /// The protobuf enum name, as operators see it in the Kubernetes source and docs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AesGcmKey => "AES_GCM_KEY",
            Self::HkdfSha256XNonceAesGcmSeed => "HKDF_SHA256_XNONCE_AES_GCM_SEED",
        }
    }
}

impl fmt::Display for DekSourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.wire())
    }
}

/// DEK = first 32 bytes of HKDF-Expand(SHA-256, PRK = seed, info). Expand only, like
/// kube-apiserver's `sha256KDFExpandOnly`: the seed is already uniform, so there is no Extract.
fn derive_dek(seed: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; KEY_BYTES]>, EnvelopeError> {
    let kind = DekSourceType::HkdfSha256XNonceAesGcmSeed;
    let hk = Hkdf::<Sha256>::from_prk(seed).map_err(|_| EnvelopeError::DekSourceLength {
        kind,
        len: seed.len(),
        need: "at least 32 bytes",
    })?;
    let mut dek = Zeroizing::new([0u8; KEY_BYTES]);
    // 32 bytes is far below HKDF's 255 * HashLen limit, so this cannot fail.
    hk.expand(info, dek.as_mut_slice())
        .map_err(|_| EnvelopeError::DekSourceLength {
            kind,
            len: seed.len(),
            need: "a usable HKDF PRK",
        })?;
    Ok(dek)
}

fn cipher(key: &[u8], kind: DekSourceType) -> Result<Aes256Gcm, EnvelopeError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| EnvelopeError::DekSourceLength {
        kind,
        len: key.len(),
        need: "exactly 32 bytes (AES-256)",
    })
}

/// Decrypts `nonce || ciphertext || tag` with `key` and the etcd key as additional data.
fn open_gcm(
    key: &[u8],
    kind: DekSourceType,
    data: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let c = cipher(key, kind)?;
    if data.len() < NONCE_BYTES + TAG_BYTES {
        return Err(EnvelopeError::DataTooShort {
            kind,
            len: data.len(),
            need: NONCE_BYTES + TAG_BYTES,
        });
    }
    let (nonce, ct) = data.split_at(NONCE_BYTES);
    c.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Authentication)
}

#[cfg(any(test, feature = "testkit"))]
fn seal_gcm(
    key: &[u8],
    kind: DekSourceType,
    nonce: &[u8; NONCE_BYTES],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let ct = cipher(key, kind)?
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| EnvelopeError::Invalid {
            field: "encryptedData",
            reason: "plaintext too long for AES-GCM".into(),
        })?;
    let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Seed mode: `encrypted_data` = info(32) || nonce(12) || ciphertext || tag(16).
pub(crate) fn open_with_seed(
    seed: &[u8],
    encrypted_data: &[u8],
    etcd_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let kind = DekSourceType::HkdfSha256XNonceAesGcmSeed;
    let need = INFO_BYTES + NONCE_BYTES + TAG_BYTES;
    if encrypted_data.len() < need {
        return Err(EnvelopeError::DataTooShort {
            kind,
            len: encrypted_data.len(),
            need,
        });
    }
    let (info, rest) = encrypted_data.split_at(INFO_BYTES);
    let dek = derive_dek(seed, info)?;
    open_gcm(dek.as_slice(), kind, rest, etcd_key)
}

/// Legacy mode: `encrypted_data` = nonce(12) || ciphertext || tag(16), `key` is the DEK.
pub(crate) fn open_with_key(
    key: &[u8],
    encrypted_data: &[u8],
    etcd_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    open_gcm(key, DekSourceType::AesGcmKey, encrypted_data, etcd_key)
}

#[cfg(any(test, feature = "testkit"))]
/// Seed mode write with caller-chosen info and nonce (random in `Writer`, fixed in tests).
pub(crate) fn seal_with_seed(
    seed: &[u8],
    info: &[u8; INFO_BYTES],
    nonce: &[u8; NONCE_BYTES],
    etcd_key: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let dek = derive_dek(seed, info)?;
    let sealed = seal_gcm(
        dek.as_slice(),
        DekSourceType::HkdfSha256XNonceAesGcmSeed,
        nonce,
        etcd_key,
        plaintext,
    )?;
    let mut out = Vec::with_capacity(INFO_BYTES + sealed.len());
    out.extend_from_slice(info);
    out.extend_from_slice(&sealed);
    Ok(out)
}

#[cfg(any(test, feature = "testkit"))]
/// Legacy mode write: the DEK is used directly.
pub(crate) fn seal_with_key(
    key: &[u8],
    nonce: &[u8; NONCE_BYTES],
    etcd_key: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    seal_gcm(key, DekSourceType::AesGcmKey, nonce, etcd_key, plaintext)
}

#[cfg(test)]
#[path = "crypto_tests.rs"]
mod tests;
