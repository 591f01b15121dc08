//! The config files the packages install stay in step with the config contract (src/config):
//! the example documents every field with its real default, and the /etc default is inert until
//! the operator fills it in.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bao_kms_provider::config::{parse, render_effective, validate, Environment, RawConfig};

fn packaging(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(packaging(rel)).expect("read packaging file")
}

/// Turns the commented settings ("#key = value", "#[section]") into live ones; prose ("# ...")
/// stays a comment.
fn uncomment(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with('[') || rest.starts_with(|c: char| c.is_ascii_lowercase()) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_table() {
                keys(v, &path, out);
            } else {
                out.insert(path);
            }
        }
    }
}

fn key_set(toml_text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    keys(
        &toml_text.parse::<toml::Value>().expect("valid TOML"),
        "",
        &mut out,
    );
    out
}

#[test]
fn example_config_lists_every_field_with_its_default() {
    let example = uncomment(&read("usr/share/doc/bao-kms-provider/examples/config.toml"));
    let defaults = render_effective(&RawConfig::default());
    assert_eq!(
        key_set(&example),
        key_set(&defaults),
        "the example must list exactly the config fields"
    );
    let raw = parse(&example, Path::new("examples/config.toml")).expect("example parses");
    assert_eq!(
        render_effective(&raw),
        defaults,
        "every value in the example must be the default"
    );
}

#[test]
fn example_config_as_shipped_has_no_live_setting() {
    let text = read("usr/share/doc/bao-kms-provider/examples/config.toml");
    assert!(
        key_set(&text).is_empty(),
        "every setting in the example must be commented out"
    );
}

#[test]
fn etc_default_is_invalid_until_filled_in_and_valid_once_uncommented() {
    let text = read("etc/openbao-kms/config.toml");
    let path = Path::new("/etc/openbao-kms/config.toml");
    let err = validate(
        &parse(&text, path).expect("parses"),
        &Environment::default(),
    )
    .expect_err("the shipped default must not be a usable config");
    assert_eq!(err.field(), Some("openbao.address"), "{err}");
    let filled = parse(&uncomment(&text), path).expect("uncommented default parses");
    validate(&filled, &Environment::default())
        .expect("the fields the default names are all that is required");
}
