//! `state show` / `state verify`: read-only views of the key registry, safe next to a running service.
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{load, ConfigArg};
use crate::keys::Store;

#[derive(Subcommand, Debug)]
pub(crate) enum StateCommand {
    /// Print the key registry as a table: version, created, key_id, state.
    Show(ConfigArg),
    /// Check the registry's content hash, generation and scope; exit 0 only when intact.
    Verify(ConfigArg),
}

pub(crate) fn run(cmd: StateCommand) -> Result<ExitCode> {
    let (arg, show) = match &cmd {
        StateCommand::Show(a) => (a, true),
        StateCommand::Verify(a) => (a, false),
    };
    let settings = load(arg)?;
    let identity = crate::provider::key_identity(&settings);
    let store = Store::open_readonly(&settings.server.state_dir, &identity.fingerprint());
    let verified = store.verify()?;
    if show {
        println!("{:<8} {:<21} {:<9} KEY_ID", "VERSION", "CREATED", "STATE");
        for r in verified.registry.records.values() {
            let created = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(r.created_unix.max(0) as u64);
            println!(
                "{:<8} {:<21} {:<9} {}",
                format!("v{}", r.version),
                humantime::format_rfc3339_seconds(created).to_string(),
                r.state.as_str(),
                r.key_id
            );
        }
        if verified.registry.is_empty() {
            println!("(empty: the provider has not yet seen the Transit key)");
        }
    } else {
        println!(
            "{}: intact (generation {}, {} versions)",
            store.path().display(),
            verified.generation,
            verified.registry.records.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
