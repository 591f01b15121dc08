//! `scan-etcd`: every value under an etcd prefix, counted by what it is encrypted with. The
//! check after a migration or a rotation: are all values on this provider, and none on a key
//! version the registry has retired? Reads one etcd snapshot page by page; prints keys and
//! public prefixes only, never a value.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::parse_duration;
use super::verify::{
    load_registry, provider_name, result_word, EtcdArgs, EXIT_COULD_NOT_CHECK, EXIT_MALFORMED,
    EXIT_NOT_ENCRYPTED, EXIT_OTHER_PROVIDER, EXIT_UNKNOWN_KEY, EXIT_USAGE, EXIT_VERIFIED,
};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::envelope::etcd::{prefix_end, EtcdClient, EtcdError};
use crate::envelope::{EnvelopeError, Failure};
use crate::keys::Registry;

pub(crate) const EXIT_RETIRED: u8 = 8;

pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes (the first that applies, in this order):
  1   could not check: etcd unreachable, a page failed, the snapshot was compacted away
  2   usage error
  7   malformed: a value has this provider's prefix but kube-apiserver would reject it
  5   unknown key: a value's key_id is not in this host's key registry
  3   not encrypted: a value lacks the k8s:enc: prefix (stored in plaintext)
  4   encrypted by another provider: another KMS v2 provider name or another k8s:enc: scheme
  8   retired key version: a value's key_id is retired in the key registry (rewrite it first)
  0   every value is this provider's, on a key_id that is active (or pending)
  64  no provider name: --provider-name not given and the config is unreadable
Without a readable key registry (no --config) key_id states are not known and 5 and 8 do not
occur. Scan the prefixes of the resources the EncryptionConfiguration encrypts: other resources
are stored in plaintext (3).";

/// Keys per etcd request at first; halved when a page is over the client's response cap.
const PAGE: usize = 256;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("etcd").required(true).args(["etcd_endpoint"])))]
pub(crate) struct ScanArgs {
    /// etcd key prefix to scan, e.g. /registry/secrets/ or /registry/ (everything).
    #[arg(long, default_value = "/registry/secrets/")]
    pub(crate) prefix: String,
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
    /// Config file: the provider name and the key registry that tells an active key_id from
    /// a retired or unknown one. Optional when --provider-name is given.
    #[arg(long, short = 'c', env = "BAO_KMS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    /// Provider name expected in the prefix. Default: transit.key_id_scope.provider_name from
    /// --config.
    #[arg(long, value_name = "NAME")]
    pub(crate) provider_name: Option<String>,
    /// text: one line per kind and key_id; json: one object for scripts.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: Output,
    /// Per-request deadline for etcd.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) timeout: Duration,
}

/// Values of one kind: how many, and the first etcd key seen (to start looking).
#[derive(Serialize, Default)]
struct Count {
    values: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_key: Option<String>,
}

impl Count {
    fn add(&mut self, key: &[u8]) {
        self.values += 1;
        if self.first_key.is_none() {
            self.first_key = Some(String::from_utf8_lossy(key).into_owned());
        }
    }
}

#[derive(Serialize)]
pub(crate) struct KeyIdCount {
    pub(crate) key_id: String,
    /// active, pending, retired, or unknown (not in the registry, or no registry).
    pub(crate) state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transit_version: Option<u32>,
    pub(crate) values: u64,
}

/// What one scan of a prefix found, and its verdict.
#[derive(Serialize, Default)]
pub(crate) struct Tally {
    pub(crate) prefix: String,
    provider_name: String,
    pub(crate) revision: i64,
    pub(crate) values: u64,
    pub(crate) key_ids: Vec<KeyIdCount>,
    /// By the public prefix of the other scheme or provider, e.g. `k8s:enc:aescbc:v1:key1:`.
    other: BTreeMap<String, Count>,
    unencrypted: Count,
    malformed: Count,
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    pub(crate) result: &'static str,
    pub(crate) exit_code: u8,
}

pub(crate) fn run(a: ScanArgs) -> Result<ExitCode> {
    let (name, settings) = provider_name(&a.config, a.provider_name.as_ref())?;
    // Checked before the scan, so a bad name is a usage error and not one per value.
    if let Err(e) = crate::envelope::check_provider_name(&name) {
        eprintln!("bao-kms-provider: {e}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let registry = match &settings {
        Ok(s) => load_registry(s),
        Err(e) => Err(format!("no config: {e}")),
    };
    let (etcd, _) = a.etcd.client(a.timeout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registry = registry.as_ref().map_err(String::as_str);
    let t = rt.block_on(tally(&etcd, &a.prefix, &name, registry));
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
        Output::Text => print!("{}", text(&t)),
    }
    Ok(ExitCode::from(t.exit_code))
}

/// Counts every value under `prefix` (one etcd revision) by key_id and by kind, and gives the
/// verdict. `registry` tells the key_ids' states; `Err(why)` when it cannot be read.
pub(crate) async fn tally(
    etcd: &EtcdClient,
    prefix: &str,
    provider_name: &str,
    registry: Result<&Registry, &str>,
) -> Tally {
    let mut t = Tally {
        prefix: prefix.to_owned(),
        provider_name: provider_name.to_owned(),
        ..Tally::default()
    };
    let mut by_key_id = BTreeMap::<String, u64>::new();
    let scanned = scan(etcd, prefix.as_bytes(), |key, value| {
        t.values += 1;
        match crate::envelope::Envelope::parse(value, &t.provider_name) {
            Ok(env) => *by_key_id.entry(env.key_id).or_default() += 1,
            Err(e) => match (e.failure(), &e) {
                (_, EnvelopeError::OtherProvider { found, .. }) => t
                    .other
                    .entry(format!("k8s:enc:kms:v2:{found}:"))
                    .or_default()
                    .add(key),
                (_, EnvelopeError::OtherScheme { scheme }) => {
                    t.other.entry(scheme.clone()).or_default().add(key)
                }
                (Failure::NotEncrypted, _) => t.unencrypted.add(key),
                _ => t.malformed.add(key),
            },
        }
    })
    .await;
    match scanned {
        Ok(revision) => t.revision = revision,
        Err(e) => t.error = Some(e.to_string()),
    }
    if let Err(e) = registry {
        t.registry_error = Some(e.to_owned());
    }
    t.key_ids = by_key_id
        .into_iter()
        .map(|(key_id, values)| key_id_count(key_id, values, registry.ok()))
        .collect();
    (t.exit_code, t.result) = verdict(&t);
    t
}

/// Reads every key under `prefix` at one revision, page by page; returns that revision.
async fn scan(
    etcd: &EtcdClient,
    prefix: &[u8],
    mut each: impl FnMut(&[u8], &[u8]),
) -> Result<i64, EtcdError> {
    let end = prefix_end(prefix);
    let (mut start, mut revision, mut limit) = (prefix.to_vec(), 0, PAGE);
    loop {
        let page = match etcd.range(&start, &end, limit, revision).await {
            Err(EtcdError::TooLarge { .. }) if limit > 1 => {
                limit /= 2;
                continue;
            }
            r => r?,
        };
        if revision == 0 {
            revision = page.revision;
        }
        for (key, value) in &page.kvs {
            each(key, value);
        }
        match page.kvs.last() {
            Some((last, _)) if page.more => {
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(revision),
        }
    }
}

fn key_id_count(key_id: String, values: u64, registry: Option<&Registry>) -> KeyIdCount {
    let record = registry.and_then(|r| r.by_key_id(&key_id));
    KeyIdCount {
        state: record.map_or("unknown", |r| r.state.as_str()),
        transit_version: record.map(|r| r.version),
        key_id,
        values,
    }
}

/// The exit code and result word, in the precedence `EXIT_CODES_HELP` states.
fn verdict(t: &Tally) -> (u8, &'static str) {
    let state = |s: &str| t.key_ids.iter().any(|k| k.state == s);
    let code = if t.error.is_some() {
        EXIT_COULD_NOT_CHECK
    } else if t.malformed.values > 0 {
        EXIT_MALFORMED
    } else if t.registry_error.is_none() && state("unknown") {
        EXIT_UNKNOWN_KEY
    } else if t.unencrypted.values > 0 {
        EXIT_NOT_ENCRYPTED
    } else if !t.other.is_empty() {
        EXIT_OTHER_PROVIDER
    } else if state("retired") {
        EXIT_RETIRED
    } else {
        EXIT_VERIFIED
    };
    let word = match code {
        EXIT_VERIFIED => "ok",
        EXIT_RETIRED => "RETIRED KEY VERSION",
        other => result_word(other),
    };
    (code, word)
}

/// The text report: one line per kind and key_id.
pub(crate) fn text(t: &Tally) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{:<12} {value}\n", format!("{label}:")));
    };
    let first = |c: &Count| match &c.first_key {
        Some(k) => format!("{} (first: {k})", c.values),
        None => c.values.to_string(),
    };
    line("prefix", t.prefix.clone());
    line("provider", t.provider_name.clone());
    if let Some(e) = &t.error {
        line("error", e.clone());
    } else {
        line("revision", t.revision.to_string());
    }
    line("values", t.values.to_string());
    for k in &t.key_ids {
        let state = match k.transit_version {
            Some(v) => format!("{}, Transit v{v}", k.state),
            None => k.state.to_owned(),
        };
        line("key_id", format!("{} ({state}): {}", k.key_id, k.values));
    }
    for (prefix, c) in &t.other {
        line("other", format!("{prefix} {}", first(c)));
    }
    line("unencrypted", first(&t.unencrypted));
    line("malformed", first(&t.malformed));
    if let Some(e) = &t.registry_error {
        line(
            "registry",
            format!("not readable, key_id states unknown: {e}"),
        );
    }
    line("result", t.result.to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(states: &[&'static str]) -> Tally {
        Tally {
            key_ids: states
                .iter()
                .map(|s| KeyIdCount {
                    key_id: format!("k-{s}"),
                    state: s,
                    transit_version: None,
                    values: 1,
                })
                .collect(),
            ..Tally::default()
        }
    }

    #[test]
    fn the_verdict_follows_the_stated_precedence() {
        assert_eq!(verdict(&tally(&["active", "pending"])).0, EXIT_VERIFIED);
        let mut t = tally(&["active", "retired"]);
        assert_eq!(verdict(&t).0, EXIT_RETIRED);
        t.other
            .entry("k8s:enc:aescbc:v1:k:".into())
            .or_default()
            .add(b"/a");
        assert_eq!(verdict(&t).0, EXIT_OTHER_PROVIDER);
        t.unencrypted.add(b"/b");
        assert_eq!(verdict(&t).0, EXIT_NOT_ENCRYPTED);
        let mut u = tally(&["unknown"]);
        assert_eq!(verdict(&u).0, EXIT_UNKNOWN_KEY);
        u.registry_error = Some("no config".into());
        assert_eq!(
            verdict(&u).0,
            EXIT_VERIFIED,
            "no registry: states are not known"
        );
        u.malformed.add(b"/c");
        assert_eq!(verdict(&u).0, EXIT_MALFORMED);
        u.error = Some("etcd down".into());
        assert_eq!(verdict(&u).0, EXIT_COULD_NOT_CHECK);
    }
}
