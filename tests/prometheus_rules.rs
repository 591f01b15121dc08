//! The alert rules in docs/prometheus are valid (`promtool check rules`), pass their unit tests
//! (`promtool test rules tests/prometheus/*.test.yml`), each alert is tested firing and not
//! firing, carries a summary, a description and a runbook_url whose section exists in
//! docs/operations.md, and every kube-apiserver metric the rules and the dashboard query is one
//! kube-apiserver exposes. promtool comes from Debian's `prometheus` package (scripts/tools.sh);
//! without it these tests fail.
pub mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use common::repo_root;

const RULES: &str = "docs/prometheus/bao-kms-provider.rules.yml";

/// `$PROMTOOL`, else `promtool` on PATH.
fn promtool() -> Command {
    Command::new(std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into()))
}

fn run(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.current_dir(repo_root()).output().unwrap_or_else(|e| {
        panic!("{shown}: cannot run ({e}); install Debian's prometheus package (scripts/tools.sh)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown} failed:\n{text}");
    text
}

fn test_files() -> Vec<PathBuf> {
    let dir = repo_root().join("tests/prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/prometheus exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.yml in {}", dir.display());
    files
}

/// Each alert's name and its annotation keys with their values, read line by line (the file
/// keeps one `key: value` per line under `annotations:`).
fn alerts(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            let name = name.trim().to_owned();
            assert!(
                out.insert(name.clone(), BTreeMap::new()).is_none(),
                "{name} defined twice"
            );
            current = Some(name);
        } else if let (Some(name), Some((k, v))) = (&current, t.split_once(':')) {
            if ["summary", "description", "runbook_url"].contains(&k) {
                out.get_mut(name)
                    .expect("current alert")
                    .insert(k.to_owned(), v.trim().to_owned());
            }
        }
    }
    out
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to '-', other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let mut check = promtool();
    check.args(["check", "rules", RULES]);
    let text = run(check);
    assert!(text.contains("SUCCESS"), "{text}");

    let mut test = promtool();
    test.args(["test", "rules"]).args(test_files());
    let text = run(test);
    assert!(
        !text.contains("FAILED"),
        "promtool test rules reported a failure:\n{text}"
    );
}

#[test]
fn every_alert_is_documented_and_tested_firing_and_not_firing() {
    let rules = std::fs::read_to_string(repo_root().join(RULES)).expect("rules file");
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 10, "alerts found: {:?}", alerts.keys());

    let ops = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("ops doc");
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    for (name, a) in &alerts {
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                a.get(key).is_some_and(|v| !v.is_empty()),
                "{name} has no {key}"
            );
        }
        let url = &a["runbook_url"];
        let (page, section) = url.split_once('#').expect("runbook_url has a #section");
        assert!(page.ends_with("docs/operations.md"), "{name}: {url}");
        assert!(
            anchors.contains(section),
            "{name}: docs/operations.md has no section #{section}"
        );
    }

    // alertname -> (tested firing, tested not firing), from each `- eval_time:` block.
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for file in test_files() {
        let text = std::fs::read_to_string(&file).expect("test file");
        for block in text.split("- eval_time:").skip(1) {
            let name = block
                .lines()
                .find_map(|l| l.trim().strip_prefix("alertname:"))
                .map(|n| n.trim().to_owned())
                .unwrap_or_else(|| panic!("{}: an eval block without alertname", file.display()));
            assert!(
                alerts.contains_key(&name),
                "{}: {name} is not an alert of the rules file",
                file.display()
            );
            let quiet = block.contains("exp_alerts: []");
            let entry = seen.entry(name).or_default();
            if quiet {
                entry.1 = true;
            } else {
                entry.0 = true;
            }
        }
    }
    for name in alerts.keys() {
        assert_eq!(
            seen.get(name).copied(),
            Some((true, true)),
            "{name}: needs a test case where it fires and one where it does not (tests/prometheus)"
        );
    }
}

/// kube-apiserver's envelope encryption metrics (k8s.io/apiserver,
/// pkg/storage/value/encrypt/envelope/metrics, the same in Kubernetes 1.30 to 1.37), with the
/// suffixes Prometheus adds to histograms.
const APISERVER_METRICS: &[&str] = &[
    "apiserver_envelope_encryption_dek_cache_fill_percent",
    "apiserver_envelope_encryption_dek_cache_inter_arrival_time_seconds",
    "apiserver_envelope_encryption_kms_operations_latency_seconds",
    "apiserver_envelope_encryption_key_id_hash_total",
    "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds",
    "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds",
    "apiserver_envelope_encryption_invalid_key_id_from_status_total",
    "apiserver_envelope_encryption_dek_source_cache_size",
];

#[test]
fn kube_apiserver_metrics_in_rules_and_dashboard_exist() {
    let known = |name: &str| {
        APISERVER_METRICS.iter().any(|m| {
            name == *m
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{m}{s}"))
        })
    };
    let mut used = 0;
    for path in [RULES, "docs/grafana/bao-kms-provider.json"] {
        let text = std::fs::read_to_string(repo_root().join(path)).expect(path);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("apiserver_envelope_encryption_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            assert!(known(name), "{path}: kube-apiserver has no metric {name}");
            used += 1;
            rest = &tail[end..];
        }
    }
    assert!(
        used >= 4,
        "the rules and dashboard use kube-apiserver's metrics"
    );
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Every query of the Grafana dashboard parses as PromQL: promtool checks them as recording
/// rules, with the dashboard variables replaced by what "All" selects.
#[test]
fn dashboard_queries_are_valid_promql() {
    let path = repo_root().join("docs/grafana/bao-kms-provider.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut queries = Vec::new();
    exprs(&dashboard["panels"], &mut queries);
    assert!(queries.len() >= 20, "{queries:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q.replace("$instance", ".*").replace("$apiserver", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::Value::String(q)
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).expect("write");
    let mut check = promtool();
    check.args(["check", "rules"]).arg(&file);
    run(check);
}
