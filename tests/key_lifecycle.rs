//! Key lifecycle against a real OpenBao: observed rotation with delayed promotion, decrypting old
//! versions, restart stability, the registry's lock and integrity checks, and min_decryption_version.
pub mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

fn slow_rotation(o: &mut ProviderOptions) {
    o.rotation = "[rotation]\nstable_observations = 3\nactivation_delay = \"2s\"\n".into();
}

fn cli(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(provider_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn rotation_is_promoted_only_when_stable_and_old_versions_keep_decrypting() {
    let bao = Bao::start().await;
    let mut o = ProviderOptions::new(&bao);
    slow_rotation(&mut o);
    let p = Provider::start(&o).await;
    let mut c = p.client().await;
    let v1_id = p.status().await.key_id;
    let under_v1 = encrypt(&mut c, &[1u8; 32]).await;

    bao.rotate().await;
    // Pending first: Status (and Encrypt) keep v1 until the new version is stable and the delay passed.
    let config = &p.config;
    wait_for(
        "v2 pending in the registry",
        Duration::from_secs(10),
        || async move { cli(&["state", "show"], config).1.contains("pending") },
    )
    .await;
    assert_eq!(
        p.status().await.key_id,
        v1_id,
        "no promotion before stable_observations and activation_delay"
    );

    // While the switch happens, Encrypt's key_id always equals a Status key_id around it.
    let mut switched = false;
    for _ in 0..100 {
        let before = p.status().await.key_id;
        let e = encrypt(&mut c, &[2u8; 32]).await;
        let after = p.status().await.key_id;
        assert!(
            e.key_id == before || e.key_id == after,
            "Encrypt key_id {} matches neither Status",
            e.key_id
        );
        if after != v1_id && e.key_id == after {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "v2 promoted within 10 s:\n{}", p.logs());
    let v2 = encrypt(&mut c, &[2u8; 32]).await;
    assert_eq!(v2.annotations["key-version.kms.openbao.org"], b"2");

    bao.rotate().await;
    p.wait_status("v3 active", |s| s.key_id != v1_id && s.key_id != v2.key_id)
        .await;
    let v3_id = p.status().await.key_id;
    for (e, plain) in [(&under_v1, [1u8; 32]), (&v2, [2u8; 32])] {
        let d = c
            .decrypt(decrypt_request(e))
            .await
            .expect("old version decrypts")
            .into_inner();
        assert_eq!(d.plaintext, plain);
    }
    let (code, table, _) = cli(&["state", "show"], &p.config);
    assert_eq!(code, 0);
    assert!(
        table.contains(&v1_id) && table.contains(&v2.key_id) && table.contains(&v3_id),
        "{table}"
    );
    assert_eq!(table.matches("retired").count(), 2, "{table}");
    assert_eq!(table.matches("active").count(), 1, "{table}");
    let (code, out, err) = cli(&["state", "verify"], &p.config);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("intact") && out.contains("3 versions"),
        "{out}"
    );
}

#[tokio::test]
async fn restart_keeps_the_same_key_ids_and_a_second_process_is_refused() {
    let bao = Bao::start().await;
    let mut p = Provider::start(&ProviderOptions::new(&bao)).await;
    let v1 = p.status().await.key_id;
    bao.rotate().await;
    p.wait_status("v2 active", |s| s.key_id != v1 && s.healthz == "ok")
        .await;
    let mut c = p.client().await;
    let first = p.status().await.key_id;
    let old = encrypt(&mut c, &[4u8; 32]).await;
    let registry = std::fs::read(p.state_dir.join("key-registry.json")).expect("registry");

    // A second provider on the same state_dir fails clearly while the first holds the lock.
    let mut o2 = ProviderOptions::new(&bao);
    o2.state_dir = Some(p.state_dir.clone());
    let second = Provider::spawn(&o2);
    let out = Command::new(provider_bin())
        .args(["serve", "--config"])
        .arg(&second.config)
        .output()
        .expect("run second");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("locked by another process") && err.contains("pid"),
        "{err}"
    );
    drop(second);

    assert_eq!(p.stop(), Some(0));
    p.start_process();
    p.wait_healthy().await;
    assert_eq!(
        p.status().await.key_id,
        first,
        "same key_id after restart (no regeneration)"
    );
    let mut c = p.client().await;
    assert_eq!(
        c.decrypt(decrypt_request(&old))
            .await
            .expect("decrypt")
            .into_inner()
            .plaintext,
        [4u8; 32]
    );
    let after = std::fs::read(p.state_dir.join("key-registry.json")).expect("registry");
    assert_eq!(registry, after, "an unchanged registry is not rewritten");
}

#[tokio::test]
async fn damaged_truncated_or_rolled_back_registry_stops_start_and_is_left_untouched() {
    let bao = Bao::start().await;
    let mut p = Provider::start(&ProviderOptions::new(&bao)).await;
    let path = p.state_dir.join("key-registry.json");
    let generation_one = std::fs::read(&path).expect("registry");
    bao.rotate().await;
    p.wait_status("v2 active", |s| s.healthz == "ok").await;
    let c = p.client().await;
    let target = p.status().await.key_id;
    wait_for("Encrypt with v2", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            encrypt(&mut c, &[1; 32]).await.annotations["key-version.kms.openbao.org"] == b"2"
        }
    })
    .await;
    assert_ne!(
        std::fs::read(&path).expect("registry"),
        generation_one,
        "rotation persisted ({target})"
    );
    assert_eq!(p.stop(), Some(0));
    let good = std::fs::read(&path).expect("registry");

    let serve = |p: &Provider| {
        let out = Command::new(provider_bin())
            .args(["serve", "--config"])
            .arg(&p.config)
            .output()
            .expect("serve");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "not a valid registry file",
        ),
        (
            "hand-edited",
            String::from_utf8(good.clone())
                .expect("utf8")
                .replacen("\"retired\"", "\"active\"", 1)
                .into_bytes(),
            "content hash does not match",
        ),
        ("rolled back", generation_one.clone(), "rolled back"),
    ];
    for (what, bytes, expect) in cases {
        std::fs::write(&path, &bytes).expect("write");
        let (code, err) = serve(&p);
        assert_eq!(
            code,
            Some(65),
            "{what}: exit 65 (data error), got {code:?}: {err}"
        );
        assert!(
            err.contains(expect) && err.contains("key-registry.json"),
            "{what}: {err}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "{what}: file left untouched"
        );
        let (code, _, verr) = cli(&["state", "verify"], &p.config);
        assert_ne!(code, 0, "{what}: state verify fails too");
        assert!(verr.contains(expect), "{what}: {verr}");
    }
    std::fs::remove_file(&path).expect("rm");
    let (code, err) = serve(&p);
    assert_eq!(
        code,
        Some(65),
        "a deleted registry with a generation witness is refused: {err}"
    );
    assert!(err.contains("missing"), "{err}");
    std::fs::write(&path, &good).expect("restore");
    p.start_process();
    p.wait_healthy().await;
}

#[tokio::test]
async fn adopting_an_existing_key_imports_old_versions_as_retired() {
    let bao = Bao::start().await;
    bao.rotate().await;
    bao.rotate().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let (_, table, _) = cli(&["state", "show"], &p.config);
    let lines: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("v1") && lines[0].contains("retired"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("v2") && lines[1].contains("retired"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("v3") && lines[2].contains("active"),
        "{table}"
    );
    let mut c = p.client().await;
    assert_eq!(
        encrypt(&mut c, &[1; 32]).await.annotations["key-version.kms.openbao.org"],
        b"3"
    );
    assert_eq!(
        p.logs().matches("adopted Transit key").count(),
        1,
        "logged once"
    );
}

#[tokio::test]
async fn raised_min_decryption_version_and_a_recreated_key_are_reported_by_name() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let v1_id = p.status().await.key_id;
    bao.rotate().await;
    p.wait_status("v2 active", |s| s.healthz == "ok" && s.key_id != v1_id)
        .await;
    bao.root(
        Method::POST,
        "transit/keys/k8s-etcd/config",
        Some(json!({ "min_decryption_version": 2 })),
    )
    .await;
    // A warning, not an outage: serving goes on, Status stays ok, the log and the
    // `openbao_kms_key_warnings` gauge name it (and `doctor`).
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !p.logs().contains("blocks retained key versions v1") {
        assert!(
            std::time::Instant::now() < end,
            "no warning naming v1:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.status().await.healthz, "ok");
    let (_, metrics) = p.http_get(p.metrics_port, "/metrics").await;
    assert!(metrics.contains("openbao_kms_key_warnings 1"), "{metrics}");
    bao.root(
        Method::POST,
        "transit/keys/k8s-etcd/config",
        Some(json!({ "min_decryption_version": 1 })),
    )
    .await;
    p.wait_healthy().await;

    // Deleting and re-creating the key gives v1 a new creation time: refused, never adopted.
    let before = p.status().await.key_id;
    bao.root(
        Method::POST,
        "transit/keys/k8s-etcd/config",
        Some(json!({ "deletion_allowed": true })),
    )
    .await;
    bao.root(Method::DELETE, "transit/keys/k8s-etcd", None)
        .await;
    // Creation times are kept to the second: the re-created v1 must fall in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    bao.root(
        Method::POST,
        "transit/keys/k8s-etcd",
        Some(json!({ "type": "aes256-gcm96" })),
    )
    .await;
    p.wait_status("re-created key refused", |s| {
        s.healthz.contains("creation time") || s.healthz.contains("went backwards")
    })
    .await;
    assert_eq!(
        p.status().await.key_id,
        before,
        "the key_id is never silently replaced"
    );
}

#[tokio::test]
async fn decrypts_with_unknown_key_ids_do_not_hurry_a_promotion() {
    use base64::{engine::general_purpose::STANDARD, Engine};

    let bao = Bao::start().await;
    let mut o = ProviderOptions::new(&bao);
    // Two scheduled probes must see a new version; with 30 s probes that is a minute away.
    o.rotation = "[rotation]\nstable_observations = 2\nactivation_delay = \"0s\"\n".into();
    let mut p = Provider::start(&o).await;
    p.restart_with_production_probes().await;
    let v1_id = p.status().await.key_id;
    let mut c = p.client().await;
    let under_v1 = encrypt(&mut c, &[7u8; 32]).await;

    bao.rotate().await;
    // Unknown key_ids as fast as a client likes; at most one a second re-reads key metadata.
    let mut sent = 0u32;
    wait_for(
        "five metadata reads for unknown key_ids",
        Duration::from_secs(30),
        || {
            sent += 1;
            let mut req = decrypt_request(&under_v1);
            req.key_id = format!("obkms1-unknown-{sent}");
            let mut c = c.clone();
            let log = p.log.clone();
            async move {
                let refused = c.decrypt(req).await.expect_err("unknown key_id");
                assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
                let logs = std::fs::read_to_string(log).unwrap_or_default();
                logs.matches("key_id not seen yet").count() >= 5
            }
        },
    )
    .await;

    assert_eq!(
        p.status().await.key_id,
        v1_id,
        "reads for unknown key_ids are no rotation observations:\n{}",
        p.logs()
    );
    let e = encrypt(&mut c, &[8u8; 32]).await;
    assert_eq!(e.annotations["key-version.kms.openbao.org"], b"1");
    assert!(!p.logs().contains("promoted Transit key version"));

    // What correctness needs still happened: v2 is known, pending, and decrypts what another
    // host that already promoted it wrote.
    let (code, table, _) = cli(&["state", "show"], &p.config);
    assert_eq!(code, 0);
    let v2_id = table
        .lines()
        .find(|l| l.starts_with("v2 ") && l.contains("pending"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("v2 pending:\n{table}"))
        .to_owned();
    let written = bao
        .root(
            Method::POST,
            "transit/encrypt/k8s-etcd",
            Some(json!({
                "plaintext": STANDARD.encode([9u8; 32]),
                "associated_data": STANDARD.encode(bao_kms_provider::keys::associated_data(&v2_id)),
                "key_version": 2,
            })),
        )
        .await;
    let ciphertext = written["data"]["ciphertext"].as_str().expect("ciphertext");
    let back = c
        .decrypt(bao_kms_provider::pb::DecryptRequest {
            ciphertext: ciphertext.as_bytes().to_vec(),
            uid: "other-host".into(),
            key_id: v2_id,
            annotations: [("key-version.kms.openbao.org".to_owned(), b"2".to_vec())].into(),
        })
        .await
        .expect("a pending version decrypts")
        .into_inner();
    assert_eq!(back.plaintext, [9u8; 32]);
}
