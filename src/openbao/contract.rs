//! The one table of OpenBao facts the provider relies on: which paths it uses with which
//! capability and why (the policy text, the client's request paths and the doctor's
//! least-privilege check all come from `GRANTS`), which rights it must never have (`DENIED`),
//! and the Transit key profile. A unit test holds the Ansible policy template to `GRANTS`.

/// A path with `{mount}` and `{key}` standing for the configured Transit mount and key name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathTemplate(&'static str);

impl PathTemplate {
    pub(crate) fn render(self, mount: &str, key: &str) -> String {
        self.0.replace("{mount}", mount).replace("{key}", key)
    }

    /// The path itself, for the token paths that have no placeholder.
    pub(crate) const fn fixed(self) -> &'static str {
        self.0
    }
}

pub(crate) const KEY: PathTemplate = PathTemplate("{mount}/keys/{key}");
pub(crate) const ENCRYPT: PathTemplate = PathTemplate("{mount}/encrypt/{key}");
pub(crate) const DECRYPT: PathTemplate = PathTemplate("{mount}/decrypt/{key}");
pub(crate) const KEYS_CONFIG: PathTemplate = PathTemplate("{mount}/config/keys");
pub(crate) const MOUNT: PathTemplate = PathTemplate("sys/mounts/{mount}");
pub(crate) const RENEW_SELF: PathTemplate = PathTemplate("auth/token/renew-self");
pub(crate) const LOOKUP_SELF: PathTemplate = PathTemplate("auth/token/lookup-self");

/// How much the provider depends on a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// The provider cannot serve without it.
    Always,
    /// Needed when the provider authenticates with a static token.
    TokenAuth,
    /// Used when granted (token renewal, doctor checks); the provider works without it.
    Optional,
}

/// One line of the provider's policy: `(path, capability, why)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub(crate) path: PathTemplate,
    pub(crate) capability: &'static str,
    pub(crate) why: &'static str,
    pub(crate) need: Need,
}

/// Everything the provider's token is granted, in policy order.
pub(crate) const GRANTS: &[Grant] = &[
    grant(KEY, "read", "key metadata", Need::Always),
    grant(ENCRYPT, "update", "Encrypt", Need::Always),
    grant(DECRYPT, "update", "Decrypt", Need::Always),
    grant(KEYS_CONFIG, "read", "doctor upsert check", Need::Optional),
    grant(MOUNT, "read", "doctor mount check", Need::Optional),
    grant(
        RENEW_SELF,
        "update",
        "token renewal (else a new login each TTL)",
        Need::Optional,
    ),
    grant(LOOKUP_SELF, "read", "token auth start-up", Need::TokenAuth),
];

const fn grant(
    path: PathTemplate,
    capability: &'static str,
    why: &'static str,
    need: Need,
) -> Grant {
    Grant {
        path,
        capability,
        why,
        need,
    }
}

/// Any capability except `deny` counts (list, read and sudo included: none is needed there).
const ANY: &[&str] = &[];
/// Capabilities that change what a path holds.
const WRITE: &[&str] = &["create", "update", "patch", "delete"];

/// A right the token must never have: `capabilities` on `path` (empty: any capability).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Denied {
    pub(crate) path: PathTemplate,
    pub(crate) capabilities: &'static [&'static str],
    /// What the right would allow, e.g. "rotate".
    pub(crate) what: &'static str,
}

const fn denied(
    path: &'static str,
    capabilities: &'static [&'static str],
    what: &'static str,
) -> Denied {
    Denied {
        path: PathTemplate(path),
        capabilities,
        what,
    }
}

/// Everything that could destroy, leak, replace or re-scope the key, or move its mount.
pub(crate) const DENIED: &[Denied] = &[
    denied("{mount}/keys/{key}/rotate", ANY, "rotate"),
    denied("{mount}/export/encryption-key/{key}", ANY, "export"),
    denied("{mount}/export/encryption-key/{key}/latest", ANY, "export"),
    denied("{mount}/export/hmac-key/{key}", ANY, "export"),
    denied("{mount}/byok-export/doctor-probe/{key}", ANY, "export"),
    denied("{mount}/backup/{key}", ANY, "back up"),
    denied("{mount}/restore", ANY, "restore"),
    denied("{mount}/restore/{key}", ANY, "restore"),
    denied("{mount}/keys/{key}/soft-delete-restore", ANY, "restore"),
    denied("{mount}/keys/{key}/trim", ANY, "trim"),
    denied("{mount}/keys/{key}/import", ANY, "import key material"),
    denied(
        "{mount}/keys/{key}/import_version",
        ANY,
        "import key material",
    ),
    denied("{mount}/keys/{key}", &["delete"], "delete"),
    denied("{mount}/keys/{key}/soft-delete", ANY, "delete"),
    denied(
        "{mount}/keys/{key}",
        &["create", "update", "patch"],
        "reconfigure",
    ),
    denied("{mount}/keys/{key}/config", WRITE, "reconfigure"),
    denied("{mount}/config/keys", WRITE, "reconfigure"),
    denied(
        "sys/mounts/{mount}",
        WRITE,
        "disable or re-create the mount",
    ),
    denied("sys/mounts/{mount}/tune", WRITE, "tune the mount"),
    denied("sys/remount", WRITE, "move the mount"),
];

/// Paths of the token's own policy `{policy}`: it must not be able to rewrite them (`WRITE`).
pub(crate) const OWN_POLICY_PATHS: &[&str] = &["sys/policies/acl/{policy}", "sys/policy/{policy}"];
pub(crate) const OWN_POLICY_CAPABILITIES: &[&str] = WRITE;

/// The Transit key profile the provider relies on: the only type it encrypts with
/// (AES-256-GCM, 96-bit nonce), and settings that must all be off.
pub(crate) struct KeyProfile {
    pub(crate) key_type: &'static str,
    pub(crate) exportable: bool,
    pub(crate) allow_plaintext_backup: bool,
    pub(crate) deletion_allowed: bool,
    pub(crate) derived: bool,
    pub(crate) convergent_encryption: bool,
}

pub(crate) const KEY_PROFILE: KeyProfile = KeyProfile {
    key_type: "aes256-gcm96",
    exportable: false,
    allow_plaintext_backup: false,
    deletion_allowed: false,
    derived: false,
    convergent_encryption: false,
};

/// The least-privilege policy (HCL) for `mount` and `key`, generated from `GRANTS`.
pub(crate) fn policy_hcl(mount: &str, key: &str) -> String {
    let mut out = format!(
        "# OpenBao policy for bao-kms-provider (transit mount \"{mount}\", key \"{key}\").\n\
         # It cannot create, rotate, export, back up, restore, trim, delete or reconfigure keys.\n"
    );
    for g in GRANTS {
        out.push_str(&format!(
            "path \"{}\" {{\n  capabilities = [\"{}\"]\n}}\n",
            g.path.render(mount, key),
            g.capability
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (path, capabilities) of every `path "..." { capabilities = [...] }` block.
    fn grants_in(hcl: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut path: Option<String> = None;
        for line in hcl.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("path \"") {
                path = rest.split('"').next().map(str::to_owned);
            } else if let Some(caps) = line.strip_prefix("capabilities = ") {
                let p = path.take().expect("capabilities inside a path block");
                out.insert((p, caps.to_owned()));
            }
        }
        out
    }

    #[test]
    fn the_ansible_policy_template_grants_exactly_the_table() {
        let template = include_str!("../../ansible/roles/openbao_transit/templates/policy.hcl.j2")
            .replace("{{ openbao_transit_mount }}", "MOUNT")
            .replace("{{ _openbao_transit_name_key }}", "KEY");
        assert!(
            !template.contains("{{"),
            "unknown template variable:\n{template}"
        );
        let expected = grants_in(&policy_hcl("MOUNT", "KEY"));
        assert_eq!(expected.len(), GRANTS.len());
        assert_eq!(grants_in(&template), expected);
    }

    #[test]
    fn no_grant_is_denied() {
        for g in GRANTS {
            for d in DENIED.iter().filter(|d| d.path == g.path) {
                assert!(
                    !d.capabilities.is_empty() && !d.capabilities.contains(&g.capability),
                    "{} on {:?} is both granted and denied",
                    g.capability,
                    g.path
                );
            }
        }
    }
}
