//! Text the provider hands to other systems: the OpenBao policy and the EncryptionConfiguration.
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::stage::{self, Ours, Stage};

/// Where the provider goes in the printed configuration: the stage, the file it merges with,
/// and whether the providers that file carried over are left out (write stage only).
#[derive(Clone, Copy)]
pub(crate) struct Placement<'a> {
    pub(crate) stage: Stage,
    pub(crate) existing: Option<&'a stage::Existing>,
    pub(crate) drop_previous: bool,
}

use super::{load, parse_duration, ConfigArg};
use crate::config::Settings;

/// Least privilege: read the key and mount, encrypt/decrypt, keep its own token alive
/// (generated from the path table in `openbao::contract`).
pub(crate) fn policy(s: &Settings) -> String {
    crate::openbao::contract::policy_hcl(&s.transit.mount_path, &s.transit.key_name)
}

#[derive(clap::Args, Debug)]
pub(crate) struct EncryptionConfigArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Resources to encrypt (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "secrets")]
    pub(crate) resources: Vec<String>,
    /// Per-call deadline kube-apiserver gives the provider (the kms provider's `timeout`).
    /// Default: the config's server.kms_timeout, the provider's own budget for a call, so both
    /// give up at the same time. Written in Go's duration form ("1500ms", "90s"); zero is refused.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) timeout: Option<Duration>,
    /// Write stage: leave out the identity provider (the trailing one, and any an
    /// --existing-config entry has). Only after every object was rewritten (migration), or
    /// objects stored in plaintext become unreadable. The read and rollback stages keep identity.
    #[arg(long)]
    pub(crate) no_identity: bool,
    /// The rollout stage to print the configuration for.
    #[arg(long, value_enum, default_value_t = Stage::Write)]
    pub(crate) stage: Stage,
    /// The EncryptionConfiguration kube-apiserver uses today (what --encryption-provider-config
    /// points at), or the file this command wrote earlier. Its providers are kept per resource
    /// entry, before or after this provider as --stage says, so what they stored stays readable.
    /// Without it the cluster stores the resources in plaintext today (identity).
    #[arg(long, value_name = "FILE")]
    pub(crate) existing_config: Option<std::path::PathBuf>,
    /// Write stage: leave out the providers --existing-config carried over (aescbc, another
    /// kms, ...), keeping this provider (and identity unless --no-identity). Only after the
    /// migration rewrote every object they stored: what is still stored under them becomes
    /// unreadable. Identity-only entries for other resources stay.
    #[arg(long, requires = "existing_config")]
    pub(crate) drop_previous: bool,
}

/// The EncryptionConfiguration as JSON (valid YAML, which kube-apiserver reads): a serializer, not
/// string formatting, so resources such as `*.*` or a provider name such as `true` stay strings.
pub(crate) fn encryption_config(a: &EncryptionConfigArgs) -> Result<ExitCode> {
    if a.drop_previous && a.stage != Stage::Write {
        anyhow::bail!("--drop-previous: only with --stage write (the read and rollback stages keep every provider)");
    }
    let s = load(&a.config)?;
    let name = &s.transit.key_id_scope.provider_name;
    let existing = a
        .existing_config
        .as_deref()
        .map(|path| stage::read_existing(path, name))
        .transpose()?;
    let doc = encryption_config_document(
        &a.resources,
        name,
        &s.server.socket_path.display().to_string(),
        a.timeout.unwrap_or(s.server.kms_timeout),
        !a.no_identity,
        Placement {
            stage: a.stage,
            existing: existing.as_ref(),
            drop_previous: a.drop_previous,
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}

/// The document `encryption-config` prints; errors name the option or the file and field that
/// is wrong.
pub(crate) fn encryption_config_document(
    resources: &[String],
    provider_name: &str,
    socket_path: &str,
    timeout: Duration,
    identity: bool,
    placement: Placement<'_>,
) -> Result<serde_json::Value> {
    let resources: Vec<String> = resources.iter().map(|r| r.trim().to_owned()).collect();
    if resources.is_empty() || resources.iter().any(|r| r.is_empty()) {
        anyhow::bail!("--resources: expected a comma-separated list of resources such as \"secrets,configmaps\", got an empty entry");
    }
    let kms = serde_json::json!({"kms": {
        "apiVersion": "v2",
        "name": provider_name,
        "endpoint": format!("unix://{socket_path}"),
        "timeout": go_duration(timeout)?,
    }});
    let ours = Ours {
        kms,
        name: provider_name,
        resources: &resources,
        identity,
    };
    Ok(stage::build(
        &ours,
        placement.existing,
        placement.stage,
        placement.drop_previous,
    )?)
}

/// A duration in Go's `time.ParseDuration` grammar (kube-apiserver parses the timeout with it):
/// one integer in the largest exact unit, "90s", "1500ms", "250us". Zero is refused: kube-apiserver
/// would replace it with its own default, not what the operator asked for.
pub(crate) fn go_duration(d: Duration) -> Result<String> {
    let ns = d.as_nanos();
    if ns == 0 {
        anyhow::bail!("--timeout: must be more than zero (for example \"3s\")");
    }
    let (value, unit) = [
        (1_000_000_000u128, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ]
    .into_iter()
    .find(|(n, _)| ns % n == 0)
    .map(|(n, u)| (ns / n, u))
    .unwrap_or((ns, "ns"));
    Ok(format!("{value}{unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write stage without an existing configuration.
    const WRITE: Placement<'static> = Placement {
        stage: Stage::Write,
        existing: None,
        drop_previous: false,
    };

    #[test]
    fn timeouts_use_go_duration_grammar() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(1500)).unwrap(), "1500ms");
        assert_eq!(go_duration(ms(90_000)).unwrap(), "90s");
        assert_eq!(go_duration(Duration::from_micros(250)).unwrap(), "250us");
        assert_eq!(go_duration(Duration::from_nanos(7)).unwrap(), "7ns");
        let zero = go_duration(Duration::ZERO).unwrap_err().to_string();
        assert!(zero.contains("--timeout"), "{zero}");
    }

    #[test]
    fn odd_resources_and_names_stay_strings() {
        let r = ["*.*".to_string(), " *.apps".into(), "true".into()];
        let doc = encryption_config_document(
            &r,
            "true",
            "/run/x.sock",
            Duration::from_secs(3),
            true,
            WRITE,
        )
        .unwrap();
        assert_eq!(
            doc["resources"][0]["resources"],
            serde_json::json!(["*.*", "*.apps", "true"])
        );
        assert_eq!(doc["resources"][0]["providers"][0]["kms"]["name"], "true");
        assert_eq!(
            doc["resources"][0]["providers"][1],
            serde_json::json!({"identity": {}})
        );
        let empty = encryption_config_document(
            &["".into()],
            "n",
            "/s",
            Duration::from_secs(1),
            false,
            WRITE,
        );
        assert!(empty.unwrap_err().to_string().contains("--resources"));
    }
}
