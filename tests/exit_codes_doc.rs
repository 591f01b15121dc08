//! The exit codes as README, the man page (EXIT STATUS, written by examples/mangen.rs) and
//! `--help` state them, against each other and against what the binary returns. Each failure
//! names the place that is out of step.
pub mod common;

use std::collections::BTreeSet;
use std::process::Command;

fn read(rel: &str) -> String {
    let p = common::repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The numbers standing alone in `text` (not part of a word such as `(8)` after a page name).
fn codes(text: &str) -> BTreeSet<u32> {
    let text = text.replace("(8)", "");
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// The text from `start` up to the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str, what: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{what}: no {start:?}"));
    let rest = &text[from + start.len()..];
    let to = rest
        .find(end)
        .unwrap_or_else(|| panic!("{what}: no {end:?} after {start:?}"));
    &rest[..to]
}

const GENERAL: [u32; 5] = [0, 1, 2, 64, 65];

#[test]
fn readme_and_man_page_list_the_same_general_exit_codes() {
    let readme = read("README.md");
    let line = between(&readme, "Exit codes: ", "(`verify-etcd-value`", "README.md");
    assert_eq!(codes(line), GENERAL.into(), "README.md: {line}");
    let mangen = read("examples/mangen.rs");
    let man = between(
        &mangen,
        "[\"EXIT STATUS\"]",
        "roff.control",
        "examples/mangen.rs",
    );
    // The page's list is `Exit::summary()`, which the library's own test holds to README's line.
    assert!(
        man.contains("Exit::summary()"),
        "man page EXIT STATUS is not generated from Exit::summary(): {man}"
    );
    assert!(
        codes(man).is_subset(&GENERAL.into()),
        "man page EXIT STATUS names a code README does not: {man}"
    );
    assert!(
        man.contains("verify-etcd-value"),
        "man page: points at verify-etcd-value's own codes"
    );
}

/// The codes in the `Exit codes` table of `subcommand --help`.
fn help_codes(subcommand: &str) -> BTreeSet<u32> {
    let out = Command::new(common::provider_bin())
        .args([subcommand, "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let table = help
        .split_once("Exit codes")
        .unwrap_or_else(|| panic!("{subcommand} --help has no exit codes:\n{help}"))
        .1;
    table
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The codes in the table of docs/restore-drill.md that starts after `heading`.
fn drill_codes(heading: &str) -> BTreeSet<u32> {
    let drill = read("docs/restore-drill.md");
    let section = between(&drill, heading, "\n#", "docs/restore-drill.md");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn verify_etcd_value_help_and_restore_drill_list_the_same_codes() {
    let in_help = help_codes("verify-etcd-value");
    assert_eq!(
        in_help,
        drill_codes("## Exit codes"),
        "verify-etcd-value --help against docs/restore-drill.md"
    );
    assert_eq!(in_help, (0..=7).chain([64]).collect());
}

#[test]
fn scan_etcd_help_and_restore_drill_list_the_same_codes() {
    let in_help = help_codes("scan-etcd");
    assert_eq!(
        in_help,
        drill_codes("### scan-etcd exit codes"),
        "scan-etcd --help against docs/restore-drill.md"
    );
    assert_eq!(in_help, [0, 1, 2, 3, 4, 5, 7, 8, 64].into());
}

#[test]
fn the_binary_returns_the_documented_codes() {
    let run = |args: &[&str]| {
        Command::new(common::provider_bin())
            .args(args)
            .env_remove("BAO_KMS_CONFIG")
            .output()
            .expect("run")
            .status
            .code()
    };
    assert_eq!(run(&["no-such-subcommand"]), Some(2), "usage error");
    assert_eq!(
        run(&["check-config", "--config", "/nonexistent/config.toml"]),
        Some(64),
        "configuration error"
    );
    assert_eq!(
        run(&["encryption-config", "--config", "/nonexistent/config.toml"]),
        Some(64),
        "configuration error"
    );
    assert_eq!(run(&["--version"]), Some(0));
}
