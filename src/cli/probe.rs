//! `probe`: what kube-apiserver does, against the real socket.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rand::RngCore;

use super::{parse_duration, Exit};
use crate::config::{Environment, DEFAULT_CONFIG_PATH};
use crate::kms::{self, client};
use crate::pb;

#[derive(clap::Args, Debug)]
pub(crate) struct ProbeArgs {
    /// KMS socket. Default: server.socket_path from --config, else /run/openbao-kms/kms.sock.
    #[arg(long)]
    pub(crate) socket: Option<PathBuf>,
    /// Config file to take the socket path from when --socket is not given.
    #[arg(long, short = 'c', env = "BAO_KMS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    /// Per-call deadline, like the EncryptionConfiguration timeout.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub(crate) timeout: Duration,
    /// Keep trying until the probe passes or this much time has gone (0: try once).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub(crate) wait: Duration,
}

struct Outcome {
    lines: Vec<String>,
    ok: bool,
}

pub(crate) fn run(a: ProbeArgs) -> Result<ExitCode> {
    let socket = match &a.socket {
        Some(s) => s.clone(),
        None => crate::config::load(&a.config, &Environment::from_process())
            .map(|s| s.server.socket_path)
            .unwrap_or_else(|_| PathBuf::from(crate::config::DEFAULT_SOCKET_PATH)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + a.wait;
    loop {
        let outcome = rt.block_on(probe_once(&socket, a.timeout));
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => Outcome {
                lines: vec![format!("error:    {e:#}")],
                ok: false,
            },
        };
        if outcome.ok || Instant::now() >= deadline {
            // SIGPIPE stays ignored for probe (see cli::run): a closed stdout is not an error.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "socket:   {}", socket.display());
            for l in &outcome.lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(
                out,
                "result:   {}",
                if outcome.ok { "OK" } else { "FAILED" }
            );
            return Ok(if outcome.ok {
                ExitCode::SUCCESS
            } else {
                Exit::Failed.into()
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn probe_once(socket: &std::path::Path, timeout: Duration) -> Result<Outcome> {
    let mut c = tokio::time::timeout(timeout, client::connect(socket))
        .await
        .map_err(|_| anyhow!("connecting to {} timed out", socket.display()))?
        .map_err(|e| anyhow!("cannot connect to {}: {e}", socket.display()))?;
    let mut lines = Vec::new();
    let t = Instant::now();
    let status = client::call("Status", timeout, c.status(pb::StatusRequest {})).await?;
    let status_took = t.elapsed();
    lines.push(format!("version:  {}", status.version));
    lines.push(format!("healthz:  {}", status.healthz));
    lines.push(format!("key_id:   {}", status.key_id));
    lines.push(format!("status:   {}", ms(status_took)));
    let mut ok =
        status.version == kms::API_VERSION && status.healthz == "ok" && !status.key_id.is_empty();
    if !ok {
        return Ok(Outcome { lines, ok });
    }
    let mut seed = zeroize::Zeroizing::new(vec![0u8; 32]);
    rand::thread_rng().fill_bytes(&mut seed);
    let uid = format!("probe-{:016x}", rand::random::<u64>());
    let t = Instant::now();
    let enc = client::call(
        "Encrypt",
        timeout,
        c.encrypt(pb::EncryptRequest {
            plaintext: seed.to_vec(),
            uid: uid.clone(),
        }),
    )
    .await?;
    let same_key = enc.key_id == status.key_id;
    lines.push(format!(
        "encrypt:  {} ({} bytes, key_id {})",
        ms(t.elapsed()),
        enc.ciphertext.len(),
        if same_key {
            "matches Status"
        } else {
            "DIFFERS from Status"
        }
    ));
    ok &= same_key;
    let t = Instant::now();
    let dec = client::call(
        "Decrypt",
        timeout,
        c.decrypt(pb::DecryptRequest {
            ciphertext: enc.ciphertext,
            uid,
            key_id: enc.key_id,
            annotations: enc.annotations,
        }),
    )
    .await?;
    let same = dec.plaintext == *seed;
    lines.push(format!(
        "decrypt:  {} (plaintext {})",
        ms(t.elapsed()),
        if same { "matches" } else { "DIFFERS" }
    ));
    ok &= same;
    Ok(Outcome { lines, ok })
}
