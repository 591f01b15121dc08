//! The least-privilege check: which OpenBao paths the provider token must reach, and which it
//! must not, from the tables in `openbao::contract`. Pure, so it is unit tested without OpenBao.
use std::collections::BTreeMap;

use crate::openbao::contract::{self, Need};

/// A path the token must not reach with `caps` (empty: with any capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forbidden {
    pub(crate) path: String,
    pub(crate) caps: &'static [&'static str],
    /// What the capability would allow, e.g. "rotate".
    pub(crate) what: &'static str,
}

/// A path the token needs `cap` on; `fatal` when the provider cannot work without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Needed {
    pub(crate) path: String,
    pub(crate) cap: &'static str,
    pub(crate) why: &'static str,
    pub(crate) fatal: bool,
}

/// `contract::DENIED` for this key, plus the token's own policies (`policies`, its policy
/// names), which it must not be able to rewrite.
pub(crate) fn forbidden(mount: &str, key: &str, policies: &[String]) -> Vec<Forbidden> {
    let mut out: Vec<Forbidden> = contract::DENIED
        .iter()
        .map(|d| Forbidden {
            path: d.path.render(mount, key),
            caps: d.capabilities,
            what: d.what,
        })
        .collect();
    for p in policies.iter().filter(|p| p.as_str() != "root") {
        for path in contract::OWN_POLICY_PATHS {
            out.push(Forbidden {
                path: path.replace("{policy}", p),
                caps: contract::OWN_POLICY_CAPABILITIES,
                what: "rewrite its own policy",
            });
        }
    }
    out
}

/// `contract::GRANTS`: what the daemon (and this doctor) use.
pub(crate) fn needed(mount: &str, key: &str, token_auth: bool) -> Vec<Needed> {
    contract::GRANTS
        .iter()
        .map(|g| Needed {
            path: g.path.render(mount, key),
            cap: g.capability,
            why: g.why,
            fatal: match g.need {
                Need::Always => true,
                Need::TokenAuth => token_auth,
                Need::Optional => false,
            },
        })
        .collect()
}

/// Every path to ask `sys/capabilities-self` about, without duplicates.
pub(crate) fn paths(forbidden: &[Forbidden], needed: &[Needed]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in forbidden
        .iter()
        .map(|f| &f.path)
        .chain(needed.iter().map(|n| &n.path))
    {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// The capabilities `sys/capabilities-self` reported for `path`, without `deny`.
pub(super) fn granted<'a>(caps: &'a BTreeMap<String, Vec<String>>, path: &str) -> Vec<&'a str> {
    caps.get(path)
        .map(|c| {
            c.iter()
                .map(String::as_str)
                .filter(|c| *c != "deny")
                .collect()
        })
        .unwrap_or_default()
}

/// One entry per forbidden grant: "rotate: transit/keys/k/rotate [update]".
pub(crate) fn violations(rules: &[Forbidden], caps: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    rules
        .iter()
        .filter_map(|r| {
            let have = granted(caps, &r.path);
            let bad: Vec<&str> = have
                .into_iter()
                .filter(|c| *c == "root" || r.caps.is_empty() || r.caps.contains(c))
                .collect();
            (!bad.is_empty()).then(|| format!("{}: {} [{}]", r.what, r.path, bad.join(", ")))
        })
        .collect()
}

/// Needed capabilities the token lacks, split into (fatal, advisory).
pub(crate) fn missing(
    needs: &[Needed],
    caps: &BTreeMap<String, Vec<String>>,
) -> (Vec<String>, Vec<String>) {
    let (mut fatal, mut advisory) = (Vec::new(), Vec::new());
    for n in needs {
        let have = granted(caps, &n.path);
        if have.iter().any(|c| *c == n.cap || *c == "root") {
            continue;
        }
        let line = format!("{} on {} ({})", n.cap, n.path, n.why);
        if n.fatal {
            fatal.push(line);
        } else {
            advisory.push(line);
        }
    }
    (fatal, advisory)
}

/// A capabilities map as `sys/capabilities-self` returns it, for the doctor's tests.
#[cfg(test)]
pub(super) fn caps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(p, c)| (p.to_string(), c.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_privilege_grants_pass_and_rotate_is_named_by_path() {
        let rules = forbidden("transit", "k", &["default".into(), "p".into()]);
        let minimal = caps(&[
            ("transit/keys/k", &["read"]),
            ("transit/encrypt/k", &["update"]),
            ("transit/decrypt/k", &["update"]),
            ("transit/keys/k/rotate", &["deny"]),
        ]);
        assert!(violations(&rules, &minimal).is_empty());
        let wider = caps(&[
            ("transit/keys/k", &["read"]),
            ("transit/keys/k/rotate", &["update"]),
        ]);
        assert_eq!(
            violations(&rules, &wider),
            vec!["rotate: transit/keys/k/rotate [update]".to_owned()]
        );
    }

    #[test]
    fn write_on_the_key_or_its_config_is_reconfigure_and_delete_is_delete() {
        let rules = forbidden("transit", "k", &[]);
        let v = violations(
            &rules,
            &caps(&[
                ("transit/keys/k", &["read", "update", "delete"]),
                ("transit/config/keys", &["read", "update"]),
                ("sys/policies/acl/p", &["update"]),
            ]),
        );
        assert!(
            v.contains(&"delete: transit/keys/k [delete]".to_owned()),
            "{v:?}"
        );
        assert!(
            v.contains(&"reconfigure: transit/keys/k [update]".to_owned()),
            "{v:?}"
        );
        assert!(
            v.contains(&"reconfigure: transit/config/keys [update]".to_owned()),
            "{v:?}"
        );
        // The policy paths are only checked for the token's own policies.
        assert_eq!(v.len(), 3, "{v:?}");
    }

    #[test]
    fn root_is_everything_and_own_policy_is_checked() {
        let rules = forbidden("transit", "k", &["p".into(), "root".into()]);
        assert!(rules.iter().any(|r| r.path == "sys/policies/acl/p"));
        assert!(!rules.iter().any(|r| r.path.ends_with("/root")));
        let needs = needed("transit", "k", false);
        let all: BTreeMap<String, Vec<String>> = paths(&rules, &needs)
            .into_iter()
            .map(|p| (p, vec!["root".into()]))
            .collect();
        assert_eq!(violations(&rules, &all).len(), rules.len());
        let (fatal, advisory) = missing(&needs, &all);
        assert!(fatal.is_empty() && advisory.is_empty());
    }

    #[test]
    fn missing_encrypt_is_fatal_and_missing_renew_is_advisory() {
        let (fatal, advisory) = missing(
            &needed("transit", "k", false),
            &caps(&[
                ("transit/keys/k", &["read"]),
                ("transit/decrypt/k", &["update"]),
                ("auth/token/lookup-self", &["read"]),
                ("transit/config/keys", &["read"]),
                ("sys/mounts/transit", &["read"]),
            ]),
        );
        assert_eq!(
            fatal,
            vec!["update on transit/encrypt/k (Encrypt)".to_owned()]
        );
        assert_eq!(advisory.len(), 1, "{advisory:?}");
        assert!(advisory[0].starts_with("update on auth/token/renew-self"));
        let (fatal, _) = missing(&needed("transit", "k", true), &BTreeMap::new());
        assert!(fatal.iter().any(|l| l.contains("lookup-self")));
    }

    #[test]
    fn paths_are_unique() {
        let rules = forbidden("transit", "k", &["p".into()]);
        let needs = needed("transit", "k", false);
        let p = paths(&rules, &needs);
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(p.len(), sorted.len());
        assert!(p.contains(&"transit/keys/k".to_owned()));
    }
}
