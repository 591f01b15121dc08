//! Where this provider goes among the providers kube-apiserver already has, per rollout stage:
//! the EncryptionConfiguration `encryption-config --stage` prints. The kube_apiserver_kms role
//! writes exactly this (its module runs the command), so the order is stated here only.
//!
//! - read / rollback: the existing providers (or identity) first, this kms provider after them:
//!   kube-apiserver reads what the provider stored but writes as before.
//! - write: this kms provider first, the existing providers after it, so everything stored under
//!   them stays readable until it was rewritten.
//!
//! An existing configuration holds keys (aescbc, aesgcm, secretbox): errors name the file and the
//! field, never a value, and a YAML syntax error only its line.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub(crate) const API_VERSION: &str = "apiserver.config.k8s.io/v1";
pub(crate) const KIND: &str = "EncryptionConfiguration";
const PROVIDER_TYPES: [&str; 5] = ["aescbc", "aesgcm", "secretbox", "kms", "identity"];
const KEY_TYPES: [&str; 3] = ["aescbc", "aesgcm", "secretbox"];

/// A step of the rollout; every API server gets `read` before any gets `write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Stage {
    /// the existing providers (identity without --existing-config) first, this provider after
    /// them: kube-apiserver decrypts what the provider stored but writes as before. An
    /// --existing-config that already lists this provider is printed unchanged, so a read pass
    /// never undoes a write pass
    Read,
    /// this provider first, the existing providers (and identity) after it, so what they stored
    /// stays readable until it is rewritten (migrated)
    Write,
    /// the existing providers (or identity) first again, this provider kept after them, so what
    /// it stored still decrypts until it is rewritten
    Rollback,
}

/// Why an `--existing-config` file cannot be used; names the file and the field, never a value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    #[error("--existing-config {path}: cannot read it: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--existing-config {path}: not valid YAML{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Syntax { path: PathBuf, line: Option<usize> },
    #[error("--existing-config {path}: {field} {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error(
        "--existing-config {path}: the kms provider {name:?} would be in {count} resource entries ({entries}), \
         and kube-apiserver accepts a KMS v2 provider name only once per EncryptionConfiguration (it would not \
         start): move the encrypted resources and --resources into one entry of that file first"
    )]
    DuplicateProvider {
        path: PathBuf,
        name: String,
        count: usize,
        entries: String,
    },
}

/// One resource entry of the existing configuration, without this provider.
#[derive(Debug, Clone)]
struct Entry {
    resources: Vec<String>,
    providers: Vec<Value>,
    /// The entry listed this provider (the file is one this command wrote earlier).
    had_ours: bool,
}

/// A validated `--existing-config` file.
#[derive(Debug)]
pub(crate) struct Existing {
    path: PathBuf,
    doc: Value,
    entries: Vec<Entry>,
    lists_ours: bool,
}

/// This provider's part: its `kms` provider, the resources it encrypts, the identity fallback.
pub(crate) struct Ours<'a> {
    pub(crate) kms: Value,
    pub(crate) name: &'a str,
    pub(crate) resources: &'a [String],
    pub(crate) identity: bool,
}

fn identity() -> Value {
    json!({"identity": {}})
}

fn is_ours(provider: &Value, name: &str) -> bool {
    provider
        .get("kms")
        .and_then(|k| k.get("name"))
        .and_then(Value::as_str)
        == Some(name)
}

/// Reads and validates the file; `name` is this provider's name (taken out of the entries).
pub(crate) fn read_existing(path: &Path, name: &str) -> Result<Existing, StageError> {
    let text = std::fs::read_to_string(path).map_err(|error| StageError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse_existing(&text, path, name)
}

pub(crate) fn parse_existing(text: &str, path: &Path, name: &str) -> Result<Existing, StageError> {
    // The parser's message may quote the offending text, which may be a key: only its line.
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| StageError::Syntax {
            path: path.to_owned(),
            line: e.location().map(|l| l.line()),
        })?;
    let invalid = |field: &str, problem: &str| StageError::Invalid {
        path: path.to_owned(),
        field: field.to_owned(),
        problem: problem.to_owned(),
    };
    let doc: Value = serde_json::to_value(&yaml).map_err(|_| {
        invalid(
            "the document",
            "has a mapping key that is not a string, or a value JSON cannot hold",
        )
    })?;
    let entries = validate(&doc).map_err(|(field, problem)| invalid(&field, &problem))?;
    let lists_ours = entries
        .iter()
        .any(|(_, providers)| providers.iter().any(|p| is_ours(p, name)));
    let entries = entries
        .into_iter()
        .map(|(resources, providers)| Entry {
            resources,
            had_ours: providers.iter().any(|p| is_ours(p, name)),
            providers: providers
                .into_iter()
                .filter(|p| !is_ours(p, name))
                .collect(),
        })
        .collect();
    Ok(Existing {
        path: path.to_owned(),
        doc,
        entries,
        lists_ours,
    })
}

/// (field, problem): what `validate` found wrong.
type Problem = (String, String);
/// Each resource entry's resources and providers.
type Entries = Vec<(Vec<String>, Vec<Value>)>;

/// What kube-apiserver requires of an EncryptionConfiguration, as far as the merge depends on it.
/// Returns each entry's resources and providers; an error is (field, problem).
fn validate(doc: &Value) -> Result<Entries, Problem> {
    let p = |field: &str, problem: &str| (field.to_owned(), problem.to_owned());
    let top = doc
        .as_object()
        .ok_or_else(|| p("the document", "is not a YAML mapping"))?;
    if top.get("kind").and_then(Value::as_str) != Some(KIND)
        || top.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION)
    {
        return Err(p(
            "kind/apiVersion",
            &format!(
                "must be {KIND} / {API_VERSION} (the old EncryptionConfig format is not read by current \
                 kube-apiserver: convert it first)"
            ),
        ));
    }
    if let Some(unknown) = top
        .keys()
        .find(|k| !["kind", "apiVersion", "resources"].contains(&k.as_str()))
    {
        return Err(p(
            unknown,
            "is not a field of an EncryptionConfiguration (expected kind, apiVersion, resources)",
        ));
    }
    let entries = top
        .get("resources")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| p("resources", "must be a non-empty list"))?;
    let mut out = Vec::with_capacity(entries.len());
    for (n, entry) in entries.iter().enumerate() {
        let at = format!("resources[{n}]");
        let fields = entry
            .as_object()
            .filter(|o| o.keys().all(|k| k == "resources" || k == "providers"))
            .ok_or_else(|| p(&at, "must be a mapping of exactly resources and providers"))?;
        let names: Vec<String> = fields
            .get("resources")
            .and_then(Value::as_array)
            .filter(|r| !r.is_empty())
            .and_then(|r| {
                r.iter()
                    .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                p(
                    &format!("{at}.resources"),
                    "must be a non-empty list of resource names",
                )
            })?;
        let providers = fields
            .get("providers")
            .and_then(Value::as_array)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| p(&format!("{at}.providers"), "must be a non-empty list"))?;
        for (m, provider) in providers.iter().enumerate() {
            let at = format!("{at}.providers[{m}]");
            let (kind, body) = provider
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
                .filter(|(k, _)| PROVIDER_TYPES.contains(&k.as_str()))
                .ok_or_else(|| {
                    p(
                        &at,
                        &format!("must be exactly one of {}", PROVIDER_TYPES.join(", ")),
                    )
                })?;
            let text = |f: &str| {
                body.get(f)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            };
            if kind == "kms" && !(text("name") && text("endpoint")) {
                return Err(p(&format!("{at}.kms"), "needs a name and an endpoint"));
            }
            if KEY_TYPES.contains(&kind.as_str()) {
                let keys_ok = body
                    .get("keys")
                    .and_then(Value::as_array)
                    .filter(|k| !k.is_empty())
                    .is_some_and(|keys| {
                        keys.iter().all(|k| {
                            ["name", "secret"].iter().all(|f| {
                                k.get(f)
                                    .and_then(Value::as_str)
                                    .is_some_and(|s| !s.is_empty())
                            })
                        })
                    });
                if !keys_ok {
                    return Err(p(
                        &format!("{at}.{kind}.keys"),
                        "must be a non-empty list of keys, each with a name and a secret",
                    ));
                }
            }
        }
        out.push((names, providers.clone()));
    }
    Ok(out)
}

/// `secrets.` and `secrets` are the same core resource.
fn resource(name: &str) -> &str {
    match name.strip_suffix('.') {
        Some(core) if !name.starts_with('*') => core,
        _ => name,
    }
}

/// Whether an entry's resource name (maybe a wildcard: `*.*`, `*.`, `*.apps`) selects `resource`.
pub(crate) fn covers(pattern: &str, resource_name: &str) -> bool {
    let (pattern, name) = (resource(pattern), resource(resource_name));
    if pattern == "*.*" || pattern == name {
        return true;
    }
    let group = name.split_once('.').map_or("", |(_, g)| g);
    if pattern == "*." {
        return group.is_empty();
    }
    pattern.strip_prefix("*.") == Some(group)
}

/// The EncryptionConfiguration for `stage`: this provider alone (with identity) when there is no
/// existing configuration, otherwise merged into it per resource entry.
/// `drop_previous` (write stage only): the providers `existing` carried over are left out; identity
/// stays when `ours.identity`.
pub(crate) fn build(
    ours: &Ours<'_>,
    existing: Option<&Existing>,
    stage: Stage,
    drop_previous: bool,
) -> Result<Value, StageError> {
    if let Some(e) = existing {
        if stage == Stage::Read && e.lists_ours {
            return Ok(e.doc.clone());
        }
    }
    let previous: &[Entry] = existing.map_or(&[], |e| &e.entries);
    let mut entries = Vec::new();
    let mut remaining: Vec<String> = ours.resources.to_vec();
    for entry in previous {
        let (mine, rest): (Vec<String>, Vec<String>) = remaining
            .into_iter()
            .partition(|r| entry.resources.iter().any(|p| covers(p, r)));
        remaining = rest;
        let old = &entry.providers;
        // An entry this provider encrypted is kept even when its resources are no longer
        // configured: what it stored there must stay readable.
        if mine.is_empty() && old.is_empty() && !entry.had_ours {
            continue;
        }
        if mine.is_empty() && !entry.had_ours && old.iter().all(|p| *p == identity()) {
            // An explicit exemption (identity only) for resources this provider does not encrypt.
            entries.push(json!({"resources": entry.resources, "providers": old}));
            continue;
        }
        let providers: Vec<Value> = match stage {
            Stage::Write if drop_previous => std::iter::once(ours.kms.clone())
                .chain(ours.identity.then(identity))
                .collect(),
            Stage::Write => std::iter::once(ours.kms.clone())
                .chain(
                    old.iter()
                        .filter(|p| ours.identity || **p != identity())
                        .cloned(),
                )
                .collect(),
            Stage::Read | Stage::Rollback => {
                let first = if old.is_empty() {
                    vec![identity()]
                } else {
                    old.clone()
                };
                first.into_iter().chain([ours.kms.clone()]).collect()
            }
        };
        entries.push(json!({"resources": entry.resources, "providers": providers}));
    }
    if !remaining.is_empty() {
        // Selected by no existing entry (so stored in plaintext today): an entry of their own, first.
        let providers = match stage {
            Stage::Write if ours.identity => vec![ours.kms.clone(), identity()],
            Stage::Write => vec![ours.kms.clone()],
            Stage::Read | Stage::Rollback => vec![identity(), ours.kms.clone()],
        };
        entries.insert(0, json!({"resources": remaining, "providers": providers}));
    }
    let with_ours: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["providers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| is_ours(p, ours.name)))
        })
        .collect();
    if let (Some(e), true) = (existing, with_ours.len() > 1) {
        let entries = with_ours
            .iter()
            .map(|w| {
                let names: Vec<&str> = w["resources"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                format!("[{}]", names.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(StageError::DuplicateProvider {
            path: e.path.clone(),
            name: ours.name.to_owned(),
            count: with_ours.len(),
            entries,
        });
    }
    Ok(json!({"apiVersion": API_VERSION, "kind": KIND, "resources": entries}))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "openbao-kms";

    fn kms() -> Value {
        json!({"kms": {"apiVersion": "v2", "name": NAME, "endpoint": "unix:///run/openbao-kms/kms.sock", "timeout": "3s"}})
    }

    fn providers_of(doc: &Value) -> Vec<(Vec<String>, Vec<String>)> {
        doc["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let names = e["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect();
                let kinds = e["providers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_object()?.iter().next())
                    .map(|(k, b)| match k.as_str() {
                        "kms" => format!("kms:{}", b["name"].as_str().unwrap_or("")),
                        _ => k.clone(),
                    })
                    .collect();
                (names, kinds)
            })
            .collect()
    }

    fn run(existing: Option<&str>, stage: Stage, resources: &[&str], identity: bool) -> Value {
        let resources: Vec<String> = resources.iter().map(|r| r.to_string()).collect();
        let ours = Ours {
            kms: kms(),
            name: NAME,
            resources: &resources,
            identity,
        };
        let existing = existing.map(|t| parse_existing(t, Path::new("old.yaml"), NAME).unwrap());
        build(&ours, existing.as_ref(), stage, false).unwrap()
    }

    fn row(resources: &[&str], providers: &[&str]) -> (Vec<String>, Vec<String>) {
        (
            resources.iter().map(|r| r.to_string()).collect(),
            providers.iter().map(|r| r.to_string()).collect(),
        )
    }

    const AESCBC: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
        - resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        secret: c2VjcmV0IGlzIHNlY3VyZQ==\n  - identity: {}\n";

    #[test]
    fn without_an_existing_config_each_stage_orders_identity_and_kms() {
        let k = "kms:openbao-kms";
        for (stage, identity, want) in [
            (Stage::Write, true, vec![k, "identity"]),
            (Stage::Write, false, vec![k]),
            (Stage::Read, true, vec!["identity", k]),
            (Stage::Read, false, vec!["identity", k]),
            (Stage::Rollback, true, vec!["identity", k]),
        ] {
            let doc = run(None, stage, &["secrets"], identity);
            assert_eq!(doc["kind"], KIND);
            assert_eq!(doc["apiVersion"], API_VERSION);
            assert_eq!(
                providers_of(&doc),
                vec![row(&["secrets"], &want)],
                "{stage:?}"
            );
        }
    }

    #[test]
    fn existing_providers_come_first_to_read_and_after_kms_to_write() {
        let k = "kms:openbao-kms";
        let read = run(Some(AESCBC), Stage::Read, &["secrets"], true);
        assert_eq!(
            providers_of(&read),
            vec![row(&["secrets"], &["aescbc", "identity", k])]
        );
        let write = run(Some(AESCBC), Stage::Write, &["secrets"], true);
        assert_eq!(
            providers_of(&write),
            vec![row(&["secrets"], &[k, "aescbc", "identity"])]
        );
        let no_identity = run(Some(AESCBC), Stage::Write, &["secrets"], false);
        assert_eq!(
            providers_of(&no_identity),
            vec![row(&["secrets"], &[k, "aescbc"])]
        );
        let rollback = run(Some(AESCBC), Stage::Rollback, &["secrets"], true);
        assert_eq!(providers_of(&rollback), providers_of(&read));
        // The keys are carried over as they were.
        assert_eq!(
            write["resources"][0]["providers"][1]["aescbc"]["keys"][0]["secret"],
            "c2VjcmV0IGlzIHNlY3VyZQ=="
        );
    }

    #[test]
    fn drop_previous_leaves_out_what_the_existing_config_carried_but_not_exemptions() {
        let k = "kms:openbao-kms";
        let text = format!("{AESCBC}- resources: [configmaps]\n  providers:\n  - identity: {{}}\n");
        let resources: Vec<String> = vec!["secrets".into()];
        for (identity, want) in [(true, vec![k, "identity"]), (false, vec![k])] {
            let ours = Ours {
                kms: kms(),
                name: NAME,
                resources: &resources,
                identity,
            };
            let existing = parse_existing(&text, Path::new("old.yaml"), NAME).unwrap();
            let written = build(&ours, Some(&existing), Stage::Write, false).unwrap();
            let mine = parse_existing(&written.to_string(), Path::new("ours.yaml"), NAME).unwrap();
            let dropped = build(&ours, Some(&mine), Stage::Write, true).unwrap();
            assert_eq!(
                providers_of(&dropped),
                vec![
                    row(&["secrets"], &want),
                    row(&["configmaps"], &["identity"])
                ],
                "identity {identity}"
            );
            // Dropping again changes nothing.
            let again = parse_existing(&dropped.to_string(), Path::new("ours.yaml"), NAME).unwrap();
            assert_eq!(
                build(&ours, Some(&again), Stage::Write, true).unwrap(),
                dropped
            );
        }
    }

    #[test]
    fn resources_no_entry_selects_get_their_own_entry_first_and_exemptions_stay() {
        let events_exempt =
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
            - resources: [events]\n  providers: [{identity: {}}]\n";
        for (stage, ours) in [
            (Stage::Write, vec!["kms:openbao-kms", "identity"]),
            (Stage::Read, vec!["identity", "kms:openbao-kms"]),
        ] {
            let doc = run(Some(events_exempt), stage, &["secrets"], true);
            assert_eq!(
                providers_of(&doc),
                vec![row(&["secrets"], &ours), row(&["events"], &["identity"])]
            );
        }
    }

    #[test]
    fn kms_in_two_entries_is_refused_naming_them() {
        // secrets joins the aescbc entry, configmaps gets one of its own: the same KMS v2 name
        // twice, and kube-apiserver would not start.
        let resources = ["secrets".to_string(), "configmaps".into()];
        let ours = Ours {
            kms: kms(),
            name: NAME,
            resources: &resources,
            identity: true,
        };
        let existing = parse_existing(AESCBC, Path::new("old.yaml"), NAME).unwrap();
        for stage in [Stage::Read, Stage::Write, Stage::Rollback] {
            let err = build(&ours, Some(&existing), stage, false).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, StageError::DuplicateProvider { count: 2, .. }),
                "{msg}"
            );
            assert!(
                msg.contains("old.yaml") && msg.contains("[configmaps]; [secrets]"),
                "{msg}"
            );
        }
    }

    #[test]
    fn wildcards_select_like_kube_apiserver() {
        assert!(covers("*.*", "secrets"));
        assert!(covers("*.*", "deployments.apps"));
        assert!(covers("*.", "secrets"));
        assert!(!covers("*.", "deployments.apps"));
        assert!(covers("*.apps", "deployments.apps"));
        assert!(!covers("*.apps", "secrets"));
        assert!(covers("secrets.", "secrets"));
        assert!(covers("secrets", "secrets."));
        assert!(!covers("configmaps", "secrets"));
    }

    #[test]
    fn a_file_this_command_wrote_is_merged_again_without_a_second_kms() {
        let k = "kms:openbao-kms";
        let read = run(Some(AESCBC), Stage::Read, &["secrets"], true);
        let read_text = serde_json::to_string(&read).unwrap();
        let write = run(Some(&read_text), Stage::Write, &["secrets"], true);
        assert_eq!(
            providers_of(&write),
            vec![row(&["secrets"], &[k, "aescbc", "identity"])]
        );
        // A read pass keeps a file that already lists the provider: it never undoes a write pass.
        let write_text = serde_json::to_string(&write).unwrap();
        assert_eq!(
            run(Some(&write_text), Stage::Read, &["secrets"], true),
            write
        );
        // Rollback always puts the existing providers first again.
        let rollback = run(Some(&write_text), Stage::Rollback, &["secrets"], true);
        assert_eq!(providers_of(&rollback), providers_of(&read));
        // Without existing providers: identity comes back first, kms second.
        let alone = serde_json::to_string(&run(None, Stage::Write, &["secrets"], true)).unwrap();
        assert_eq!(
            providers_of(&run(Some(&alone), Stage::Rollback, &["secrets"], true)),
            vec![row(&["secrets"], &["identity", k])]
        );
    }

    #[test]
    fn an_entry_the_provider_encrypted_is_never_dropped_with_its_resources() {
        // Written without identity for configmaps; now configured for secrets only. Dropping the
        // configmaps entry would leave its stored values unreadable: refused instead.
        let before =
            serde_json::to_string(&run(None, Stage::Write, &["configmaps"], false)).unwrap();
        let existing = parse_existing(&before, Path::new("old.yaml"), NAME).unwrap();
        let secrets = vec!["secrets".to_owned()];
        let ours = Ours {
            kms: kms(),
            name: NAME,
            resources: &secrets,
            identity: false,
        };
        let err = build(&ours, Some(&existing), Stage::Write, false).unwrap_err();
        assert!(matches!(err, StageError::DuplicateProvider { .. }), "{err}");
    }

    fn refused(text: &str) -> String {
        let err = parse_existing(text, Path::new("/etc/k/old.yaml"), NAME).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("--existing-config /etc/k/old.yaml: "),
            "{msg}"
        );
        assert!(!msg.contains("c2VjcmV0"), "a key in the message: {msg}");
        msg
    }

    #[test]
    fn bad_files_are_refused_naming_the_field_never_a_key() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
        for (text, field) in [
            ("", "the document is not a YAML mapping"),
            ("- a\n", "the document is not a YAML mapping"),
            ("kind: EncryptionConfig\napiVersion: v1\nresources: []\n", "kind/apiVersion"),
            (&format!("{head}extra: 1\nresources: []\n") as &str, "extra is not a field"),
            (&format!("{head}resources: []\n"), "resources must be a non-empty list"),
            (&format!("{head}resources: [{{resources: [secrets]}}]\n"), "resources[0].providers"),
            (&format!("{head}resources: [{{resources: [], providers: [{{identity: {{}}}}]}}]\n"), "resources[0].resources"),
            (&format!("{head}resources: [{{resources: [secrets], providers: [{{aesfoo: {{}}}}]}}]\n"), "resources[0].providers[0] must be exactly one of"),
            (&format!("{head}resources: [{{resources: [secrets], providers: [{{kms: {{name: x}}}}]}}]\n"), "resources[0].providers[0].kms needs a name and an endpoint"),
            (&format!("{head}resources: [{{resources: [s], providers: [{{aescbc: {{keys: [{{name: k, secret: c2VjcmV0}}]}}}}, {{secretbox: {{keys: [{{secret: c2VjcmV0}}]}}}}]}}]\n"), "resources[0].providers[1].secretbox.keys"),
            (&format!("{head}resources: [{{resources: [s], providers: [{{identity: {{}}, aescbc: {{}}}}]}}]\n"), "resources[0].providers[0] must be exactly one"),
            (&format!("{head}resources: [{{resources: [s], foo: 1, providers: [{{identity: {{}}}}]}}]\n"), "resources[0] must be a mapping"),
        ] {
            let msg = refused(text);
            assert!(msg.contains(field), "want {field:?} in {msg}");
        }
        // A syntax error names the line, not the text there.
        let msg = refused(&format!(
            "{head}resources:\n  - providers: [{{aescbc: {{keys: [{{secret: c2VjcmV0: x}}]}}}}]\n"
        ));
        assert!(msg.contains("not valid YAML (line 4)"), "{msg}");
        let missing = read_existing(Path::new("/nonexistent/old.yaml"), NAME).unwrap_err();
        assert!(matches!(missing, StageError::Read { .. }), "{missing}");
        assert!(
            missing.to_string().contains("/nonexistent/old.yaml"),
            "{missing}"
        );
    }
}
