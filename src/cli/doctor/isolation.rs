//! The isolation check: can this cluster's token decrypt with a Transit key other than its
//! own? The associated data cannot stop it (it is built from the public key_id), only the
//! policy can. The token cannot list keys or read other tokens' policies, so the check asks
//! `sys/capabilities-self` about key names no policy should grant (a glob would) and about
//! the keys other clusters' configurations name. Pure, so it is unit tested without OpenBao.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config;

/// The name every cluster's key got before the Ansible role derived one per cluster.
pub(crate) const SHARED_DEFAULT_KEY: &str = "k8s-etcd";

/// Another cluster's Transit key, as its configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtherKey {
    pub(crate) file: PathBuf,
    pub(crate) instance_id: String,
    pub(crate) namespace: String,
    pub(crate) mount: String,
    pub(crate) key: String,
}

/// Reads only what names the key: the other host's files (JWT, CA) need not exist here.
pub(crate) fn read_other(path: &Path) -> Result<OtherKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw = config::parse(&text, path).map_err(|e| e.to_string())?;
    Ok(OtherKey {
        file: path.to_path_buf(),
        instance_id: raw.openbao.instance_id,
        namespace: raw.openbao.namespace.trim_matches('/').to_owned(),
        mount: raw.transit.mount_path.trim_matches('/').to_owned(),
        key: raw.transit.key_name,
    })
}

/// This configuration's key, in the terms of `OtherKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnKey<'a> {
    pub(crate) instance_id: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) mount: &'a str,
    pub(crate) key: &'a str,
}

/// Key names no policy for this cluster should reach, each ending in `nonce`: any name, a
/// name starting like this key (`k8s-etcd-a*`), and one starting like its siblings
/// (`k8s-etcd-*`), the globs a shared or careless policy uses.
pub(crate) fn probe_keys(key: &str, nonce: &str) -> Vec<String> {
    let mut out = vec![
        format!("bao-kms-provider-doctor-{nonce}"),
        format!("{key}{nonce}"),
    ];
    if let Some((stem, _)) = key.rsplit_once('-') {
        out.push(format!("{stem}-{nonce}"));
    }
    out
}

/// The decrypt path of a key under a mount.
pub(crate) fn decrypt_path(mount: &str, key: &str) -> String {
    format!("{mount}/decrypt/{key}")
}

fn can_update(caps: &BTreeMap<String, Vec<String>>, path: &str) -> bool {
    super::privilege::granted(caps, path)
        .iter()
        .any(|c| matches!(*c, "update" | "root"))
}

/// One finding per line: the probe keys the token can decrypt with, then each other
/// configuration that shares this key or whose key the token can decrypt with.
pub(crate) fn findings(
    own: &OwnKey<'_>,
    probes: &[String],
    others: &[OtherKey],
    caps: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let open: Vec<&String> = probes
        .iter()
        .filter(|k| can_update(caps, &decrypt_path(own.mount, k)))
        .collect();
    if !open.is_empty() {
        out.push(format!(
            "the token can decrypt with keys that do not exist ({}): its policy grants {}/decrypt/ by pattern, so it can decrypt the seeds of every cluster whose key the pattern matches; grant only what `bao-kms-provider policy` prints",
            open.iter()
                .map(|k| decrypt_path(own.mount, k))
                .collect::<Vec<_>>()
                .join(", "),
            own.mount
        ));
    }
    for o in others {
        if o.instance_id != own.instance_id || o.namespace != own.namespace {
            continue;
        }
        if o.mount == own.mount && o.key == own.key {
            out.push(format!(
                "{} names the same key {}/keys/{}: both clusters can decrypt each other's seeds (the associated data does not keep them apart); give each cluster its own key",
                o.file.display(),
                o.mount,
                o.key
            ));
        } else if can_update(caps, &decrypt_path(&o.mount, &o.key)) {
            out.push(format!(
                "the token can decrypt with {}/keys/{}, the key of {}: it can decrypt that cluster's seeds; grant decrypt on {}/keys/{} only",
                o.mount,
                o.key,
                o.file.display(),
                own.mount,
                own.key
            ));
        }
    }
    out
}

/// Other configurations that name another OpenBao (instance_id or namespace): not checked.
pub(crate) fn elsewhere<'a>(own: &OwnKey<'_>, others: &'a [OtherKey]) -> Vec<&'a OtherKey> {
    others
        .iter()
        .filter(|o| o.instance_id != own.instance_id || o.namespace != own.namespace)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::privilege::caps;

    const OWN: OwnKey<'static> = OwnKey {
        instance_id: "bao",
        namespace: "",
        mount: "transit",
        key: "k8s-etcd-alpha",
    };

    fn other(key: &str, instance_id: &str) -> OtherKey {
        OtherKey {
            file: PathBuf::from(format!("/tmp/{key}.toml")),
            instance_id: instance_id.into(),
            namespace: String::new(),
            mount: "transit".into(),
            key: key.into(),
        }
    }

    #[test]
    fn probes_cover_any_name_this_key_as_prefix_and_its_siblings() {
        let p = probe_keys("k8s-etcd-alpha", "x1");
        assert_eq!(
            p,
            vec![
                "bao-kms-provider-doctor-x1".to_owned(),
                "k8s-etcd-alphax1".to_owned(),
                "k8s-etcd-x1".to_owned()
            ]
        );
        assert_eq!(probe_keys("plain", "x1").len(), 2);
    }

    #[test]
    fn a_least_privilege_token_has_no_findings() {
        let probes = probe_keys(OWN.key, "n");
        let c = caps(&[
            ("transit/decrypt/k8s-etcd-alpha", &["update"]),
            ("transit/decrypt/k8s-etcd-n", &["deny"]),
            ("transit/decrypt/k8s-etcd-beta", &["deny"]),
        ]);
        assert!(findings(&OWN, &probes, &[other("k8s-etcd-beta", "bao")], &c).is_empty());
    }

    #[test]
    fn a_glob_and_another_clusters_key_are_named() {
        let probes = probe_keys(OWN.key, "n");
        let c = caps(&[
            ("transit/decrypt/k8s-etcd-n", &["update"]),
            ("transit/decrypt/k8s-etcd-beta", &["update"]),
        ]);
        let f = findings(&OWN, &probes, &[other("k8s-etcd-beta", "bao")], &c);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("transit/decrypt/k8s-etcd-n"), "{f:?}");
        assert!(f[1].contains("the key of /tmp/k8s-etcd-beta.toml"), "{f:?}");
    }

    #[test]
    fn a_shared_key_is_named_and_another_openbao_is_not_checked() {
        let shared = other("k8s-etcd-alpha", "bao");
        let far = other("k8s-etcd-beta", "other-bao");
        let c = caps(&[("transit/decrypt/k8s-etcd-beta", &["root"])]);
        let f = findings(&OWN, &[], &[shared, far.clone()], &c);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("names the same key transit/keys/k8s-etcd-alpha"));
        assert_eq!(elsewhere(&OWN, std::slice::from_ref(&far)), vec![&far]);
    }
}
