//! Health that does not flap: one failed probe does not turn Status not ok (status.unhealthy_after
//! consecutive failures do), and warnings that do not stop serving (a min_decryption_version that
//! blocks retained versions) go to metrics, logs and `doctor`, not to Status healthz.
mod common;

use std::time::{Duration, Instant};

use common::faults::{http_response, FaultProxy};
use common::*;

#[tokio::test]
async fn a_key_adopted_with_min_decryption_version_3_is_healthy_and_warned_about() {
    let bao = Bao::start().await;
    bao.rotate().await;
    bao.rotate().await;
    bao.root(
        reqwest::Method::POST,
        "transit/keys/k8s-etcd/config",
        Some(serde_json::json!({ "min_decryption_version": 3 })),
    )
    .await;
    let key = bao
        .root(reqwest::Method::GET, "transit/keys/k8s-etcd", None)
        .await;
    eprintln!("key versions listed by OpenBao: {}", key["data"]["keys"]);
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut c = p.client().await;
    let e = encrypt(&mut c, b"adopted").await;
    assert_eq!(
        e.annotations
            .get("key-version.kms.openbao.org")
            .map(|v| v.as_slice()),
        Some(&b"3"[..])
    );
    // Stays healthy over several probes.
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        assert_eq!(p.status().await.healthz, "ok", "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = std::process::Command::new(provider_bin())
        .args(["doctor", "--config"])
        .arg(&p.config)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("doctor");
    let doctor = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = doctor
        .lines()
        .find(|l| l.contains("key-profile"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.starts_with("warn") && line.contains("versions below 3 cannot be decrypted"),
        "{doctor}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning does not fail doctor: {doctor}"
    );
    let (_, metrics) = p.http_get(p.metrics_port, "/metrics").await;
    eprintln!(
        "FIGURES min-decryption: adopted at v3 with min_decryption_version 3: Status ok; doctor {line:?}; metrics {:?}",
        metrics
            .lines()
            .filter(|l| l.contains("warning"))
            .collect::<Vec<_>>()
    );
}
