//! key_id derivation: public, stable, opaque. A hash over everything that identifies one Transit
//! key version, so it changes exactly when the version changes and reveals no names.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Versioned prefix: a future derivation gets a new prefix instead of colliding with this one.
pub(crate) const KEY_ID_PREFIX: &str = "obkms1-";

/// Everything except the version that a key_id is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyIdentity {
    pub(crate) provider_name: String,
    pub(crate) cluster_id: String,
    pub(crate) transit_mount_id: String,
    pub(crate) key_lineage_id: String,
    pub(crate) instance_id: String,
    pub(crate) namespace: String,
    pub(crate) mount_path: String,
    pub(crate) key_name: String,
}

impl KeyIdentity {
    fn hasher(&self, domain: &str) -> Sha256 {
        let mut h = Sha256::new();
        // Length-prefixed fields: no two different tuples hash the same input.
        for field in [
            domain,
            &self.provider_name,
            &self.cluster_id,
            &self.transit_mount_id,
            &self.key_lineage_id,
            &self.instance_id,
            &self.namespace,
            &self.mount_path,
            &self.key_name,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h
    }

    /// The key_id of one Transit key version, given its creation time from OpenBao.
    pub(crate) fn key_id(&self, version: u32, created_unix: i64) -> String {
        let mut h = self.hasher("bao-kms-provider key_id v1");
        h.update(version.to_be_bytes());
        h.update(created_unix.to_be_bytes());
        format!("{KEY_ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(h.finalize()))
    }

    /// A fingerprint of the scope alone, stored with the registry so that a config pointing the
    /// same state_dir at another key is caught.
    pub(crate) fn fingerprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.hasher("bao-kms-provider scope v1").finalize())
    }
}

/// Transit associated data for a key_id: binds a ciphertext to its key_id (scope and version).
/// Not a secret (the key_id is stored beside it), so only the policy keeps clusters apart.
pub fn associated_data(key_id: &str) -> Vec<u8> {
    let mut aad = b"bao-kms-provider/v1/".to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// A short, public form of a key_id for metrics labels and logs comparison across hosts.
pub fn short_hash(key_id: &str) -> String {
    let digest = Sha256::digest(key_id.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The key_id as kube-apiserver labels it in `apiserver_envelope_encryption_key_id_hash_*`
/// metrics: `sha256:` and the hex SHA-256 of the key_id, so the two can be joined.
pub(crate) fn apiserver_hash(key_id: &str) -> String {
    let digest = Sha256::digest(key_id.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> KeyIdentity {
        KeyIdentity {
            provider_name: "openbao-kms".into(),
            cluster_id: "prod-eu-1".into(),
            transit_mount_id: "transit-prod".into(),
            key_lineage_id: "lineage".into(),
            instance_id: "openbao-prod".into(),
            namespace: String::new(),
            mount_path: "transit".into(),
            key_name: "k8s-etcd".into(),
        }
    }

    #[test]
    fn key_id_is_stable_and_changes_with_version_creation_and_scope() {
        let a = identity();
        let id = a.key_id(1, 1_700_000_000);
        assert_eq!(id, a.key_id(1, 1_700_000_000));
        assert!(id.starts_with(KEY_ID_PREFIX) && id.len() < 64);
        assert_ne!(id, a.key_id(2, 1_700_000_000));
        assert_ne!(id, a.key_id(1, 1_700_000_001));
        let mut b = a.clone();
        b.cluster_id = "prod-eu-2".into();
        assert_ne!(id, b.key_id(1, 1_700_000_000));
        assert!(!id.contains("k8s-etcd") && !id.contains("prod"));
    }

    #[test]
    fn length_prefixing_separates_field_boundaries() {
        let mut a = identity();
        let mut b = identity();
        a.cluster_id = "ab".into();
        a.transit_mount_id = "c".into();
        b.cluster_id = "a".into();
        b.transit_mount_id = "bc".into();
        assert_ne!(a.key_id(1, 0), b.key_id(1, 0));
    }

    /// kube-apiserver's getHash: `fmt.Sprintf("sha256:%x", sha256(keyID))`.
    #[test]
    fn apiserver_hash_is_sha256_prefix_and_full_hex() {
        assert_eq!(
            apiserver_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(apiserver_hash("abc")[7..].starts_with(&short_hash("abc")));
    }
}
