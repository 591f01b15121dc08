//! The etcd envelope end to end: a real etcd, a real OpenBao and the provider; values written
//! exactly as kube-apiserver writes them are opaque in etcd (seen with the real etcdctl) and
//! `bao-kms-provider verify-etcd-value` decrypts them, across a Transit rotation; each way a
//! value can be wrong ends in its own exit code.
pub mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use bao_kms_provider::envelope::{decode, encode, DekSourceType, Writer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::etcd::{kube_writer, Etcd};
use common::*;
use prost::Message;

const PROVIDER: &str = "openbao-kms";
const PREFIX: &[u8] = b"k8s:enc:kms:v2:openbao-kms:";

fn marker() -> String {
    format!("marker-{:016x}", rand::random::<u64>())
}

fn secret_key() -> String {
    format!(
        "/registry/secrets/default/envelope-{:08x}",
        rand::random::<u32>()
    )
}

/// A Secret-shaped object carrying the marker in plain text and in base64 data.
fn secret(key: &str, marker: &str) -> Vec<u8> {
    let name = key.rsplit('/').next().unwrap_or("x");
    format!(
        r#"{{"kind":"Secret","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"default","annotations":{{"marker":"{marker}"}}}},"type":"Opaque","data":{{"marker":"{}"}}}}"#,
        STANDARD.encode(marker)
    )
    .into_bytes()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

struct Run {
    code: i32,
    out: String,
}

/// Runs the real binary; `stdin` is fed when given.
fn verify(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(provider_bin())
        .arg("verify-etcd-value")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run verify-etcd-value");
    if let Some(data) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(data)
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        out: text,
    }
}

/// verify-etcd-value fetching `key` from etcd with the provider's config.
fn verify_in_etcd(p: &Provider, etcd: &Etcd, key: &str, extra: &[&str]) -> Run {
    let cfg = p.config.to_string_lossy().to_string();
    let etcd_args = etcd.cli_args();
    let mut args = vec!["--config", &cfg, "--key", key];
    args.extend(etcd_args.iter().map(String::as_str));
    args.extend(extra);
    verify(&args, None)
}

fn line<'a>(run: &'a Run, label: &str) -> &'a str {
    let prefix = format!("{label}:");
    run.out
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::trim))
        .unwrap_or_else(|| panic!("no {label}: line in\n{}", run.out))
}

#[tokio::test]
async fn secret_written_like_kube_apiserver_is_opaque_in_etcd_and_verifies_across_rotation() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let etcd = Etcd::start().await;
    let mut writer = kube_writer(&p, PROVIDER).await;

    let (key1, marker1) = (secret_key(), marker());
    let value1 = writer
        .write(&key1, &secret(&key1, &marker1))
        .await
        .expect("write");
    etcd.put(&key1, &value1).await;
    let first_key_id = writer.key_id().expect("key_id").to_owned();
    assert_eq!(first_key_id, p.status().await.key_id);

    // What an operator sees with etcdctl: the prefix, and neither the marker nor its base64.
    let raw = etcd.etcdctl(&["get", &key1, "--print-value-only"]).stdout;
    assert!(
        raw.starts_with(PREFIX),
        "etcdctl shows the KMS v2 prefix: {:?}",
        String::from_utf8_lossy(&raw[..40.min(raw.len())])
    );
    assert!(
        !contains(&raw, marker1.as_bytes()),
        "marker must not appear in etcd"
    );
    assert!(
        !contains(&raw, STANDARD.encode(&marker1).as_bytes()),
        "nor its base64"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&etcd.etcdctl(&["get", &key1, "-w", "json"]).stdout).expect("json");
    let stored = STANDARD
        .decode(json["kvs"][0]["value"].as_str().expect("value"))
        .expect("b64");
    assert_eq!(
        stored, value1,
        "etcd holds exactly the bytes the writer produced"
    );

    let run = verify_in_etcd(&p, &etcd, &key1, &["--show-plaintext"]);
    assert_eq!(run.code, 0, "verified:\n{}", run.out);
    assert_eq!(line(&run, "provider"), PROVIDER);
    assert_eq!(
        line(&run, "key_id"),
        format!("{first_key_id} (active, Transit v1)")
    );
    assert_eq!(
        line(&run, "dek_source"),
        "HKDF_SHA256_XNONCE_AES_GCM_SEED (1)"
    );
    assert_eq!(line(&run, "decrypts"), "yes");
    assert!(
        line(&run, "plaintext").contains(&marker1),
        "decrypts back to the marker:\n{}",
        run.out
    );
    let quiet = verify_in_etcd(&p, &etcd, &key1, &[]);
    assert_eq!(quiet.code, 0, "{}", quiet.out);
    assert!(
        !quiet.out.contains(&marker1),
        "plaintext only with --show-plaintext:\n{}",
        quiet.out
    );

    // Rotate the Transit key; once Status reports the new key_id, a write uses it.
    bao.rotate().await;
    p.wait_status("Status key_id changes after rotation", |s| {
        s.key_id != first_key_id
    })
    .await;
    let (key2, marker2) = (secret_key(), marker());
    let value2 = writer
        .write(&key2, &secret(&key2, &marker2))
        .await
        .expect("write after rotation");
    etcd.put(&key2, &value2).await;
    let second_key_id = writer.key_id().expect("key_id").to_owned();
    assert_ne!(
        second_key_id, first_key_id,
        "the writer took the new key_id like kube-apiserver"
    );

    let old = verify_in_etcd(&p, &etcd, &key1, &["--show-plaintext"]);
    assert_eq!(old.code, 0, "the older value still verifies:\n{}", old.out);
    assert_eq!(
        line(&old, "key_id"),
        format!("{first_key_id} (retired, Transit v1)")
    );
    assert!(line(&old, "plaintext").contains(&marker1));
    let new = verify_in_etcd(&p, &etcd, &key2, &["--show-plaintext"]);
    assert_eq!(new.code, 0, "{}", new.out);
    assert_eq!(
        line(&new, "key_id"),
        format!("{second_key_id} (active, Transit v2)")
    );
    assert!(line(&new, "plaintext").contains(&marker2));

    // Without a readable config (an operator's workstation): provider name and socket by flag.
    let sock = p.socket.to_string_lossy().to_string();
    let run = verify(
        &[
            "--config",
            "/nonexistent/config.toml",
            "--provider-name",
            PROVIDER,
            "--socket",
            &sock,
            "--key",
            &key1,
            "--input",
            "-",
        ],
        Some(&value1),
    );
    assert_eq!(run.code, 0, "{}", run.out);
    assert!(
        line(&run, "key_id").contains("not active; no config"),
        "{}",
        run.out
    );

    // Legacy DEK source type 0 (Kubernetes before 1.29) still verifies.
    let mut legacy =
        Writer::new(p.client().await, PROVIDER, DekSourceType::AesGcmKey).expect("writer");
    let key3 = secret_key();
    let value3 = legacy
        .write(&key3, &secret(&key3, &marker()))
        .await
        .expect("legacy write");
    etcd.put(&key3, &value3).await;
    let run = verify_in_etcd(&p, &etcd, &key3, &[]);
    assert_eq!(run.code, 0, "{}", run.out);
    assert_eq!(line(&run, "dek_source"), "AES_GCM_KEY (0)");
}

#[tokio::test]
async fn each_wrong_value_gets_its_own_exit_code() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let etcd = Etcd::start().await;
    let mut writer = kube_writer(&p, PROVIDER).await;
    let key = secret_key();
    let mark = marker();
    let good = writer
        .write(&key, &secret(&key, &mark))
        .await
        .expect("write");

    let check = async |name: &str, value: &[u8], code: i32, result: &str| {
        let k = format!("{key}-{name}");
        // The AAD is the etcd key, so store under a fresh key only values that don't depend on it.
        etcd.put(&k, value).await;
        let run = verify_in_etcd(&p, &etcd, &k, &[]);
        assert_eq!(run.code, code, "{name}:\n{}", run.out);
        assert_eq!(line(&run, "result"), result, "{name}");
        assert!(
            !run.out.contains(&mark),
            "{name}: no plaintext in the report:\n{}",
            run.out
        );
        run
    };

    let run = check("plaintext", &secret(&key, &mark), 3, "NOT ENCRYPTED").await;
    assert!(line(&run, "error").contains("JSON"), "{}", run.out);

    let mut other = Writer::new(
        p.client().await,
        "other-kms",
        DekSourceType::HkdfSha256XNonceAesGcmSeed,
    )
    .expect("writer");
    let run = check(
        "other-provider",
        &other.write(&key, b"x").await.expect("write"),
        4,
        "ENCRYPTED BY ANOTHER PROVIDER",
    )
    .await;
    assert!(line(&run, "error").contains("\"other-kms\""), "{}", run.out);
    check(
        "aescbc",
        b"k8s:enc:aescbc:v1:key1:\x01\x02\x03",
        4,
        "ENCRYPTED BY ANOTHER PROVIDER",
    )
    .await;

    let edit = |f: &dyn Fn(&mut bao_kms_provider::pb::EncryptedObject)| {
        let mut o = decode(&good[PREFIX.len()..]).expect("decode");
        f(&mut o);
        let mut raw = PREFIX.to_vec();
        o.encode(&mut raw).expect("encode");
        raw
    };
    let run = check(
        "unknown-key",
        &edit(&|o| o.key_id = "obkms1-never-issued-by-this-provider".into()),
        5,
        "UNKNOWN KEY",
    )
    .await;
    assert!(line(&run, "key_id").contains("unknown"), "{}", run.out);
    assert_eq!(line(&run, "decrypts"), "no");

    check(
        "malformed",
        &edit(&|o| o.encrypted_dek_source_type = 7),
        7,
        "MALFORMED",
    )
    .await;
    check(
        "garbage",
        b"k8s:enc:kms:v2:openbao-kms:\xff\xff\xff",
        7,
        "MALFORMED",
    )
    .await;
    check(
        "dek-source-flipped",
        &edit(&|o| o.encrypted_dek_source[20] ^= 1),
        6,
        "DOES NOT DECRYPT",
    )
    .await;

    // A flipped ciphertext byte is stored under the original key, so only the flip can fail it.
    let flipped = edit(&|o| {
        let n = o.encrypted_data.len();
        o.encrypted_data[n - 20] ^= 1;
    });
    let mk = verify(
        &[
            "--config",
            &p.config.to_string_lossy(),
            "--key",
            &key,
            "--input",
            "-",
        ],
        Some(&flipped),
    );
    assert_eq!(mk.code, 6, "flipped byte:\n{}", mk.out);
    assert_eq!(line(&mk, "decrypts"), "no");
    assert!(
        line(&mk, "error").contains("authentication failed"),
        "{}",
        mk.out
    );
    // The untouched value passes from a file, and fails under another etcd key (the AAD).
    let file = p.dir.path().join("value.bin");
    std::fs::write(&file, &good).expect("write file");
    let f = file.to_string_lossy().to_string();
    let cfg = p.config.to_string_lossy().to_string();
    assert_eq!(
        verify(&["--config", &cfg, "--key", &key, "--input", &f], None).code,
        0
    );
    let moved = verify(
        &[
            "--config",
            &cfg,
            "--key",
            "/registry/secrets/default/elsewhere",
            "--input",
            &f,
        ],
        None,
    );
    assert_eq!(
        moved.code, 6,
        "a value copied to another key does not decrypt:\n{}",
        moved.out
    );

    // Could not check: nothing stored at the key; the provider's socket missing.
    let run = verify_in_etcd(&p, &etcd, "/registry/secrets/default/absent", &[]);
    assert_eq!(run.code, 1, "{}", run.out);
    assert!(line(&run, "error").contains("no value at"), "{}", run.out);
    let run = verify(
        &[
            "--config",
            &cfg,
            "--socket",
            "/nonexistent.sock",
            "--key",
            &key,
            "--input",
            &f,
        ],
        None,
    );
    assert_eq!(run.code, 1, "{}", run.out);
    assert_eq!(line(&run, "result"), "COULD NOT CHECK");

    // The writer's own re-encoding agrees with kube-apiserver's validation.
    assert!(encode(PROVIDER, &decode(&good[PREFIX.len()..]).expect("decode")).is_ok());
}
