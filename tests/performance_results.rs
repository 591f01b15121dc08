//! docs/performance-results.json stays machine-readable: every record names its commit, date,
//! machine and scenario, and docs/performance.md's "Current figures" are the latest run's.
use std::path::Path;

use serde_json::Value;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[test]
fn every_run_names_commit_date_machine_and_scenario() {
    let doc: Value =
        serde_json::from_str(&read("docs/performance-results.json")).expect("valid JSON");
    let runs = doc["runs"].as_array().expect("`runs` is an array");
    assert!(!runs.is_empty(), "no runs");
    let mut problems = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let commit = r["commit"].as_str().unwrap_or_default();
        if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            problems.push(format!("run {i}: commit {commit:?} is not a full hash"));
        }
        if !is_date(r["date"].as_str().unwrap_or_default()) {
            problems.push(format!("run {i} ({commit}): date is not YYYY-MM-DD"));
        }
        if r["machine"].as_str().unwrap_or_default().is_empty() {
            problems.push(format!("run {i} ({commit}): no machine"));
        }
        if !matches!(r["scenario"].as_str(), Some("https" | "http")) {
            problems.push(format!("run {i} ({commit}): scenario is not https or http"));
        }
        if r["figures"].as_object().is_none() && r["rows"].as_array().is_none() {
            problems.push(format!("run {i} ({commit}): neither figures nor rows"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn current_figures_are_the_latest_run() {
    let doc: Value =
        serde_json::from_str(&read("docs/performance-results.json")).expect("valid JSON");
    let latest = doc["runs"]
        .as_array()
        .and_then(|r| r.last())
        .expect("at least one run");
    let commit = &latest["commit"].as_str().expect("commit")[..7];
    let date = latest["date"].as_str().expect("date");
    let page = read("docs/performance.md");
    let current = page
        .split_once("## Current figures")
        .expect("docs/performance.md has a `## Current figures` section")
        .1;
    let expected = format!("Commit **{commit}**, measured **{date}**");
    assert!(
        current.contains(&expected),
        "docs/performance.md's current figures must say `{expected}` (the last run of \
         docs/performance-results.json)"
    );
}
