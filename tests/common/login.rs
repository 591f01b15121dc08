//! Login setup shared by the tests: the `[auth]` sections for JWT and cert login, a JWT of the
//! test's own, and throwaway CAs made with openssl.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Bao;

/// `[auth]` for JWT login with the token in `jwt_file` (the lab's mount and role).
pub fn jwt_auth(jwt_file: &Path) -> String {
    format!(
        "[auth]\nmethod = \"jwt\"\n[auth.jwt]\njwt_file = \"{}\"\n",
        jwt_file.display()
    )
}

/// `[auth]` for cert login as the lab's `bao-kms-provider` role with `cert_file`; `key_lines`
/// say where the key is (`key_file = …`, or `key_source = "pkcs11"` and its fields).
pub fn cert_auth(cert_file: &Path, key_lines: &str) -> String {
    format!(
        "[auth]\nmethod = \"cert\"\n[auth.cert]\nname = \"bao-kms-provider\"\ncert_file = \"{}\"\n{key_lines}",
        cert_file.display()
    )
}

/// `[auth]` for cert login with the client key in a file.
pub fn cert_file_auth(cert_file: &Path, key_file: &Path) -> String {
    cert_auth(
        cert_file,
        &format!("key_file = \"{}\"\n", key_file.display()),
    )
}

/// The `[openbao]` line that trusts `ca` for the server's certificate.
pub fn ca_file_line(ca: &Path) -> String {
    format!("ca_file = \"{}\"\n", ca.display())
}

/// A JWT the test owns: minted with the lab signing key into its own directory, so the test
/// may rewrite, break or expire it without touching the server's copy.
pub struct OwnJwt {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Bao {
    /// Mints a new JWT, valid for an hour, into `dir/identity.jwt` with the lab signing key.
    pub fn mint_jwt(&self, dir: &Path) {
        self.mint_jwt_for(dir, 3600);
    }

    /// Mints a JWT whose `exp` is `seconds` from now (negative: already expired) into
    /// `dir/identity.jwt`, replacing the file atomically (a rename, as a token projector does).
    pub fn mint_jwt_for(&self, dir: &Path, seconds: i64) {
        std::fs::copy(
            self.dir.path().join("jwt-signing.pem"),
            dir.join("jwt-signing.pem"),
        )
        .expect("copy key");
        mint_lab_jwt(dir, seconds, &[]);
    }

    pub fn own_jwt(&self) -> OwnJwt {
        let dir = tempfile::tempdir().expect("tempdir");
        self.mint_jwt(dir.path());
        let path = dir.path().join("identity.jwt");
        OwnJwt { dir, path }
    }
}

/// `scripts/openbao-lab.sh jwt`: a JWT signed with `dir/jwt-signing.pem`, `exp` `seconds` from
/// now, into `dir/identity.jwt`; `claims` sets JWT_SUBJECT, JWT_AUDIENCE or JWT_ISSUER.
pub fn mint_lab_jwt(dir: &Path, seconds: i64, claims: &[(&str, String)]) {
    let out = Command::new(super::repo_root().join("scripts/openbao-lab.sh"))
        .args(["jwt", &dir.to_string_lossy(), &seconds.to_string()])
        .envs(claims.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("mint jwt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA (EC P-256, valid one day) as `dir/<stem>.key` and `dir/<stem>.pem`, with
/// subject `/CN=<common_name>`; returns (key, certificate).
pub fn self_signed_ca(dir: &Path, stem: &str, common_name: &str) -> (PathBuf, PathBuf) {
    let (key, pem) = (
        dir.join(format!("{stem}.key")),
        dir.join(format!("{stem}.pem")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
        ])
        .arg(format!("/CN={common_name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&pem)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("openssl req -x509: cannot run (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl req -x509 ({common_name}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, pem)
}
