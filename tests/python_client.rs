//! A gRPC client that is not ours (Python grpcio, stubs generated from proto/) runs the round trip.
pub mod common;

use common::*;

#[tokio::test]
async fn python_grpcio_client_generated_from_proto_round_trips() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let (python, script, socket) = (
        python_bin(),
        repo_root().join("tests/clients/kms_client.py"),
        p.socket.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(socket)
            .output()
    })
    .await
    .expect("join")
    .expect("run python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(v["version"], "v2");
    assert_eq!(v["healthz"], "ok");
    assert_eq!(v["status_key_id"], v["encrypt_key_id"]);
    assert_eq!(v["round_trip"], true);
    assert_eq!(v["annotations"]["key-version.kms.openbao.org"], "1");
    assert_eq!(v["unknown_key_id_code"], "NOT_FOUND");
}
