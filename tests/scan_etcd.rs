//! `scan-etcd` on a real etcd with values written as kube-apiserver writes them, through a real
//! provider and OpenBao: counts per key_id across a Transit rotation (the older key_id retired,
//! exit 8), other schemes and providers by prefix, plaintext, malformed values, more values than
//! one page holds, and never a value in the output.
pub mod common;

use std::process::Command;

use common::etcd::{kube_writer, Etcd};
use common::*;
use serde_json::Value;

const PROVIDER: &str = "openbao-kms";

struct Scan {
    code: i32,
    out: String,
}

impl Scan {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

fn scan(p: &Provider, etcd: &Etcd, prefix: &str, output: &str) -> Scan {
    let out = Command::new(provider_bin())
        .arg("scan-etcd")
        .arg("--config")
        .arg(&p.config)
        .args(["--prefix", prefix, "--output", output])
        .args(etcd.cli_args())
        .output()
        .expect("run scan-etcd");
    Scan {
        code: out.status.code().unwrap_or(-1),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `(key_id, state, transit_version, values)` of a JSON report.
fn key_ids(report: &Value) -> Vec<(String, String, u64, u64)> {
    report["key_ids"]
        .as_array()
        .expect("key_ids")
        .iter()
        .map(|k| {
            (
                k["key_id"].as_str().unwrap_or_default().to_owned(),
                k["state"].as_str().unwrap_or_default().to_owned(),
                k["transit_version"].as_u64().unwrap_or(0),
                k["values"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn scan_counts_values_per_key_id_and_kind_and_exits_on_retired_versions() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let etcd = Etcd::start().await;
    let c = etcd.client();
    let mut writer = kube_writer(&p, PROVIDER).await;
    let marker = format!("marker-{:016x}", rand::random::<u64>());
    let mut put = async |key: String, plaintext: &str| {
        let value = writer
            .write(&key, plaintext.as_bytes())
            .await
            .expect("write");
        c.put(key.as_bytes(), &value).await.expect("put");
    };
    for i in 0..3 {
        put(format!("/registry/secrets/old/s{i}"), &marker).await;
    }
    let first = p.status().await.key_id;

    bao.rotate().await;
    p.wait_status("Status key_id changes after rotation", |s| {
        s.key_id != first
    })
    .await;
    for i in 0..300 {
        put(format!("/registry/secrets/new/s{i:03}"), &marker).await;
    }
    let second = p.status().await.key_id;
    // Outside the scanned prefix, in plaintext: not counted.
    c.put(b"/registry/configmaps/default/cm", marker.as_bytes())
        .await
        .expect("put");

    let all = scan(&p, &etcd, "/registry/secrets/", "json");
    assert_eq!(all.code, 8, "a value on the retired key_id:\n{}", all.out);
    let report = all.json();
    assert_eq!(report["values"], 303, "{}", all.out);
    assert_eq!(report["result"], "RETIRED KEY VERSION");
    let mut expected = vec![
        (first.clone(), "retired".to_owned(), 1, 3),
        (second.clone(), "active".to_owned(), 2, 300),
    ];
    expected.sort();
    assert_eq!(key_ids(&report), expected, "sorted by key_id:\n{}", all.out);
    assert_eq!(report["unencrypted"]["values"], 0);

    let fresh = scan(&p, &etcd, "/registry/secrets/new/", "text");
    assert_eq!(fresh.code, 0, "{}", fresh.out);
    assert!(
        fresh
            .out
            .contains(&format!("key_id:      {second} (active, Transit v2): 300")),
        "{}",
        fresh.out
    );
    assert!(fresh.out.contains("result:      ok"), "{}", fresh.out);

    // Other schemes and providers by their public prefix, plaintext, then a malformed value.
    let mixed = "/registry/secrets/mixed/";
    let raw = async |name: &str, value: String| {
        c.put(format!("{mixed}{name}").as_bytes(), value.as_bytes())
            .await
            .expect("put");
    };
    raw("a", format!("k8s:enc:aescbc:v1:key1:{marker}")).await;
    raw("b", format!("k8s:enc:kms:v2:other-kms:{marker}")).await;
    let run = scan(&p, &etcd, mixed, "json");
    assert_eq!(run.code, 4, "{}", run.out);
    let r = run.json();
    assert_eq!(r["other"]["k8s:enc:aescbc:v1:key1:"]["values"], 1);
    assert_eq!(
        r["other"]["k8s:enc:kms:v2:other-kms:"]["first_key"],
        format!("{mixed}b")
    );

    raw(
        "c",
        format!("{{\"kind\":\"Secret\",\"data\":{{\"m\":\"{marker}\"}}}}"),
    )
    .await;
    let run = scan(&p, &etcd, mixed, "text");
    assert_eq!(run.code, 3, "{}", run.out);
    assert!(
        run.out
            .contains(&format!("unencrypted: 1 (first: {mixed}c)")),
        "{}",
        run.out
    );

    raw("d", format!("k8s:enc:kms:v2:{PROVIDER}:not protobuf")).await;
    for output in ["text", "json"] {
        let run = scan(&p, &etcd, mixed, output);
        assert_eq!(run.code, 7, "{}", run.out);
        assert!(
            !run.out.contains(&marker),
            "no value in the {output} output:\n{}",
            run.out
        );
    }
    let all = scan(&p, &etcd, "/registry/", "text");
    assert!(
        !all.out.contains(&marker) && all.out.contains("values:      308"),
        "{}",
        all.out
    );

    // etcd down: could not check.
    drop(etcd);
    let down = Command::new(provider_bin())
        .args(["scan-etcd", "--provider-name", PROVIDER])
        .args(["--etcd-endpoint", "http://127.0.0.1:9", "--timeout", "2s"])
        .output()
        .expect("run");
    assert_eq!(down.status.code(), Some(1));
}
