//! Text the provider hands to other systems: the OpenBao policy and the EncryptionConfiguration.
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

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
    /// Per-call deadline kube-apiserver uses for the provider.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub(crate) timeout: Duration,
    /// Leave out the trailing identity provider. Only after every object was rewritten
    /// (migration), or objects stored in plaintext become unreadable.
    #[arg(long)]
    pub(crate) no_identity: bool,
}

pub(crate) fn encryption_config(a: &EncryptionConfigArgs) -> Result<ExitCode> {
    let s = load(&a.config)?;
    let mut out = String::from("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n");
    for r in &a.resources {
        out.push_str(&format!("      - {}\n", r.trim()));
    }
    out.push_str(&format!(
        "    providers:\n      - kms:\n          apiVersion: v2\n          name: {}\n          endpoint: unix://{}\n          timeout: {}\n",
        s.transit.key_id_scope.provider_name,
        s.server.socket_path.display(),
        humantime::format_duration(a.timeout)
    ));
    if !a.no_identity {
        out.push_str("      - identity: {}\n");
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
