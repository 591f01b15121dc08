//! OpenBao authentication against a real server: JWT login, renewal ahead of expiry, fresh login
//! at max TTL, re-login after revocation (re-reading the JWT file), and cert (mTLS) login.
pub mod common;

use std::time::{Duration, Instant};

use common::*;

async fn encrypt_works(p: &Provider) -> bool {
    let mut c = p.client().await;
    c.encrypt(bao_kms_provider::pb::EncryptRequest {
        plaintext: vec![5; 32],
        uid: "u".into(),
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn token_is_renewed_before_expiry_and_replaced_at_max_ttl() {
    let bao = Bao::start_with(&[("TOKEN_TTL", "3s"), ("TOKEN_MAX_TTL", "7s")]).await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    // Over ~9 s the 3 s token must be renewed, hit its 7 s max TTL and be replaced by a new login,
    // with Encrypt working throughout.
    let end = Instant::now() + Duration::from_secs(9);
    while Instant::now() < end {
        assert!(
            encrypt_works(&p).await,
            "Encrypt failed during token turnover:\n{}",
            p.logs()
        );
        assert_eq!(p.status().await.healthz, "ok", "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = p.logs();
    assert!(
        logs.contains("renewed OpenBao token"),
        "renewal expected:\n{logs}"
    );
    assert!(
        logs.matches("logged in to OpenBao").count() >= 2,
        "fresh login at max TTL expected:\n{logs}"
    );
    assert!(!logs.contains("eyJ"), "no JWT in logs");
}

#[tokio::test]
async fn revoked_token_triggers_one_relogin_that_rereads_the_jwt_file() {
    let bao = Bao::start().await;
    let jwt = bao.own_jwt();
    let p = Provider::start(&ProviderOptions::with(&bao.addr, &jwt.path)).await;

    bao.revoke_all_tokens().await;
    assert!(
        encrypt_works(&p).await,
        "a 403 must lead to one re-login and a successful retry:\n{}",
        p.logs()
    );
    assert!(p.logs().contains("403 from OpenBao; logging in again"));

    // A broken JWT on disk: the next re-login reads it and fails...
    std::fs::write(&jwt.path, "not-a-jwt\n").expect("write");
    bao.revoke_all_tokens().await;
    assert!(
        !encrypt_works(&p).await,
        "login with a broken JWT must fail"
    );
    p.wait_status("healthz not ok after login failure", |s| s.healthz != "ok")
        .await;
    // ...and a freshly minted JWT replaced on disk is picked up without a restart.
    bao.mint_jwt(jwt.dir.path());
    p.wait_healthy().await;
    assert!(encrypt_works(&p).await, "{}", p.logs());
    assert!(!p.logs().contains("not-a-jwt"), "JWT content never logged");
}

#[tokio::test]
async fn cert_login_over_mtls_with_server_name_override() {
    let bao = Bao::start_tls().await;
    let (cert, key) = bao.setup_cert_auth();
    let mut o = ProviderOptions::with_auth(&bao.addr, cert_file_auth(&cert, &key));
    // The address uses the IP; verify the certificate against the name "localhost" instead.
    o.openbao_extra = ca_file_line(&bao.ca_file()) + "tls_server_name = \"localhost\"\n";
    let p = Provider::start(&o).await;
    assert!(encrypt_works(&p).await);
    assert!(p.logs().contains("method=\"cert\""), "{}", p.logs());
}

#[tokio::test]
async fn wrong_ca_fails_clearly_and_never_falls_back_to_system_roots() {
    let bao = Bao::start_tls().await;
    let other = tempfile::tempdir().expect("tempdir");
    let (_, ca) = self_signed_ca(other.path(), "other-ca", "other");
    let mut o = ProviderOptions::new(&bao);
    o.openbao_extra = ca_file_line(&ca);
    let p = Provider::spawn(&o);
    p.wait_status("healthz names the TLS failure", |s| {
        s.healthz.contains("OpenBao") && s.healthz != "ok"
    })
    .await;
    let s = p.status().await;
    assert!(
        s.healthz.to_lowercase().contains("certificate") || s.healthz.contains("cannot reach"),
        "{}",
        s.healthz
    );
}
