//! Transit and the small set of read-only OpenBao endpoints the provider uses.
use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::Error;

/// What `GET {mount}/keys/{key}` says about the key; `versions` maps version to creation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyMetadata {
    pub(crate) key_type: String,
    pub(crate) latest_version: u32,
    pub(crate) min_decryption_version: u32,
    pub(crate) min_encryption_version: u32,
    pub(crate) versions: BTreeMap<u32, i64>,
    pub(crate) exportable: bool,
    pub(crate) allow_plaintext_backup: bool,
    pub(crate) deletion_allowed: bool,
    pub(crate) derived: bool,
    pub(crate) convergent_encryption: bool,
    pub(crate) auto_rotate_period_seconds: u64,
}

#[cfg(test)]
impl KeyMetadata {
    /// A key as the required profile has it (`contract::KEY_PROFILE`), holding versions
    /// `min_decryption_version..=latest_version`: the starting point of unit tests.
    pub(crate) fn profile_key(latest_version: u32, min_decryption_version: u32) -> Self {
        Self {
            key_type: super::contract::KEY_PROFILE.key_type.into(),
            latest_version,
            min_decryption_version,
            min_encryption_version: 0,
            versions: (min_decryption_version..=latest_version)
                .map(|v| (v, 1000 + i64::from(v)))
                .collect(),
            exportable: false,
            allow_plaintext_backup: false,
            deletion_allowed: false,
            derived: false,
            convergent_encryption: false,
            auto_rotate_period_seconds: 0,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct DataBody<T> {
    pub(crate) data: T,
}

#[derive(Deserialize)]
pub(crate) struct RawKey {
    #[serde(rename = "type")]
    key_type: String,
    latest_version: u32,
    #[serde(default)]
    min_decryption_version: u32,
    #[serde(default)]
    min_encryption_version: u32,
    #[serde(default)]
    keys: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    exportable: bool,
    #[serde(default)]
    allow_plaintext_backup: bool,
    #[serde(default)]
    deletion_allowed: bool,
    #[serde(default)]
    derived: bool,
    #[serde(default)]
    convergent_encryption: bool,
    #[serde(default)]
    auto_rotate_period: serde_json::Value,
}

impl RawKey {
    pub(crate) fn into_metadata(self) -> Result<KeyMetadata, Error> {
        let mut versions = BTreeMap::new();
        for (v, created) in self.keys {
            let version: u32 = v
                .parse()
                .map_err(|_| Error::Protocol(format!("key version {v:?} is not a number")))?;
            versions.insert(version, creation_time(&created)?);
        }
        Ok(KeyMetadata {
            key_type: self.key_type,
            latest_version: self.latest_version,
            min_decryption_version: self.min_decryption_version,
            min_encryption_version: self.min_encryption_version,
            versions,
            exportable: self.exportable,
            allow_plaintext_backup: self.allow_plaintext_backup,
            deletion_allowed: self.deletion_allowed,
            derived: self.derived,
            convergent_encryption: self.convergent_encryption,
            auto_rotate_period_seconds: seconds(&self.auto_rotate_period),
        })
    }
}

/// Symmetric keys list versions as unix seconds; asymmetric ones as objects with `creation_time`.
fn creation_time(v: &serde_json::Value) -> Result<i64, Error> {
    if let Some(n) = v.as_i64() {
        return Ok(n);
    }
    v.get("creation_time")
        .and_then(|t| t.as_str())
        .and_then(|t| humantime::parse_rfc3339_weak(t.split('.').next().unwrap_or(t)).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .ok_or_else(|| Error::Protocol("key version without a creation time".into()))
}

fn seconds(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        serde_json::Value::String(s) => humantime::parse_duration(s)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        _ => 0,
    }
}

#[derive(Deserialize)]
pub(crate) struct EncryptData {
    pub(crate) ciphertext: String,
    #[serde(default)]
    pub(crate) key_version: u32,
}

#[derive(Deserialize)]
pub(crate) struct DecryptData {
    pub(crate) plaintext: Zeroizing<String>,
}

impl DecryptData {
    pub(crate) fn bytes(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        STANDARD
            .decode(self.plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| Error::Protocol("decrypt returned plaintext that is not base64".into()))
    }
}

/// The mount's identity; it changes when the mount is disabled and enabled again.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct MountInfo {
    #[serde(default)]
    pub(crate) uuid: String,
    #[serde(default)]
    pub(crate) accessor: String,
    #[serde(default, rename = "type")]
    pub(crate) mount_type: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct KeysConfig {
    #[serde(default)]
    pub(crate) disable_upsert: bool,
}

/// `vault:v<N>:...` -> N, so the version claimed by a ciphertext can be checked before decrypting.
pub(crate) fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (n, body) = rest.split_once(':')?;
    if body.is_empty() || n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// Health as `sys/health` reports it by status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerHealth {
    Active,
    Standby,
    Sealed,
    Uninitialized,
    Other(u16),
}

impl From<u16> for ServerHealth {
    fn from(code: u16) -> Self {
        match code {
            200 => Self::Active,
            429 | 472 | 473 => Self::Standby,
            503 => Self::Sealed,
            501 => Self::Uninitialized,
            c => Self::Other(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_version_parses_only_well_formed_prefixes() {
        assert_eq!(ciphertext_version("vault:v3:abc"), Some(3));
        assert_eq!(ciphertext_version("vault:v03:abc"), None);
        assert_eq!(ciphertext_version("vault:v3:"), None);
        assert_eq!(ciphertext_version("vault:vx:abc"), None);
        assert_eq!(ciphertext_version("v3:abc"), None);
    }
}
