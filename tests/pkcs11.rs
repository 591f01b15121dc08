//! Cert auth with the client key on a PKCS#11 token (SoftHSM2), against a real OpenBao with
//! TLS 1.2-only and TLS 1.3-only listeners: login, renewal, a KMS round trip, SIGHUP reload,
//! and refusals that name their cause. Keys are generated on the token (non-extractable);
//! the test CA's key is deleted once the client certificate is issued, so no client or CA
//! private key exists as a file outside SoftHSM's own store.
pub mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::faults::FaultProxy;
use common::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "246810";
const SO_PIN: &str = "13579135";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run (is it installed? run `make tools`): {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One SoftHSM2 token store per test binary; each test makes its own token in it.
struct SoftHsm {
    dir: tempfile::TempDir,
    /// `softhsm2-util --init-token --free` takes the first free slot: one at a time.
    lock: Mutex<()>,
}

fn softhsm() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2 is not installed ({MODULE}) — run `make tools`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tokens")).expect("tokens dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().display()
            ),
        )
        .expect("softhsm2.conf");
        SoftHsm {
            dir,
            lock: Mutex::new(()),
        }
    })
}

impl SoftHsm {
    fn conf(&self) -> String {
        self.dir.path().join("softhsm2.conf").display().to_string()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".into(), self.conf())]
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", self.conf());
        c
    }

    /// A fresh token with one key pair generated on it; returns the public key as PEM.
    fn token_with_key(&self, token: &str, key_label: &str, key_type: &str, out: &Path) -> PathBuf {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        run(
            self.cmd("softhsm2-util").args([
                "--init-token",
                "--free",
                "--label",
                token,
                "--so-pin",
                SO_PIN,
                "--pin",
                PIN,
            ]),
            "softhsm2-util --init-token",
        );
        self.add_key(token, key_label, key_type, "a1b2", &[], out)
    }

    /// Generates a key pair on `token` (`extra`: e.g. `--extractable`); returns its public key.
    fn add_key(
        &self,
        token: &str,
        key_label: &str,
        key_type: &str,
        id: &str,
        extra: &[&str],
        out: &Path,
    ) -> PathBuf {
        run(
            self.cmd("pkcs11-tool")
                .args([
                    "--module",
                    MODULE,
                    "--token-label",
                    token,
                    "--login",
                    "--pin",
                    PIN,
                    "--keypairgen",
                    "--key-type",
                    key_type,
                    "--label",
                    key_label,
                    "--id",
                    id,
                    "--usage-sign",
                ])
                .args(extra),
            "pkcs11-tool --keypairgen",
        );
        let der = out.join(format!("{key_label}.pub.der"));
        run(
            self.cmd("pkcs11-tool")
                .args([
                    "--module",
                    MODULE,
                    "--token-label",
                    token,
                    "--read-object",
                    "--type",
                    "pubkey",
                    "--label",
                    key_label,
                    "-o",
                ])
                .arg(&der),
            "pkcs11-tool --read-object",
        );
        let pem = out.join(format!("{key_label}.pub.pem"));
        run(
            Command::new("openssl")
                .args(["pkey", "-pubin", "-inform", "DER", "-in"])
                .arg(&der)
                .arg("-out")
                .arg(&pem),
            "openssl pkey",
        );
        pem
    }

    /// What pkcs11-tool says about the token's objects (to prove the key is non-extractable).
    fn objects(&self, token: &str) -> String {
        run(
            self.cmd("pkcs11-tool").args([
                "--module",
                MODULE,
                "--token-label",
                token,
                "--login",
                "--pin",
                PIN,
                "--list-objects",
                "--type",
                "privkey",
            ]),
            "pkcs11-tool --list-objects",
        )
    }
}

/// A test CA issues a client certificate for `pubkey`; the CA key is deleted right after.
fn issue_client_cert(dir: &Path, pubkey: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (ca_key, ca) = self_signed_ca(dir, "client-ca", "bao-kms-provider pkcs11 test CA");
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join("client.ext");
    std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").expect("ext");
    run(
        Command::new("openssl")
            .args([
                "x509",
                "-new",
                "-subj",
                "/CN=bao-kms-provider",
                "-days",
                "1",
            ])
            .arg("-force_pubkey")
            .arg(pubkey)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
        "openssl x509 -new (client certificate)",
    );
    std::fs::remove_file(&ca_key).expect("remove the CA key");
    (ca, cert)
}

/// OpenBao dev server (admin over plain HTTP on loopback) plus a TLS 1.2-only and a TLS
/// 1.3-only listener; cert auth trusts `client_ca` with a 3 s token TTL so renewal shows.
struct TlsBao {
    child: Child,
    dir: tempfile::TempDir,
    admin: String,
    tls12: String,
    tls13: String,
}

impl Drop for TlsBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsBao {
    async fn start(client_ca: &Path) -> TlsBao {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (server_ca_key, server_ca) = self_signed_ca(d, "server-ca", "test server CA");
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                ])
                .arg(d.join("server.key"))
                .arg("-out")
                .arg(d.join("server.csr")),
            "openssl req (server)",
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-in"])
                .arg(d.join("server.csr"))
                .arg("-CA")
                .arg(&server_ca)
                .arg("-CAkey")
                .arg(&server_ca_key)
                .arg("-CAcreateserial")
                .arg("-extfile")
                .arg(d.join("server.ext"))
                .arg("-out")
                .arg(d.join("server.pem")),
            "openssl x509 (server)",
        );
        std::fs::remove_file(&server_ca_key).expect("remove server CA key");
        let (admin_port, p12, p13) = (free_port_pair(), free_port_pair(), free_port_pair());
        let listener = |port: u16, min: &str, max: &str| {
            format!(
                "listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n  tls_min_version = \"{min}\"\n  tls_max_version = \"{max}\"\n}}\n",
                d.join("server.pem").display(),
                d.join("server.key").display()
            )
        };
        let hcl = d.join("listeners.hcl");
        std::fs::write(
            &hcl,
            listener(p12, "tls12", "tls12") + &listener(p13, "tls13", "tls13"),
        )
        .expect("hcl");
        let log = std::fs::File::create(d.join("openbao.log")).expect("log");
        let child = die_with_parent(&mut Command::new(bao_bin()))
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{admin_port}"),
            ])
            .arg(format!("-config={}", hcl.display()))
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bao");
        let bao = TlsBao {
            child,
            admin: format!("http://127.0.0.1:{admin_port}"),
            tls12: format!("https://127.0.0.1:{p12}"),
            tls13: format!("https://127.0.0.1:{p13}"),
            dir,
        };
        let health = format!("{}/v1/sys/health", bao.admin);
        let h = http();
        wait_for("OpenBao dev server", Duration::from_secs(20), || {
            let (h, u) = (h.clone(), health.clone());
            async move { h.get(u).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        let policy = bao.dir.path().join("policy.hcl");
        std::fs::write(&policy, policy_text("transit", "k8s-etcd")).expect("policy");
        run(
            Command::new(repo_root().join("scripts/openbao-lab.sh"))
                .args(["setup", &bao.admin])
                .arg(bao.dir.path())
                .arg(&policy)
                .env("BAO_TOKEN", "root")
                .env("BAO_BIN", bao_bin()),
            "openbao-lab.sh setup",
        );
        run(
            bao.cli().args(["auth", "enable", "cert"]),
            "bao auth enable cert",
        );
        run(
            bao.cli()
                .args([
                    "write",
                    "auth/cert/certs/bao-kms-provider",
                    "token_policies=bao-kms-provider",
                    "token_ttl=3s",
                    "token_max_ttl=1h",
                ])
                .arg(format!("certificate=@{}", client_ca.display())),
            "bao write auth/cert/certs",
        );
        bao
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(bao_bin());
        c.env("BAO_ADDR", &self.admin).env("BAO_TOKEN", "root");
        c
    }

    fn server_ca(&self) -> PathBuf {
        self.dir.path().join("server-ca.pem")
    }
}

/// A token holding one key, its certificate and PIN file, ready for a provider config.
struct Identity {
    dir: tempfile::TempDir,
    token: String,
    key_label: String,
    client_ca: PathBuf,
    cert: PathBuf,
    pin_file: PathBuf,
}

fn identity(token: &str, key_type: &str) -> Identity {
    let hsm = softhsm();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_label = format!("{token}-key");
    let pubkey = hsm.token_with_key(token, &key_label, key_type, dir.path());
    let (client_ca, cert) = issue_client_cert(dir.path(), &pubkey, "client");
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let objects = hsm.objects(token);
    assert!(
        objects.contains("never extractable") && objects.contains("always sensitive"),
        "the token key must be sensitive and non-extractable:\n{objects}"
    );
    Identity {
        dir,
        token: token.to_owned(),
        key_label,
        client_ca,
        cert,
        pin_file,
    }
}

impl Identity {
    fn auth(&self, key_line: &str) -> String {
        cert_auth(
            &self.cert,
            &format!(
                "key_source = \"pkcs11\"\nmodule_path = \"{MODULE}\"\ntoken_label = \"{}\"\n{key_line}\npin_file = \"{}\"\n",
                self.token,
                self.pin_file.display()
            ),
        )
    }

    fn options(&self, address: &str, server_ca: &Path) -> ProviderOptions {
        let auth = self.auth(&format!("key_label = \"{}\"", self.key_label));
        let mut o = ProviderOptions::with_auth(address, auth);
        o.openbao_extra = ca_file_line(server_ca);
        o.env = softhsm().env();
        o
    }

    /// No private key as a file beside the provider's credentials.
    fn assert_no_key_files(&self) {
        for entry in std::fs::read_dir(self.dir.path()).expect("read dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read(&path).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&text).contains("PRIVATE KEY"),
                "{} holds a private key",
                path.display()
            );
        }
    }
}

async fn round_trip(p: &Provider) {
    let mut c = p.client().await;
    let e = encrypt(&mut c, b"pkcs11 secret seed").await;
    let d = c
        .decrypt(decrypt_request(&e))
        .await
        .unwrap_or_else(|s| panic!("Decrypt: {s}\n{}", p.logs()))
        .into_inner();
    assert_eq!(d.plaintext, b"pkcs11 secret seed");
}

async fn wait_log(p: &Provider, what: &str, needle: &str, times: usize) {
    let end = Instant::now() + Duration::from_secs(20);
    while p.logs().matches(needle).count() < times {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what} ({needle:?} x{times}):\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Login, renewal, round trip and SIGHUP over TLS 1.2, then login and round trip over TLS 1.3;
/// returns the two providers' logs.
async fn full_cycle(token: &str, key_type: &str) -> (String, String) {
    let id = identity(token, key_type);
    let bao = TlsBao::start(&id.client_ca).await;

    let mut p12 = Provider::start(&id.options(&bao.tls12, &bao.server_ca())).await;
    round_trip(&p12).await;
    wait_log(&p12, "token renewal over mTLS", "renewed OpenBao token", 1).await;
    round_trip(&p12).await;
    // SIGHUP re-reads pin_file and cert_file: a re-issued certificate for the same token key
    // (the old CA is still trusted) is taken and a fresh login over a new handshake works.
    let pubkey = id.dir.path().join(format!("{}.pub.pem", id.key_label));
    let reissue = tempfile::tempdir().expect("tempdir");
    let (new_ca, new_cert) = issue_client_cert(reissue.path(), &pubkey, "client");
    run(
        bao.cli()
            .args([
                "write",
                "auth/cert/certs/bao-kms-provider",
                "token_policies=bao-kms-provider",
                "token_ttl=3s",
                "token_max_ttl=1h",
            ])
            .arg(format!("certificate=@{}", new_ca.display())),
        "bao write auth/cert/certs (new CA)",
    );
    std::fs::copy(&new_cert, &id.cert).expect("replace cert");
    p12.signal(libc::SIGHUP);
    wait_log(
        &p12,
        "reload",
        "reloaded: new OpenBao client and credentials in use",
        1,
    )
    .await;
    round_trip(&p12).await;
    // Another token (or module) cannot be swapped in by SIGHUP: named, refused, old one kept.
    let config = std::fs::read_to_string(&p12.config).expect("config");
    std::fs::write(
        &p12.config,
        config.replace(
            &format!("token_label = \"{}\"", id.token),
            "token_label = \"another-token\"",
        ),
    )
    .expect("config");
    p12.signal(libc::SIGHUP);
    wait_log(&p12, "refused reload", "auth.cert.token_label differs", 1).await;
    assert!(p12.logs().contains("needs a restart"), "{}", p12.logs());
    round_trip(&p12).await;
    // A wrong PIN in pin_file: the reload is refused by name and the running login stays.
    std::fs::write(&p12.config, &config).expect("config");
    std::fs::write(&id.pin_file, "999999\n").expect("pin");
    p12.signal(libc::SIGHUP);
    wait_log(&p12, "refused reload", "CKR_PIN_INCORRECT", 1).await;
    round_trip(&p12).await;
    std::fs::write(&id.pin_file, format!("{PIN}\n")).expect("pin");
    p12.signal(libc::SIGHUP);
    wait_log(
        &p12,
        "reload with the right PIN",
        "reloaded: new OpenBao client and credentials in use",
        2,
    )
    .await;
    round_trip(&p12).await;
    assert_eq!(p12.status().await.healthz, "ok", "{}", p12.logs());
    let logs12 = p12.logs();
    assert_eq!(p12.stop(), Some(0), "{logs12}");

    let p13 = Provider::start(&id.options(&bao.tls13, &bao.server_ca())).await;
    round_trip(&p13).await;
    doctor_passes(&p13.config);
    let logs13 = p13.logs();
    for logs in [&logs12, &logs13] {
        assert!(logs.contains("method=\"cert\""), "{logs}");
        assert!(!logs.contains(PIN), "the PIN must never be logged");
    }
    id.assert_no_key_files();
    (logs12, logs13)
}

#[tokio::test]
async fn ec_p256_token_key_logs_in_renews_serves_and_reloads_over_tls12_and_tls13() {
    let (l12, l13) = full_cycle("ec-full", "EC:prime256v1").await;
    assert!(l12.contains("ECDSA_NISTP256_SHA256"), "{l12}");
    assert!(l13.contains("ECDSA_NISTP256_SHA256"), "{l13}");
    // SoftHSM2 2.6 has no CKM_ECDSA_SHA256: the provider hashes, the token signs the digest.
    assert!(l13.contains("mechanism=CKM_ECDSA "), "{l13}");
}

#[tokio::test]
async fn rsa_2048_token_key_signs_pkcs1_on_tls12_and_pss_on_tls13() {
    let (l12, l13) = full_cycle("rsa-full", "rsa:2048").await;
    assert!(
        l12.contains("RSA_PKCS1_SHA256"),
        "TLS 1.2 uses PKCS#1 v1.5:\n{l12}"
    );
    assert!(l13.contains("RSA_PSS_SHA256"), "TLS 1.3 uses PSS:\n{l13}");
    assert!(l12.contains("mechanism=CKM_SHA256_RSA_PKCS "), "{l12}");
    assert!(l13.contains("mechanism=CKM_SHA256_RSA_PKCS_PSS"), "{l13}");
}

/// A token that lists no combined hash-and-sign mechanism (the shim hides SoftHSM2's): the
/// provider hashes and the token signs the digest, PSS over TLS 1.3, PKCS#1 v1.5 over TLS 1.2.
#[tokio::test]
async fn rsa_token_without_combined_mechanisms_signs_digests_over_tls13_and_tls12() {
    let id = identity("rsa-raw", "rsa:2048");
    let shim = hang_shim(id.dir.path());
    let bao = TlsBao::start(&id.client_ca).await;
    let proxy = FaultProxy::start(port_of(&bao.tls13)).await;
    let mut o = id.options(
        &format!("https://127.0.0.1:{}", proxy.port),
        &bao.server_ca(),
    );
    o.auth = o.auth.replace(MODULE, &shim.display().to_string());
    o.env.push(("P11_REAL_MODULE".into(), MODULE.into()));
    o.env.push(("P11_HIDE_COMBINED".into(), "1".into()));
    let p = Provider::start(&o).await;
    round_trip(&p).await;
    assert!(p.logs().contains("scheme=RSA_PSS_SHA256"), "{}", p.logs());
    assert!(
        p.logs().contains("mechanism=CKM_RSA_PKCS_PSS"),
        "{}",
        p.logs()
    );

    proxy.switch_to(port_of(&bao.tls12)); // a full handshake over TLS 1.2 next
    wait_log(&p, "a TLS 1.2 handshake", "scheme=RSA_PKCS1_SHA256", 1).await;
    p.wait_healthy().await;
    round_trip(&p).await;
    let logs = p.logs();
    assert!(logs.contains("mechanism=CKM_RSA_PKCS "), "{logs}");
    assert!(!logs.contains("mechanism=CKM_SHA256_RSA"), "{logs}");
}

/// Runs the real `doctor` with the test's SoftHSM2 store; returns its exit code and output.
fn doctor(config: &Path) -> (Option<i32>, String) {
    let out = softhsm()
        .cmd(provider_bin().to_str().expect("path"))
        .args(["doctor", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains(PIN), "the PIN must never be printed");
    (out.status.code(), text)
}

/// A provider config for `o` written to `path` (for `doctor`; no provider is started).
fn config_file(o: &ProviderOptions, path: PathBuf) -> PathBuf {
    let dir = path.parent().expect("dir").to_path_buf();
    let text = Provider::config_text(o, &dir.join("kms.sock"), &dir.join("state"), 1, 1);
    std::fs::write(&path, text).expect("config");
    path
}

fn pkcs11_line(text: &str) -> String {
    text.lines()
        .find(|l| l.contains("pkcs11-key:"))
        .unwrap_or_else(|| panic!("no pkcs11-key line:\n{text}"))
        .to_owned()
}

/// `doctor` finds module, token and key, sees it non-extractable and matching the certificate,
/// and completes the handshake and login with it.
fn doctor_passes(config: &Path) {
    let (code, text) = doctor(config);
    assert_eq!(code, Some(0), "doctor:\n{text}");
    let key_line = pkcs11_line(&text);
    assert!(
        key_line.contains("never extractable") && key_line.contains("matches"),
        "{key_line}"
    );
}

#[tokio::test]
async fn doctor_fails_an_extractable_key_and_a_certificate_for_another_key() {
    let id = identity("doctor", "EC:prime256v1");
    let address = format!("https://127.0.0.1:{}", free_port());
    // A second key on the same token that may leave it, with its own certificate.
    let loose = softhsm().add_key(
        &id.token,
        "loose",
        "EC:prime256v1",
        "c3d4",
        &["--extractable"],
        id.dir.path(),
    );
    let reissue = tempfile::tempdir().expect("tempdir");
    let (_, loose_cert) = issue_client_cert(reissue.path(), &loose, "loose");
    let mut o = id.options(&address, &id.client_ca);
    o.auth = id.auth("key_object_id = \"c3:d4\"").replace(
        &id.cert.display().to_string(),
        &loose_cert.display().to_string(),
    );
    let (code, text) = doctor(&config_file(&o, id.dir.path().join("loose.toml")));
    assert_eq!(code, Some(1), "{text}");
    let line = pkcs11_line(&text);
    assert!(
        line.contains("FAIL") && line.contains("extractable"),
        "{line}"
    );
    assert!(text.contains("skip"), "later checks are skipped:\n{text}");

    // The right key with the certificate of the other one: the mismatch is named.
    let mut o = id.options(&address, &id.client_ca);
    o.auth = id
        .auth(&format!("key_label = \"{}\"", id.key_label))
        .replace(
            &id.cert.display().to_string(),
            &loose_cert.display().to_string(),
        );
    let (code, text) = doctor(&config_file(&o, id.dir.path().join("mismatch.toml")));
    assert_eq!(code, Some(1), "{text}");
    let line = pkcs11_line(&text);
    assert!(
        line.contains("auth.cert.cert_file") && line.contains("does not match"),
        "{line}"
    );
}

/// Starts a provider expected to refuse to start with exit code `expected` (64: the operator
/// must act, systemd does not restart it; 1: may fix itself, restarted); returns its log.
async fn refused(o: &ProviderOptions, expected: i32) -> String {
    let p = Provider::spawn(o);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = p.exit_code() {
            assert_eq!(code, Some(expected), "{}", p.logs());
            return p.logs();
        }
        assert!(
            Instant::now() < end,
            "provider did not refuse to start:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn wrong_pin_missing_key_and_wrong_module_are_refused_by_name() {
    let id = identity("refusals", "EC:prime256v1");
    // Nothing listens here: each refusal happens at the token, before OpenBao is contacted.
    let address = format!("https://127.0.0.1:{}", free_port());
    let ca = id.client_ca.clone();

    let wrong_pin = id.dir.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "000000\n").expect("pin");
    std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut o = id.options(&address, &ca);
    o.auth = o.auth.replace(
        &id.pin_file.display().to_string(),
        &wrong_pin.display().to_string(),
    );
    // Exit 64: a restart loop would spend the token's PIN retries.
    let logs = refused(&o, 64).await;
    assert!(
        logs.contains("auth.cert.pin_file") && logs.contains("CKR_PIN_INCORRECT"),
        "{logs}"
    );
    assert!(!logs.contains("000000"), "the PIN must never be logged");

    let mut o = id.options(&address, &ca);
    o.auth = id.auth("key_label = \"no-such-key\"");
    let logs = refused(&o, 64).await;
    assert!(
        logs.contains("auth.cert.key_label") && logs.contains("no-such-key"),
        "{logs}"
    );

    let mut o = id.options(&address, &ca);
    o.auth = o.auth.replace(MODULE, "/usr/lib/no-such-pkcs11-module.so");
    let logs = refused(&o, 64).await;
    assert!(
        logs.contains("auth.cert.module_path") && logs.contains("no-such-pkcs11-module"),
        "{logs}"
    );

    let mut o = id.options(&address, &ca);
    o.auth = o.auth.replace(
        &format!("token_label = \"{}\"", id.token),
        "token_label = \"absent\"",
    );
    // An absent token may be plugged in later: exit 1, systemd's Restart= tries again.
    let logs = refused(&o, 1).await;
    assert!(
        logs.contains("auth.cert.token_label") && logs.contains("absent"),
        "{logs}"
    );

    std::fs::set_permissions(&id.pin_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let logs = refused(&id.options(&address, &ca), 64).await;
    assert!(
        logs.contains("auth.cert.pin_file") && logs.contains("readable by group or others"),
        "{logs}"
    );
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// The token disappears (its store moved away, as if unplugged): the next full handshake fails
/// with a reason naming the token in Status while the provider keeps answering, and once the
/// token is back the provider is healthy again. (Switching the backend listener defeats TLS
/// session resumption, so each switch forces a full handshake that needs the token.)
#[tokio::test]
async fn a_removed_token_is_a_named_health_reason_and_a_restart_picks_it_up_again() {
    let id = identity("removal", "EC:prime256v1");
    let bao = TlsBao::start(&id.client_ca).await;
    let proxy = FaultProxy::start(port_of(&bao.tls13)).await;
    let address = format!("https://127.0.0.1:{}", proxy.port);
    let mut p = Provider::start(&id.options(&address, &bao.server_ca())).await;
    round_trip(&p).await;

    let tokens = softhsm().dir.path().join("tokens");
    let aside = softhsm().dir.path().join("removed");
    std::fs::create_dir_all(&aside).expect("aside dir");
    let token_dir = token_dir(&tokens, &id.token);
    let parked = aside.join(token_dir.file_name().expect("name"));
    std::fs::rename(&token_dir, &parked).expect("remove the token");
    proxy.switch_to(port_of(&bao.tls12));
    p.wait_status("healthz names the PKCS#11 token", |s| {
        s.healthz != "ok" && s.healthz.contains("PKCS#11") && s.healthz.contains("removal")
    })
    .await;
    eprintln!(
        "health while the token is away: {}",
        p.status().await.healthz
    );

    // The gRPC server kept answering throughout (the Status calls above); KMS calls fail cleanly.
    let mut c = p.client().await;
    let refused = c
        .encrypt(bao_kms_provider::pb::EncryptRequest {
            plaintext: vec![1; 32],
            uid: "u".into(),
        })
        .await;
    let status = refused.expect_err("Encrypt cannot succeed without the token");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // SoftHSM2 enumerates its tokens once per process (a module with slot events, such as
    // OpenSC with pcscd, shows a re-inserted token to a new session): after re-insertion a
    // restart picks it up.
    std::fs::rename(&parked, &token_dir).expect("re-insert the token");
    proxy.switch_to(port_of(&bao.tls13));
    assert_eq!(p.stop(), Some(0), "{}", p.logs());
    p.start_process();
    p.wait_healthy().await;
    round_trip(&p).await;
}

/// SoftHSM2 keeps each token in its own directory with a token.object file naming its label.
fn token_dir(tokens: &Path, label: &str) -> PathBuf {
    std::fs::read_dir(tokens)
        .expect("tokens dir")
        .map(|e| e.expect("entry").path())
        .find(|d| {
            std::fs::read(d.join("token.object"))
                .is_ok_and(|b| b.windows(label.len()).any(|w| w == label.as_bytes()))
        })
        .unwrap_or_else(|| panic!("no SoftHSM2 token directory for {label}"))
}

/// Builds tests/fixtures/pkcs11_hang_shim.c: SoftHSM2, except that C_Sign hangs while a file
/// exists (a hung token or module) and, on request, only raw signing mechanisms are listed.
fn hang_shim(dir: &Path) -> PathBuf {
    let out = dir.join("hang-shim.so");
    run(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&out)
            .arg(repo_root().join("tests/fixtures/pkcs11_hang_shim.c"))
            .arg("-ldl"),
        "cc (the hanging PKCS#11 shim)",
    );
    out
}

/// A C_Sign that never returns costs each handshake `openbao.timeout` (1 s here), becomes a
/// health reason naming the token, and never stalls Status or /livez; when the token answers
/// again the provider recovers without a restart.
#[tokio::test]
async fn a_hung_sign_is_bounded_named_and_never_stalls_status() {
    let id = identity("hung", "EC:prime256v1");
    let shim = hang_shim(id.dir.path());
    let hang = id.dir.path().join("hang");
    let bao = TlsBao::start(&id.client_ca).await;
    let proxy = FaultProxy::start(port_of(&bao.tls13)).await;
    let mut o = id.options(
        &format!("https://127.0.0.1:{}", proxy.port),
        &bao.server_ca(),
    );
    o.auth = o.auth.replace(MODULE, &shim.display().to_string());
    o.env.push(("P11_REAL_MODULE".into(), MODULE.into()));
    o.env
        .push(("P11_HANG_FILE".into(), hang.display().to_string()));
    let p = Provider::start(&o).await;
    round_trip(&p).await;

    std::fs::write(&hang, "").expect("hang the token");
    proxy.switch_to(port_of(&bao.tls12)); // the next request needs a full handshake
    let end = Instant::now() + Duration::from_secs(20);
    let mut slowest = Duration::ZERO;
    loop {
        let asked = Instant::now();
        let s = p.status().await;
        slowest = slowest.max(asked.elapsed());
        if s.healthz.contains("did not answer within") && s.healthz.contains("\"hung\"") {
            eprintln!("health while C_Sign hangs: {}", s.healthz);
            break;
        }
        assert!(
            Instant::now() < end,
            "no timeout reason in Status: {}\n{}",
            s.healthz,
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Status is answered from the snapshot: a hung token costs it nothing. A Status that
    // waited for the token would take a handshake's whole budget, openbao.timeout (1 s).
    for _ in 0..10 {
        let asked = Instant::now();
        p.status().await;
        slowest = slowest.max(asked.elapsed());
        // Samples spread over a second, across several probes.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "Status took {slowest:?} while C_Sign hung"
    );
    let (code, body) = p.http_get(p.health_port, "/livez").await;
    assert_eq!(code, 200, "/livez while C_Sign hangs: {body}");
    eprintln!("Status while C_Sign hangs: slowest {slowest:?}");

    std::fs::remove_file(&hang).expect("unhang");
    p.wait_healthy().await;
    round_trip(&p).await;
}
