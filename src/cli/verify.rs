//! `verify-etcd-value`: the restore drill. Reads one raw etcd value, checks it the way
//! kube-apiserver would, has the provider decrypt its DEK source and decrypts the data itself.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tonic::Code;

use super::parse_duration;
use crate::config::{self, Environment, Settings, DEFAULT_CONFIG_PATH};
use crate::envelope::etcd::{EtcdClient, EtcdTls};
use crate::envelope::{Envelope, Failure};
use crate::keys::{Registry, Store};
use crate::kms::client::{self, CallError};
use crate::kms::code_name;
use crate::pb;

pub(crate) const EXIT_VERIFIED: u8 = 0;
pub(crate) const EXIT_COULD_NOT_CHECK: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_NOT_ENCRYPTED: u8 = 3;
pub(crate) const EXIT_OTHER_PROVIDER: u8 = 4;
pub(crate) const EXIT_UNKNOWN_KEY: u8 = 5;
pub(crate) const EXIT_DOES_NOT_DECRYPT: u8 = 6;
pub(crate) const EXIT_MALFORMED: u8 = 7;

pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   verified: our prefix, a valid EncryptedObject, the provider decrypts the DEK source and the
      data decrypts with it and the etcd key
  1   could not check: value missing in etcd, etcd or the provider unreachable, I/O error
  2   usage error (also a --provider-name that is empty or holds ':')
  3   not encrypted: the value lacks the k8s:enc: prefix (stored in plaintext)
  4   encrypted by another provider: another KMS v2 provider name or another k8s:enc: scheme
  5   unknown key: the provider does not know the value's key_id (wrong OpenBao restore or scope)
  6   does not decrypt: the DEK source or the data fails authentication (altered, wrong key or etcd key)
  7   malformed: our prefix, but kube-apiserver would reject the EncryptedObject
  64  no provider name: --provider-name not given and the config is unreadable";

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "etcd_endpoint"])))]
pub(crate) struct VerifyArgs {
    /// KMS socket of the provider. Default: server.socket_path from --config, else
    /// /run/openbao-kms/kms.sock.
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Config file: default socket, provider name, and the key registry that tells a retired
    /// key_id from an unknown one. Optional when --socket and --provider-name are given.
    #[arg(long, short = 'c', env = "BAO_KMS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    /// The etcd key, e.g. /registry/secrets/NAMESPACE/NAME. It is also the AES-GCM additional
    /// data, so it must be the key the value was stored under.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: String,
    /// Read the raw value bytes from FILE ("-" for stdin) instead of etcd.
    #[arg(long, value_name = "FILE|-")]
    pub(crate) input: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
    /// Provider name expected in the prefix. Default: transit.key_id_scope.provider_name from
    /// --config; this flag wins when both are there.
    #[arg(long, value_name = "NAME")]
    pub(crate) provider_name: Option<String>,
    /// Also print the decrypted object (non-printable bytes escaped). This is the Secret in
    /// plaintext: mind terminals, logs and shell history.
    #[arg(long)]
    pub(crate) show_plaintext: bool,
    /// Per-call deadline for etcd and the provider.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub(crate) timeout: Duration,
}

/// How to reach etcd, as etcdctl's `--endpoints`, `--cacert`, `--cert` and `--key`.
#[derive(clap::Args, Debug)]
pub(crate) struct EtcdArgs {
    /// etcd client URL (gRPC gateway), e.g. https://127.0.0.1:2379.
    #[arg(long, value_name = "URL")]
    pub(crate) etcd_endpoint: Option<String>,
    /// CA bundle for etcd's server certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt).
    #[arg(long, value_name = "FILE", requires = "etcd_endpoint")]
    pub(crate) etcd_cacert: Option<PathBuf>,
    /// etcd client certificate (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.crt).
    #[arg(long, value_name = "FILE", requires = "etcd_endpoint")]
    pub(crate) etcd_cert: Option<PathBuf>,
    /// etcd client key (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.key).
    #[arg(long, value_name = "FILE", requires = "etcd_endpoint")]
    pub(crate) etcd_client_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The client and the endpoint it talks to.
    pub(crate) fn client(&self, timeout: Duration) -> Result<(EtcdClient, &str)> {
        let endpoint = self
            .etcd_endpoint
            .as_deref()
            .ok_or_else(|| anyhow!("no --etcd-endpoint URL given"))?;
        let tls = EtcdTls {
            ca_file: self.etcd_cacert.clone(),
            cert_file: self.etcd_cert.clone(),
            key_file: self.etcd_client_key.clone(),
        };
        Ok((EtcdClient::new(endpoint, &tls, timeout)?, endpoint))
    }
}

/// The provider name (the flag, else the config's) and the config, when it loads.
pub(crate) fn provider_name(
    config: &Path,
    flag: Option<&String>,
) -> Result<(String, Result<Settings, String>)> {
    // The config is optional when --provider-name is given (e.g. on a workstation).
    let settings =
        match config::load(config, &Environment::from_process()) {
            Ok(s) => Ok(s),
            Err(e) if flag.is_none() => return Err(anyhow::Error::new(e).context(
                "cannot tell the provider name: pass --provider-name NAME or a readable --config",
            )),
            Err(e) => Err(e.to_string()),
        };
    let name = match (flag, &settings) {
        (Some(n), _) => n.clone(),
        (None, Ok(s)) => s.transit.key_id_scope.provider_name.clone(),
        (None, Err(e)) => return Err(anyhow!("no provider name: {e}")),
    };
    Ok((name, settings))
}

/// The `result:` word of an exit code (`scan-etcd` shares the words of the codes it shares).
pub(crate) fn result_word(code: u8) -> &'static str {
    match code {
        EXIT_VERIFIED => "verified",
        EXIT_NOT_ENCRYPTED => "NOT ENCRYPTED",
        EXIT_OTHER_PROVIDER => "ENCRYPTED BY ANOTHER PROVIDER",
        EXIT_UNKNOWN_KEY => "UNKNOWN KEY",
        EXIT_DOES_NOT_DECRYPT => "DOES NOT DECRYPT",
        EXIT_MALFORMED => "MALFORMED",
        EXIT_USAGE => "USAGE ERROR",
        _ => "COULD NOT CHECK",
    }
}

/// The lines printed and the exit code they end in.
struct Report {
    lines: Vec<(&'static str, String)>,
}

impl Report {
    fn add(&mut self, label: &'static str, value: impl Into<String>) {
        self.lines.push((label, value.into()));
    }

    fn finish(mut self, code: u8) -> ExitCode {
        self.add("result", result_word(code));
        for (label, value) in &self.lines {
            println!("{:<11} {value}", format!("{label}:"));
        }
        ExitCode::from(code)
    }
}

pub(crate) fn run(a: VerifyArgs) -> Result<ExitCode> {
    let (provider_name, settings) = provider_name(&a.config, a.provider_name.as_ref())?;
    let socket = match (&a.socket, &settings) {
        (Some(s), _) => s.clone(),
        (None, Ok(s)) => s.server.socket_path.clone(),
        (None, Err(_)) => PathBuf::from(crate::config::DEFAULT_SOCKET_PATH),
    };
    let mut report = Report { lines: Vec::new() };
    report.add("key", a.key.clone());
    if let (Some(flag), Ok(s)) = (&a.provider_name, &settings) {
        let configured = &s.transit.key_id_scope.provider_name;
        if flag != configured {
            report.add(
                "note",
                format!("--provider-name {flag:?} differs from the config's {configured:?}"),
            );
        }
    }
    let registry = settings.as_ref().ok().map(load_registry);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(check(
        &a,
        &provider_name,
        &socket,
        registry.as_ref(),
        &mut report,
    ));
    Ok(report.finish(code))
}

pub(crate) fn load_registry(s: &Settings) -> Result<Registry, String> {
    let identity = crate::provider::key_identity(s);
    Store::open_readonly(&s.server.state_dir, &identity.fingerprint())
        .verify()
        .map(|v| v.registry)
        .map_err(|e| e.to_string())
}

async fn read_value(a: &VerifyArgs) -> Result<(String, Option<Vec<u8>>)> {
    if let Some(input) = &a.input {
        if input == Path::new("-") {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the value from stdin")?;
            return Ok(("stdin".into(), Some(buf)));
        }
        let buf = std::fs::read(input)
            .with_context(|| format!("reading the value from {}", input.display()))?;
        return Ok((format!("file {}", input.display()), Some(buf)));
    }
    let (etcd, endpoint) = a.etcd.client(a.timeout)?;
    let value = etcd.get(a.key.as_bytes()).await?;
    Ok((format!("etcd {endpoint}"), value))
}

fn failure_code(f: Failure) -> u8 {
    match f {
        Failure::NotEncrypted => EXIT_NOT_ENCRYPTED,
        Failure::OtherProvider => EXIT_OTHER_PROVIDER,
        Failure::Malformed => EXIT_MALFORMED,
        Failure::DoesNotDecrypt => EXIT_DOES_NOT_DECRYPT,
        Failure::BadArgument => EXIT_USAGE,
    }
}

async fn check(
    a: &VerifyArgs,
    provider_name: &str,
    socket: &Path,
    registry: Option<&Result<Registry, String>>,
    out: &mut Report,
) -> u8 {
    let raw = match read_value(a).await {
        Ok((source, Some(raw))) => {
            out.add("source", source);
            raw
        }
        Ok((source, None)) => {
            out.add("source", source);
            out.add("error", format!("no value at {} in etcd", a.key));
            return EXIT_COULD_NOT_CHECK;
        }
        Err(e) => {
            out.add("error", format!("{e:#}"));
            return EXIT_COULD_NOT_CHECK;
        }
    };
    let env = match Envelope::parse(&raw, provider_name) {
        Ok(env) => env,
        Err(e) => {
            out.add("expected", format!("k8s:enc:kms:v2:{provider_name}:"));
            out.add("error", e.to_string());
            return failure_code(e.failure());
        }
    };
    out.add("provider", provider_name);
    match decrypt_dek_source(a, socket, &env, registry, out).await {
        Ok(dek_source) => match env.open(&dek_source, a.key.as_bytes()) {
            Ok(plaintext) => {
                out.add("decrypts", "yes");
                if a.show_plaintext {
                    out.add("plaintext", escape(&plaintext));
                }
                EXIT_VERIFIED
            }
            Err(e) => {
                out.add("decrypts", "no");
                out.add("error", e.to_string());
                failure_code(e.failure())
            }
        },
        Err(code) => code,
    }
}

/// Status (for the active key_id), then Decrypt of the DEK source; prints key_id and type.
async fn decrypt_dek_source(
    a: &VerifyArgs,
    socket: &Path,
    env: &Envelope,
    registry: Option<&Result<Registry, String>>,
    out: &mut Report,
) -> Result<zeroize::Zeroizing<Vec<u8>>, u8> {
    let unreachable = |out: &mut Report, e: String| {
        out.add("key_id", env.key_id.clone());
        out.add("dek_source", env.dek_source_type.to_string());
        out.add("error", e);
        EXIT_COULD_NOT_CHECK
    };
    let mut c = match tokio::time::timeout(a.timeout, client::connect(socket)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(unreachable(
                out,
                format!(
                    "cannot connect to the provider at {}: {e}",
                    socket.display()
                ),
            ))
        }
        Err(_) => {
            return Err(unreachable(
                out,
                format!("connecting to {} timed out", socket.display()),
            ))
        }
    };
    let status = client::call("Status", a.timeout, c.status(pb::StatusRequest {}))
        .await
        .map_err(|e| unreachable(out, format!("provider {e}")))?;
    let req = pb::DecryptRequest {
        ciphertext: env.encrypted_dek_source.clone(),
        uid: format!("verify-etcd-value-{:016x}", rand::random::<u64>()),
        key_id: env.key_id.clone(),
        annotations: env.annotations.clone(),
    };
    let decrypted = client::call("Decrypt", a.timeout, c.decrypt(req)).await;
    let not_found = matches!(&decrypted, Err(CallError::Failed { status, .. }) if status.code() == Code::NotFound);
    out.add(
        "key_id",
        format!(
            "{} ({})",
            env.key_id,
            key_state(&env.key_id, &status.key_id, registry, not_found)
        ),
    );
    out.add("dek_source", env.dek_source_type.to_string());
    match decrypted {
        Ok(r) => Ok(zeroize::Zeroizing::new(r.plaintext)),
        Err(CallError::Failed { status: s, .. }) => {
            let (code, what) = match s.code() {
                Code::NotFound => (EXIT_UNKNOWN_KEY, "the provider does not know this key_id"),
                Code::InvalidArgument => {
                    (EXIT_DOES_NOT_DECRYPT, "the provider refused the DEK source")
                }
                _ => (EXIT_COULD_NOT_CHECK, "provider Decrypt failed"),
            };
            if code != EXIT_COULD_NOT_CHECK {
                out.add("decrypts", "no");
            }
            out.add(
                "error",
                format!("{what}: {}: {}", code_name(s.code()), s.message()),
            );
            Err(code)
        }
        Err(e @ CallError::Timeout { .. }) => {
            out.add("error", format!("provider {e}"));
            Err(EXIT_COULD_NOT_CHECK)
        }
    }
}

/// active / retired / pending / unknown, from Status, the local registry and Decrypt's answer.
fn key_state(
    key_id: &str,
    status_key_id: &str,
    registry: Option<&Result<Registry, String>>,
    provider_says_unknown: bool,
) -> String {
    let record = match registry {
        Some(Ok(r)) => r
            .by_key_id(key_id)
            .map(|rec| (rec.state.as_str(), rec.version)),
        _ => None,
    };
    match (key_id == status_key_id, record) {
        (true, Some((_, v))) => format!("active, Transit v{v}"),
        (true, None) => "active: Status reports it".into(),
        (false, Some((state, v))) => format!("{state}, Transit v{v}"),
        (false, None) if provider_says_unknown => {
            "unknown: neither Status, the key registry nor the provider knows it".into()
        }
        (false, None) => match registry {
            Some(Err(e)) => format!("not active; key registry not readable: {e}"),
            None => "not active; no config, so the key registry was not consulted".into(),
            Some(Ok(_)) => "not active and not in this host's key registry".into(),
        },
    }
}

/// Printable ASCII as is, everything else (and `\`) escaped: one terminal-safe line, and a JSON
/// object stays readable. Kubernetes protobuf objects show their `\xNN` bytes.
fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_escaped_onto_one_safe_line() {
        assert_eq!(escape(br#"{"a":"b"}"#), r#"{"a":"b"}"#);
        assert_eq!(escape(b"k8s\x00\n\x1b[2J\\"), r"k8s\x00\n\x1b[2J\\");
    }

    #[test]
    fn key_state_names_active_retired_and_unknown() {
        let none: Option<&Result<Registry, String>> = None;
        assert_eq!(
            key_state("a", "a", none, false),
            "active: Status reports it"
        );
        assert!(key_state("a", "b", none, true).starts_with("unknown"));
        let unreadable = Err("permission denied".to_owned());
        assert!(key_state("a", "b", Some(&unreadable), false).contains("permission denied"));
    }
}
