//! SIGHUP is all or nothing: the new OpenBao client and credentials are built and proven by a
//! login on the side, and only then swapped in. A broken CA file, a CA of the wrong authority or
//! an unreachable new address leave the running client working; the log says the reload failed.
pub mod common;

use std::time::{Duration, Instant};

use bao_kms_provider::pb;
use common::faults::FaultProxy;
use common::*;

async fn encrypt_ok(p: &Provider) -> bool {
    p.client()
        .await
        .encrypt(pb::EncryptRequest {
            plaintext: vec![9; 32],
            uid: "reload".into(),
        })
        .await
        .is_ok()
}

/// Sends SIGHUP and waits until the log shows the reload's outcome (`marker`, counted).
async fn hup(p: &Provider, marker: &str) {
    let before = p.logs().matches(marker).count();
    p.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(10);
    while p.logs().matches(marker).count() == before {
        assert!(
            Instant::now() < end,
            "no {marker:?} in the log after SIGHUP:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const FAILED: &str =
    "reload failed; the previous OpenBao client, credentials and token stay in use";
const DONE: &str = "reloaded: new OpenBao client and credentials in use";

#[tokio::test]
async fn a_broken_or_foreign_ca_is_refused_and_the_old_client_keeps_working() {
    let bao = Bao::start_tls().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::copy(bao.ca_file(), &ca).expect("copy CA");
    let mut o = ProviderOptions::new(&bao);
    o.openbao_extra = ca_file_line(&ca);
    let p = Provider::start(&o).await;
    assert!(encrypt_ok(&p).await);

    // Not PEM at all.
    std::fs::write(&ca, "not a certificate\n").expect("write");
    hup(&p, FAILED).await;
    assert!(
        encrypt_ok(&p).await,
        "old client must keep working:\n{}",
        p.logs()
    );

    // A valid CA of another authority (written over ca.pem): parses, but the login with it
    // fails; nothing is swapped.
    self_signed_ca(dir.path(), "ca", "another authority");
    hup(&p, FAILED).await;
    for _ in 0..10 {
        assert!(
            encrypt_ok(&p).await,
            "old client must keep working:\n{}",
            p.logs()
        );
    }
    // The probes keep working too: Status stays ok for longer than max_staleness (3 s), so
    // that much time must pass.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(p.status().await.healthz, "ok", "{}", p.logs());

    // The right CA again: the reload succeeds.
    std::fs::copy(bao.ca_file(), &ca).expect("copy CA");
    hup(&p, DONE).await;
    assert!(encrypt_ok(&p).await);
    assert!(!p.logs().contains("keeping the previous configuration"));
}

#[tokio::test]
async fn a_reload_moves_to_new_addresses_and_names_fields_that_need_a_restart() {
    let bao = Bao::start().await;
    let old = FaultProxy::start(bao.port).await;
    let new = FaultProxy::start(bao.port).await;
    let o = ProviderOptions::with(&old.addr(), &bao.jwt_path());
    let p = Provider::start(&o).await;

    // An address list where no node answers: refused, the old address stays.
    let text = std::fs::read_to_string(&p.config).expect("config");
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&p.config, text.replace(&old.addr(), &dead)).expect("write");
    hup(&p, FAILED).await;
    assert!(encrypt_ok(&p).await, "{}", p.logs());

    // Move to the new node (and change a field that needs a restart): applied without one.
    let moved = text
        .replace(
            &format!("\"{}\"", old.addr()),
            &format!("[\"{}\", \"{dead}\"]", new.addr()),
        )
        .replace("drain_timeout = \"5s\"", "drain_timeout = \"6s\"");
    std::fs::write(&p.config, moved).expect("write");
    hup(&p, DONE).await;
    old.set_down();
    let before = new.requests();
    assert!(encrypt_ok(&p).await, "{}", p.logs());
    assert!(new.requests() > before);
    assert!(
        p.logs().contains("server.drain_timeout") && p.logs().contains("only after a restart"),
        "{}",
        p.logs()
    );
}
