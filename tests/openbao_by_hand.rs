//! docs/openbao-by-hand.md as written: its tested block of `bao` commands runs against a bare
//! OpenBao dev server, then a provider with a JWT carrying the cluster's claims logs in, `doctor`
//! fails and skips nothing and an Encrypt/Decrypt round trip works. A JWT for another cluster is
//! refused.
pub mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const DOC: &str = "docs/openbao-by-hand.md";
const MARKER: &str = "<!-- tested: tests/openbao_by_hand.rs";
const CLUSTER: &str = "lab-c1";
const ISSUER: &str = "https://issuer.lab.invalid";

/// The ```sh block right after the marker line.
fn tested_block() -> String {
    let doc = std::fs::read_to_string(repo_root().join(DOC)).expect("read the doc");
    let after = doc
        .split_once(MARKER)
        .unwrap_or_else(|| panic!("{DOC} has no `{MARKER}` line"))
        .1;
    let body = after
        .split_once("```sh\n")
        .unwrap_or_else(|| panic!("{DOC}: no ```sh block after the marker"))
        .1;
    body.split_once("```")
        .unwrap_or_else(|| panic!("{DOC}: unterminated block"))
        .0
        .to_owned()
}

/// `bao` and `bao-kms-provider` under the names the doc calls them.
fn path_with_tools(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(bao_bin(), bin.join("bao")).expect("link bao");
    std::os::unix::fs::symlink(provider_bin(), bin.join("bao-kms-provider"))
        .expect("link provider");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn mint(dir: &Path, cluster: &str) {
    mint_lab_jwt(
        dir,
        3600,
        &[
            ("JWT_SUBJECT", format!("system:bao-kms-provider:{cluster}")),
            ("JWT_AUDIENCE", format!("bao-kms-provider:{cluster}")),
            ("JWT_ISSUER", ISSUER.to_owned()),
        ],
    );
}

fn doctor(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(provider_bin())
        .args(["doctor", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run doctor");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn the_by_hand_setup_gives_a_provider_that_passes_doctor() {
    let bao = Bao::start_empty().await;
    let work = tempfile::tempdir().expect("tempdir");
    let key = work.path().join("jwt-signing.pem");
    let pubkey = work.path().join("jwt-issuer.pub");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ],
        vec!["pkey", "-pubout", "-in", &key.to_string_lossy(), "-out"],
    ] {
        let target = if args[0] == "genpkey" { &key } else { &pubkey };
        let st = Command::new("openssl")
            .args(&args)
            .arg(target)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    }
    mint(work.path(), CLUSTER);

    let mut o = ProviderOptions::with(&bao.addr, &work.path().join("identity.jwt"));
    o.auth
        .push_str(&format!("role = \"bao-kms-provider-{CLUSTER}\"\n"));
    o.extra = format!("[transit]\nkey_name = \"k8s-etcd-{CLUSTER}\"\n");
    // The config exists before OpenBao is set up: the block prints the policy from it.
    let mut p = Provider::spawn(&o);

    let out = Command::new("sh")
        .arg("-c")
        .arg(tested_block())
        .env("PATH", path_with_tools(work.path()))
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", "root")
        .env("CLUSTER", CLUSTER)
        .env("CONFIG", &p.config)
        .env("JWT_PUBKEY", &pubkey)
        .env("ISSUER", ISSUER)
        .output()
        .expect("run the doc's block");
    assert!(
        out.status.success(),
        "{DOC}'s block failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    p.wait_healthy().await;
    let mut c = p.client().await;
    let e = encrypt(&mut c, b"by-hand").await;
    let d = c
        .decrypt(decrypt_request(&e))
        .await
        .expect("Decrypt")
        .into_inner();
    assert_eq!(d.plaintext, b"by-hand");

    let (code, report) = doctor(&p.config);
    assert_eq!(code, Some(0), "{report}");
    // A one-hour lab JWT is warned about (credential-expiry); nothing fails or is skipped.
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("FAIL") || l.starts_with("skip")),
        "{report}"
    );
    for check in ["key-profile", "upsert", "capabilities", "least-privilege"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(&format!("{check}:"))),
            "no ok {check} line:\n{report}"
        );
    }
    p.stop();

    // Another cluster's JWT, signed by the same issuer, does not log in to this cluster's role.
    mint(work.path(), "lab-c2");
    let (code, report) = doctor(&p.config);
    assert_ne!(code, Some(0), "{report}");
    assert!(
        report
            .lines()
            .any(|l| !l.starts_with("ok") && l.contains("login")),
        "{report}"
    );
}
