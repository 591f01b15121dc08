//! `state acknowledge-trim` on a real etcd, OpenBao and provider: refused (exit 8, nothing
//! written) while a value is on the version to be trimmed; recorded once every value is
//! rewritten; and with the record, a raised min_decryption_version is no key warning for the
//! running provider nor for `doctor`, while without it the warning is there.
pub mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::etcd::{kube_writer, Etcd};
use common::*;
use serde_json::{json, Value};

const PROVIDER: &str = "openbao-kms";

/// Exit code and stdout+stderr of `state acknowledge-trim --min-decryption-version n`.
fn acknowledge(p: &Provider, etcd: &Etcd, n: u32) -> (i32, String) {
    let out = Command::new(provider_bin())
        .args(["state", "acknowledge-trim", "--config"])
        .arg(&p.config)
        .args(["--min-decryption-version", &n.to_string()])
        .args(etcd.cli_args())
        .output()
        .expect("run acknowledge-trim");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The trim records in the state directory.
fn records(state_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state_dir)
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("trim-") && n.ends_with(".json"))
        })
        .collect()
}

/// doctor's key-profile line.
fn key_profile(p: &Provider) -> String {
    let out = Command::new(provider_bin())
        .args(["doctor", "--config"])
        .arg(&p.config)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.contains(" key-profile: "))
        .unwrap_or_else(|| panic!("no key-profile line:\n{stdout}"))
        .to_owned()
}

async fn wait_warnings(p: &Provider, count: u32) {
    let line = format!("openbao_kms_key_warnings {count}");
    wait_for(&line, Duration::from_secs(15), || async {
        p.http_get(p.metrics_port, "/metrics")
            .await
            .1
            .lines()
            .any(|l| l == line)
    })
    .await;
}

#[tokio::test]
async fn a_trim_is_recorded_only_after_a_clean_scan_and_then_warns_no_more() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let etcd = Etcd::start().await;
    let c = etcd.client();
    let mut writer = kube_writer(&p, PROVIDER).await;
    let mut put = async |key: &str| {
        let value = writer.write(key, b"secret").await.expect("write");
        c.put(key.as_bytes(), &value).await.expect("put");
    };
    let old: Vec<String> = (0..3)
        .map(|i| format!("/registry/secrets/a/s{i}"))
        .collect();
    for key in &old {
        put(key).await;
    }
    let first = p.status().await.key_id;
    bao.rotate().await;
    p.wait_status("v2 active", |s| s.key_id != first).await;
    put("/registry/secrets/b/new").await;

    // (a) Values on v1: refused, nothing written.
    let (code, out) = acknowledge(&p, &etcd, 2);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains(&format!("3 values on key_id {first} (Transit v1")),
        "{out}"
    );
    assert!(records(&p.state_dir).is_empty(), "{out}");

    // (b) Every value rewritten onto v2: recorded.
    for key in &old {
        put(key).await;
    }
    let (code, out) = acknowledge(&p, &etcd, 2);
    assert_eq!(code, 0, "{out}");
    let files = records(&p.state_dir);
    assert_eq!(files.len(), 1, "{out}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("record")).expect("json");
    assert_eq!(record["min_decryption_version"], 2, "{record}");
    assert_eq!(record["scans"][0]["prefix"], "/registry/secrets/");
    assert_eq!(record["scans"][0]["values"], 4, "{record}");
    assert!(out.contains(&files[0].display().to_string()), "{out}");

    // (c) Without the record, the raised min_decryption_version blocks retained v1.
    let aside = p.dir.path().join("trim-record.aside");
    std::fs::rename(&files[0], &aside).expect("move record aside");
    bao.root(
        reqwest::Method::POST,
        "transit/keys/k8s-etcd/config",
        Some(json!({ "min_decryption_version": 2 })),
    )
    .await;
    wait_warnings(&p, 1).await;
    let line = key_profile(&p);
    assert!(line.starts_with("warn"), "{line}");

    // With it, neither the provider nor doctor warns.
    std::fs::rename(&aside, &files[0]).expect("restore record");
    wait_warnings(&p, 0).await;
    let line = key_profile(&p);
    assert!(
        line.starts_with("ok") && line.contains("versions below 2 trimmed deliberately (recorded "),
        "{line}"
    );
    let show = Command::new(provider_bin())
        .args(["state", "show", "--config"])
        .arg(&p.config)
        .output()
        .expect("state show");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("trimmed below v2 (recorded "), "{show}");
    assert_eq!(p.status().await.healthz, "ok");
}
