//! Health that does not flap: one failed probe does not turn Status not ok (status.unhealthy_after
//! consecutive failures do), and warnings that do not stop serving (a min_decryption_version that
//! blocks retained versions) go to metrics, logs and `doctor`, not to Status healthz.
pub mod common;

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
    assert!(metrics.contains("openbao_kms_key_warnings 1"), "{metrics}");
    eprintln!(
        "FIGURES min-decryption: adopted at v3 with min_decryption_version 3: Status ok; doctor {line:?}; metrics {:?}",
        metrics
            .lines()
            .filter(|l| l.contains("warning"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn one_failed_probe_keeps_status_ok_and_unhealthy_after_failures_turn_it_not_ok() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    let p = Provider::start(&o).await;
    let key_id = p.status().await.key_id;

    // One probe fails (a non-transient 400 is not retried within the probe).
    let failed_before = p.logs().matches("probe failed").count();
    proxy.answer_next(http_response("400 Bad Request", &[]));
    let end = Instant::now() + Duration::from_secs(5);
    let mut seen_not_ok = Vec::new();
    while p.logs().matches("probe failed").count() == failed_before {
        assert!(
            Instant::now() < end,
            "the probe never failed:\n{}",
            p.logs()
        );
        let s = p.status().await;
        if s.healthz != "ok" {
            seen_not_ok.push(s.healthz);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        let s = p.status().await;
        if s.healthz != "ok" {
            seen_not_ok.push(s.healthz);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen_not_ok.is_empty(),
        "one failed probe turned Status not ok: {seen_not_ok:?}"
    );

    // OpenBao unreachable: not ok after three consecutive failures, key_id kept throughout.
    proxy.set_down();
    let down = Instant::now();
    p.wait_status("healthz not ok", |s| s.healthz != "ok").await;
    let took = down.elapsed();
    let s = p.status().await;
    assert_eq!(s.key_id, key_id);
    assert!(s.healthz.contains("OpenBao"), "{}", s.healthz);
    proxy.set_up();
    let up = Instant::now();
    p.wait_healthy().await;
    eprintln!(
        "FIGURES unhealthy-after: one failed probe: Status stayed ok; OpenBao down: not ok after {took:?} (probe_interval 300ms, unhealthy_after 3): {:?}; ok again {:?} after OpenBao returned",
        s.healthz,
        up.elapsed()
    );
}

#[tokio::test]
async fn a_restart_during_an_outage_serves_the_saved_key_id_at_once() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    let mut p = Provider::start(&o).await;
    let key_id = p.status().await.key_id;
    assert_eq!(p.stop(), Some(0));

    proxy.set_down();
    let restarted = Instant::now();
    p.start_process();
    p.wait_status("the saved key_id", |s| s.key_id == key_id)
        .await;
    let first = restarted.elapsed();
    let s = p.status().await;
    assert!(
        s.healthz.starts_with("waiting for OpenBao"),
        "{}",
        s.healthz
    );
    assert!(
        first < Duration::from_secs(1),
        "first Status after {first:?}"
    );

    let t = Instant::now();
    let err = p
        .client()
        .await
        .encrypt(tonic::Request::new(bao_kms_provider::pb::EncryptRequest {
            plaintext: vec![1; 32],
            uid: "outage".into(),
        }))
        .await
        .expect_err("no Encrypt without OpenBao");
    let took = t.elapsed();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    proxy.set_up();
    let up = Instant::now();
    p.wait_healthy().await;
    assert_eq!(p.status().await.key_id, key_id);
    eprintln!(
        "FIGURES restart-outage (process): first Status {first:?} after the restart with the saved key_id, healthz {:?}; Encrypt Unavailable after {took:?}; healthy {:?} after OpenBao returned",
        s.healthz,
        up.elapsed()
    );
}

/// kube-apiserver stops writing only when Status stops returning a valid key_id: OpenBao
/// answering that the key is denied (or gone) withholds it; an unreachable OpenBao keeps it.
#[tokio::test]
async fn a_key_denied_by_openbao_withholds_the_key_id_and_an_unreachable_openbao_keeps_it() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    let p = Provider::start(&o).await;
    let key_id = p.status().await.key_id;
    assert!(!key_id.is_empty());

    // The policy no longer grants the key: 403 on the key read, also after a fresh login.
    let denied = Instant::now();
    bao.root(
        reqwest::Method::PUT,
        "sys/policies/acl/bao-kms-provider",
        Some(serde_json::json!({ "policy": "path \"sys/nothing\" { capabilities = [\"read\"] }" })),
    )
    .await;
    p.wait_status("an empty key_id while the key is denied", |s| {
        s.key_id.is_empty()
    })
    .await;
    let withheld_after = denied.elapsed();
    let s = p.status().await;
    assert!(s.healthz.contains("403"), "{}", s.healthz);

    // Access back: the same key_id, healthy.
    bao.root(
        reqwest::Method::PUT,
        "sys/policies/acl/bao-kms-provider",
        Some(serde_json::json!({ "policy": policy_text("transit", "k8s-etcd") })),
    )
    .await;
    p.wait_status("the key_id back", |s| {
        s.key_id == key_id && s.healthz == "ok"
    })
    .await;

    // Unreachable for longer than it took to withhold the key_id: the key_id stays.
    proxy.set_down();
    p.wait_status("healthz not ok", |s| s.healthz != "ok").await;
    let down = Instant::now();
    while down.elapsed() < withheld_after * 2 {
        assert_eq!(p.status().await.key_id, key_id, "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set_up();
    p.wait_healthy().await;
    eprintln!(
        "FIGURES key withdrawn: key_id withheld {withheld_after:?} after the policy denied the key; kept through {:?} of OpenBao unreachable",
        down.elapsed()
    );
}
