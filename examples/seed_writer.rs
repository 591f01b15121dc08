//! Test support: etcd values of Secrets under many distinct DEK seeds, written exactly as
//! kube-apiserver writes them (`envelope::Writer`: Status, a fresh seed, one Encrypt, AES-GCM
//! with the etcd key as AAD), without restarting kube-apiserver once per seed. One writer per
//! seed; prints `etcd-key<TAB>base64(value)` per object for the caller to put into etcd.
//!
//! `cargo run --example seed_writer -- SOCKET NAMESPACE SEEDS PER_SEED [PREFIX]`
//!
//! Secret `<PREFIX>-<seed>-<object>` (PREFIX defaults to `seed`, numbers zero-padded to three
//! digits) holds `data.value` = `<PREFIX> value <seed>-<object>`.
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use bao_kms_provider::envelope::{DekSourceType, Writer};
use bao_kms_provider::kms::client::connect;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

const PROVIDER: &str = "openbao-kms";

struct Args {
    socket: PathBuf,
    namespace: String,
    seeds: u32,
    per_seed: u32,
    prefix: String,
}

fn args() -> Result<Args> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if !(4..=5).contains(&a.len()) {
        bail!("usage: seed_writer SOCKET NAMESPACE SEEDS PER_SEED [PREFIX]");
    }
    Ok(Args {
        socket: PathBuf::from(&a[0]),
        namespace: a[1].clone(),
        seeds: a[2].parse().context("SEEDS")?,
        per_seed: a[3].parse().context("PER_SEED")?,
        prefix: a.get(4).cloned().unwrap_or_else(|| "seed".into()),
    })
}

/// A random version-4 UUID, as metadata.uid.
fn uid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A v1 Secret as kube-apiserver's storage decoder accepts it (JSON).
fn secret(name: &str, namespace: &str, value: &str) -> Vec<u8> {
    serde_json::json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid(),
            "creationTimestamp": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        },
        "type": "Opaque",
        "data": { "value": STANDARD.encode(value) },
    })
    .to_string()
    .into_bytes()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = args()?;
    let client = connect(&a.socket)
        .await
        .with_context(|| format!("connect to {}", a.socket.display()))?;
    let mut out = std::io::stdout().lock();
    for seed in 0..a.seeds {
        // A new writer has no seed yet: its first write makes one and calls Encrypt once.
        let mut writer = Writer::new(
            client.clone(),
            PROVIDER,
            DekSourceType::HkdfSha256XNonceAesGcmSeed,
        )?;
        for object in 0..a.per_seed {
            let name = format!("{}-{seed:03}-{object:03}", a.prefix);
            let key = format!("/registry/secrets/{}/{name}", a.namespace);
            let value = format!("{} value {seed}-{object}", a.prefix);
            let stored = writer
                .write(&key, &secret(&name, &a.namespace, &value))
                .await
                .with_context(|| format!("write {key}"))?;
            writeln!(out, "{key}\t{}", STANDARD.encode(stored))?;
        }
    }
    out.flush()?;
    Ok(())
}
