//! The KMS v2 contract against a real OpenBao: round trip, key_id agreement, refusals with the
//! right gRPC codes, and Status honesty while OpenBao is down.
pub mod common;

use bao_kms_provider::kms::ANNOTATION_KEY_VERSION;
use common::faults::FaultProxy;
use common::*;
use tonic::Code;

#[tokio::test]
async fn round_trip_with_matching_key_ids_and_fresh_ciphertexts() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut c = p.client().await;
    let status = p.status().await;
    assert_eq!(status.version, "v2");
    assert_eq!(status.healthz, "ok");
    assert!(status.key_id.starts_with("obkms1-") && status.key_id.len() <= 1024);

    let seed = [7u8; 32];
    let a = encrypt(&mut c, &seed).await;
    let b = encrypt(&mut c, &seed).await;
    assert_eq!(
        a.key_id, status.key_id,
        "Encrypt must return the key_id Status reports"
    );
    assert_eq!(b.key_id, status.key_id);
    assert_ne!(
        a.ciphertext, b.ciphertext,
        "two encryptions of the same seed must differ"
    );
    assert!(!a.ciphertext.is_empty() && a.ciphertext.len() <= 1024);
    assert_eq!(
        a.annotations.get(ANNOTATION_KEY_VERSION).map(Vec::as_slice),
        Some(&b"1"[..])
    );
    for k in a.annotations.keys() {
        assert!(
            k.contains('.') && !k.contains('/') && k.to_lowercase() == *k,
            "annotation key {k} must be a lowercase FQDN"
        );
    }
    let plain = c
        .decrypt(decrypt_request(&a))
        .await
        .expect("Decrypt")
        .into_inner()
        .plaintext;
    assert_eq!(plain, seed);
    let text = String::from_utf8_lossy(&a.ciphertext).to_string();
    assert!(
        text.starts_with("vault:v1:"),
        "Transit ciphertext, got {text}"
    );
}

#[tokio::test]
async fn refusals_carry_the_right_codes() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut c = p.client().await;
    let good = encrypt(&mut c, &[1u8; 32]).await;

    let mut r = decrypt_request(&good);
    r.key_id = "obkms1-not-a-key-we-issued".into();
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::NotFound,
        "unknown key_id"
    );

    let mut r = decrypt_request(&good);
    r.annotations
        .insert(ANNOTATION_KEY_VERSION.into(), b"2".to_vec());
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "tampered annotation"
    );

    let mut r = decrypt_request(&good);
    r.annotations
        .insert("extra.kms.openbao.org".into(), b"x".to_vec());
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "unexpected annotation"
    );

    let mut r = decrypt_request(&good);
    r.annotations.clear();
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "missing annotation"
    );

    let mut r = decrypt_request(&good);
    let n = r.ciphertext.len();
    r.ciphertext[n - 3] ^= 0x01;
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "tampered ciphertext"
    );

    let mut r = decrypt_request(&good);
    r.ciphertext = b"vault:v2:AAAA".to_vec();
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "ciphertext of another version"
    );

    let mut r = decrypt_request(&good);
    r.ciphertext = vec![b'a'; 1025];
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "oversize ciphertext"
    );

    let mut r = decrypt_request(&good);
    r.key_id = "k".repeat(1025);
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "oversize key_id"
    );

    let mut r = decrypt_request(&good);
    r.annotations
        .insert("big.kms.openbao.org".into(), vec![0u8; 33 * 1024]);
    assert_eq!(
        c.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument,
        "oversize annotations"
    );

    let err = c
        .encrypt(bao_kms_provider::pb::EncryptRequest {
            plaintext: vec![0u8; 4096],
            uid: "u".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "oversize plaintext");
    let err = c
        .encrypt(bao_kms_provider::pb::EncryptRequest {
            plaintext: vec![],
            uid: "u".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "empty plaintext");

    let err = c
        .decrypt(bao_kms_provider::pb::DecryptRequest {
            ciphertext: vec![0u8; 300 * 1024],
            ..decrypt_request(&good)
        })
        .await
        .unwrap_err();
    assert_ne!(
        err.code(),
        Code::Ok,
        "a message over the transport limit is refused"
    );

    // Still serving normally afterwards.
    assert_eq!(
        c.decrypt(decrypt_request(&good))
            .await
            .expect("Decrypt")
            .into_inner()
            .plaintext,
        [1u8; 32]
    );
    let logs = p.logs();
    assert!(!logs.contains("root"), "no token in logs");
}

#[tokio::test]
async fn ciphertext_from_another_key_id_scope_does_not_decrypt() {
    let bao = Bao::start().await;
    let a = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut other = ProviderOptions::new(&bao);
    other.cluster_id = "another-cluster".into();
    let b = Provider::start(&other).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let from_a = encrypt(&mut ca, &[9u8; 32]).await;
    let from_b = encrypt(&mut cb, &[9u8; 32]).await;
    assert_ne!(
        from_a.key_id, from_b.key_id,
        "scopes give different key_ids for the same Transit version"
    );

    // B does not know A's key_id at all.
    assert_eq!(
        cb.decrypt(decrypt_request(&from_a))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // A's ciphertext presented under B's key_id: the AAD binds it to A's scope, so Transit refuses.
    let mut r = decrypt_request(&from_a);
    r.key_id = from_b.key_id.clone();
    assert_eq!(
        cb.decrypt(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn status_stays_served_while_openbao_is_down_and_sealed_then_recovers() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let mut o = ProviderOptions::new(&bao);
    o.address = proxy.addr();
    let p = Provider::start(&o).await;
    let key_id = p.status().await.key_id;

    proxy.set_down();
    p.wait_status("healthz not ok while OpenBao is unreachable", |s| {
        s.healthz != "ok"
    })
    .await;
    let s = p.status().await;
    assert_eq!(
        s.key_id, key_id,
        "Status keeps the last key_id while unhealthy"
    );
    assert!(
        s.healthz.contains("OpenBao") || s.healthz.contains("stale"),
        "reason given: {}",
        s.healthz
    );
    let mut c = p.client().await;
    let err = c
        .encrypt(bao_kms_provider::pb::EncryptRequest {
            plaintext: vec![1; 32],
            uid: "u".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::FailedPrecondition),
        "got {err:?}"
    );

    proxy.set_up();
    p.wait_healthy().await;
    assert_eq!(p.status().await.key_id, key_id);

    let before = encrypt(&mut c, &[2u8; 32]).await;
    bao.seal().await;
    p.wait_status("healthz not ok while OpenBao is sealed", |s| {
        s.healthz.contains("sealed")
    })
    .await;
    let err = c.decrypt(decrypt_request(&before)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "sealed OpenBao is Unavailable: {err:?}"
    );
    bao.unseal().await;
    p.wait_healthy().await;
    let e = encrypt(&mut c, &[3u8; 32]).await;
    assert_eq!(e.key_id, key_id);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_and_removes_its_socket() {
    let bao = Bao::start().await;
    let mut p = Provider::start(&ProviderOptions::new(&bao)).await;
    assert_eq!(p.stop(), Some(0), "exit 0 on SIGTERM:\n{}", p.logs());
    assert!(!p.socket.exists(), "a self-bound socket is removed on exit");
}
