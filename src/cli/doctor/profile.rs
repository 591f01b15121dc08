//! The Transit key profile the provider relies on, and what to do when a key differs from it.
use crate::openbao::contract::KEY_PROFILE;
use crate::openbao::KeyMetadata;

/// The only key type the provider encrypts with.
pub(crate) const KEY_TYPE: &str = KEY_PROFILE.key_type;

/// Problems with the key's settings, each with its consequence and fix. Empty means the
/// profile is right.
pub(crate) fn problems(meta: &KeyMetadata, mount: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    if meta.key_type != KEY_TYPE {
        out.push(format!(
            "type is {:?}, expected {KEY_TYPE:?} (create a new key of that type)",
            meta.key_type
        ));
    }
    if meta.exportable != KEY_PROFILE.exportable {
        out.push(
            "exportable=true: the key material can be exported and this cannot be turned off \
             (create a new, non-exportable key)"
                .into(),
        );
    }
    if meta.allow_plaintext_backup != KEY_PROFILE.allow_plaintext_backup {
        out.push(
            "allow_plaintext_backup=true: a backup holds the key in plaintext and this cannot be \
             turned off (create a new key)"
                .into(),
        );
    }
    if meta.deletion_allowed != KEY_PROFILE.deletion_allowed {
        out.push(format!(
            "deletion_allowed=true: one DELETE destroys every Secret (fix: bao write \
             {mount}/keys/{key}/config deletion_allowed=false)"
        ));
    }
    if meta.derived != KEY_PROFILE.derived {
        out.push("derived=true: needs a per-call context the provider does not send".into());
    }
    if meta.convergent_encryption != KEY_PROFILE.convergent_encryption {
        out.push(
            "convergent_encryption=true: equal plaintexts would give equal ciphertexts".into(),
        );
    }
    out
}

/// One-line summary of a good key.
pub(crate) fn summary(meta: &KeyMetadata, mount: &str, key: &str) -> String {
    let rotate = if meta.auto_rotate_period_seconds > 0 {
        format!(
            ", auto-rotates every {}",
            humantime::format_duration(std::time::Duration::from_secs(
                meta.auto_rotate_period_seconds
            ))
        )
    } else {
        String::new()
    };
    format!(
        "{mount}/keys/{key}: {}, latest version {}, min_decryption_version {}, not exportable, \
         no plaintext backup, deletion not allowed, not derived, not convergent{rotate}",
        meta.key_type, meta.latest_version, meta.min_decryption_version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> KeyMetadata {
        KeyMetadata::profile_key(2, 1)
    }

    #[test]
    fn the_lab_profile_has_no_problems() {
        assert!(problems(&good(), "transit", "k").is_empty());
        assert!(summary(&good(), "transit", "k").contains("latest version 2"));
    }

    #[test]
    fn every_deviation_is_named() {
        let mut m = good();
        m.key_type = "chacha20-poly1305".into();
        m.exportable = true;
        m.allow_plaintext_backup = true;
        m.deletion_allowed = true;
        m.derived = true;
        m.convergent_encryption = true;
        let p = problems(&m, "transit", "k");
        assert_eq!(p.len(), 6, "{p:?}");
        for word in [
            "type",
            "exportable",
            "allow_plaintext_backup",
            "deletion_allowed=true",
            "derived",
            "convergent",
        ] {
            assert!(p.iter().any(|l| l.contains(word)), "{word} in {p:?}");
        }
        assert!(p.iter().any(|l| l.contains("transit/keys/k/config")));
    }
}
