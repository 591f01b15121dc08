//! Any HTTP/2 `:authority` is accepted on the KMS socket: a grpc-go client dialing the bare socket
//! path (as kube-apiserver did before 1.32; current grpc-go sends it percent-encoded) and the same
//! client sending the path verbatim or other values h2 alone refuses run Status, Encrypt and
//! Decrypt. Undecodable HPACK closes only that
//! connection. (Python grpcio with its default authority: tests/python_client.rs.)
pub mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Builds tests/kube/grpcclient once per test binary. No Go toolchain is a failure, not a skip.
fn go_client() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kms-grpcclient");
        let status = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(repo_root().join("tests/kube/grpcclient"))
            .status()
            .unwrap_or_else(|e| panic!("run `go build` (Go is required by this test): {e}"));
        assert!(status.success(), "go build of tests/kube/grpcclient failed");
        out
    })
    .clone()
}

async fn run_go_client(socket: &Path, authority: Option<&str>) -> serde_json::Value {
    let mut cmd = std::process::Command::new(go_client());
    cmd.arg("-socket").arg(socket);
    if let Some(a) = authority {
        cmd.args(["-authority", a]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run grpc-go client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc-go client failed ({authority:?}): {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("json")
}

fn assert_round_trip(v: &serde_json::Value) {
    assert_eq!(v["version"], "v2");
    assert_eq!(v["healthz"], "ok");
    assert_eq!(v["status_key_id"], v["encrypt_key_id"]);
    assert_eq!(v["round_trip"], true);
}

#[tokio::test]
async fn grpc_go_dialing_the_bare_socket_path_round_trips() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let v = run_go_client(&p.socket, None).await;
    // The passthrough target is the path itself, which grpc-go sends as :authority.
    assert_eq!(v["target"], p.socket.to_string_lossy().as_ref());
    assert_round_trip(&v);
}

#[tokio::test]
async fn authorities_h2_would_refuse_are_served() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    for authority in [
        "%2Frun%2Fopenbao-kms%2Fkms.sock",
        "/run/openbao-kms/kms.sock",
        "a b",
    ] {
        assert!(
            http::uri::Authority::try_from(authority).is_err(),
            "{authority} should be one h2 refuses"
        );
        assert_round_trip(&run_go_client(&p.socket, Some(authority)).await);
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn undecodable_hpack_closes_that_connection_and_the_provider_serves_on() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut raw = tokio::net::UnixStream::connect(&p.socket)
        .await
        .expect("connect");
    let mut wire = PREFACE.to_vec();
    wire.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
                                                            // HEADERS, END_HEADERS, stream 1: an index far past the (empty) dynamic table.
    wire.extend_from_slice(&[0, 0, 3, 0x1, 0x4, 0, 0, 0, 1, 0xff, 0x80, 0x01]);
    raw.write_all(&wire).await.expect("write");
    // The server may still send its SETTINGS; after that the connection must end.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "connection still open after undecodable HPACK\n{}",
        p.logs()
    );
    assert!(p.exit_code().is_none(), "provider exited\n{}", p.logs());
    assert_eq!(p.status().await.healthz, "ok");
    assert_round_trip(&run_go_client(&p.socket, None).await);
}
