//! `encryption-config --stage read|write|rollback --existing-config FILE` through the real binary,
//! for the real EncryptionConfiguration files in tests/testdata/kubeadm/encryption-configs: every
//! output is a valid EncryptionConfiguration with the stage's provider order that keeps every
//! existing provider and key, and the kube_apiserver_kms role's own validator accepts it (its
//! module_utils, run with the test venv's Python; the role writes what this command prints).
//! Bad files are refused with exit 64, naming the file and field, never a key.
pub mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const NAME: &str = "openbao-kms";
const STAGES: [&str; 3] = ["read", "write", "rollback"];

fn config(dir: &Path, kms_timeout: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[server]\nkms_timeout = \"{kms_timeout}\"\n\
         [openbao]\naddress = \"http://127.0.0.1:8200\"\ninstance_id = \"t\"\ntimeout = \"1s\"\n\
         [auth.jwt]\njwt_file = \"{}/identity.jwt\"\n\
         [transit]\nmount_path = \"transit\"\nkey_name = \"k\"\n\
         [transit.key_id_scope]\ncluster_id = \"c\"\ntransit_mount_id = \"m\"\nkey_lineage_id = \"l\"\n\
         provider_name = \"{NAME}\"\n",
        dir.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn render(cfg: &Path, args: &[&str]) -> Run {
    let out = Command::new(common::provider_bin())
        .arg("encryption-config")
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("BAO_KMS_CONFIG")
        .output()
        .expect("run bao-kms-provider");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn testdata() -> Vec<PathBuf> {
    let dir = common::repo_root().join("tests/testdata/kubeadm/encryption-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read testdata")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn is_legacy(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("legacy-"))
}

fn provider_kind(p: &Value) -> &str {
    p.as_object()
        .and_then(|o| o.keys().next())
        .map_or("", String::as_str)
}

fn is_ours(p: &Value) -> bool {
    p["kms"]["name"] == NAME
}

fn covers(pattern: &str, resource: &str) -> bool {
    let strip = |n: &str| match n.strip_suffix('.') {
        Some(core) if !n.starts_with('*') => core.to_owned(),
        _ => n.to_owned(),
    };
    let (pattern, resource) = (strip(pattern), strip(resource));
    let group = resource.split_once('.').map_or("", |(_, g)| g);
    pattern == "*.*"
        || pattern == resource
        || (pattern == "*." && group.is_empty())
        || pattern.strip_prefix("*.") == Some(group)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// What kube-apiserver needs and what the stage promises, checked on the printed document.
/// `kept_identity`: whether the existing entries' identity providers are still there (a write
/// stage with --no-identity drops them, and no later stage brings them back).
fn assert_valid(
    doc: &Value,
    stage: &str,
    resources: &[&str],
    kept_identity: bool,
    existing: &Value,
) {
    let what = format!("{stage} stage: {doc}");
    assert_eq!(doc["apiVersion"], "apiserver.config.k8s.io/v1", "{what}");
    assert_eq!(doc["kind"], "EncryptionConfiguration", "{what}");
    let top: Vec<&String> = doc.as_object().expect("mapping").keys().collect();
    assert_eq!(top.len(), 3, "{what}");
    let entries = doc["resources"].as_array().expect("resources list");
    assert!(!entries.is_empty(), "{what}");
    let mut kms_names = Vec::new();
    for e in entries {
        assert_eq!(e.as_object().map(|o| o.len()), Some(2), "{what}");
        assert!(!strings(&e["resources"]).is_empty(), "{what}");
        let providers = e["providers"].as_array().expect("providers list");
        assert!(!providers.is_empty(), "{what}");
        for p in providers {
            assert_eq!(p.as_object().map(|o| o.len()), Some(1), "{what}");
            let kind = provider_kind(p);
            assert!(
                ["aescbc", "aesgcm", "secretbox", "kms", "identity"].contains(&kind),
                "{what}"
            );
            if kind == "kms" {
                kms_names.push(p["kms"]["name"].as_str().expect("kms name").to_owned());
            }
        }
    }
    // kube-apiserver refuses to start with a KMS v2 name twice.
    let mut unique = kms_names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), kms_names.len(), "{what}");
    // Our resources are selected (first match wins) by the one entry with our provider, in the
    // stage's place: first to write, last (behind what was there) to read and roll back.
    for r in resources {
        let entry = entries
            .iter()
            .find(|e| strings(&e["resources"]).iter().any(|p| covers(p, r)))
            .unwrap_or_else(|| panic!("{r} selected by no entry: {what}"));
        let providers = entry["providers"].as_array().expect("providers");
        let at = providers.iter().position(is_ours).expect("our kms");
        let kms = &providers[at]["kms"];
        assert_eq!(kms["apiVersion"], "v2", "{what}");
        assert_eq!(
            kms["endpoint"], "unix:///run/openbao-kms/kms.sock",
            "{what}"
        );
        if stage == "write" {
            assert_eq!(at, 0, "{what}");
        } else {
            assert!(at > 0 && at == providers.len() - 1, "{what}");
        }
    }
    // Every existing entry's providers are kept in their order (identity dropped only when a
    // write stage was asked to), so everything stored under them still decrypts.
    for old in existing["resources"].as_array().into_iter().flatten() {
        let new = entries
            .iter()
            .find(|e| e["resources"] == old["resources"])
            .unwrap_or_else(|| panic!("entry {} lost: {what}", old["resources"]));
        let kept: Vec<&Value> = new["providers"]
            .as_array()
            .expect("providers")
            .iter()
            .filter(|p| !is_ours(p))
            .collect();
        let want: Vec<&Value> = old["providers"]
            .as_array()
            .expect("providers")
            .iter()
            .filter(|p| kept_identity || provider_kind(p) != "identity")
            .collect();
        assert_eq!(kept, want, "{what}");
    }
}

/// The role's module_utils validator (what it checks before showing a summary) on every output.
const ROLE_SCRIPT: &str = r#"
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ec", sys.argv[1])
ec = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ec)

out = []
for case in json.load(sys.stdin):
    res = {"invalid": []}
    for name, text in sorted(case["outputs"].items()):
        try:
            ec.validate(json.loads(text), name)
        except ec.EncryptionConfigError as e:
            res["invalid"].append(str(e))
    out.append(res)
json.dump(out, sys.stdout)
"#;

fn role(cases: &Value) -> Vec<Value> {
    use std::io::Write;
    let module = common::repo_root()
        .join("ansible/roles/kube_apiserver_kms/module_utils/kube_apiserver_encryption_config.py");
    let mut child = Command::new(common::python_bin())
        .arg("-c")
        .arg(ROLE_SCRIPT)
        .arg(module)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(cases.to_string().as_bytes())
        .expect("write cases");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python output")
}

#[test]
fn each_stage_is_valid_for_real_existing_configs_and_the_role_accepts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "3s");
    let mut cases = Vec::new();
    let mut runs = Vec::new();
    let mut n = 0;
    for file in testdata().iter().filter(|p| !is_legacy(p)) {
        let text = std::fs::read_to_string(file).expect("read testdata");
        let existing: Value = serde_json::to_value(
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).expect("testdata is YAML"),
        )
        .expect("as JSON");
        for resources in [&["secrets"][..], &["secrets", "configmaps"]] {
            for identity in [true, false] {
                let mut base = vec!["--resources".to_string(), resources.join(",")];
                if !identity {
                    base.push("--no-identity".into());
                }
                let with = |extra: &[&str]| {
                    let args: Vec<&str> = base
                        .iter()
                        .map(String::as_str)
                        .chain(extra.iter().copied())
                        .collect();
                    render(&cfg, &args)
                };
                let rendered = with(&[]);
                assert_eq!(rendered.code, 0, "{}", rendered.stderr);
                let file_arg = file.to_str().expect("utf-8 path");
                let mut outputs = serde_json::Map::new();
                let mut got = serde_json::Map::new();
                for stage in STAGES {
                    let r = with(&["--stage", stage, "--existing-config", file_arg]);
                    got.insert(stage.into(), json!([r.code, r.stdout, r.stderr]));
                    if r.code == 0 {
                        let doc: Value = serde_json::from_str(&r.stdout).expect("JSON output");
                        let kept = identity || stage != "write";
                        assert_valid(&doc, stage, resources, kept, &existing);
                        outputs.insert(stage.into(), r.stdout.clone().into());
                    }
                    // The stage's output as the next --existing-config: the second pass.
                    let next = match stage {
                        "read" => vec![("write_after_read", "write")],
                        "write" => vec![
                            ("read_after_write", "read"),
                            ("rollback_after_write", "rollback"),
                        ],
                        _ => vec![],
                    };
                    if r.code != 0 {
                        continue;
                    }
                    n += 1;
                    let ours = dir.path().join(format!("{n}-{stage}.json"));
                    std::fs::write(&ours, &r.stdout).expect("write stage output");
                    for (key, next_stage) in next {
                        let r2 = with(&[
                            "--stage",
                            next_stage,
                            "--existing-config",
                            ours.to_str().expect("utf-8"),
                        ]);
                        assert_eq!(r2.code, 0, "{key}: {}", r2.stderr);
                        let doc: Value = serde_json::from_str(&r2.stdout).expect("JSON");
                        if key == "read_after_write" {
                            // A read pass keeps a file that lists the provider: never undoes write.
                            assert_eq!(r2.stdout, r.stdout, "{key}");
                        }
                        let order = if key == "read_after_write" {
                            "write"
                        } else {
                            next_stage
                        };
                        assert_valid(&doc, order, resources, identity, &existing);
                        outputs.insert(key.into(), r2.stdout.clone().into());
                        got.insert(key.into(), json!([r2.code, r2.stdout, r2.stderr]));
                    }
                }
                let rendered_doc: Value = serde_json::from_str(&rendered.stdout).expect("JSON");
                cases.push(
                    json!({"rendered": rendered_doc, "existing": file_arg, "outputs": outputs}),
                );
                runs.push((
                    format!("{} {resources:?} identity={identity}", file.display()),
                    got,
                ));
            }
        }
    }
    let checked = role(&Value::Array(cases));
    assert_eq!(checked.len(), runs.len());
    for ((what, _), res) in runs.iter().zip(&checked) {
        assert_eq!(res["invalid"], json!([]), "{what}: the role's validator");
    }
    // Both paths were taken: merges that were written, and merges refused because the KMS v2
    // name would be in two entries (exit 64, "only once").
    let refused = runs
        .iter()
        .flat_map(|(_, got)| got.values())
        .filter(|r| r[0] == 64 && r[2].as_str().is_some_and(|e| e.contains("only once")))
        .count();
    let written = runs
        .iter()
        .filter(|(_, got)| got.contains_key("write_after_read"))
        .count();
    assert!(
        refused > 0 && written > 0,
        "refused {refused}, written {written}"
    );
}

#[test]
fn without_existing_config_the_stages_order_identity_and_kms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "3s");
    let none = json!({"resources": []});
    for stage in STAGES {
        let r = render(&cfg, &["--stage", stage]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let doc: Value = serde_json::from_str(&r.stdout).expect("JSON");
        assert_valid(&doc, stage, &["secrets"], true, &none);
        let kinds: Vec<&str> = doc["resources"][0]["providers"]
            .as_array()
            .expect("providers")
            .iter()
            .map(provider_kind)
            .collect();
        let want = if stage == "write" {
            ["kms", "identity"]
        } else {
            ["identity", "kms"]
        };
        assert_eq!(kinds, want, "{stage}");
    }
    // write is the default: the same output as before the option existed.
    assert_eq!(
        render(&cfg, &[]).stdout,
        render(&cfg, &["--stage", "write"]).stdout
    );
}

#[test]
fn the_timeout_is_server_kms_timeout_unless_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "2500ms");
    let timeout = |args: &[&str]| {
        let r = render(&cfg, args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let doc: Value = serde_json::from_str(&r.stdout).expect("JSON");
        doc["resources"][0]["providers"][0]["kms"]["timeout"].clone()
    };
    assert_eq!(timeout(&[]), "2500ms");
    assert_eq!(timeout(&["--timeout", "4s"]), "4s");
    let zero = render(&cfg, &["--timeout", "0s"]);
    assert!(
        zero.code != 0 && zero.stderr.contains("--timeout"),
        "{}",
        zero.stderr
    );
}

#[test]
fn unusable_existing_configs_exit_64_naming_file_and_field_never_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "3s");
    let legacy = testdata()
        .into_iter()
        .find(|p| is_legacy(p))
        .expect("legacy testdata");
    let secret = "c2VjcmV0IGlzIHNlY3VyZQ==";
    let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let cases = [
        (legacy.clone(), "kind/apiVersion"),
        (dir.path().join("missing.yaml"), "cannot read it"),
        (
            write(
                "nokeys.yaml",
                &format!("{head}resources:\n- resources: [secrets]\n  providers:\n  - aesgcm: {{keys: [{{secret: {secret}}}]}}\n"),
            ),
            "resources[0].providers[0].aesgcm.keys",
        ),
        (
            write(
                "syntax.yaml",
                &format!("{head}resources:\n- resources: [secrets]\n  providers: [{{aescbc: {{keys: [{{name: k, secret: {secret}: x}}]}}}}]\n"),
            ),
            "not valid YAML (line 5)",
        ),
    ];
    for (path, field) in cases {
        let r = render(
            &cfg,
            &[
                "--stage",
                "read",
                "--existing-config",
                path.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(r.code, 64, "{}: {}", path.display(), r.stderr);
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert!(
            r.stderr
                .contains(&format!("--existing-config {}", path.display()))
                && r.stderr.contains(field),
            "want {field:?}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains(secret), "a key shown: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    let bad_stage = render(&cfg, &["--stage", "migrate"]);
    assert_eq!(bad_stage.code, 2, "{}", bad_stage.stderr);
}

#[test]
fn help_explains_the_stages_and_the_existing_config() {
    let out = Command::new(common::provider_bin())
        .args(["encryption-config", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--stage <STAGE>",
        "- read:",
        "- write:",
        "- rollback:",
        "[default: write]",
        "--existing-config <FILE>",
        "two passes",
        "exit 64",
        "server.kms_timeout",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}
