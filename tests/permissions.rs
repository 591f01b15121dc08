//! One permission check, two outcomes (docs/security.md "File permissions"), through the real
//! binary on real files: `check-config` refuses a group- or world-writable config or state
//! directory, a world-readable JWT, token or client key file, and a CA, client certificate or
//! key, or PKCS#11 module that others could change (exit 64, naming the file, its mode or owner
//! and the fix); `serve` refuses those last files too (exit 64, as does a reload), but only
//! logs `UNSAFE PERMISSIONS` for the rest and keeps serving, so an upgraded host with an old,
//! loose mode is not taken down.
pub mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A config with its state directory and credential file, all with safe modes to begin with.
struct Files {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    secret: PathBuf,
}

impl Files {
    /// `auth` is the `[auth]` section; it names `secret` (written here, mode 0600).
    fn new(secret_name: &str, auth: impl Fn(&Path) -> String) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, state, secret) = (
            dir.path().join("config.toml"),
            dir.path().join("state"),
            dir.path().join(secret_name),
        );
        std::fs::create_dir(&state).expect("state dir");
        chmod(&state, 0o700);
        std::fs::write(&secret, "not-checked-here\n").expect("secret");
        chmod(&secret, 0o600);
        let text = format!(
            "[server]\nsocket_path = \"{}\"\nstate_dir = \"{}\"\n\
             [openbao]\naddress = \"http://127.0.0.1:8200\"\ninstance_id = \"openbao-test\"\ntimeout = \"1s\"\n\
             {}\
             [transit.key_id_scope]\nprovider_name = \"openbao-kms\"\ncluster_id = \"c\"\ntransit_mount_id = \"t\"\nkey_lineage_id = \"l\"\n",
            dir.path().join("kms.sock").display(),
            state.display(),
            auth(&secret),
        );
        std::fs::write(&config, text).expect("config");
        chmod(&config, 0o600);
        Files {
            _dir: dir,
            config,
            state,
            secret,
        }
    }

    /// Adds a line to the `[openbao]` table (after its `timeout`).
    fn add_openbao_line(&self, line: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replacen(
            "timeout = \"1s\"\n",
            &format!("timeout = \"1s\"\n{line}"),
            1,
        );
        std::fs::write(&self.config, text).expect("config");
    }

    /// Writes `name` next to the config (mode 0644, owned by whoever runs the test).
    fn add_file(&self, name: &str) -> PathBuf {
        let path = self.secret.with_file_name(name);
        std::fs::write(&path, "not-parsed-here\n").expect("write");
        chmod(&path, 0o644);
        path
    }

    fn check_config(&self) -> (Option<i32>, String, String) {
        let out = Command::new(provider_bin())
            .args(["check-config", "--config"])
            .arg(&self.config)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("run check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Expects exit 64 with one stderr line naming `path`, `mode` and every one of `says`.
fn refused(f: &Files, path: &Path, mode: &str, says: &[&str]) {
    let (code, stdout, stderr) = f.check_config();
    assert_eq!(code, Some(64), "{} {mode}: {stderr}", path.display());
    assert!(!stdout.contains("valid"), "not called valid: {stdout}");
    let needle = format!("{} ", path.display());
    let line = stderr
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no line names {}: {stderr}", path.display()));
    assert!(line.contains(&format!("(mode {mode})")), "{line}");
    for s in says {
        assert!(line.contains(s), "expected {s:?} in {line}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_config_refuses_each_unsafe_file_naming_it_its_mode_and_the_fix() {
    let f = Files::new("identity.jwt", jwt_auth);
    let (code, stdout, stderr) = f.check_config();
    assert_eq!(code, Some(0), "safe modes pass: {stderr}");
    assert!(stdout.contains("valid"), "{stdout}");

    let writable = "others could change it — chmod go-w";
    let readable = "chmod 0600 or 0640";
    let cases: &[(&Path, u32, &str, &[&str])] = &[
        (
            &f.config,
            0o664,
            "0664",
            &["config file", "writable by its group", writable],
        ),
        (
            &f.config,
            0o646,
            "0646",
            &["config file", "writable by every user", writable],
        ),
        (
            &f.state,
            0o770,
            "0770",
            &["state directory", "writable by its group", writable],
        ),
        (
            &f.state,
            0o1777,
            "1777",
            &["state directory", "writable by every user", writable],
        ),
        (
            &f.secret,
            0o644,
            "0644",
            &["JWT file", "readable by every user", readable],
        ),
    ];
    for (path, mode, shown, says) in cases {
        let safe = std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
        chmod(path, *mode);
        refused(&f, path, shown, says);
        chmod(path, safe);
    }
    // Readable by the group (e.g. a service group) is allowed; so is a config others may read.
    chmod(&f.secret, 0o640);
    chmod(&f.config, 0o644);
    let (code, _, stderr) = f.check_config();
    assert_eq!(code, Some(0), "{stderr}");

    // Several problems at once: each is named, one line each.
    chmod(&f.config, 0o666);
    chmod(&f.state, 0o777);
    chmod(&f.secret, 0o604);
    let (code, _, stderr) = f.check_config();
    assert_eq!(code, Some(64), "{stderr}");
    for what in ["config file", "state directory", "JWT file"] {
        assert_eq!(
            stderr.lines().filter(|l| l.contains(what)).count(),
            1,
            "{what}: {stderr}"
        );
    }
}

#[test]
fn check_config_refuses_a_world_readable_client_key_or_token_file() {
    let cert = Files::new("client.key", |key| {
        cert_file_auth(Path::new("/etc/openbao-kms/tls/client.pem"), key)
    });
    assert_eq!(cert.check_config().0, Some(0));
    chmod(&cert.secret, 0o644);
    refused(
        &cert,
        &cert.secret,
        "0644",
        &[
            "client key file",
            "readable by every user",
            "chmod 0600 or 0640",
        ],
    );

    let token = Files::new("token", |t| {
        format!(
            "[auth]\nmethod = \"token\"\n[auth.token]\ntoken_file = \"{}\"\n",
            t.display()
        )
    });
    assert_eq!(token.check_config().0, Some(0));
    chmod(&token.secret, 0o604);
    refused(
        &token,
        &token.secret,
        "0604",
        &["token file", "readable by every user"],
    );
}

/// Cert auth with a CA, a client certificate and key (all 0644 or 0600, owned by the test).
fn cert_files() -> (Files, PathBuf, PathBuf) {
    let f = Files::new("client.key", |key| {
        cert_file_auth(&key.with_file_name("client.pem"), key)
    });
    let cert = f.add_file("client.pem");
    let ca = f.add_file("ca.pem");
    f.add_openbao_line(&ca_file_line(&ca));
    (f, ca, cert)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn check_config_refuses_a_ca_certificate_key_or_module_others_could_change() {
    let (f, ca, cert) = cert_files();
    let (code, _, stderr) = f.check_config();
    assert_eq!(
        code,
        Some(0),
        "owned by the test, not writable by others: {stderr}"
    );

    let expected = "expected writable by its owner only — chmod go-w";
    let cases: &[(&Path, u32, &str, &str, &str)] = &[
        (
            &ca,
            0o664,
            "0664",
            "openbao.ca_file",
            "writable by its group",
        ),
        (
            &cert,
            0o646,
            "0646",
            "auth.cert.cert_file",
            "writable by every user",
        ),
        (
            &f.secret,
            0o660,
            "0660",
            "auth.cert.key_file",
            "writable by its group",
        ),
    ];
    for (path, mode, shown, field, who) in cases {
        let safe = std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
        chmod(path, *mode);
        refused(
            &f,
            path,
            shown,
            &[&format!("{field} {} ", path.display()), who, expected],
        );
        chmod(path, safe);
    }

    // Owned by another user (not root, not the service user): refused whatever the mode.
    assert!(
        is_root(),
        "this test chowns a file: run it as root (make test does)"
    );
    std::os::unix::fs::chown(&ca, Some(65534), Some(65534)).expect("chown");
    let (code, stdout, stderr) = f.check_config();
    assert_eq!(code, Some(64), "{stderr}");
    assert!(!stdout.contains("valid"), "{stdout}");
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("openbao.ca_file {} is owned by", ca.display())))
        .unwrap_or_else(|| panic!("no owner line for {}: {stderr}", ca.display()));
    assert!(
        line.contains("uid 65534")
            && line.contains("expected owned by root")
            && line.contains("chown root"),
        "{line}"
    );

    // The PKCS#11 module is code loaded into the process: the same rule.
    let p11 = Files::new("token.pin", |pin| {
        format!(
            "[auth]\nmethod = \"cert\"\n[auth.cert]\ncert_file = \"{}\"\nkey_source = \"pkcs11\"\n\
             module_path = \"{}\"\ntoken_label = \"kms\"\nkey_label = \"client\"\npin_file = \"{}\"\n",
            pin.with_file_name("client.pem").display(),
            pin.with_file_name("module.so").display(),
            pin.display()
        )
    });
    p11.add_file("client.pem");
    let module = p11.add_file("module.so");
    assert_eq!(p11.check_config().0, Some(0), "{}", p11.check_config().2);
    chmod(&module, 0o775);
    refused(
        &p11,
        &module,
        "0775",
        &["auth.cert.module_path", "writable by its group", expected],
    );
}

/// Runs `serve` on `config` until it exits (at most 10 s); returns its code and output.
fn serve_until_exit(config: &Path) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Command::new(provider_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("start serve");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (
                status.code(),
                std::fs::read_to_string(&log).unwrap_or_default(),
            );
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve did not exit:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_to_start_with_a_ca_or_client_key_others_could_change() {
    let (f, ca, _) = cert_files();
    chmod(&ca, 0o664);
    chmod(&f.secret, 0o620);
    let (code, out) = serve_until_exit(&f.config);
    assert_eq!(
        code,
        Some(64),
        "a config-class error, so systemd does not restart it:\n{out}"
    );
    assert!(
        out.contains("refusing to use files others could change"),
        "{out}"
    );
    for (field, path, mode) in [
        ("openbao.ca_file", &ca, "0664"),
        ("auth.cert.key_file", &f.secret, "0620"),
    ] {
        assert!(
            out.contains(&format!("{field} {} is writable by its group (mode {mode}); expected writable by its owner only", path.display())),
            "{field}: {out}"
        );
    }
    assert!(
        !out.contains("UNSAFE PERMISSIONS"),
        "refused, not warned about:\n{out}"
    );
    assert!(
        !f.config.with_file_name("kms.sock").exists(),
        "nothing was served"
    );

    // `doctor` fails the config check for what `serve` refuses (not just a warning).
    let doctor = Command::new(provider_bin())
        .args(["doctor", "--config"])
        .arg(&f.config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL config:") && l.contains("openbao.ca_file")),
        "{text}"
    );
}

/// The `UNSAFE PERMISSIONS` log line that names `path` with `mode`; panics if none does.
fn warning_for(logs: &str, path: &Path, mode: &str) -> String {
    let needle = format!("{} ", path.display());
    logs.lines()
        .find(|l| l.contains("UNSAFE PERMISSIONS") && l.contains(&needle))
        .filter(|l| l.contains(&format!("(mode {mode})")))
        .unwrap_or_else(|| {
            panic!(
                "no UNSAFE PERMISSIONS warning for {} (mode {mode}):\n{logs}",
                path.display()
            )
        })
        .to_owned()
}

async fn round_trip(p: &Provider) {
    let mut c = p.client().await;
    let enc = encrypt(&mut c, &[7u8; 32]).await;
    let back = c
        .decrypt(decrypt_request(&enc))
        .await
        .expect("Decrypt")
        .into_inner()
        .plaintext;
    assert_eq!(back, [7u8; 32]);
}

#[tokio::test]
async fn serve_warns_about_a_loose_config_state_dir_and_jwt_and_keeps_serving() {
    let bao = Bao::start().await;
    let jwt = bao.own_jwt();
    chmod(&jwt.path, 0o644);
    let state_parent = tempfile::tempdir().expect("tempdir");
    let state = state_parent.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    chmod(&state, 0o770);
    let mut o = ProviderOptions::with(&bao.addr, &jwt.path);
    o.state_dir = Some(state.clone());
    let mut p = Provider::start(&o).await;
    round_trip(&p).await;
    let logs = p.logs();
    let line = warning_for(&logs, &jwt.path, "0644");
    assert!(
        line.contains("JWT file") && line.contains("readable by every user"),
        "{line}"
    );
    let line = warning_for(&logs, &state, "0770");
    assert!(
        line.contains("state directory") && line.contains("writable by its group"),
        "{line}"
    );
    assert!(line.contains("`check-config` refuses this"), "{line}");
    let config = p.config.display().to_string();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("UNSAFE PERMISSIONS") && l.contains(&config)),
        "the config is 0644 so far:\n{logs}"
    );

    // An upgraded host whose config became group-writable: restarted, it warns and serves.
    assert_eq!(p.stop(), Some(0));
    chmod(&p.config, 0o664);
    p.start_process();
    p.wait_healthy().await;
    round_trip(&p).await;
    let line = warning_for(&p.logs(), &p.config, "0664");
    assert!(
        line.contains("config file") && line.contains("chmod go-w"),
        "{line}"
    );
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn serve_warns_about_a_world_readable_client_key_and_a_reload_refuses_a_writable_ca() {
    let bao = Bao::start_tls().await;
    let (cert, key) = bao.setup_cert_auth();
    chmod(&key, 0o644);
    let mut o = ProviderOptions::with_auth(&bao.addr, cert_file_auth(&cert, &key));
    o.openbao_extra = ca_file_line(&bao.ca_file()) + "tls_server_name = \"localhost\"\n";
    let p = Provider::start(&o).await;
    round_trip(&p).await;
    let line = warning_for(&p.logs(), &key, "0644");
    assert!(
        line.contains("client key file") && line.contains("chmod 0600 or 0640"),
        "{line}"
    );

    // A reload refuses a CA that became group-writable; the running client stays in use.
    let ca = bao.ca_file();
    let safe = std::fs::metadata(&ca).expect("stat").permissions().mode() & 0o7777;
    chmod(&ca, 0o664);
    p.signal(libc::SIGHUP);
    let needle = format!(
        "openbao.ca_file {} is writable by its group (mode 0664)",
        ca.display()
    );
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !p
        .logs()
        .lines()
        .any(|l| l.contains("reload failed") && l.contains(&needle))
    {
        assert!(
            std::time::Instant::now() < end,
            "no refused reload:\n{}",
            p.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    round_trip(&p).await;
    chmod(&ca, safe);
}
