//! bao-kms-provider.toml(5), as examples/mangen.rs writes it from docs/configuration.md: every
//! field of the doc's table has its entry, every section its heading, and groff formats the page
//! without a warning (as lintian's manpage check does, through preconv).
use std::io::Write;
use std::process::{Command, Stdio};

#[path = "../examples/mangen/config_page.rs"]
#[allow(dead_code)]
mod config_page;

pub mod common;

fn doc() -> String {
    std::fs::read_to_string(common::repo_root().join("docs/configuration.md")).expect("read doc")
}

fn page() -> String {
    config_page::render("2026-12-07").render()
}

#[test]
fn every_field_and_section_of_the_doc_is_in_the_page() {
    let (doc, page) = (doc(), page());
    // The first cell of each table row: one field, or several as code spans.
    let fields: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split(" | ").next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .collect();
    assert!(fields.len() > 30, "few fields found in the doc: {fields:?}");
    for f in &fields {
        let entry = format!("\\fB{}\\fR", f.replace('-', "\\-"));
        assert!(page.contains(&entry), "no entry for {f} in the page");
    }
    for h in doc.lines().filter_map(|l| l.strip_prefix("## ")) {
        let title = h.replace('`', "").to_uppercase();
        assert!(
            page.contains(&format!(".SH {title}")) || page.contains(&format!(".SH \"{title}\"")),
            "no section {h:?} in the page"
        );
    }
}

#[test]
fn groff_formats_the_page_without_warnings() {
    let mut groff = Command::new("groff")
        // -k: preconv, as man-db runs it (the page is UTF-8, like the doc).
        .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run groff (package groff-base, which lintian brings)");
    groff
        .stdin
        .take()
        .expect("stdin")
        .write_all(page().as_bytes())
        .expect("write page");
    let out = groff.wait_with_output().expect("groff");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.trim().is_empty(),
        "{warnings}"
    );
}
