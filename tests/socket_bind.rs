//! Without a socket from systemd the provider binds `server.socket_path` itself: a stale socket
//! file is replaced, a live one or a non-socket file stops the start with a clear error.
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bao_kms_provider::kms::{bind_unix_socket, client, SocketError};
use bao_kms_provider::pb;

fn provider_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bao-kms-provider"))
}

/// A config whose OpenBao (port 1) refuses connections: binding happens before any OpenBao call.
fn write_config(dir: &Path, socket: &Path) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket_path = \"{}\"\nsocket_mode = \"0660\"\nstate_dir = \"{}\"\n\
             [openbao]\naddress = \"http://127.0.0.1:1\"\ninstance_id = \"t\"\ntimeout = \"200ms\"\n\
             [auth]\nmethod = \"token\"\n[auth.token]\ntoken_file = \"{}\"\n\
             [transit.key_id_scope]\ncluster_id = \"c\"\ntransit_mount_id = \"t\"\nkey_lineage_id = \"l\"\n\
             [log]\nformat = \"text\"\n\
             [telemetry]\nmetrics_address = \"\"\nhealth_address = \"\"\n",
            socket.display(),
            dir.join("state").display(),
            dir.join("token").display()
        ),
    )
    .expect("write config");
    std::fs::write(dir.join("token"), "not-a-real-token\n").expect("token");
    config
}

fn serve(config: &Path) -> Command {
    let mut cmd = Command::new(provider_bin());
    cmd.args(["serve", "--config"])
        .arg(config)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null());
    cmd
}

/// Runs `serve` expecting it to refuse to start; returns its output.
fn serve_fails(config: &Path) -> Output {
    let child = serve(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start provider");
    let out = wait_output(child, Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "serve should have failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let end = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("provider still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// A socket file nobody listens on, as a killed provider leaves behind.
fn stale_socket(path: &Path) {
    let l = StdListener::bind(path).expect("bind");
    drop(l);
    assert!(std::fs::symlink_metadata(path)
        .expect("stale file")
        .file_type()
        .is_socket());
}

#[tokio::test]
async fn bind_replaces_a_stale_socket_and_sets_the_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/kms.sock");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    stale_socket(&path);
    let listener = bind_unix_socket(&path, 0o660).expect("a stale socket is replaced");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let (accepted, connected) =
        tokio::join!(listener.accept(), tokio::net::UnixStream::connect(&path));
    accepted.expect("accept");
    connected.expect("the new socket accepts");
}

/// A watcher polls the socket path while it is bound over and over: it must never see the
/// socket with another mode than the configured one, and no private bind directory is left.
#[tokio::test]
async fn a_self_bound_socket_is_never_visible_with_a_wider_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.sock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut seen, mut wrong) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    seen += 1;
                    let mode = m.permissions().mode() & 0o777;
                    if mode != 0o600 {
                        wrong.push(mode);
                    }
                }
            }
            (seen, wrong)
        })
    };
    for _ in 0..200 {
        let listener = bind_unix_socket(&path, 0o600).expect("bind");
        drop(listener);
        std::fs::remove_file(&path).expect("remove");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, wrong) = watcher.join().expect("watcher");
    assert!(seen > 0, "the watcher saw the socket at least once");
    assert!(
        wrong.is_empty(),
        "socket seen {} times with another mode, first {:o}",
        wrong.len(),
        wrong[0]
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[tokio::test]
async fn bind_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/kms.sock");
    bind_unix_socket(&path, 0o600).expect("bind");
    assert!(std::fs::symlink_metadata(&path)
        .expect("meta")
        .file_type()
        .is_socket());
}

#[tokio::test]
async fn bind_refuses_a_live_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.sock");
    let _live = StdListener::bind(&path).expect("bind");
    match bind_unix_socket(&path, 0o600) {
        Err(SocketError::InUse(p)) => assert_eq!(p, path),
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    assert!(path.exists(), "the live socket must not be removed");
}

#[tokio::test]
async fn bind_refuses_a_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.sock");
    std::fs::write(&path, "precious").expect("write");
    match bind_unix_socket(&path, 0o600) {
        Err(SocketError::NotASocket(p)) => assert_eq!(p, path),
        other => panic!("expected NotASocket, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read_to_string(&path).expect("kept"), "precious");
}

#[test]
fn serve_refuses_a_regular_file_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kms.sock");
    std::fs::write(&socket, "precious").expect("write");
    let out = serve_fails(&write_config(dir.path(), &socket));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "socket path {} exists and is not a socket; refusing to remove it",
            socket.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&socket).expect("kept"), "precious");
}

#[test]
fn serve_refuses_a_socket_another_process_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kms.sock");
    let _live = StdListener::bind(&socket).expect("bind");
    let out = serve_fails(&write_config(dir.path(), &socket));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "socket path {}: a provider is already serving there",
            socket.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_binds_itself_over_a_stale_socket_and_removes_it_on_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kms.sock");
    stale_socket(&socket);
    let mut child = serve(&write_config(dir.path(), &socket))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start provider");
    // Status answers (not ok: OpenBao is unreachable) on the socket it bound itself.
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(mut c) = client::connect(&socket).await {
            if let Ok(s) = c.status(pb::StatusRequest {}).await {
                break s.into_inner();
            }
        }
        if let Some(s) = child.try_wait().expect("try_wait") {
            panic!("provider exited early: {s}");
        }
        assert!(Instant::now() < end, "the provider never served the socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.version, "v2");
    assert_ne!(status.healthz, "ok");
    let mode = std::fs::metadata(&socket)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "socket_mode from the config");

    // SIGTERM: drain, exit 0, and leave no socket file behind.
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    // Wait without blocking the runtime, so our client answers the server's GOAWAY.
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < end, "provider still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "exit status {:?}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!socket.exists(), "the socket file is removed at exit");
}
